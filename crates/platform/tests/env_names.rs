//! Every `MADBASE_…` name in the sources, compose files and docs is
//! declared, with its meaning, in `madbase_platform::env`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Names that look like variables but are not: an xtask constant's name,
/// and prose naming a group of variables.
const NOT_VARIABLES: &[&str] = &["MADBASE_HEALTHCHECK", "MADBASE_RATE_LIMIT"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the repository")
        .to_path_buf()
}

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            // Build output and dependencies are not ours.
            let name = entry.file_name();
            if name != "target" && name != "node_modules" {
                files(&entry.path(), out);
            }
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
}

/// The `MADBASE_…` names in `text`; a name ending in `_` is a prefix
/// (`MADBASE_WORKER_*`, `MADBASE_<SERVICE>_LISTEN`), not a variable.
fn names(text: &str, out: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("MADBASE_") {
        let start = from + at;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let mut end = start + "MADBASE_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_uppercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let name = &text[start..end];
        let inside_word = before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !inside_word && !name.ends_with('_') {
            out.insert(name.to_owned());
        }
        from = end;
    }
}

#[test]
fn every_madbase_variable_is_declared() {
    let root = root();
    let mut paths = Vec::new();
    for place in [
        "crates",
        "compose.yaml",
        "deploy",
        "docs",
        "README.md",
        "ARCHITECTURE.md",
        ".env.example",
    ] {
        files(&root.join(place), &mut paths);
    }
    let mut found = BTreeSet::new();
    let mut read = 0;
    for path in &paths {
        // Binary files (images) are skipped.
        if let Ok(text) = std::fs::read_to_string(path) {
            names(&text, &mut found);
            read += 1;
        }
    }
    assert!(
        read > 100,
        "only {read} files read under {}",
        root.display()
    );
    let declared: BTreeSet<&str> = madbase_platform::env::ALL.iter().copied().collect();
    let missing: Vec<&String> = found
        .iter()
        .filter(|n| !declared.contains(n.as_str()) && !NOT_VARIABLES.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not declared in madbase_platform::env: {missing:?}"
    );
    // The scan sees what it looks for.
    for name in ["MADBASE_MASTER_KEY", "MADBASE_CORS_ORIGINS", "MADBASE_BIND"] {
        assert!(found.contains(name), "{name} not found by the scan");
    }
}

#[test]
fn each_constant_is_its_own_name_once() {
    let all = madbase_platform::env::ALL;
    let unique: BTreeSet<&str> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len());
    assert_eq!(madbase_platform::env::MADBASE_LISTEN, "MADBASE_LISTEN");
    assert_eq!(madbase_platform::env::JWT_SECRET, "JWT_SECRET");
}

/// Where the crates read a variable (`std::env::var`, clap's `env =`,
/// `Env::required`/`raw`), its name is a constant, never a string literal:
/// a literal could drift from the declaration. (`option_env!` needs a
/// literal; the tools in `xtask` and `testkit` set variables for the
/// processes they start.)
#[test]
fn variables_are_read_through_their_constants() {
    let root = root();
    let declared: BTreeSet<&str> = madbase_platform::env::ALL.iter().copied().collect();
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        let name = entry.file_name();
        if name != "xtask" && name != "testkit" {
            files(&entry.path().join("src"), &mut paths);
        }
    }
    let mut literal = Vec::new();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(path).expect("readable");
        for (number, line) in text.lines().enumerate() {
            for read in ["env = \"", "var(\"", "var_os(\"", "required(\"", "raw(\""] {
                for (at, _) in line.match_indices(read) {
                    let rest = &line[at + read.len()..];
                    let name = rest.split('"').next().unwrap_or_default();
                    if declared.contains(name) {
                        literal.push(format!("{}:{}: {name}", path.display(), number + 1));
                    }
                }
            }
        }
    }
    assert!(
        literal.is_empty(),
        "read by a string literal, not its madbase_platform::env constant: {literal:?}"
    );
}
