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
//! per second and CPU seconds per request of each process, medians of 5
//! rounds after a warm-up, and each peer's CPU ratio to nginx.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::bench_common::{control_with_tenant, cpu_seconds, start_proxy, target_dir, wait_http};
use crate::procs::{GRACE, Guard};
use crate::util::{free_port, run, step};

const RUN_SECONDS: u32 = 8;
/// Rounds measured (each peer once per round); medians are reported.
const ROUNDS: usize = 5;

/// Sum of CPU seconds of a process and its children (nginx master + worker).
fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let mut total = cpu_seconds(pid)?;
    let id = i32::try_from(pid)?;
    let children = procfs::process::Process::new(id)
        .and_then(|p| p.task_from_tid(id))
        .and_then(|t| t.children())
        .unwrap_or_default();
    for child in children {
        total += tree_cpu_seconds(child).unwrap_or(0.0);
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    cpu_per_request: f64,
}

/// One `wrk` run against `url`, measuring the CPU of `pid` (and children).
fn wrk(url: &str, headers: &[String], pid: u32, seconds: u32) -> Result<Sample> {
    let before = tree_cpu_seconds(pid)?;
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().context("running wrk (apt: wrk)")?;
    let after = tree_cpu_seconds(pid)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}");
    }
    if text.contains("Non-2xx") {
        bail!("non-2xx answers during the benchmark:\n{text}");
    }
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .context("wrk output: requests")?
        .parse()?;
    let rps: f64 = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("wrk output: Requests/sec")?
        .parse()?;
    Ok(Sample {
        rps,
        cpu_per_request: (after - before) / requests.max(1.0),
    })
}

fn median(mut v: Vec<Sample>, key: fn(&Sample) -> f64) -> f64 {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    key(&v[v.len() / 2])
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

/// Runs the proxy benchmark and prints the comparison.
pub fn proxy() -> Result<()> {
    step("bench: proxy vs nginx");
    run(Command::new("cargo").args(["build", "--release", "--locked", "-p", "madbase"]))?;
    let bin = target_dir().join("release/madbase");
    let work = target_dir().join("bench/proxy");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // The shared upstream: nginx answering a small JSON body, on CPU1.
    let upstream_port = free_port()?;
    let upstream_conf = nginx_conf(
        &work.join("upstream"),
        &format!(
            "  server {{ listen 127.0.0.1:{upstream_port}; access_log off; keepalive_requests 100000;\n    \
             location / {{ default_type application/json; return 200 '[{{\"id\":1,\"name\":\"a\"}}]'; }} }}"
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
             location /t/pbench/ {{ proxy_http_version 1.1; proxy_set_header Connection \"\"; \
             proxy_set_header X-Madbase-Tenant pbench; proxy_pass http://backend/; }} }}"
        ),
    )?;
    std::fs::create_dir_all(work.join("nginx/tmp"))?;
    let nginx = start_nginx(&nginx_conf_path, "0")?;
    wait_http(&format!(
        "http://127.0.0.1:{nginx_port}/t/pbench/rest/v1/items"
    ))?;

    // control (on CPU1, consulted once thanks to the cache) and the proxy on CPU0.
    let control = control_with_tenant(&bin, &work, "pbench")?;
    let (control_url, anon) = (control.url.clone(), control.anon.clone());

    let (proxy, proxy_port) = start_proxy(
        &bin,
        &work,
        &control_url,
        &format!("http://127.0.0.1:{upstream_port}"),
    )?;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/t/pbench/rest/v1/items");
    let headers = vec![format!("apikey: {anon}")];

    // The stack's floor: the same Tokio + hyper forwarding with nothing else.
    run(Command::new("cargo").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "madbase-proxy",
        "--example",
        "bench_floor",
    ]))?;
    let floor_bin = target_dir().join("release/examples/bench_floor");
    let mut floors = Vec::new();
    for mode in ["pooled", "per-connection"] {
        let port = free_port()?;
        let proc = Guard::spawn(
            Command::new("taskset")
                .args(["-c", "0"])
                .arg(&floor_bin)
                .arg(mode)
                .env("TOKIO_WORKER_THREADS", "1")
                .env("LISTEN", format!("127.0.0.1:{port}"))
                .env("UPSTREAM", format!("127.0.0.1:{upstream_port}"))
                .stderr(Stdio::inherit()),
            GRACE,
        )
        .context("starting bench_floor")?;
        let url = format!("http://127.0.0.1:{port}/rest/v1/items");
        wait_http(&url)?;
        floors.push((mode, proc, url));
    }

    // Every peer, in the order measured in each round.
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/t/pbench/rest/v1/items");
    let mut peers: Vec<(String, u32, String)> = vec![
        ("madbase proxy".into(), proxy.id(), proxy_url),
        ("nginx".into(), nginx.id(), nginx_url),
    ];
    for (mode, proc, url) in &floors {
        peers.push((format!("hyper floor, {mode}"), proc.id(), url.clone()));
    }

    // Warm-up, then the rounds: each peer once per round, in turn.
    for (_, pid, url) in &peers {
        wrk(url, &headers, *pid, 2)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); peers.len()];
    for _ in 0..ROUNDS {
        for (i, (_, pid, url)) in peers.iter().enumerate() {
            samples[i].push(wrk(url, &headers, *pid, RUN_SECONDS)?);
        }
    }

    println!(
        "\nproxy benchmark ({ROUNDS} rounds × {RUN_SECONDS} s, wrk -t1 -c32 on CPU1, servers on CPU0 \
         with TOKIO_WORKER_THREADS=1; medians; ratios are medians of each round's ratio to nginx)"
    );
    println!(
        "{:<30} {:>10} {:>16} {:>18} {:>14}",
        "", "req/s", "CPU µs/request", "CPU ratio to nginx", "per round"
    );
    let nginx_runs = &samples[1];
    for ((name, _, _), runs) in peers.iter().zip(&samples) {
        let ratios: Vec<f64> = runs
            .iter()
            .zip(nginx_runs)
            .map(|(a, b)| a.cpu_per_request / b.cpu_per_request)
            .collect();
        let per_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<30} {:>10.0} {:>16.1} {:>17.2}× {:>14}",
            name,
            median(runs.clone(), |s| s.rps),
            median(runs.clone(), |s| s.cpu_per_request) * 1e6,
            median_f(ratios),
            per_round.join(" ")
        );
    }
    println!(
        "target: madbase proxy ≤ 1.0× nginx's CPU per request, doing tenant lookup, key check, \
         rate limit, metrics, request id, span and log line; the hyper floors do none of it"
    );
    Ok(())
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
