//! Finding the Postgres server binaries (`initdb`, `postgres`, `pg_ctl`):
//! on `PATH`, from `pg_config --bindir`, or the newest
//! `/usr/lib/postgresql/*/bin`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding `initdb` and `postgres`, symlinks resolved (so
/// `pg_isready` and `pg_ctl` sit beside them), or a message saying what to
/// install.
pub fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| d.join("postgres").is_file())
                    .unwrap_or(dir);
                return Ok(real);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        "no Postgres server binaries (initdb, postgres) on PATH, from pg_config or in \
         /usr/lib/postgresql/*/bin: install the Postgres server (Debian/Ubuntu: \
         `apt install postgresql`, Fedora: `dnf install postgresql-server`, macOS: \
         `brew install postgresql`, Nix: `nix run .#dev`) or set DATABASE_URL"
            .to_owned()
    })
}
