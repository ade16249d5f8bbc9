#![allow(clippy::print_stdout)] // a benchmark report is the output
//! `cargo xtask bench` (worker part): the worker (release build) against
//! `pgbench` running the identical SQL on the same tenant database.
//!
//! Three workloads: a single-row GET by primary key, a 100-row GET and a
//! single-row insert. The worker runs on CPU0 with one Tokio worker thread,
//! Postgres on CPU0 too, `wrk` and `pgbench` on CPU1. For each
//! workload pgbench runs (`-M prepared`, same number of connections) two
//! custom scripts: the worker's whole per-request transaction (`BEGIN`,
//! `set_config` of role, claims and request facts, the statement the worker
//! plans, `COMMIT`), which is the "identical SQL" the ratio target is about,
//! and the bare statement alone, for reference. After a warm-up each side
//! runs five times, in turn (a round); a ratio is the median of the five
//! rounds' ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::bench_common::{
    SECRET, control_with_tenant, cpu_seconds, post_json, start_proxy, target_dir, wait_http,
};
use crate::procs::{GRACE, Guard};
use crate::util::{free_port, http_client, run, step};

const RUN_SECONDS: u32 = 8;
/// Rounds measured (each side once per round, in turn).
const ROUNDS: usize = 5;
const CONNECTIONS: u32 = 16;
const ROWS: u32 = 10_000;
/// Through-proxy throughput against direct (issue 5).
const PROXIED_TARGET: f64 = 0.8;

/// One workload: the HTTP request (as a wrk Lua script) and the SQL.
struct Workload {
    name: &'static str,
    target: f64,
    lua: String,
    /// The statement the worker plans for the request (pgbench syntax).
    statement: &'static str,
    read_only: bool,
    method: &'static str,
    path: &'static str,
}

const SINGLE: &str = "SELECT NULL::bigint, pg_catalog.count(_s), coalesce(json_agg(_s), '[]')::text \
FROM (SELECT \"t0\".* FROM \"public\".\"bench_items\" AS \"t0\" WHERE (\"t0\".\"id\" = CAST(:id::text AS integer)) LIMIT 1000) _s;";
const HUNDRED: &str = "SELECT NULL::bigint, pg_catalog.count(_s), coalesce(json_agg(_s), '[]')::text \
FROM (SELECT \"t0\".* FROM \"public\".\"bench_items\" AS \"t0\" WHERE (\"t0\".\"id\" >= CAST(:id::text AS integer)) \
ORDER BY \"t0\".\"id\" ASC LIMIT 100) _s;";
const INSERT: &str = "INSERT INTO \"public\".\"bench_log\" AS \"t0\" (\"name\", \"price\") SELECT \"name\", \"price\" \
FROM json_populate_recordset(NULL::\"public\".\"bench_log\", json_build_array('{\"name\":\"bench\",\"price\":1.5}'::text::json)) _;";

/// The workloads; `prefix` goes before `/rest/v1` (`/t/<tenant>` through the proxy).
fn workloads(anon: &str, prefix: &str) -> Vec<Workload> {
    let headers = format!(
        "wrk.headers[\"apikey\"] = \"{anon}\"\nwrk.headers[\"X-Madbase-Tenant\"] = \"bench\"\n"
    );
    vec![
        Workload {
            name: "single-row GET",
            target: 0.5,
            lua: format!(
                "{headers}request = function()\n  return wrk.format(\"GET\", \"{prefix}/rest/v1/bench_items?id=eq.\" .. math.random(1, {ROWS}))\nend\n"
            ),
            statement: SINGLE,
            read_only: true,
            method: "GET",
            path: "/rest/v1/bench_items",
        },
        Workload {
            name: "100-row GET",
            target: 0.7,
            lua: format!(
                "{headers}request = function()\n  return wrk.format(\"GET\", \"{prefix}/rest/v1/bench_items?order=id&limit=100&id=gte.\" .. math.random(1, {}))\nend\n",
                ROWS - 100
            ),
            statement: HUNDRED,
            read_only: true,
            method: "GET",
            path: "/rest/v1/bench_items",
        },
        Workload {
            name: "insert",
            target: 0.5,
            lua: format!(
                "{headers}wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{{\"name\":\"bench\",\"price\":1.5}}'\n"
            ),
            statement: INSERT,
            read_only: false,
            method: "POST",
            path: "/rest/v1/bench_log",
        },
    ]
}

/// The pgbench script: the worker's whole transaction, or the statement alone.
fn pgbench_script(w: &Workload, whole: bool) -> String {
    let random = match w.name {
        "100-row GET" => format!("\\set id random(1, {})\n", ROWS - 100),
        _ => format!("\\set id random(1, {ROWS})\n"),
    };
    if !whole {
        return format!("{random}{}\n", w.statement);
    }
    format!(
        "{random}{begin}\nSELECT set_config('role', 'anon', true), \
         set_config('request.jwt.claims', '{{\"role\":\"anon\",\"iss\":\"madbase\",\"ref\":\"bench\"}}', true), \
         set_config('request.method', '{method}', true), set_config('request.path', '{path}', true), \
         set_config('request.headers', '{{\"host\":\"127.0.0.1\",\"apikey\":\"...\",\"x-madbase-tenant\":\"bench\"}}', true), \
         set_config('statement_timeout', '10000', true);\n{stmt}\nCOMMIT;\n",
        begin = if w.read_only {
            "BEGIN READ ONLY;"
        } else {
            "BEGIN;"
        },
        method = w.method,
        path = w.path,
        stmt = w.statement,
    )
}

fn wrk(url: &str, script: &Path, seconds: u32) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (apt: wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") {
        bail!("the worker answered errors:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: Requests/sec in\n{text}"))
}

fn pgbench(bin: &Path, url: &str, script: &Path, seconds: u32) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .args(["-n", "-M", "prepared", "-j", "1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-T{seconds}"))
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .context("running pgbench (apt: postgresql-contrib / postgresql-15)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pgbench output: tps in\n{text}"))
}

/// One workload's measurements, one entry per round.
#[derive(Default)]
struct Rounds {
    name: &'static str,
    target: f64,
    ours: Vec<f64>,
    proxied: Vec<f64>,
    same_sql: Vec<f64>,
    statement: Vec<f64>,
    cpu: Vec<f64>,
}

/// Each round's `a / b` (runs of the same round sit next to each other in
/// time, so the machine's drift cancels out of their ratio).
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

fn listed(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pg_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs the worker benchmark and prints the comparison.
pub fn worker() -> Result<()> {
    step("bench: worker vs pgbench");
    run(Command::new("cargo").args(["build", "--release", "--locked", "-p", "madbase"]))?;
    let target = target_dir();
    let bin = target.join("release/madbase");
    let work = target.join("bench/worker");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // Postgres, control (CPU1, consulted once thanks to the cache), a tenant.
    let control = control_with_tenant(&bin, &work, "bench")?;
    let (control_url, token, anon) = (
        control.url.clone(),
        control.token.clone(),
        control.anon.clone(),
    );
    let fixture = format!(
        "CREATE TABLE bench_items (id int PRIMARY KEY, name text NOT NULL, price numeric NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT '2026-01-01'); \
         INSERT INTO bench_items (id, name, price) SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, {ROWS}) g; \
         CREATE TABLE bench_log (id bigserial PRIMARY KEY, name text NOT NULL, price numeric NOT NULL); \
         ANALYZE bench_items"
    );
    post_json(
        &format!("{control_url}/v1/tenants/bench/sql"),
        &token,
        &serde_json::json!({ "query": fixture }),
    )?;

    // The worker on CPU0 with one Tokio thread.
    let worker_port = free_port()?;
    let mut worker_cmd = Command::new("taskset");
    worker_cmd
        .args(["-c", "0"])
        .arg(&bin)
        .arg("worker")
        .env("TOKIO_WORKER_THREADS", "1")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_CONTROL_URL", &control_url)
        // One more than the load: the pool also holds the LISTEN connection.
        .env(
            "MADBASE_WORKER_POOL_MAX_PER_TENANT",
            (CONNECTIONS + 1).to_string(),
        )
        .env("MADBASE_LISTEN", format!("127.0.0.1:{worker_port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .stdout(std::fs::File::create(work.join("worker.log"))?)
        .stderr(Stdio::inherit());
    let worker = Guard::spawn(&mut worker_cmd, GRACE).context("starting the worker")?;
    let worker_pid = worker.id();
    let worker_url = format!("http://127.0.0.1:{worker_port}");
    wait_http(&format!("{worker_url}/health"))?;
    let probe = http_client(Duration::from_secs(10))?
        .get(format!("{worker_url}/rest/v1/bench_items?id=eq.1"))
        .header("apikey", &anon)
        .header("X-Madbase-Tenant", "bench")
        .send()
        .context("GET /rest/v1/bench_items from the worker")?
        .text()?;
    if !probe.contains("\"id\":1") {
        bail!("unexpected answer from the worker: {probe}");
    }

    // The same requests through the proxy (on CPU0 too).
    let (_proxy, proxy_port) = start_proxy(&bin, &work, &control_url, &worker_url)?;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/t/bench");
    let via_proxy = workloads(&anon, "/t/bench");

    let pgbench_bin = pg_tool("pgbench");
    let tenant_db = control.db.server.url_for("tenant_bench");
    let mut report: Vec<Rounds> = Vec::new();
    for (w, p) in workloads(&anon, "").into_iter().zip(via_proxy) {
        let slug = w.name.replace(' ', "_");
        let lua = work.join(format!("{slug}.lua"));
        std::fs::write(&lua, &w.lua)?;
        let proxied_lua = work.join(format!("{slug}-proxy.lua"));
        std::fs::write(&proxied_lua, &p.lua)?;
        let proxied_url = format!("{proxy_url}{}", w.path);
        let whole = work.join(format!("{slug}.sql"));
        std::fs::write(&whole, pgbench_script(&w, true))?;
        let bare = work.join(format!("{slug}-statement.sql"));
        std::fs::write(&bare, pgbench_script(&w, false))?;
        // The GET scripts set their own path; the insert posts to this URL.
        let url = format!("{worker_url}{}", w.path);
        // Warm-up.
        wrk(&url, &lua, 2)?;
        wrk(&proxied_url, &proxied_lua, 2)?;
        pgbench(&pgbench_bin, &tenant_db, &whole, 2)?;
        pgbench(&pgbench_bin, &tenant_db, &bare, 2)?;
        let mut r = Rounds {
            name: w.name,
            target: w.target,
            ..Rounds::default()
        };
        for _ in 0..ROUNDS {
            let before = cpu_seconds(worker_pid)?;
            let rps = wrk(&url, &lua, RUN_SECONDS)?;
            r.cpu
                .push((cpu_seconds(worker_pid)? - before) / (rps * f64::from(RUN_SECONDS)));
            r.ours.push(rps);
            r.proxied
                .push(wrk(&proxied_url, &proxied_lua, RUN_SECONDS)?);
            r.same_sql
                .push(pgbench(&pgbench_bin, &tenant_db, &whole, RUN_SECONDS)?);
            r.statement
                .push(pgbench(&pgbench_bin, &tenant_db, &bare, RUN_SECONDS)?);
        }
        report.push(r);
    }

    println!(
        "\nworker benchmark ({ROUNDS} rounds × {RUN_SECONDS} s; worker on CPU0 with TOKIO_WORKER_THREADS=1; \
         wrk -t1 -c{CONNECTIONS} and pgbench -M prepared -j1 -c{CONNECTIONS} on CPU1; \
         medians; a ratio is the median of each round's ratio)"
    );
    println!(
        "{:<16} {:>10} {:>16} {:>8} {:>8} {:>16} {:>8} {:>14}  ratio per round",
        "workload",
        "worker/s",
        "pgbench same/s",
        "ratio",
        "target",
        "pgbench stmt/s",
        "ratio",
        "worker CPU µs",
    );
    let mut missed = Vec::new();
    for r in &report {
        let ratios = ratios(&r.ours, &r.same_sql);
        let ratio = median(ratios.clone());
        println!(
            "{:<16} {:>10.0} {:>16.0} {:>7.2}× {:>7.1}× {:>16.0} {:>7.2}× {:>14.1}  {}",
            r.name,
            median(r.ours.clone()),
            median(r.same_sql.clone()),
            ratio,
            r.target,
            median(r.statement.clone()),
            median(self::ratios(&r.ours, &r.statement)),
            median(r.cpu.clone()) * 1e6,
            listed(&ratios),
        );
        if ratio < r.target {
            missed.push(r.name.to_owned());
        }
    }
    println!(
        "ratio = worker requests/s ÷ pgbench transactions/s; \"same\" runs the worker's whole transaction, \
         \"stmt\" only its statement"
    );
    println!(
        "\nthe same requests through the proxy (proxy on CPU0 too, TOKIO_WORKER_THREADS=1): \
         tenant lookup, key check, rate limit, metrics, request id, log line"
    );
    println!(
        "{:<16} {:>10} {:>12} {:>8} {:>8}  ratio per round",
        "workload", "direct/s", "via proxy/s", "ratio", "target"
    );
    for r in &report {
        let ratios = ratios(&r.proxied, &r.ours);
        let ratio = median(ratios.clone());
        println!(
            "{:<16} {:>10.0} {:>12.0} {:>7.2}× {:>7.1}×  {}",
            r.name,
            median(r.ours.clone()),
            median(r.proxied.clone()),
            ratio,
            PROXIED_TARGET,
            listed(&ratios),
        );
        if ratio < PROXIED_TARGET {
            missed.push(format!("{} via proxy", r.name));
        }
    }
    if !missed.is_empty() {
        println!("below target: {}", missed.join(", "));
    }
    Ok(())
}
