//! The mixed soak (issue 24), run by `cargo xtask soak` (ignored in the
//! fast runs): reads, writes, RPCs and edge-function invocations across
//! many tenants through the proxy while another tenant's keys are rotated
//! every few seconds; every interval the RSS and open file descriptors of
//! each process (the functions service's worker processes' RSS summed),
//! the Postgres connections and the window's p99 are sampled. No error is
//! allowed beyond the injected ones (the rotated tenant's old key), and
//! memory and descriptors must not keep growing.
//!
//! `MADBASE_SOAK_SECONDS` (default 600), `MADBASE_SOAK_TENANTS` (default
//! 50), `MADBASE_SOAK_SAMPLE_SECONDS` (default 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use madbase_testkit::tenant::rotate_keys;
use serde_json::{Value, json};

use crate::stack::{
    Load, MakeRequest, Stack, by_status, children_of, open_fds, p99_ms, record, rss_kib,
    rss_kib_if_alive,
};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by `cargo xtask soak`"]
async fn mixed_soak_with_key_rotations() {
    let seconds = var("MADBASE_SOAK_SECONDS", 600);
    let tenants = var("MADBASE_SOAK_TENANTS", 50) as usize;
    let sample = Duration::from_secs(var("MADBASE_SOAK_SAMPLE_SECONDS", 10));
    // Tenant 0 has its keys rotated; the others carry the load.
    let s = Stack::start_with_functions(tenants + 1).await;
    let keys: Vec<(String, String)> = s.tenants[1..]
        .iter()
        .map(|t| (t.id.clone(), t.anon_key.clone()))
        .collect();
    let base = s.proxy.api_url("");
    let make: MakeRequest = Arc::new(move |http: &reqwest::Client, n: u64| {
        let (id, key) = &keys[(n as usize / 5) % keys.len()];
        let url = |p: &str| format!("{base}/t/{id}/rest/v1/{p}");
        match n % 5 {
            0 | 1 => http
                .get(url("items?select=id,body&order=id.desc&limit=10"))
                .header("apikey", key),
            2 => http
                .post(url("items"))
                .header("apikey", key)
                .header("prefer", "return=minimal")
                .json(&json!({ "body": format!("s{n}") })),
            3 => http
                .post(url("rpc/nap"))
                .header("apikey", key)
                .json(&json!({ "ms": 5 })),
            _ => http
                .post(format!("{base}/t/{id}/functions/v1/echo"))
                .header("apikey", key)
                .bearer_auth(key)
                .json(&json!({ "n": n })),
        }
    });
    let load = Load::start(&s.http, 16, &make);
    let functions_pid = s.functions.as_ref().expect("functions").pid();
    let pids = [
        ("control", s.control.pid()),
        ("worker", s.worker.pid()),
        ("proxy", s.proxy.pid()),
        ("functions", functions_pid),
    ];
    let connections = || {
        s.db.server
            .psql("postgres", "SELECT count(*) FROM pg_stat_activity")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let control = s.control.api_url("");
    let rotated = &s.tenants[0];
    let rotated_url = s.url(0, "/rest/v1/items?select=id&limit=1");
    let mut key = rotated.anon_key.clone();
    let (mut rotations, mut worst_refusal) = (0u32, Duration::ZERO);
    let mut samples: Vec<Value> = Vec::new();
    let started = Instant::now();
    let mut next_sample = started + sample;
    let mut next_rotation = started + Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = Instant::now();
        if now >= next_rotation {
            next_rotation = now + Duration::from_secs(5);
            let fresh = rotate_keys(&s.http, &control, &rotated.id).await;
            let t0 = Instant::now();
            // The old key is refused and the new one accepted within 1 s.
            loop {
                let old = s.http.get(&rotated_url).header("apikey", &key).send().await;
                let new = s
                    .http
                    .get(&rotated_url)
                    .header("apikey", &fresh)
                    .send()
                    .await;
                if old.is_ok_and(|r| r.status() == 401) && new.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(1),
                    "rotation {rotations} not in effect within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worst_refusal = worst_refusal.max(t0.elapsed());
            key = fresh;
            rotations += 1;
        }
        if now >= next_sample {
            next_sample += sample;
            let mut point = json!({
                "t_s": started.elapsed().as_secs(),
                "pg_connections": connections(),
            });
            for (name, pid) in pids {
                point[format!("{name}_rss_kib")] = json!(rss_kib(pid));
                point[format!("{name}_fds")] = json!(open_fds(pid));
            }
            let workers = children_of(functions_pid);
            point["functions_workers"] = json!(workers.len());
            point["functions_workers_rss_kib"] = json!(
                workers
                    .iter()
                    .filter_map(|&w| rss_kib_if_alive(w))
                    .sum::<u64>()
            );
            eprintln!("soak sample: {point}");
            samples.push(point);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = load.stop().await;
    let counts = by_status(&outcomes);
    let errors = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Ok(200 | 201)))
        .count();
    // Every function answer is the function's own (its echo of `n`).
    let invocations = outcomes
        .iter()
        .filter(|o| o.body.get("authorized") == Some(&json!(true)))
        .count();
    assert!(invocations > 0, "no function invocation was answered");
    // p99 per sampling window.
    let mut p99s = Vec::new();
    let mut from = Duration::ZERO;
    while from < started.elapsed() {
        let window: Vec<_> = outcomes
            .iter()
            .filter(|o| o.sent >= from && o.sent < from + sample)
            .cloned()
            .collect();
        p99s.push((p99_ms(&window) * 10.0).round() / 10.0);
        from += sample;
    }
    let series = |field: &str| -> Vec<u64> {
        samples
            .iter()
            .map(|p| p[field].as_u64().unwrap_or(0))
            .collect()
    };
    record(
        &format!(
            "mixed soak: {seconds} s, {tenants} tenants, 16 clients (reads, writes, RPC, functions), key rotation every 5 s"
        ),
        json!({
            "requests": outcomes.len(),
            "outcomes": counts,
            "errors": errors,
            "p99_ms": p99_ms(&outcomes),
            "p99_ms_by_window": p99s,
            "worker_rss_kib": series("worker_rss_kib"),
            "proxy_rss_kib": series("proxy_rss_kib"),
            "control_rss_kib": series("control_rss_kib"),
            "functions_rss_kib": series("functions_rss_kib"),
            "functions_workers_rss_kib": series("functions_workers_rss_kib"),
            "functions_workers": series("functions_workers"),
            "worker_fds": series("worker_fds"),
            "proxy_fds": series("proxy_fds"),
            "functions_fds": series("functions_fds"),
            "function_invocations": invocations,
            "pg_connections": series("pg_connections"),
            "recovery_ms": worst_refusal.as_millis() as u64,
            "data": format!(
                "{rotations} rotations, each in effect within {} ms; {invocations} function invocations",
                worst_refusal.as_millis()
            ),
        }),
    );
    assert_eq!(errors, 0, "errors beyond the injected faults: {counts:?}");
    // Leak check: the second half's peak stays within 25 % (plus 16 MiB
    // of warm-up slack) of the first half's, descriptors within 32.
    if samples.len() >= 4 {
        for name in [
            "worker",
            "proxy",
            "control",
            "functions",
            "functions_workers",
        ] {
            let rss = series(&format!("{name}_rss_kib"));
            let (a, b) = rss.split_at(rss.len() / 2);
            let (a, b) = (a.iter().max().copied(), b.iter().max().copied());
            let (a, b) = (a.unwrap_or(0), b.unwrap_or(0));
            assert!(b <= a + a / 4 + 16 * 1024, "{name} RSS grows: {rss:?}");
        }
        for name in ["worker", "proxy", "functions"] {
            let fds = series(&format!("{name}_fds"));
            let (first, last) = (fds[0], fds[fds.len() - 1]);
            assert!(last <= first + 32, "{name} descriptors grow: {fds:?}");
        }
    }
}
