//! `cargo xtask lint-nix`: the checks of the Nix flake that need no Nix store.
//!
//! Nix cannot build or fetch anything where this runs, so this checks what
//! can be checked statically: every `.nix` file parses, has no dead code and
//! is formatted; `flake.lock` is a complete version 7 lock whose wiring
//! matches the inputs of `flake.nix`; and `nix/images.toml` has exactly the
//! keys the flake (`nix/images.nix`) reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::image_spec::{DERIVED_ENV, ImageSpec};
use crate::util::{files_with_ext, output, root, run, step};

/// Runs every Nix lint from the workspace root.
pub fn lint() -> Result<()> {
    format()?;
    deadnix()?;
    flake()
}

/// Every `.nix` file parses (`nix-instantiate --parse`) and is formatted
/// (`nixfmt --check`).
pub fn format() -> Result<()> {
    let files = nix_files()?;
    step("nix-instantiate --parse");
    for file in &files {
        // --parse prints the AST; only a failure is interesting.
        output(Command::new("nix-instantiate").arg("--parse").arg(file))
            .with_context(|| format!("{} does not parse", file.display()))?;
    }
    step("nixfmt --check");
    run(Command::new("nixfmt").arg("--check").args(&files))
}

/// `deadnix --fail` over every `.nix` file.
pub fn deadnix() -> Result<()> {
    let files = nix_files()?;
    step("deadnix --fail");
    run(Command::new("deadnix").arg("--fail").args(&files))
}

/// `flake.lock` is complete and matches `flake.nix`'s inputs,
/// `nix/images.toml` has the keys the flake reads, and the flake's checks,
/// evaluated against stand-ins, are the ones `nix/checks.toml` declares.
pub fn flake() -> Result<()> {
    step("flake.lock");
    let lock = std::fs::read_to_string(root().join("flake.lock")).context("reading flake.lock")?;
    let lock = check_lock(&lock)?;
    let inputs = output(Command::new("nix-instantiate").args([
        "--eval",
        "--strict",
        "--json",
        "--expr",
        "(import ./flake.nix).inputs",
    ]))
    .context("evaluating the inputs of flake.nix")?;
    check_lock_matches_inputs(&lock, &inputs)?;

    step("nix/images.toml");
    let images = std::fs::read_to_string(root().join("nix/images.toml"))
        .context("reading nix/images.toml")?;
    check_images(&images)?;

    crate::checks::lint_declaration()?;
    eprintln!("nix: flake.lock, nix/images.toml and nix/checks.toml are valid");
    Ok(())
}

/// Every `.nix` file of the workspace, relative to the root.
fn nix_files() -> Result<Vec<PathBuf>> {
    let root = root();
    let files: Vec<PathBuf> = files_with_ext("", ".nix")?;
    ensure!(
        !files.is_empty(),
        "no .nix files found below {}",
        root.display()
    );
    Ok(files
        .into_iter()
        .map(|path| {
            path.strip_prefix(&root)
                .map(Path::to_path_buf)
                .unwrap_or(path)
        })
        .collect())
}

/// `flake.lock`, as far as the checks need it.
#[derive(Debug, Deserialize)]
struct Lock {
    nodes: BTreeMap<String, Node>,
    root: String,
    version: u64,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(default)]
    inputs: BTreeMap<String, InputRef>,
    locked: Option<Locked>,
    original: Option<Original>,
}

/// A node's input: another node's name, or a `follows` path from the root.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InputRef {
    Node(String),
    Follows(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Locked {
    rev: Option<String>,
    nar_hash: Option<String>,
    last_modified: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Original {
    #[serde(rename = "type")]
    kind: Option<String>,
    owner: Option<String>,
    repo: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

/// Parses `flake.lock` and checks it is complete: version 7, every non-root
/// node pinned (`rev`, `narHash`, `lastModified`), every input pointing at an
/// existing node, and no node left unreferenced.
fn check_lock(text: &str) -> Result<Lock> {
    let lock: Lock = serde_json::from_str(text).context("flake.lock is not a valid lock file")?;
    ensure!(
        lock.version == 7,
        "flake.lock has version {}, expected 7",
        lock.version
    );
    ensure!(
        lock.nodes.contains_key(&lock.root),
        "flake.lock: root node `{}` is missing",
        lock.root
    );

    let mut problems = Vec::new();
    for (name, node) in &lock.nodes {
        if *name != lock.root {
            match &node.locked {
                None => problems.push(format!("node `{name}` has no `locked` entry")),
                Some(locked) => {
                    match locked.rev.as_deref() {
                        Some(rev) if is_rev(rev) => {}
                        Some(rev) => problems
                            .push(format!("node `{name}`: `{rev}` is not a 40-hex-digit rev")),
                        None => problems.push(format!("node `{name}` has no locked.rev")),
                    }
                    match locked.nar_hash.as_deref() {
                        Some(hash) if hash.starts_with("sha256-") && hash.len() == 51 => {}
                        Some(hash) => problems.push(format!(
                            "node `{name}`: `{hash}` is not a sha256 SRI narHash"
                        )),
                        None => problems.push(format!("node `{name}` has no locked.narHash")),
                    }
                    if locked.last_modified.is_none_or(|t| t == 0) {
                        problems.push(format!("node `{name}` has no locked.lastModified"));
                    }
                }
            }
        }
        for (input, target) in &node.inputs {
            if let Err(error) = resolve(&lock, target) {
                problems.push(format!("node `{name}`, input `{input}`: {error}"));
            }
        }
    }

    let mut reachable = BTreeSet::new();
    let mut pending = vec![lock.root.clone()];
    while let Some(name) = pending.pop() {
        if reachable.insert(name.clone())
            && let Some(node) = lock.nodes.get(&name)
        {
            pending.extend(node.inputs.values().filter_map(|target| match target {
                InputRef::Node(node) => Some(node.clone()),
                InputRef::Follows(_) => None,
            }));
        }
    }
    for name in lock.nodes.keys().filter(|name| !reachable.contains(*name)) {
        problems.push(format!("node `{name}` is not referenced by any input"));
    }

    if !problems.is_empty() {
        bail!("flake.lock:\n  {}", problems.join("\n  "));
    }
    Ok(lock)
}

fn is_rev(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The node an input points at; a `follows` path is resolved from the root.
fn resolve(lock: &Lock, target: &InputRef) -> Result<String> {
    fn go(lock: &Lock, target: &InputRef, depth: usize) -> Result<String> {
        ensure!(depth < 32, "follows cycle");
        match target {
            InputRef::Node(name) => {
                ensure!(
                    lock.nodes.contains_key(name),
                    "node `{name}` does not exist"
                );
                Ok(name.clone())
            }
            InputRef::Follows(path) => {
                let mut node = lock.root.clone();
                for segment in path {
                    let next = lock
                        .nodes
                        .get(&node)
                        .and_then(|n| n.inputs.get(segment))
                        .with_context(|| {
                            format!("follows {path:?}: `{node}` has no input `{segment}`")
                        })?;
                    node = go(lock, next, depth + 1)?;
                }
                Ok(node)
            }
        }
    }
    go(lock, target, 0)
}

/// One input of `flake.nix`, as `(import ./flake.nix).inputs` gives it.
#[derive(Debug, Deserialize)]
struct FlakeInput {
    url: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, FlakeInputOverride>,
}

#[derive(Debug, Deserialize)]
struct FlakeInputOverride {
    follows: Option<String>,
}

/// Checks that the lock's root inputs are exactly the inputs of `flake.nix`,
/// that every `github:owner/repo[/ref]` url is what the lock recorded as
/// `original`, and that every `inputs.<x>.follows` is wired in the lock.
fn check_lock_matches_inputs(lock: &Lock, inputs_json: &str) -> Result<()> {
    let inputs: BTreeMap<String, FlakeInput> =
        serde_json::from_str(inputs_json).context("the inputs of flake.nix are not plain data")?;
    let root = &lock.nodes[&lock.root];

    let declared: BTreeSet<&String> = inputs.keys().collect();
    let locked: BTreeSet<&String> = root.inputs.keys().collect();
    ensure!(
        declared == locked,
        "flake.nix declares inputs {declared:?} but flake.lock locks {locked:?}"
    );

    let mut problems = Vec::new();
    for (name, input) in &inputs {
        let node_name = resolve(lock, &root.inputs[name])?;
        let node = &lock.nodes[&node_name];

        if let Some(url) = input
            .url
            .as_deref()
            .and_then(|url| url.strip_prefix("github:"))
        {
            let mut parts = url.splitn(3, '/');
            let (owner, repo, git_ref) = (parts.next(), parts.next(), parts.next());
            match &node.original {
                Some(original)
                    if original.kind.as_deref() == Some("github")
                        && original.owner.as_deref() == owner
                        && original.repo.as_deref() == repo
                        && original.git_ref.as_deref() == git_ref => {}
                _ => problems.push(format!(
                    "input `{name}`: flake.lock's `original` does not match github:{url}"
                )),
            }
        }

        for (sub, over) in &input.inputs {
            let Some(follows) = &over.follows else {
                continue;
            };
            let want: Vec<String> = follows.split('/').map(str::to_owned).collect();
            match node.inputs.get(sub) {
                Some(InputRef::Follows(path)) if *path == want => {}
                _ => problems.push(format!(
                    "input `{name}`: flake.lock does not make `{sub}` follow `{follows}`"
                )),
            }
        }
    }

    if !problems.is_empty() {
        bail!(
            "flake.lock does not match flake.nix:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

fn check_images(text: &str) -> Result<()> {
    let images = ImageSpec::parse(text)?;

    let mut problems = Vec::new();
    for (key, value) in [
        ("registry", &images.registry),
        ("source", &images.source),
        ("vendor", &images.vendor),
        ("licenses", &images.licenses),
        ("binary", &images.binary),
        ("user_name", &images.user_name),
    ] {
        if value.trim().is_empty() {
            problems.push(format!("`{key}` is empty"));
        }
    }
    if images.uid == 0 || images.gid == 0 {
        problems.push("the image user must not be root (uid/gid 0)".to_owned());
    }
    for key in DERIVED_ENV
        .iter()
        .filter(|key| images.env.contains_key(**key))
    {
        problems.push(format!(
            "[env] sets {key}, which the flake derives per service"
        ));
    }
    let hc = &images.healthcheck;
    if hc.args.is_empty() {
        problems.push("[healthcheck] args is empty".to_owned());
    }
    if hc.interval_seconds == 0 || hc.timeout_seconds == 0 || hc.retries == 0 {
        problems.push("[healthcheck] interval, timeout and retries must be positive".to_owned());
    }
    // Docker (and Nix) hold the durations as signed 64-bit nanoseconds.
    for (key, seconds) in [
        ("interval_seconds", hc.interval_seconds),
        ("timeout_seconds", hc.timeout_seconds),
        ("start_period_seconds", hc.start_period_seconds),
    ] {
        if seconds
            .checked_mul(1_000_000_000)
            .is_none_or(|ns| ns > i64::MAX as u64)
        {
            problems.push(format!("[healthcheck] {key} overflows nanoseconds"));
        }
    }
    if hc.timeout_seconds > hc.interval_seconds {
        problems.push("[healthcheck] timeout_seconds exceeds interval_seconds".to_owned());
    }
    if images.services.is_empty() {
        problems.push("no [services.<name>] defined".to_owned());
    }
    let mut ports = BTreeMap::new();
    for (name, service) in &images.services {
        if service.title.trim().is_empty() || service.description.trim().is_empty() {
            problems.push(format!("[services.{name}] needs a title and a description"));
        }
        for port in [service.api_port, service.admin_port] {
            if port == 0 {
                problems.push(format!("[services.{name}] has port 0"));
            } else if let Some(other) = ports.insert(port, name) {
                problems.push(format!(
                    "port {port} is used by both `{other}` and `{name}`"
                ));
            }
        }
    }

    if !problems.is_empty() {
        bail!("nix/images.toml:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"{
      "nodes": {
        "crane": {
          "locked": { "lastModified": 1, "narHash": "sha256-lWhBbBvC05/xwivKBBiM2YNizpmgqCgyOIzomvRuwxs=",
                      "owner": "ipetkov", "repo": "crane", "rev": "692f7e9ef2ece8125b466f66f2af532b3edaed0d", "type": "github" },
          "original": { "owner": "ipetkov", "ref": "v0.24.0", "repo": "crane", "type": "github" }
        },
        "nixpkgs": {
          "locked": { "lastModified": 1, "narHash": "sha256-0XnckG4ZhBmAsYa9mLuEIFowBG0fDGPLHduQGsbMS4A=",
                      "owner": "NixOS", "repo": "nixpkgs", "rev": "74cc63f702f7d60a557e152a57b40fb1fd0f72ac", "type": "github" },
          "original": { "owner": "NixOS", "ref": "nixos-26.05", "repo": "nixpkgs", "type": "github" }
        },
        "root": { "inputs": { "crane": "crane", "nixpkgs": "nixpkgs", "rust-overlay": "rust-overlay" } },
        "rust-overlay": {
          "inputs": { "nixpkgs": ["nixpkgs"] },
          "locked": { "lastModified": 1, "narHash": "sha256-ZaS89rj5u6pygXKDRfCzPMGm7isJxLsSeIAR5EaSyu8=",
                      "owner": "oxalica", "repo": "rust-overlay", "rev": "471286a5fadc690e2408ad854eb32325f5e74da7", "type": "github" },
          "original": { "owner": "oxalica", "repo": "rust-overlay", "type": "github" }
        }
      },
      "root": "root",
      "version": 7
    }"#;

    const INPUTS: &str = r#"{
      "crane": { "url": "github:ipetkov/crane/v0.24.0" },
      "nixpkgs": { "url": "github:NixOS/nixpkgs/nixos-26.05" },
      "rust-overlay": { "url": "github:oxalica/rust-overlay", "inputs": { "nixpkgs": { "follows": "nixpkgs" } } }
    }"#;

    #[test]
    fn a_complete_lock_matching_the_inputs_passes() -> Result<()> {
        let lock = check_lock(LOCK)?;
        check_lock_matches_inputs(&lock, INPUTS)
    }

    #[test]
    fn the_committed_lock_and_images_toml_are_valid() -> Result<()> {
        check_lock(&std::fs::read_to_string(root().join("flake.lock"))?)?;
        check_images(&std::fs::read_to_string(root().join("nix/images.toml"))?)
    }

    /// The error message of `result`, or "" when it succeeded.
    fn error_of<T>(result: Result<T>) -> String {
        result.err().map(|e| format!("{e:#}")).unwrap_or_default()
    }

    #[test]
    fn a_missing_nar_hash_is_reported() {
        let lock = LOCK.replace(
            "\"narHash\": \"sha256-ZaS89rj5u6pygXKDRfCzPMGm7isJxLsSeIAR5EaSyu8=\",",
            "",
        );
        let error = error_of(check_lock(&lock));
        assert!(
            error.contains("`rust-overlay` has no locked.narHash"),
            "{error}"
        );
    }

    #[test]
    fn a_dangling_follows_is_reported() {
        let lock = LOCK.replace(
            "\"nixpkgs\": [\"nixpkgs\"]",
            "\"nixpkgs\": [\"nixpkgs-unstable\"]",
        );
        let error = error_of(check_lock(&lock));
        assert!(error.contains("has no input `nixpkgs-unstable`"), "{error}");
    }

    #[test]
    fn a_follows_missing_from_the_lock_is_reported() -> Result<()> {
        let lock = check_lock(LOCK)?;
        let inputs = INPUTS.replace(
            r#"{ "nixpkgs": { "follows": "nixpkgs" } }"#,
            r#"{ "flake-utils": { "follows": "nixpkgs" } }"#,
        );
        let error = error_of(check_lock_matches_inputs(&lock, &inputs));
        assert!(
            error.contains("does not make `flake-utils` follow `nixpkgs`"),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn a_changed_branch_is_reported() -> Result<()> {
        let lock = check_lock(LOCK)?;
        let inputs = INPUTS.replace("nixos-26.05", "nixos-unstable");
        let error = error_of(check_lock_matches_inputs(&lock, &inputs));
        assert!(error.contains("input `nixpkgs`"), "{error}");
        Ok(())
    }

    #[test]
    fn an_unknown_top_level_images_key_is_rejected() -> Result<()> {
        let text = std::fs::read_to_string(root().join("nix/images.toml"))?;
        let error = error_of(check_images(&format!("maintainer = \"x\"\n{text}")));
        assert!(error.contains("unknown field `maintainer`"), "{error}");
        Ok(())
    }
}
