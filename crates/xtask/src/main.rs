//! `cargo xtask <task>`: the developer tasks of the madbase workspace.
//!
//! `cargo xtask ci` is the one command CI runs (see `.ci/run`); every other
//! task here is a step of it that can also be run on its own.

mod bench;
mod bench_common;
mod bench_footprint;
mod bench_functions;
mod bench_proxy;
mod browser;
mod checks;
mod compose;
mod e2e;
mod fresh;
mod image_lock;
mod image_spec;
mod images;
mod nix;
mod observability_config;
mod observability_live;
mod otlp;
mod podman;
mod procs;
mod push;
mod registry;
mod sandbox;
mod soak;
mod sqlx;
mod util;
mod workflows;

use std::path::PathBuf;
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
    /// `compose.yaml`: compose-spec schema, `podman-compose config`, pinned
    /// images, health checks, restart policies, published ports, secrets.
    CheckCompose {
        /// Check this file instead of `compose.yaml`.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// The service images without Nix: `target/images/<service>.tar`
    /// (docker-archive) from the release binary and `nix/images.toml`;
    /// fails when they are not the ones `nix/images.lock` records.
    Images {
        /// Write `nix/images.lock` and pin compose.yaml's madbase images to
        /// the built ones instead of checking them.
        #[arg(long)]
        lock: bool,
    },
    /// Builds the images, loads them into a project-local podman and checks
    /// them (config, contents, no shell, health check, non-root user).
    ImagesCheck,
    /// End-to-end on podman: compose.yaml (plus deploy/compose.e2e.yaml)
    /// up, a tenant, RLS and CRUD through the proxy, image checks, down and
    /// up again with the data kept, tear-down.
    E2e,
    /// `cargo sqlx prepare --workspace --check` against a throwaway Postgres.
    SqlxCheck,
    /// Regenerates `.sqlx/` against a throwaway Postgres.
    SqlxPrepare,
    /// Live check of the observability config: the four services, Postgres,
    /// VictoriaMetrics, vmagent, vmalert and Alertmanager on loopback; traffic,
    /// every dashboard query, ServiceDown, request IDs in logs, traces.
    Observability,
    /// supabase-js in headless Chromium (Debian's `chromium`, driven by
    /// playwright-core) from a page on one origin against madbase on
    /// another: CORS as a browser sees it.
    Browser,
    /// Pushes the four service images to an OCI registry with skopeo, under
    /// the commit SHA and the version, and writes the pushed digests.
    /// Credentials from REGISTRY_USER and REGISTRY_PASSWORD (stdin to skopeo,
    /// auth file removed afterwards).
    Push(push::PushCli),
    /// Replays each check `nix flake check` builds the way the Nix builder
    /// runs it: the declared fileset only, the declared tools only, no
    /// network, an unprivileged user with no HOME, offline vendored crates.
    Sandbox {
        /// Only these checks (default: all of them).
        checks: Vec<String>,
    },
    /// A bare Debian 12 (debootstrap) with `.ci/run`'s apt packages: every
    /// declared apt or essential program must be there.
    FreshMachine,
    /// The @supabase/postgrest-js compatibility test (needs `npm ci`, so it
    /// runs outside the sandbox).
    JsCompat,
    /// Benchmarks (not tests): the proxy against nginx in front of the same
    /// upstream, the worker against pgbench; ratios against the peer
    /// measured in the same run. `functions`: warm and cold invocations
    /// through the proxy, against the targets. `footprint`: image
    /// sizes, start to ready, idle and loaded memory.
    Bench {
        /// Only this benchmark (default: all).
        #[arg(value_enum)]
        only: Option<Bench>,
        /// 1 s per measurement, one round, no BENCHMARKS.md: that the
        /// harness works (run by `cargo xtask ci`).
        #[arg(long)]
        smoke: bool,
        /// `<label>=<madbase binary>`: the proxy and worker benchmarks also
        /// measure this other build in the same rounds (before/after);
        /// repeatable.
        #[arg(long)]
        baseline: Vec<bench_common::Baseline>,
    },
    /// Reliability (issue 24): the fault and hostile-input scenarios, the
    /// property tests with many cases and the long mixed soak, each
    /// recording its figures; `--report` rewrites RELIABILITY.md.
    Soak {
        /// Length of the mixed soak.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Regenerate RELIABILITY.md from this run's figures.
        #[arg(long)]
        report: bool,
        /// Cases per property test.
        #[arg(long, default_value_t = 20_000)]
        proptest_cases: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Bench {
    Proxy,
    Worker,
    Functions,
    Footprint,
}

/// `cargo xtask bench`: `only` one benchmark or all of them (also the
/// `bench-smoke` check of `cargo xtask ci`, with a smoke plan).
fn bench(
    only: Option<Bench>,
    plan: bench_common::Plan,
    baselines: &[bench_common::Baseline],
) -> Result<()> {
    let all_or = |b: Bench| only.is_none_or(|o| o == b);
    if all_or(Bench::Proxy) {
        bench_proxy::proxy(plan, baselines)?;
    }
    if all_or(Bench::Worker) {
        bench::worker(plan, baselines)?;
    }
    if all_or(Bench::Functions) {
        bench_functions::functions(plan)?;
    }
    if all_or(Bench::Footprint) {
        bench_footprint::footprint(plan)?;
    }
    Ok(())
}

/// The `bench-smoke` check: every benchmark, 1 s per measurement.
pub(crate) fn bench_smoke() -> Result<()> {
    bench(None, bench_common::Plan::new(true), &[])
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bench {
            only,
            smoke,
            baseline,
        } => bench(only, bench_common::Plan::new(smoke), &baseline),
        Task::Ci => ci(),
        Task::Lint => lint(),
        Task::Test => test(),
        Task::CheckConfig => observability_config::check(),
        Task::LintNix => nix::lint(),
        Task::LintWorkflows => workflows::lint(),
        Task::CheckCompose { file: None } => compose::check(),
        Task::CheckCompose { file: Some(file) } => compose::check_file(&file),
        Task::Images { lock } => images::build_and_lock(lock),
        Task::ImagesCheck => images::check(),
        Task::E2e => e2e::run(),
        Task::Sandbox { checks } => sandbox::run(&checks),
        Task::JsCompat => js_compat(),
        Task::FreshMachine => fresh::run_task(),
        Task::Push(cli) => push::push_cli(cli),
        Task::SqlxCheck => sqlx::check(),
        Task::SqlxPrepare => sqlx::regenerate(),
        Task::Observability => observability_live::run(),
        Task::Browser => browser::run_task(),
        Task::Soak {
            minutes,
            report,
            proptest_cases,
        } => soak::run_task(minutes, report, proptest_cases),
    }
}

fn ci() -> Result<()> {
    checks::ci()
}

/// The one test the sandboxed nextest check skips.
fn js_compat() -> Result<()> {
    sandbox::js_compat()
}

fn lint() -> Result<()> {
    fmt()?;
    clippy()
}

fn fmt() -> Result<()> {
    step("cargo fmt --check");
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))
}

fn clippy() -> Result<()> {
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
