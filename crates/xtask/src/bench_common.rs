//! What both benchmarks (`bench` for the worker, `bench_proxy` for the
//! proxy) use: ports, the target directory, HTTP probes, CPU time from
//! /proc, and the madbase services they start (control with a tenant, the
//! proxy), each a [`Guard`] ended with the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::procs::{GRACE, Guard};
use crate::util::{free_port, http_client, output, root, run};

/// The services' `JWT_SECRET`.
pub(crate) const SECRET: &str = "bench-secret-that-is-at-least-32-bytes-long";
/// Control's `MADBASE_MASTER_KEY`.
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Cargo's target directory (`CARGO_TARGET_DIR` when set).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Polls `GET url` until it answers a success, for up to 60 s.
pub(crate) fn wait_http(url: &str) -> Result<()> {
    let http = http_client(Duration::from_secs(2))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http.get(url).send().is_ok_and(|a| a.status().is_success()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 60 s")
}

/// `POST url` of `body` with `Authorization: Bearer <token>`; the JSON answer
/// of a success.
pub(crate) fn post_json(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let answer = http_client(Duration::from_secs(60))?
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .with_context(|| format!("POST {url}"))?;
    let status = answer.status();
    let text = answer.text()?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// CPU seconds (user + system) a process has used, from /proc.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = procfs::process::Process::new(i32::try_from(pid)?)?.stat()?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Pins the Postgres server (postmaster and its processes; backends forked
/// later inherit it) to `cpu`: it is a server like the others, and its
/// backends must not borrow the load generator's core.
fn pin_postgres(server: &madbase_testkit::PgServer, cpu: &str) -> Result<()> {
    let data = server.psql("postgres", "SHOW data_directory")?;
    let pidfile = std::fs::read_to_string(Path::new(&data).join("postmaster.pid"))
        .context("reading postmaster.pid")?;
    let postmaster = pidfile
        .lines()
        .next()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .context("postmaster.pid has no pid")?
        .to_owned();
    let children = output(Command::new("pgrep").args(["-P", &postmaster]))?;
    for pid in std::iter::once(postmaster.as_str()).chain(children.lines().map(str::trim)) {
        run(Command::new("taskset")
            .args(["-apc", cpu, pid])
            .stdout(Stdio::null()))?;
    }
    Ok(())
}

/// Control, running on CPU1 against a throwaway Postgres, with one tenant.
pub(crate) struct BenchControl {
    _proc: Guard,
    pub(crate) url: String,
    /// The admin token (`Authorization: Bearer` of control's admin API).
    pub(crate) token: String,
    pub(crate) anon: String,
    /// The throwaway database control runs on (its server holds the tenant's).
    pub(crate) db: madbase_testkit::TestDb,
}

/// Starts control (logging to `work/control.log`) and creates `tenant`.
pub(crate) fn control_with_tenant(bin: &Path, work: &Path, tenant: &str) -> Result<BenchControl> {
    let db = madbase_testkit::postgres()?;
    pin_postgres(&db.server, "0")?;
    let control_port = free_port()?;
    let mut control_cmd = Command::new("taskset");
    control_cmd
        .args(["-c", "1"])
        .arg(bin)
        .arg("control")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_MASTER_KEY", MASTER_KEY)
        .env("DATABASE_URL", &db.url)
        .env("DEFAULT_TENANT_DB_URL", db.server.url_for("postgres"))
        .env("MADBASE_LISTEN", format!("127.0.0.1:{control_port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .stdout(std::fs::File::create(work.join("control.log"))?)
        .stderr(Stdio::inherit());
    let proc = Guard::spawn(&mut control_cmd, GRACE).context("starting control")?;
    let url = format!("http://127.0.0.1:{control_port}");
    wait_http(&format!("{url}/health"))?;
    let admin = output(
        Command::new(bin)
            .args(["token", "admin"])
            .env("JWT_SECRET", SECRET),
    )?;
    let token = admin.trim().to_owned();
    let created = post_json(
        &format!("{url}/v1/tenants"),
        &token,
        &serde_json::json!({ "id": tenant }),
    )?;
    let anon = created["anon_key"].as_str().context("anon key")?.to_owned();
    Ok(BenchControl {
        _proc: proc,
        url,
        token,
        anon,
        db,
    })
}

/// The proxy on CPU0 with one Tokio thread (logging to `work/proxy.log`),
/// in front of `worker_url`; returns it and its port once healthy.
pub(crate) fn start_proxy(
    bin: &Path,
    work: &Path,
    control_url: &str,
    worker_url: &str,
) -> Result<(Guard, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(bin)
        .arg("proxy")
        .env("TOKIO_WORKER_THREADS", "1")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_CONTROL_URL", control_url)
        .env("MADBASE_WORKER_URL", worker_url)
        .env("MADBASE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env("MADBASE_RATE_LIMIT_RPS", "1000000")
        .stdout(std::fs::File::create(work.join("proxy.log"))?)
        .stderr(Stdio::inherit());
    let proxy = Guard::spawn(&mut cmd, GRACE).context("starting the proxy")?;
    wait_http(&format!("http://127.0.0.1:{port}/health"))?;
    Ok((proxy, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_reads_this_process() {
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(busy.elapsed());
        }
        let cpu = cpu_seconds(std::process::id()).expect("/proc/<pid>/stat");
        assert!(cpu > 0.0 && cpu < 3600.0, "{cpu}");
    }
}
