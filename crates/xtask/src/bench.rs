#![allow(clippy::print_stdout)] // a benchmark report is the output
//! `cargo xtask bench worker`: the worker (release build) against `pgbench`
//! on the same tenant database, in the same run.
//!
//! Three workloads: a single-row GET by primary key, a 100-row GET and a
//! single-row insert. The worker runs on CPU0 with one Tokio worker thread,
//! Postgres on CPU0 too, `wrk` and `pgbench` on CPU1. For each workload
//! pgbench (`-M prepared`, same number of connections) runs two scripts:
//!
//! - (a) the worker's SQL with the worker's round trips: `BEGIN [READ
//!   ONLY]`, the `set_config` call (role, the key's claims, method, path,
//!   headers, statement timeout), the statement the worker plans and
//!   `COMMIT`, all in one pipeline (`\startpipeline`/`\endpipeline`), as the
//!   worker sends them for these requests (a write with nothing to check
//!   before its commit included). (The worker ends each message with its
//!   own Sync inside the one write to the socket; pgbench 15 sends one Sync
//!   for the pipeline.)
//! - (b) the bare data statement alone: the limit.
//!
//! Then a PostgREST-like mixed workload (filters, `in`, `or`, order,
//! embedding both ways, an RPC) at [`MIXED_CONNECTIONS`] connections with
//! its p50/p99 latency, and the three workloads through the proxy.
//!
//! With `--baseline <label>=<madbase binary>` (repeatable) another build's
//! worker (against the same control and database) runs every workload in
//! the same rounds, right after this build's: the before/after of a change.
//!
//! After a warm-up each side runs once per round, in turn; a ratio is the
//! median of the rounds' ratios. The figures go to `target/bench/worker.json`
//! and BENCHMARKS.md (see [`crate::bench_common`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;

use crate::bench_common::{
    Baseline, Figure, Plan, Report, SECRET, Table, Target, Wrk, WrkRun, control_with_tenant,
    cpu_seconds, post_json, start_proxy, target_dir, wait_http,
};
use crate::procs::{GRACE, Guard};
use crate::util::{free_port, http_client, step};

const CONNECTIONS: u32 = 16;
/// The benchmark's tenant (unique among the benchmarks: see
/// [`crate::bench_footprint::TENANT`]).
pub(crate) const TENANT: &str = "bench";
/// Connections of the mixed workload.
const MIXED_CONNECTIONS: u32 = 64;
const ROWS: u32 = 10_000;
/// Through-proxy throughput against direct (issue 5).
const PROXIED_TARGET: f64 = 0.8;
/// (a): the worker against pgbench running its SQL and round trips.
const SAME_SQL_TARGET: f64 = 0.8;

/// One workload: the HTTP request (as a wrk Lua script) and the SQL.
struct Workload {
    name: &'static str,
    /// Target of the ratio to the bare statement, (b).
    target: f64,
    lua: String,
    /// The statement the worker plans for the request (pgbench syntax).
    statement: &'static str,
    read_only: bool,
    method: &'static str,
    path: &'static str,
    /// The request headers the worker sees besides `apikey`, the tenant and
    /// `host` (for `request.headers`).
    extra_headers: &'static str,
}

const SINGLE: &str = "SELECT NULL::bigint, pg_catalog.count(_s), coalesce(json_agg(_s), '[]')::text \
FROM (SELECT \"t0\".* FROM \"public\".\"bench_items\" AS \"t0\" WHERE (\"t0\".\"id\" = CAST(:id::text AS integer)) LIMIT 1000) _s;";
const HUNDRED: &str = "SELECT NULL::bigint, pg_catalog.count(_s), coalesce(json_agg(_s), '[]')::text \
FROM (SELECT \"t0\".* FROM \"public\".\"bench_items\" AS \"t0\" WHERE (\"t0\".\"id\" >= CAST(:id::text AS integer)) \
ORDER BY \"t0\".\"id\" ASC LIMIT 100) _s;";
const INSERT: &str = "INSERT INTO \"public\".\"bench_log\" AS \"t0\" (\"name\", \"price\") SELECT \"name\", \"price\" \
FROM json_populate_recordset(NULL::\"public\".\"bench_log\", json_build_array('{\"name\":\"bench\",\"price\":1.5}'::text::json)) _;";

fn headers_lua(anon: &str) -> String {
    format!("wrk.headers[\"apikey\"] = \"{anon}\"\nwrk.headers[\"X-Madbase-Tenant\"] = \"bench\"\n")
}

/// The workloads; `prefix` goes before `/rest/v1` (`/t/<tenant>` through the proxy).
fn workloads(anon: &str, prefix: &str) -> Vec<Workload> {
    let headers = headers_lua(anon);
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
            extra_headers: "",
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
            extra_headers: "",
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
            extra_headers: ",\"content-type\":\"application/json\",\"content-length\":\"29\"",
        },
    ]
}

/// The mixed workload's requests (Lua expressions of a random id `r`):
/// what a PostgREST client sends besides the plain reads above.
const MIXED: [&str; 8] = [
    // filters, order, limit
    "\"/rest/v1/bench_items?select=id,name,price&price=gt.\" .. r .. \"&name=like.item*&order=price.desc,id&limit=10\"",
    // in
    "\"/rest/v1/bench_items?select=id,name&id=in.(\" .. r .. \",\" .. (r + 7) .. \",\" .. (r + 13) .. \")\"",
    // or, order, limit
    "\"/rest/v1/bench_items?or=(id.eq.\" .. r .. \",price.lt.3)&order=id.desc&limit=5\"",
    // many-to-one embed
    "\"/rest/v1/bench_orders?select=id,qty,bench_items(name,price)&item_id=eq.\" .. r",
    // one-to-many embed
    "\"/rest/v1/bench_items?select=id,name,bench_orders(id,qty)&id=eq.\" .. r",
    // RPC (GET, a stable SQL function)
    "\"/rest/v1/rpc/bench_price?item=\" .. r",
    // a range with an exact count
    "\"/rest/v1/bench_orders?select=id,item_id&item_id=lt.\" .. r .. \"&order=id&limit=20\"",
    // single object
    "\"/rest/v1/bench_items?id=eq.\" .. r",
];

fn mixed_lua(anon: &str) -> String {
    let paths: Vec<String> = MIXED
        .iter()
        .map(|p| format!("  function(r) return {p} end"))
        .collect();
    format!(
        "{headers}local paths = {{\n{paths}\n}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  \
         local r = math.random(1, {max})\n  return wrk.format(\"GET\", paths[(i % #paths) + 1](r))\nend\n",
        headers = headers_lua(anon),
        paths = paths.join(",\n"),
        max = ROWS - 20,
    )
}

/// The anon key's claims, as the worker passes them to `set_config`.
fn claims_of(key: &str) -> Result<String> {
    let payload = key.split('.').nth(1).context("the anon key is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(String::from_utf8(bytes)?)
}

/// SQL text as a single-quoted literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The pgbench script: (a) the worker's SQL and round trips, or (b) the
/// statement alone.
fn pgbench_script(w: &Workload, whole: bool, claims: &str, anon: &str, host: &str) -> String {
    let random = match w.name {
        "100-row GET" => format!("\\set id random(1, {})\n", ROWS - 100),
        _ => format!("\\set id random(1, {ROWS})\n"),
    };
    if !whole {
        return format!("{random}{}\n", w.statement);
    }
    let headers = format!(
        "{{\"host\":\"{host}\",\"apikey\":\"{anon}\",\"x-madbase-tenant\":\"bench\"{}}}",
        w.extra_headers
    );
    let set = format!(
        "SELECT set_config('role', 'anon', true), set_config('request.jwt.claims', {claims}, true), \
         set_config('request.method', '{method}', true), set_config('request.path', '{path}', true), \
         set_config('request.headers', {headers}, true), set_config('statement_timeout', '10000', true);",
        claims = literal(claims),
        method = w.method,
        path = w.path,
        headers = literal(&headers),
    );
    let begin = if w.read_only {
        "BEGIN READ ONLY;"
    } else {
        "BEGIN;"
    };
    format!(
        "{random}\\startpipeline\n{begin}\n{set}\n{stmt}\nCOMMIT;\n\\endpipeline\n",
        stmt = w.statement
    )
}

/// One pinned wrk run of `script` against `url`.
fn wrk(url: &str, script: &Path, seconds: u32, connections: u32) -> Result<WrkRun> {
    Wrk::new(url, connections, seconds).script(script).run()
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
        .context("running pgbench (apt: postgresql-client-15)")?;
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
    ours: Vec<f64>,
    /// One list per baseline.
    baselines: Vec<Vec<f64>>,
    proxied: Vec<f64>,
    same_sql: Vec<f64>,
    statement: Vec<f64>,
    cpu: Vec<f64>,
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

/// A worker (`bin`) on CPU0 with one Tokio thread; returns it and its URL
/// once it answers a single-row GET.
fn start_worker(
    bin: &Path,
    work: &Path,
    log: &str,
    control_url: &str,
    anon: &str,
) -> Result<(Guard, String)> {
    let port = free_port()?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(bin)
        .arg("worker")
        .env("TOKIO_WORKER_THREADS", "1")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_CONTROL_URL", control_url)
        // One more than the load: the pool also holds the LISTEN connection.
        .env(
            "MADBASE_WORKER_POOL_MAX_PER_TENANT",
            (CONNECTIONS + 1).to_string(),
        )
        .env("MADBASE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .stdout(std::fs::File::create(work.join(log))?)
        .stderr(Stdio::inherit());
    let worker = Guard::spawn(&mut cmd, GRACE)
        .with_context(|| format!("starting the worker {}", bin.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/health"))?;
    let probe = http_client(Duration::from_secs(10))?
        .get(format!("{url}/rest/v1/bench_items?id=eq.1"))
        .header("apikey", anon)
        .header("X-Madbase-Tenant", "bench")
        .send()
        .context("GET /rest/v1/bench_items from the worker")?
        .text()?;
    if !probe.contains("\"id\":1") {
        bail!("unexpected answer from the worker: {probe}");
    }
    Ok((worker, url))
}

/// Runs the worker benchmark, writes its report.
pub fn worker(plan: Plan, baselines: &[Baseline]) -> Result<()> {
    step("bench: worker vs pgbench");
    crate::images::cargo_release(&["-p", "madbase"])?;
    let target = target_dir();
    let bin = target.join("release/madbase");
    let work = target.join(if plan.smoke {
        "bench/worker-smoke"
    } else {
        "bench/worker"
    });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut report = Report::start(
        "worker",
        plan,
        &format!(
            "The worker on CPU0 with one Tokio thread (`TOKIO_WORKER_THREADS=1`), Postgres \
             pinned to CPU0 too; `wrk -t1` and `pgbench -M prepared -j1` on CPU1; \
             {CONNECTIONS} connections; {ROWS} rows. (a) is pgbench running the worker's SQL \
             with its round trips (`BEGIN`, `set_config`, the statement and `COMMIT` in one \
             `\\startpipeline` … `\\endpipeline`, as the worker sends them); (b) is pgbench \
             running the bare \
             data statement, the limit. A ratio is the median of the rounds' ratios (the runs \
             of one round sit next to each other in time); every round's ratio is listed."
        ),
    );

    // Postgres, control (CPU1, consulted once thanks to the cache), a tenant.
    let control = control_with_tenant(&bin, &work, TENANT)?;
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
         CREATE TABLE bench_orders (id int PRIMARY KEY, item_id int NOT NULL REFERENCES bench_items, qty int NOT NULL); \
         INSERT INTO bench_orders SELECT g, 1 + (g * 7919) % {ROWS}, 1 + g % 5 FROM generate_series(1, {orders}) g; \
         CREATE INDEX ON bench_orders (item_id); \
         CREATE FUNCTION bench_price(item int) RETURNS numeric LANGUAGE sql STABLE \
         AS 'SELECT price FROM bench_items WHERE id = item'; \
         ANALYZE bench_items; ANALYZE bench_orders",
        orders = 2 * ROWS,
    );
    post_json(
        &format!("{control_url}/v1/tenants/bench/sql"),
        &token,
        &serde_json::json!({ "query": fixture }),
    )?;

    let (worker, worker_url) = start_worker(&bin, &work, "worker.log", &control_url, &anon)?;
    let worker_pid = worker.id();
    let mut old = Vec::new();
    for (i, b) in baselines.iter().enumerate() {
        old.push(start_worker(
            &b.bin,
            &work,
            &format!("baseline-{i}.log"),
            &control_url,
            &anon,
        )?);
    }

    // The same requests through the proxy (on CPU0 too).
    let (_proxy, proxy_port) = start_proxy(&bin, &work, &control_url, &worker_url)?;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/t/bench");
    let via_proxy = workloads(&anon, "/t/bench");

    let claims = claims_of(&anon)?;
    let host = worker_url.trim_start_matches("http://").to_owned();
    let pgbench_bin = pg_tool("pgbench");
    let tenant_db = control.db.server.url_for("tenant_bench");
    let mut measured: Vec<(Workload, Rounds)> = Vec::new();
    for (w, p) in workloads(&anon, "").into_iter().zip(via_proxy) {
        let slug = w.name.replace(' ', "_");
        let lua = work.join(format!("{slug}.lua"));
        std::fs::write(&lua, &w.lua)?;
        let proxied_lua = work.join(format!("{slug}-proxy.lua"));
        std::fs::write(&proxied_lua, &p.lua)?;
        let proxied_url = format!("{proxy_url}{}", w.path);
        let whole = work.join(format!("{slug}.sql"));
        std::fs::write(&whole, pgbench_script(&w, true, &claims, &anon, &host))?;
        let bare = work.join(format!("{slug}-statement.sql"));
        std::fs::write(&bare, pgbench_script(&w, false, &claims, &anon, &host))?;
        // The GET scripts set their own path; the insert posts to this URL.
        let url = format!("{worker_url}{}", w.path);
        let old_urls: Vec<String> = old.iter().map(|(_, u)| format!("{u}{}", w.path)).collect();
        // Warm-up.
        wrk(&url, &lua, plan.warmup, CONNECTIONS)?;
        for u in &old_urls {
            wrk(u, &lua, plan.warmup, CONNECTIONS)?;
        }
        wrk(&proxied_url, &proxied_lua, plan.warmup, CONNECTIONS)?;
        pgbench(&pgbench_bin, &tenant_db, &whole, plan.warmup)?;
        pgbench(&pgbench_bin, &tenant_db, &bare, plan.warmup)?;
        let mut r = Rounds {
            baselines: vec![Vec::new(); old.len()],
            ..Rounds::default()
        };
        for _ in 0..plan.rounds {
            let before = cpu_seconds(worker_pid)?;
            let rps = wrk(&url, &lua, plan.seconds, CONNECTIONS)?.rps;
            r.cpu
                .push((cpu_seconds(worker_pid)? - before) / (rps * f64::from(plan.seconds)));
            r.ours.push(rps);
            for (u, runs) in old_urls.iter().zip(&mut r.baselines) {
                runs.push(wrk(u, &lua, plan.seconds, CONNECTIONS)?.rps);
            }
            r.proxied
                .push(wrk(&proxied_url, &proxied_lua, plan.seconds, CONNECTIONS)?.rps);
            r.same_sql
                .push(pgbench(&pgbench_bin, &tenant_db, &whole, plan.seconds)?);
            r.statement
                .push(pgbench(&pgbench_bin, &tenant_db, &bare, plan.seconds)?);
        }
        measured.push((w, r));
    }

    // The mixed workload at 64 connections (and the baseline's, in turn).
    let mixed = work.join("mixed.lua");
    std::fs::write(&mixed, mixed_lua(&anon))?;
    let mixed_url = format!("{worker_url}/rest/v1/");
    let old_mixed_urls: Vec<String> = old.iter().map(|(_, u)| format!("{u}/rest/v1/")).collect();
    wrk(&mixed_url, &mixed, plan.warmup, MIXED_CONNECTIONS)?;
    for u in &old_mixed_urls {
        wrk(u, &mixed, plan.warmup, MIXED_CONNECTIONS)?;
    }
    let mut ours_mixed = Vec::new();
    let mut old_mixed: Vec<Vec<WrkRun>> = vec![Vec::new(); old.len()];
    for _ in 0..plan.rounds {
        ours_mixed.push(wrk(&mixed_url, &mixed, plan.seconds, MIXED_CONNECTIONS)?);
        for (u, runs) in old_mixed_urls.iter().zip(&mut old_mixed) {
            runs.push(wrk(u, &mixed, plan.seconds, MIXED_CONNECTIONS)?);
        }
    }

    // The report.
    let mut t = Table::new(
        "worker",
        "",
        &[
            "workload",
            "worker req/s",
            "(a) pgbench, worker's SQL pipelined, tx/s",
            "ratio (a)",
            "target",
            "rounds",
            "(b) pgbench, statement only, tx/s",
            "ratio (b)",
            "target",
            "rounds",
            "worker CPU µs/req",
        ],
    );
    for (w, r) in &measured {
        let a = Figure::ratio(&r.ours, &r.same_sql).target(Target::AtLeast(SAME_SQL_TARGET));
        let b = Figure::ratio(&r.ours, &r.statement).target(Target::AtLeast(w.target));
        t.row(vec![
            w.name.into(),
            Figure::median(r.ours.clone(), "", 0).into(),
            Figure::median(r.same_sql.clone(), "", 0).into(),
            a.clone().into(),
            a.target_shown().into(),
            a.rounds_shown().into(),
            Figure::median(r.statement.clone(), "", 0).into(),
            b.clone().into(),
            b.target_shown().into(),
            b.rounds_shown().into(),
            Figure::median(r.cpu.iter().map(|c| c * 1e6).collect(), "", 1).into(),
        ]);
    }
    report.tables.push(t);

    let mut t = Table::new(
        "mixed",
        &format!(
            "PostgREST-like mixed workload: `wrk -t1 -c{MIXED_CONNECTIONS} --latency`, \
             the requests in turn: filters with order and limit, `in`, `or`, a many-to-one \
             and a one-to-many embed, an RPC (GET, a stable SQL function), a range of an \
             embedded table's rows, a single row."
        ),
        &["worker", "req/s", "p50 ms", "p99 ms", "rounds (req/s)"],
    );
    let mut mixed_row = |label: String, runs: &[WrkRun]| {
        let rps = Figure::median(runs.iter().map(|w| w.rps).collect(), "", 0);
        t.row(vec![
            label.into(),
            rps.clone().into(),
            Figure::median(runs.iter().map(|w| w.p50 * 1e3).collect(), "", 2).into(),
            Figure::median(runs.iter().map(|w| w.p99 * 1e3).collect(), "", 2).into(),
            rps.rounds_shown().into(),
        ]);
    };
    mixed_row("this build".to_owned(), &ours_mixed);
    for (b, runs) in baselines.iter().zip(&old_mixed) {
        mixed_row(b.label.clone(), runs);
    }
    report.tables.push(t);

    for (i, b) in baselines.iter().enumerate() {
        let mut t = Table::new(
            &format!("baseline-{}", b.label),
            &format!(
                "This build against {} (`--baseline`: the same harness, the two workers \
                 in turn in every round):",
                b.label
            ),
            &[
                "workload",
                "this build req/s",
                "baseline req/s",
                "ratio",
                "rounds",
            ],
        );
        for (w, r) in &measured {
            let ratio = Figure::ratio(&r.ours, &r.baselines[i]);
            t.row(vec![
                w.name.into(),
                Figure::median(r.ours.clone(), "", 0).into(),
                Figure::median(r.baselines[i].clone(), "", 0).into(),
                ratio.clone().into(),
                ratio.rounds_shown().into(),
            ]);
        }
        let (a, o): (Vec<f64>, Vec<f64>) = (
            ours_mixed.iter().map(|w| w.rps).collect(),
            old_mixed[i].iter().map(|w| w.rps).collect(),
        );
        let ratio = Figure::ratio(&a, &o);
        t.row(vec![
            format!("mixed, {MIXED_CONNECTIONS} connections").into(),
            Figure::median(a, "", 0).into(),
            Figure::median(o, "", 0).into(),
            ratio.clone().into(),
            ratio.rounds_shown().into(),
        ]);
        report.tables.push(t);
    }

    let mut t = Table::new(
        "proxied",
        "The same requests through the proxy (proxy on CPU0 too, `TOKIO_WORKER_THREADS=1`): \
         tenant lookup, key check, rate limit, metrics, request id, log line.",
        &[
            "workload",
            "direct req/s",
            "via proxy req/s",
            "ratio",
            "target",
            "rounds",
        ],
    );
    for (w, r) in &measured {
        let ratio = Figure::ratio(&r.proxied, &r.ours).target(Target::AtLeast(PROXIED_TARGET));
        t.row(vec![
            w.name.into(),
            Figure::median(r.ours.clone(), "", 0).into(),
            Figure::median(r.proxied.clone(), "", 0).into(),
            ratio.clone().into(),
            ratio.target_shown().into(),
            ratio.rounds_shown().into(),
        ]);
    }
    report.tables.push(t);
    drop(old);
    drop(worker);
    report.write()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_script_sends_the_whole_transaction_at_once() {
        let w = workloads("k", "").pop().expect("insert");
        let s = pgbench_script(&w, true, "{\"role\":\"anon\"}", "k", "h:1");
        assert!(s.contains("\\startpipeline\nBEGIN;\n"), "{s}");
        assert!(s.ends_with("COMMIT;\n\\endpipeline\n"), "{s}");
        assert!(s.contains("'{\"role\":\"anon\"}'"), "{s}");
    }
}
