//! Small process helpers shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Prints a section header so CI logs are easy to scan.
pub fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// Runs `cmd` from the workspace root, failing with the command line when it
/// exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let status = cmd.current_dir(root()).status().with_context(|| {
        format!("cannot start {shown} (is it installed? `bash .ci/run` installs every tool)")
    })?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, failing (with stderr shown) on a
/// non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.current_dir(root()).output().with_context(|| {
        format!("cannot start {shown} (is it installed? `bash .ci/run` installs every tool)")
    })?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every file below `dir` (relative to the root) whose name ends with `ext`,
/// sorted, skipping `target/` and hidden build directories.
pub fn files_with_ext(dir: &str, ext: &str) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if name != "target" && name != "build" && !name.starts_with('.') {
                    walk(&path, ext, out)?;
                }
            } else if name.ends_with(ext) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    let start = root().join(dir);
    if start.exists() {
        walk(&start, ext, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// A port free on 127.0.0.1 (the kernel's pick; free when asked).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `n` random bytes from the operating system (`getrandom`).
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok(buf)
}

/// `n` random bytes, lowercase hex (`2 * n` characters).
pub fn random_hex(n: usize) -> Result<String> {
    Ok(hex::encode(random_bytes(n)?))
}

/// A blocking HTTP client for the tasks' probes of local services: no proxy
/// from the environment (everything is on 127.0.0.1), `timeout` per request.
pub fn http_client(timeout: std::time::Duration) -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()?)
}
