#![allow(clippy::print_stdout)] // a benchmark report is the output
//! `cargo xtask bench` (proxy part): the madbase proxy against nginx in front
//! of the same upstream, both pinned to CPU0, `wrk` on CPU1.
//!
//! The upstream is a second nginx answering a small JSON body (so neither
//! proxy waits on a database); the madbase proxy does its full work per
//! request: tenant lookup (cached), API key check, rate-limit check,
//! metrics, request ID and a JSON log line (to a file, like nginx's access
//! log). Two more peers show the floor of the stack: `bench_floor` (an
//! example of the proxy crate), the same Tokio + hyper forwarding doing
//! nothing else, once with hyper-util's pooled client (as the proxy for
//! HTTP/2 clients) and once with one upstream connection per client
//! connection (as the proxy for HTTP/1 clients). Reported: requests
//! per second and CPU seconds per request of each process, medians of the
//! rounds after a warm-up, and each peer's CPU ratio to nginx. With
//! `--baseline <label>=<madbase binary>` another build's proxy is one more
//! peer, and its CPU per request is compared with this build's round by
//! round (the before/after of a change).
//!
//! The hand-off part: a single-row GET against a real worker (Postgres
//! pinned to CPU0 too), direct and through the proxy, once with the proxy
//! and the worker in one `madbase serve --all` process (in-process
//! hand-off) and once as two processes (HTTP over loopback, one upstream
//! connection per client connection: the upstream sees exactly the
//! client's concurrency).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::bench_common::{
    Baseline, BenchControl, Figure, MASTER_KEY, Plan, Report, SECRET, Table, Target, Wrk,
    control_with_tenant, post_json, start_proxy, start_proxy_with, target_dir, tree_cpu_seconds,
    wait_http,
};
use crate::procs::{GRACE, Guard};
use crate::util::{free_port, step};

/// The CPU per request target against nginx (issue 23: this step ≤ 1.3×).
const NGINX_TARGET: f64 = 1.3;
/// Through the proxy against direct to the worker (issue 23).
const IN_PROCESS_TARGET: f64 = 0.95;
const HTTP_TARGET: f64 = 0.8;
/// The benchmark's tenant (unique among the benchmarks: see
/// [`crate::bench_footprint::TENANT`]).
pub(crate) const TENANT: &str = "pbench";
/// Client connections of the hand-off runs (as the worker benchmark).
const HANDOFF_CONNECTIONS: u32 = 16;

#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    cpu_per_request: f64,
}

/// One `wrk -c32` run against `url`, measuring the CPU of `pid` (and children).
fn wrk(url: &str, headers: &[String], pid: u32, seconds: u32) -> Result<Sample> {
    wrk_with(url, headers, pid, seconds, 32)
}

/// One `wrk` run with `connections` against `url`, measuring the CPU of
/// `pid` (and children).
fn wrk_with(
    url: &str,
    headers: &[String],
    pid: u32,
    seconds: u32,
    connections: u32,
) -> Result<Sample> {
    let before = tree_cpu_seconds(pid)?;
    let run = Wrk::new(url, connections, seconds).headers(headers).run()?;
    let after = tree_cpu_seconds(pid)?;
    Ok(Sample {
        rps: run.rps,
        cpu_per_request: (after - before) / run.requests.max(1.0),
    })
}

fn nginx_conf(dir: &Path, body: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let path = dir.join("nginx.conf");
    let pid = dir.join("nginx.pid");
    std::fs::write(
        &path,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {pid};\nerror_log {dir}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n  access_log {dir}/logs/access.log;\n  \
             client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  fastcgi_temp_path {dir}/tmp;\n  \
             uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n{body}\n}}\n",
            pid = pid.display(),
            dir = dir.display(),
        ),
    )?;
    Ok(path)
}

/// nginx (master and worker) on `cpu`; SIGTERM at the end lets the master
/// stop its worker.
fn start_nginx(conf: &Path, cpu: &str) -> Result<Guard> {
    Guard::spawn(
        Command::new("taskset")
            .args(["-c", cpu, "nginx", "-c"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
        GRACE,
    )
    .context("starting nginx (apt: nginx)")
}

/// Runs the proxy benchmark, writes its report.
pub fn proxy(plan: Plan, baselines: &[Baseline]) -> Result<()> {
    step("bench: proxy vs nginx");
    crate::images::cargo_release(&["-p", "madbase"])?;
    let bin = target_dir().join("release/madbase");
    let work = target_dir().join(if plan.smoke {
        "bench/proxy-smoke"
    } else {
        "bench/proxy"
    });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut report = Report::start(
        "proxy",
        plan,
        "Servers on CPU0 with one Tokio thread (`TOKIO_WORKER_THREADS=1`; nginx \
         `worker_processes 1`), `wrk -t1` on CPU1. CPU per request is the server \
         process's (and its children's) user + system time from /proc over the run, divided \
         by the requests wrk counted. A ratio is the median of the rounds' ratios (the runs \
         of one round sit next to each other in time, so the machine's drift cancels out); \
         every round's ratio is listed.",
    );

    // The shared upstream: nginx answering a small JSON body, on CPU1, over
    // TCP, a unix socket, and HTTP/2 cleartext (prior knowledge) on a port
    // of its own.
    let upstream_port = free_port()?;
    let h2_port = free_port()?;
    let socket = work.join("upstream/upstream.sock");
    let answer =
        "location / { default_type application/json; return 200 '[{\"id\":1,\"name\":\"a\"}]'; }";
    let upstream_conf = nginx_conf(
        &work.join("upstream"),
        &format!(
            "  server {{ listen 127.0.0.1:{upstream_port}; listen unix:{socket}; access_log off; \
             keepalive_requests 100000;\n    {answer} }}\n  \
             server {{ listen 127.0.0.1:{h2_port} http2; access_log off; keepalive_requests 1000000000;\n    \
             {answer} }}",
            socket = socket.display(),
        ),
    )?;
    std::fs::create_dir_all(work.join("upstream/tmp"))?;
    let _upstream = start_nginx(&upstream_conf, "1")?;
    wait_http(&format!("http://127.0.0.1:{upstream_port}/"))?;

    // nginx as the proxy peer, on CPU0.
    let nginx_port = free_port()?;
    let nginx_conf_path = nginx_conf(
        &work.join("nginx"),
        &format!(
            "  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n  \
             server {{ listen 127.0.0.1:{nginx_port}; keepalive_requests 100000;\n    \
             location /t/{TENANT}/ {{ proxy_http_version 1.1; proxy_set_header Connection \"\"; \
             proxy_set_header X-Madbase-Tenant {TENANT}; proxy_pass http://backend/; }} }}"
        ),
    )?;
    std::fs::create_dir_all(work.join("nginx/tmp"))?;
    let nginx = start_nginx(&nginx_conf_path, "0")?;
    wait_http(&format!(
        "http://127.0.0.1:{nginx_port}/t/{TENANT}/rest/v1/items"
    ))?;

    // control (on CPU1, consulted once thanks to the cache) and the proxy on CPU0.
    let control = control_with_tenant(&bin, &work, TENANT)?;
    let (control_url, anon) = (control.url.clone(), control.anon.clone());

    let (proxy, proxy_port) = start_proxy(
        &bin,
        &work,
        &control_url,
        &format!("http://127.0.0.1:{upstream_port}"),
    )?;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/t/{TENANT}/rest/v1/items");
    // The same proxy speaking HTTP/2 cleartext to the upstream.
    let h2_dir = work.join("proxy-h2");
    std::fs::create_dir_all(&h2_dir)?;
    let (proxy_h2, proxy_h2_port) = start_proxy_with(
        &bin,
        &h2_dir,
        &control_url,
        &[
            ("MADBASE_WORKER_URL", format!("http://127.0.0.1:{h2_port}")),
            ("MADBASE_UPSTREAM_HTTP2", "true".to_owned()),
        ],
    )?;
    let proxy_h2_url = format!("http://127.0.0.1:{proxy_h2_port}/t/{TENANT}/rest/v1/items");
    let headers = vec![format!("apikey: {anon}")];
    // Other builds' proxies (`--baseline`), on the same CPU, control and upstream.
    let mut old = Vec::new();
    for b in baselines {
        let dir = work.join(format!("baseline-{}", b.label));
        std::fs::create_dir_all(&dir)?;
        let (proc, port) = start_proxy(
            &b.bin,
            &dir,
            &control_url,
            &format!("http://127.0.0.1:{upstream_port}"),
        )
        .with_context(|| format!("the proxy of {}", b.bin.display()))?;
        let url = format!("http://127.0.0.1:{port}/t/{TENANT}/rest/v1/items");
        old.push((b.label.clone(), proc, url));
    }

    // The stack's floor: the same Tokio + hyper forwarding with nothing else.
    crate::images::cargo_release(&["-p", "madbase-proxy", "--example", "bench_floor"])?;
    let floor_bin = target_dir().join("release/examples/bench_floor");
    let mut floors = Vec::new();
    let tcp = format!("127.0.0.1:{upstream_port}");
    let h2 = format!("127.0.0.1:{h2_port}");
    let unix = socket.display().to_string();
    for (mode, upstream) in [
        ("pooled", &tcp),
        ("per-connection", &tcp),
        ("unix", &unix),
        ("h2c", &h2),
    ] {
        let port = free_port()?;
        let proc = Guard::spawn(
            Command::new("taskset")
                .args(["-c", "0"])
                .arg(&floor_bin)
                .arg(mode)
                .env("TOKIO_WORKER_THREADS", "1")
                .env("LISTEN", format!("127.0.0.1:{port}"))
                .env("UPSTREAM", upstream)
                .stderr(Stdio::inherit()),
            GRACE,
        )
        .context("starting bench_floor")?;
        let url = format!("http://127.0.0.1:{port}/rest/v1/items");
        wait_http(&url)?;
        floors.push((mode, proc, url));
    }

    // Every peer, in the order measured in each round.
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/t/{TENANT}/rest/v1/items");
    let mut peers: Vec<(String, u32, String)> = vec![
        ("madbase proxy".into(), proxy.id(), proxy_url),
        ("nginx".into(), nginx.id(), nginx_url),
    ];
    for (mode, proc, url) in &floors {
        let name = match *mode {
            "unix" => "per-connection over a unix socket",
            "h2c" => "HTTP/2 cleartext upstream (one connection)",
            other => other,
        };
        peers.push((format!("hyper floor, {name}"), proc.id(), url.clone()));
    }
    peers.push((
        "madbase proxy, HTTP/2 cleartext upstream".into(),
        proxy_h2.id(),
        proxy_h2_url,
    ));
    // After the floors, so the rows above keep their places.
    for (label, proc, url) in &old {
        peers.push((format!("madbase proxy ({label})"), proc.id(), url.clone()));
    }

    // Warm-up, then the rounds: each peer once per round, in turn.
    for (_, pid, url) in &peers {
        wrk(url, &headers, *pid, plan.warmup)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); peers.len()];
    for _ in 0..plan.rounds {
        for (i, (_, pid, url)) in peers.iter().enumerate() {
            samples[i].push(wrk(url, &headers, *pid, plan.seconds)?);
        }
    }

    let mut table = Table::new(
        "nginx",
        "Proxy vs nginx (`wrk -c32`; the upstream is an nginx answering a small JSON body, on CPU1):",
        &[
            "",
            "req/s",
            "CPU µs/request",
            "CPU ratio to nginx",
            "target",
            "rounds",
        ],
    );
    let nginx_cpu: Vec<f64> = samples[1].iter().map(|s| s.cpu_per_request).collect();
    for (i, ((name, _, _), runs)) in peers.iter().zip(&samples).enumerate() {
        let rps: Vec<f64> = runs.iter().map(|s| s.rps).collect();
        let cpu: Vec<f64> = runs.iter().map(|s| s.cpu_per_request * 1e6).collect();
        let cpu_s: Vec<f64> = runs.iter().map(|s| s.cpu_per_request).collect();
        let mut ratio = Figure::ratio(&cpu_s, &nginx_cpu);
        if i == 0 {
            ratio = ratio.target(Target::AtMost(NGINX_TARGET));
        }
        let (target, rounds) = if i == 1 {
            (String::new(), String::new())
        } else {
            (ratio.target_shown(), ratio.rounds_shown())
        };
        table.row(vec![
            name.as_str().into(),
            Figure::median(rps, "", 0).into(),
            Figure::median(cpu, "", 1).into(),
            ratio.into(),
            target.into(),
            rounds.into(),
        ]);
    }
    table.notes.push(
        "The madbase proxy does tenant lookup (cached), API key check, rate limit, metrics, \
         request ID, span and one JSON log line (to a file, like nginx's access log); the \
         hyper floors (`crates/proxy/examples/bench_floor.rs`) forward and do nothing else. \
         By default the proxy and the floors speak HTTP/1.1 to the upstream over loopback TCP, \
         a connection per client connection; the unix-socket floor does the same over a unix \
         socket; the HTTP/2 rows (`MADBASE_UPSTREAM_HTTP2=true` for the proxy) multiplex \
         every client connection's requests on one HTTP/2 cleartext connection to the same \
         nginx (nginx itself cannot speak HTTP/2 to an upstream)."
            .to_owned(),
    );
    report.tables.push(table);
    let ours: Vec<f64> = samples[0].iter().map(|s| s.cpu_per_request).collect();
    let first_old = peers.len() - old.len();
    for (i, (label, _, _)) in old.iter().enumerate() {
        let mut t = Table::new(
            &format!("baseline-{label}"),
            &format!(
                "This build's proxy against {label}'s (`--baseline`: measured in the same \
                 rounds, next to each other):"
            ),
            &["CPU per request, this build / baseline", "rounds"],
        );
        let theirs: Vec<f64> = samples[first_old + i]
            .iter()
            .map(|s| s.cpu_per_request)
            .collect();
        let ratio = Figure::ratio(&ours, &theirs);
        let rounds = ratio.rounds_shown();
        t.row(vec![ratio.into(), rounds.into()]);
        report.tables.push(t);
    }
    drop(old);
    drop(floors);
    drop(proxy_h2);
    drop(proxy);
    drop(nginx);

    step("bench: the proxy's hand-off, in-process and over HTTP");
    report.tables.push(handoff(&bin, &work, &control, plan)?);
    report.write()?;
    Ok(())
}

/// The hand-off table: a single-row GET direct to the worker and through
/// the proxy, in one process (`madbase serve --all`) and in two.
fn handoff(bin: &Path, work: &Path, control: &BenchControl, plan: Plan) -> Result<Table> {
    let work = work.join("handoff");
    std::fs::create_dir_all(&work)?;
    post_json(
        &format!("{}/v1/tenants/{TENANT}/sql", control.url),
        &control.token,
        &serde_json::json!({ "query":
            "CREATE TABLE handoff_items (id int PRIMARY KEY, name text NOT NULL); \
             INSERT INTO handoff_items SELECT g, 'item ' || g FROM generate_series(1, 1000) g; \
             ANALYZE handoff_items" }),
    )?;
    let pool = (HANDOFF_CONNECTIONS + 1).to_string();

    // Two processes: a worker and a proxy in front of it, over loopback HTTP.
    let worker_port = free_port()?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(bin)
        .arg("worker")
        .env("TOKIO_WORKER_THREADS", "1")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_CONTROL_URL", &control.url)
        .env("MADBASE_WORKER_POOL_MAX_PER_TENANT", &pool)
        .env("MADBASE_LISTEN", format!("127.0.0.1:{worker_port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .stdout(std::fs::File::create(work.join("worker.log"))?)
        .stderr(Stdio::inherit());
    let worker = Guard::spawn(&mut cmd, GRACE).context("starting the worker")?;
    let worker_url = format!("http://127.0.0.1:{worker_port}");
    wait_http(&format!("{worker_url}/health"))?;
    let (proxy, proxy_port) = start_proxy_with(
        bin,
        &work,
        &control.url,
        &[("MADBASE_WORKER_URL", worker_url.clone())],
    )?;
    // The same, the proxy speaking HTTP/2 cleartext to the worker.
    let h2_dir = work.join("h2");
    std::fs::create_dir_all(&h2_dir)?;
    let (proxy_h2, proxy_h2_port) = start_proxy_with(
        bin,
        &h2_dir,
        &control.url,
        &[
            ("MADBASE_WORKER_URL", worker_url.clone()),
            ("MADBASE_UPSTREAM_HTTP2", "true".to_owned()),
        ],
    )?;

    // One process: `madbase serve --all`, the proxy handing off in-process.
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(bin)
        .args(["serve", "--all"])
        .env("TOKIO_WORKER_THREADS", "1")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_MASTER_KEY", MASTER_KEY)
        .env("DATABASE_URL", &control.db.url)
        .env(
            "DEFAULT_TENANT_DB_URL",
            control.db.server.url_for("postgres"),
        )
        .env("MADBASE_WORKER_POOL_MAX_PER_TENANT", &pool)
        .env("MADBASE_RATE_LIMIT_RPS", "1000000")
        .env("MADBASE_FUNCTIONS_WORKERS", "1")
        .stdout(std::fs::File::create(work.join("all.log"))?)
        .stderr(Stdio::inherit());
    let mut all_ports = Vec::new();
    for service in ["PROXY", "CONTROL", "WORKER", "FUNCTIONS"] {
        let port = free_port()?;
        cmd.env(
            format!("MADBASE_{service}_LISTEN"),
            format!("127.0.0.1:{port}"),
        )
        .env(
            format!("MADBASE_{service}_ADMIN_LISTEN"),
            format!("127.0.0.1:{}", free_port()?),
        );
        all_ports.push(port);
    }
    let all = Guard::spawn(&mut cmd, GRACE).context("starting madbase serve --all")?;
    let (all_proxy, all_worker) = (all_ports[0], all_ports[2]);

    let path = "/rest/v1/handoff_items?id=eq.5";
    let via = |port: u16| format!("http://127.0.0.1:{port}/t/{TENANT}{path}");
    let direct = |port: u16| format!("http://127.0.0.1:{port}{path}");
    let headers = vec![
        format!("apikey: {}", control.anon),
        format!("X-Madbase-Tenant: {TENANT}"),
    ];
    // (name, pid, direct url, via-proxy url, pid measured through the proxy)
    let setups = [
        (
            "in-process (`madbase serve --all`)",
            all.id(),
            direct(all_worker),
            via(all_proxy),
            all.id(),
            IN_PROCESS_TARGET,
        ),
        (
            "over HTTP (worker and proxy processes)",
            worker.id(),
            direct(worker_port),
            via(proxy_port),
            proxy.id(),
            HTTP_TARGET,
        ),
        (
            "over HTTP/2 cleartext (`MADBASE_UPSTREAM_HTTP2=true`)",
            worker.id(),
            direct(worker_port),
            via(proxy_h2_port),
            proxy_h2.id(),
            HTTP_TARGET,
        ),
    ];
    let probe = crate::util::http_client(std::time::Duration::from_secs(10))?;
    for (name, _, d, v, _, _) in &setups {
        for url in [d, v] {
            let mut ok = false;
            for _ in 0..300 {
                let answer = probe
                    .get(url.as_str())
                    .header("apikey", &control.anon)
                    .header("X-Madbase-Tenant", TENANT)
                    .send();
                if let Ok(a) = answer
                    && a.status().is_success()
                    && a.text().is_ok_and(|t| t.contains("\"id\":5"))
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !ok {
                bail!("{name}: {url} does not answer the row");
            }
        }
    }

    let c = HANDOFF_CONNECTIONS;
    for (_, pid, d, v, via_pid, _) in &setups {
        wrk_with(d, &headers, *pid, plan.warmup, c)?;
        wrk_with(v, &headers, *via_pid, plan.warmup, c)?;
    }
    let mut rps: Vec<[Vec<f64>; 2]> = setups.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for _ in 0..plan.rounds {
        for (i, (_, pid, d, v, via_pid, _)) in setups.iter().enumerate() {
            rps[i][0].push(wrk_with(d, &headers, *pid, plan.seconds, c)?.rps);
            rps[i][1].push(wrk_with(v, &headers, *via_pid, plan.seconds, c)?.rps);
        }
    }
    let mut table = Table::new(
        "handoff",
        &format!(
            "Through the proxy vs direct to the worker (single-row GET `{path}`, `wrk -c{c}`; \
             worker, proxy and Postgres on CPU0):"
        ),
        &[
            "hand-off",
            "direct req/s",
            "via proxy req/s",
            "ratio",
            "target",
            "rounds",
        ],
    );
    for ((name, _, _, _, _, target), [d, v]) in setups.iter().zip(&rps) {
        let ratio = Figure::ratio(v, d).target(Target::AtLeast(*target));
        let (t, r) = (ratio.target_shown(), ratio.rounds_shown());
        table.row(vec![
            (*name).into(),
            Figure::median(d.clone(), "", 0).into(),
            Figure::median(v.clone(), "", 0).into(),
            ratio.into(),
            t.into(),
            r.into(),
        ]);
    }
    table.notes.push(format!(
        "In-process: one `madbase serve --all` process with one Tokio thread; direct is its \
         worker's listener, through the proxy is its proxy's, which hands the request to the \
         worker's router (`forward::in_process`). Over HTTP: a worker process and a proxy \
         process, one Tokio thread each; the proxy gives each HTTP/1 client connection an \
         upstream connection of its own, so the upstream keep-alive connections are exactly \
         the client's {c}. Over HTTP/2 cleartext: the same worker behind a second proxy process \
         with `MADBASE_UPSTREAM_HTTP2=true`, every request multiplexed on one HTTP/2 connection \
         (the worker accepts h2c on its API port); its direct figures are the worker's, \
         measured in the same rounds as the HTTP/1.1 row's. A unix socket is measured on the \
         floor only (the proxy vs nginx table)."
    ));
    Ok(table)
}
