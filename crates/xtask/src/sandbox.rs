//! `cargo xtask sandbox [CHECK…]`: each check `nix flake check` builds,
//! replayed the way the Nix builder runs it, so a check that would fail there
//! fails here first.
//!
//! For every check of `nix/checks.toml` with a `nix` builder (the package and
//! image builds excepted: `cargo xtask images` builds those from the tree):
//!
//! - **exactly the declared fileset**, expanded from the files git tracks
//!   (what a flake's source holds), copied to a fresh directory;
//! - **only the declared tools on PATH**: a directory of symlinks to the
//!   programs of the check's `tools` ([tools] of checks.toml), the Rust
//!   toolchain of `rust-toolchain.toml` and what Nix's stdenv provides
//!   (coreutils, findutils, grep, sed, gawk, tar, gzip, make, bash, the C
//!   compiler and binutils);
//! - **no network**: a network namespace of its own with only loopback
//!   (`unshare --net`); the kernel refusing one is an error, not a skip;
//! - **an unprivileged build user** (`nobody`, like Nix's `nixbld` users)
//!   whose `HOME` is `/homeless-shelter`, which does not exist and cannot be
//!   created, as in Nix;
//! - `SQLX_OFFLINE=true`, `CARGO_BUILD_INCREMENTAL=false` (crane's
//!   default), `CARGO_HOME` offline against a vendored copy of
//!   the registry (`cargo vendor`, cached while `Cargo.lock` is unchanged);
//! - Postgres, for the checks that need it, started by the same script
//!   `nix/checks.nix` runs: a unix socket in the build directory only.
//!
//! Before the checks, a self-test runs four fixture checks that must fail in
//! the sandbox and pass outside it (a file outside the fileset, an
//! undeclared tool, a network connection, a write to HOME) and one that must
//! pass in both.
//!
//! Needs root (mount and network namespaces; `bash .ci/run` runs as root).
//! The cargo target directory, the vendored crates and the build user's
//! cargo home are kept in `/var/tmp/madbase-sandbox` between runs.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::checks::{Check, Declaration, tracked};
use crate::util::{output, root, step};

/// Kept between runs: target dir, vendored crates, cargo home.
const BASE: &str = "/var/tmp/madbase-sandbox";
/// The build user (Nix builds as an unprivileged `nixbld` user).
const BUILD_USER: (u32, u32) = (65534, 65534);
/// Nix's HOME for builds: it does not exist.
const HOME: &str = "/homeless-shelter";

/// What Nix's stdenv puts on every builder's PATH.
const STDENV: &[&str] = &[
    "bash", "sh", "awk", "gawk", "basename", "cat", "chmod", "cmp", "cp", "cut", "date", "diff",
    "dirname", "echo", "env", "expr", "false", "find", "grep", "egrep", "head", "id", "ln", "ls",
    "mkdir", "mktemp", "mv", "od", "printf", "readlink", "realpath", "rm", "rmdir", "sed", "sleep",
    "sort", "tail", "tar", "tee", "test", "touch", "tr", "true", "uname", "uniq", "wc", "xargs",
    "gzip", "make", "patch", "xz", "cc", "c++", "gcc", "g++", "cpp", "ld", "ar", "as", "nm",
    "ranlib", "strip", "objcopy", "objdump",
];
/// The Rust toolchain's programs (rust-overlay's toolchain in the flake).
const TOOLCHAIN: &[&str] = &[
    "cargo",
    "rustc",
    "rustdoc",
    "rustfmt",
    "cargo-fmt",
    "cargo-clippy",
    "clippy-driver",
];

/// A check to replay.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    /// The tree the fileset is taken from.
    root: PathBuf,
    files: Vec<String>,
    /// Programs on PATH besides stdenv (and the toolchain when `cargo`).
    programs: Vec<String>,
    cargo: bool,
    postgres: bool,
    script: String,
    env: Vec<(String, String)>,
    /// Only for `js-compat` (`npm ci`): no network namespace.
    network: bool,
}

/// `cargo xtask sandbox [CHECK…]`.
pub fn run(only: &[String]) -> Result<()> {
    preflight()?;
    self_test()?;
    let declaration = Declaration::load()?;
    let tracked = tracked()?;
    let plans = plans(&declaration, &tracked)?;
    let known: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    for name in only {
        ensure!(
            known.contains(&name.as_str()),
            "no sandboxed check {name:?} (the checks with a nix builder: {known:?})"
        );
    }
    vendor()?;
    let mut timings = Vec::new();
    for plan in plans
        .iter()
        .filter(|p| only.is_empty() || only.contains(&p.name))
    {
        step(&format!("sandbox: {}", plan.name));
        let start = Instant::now();
        let status = replay(plan)?;
        let took = start.elapsed().as_secs_f64();
        ensure!(
            status,
            "check {} fails in the rehearsal of the Nix sandbox (see above)",
            plan.name
        );
        eprintln!("PASS sandbox {} ({took:.1}s)", plan.name);
        timings.push((plan.name.clone(), took));
    }
    eprintln!("\nsandbox: every check passed");
    for (name, took) in timings {
        eprintln!("  {name:<14} {took:>7.1}s");
    }
    Ok(())
}

fn preflight() -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "cargo xtask sandbox needs root (mount and network namespaces, a build user); run it as root, as `bash .ci/run` does"
    );
    let probe = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--mount-proc",
            "--net",
            "--fork",
            "--",
            "true",
        ])
        .status()
        .context("cannot start unshare (util-linux)")?;
    ensure!(
        probe.success(),
        "the kernel refuses new mount, PID or network namespaces (unshare --mount --pid --net): the sandbox cannot be rehearsed here"
    );
    Ok(())
}

/// `cargo xtask js-compat`: the `@supabase/postgrest-js` test, the one the
/// nextest check skips, replayed like the others but with the network on for
/// its `npm ci` (sharing their target directory, so nothing is rebuilt).
pub fn js_compat() -> Result<()> {
    preflight()?;
    let declaration = Declaration::load()?;
    let check = declaration
        .check
        .iter()
        .find(|c| c.name == "js-compat")
        .context("nix/checks.toml declares no js-compat check")?;
    vendor()?;
    let plan = Plan {
        name: check.name.clone(),
        root: root(),
        files: declaration.expand(&check.fileset, &tracked()?)?,
        programs: programs_of(&declaration, check)?,
        cargo: true,
        postgres: check.needs.iter().any(|n| n == "postgres"),
        script:
            "cargo nextest run --locked -p madbase-worker -E 'test(postgrest_js_compatibility)'"
                .to_owned(),
        env: Vec::new(),
        network: true,
    };
    step("sandbox (with network): js-compat");
    ensure!(
        replay(&plan)?,
        "the postgrest-js compatibility test failed (see above)"
    );
    Ok(())
}

/// The replay of each check with a nix builder, from the declaration.
fn plans(declaration: &Declaration, tracked: &[String]) -> Result<Vec<Plan>> {
    let mut out = Vec::new();
    for check in &declaration.check {
        let Some(nix) = check.nix.as_deref() else {
            continue;
        };
        let (cargo, script, env) = match nix {
            // Built by `cargo xtask images` from the tree (a release build).
            "package" | "images" => continue,
            "cargo-fmt" => (true, "cargo fmt --all -- --check".to_owned(), vec![]),
            "cargo-clippy" => (
                true,
                "cargo clippy --locked --workspace --all-targets -- -D warnings".to_owned(),
                vec![],
            ),
            "cargo-nextest" => (
                true,
                "cargo nextest run --locked --workspace --no-fail-fast".to_owned(),
                vec![("MADBASE_SKIP_JS_COMPAT".to_owned(), "1".to_owned())],
            ),
            "cargo-deny" => (
                true,
                "cargo --offline deny check bans licenses sources".to_owned(),
                vec![],
            ),
            "sqlx-check" => (
                true,
                "for migrations in crates/*/migrations; do\n  if [ -d \"$migrations\" ]; then\n    sqlx migrate run --source \"$migrations\" --ignore-missing\n  fi\ndone\ncargo sqlx prepare --workspace --check -- --all-targets --profile release".to_owned(),
                vec![],
            ),
            _ => (
                false,
                check
                    .command
                    .clone()
                    .with_context(|| format!("check {}: no command", check.name))?,
                vec![],
            ),
        };
        out.push(Plan {
            name: check.name.clone(),
            root: root(),
            files: declaration.expand(&check.fileset, tracked)?,
            programs: programs_of(declaration, check)?,
            cargo,
            postgres: check.needs.iter().any(|n| n == "postgres"),
            script,
            env,
            network: false,
        });
    }
    Ok(out)
}

/// The programs of a check's tools ([tools] of checks.toml).
fn programs_of(declaration: &Declaration, check: &Check) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for tool in &check.tools {
        let programs = declaration.tools.get(tool).with_context(|| {
            format!("check {}: tool {tool} has no entry in [tools]", check.name)
        })?;
        out.extend(programs.iter().cloned());
    }
    Ok(out)
}

/// Where a program is on this machine (the Postgres server binaries are
/// not on Debian's PATH).
fn locate(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/lib/postgresql/15/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The active toolchain's directory (`rustc --print sysroot`, through
/// rustup and rust-toolchain.toml).
fn toolchain() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// `cargo vendor` into the base directory, once per `Cargo.lock`.
fn vendor() -> Result<()> {
    let base = Path::new(BASE);
    let lock = std::fs::read(root().join("Cargo.lock"))?;
    let stamp = crate::images::sha256_hex(&lock);
    let stamp_file = base.join("vendor.stamp");
    if std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    step("cargo vendor (offline registry for the sandbox)");
    std::fs::create_dir_all(base)?;
    let vendor = base.join("vendor");
    let _ = std::fs::remove_dir_all(&vendor);
    output(
        Command::new("cargo")
            .args(["vendor", "--locked", "--versioned-dirs", "--quiet"])
            .arg(&vendor),
    )?;
    // Some crates ship files readable by their owner only; the build user
    // reads them all.
    readable_by_all(&vendor)?;
    std::fs::write(stamp_file, stamp)?;
    Ok(())
}

/// `chmod -R a+rX`.
fn readable_by_all(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let extra = if meta.is_dir() || mode & 0o100 != 0 {
        0o555
    } else {
        0o444
    };
    if mode & extra != extra {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | extra))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            readable_by_all(&entry?.path())?;
        }
    }
    Ok(())
}

/// Replays one plan; `Ok(false)` when the check itself failed.
fn replay(plan: &Plan) -> Result<bool> {
    let base = Path::new(BASE);
    let dir = base.join("checks").join(&plan.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let src = dir.join("source");
    for file in &plan.files {
        let to = src.join(file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(plan.root.join(file), &to)
            .with_context(|| format!("copying {file} into the sandbox"))?;
    }
    std::fs::create_dir_all(dir.join("tmp"))?;

    // PATH: symlinks to stdenv's and the declared programs; the toolchain
    // and programs under /root (cargo install) are bind-mounted inside.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let mounted = dir.join("mounted");
    let mut mounts: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut link = |name: &str, target: &Path| -> Result<()> {
        let reachable = !target.starts_with("/root");
        let target = if reachable {
            target.to_path_buf()
        } else {
            let parent = target.parent().context("a program without a directory")?;
            let at = mounted.join(format!("m{}", mounts.len()));
            let at = mounts.entry(parent.to_path_buf()).or_insert(at).clone();
            at.join(target.file_name().context("a program without a name")?)
        };
        let _ = std::fs::remove_file(bin.join(name));
        std::os::unix::fs::symlink(&target, bin.join(name))
            .with_context(|| format!("linking {name}"))
    };
    for program in STDENV {
        if let Some(path) = locate(program) {
            link(program, &path)?;
        }
    }
    for program in &plan.programs {
        let path = locate(program).with_context(|| {
            format!(
                "check {}: declared program {program} is not installed",
                plan.name
            )
        })?;
        link(program, &path)?;
    }
    let mut toolchain_mount = None;
    if plan.cargo {
        let sysroot = toolchain()?;
        let at = mounted.join("toolchain");
        for program in TOOLCHAIN {
            let _ = std::fs::remove_file(bin.join(program));
            std::os::unix::fs::symlink(at.join("bin").join(program), bin.join(program))?;
        }
        toolchain_mount = Some((sysroot, at));
    }

    let cargo_home = base.join("cargo-home");
    std::fs::create_dir_all(&cargo_home)?;
    std::fs::write(
        cargo_home.join("config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"vendored\"\n\n[source.vendored]\ndirectory = \"{}\"\n\n[net]\noffline = true\n",
            base.join("vendor").display()
        ),
    )?;
    let target = base.join("target");
    std::fs::create_dir_all(&target)?;
    for path in [&dir, &cargo_home, &target] {
        chown_tree(path)?;
    }

    // The builder's environment: nothing inherited.
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), bin.display().to_string()),
        ("HOME".into(), HOME.into()),
        ("TMPDIR".into(), dir.join("tmp").display().to_string()),
        ("NIX_BUILD_TOP".into(), dir.display().to_string()),
        ("CARGO_HOME".into(), cargo_home.display().to_string()),
        ("CARGO_TARGET_DIR".into(), target.display().to_string()),
        ("CARGO_NET_OFFLINE".into(), "true".into()),
        // As crane's builds (configureCargoCommonVarsHook): no incremental
        // cache, which would only grow the shared target directory.
        ("CARGO_BUILD_INCREMENTAL".into(), "false".into()),
        ("SQLX_OFFLINE".into(), "true".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
        (
            "npm_config_cache".into(),
            dir.join("tmp/npm-cache").display().to_string(),
        ),
    ];
    env.extend(plan.env.iter().cloned());
    let mut script = String::from("set -eu\ncd \"$NIX_BUILD_TOP/source\"\n");
    if plan.postgres {
        script.push_str(START_POSTGRES);
        // Stopped on failure too (the PID namespace is the backstop).
        script.push_str(&format!("trap '{}' EXIT\n", STOP_POSTGRES.trim()));
        script.push_str(&plan.script);
        script.push('\n');
    } else {
        script.push_str(&plan.script);
        script.push('\n');
    }
    let script_file = dir.join("builder.sh");
    std::fs::write(&script_file, script)?;
    chown_tree(&script_file)?;

    // As root in the new namespaces: loopback up, the mounts, then the
    // build user with the builder's environment only.
    let mut outer = String::from("set -eu\n");
    if !plan.network {
        outer.push_str("/usr/sbin/ip link set lo up\n");
    }
    let mut all_mounts: Vec<(PathBuf, PathBuf)> = mounts.into_iter().collect();
    all_mounts.extend(toolchain_mount);
    for (from, to) in &all_mounts {
        outer.push_str(&format!(
            "mkdir -p '{to}'\nmount --bind -o ro '{from}' '{to}'\n",
            from = from.display(),
            to = to.display()
        ));
    }
    outer.push_str(&format!(
        "exec /usr/bin/setpriv --reuid={uid} --regid={gid} --clear-groups -- /usr/bin/env -i {env} /bin/sh '{script}'\n",
        uid = BUILD_USER.0,
        gid = BUILD_USER.1,
        env = env
            .iter()
            .map(|(k, v)| format!("'{k}={v}'"))
            .collect::<Vec<_>>()
            .join(" "),
        script = script_file.display()
    ));
    // A PID namespace too: when the builder exits, the kernel ends every
    // process it left (a Postgres after a failed check), as Nix does.
    let namespaces: &[&str] = if plan.network {
        &["--mount", "--pid", "--mount-proc"]
    } else {
        &["--mount", "--pid", "--mount-proc", "--net"]
    };
    let status = Command::new("unshare")
        .args(namespaces)
        .args(["--fork", "--", "/bin/sh", "-c", &outer])
        .current_dir(&dir)
        .status()
        .context("cannot start unshare")?;
    Ok(status.success())
}

/// What nix/checks.nix runs before a check that needs Postgres.
const START_POSTGRES: &str = r#"export PGDATA="$NIX_BUILD_TOP/postgres"
initdb --username=postgres --auth=trust --encoding=UTF8 --no-locale "$PGDATA" >/dev/null
pg_ctl --pgdata="$PGDATA" --log="$NIX_BUILD_TOP/postgres.log" --wait \
  --options="-c listen_addresses= -c unix_socket_directories=$PGDATA -c max_connections=200 -c fsync=off" \
  start
export DATABASE_URL="postgres://postgres@localhost/postgres?host=$PGDATA"
"#;
const STOP_POSTGRES: &str = r#"pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
"#;

/// Gives `path` (recursively) to the build user.
fn chown_tree(path: &Path) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(BUILD_USER.0), Some(BUILD_USER.1))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The self-test.

/// Four fixture checks the sandbox must fail (each passes outside it) and a
/// control that must pass.
pub fn self_test() -> Result<()> {
    step("sandbox self-test: what the Nix sandbox refuses is refused here");
    let fixture = tempfile::Builder::new()
        .prefix("madbase-sandbox-fixture-")
        .tempdir()?;
    std::fs::write(fixture.path().join("inside.txt"), "declared\n")?;
    std::fs::write(fixture.path().join("outside.txt"), "not in the fileset\n")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let cases = [
        ("control", "cat inside.txt".to_owned(), true),
        (
            "a file outside the fileset",
            "cat inside.txt outside.txt".to_owned(),
            false,
        ),
        ("an undeclared tool", "curl --version".to_owned(), false),
        (
            "a network connection",
            format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"),
            false,
        ),
        ("a write to HOME", "touch \"$HOME/x\"".to_owned(), false),
    ];
    let mut problems = Vec::new();
    for (name, script, passes) in &cases {
        // Outside the sandbox every fixture passes: what fails inside is the
        // sandbox's doing.
        let outside = Command::new("sh")
            .args(["-c", script])
            .current_dir(fixture.path())
            .env("HOME", fixture.path())
            .output()?;
        if !outside.status.success() {
            problems.push(format!(
                "{name}: fails outside the sandbox too: {}",
                String::from_utf8_lossy(&outside.stderr)
            ));
            continue;
        }
        let plan = Plan {
            name: format!("self-test-{}", name.replace(' ', "-")),
            root: fixture.path().to_path_buf(),
            files: vec!["inside.txt".to_owned()],
            programs: Vec::new(),
            cargo: false,
            postgres: false,
            script: script.clone(),
            env: Vec::new(),
            network: false,
        };
        let inside = replay(&plan)?;
        let _ = std::fs::remove_dir_all(Path::new(BASE).join("checks").join(&plan.name));
        if inside == *passes {
            eprintln!("ok: {name}: {}", if *passes { "passes" } else { "refused" });
        } else {
            problems.push(format!(
                "{name}: {} in the sandbox",
                if inside { "passes" } else { "fails" }
            ));
        }
    }
    drop(listener);
    if !problems.is_empty() {
        bail!("the sandbox self-test failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
