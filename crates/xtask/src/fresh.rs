//! `cargo xtask fresh-machine`: what `.ci/run` installs, rehearsed on a bare
//! Debian 12.
//!
//! A `debootstrap --variant=minbase bookworm` root (Debian's essential
//! packages and apt, nothing else) in a fresh temporary directory; inside it
//! (a chroot in a mount namespace, with /proc, /dev and /sys), `apt-get
//! install` of exactly the `APT_PACKAGES` list of `.ci/run`, daemons kept
//! from starting as `.ci/run`'s machines do; then every program of
//! `nix/checks.toml` that comes from apt or is declared essential must be
//! found there (on PATH, in Debian's Postgres server directory or among
//! podman's helpers in /usr/lib/podman). A program
//! the checks start that a bare machine would not have fails here.
//!
//! The Rust toolchain, git, Node/npm and Python/pip ("image" in
//! checks.toml) come with this machine kind and are not rehearsed; the pip,
//! npm and cargo tools are installed by `.ci/run` with those.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::checks::{CiRun, Declaration};
use crate::util::{root, run, step};

/// The Debian mirror `.ci/run`'s apt uses.
const MIRROR: &str = "http://deb.debian.org/debian";

pub fn run_task() -> Result<()> {
    let started = Instant::now();
    let declaration = Declaration::load()?;
    let ci_run = std::fs::read_to_string(root().join(".ci/run"))?;
    let installs = CiRun::parse(&ci_run);
    let dir = tempfile::Builder::new()
        .prefix("madbase-fresh-")
        .tempdir_in("/var/tmp")?;
    let chroot = dir.path().join("root");

    step("debootstrap --variant=minbase bookworm (a bare Debian 12)");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&chroot)
        .arg(MIRROR))?;

    step(".ci/run's apt packages, on the bare root");
    std::fs::copy("/etc/resolv.conf", chroot.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf")?;
    // Keep the packages' daemons from starting, as on a machine whose init
    // is not running them.
    let policy = chroot.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let packages: Vec<&str> = installs.apt.iter().map(String::as_str).collect();
    in_chroot(
        &chroot,
        &format!(
            "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends {} >/dev/null",
            packages.join(" ")
        ),
    )?;

    step("every declared program is on the fresh machine");
    let mut missing = Vec::new();
    let mut found = 0;
    for (program, source) in &declaration.programs {
        if !(source == "essential" || source.starts_with("apt:")) {
            continue;
        }
        // Off PATH: Debian's Postgres server binaries, and the helpers podman
        // starts itself (netavark, aardvark-dns).
        let probe = format!(
            "command -v {program} >/dev/null || test -x /usr/lib/postgresql/15/bin/{program} || test -x /usr/lib/podman/{program}"
        );
        if in_chroot(&chroot, &probe).is_ok() {
            found += 1;
        } else {
            missing.push(format!("{program} ({source})"));
        }
    }
    ensure!(
        missing.is_empty(),
        "a bare Debian 12 with .ci/run's apt packages lacks: {}",
        missing.join(", ")
    );
    eprintln!(
        "fresh machine: {} apt packages installed on a bare Debian 12; all {found} apt and essential programs found ({:.0}s)",
        packages.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `script` with `sh` chrooted into `root`, in a mount namespace with
/// /proc, /dev and /sys.
fn in_chroot(root: &Path, script: &str) -> Result<()> {
    let r = root.display();
    let outer = format!(
        "set -e\nmount -t proc proc '{r}/proc'\nmount --rbind /dev '{r}/dev'\nmount --rbind /sys '{r}/sys'\nexec chroot '{r}' /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/sh -c \"$0\"",
    );
    let status = Command::new("unshare")
        .args(["--mount", "--fork", "--", "/bin/sh", "-c", &outer, script])
        .status()
        .context("cannot start unshare")?;
    ensure!(status.success(), "in the fresh root: {script}: {status}");
    Ok(())
}
