//! The sqlx offline data (`.sqlx/`): checked (`cargo xtask ci`) or
//! regenerated (`cargo xtask sqlx-prepare`) against a throwaway Postgres
//! with every crate's migrations applied.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{files_with_ext, root, run, step};

/// Starts a database with all migrations applied; returns its URL.
fn migrated_database() -> Result<String> {
    let db = madbase_testkit::postgres().context("starting a throwaway Postgres")?;
    let mut dirs: Vec<_> = files_with_ext("crates", ".sql")?
        .into_iter()
        .filter_map(|f| f.parent().map(std::path::Path::to_path_buf))
        .filter(|d| d.ends_with("migrations"))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        run(Command::new("sqlx")
            .args(["migrate", "run", "--source"])
            .arg(&dir)
            .env("DATABASE_URL", &db.url))?;
    }
    Ok(db.url)
}

fn prepare(check: bool) -> Result<()> {
    step(if check {
        "cargo sqlx prepare --check"
    } else {
        "cargo sqlx prepare"
    });
    let url = migrated_database()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["sqlx", "prepare", "--workspace"]);
    if check {
        cmd.arg("--check");
    }
    cmd.args(["--", "--all-targets"])
        .env("DATABASE_URL", url)
        .env("SQLX_OFFLINE", "false")
        .current_dir(root());
    run(&mut cmd)
}

/// `cargo sqlx prepare --workspace --check`.
pub fn check() -> Result<()> {
    prepare(true)
}

/// Regenerates `.sqlx/`.
pub fn regenerate() -> Result<()> {
    prepare(false)
}
