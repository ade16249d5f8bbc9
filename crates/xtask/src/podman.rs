//! A project-local podman: every podman (and podman-compose) the tasks run
//! uses configuration and storage under `target/podman/`, never the machine's.
//!
//! The machine-wide defaults do not work everywhere these tasks run (in a
//! container there is no systemd for cgroups or journald, and the default
//! `nofile` ulimit can exceed the hard limit), so [`Podman::setup`] writes:
//!
//! - `target/podman/containers.conf` (`CONTAINERS_CONF`): no default ulimits,
//!   the `runc` runtime, `cgroupfs` cgroups, a file events log, the per-boot
//!   state (`tmp_dir`) and network configs under `target/podman/`, and the
//!   `netavark` network backend when it is installed: containers of a
//!   compose project find each other by service name only through its
//!   `aardvark-dns` (`apt-get install netavark aardvark-dns`); without it,
//!   CNI, where that needs the `dnsname` plugin;
//! - `target/podman/storage.conf` (`CONTAINERS_STORAGE_CONF`): the `overlay`
//!   driver (`vfs` when `PODMAN_STORAGE_DRIVER=vfs` is set, for file systems
//!   without overlay), graph and run roots under `target/podman/`.
//!
//! Podman's run state must not outlive a reboot; `target/` is not a tmpfs, so
//! the state directories are wiped when the kernel boot id changed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::root;

/// A podman configured to keep everything under `target/podman/`.
#[derive(Debug, Clone)]
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Writes the configuration under `target/podman/` (idempotently) and
    /// returns the helper. Installs nothing: `bash .ci/run` installs podman,
    /// runc and podman-compose (`apt-get install podman runc buildah`,
    /// `pip install podman-compose==1.6.0`).
    pub fn setup() -> Result<Self> {
        let dir = root().join("target/podman");
        Self::setup_in(&dir)?;
        Ok(Podman { dir })
    }

    fn setup_in(dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let boot_file = dir.join("boot_id");
        let previous = std::fs::read_to_string(&boot_file).unwrap_or_default();
        if previous.trim() != boot_id {
            // Stale run state from before a reboot: podman refreshes its
            // database when `tmp_dir` is empty.
            for stale in ["run", "tmp"] {
                let path = dir.join(stale);
                if path.exists() {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("removing stale {}", path.display()))?;
                }
            }
            std::fs::write(&boot_file, format!("{boot_id}\n"))?;
        }
        for sub in ["graph", "run", "tmp", "networks"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let driver = match std::env::var("PODMAN_STORAGE_DRIVER").as_deref() {
            Ok("vfs") => "vfs",
            _ => "overlay",
        };
        write_if_changed(
            &dir.join("containers.conf"),
            &containers_conf(dir, network_backend()),
        )?;
        write_if_changed(&dir.join("storage.conf"), &storage_conf(dir, driver))?;
        Ok(())
    }

    /// The directory holding the configuration and storage.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The environment that points podman at this configuration.
    pub fn envs(&self) -> Vec<(OsString, OsString)> {
        vec![
            (
                "CONTAINERS_CONF".into(),
                self.dir.join("containers.conf").into_os_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.join("storage.conf").into_os_string(),
            ),
        ]
    }

    /// `podman` with this configuration, run from the workspace root.
    pub fn command(&self) -> Command {
        self.with_env("podman")
    }

    /// `podman-compose` with this configuration (it runs `podman`, which
    /// inherits the environment).
    pub fn compose(&self) -> Command {
        self.with_env("podman-compose")
    }

    fn with_env(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.envs()).current_dir(root());
        cmd
    }
}

/// `netavark` when it and `aardvark-dns` are installed, else `cni`.
fn network_backend() -> &'static str {
    let installed = |name: &str| {
        [
            "/usr/libexec/podman",
            "/usr/lib/podman",
            "/usr/local/libexec/podman",
        ]
        .iter()
        .any(|dir| Path::new(dir).join(name).exists())
    };
    if installed("netavark") && installed("aardvark-dns") {
        "netavark"
    } else {
        "cni"
    }
}

fn containers_conf(dir: &Path, network_backend: &str) -> String {
    format!(
        r#"# Generated by cargo xtask (crates/xtask/src/podman.rs); do not edit.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
tmp_dir = "{tmp}"

[network]
network_backend = "{network_backend}"
network_config_dir = "{networks}"
"#,
        events = dir.join("events.log").display(),
        tmp = dir.join("tmp").display(),
        networks = dir.join("networks").display(),
    )
}

fn storage_conf(dir: &Path, driver: &str) -> String {
    format!(
        r#"# Generated by cargo xtask (crates/xtask/src/podman.rs); do not edit.
[storage]
driver = "{driver}"
graphroot = "{graph}"
runroot = "{run}"
"#,
        graph = dir.join("graph").display(),
        run = dir.join("run").display(),
    )
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_writes_both_files_with_local_roots() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-podman-{}", std::process::id()));
        Podman::setup_in(&dir)?;
        let containers = std::fs::read_to_string(dir.join("containers.conf"))?;
        let storage = std::fs::read_to_string(dir.join("storage.conf"))?;
        std::fs::remove_dir_all(&dir)?;
        assert!(containers.contains("default_ulimits = []"), "{containers}");
        assert!(containers.contains(r#"cgroup_manager = "cgroupfs""#));
        assert!(containers.contains(r#"runtime = "runc""#));
        assert!(containers.contains("network_backend = "));
        assert!(storage.contains(&format!("graphroot = \"{}", dir.display())));
        assert!(storage.contains(&format!("runroot = \"{}", dir.display())));
        Ok(())
    }
}
