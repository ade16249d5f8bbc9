//! `cargo xtask <task>`: the developer tasks of the madbase workspace.
//!
//! `cargo xtask ci` is the one command CI runs (see `.ci/run`); every other
//! task here is a step of it that can also be run on its own.

mod nix;
mod observability_config;
mod util;
mod workflows;

use std::process::Command;

use anyhow::Result;
use clap::{Parser, Subcommand};

use util::{run, step};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "madbase developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Everything CI checks: formatting, clippy, every test and every lint.
    Ci,
    /// `cargo fmt --check` and `cargo clippy --all-targets -D warnings`.
    Lint,
    /// Every test of the workspace (nextest when installed).
    Test,
    /// Static checks of the observability config in `config/` (promtool,
    /// vmagent, vmalert, amtool, YAML and dashboard structure).
    CheckConfig,
    /// The Nix flake: every .nix file parses, deadnix, nixfmt, flake.lock and
    /// nix/images.toml.
    LintNix,
    /// The CI workflows in `.gitea/workflows`: actionlint, check-jsonschema,
    /// every action pinned to a commit SHA, no swallowed failures.
    LintWorkflows,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Ci => ci(),
        Task::Lint => lint(),
        Task::Test => test(),
        Task::CheckConfig => observability_config::check(),
        Task::LintNix => nix::lint(),
        Task::LintWorkflows => workflows::lint(),
    }
}

fn ci() -> Result<()> {
    lint()?;
    workflows::lint()?;
    nix::lint()?;
    observability_config::check()?;
    test()?;
    eprintln!("\nxtask ci: all checks passed");
    Ok(())
}

fn lint() -> Result<()> {
    step("cargo fmt --check");
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    step("cargo clippy");
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test() -> Result<()> {
    step("tests");
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if nextest {
        run(Command::new("cargo").args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]))
    } else {
        run(Command::new("cargo").args(["test", "--workspace", "--locked"]))
    }
}
