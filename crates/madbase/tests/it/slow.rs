//! Slow clients and slow upstreams (issue 24): slowloris heads, bodies
//! sent a byte at a time, and a worker that takes longer than the proxy's
//! timeout, all at once against the proxy while another tenant's load
//! runs. Each is cut off within its bound, the proxy's connections and
//! memory go back down, and the other tenant sees no error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::stack::{
    Load, MakeRequest, REST_TIMEOUT, Stack, by_status, open_fds, p99_ms, record, rss_kib,
};

/// The proxy's header read timeout in this scenario.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// A request head sent one byte every 200 ms, never finished: how long
/// until the server closed the connection, and what it sent first.
async fn slowloris(addr: std::net::SocketAddr, path: String) -> (Duration, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-slow: ").as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (t0.elapsed(), got),
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(b"a").await.is_err() {
                    return (t0.elapsed(), got);
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return (t0.elapsed(), got);
        }
    }
}

/// A complete head announcing a 1000-byte body, then one body byte every
/// 200 ms: how long until the response (or the close), and its status line.
async fn slow_body(addr: std::net::SocketAddr, path: String, key: String) -> (Duration, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\napikey: {key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (t0.elapsed(), got),
                Ok(n) => {
                    got.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if got.contains("\r\n\r\n") {
                        return (t0.elapsed(), got);
                    }
                }
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(b" ").await.is_err() {
                    return (t0.elapsed(), got);
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return (t0.elapsed(), got);
        }
    }
}

fn status_of(head: &str) -> String {
    head.split(' ').nth(1).unwrap_or("closed").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_and_upstreams_are_cut_off_and_others_unaffected() {
    let head_timeout = HEAD_TIMEOUT.as_secs().to_string();
    let s = Stack::start_with(
        madbase_testkit::postgres().expect("postgres"),
        2,
        &[("MADBASE_HEADER_READ_TIMEOUT_SECONDS", head_timeout.as_str())],
    )
    .await;
    let proxy_pid = s.proxy.pid();
    // Tenant 1 carries the load that must not notice anything.
    let make: MakeRequest = {
        let (url, key) = (
            s.url(1, "/rest/v1/items?select=id,body&limit=5"),
            s.tenants[1].anon_key.clone(),
        );
        Arc::new(move |http: &reqwest::Client, _| http.get(&url).header("apikey", &key))
    };
    let load = Load::start(&s.http, 8, &make);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (fds_before, rss_before) = (open_fds(proxy_pid), rss_kib(proxy_pid));
    let attack_at = load.started.elapsed();

    let addr = s.proxy.api;
    let t0 = s.tenants[0].clone();
    let path = |p: &str| format!("/t/{}{p}", t0.id);
    let mut lorises = Vec::new();
    for _ in 0..200 {
        lorises.push(tokio::spawn(slowloris(addr, path("/rest/v1/items"))));
    }
    let mut bodies = Vec::new();
    for _ in 0..50 {
        bodies.push(tokio::spawn(slow_body(
            addr,
            path("/rest/v1/items"),
            t0.anon_key.clone(),
        )));
    }
    // Slow upstream: an RPC of tenant 0 that outlasts the proxy's timeout.
    let mut naps = Vec::new();
    for _ in 0..20 {
        let (http, url, key) = (
            s.http.clone(),
            s.url(0, "/rest/v1/rpc/nap"),
            t0.anon_key.clone(),
        );
        naps.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(&url)
                .header("apikey", &key)
                .json(&json!({ "ms": 8000 }))
                .send()
                .await
                .expect("nap");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (t.elapsed(), status, body)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_during = open_fds(proxy_pid);

    let mut loris_closed = Vec::new();
    for h in lorises {
        let (took, got) = h.await.expect("slowloris");
        // Cut off by the header read timeout (hyper may say 408 first).
        assert!(
            took >= HEAD_TIMEOUT - Duration::from_millis(300)
                && took < HEAD_TIMEOUT + Duration::from_millis(1500),
            "slowloris closed after {took:?}: {got:?}"
        );
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");
        loris_closed.push(took);
    }
    let mut body_ended = Vec::new();
    let mut body_statuses = std::collections::BTreeMap::<String, u64>::new();
    for h in bodies {
        let (took, got) = h.await.expect("slow body");
        let status = status_of(&got);
        // The proxy's timeout covers the whole exchange with the worker,
        // the request body included: 504.
        assert_eq!(status, "504", "slow body after {took:?}: {got:?}");
        assert!(
            took < REST_TIMEOUT + Duration::from_millis(1500),
            "slow body answered after {took:?}"
        );
        *body_statuses.entry(status).or_default() += 1;
        body_ended.push(took);
    }
    let mut nap_statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut nap_ended = Vec::new();
    for h in naps {
        let (took, status, body) = h.await.expect("nap");
        // The proxy's timeout (504 JSON), or the worker's pool timeout
        // for the naps beyond the tenant's connections (504 PGRST003).
        assert_eq!(status, 504, "{body}");
        assert!(body["code"].is_string(), "{body}");
        assert!(
            took < REST_TIMEOUT + Duration::from_millis(1500),
            "{took:?}"
        );
        *nap_statuses.entry(status.to_string()).or_default() += 1;
        nap_ended.push(took);
    }
    let over_at = load.started.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outcomes = load.stop().await;
    // The attack's connections close as their timeouts fire: wait for
    // that (bounded: a leak still fails), not one sample on a busy host.
    let settle = std::time::Instant::now();
    let mut fds_after = open_fds(proxy_pid);
    while fds_after > fds_before + 20 && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = open_fds(proxy_pid);
    }
    let rss_after = rss_kib(proxy_pid);
    let counts = by_status(&outcomes);
    assert!(
        outcomes.iter().all(|o| o.status == Ok(200)),
        "the other tenant saw errors: {counts:?}"
    );
    let during: Vec<_> = outcomes
        .iter()
        .filter(|o| o.sent >= attack_at && o.sent < over_at)
        .cloned()
        .collect();
    let before: Vec<_> = outcomes
        .iter()
        .filter(|o| o.sent < attack_at)
        .cloned()
        .collect();
    assert!(!during.is_empty());
    let (p99_before, p99_during) = (p99_ms(&before), p99_ms(&during));
    assert!(p99_during < 1000.0, "p99 during the attack {p99_during} ms");
    // The connections of the attack are gone again; memory is bounded.
    assert!(
        fds_during >= fds_before + 200,
        "the attack's connections were open: {fds_before} -> {fds_during}"
    );
    assert!(
        fds_after <= fds_before + 20,
        "proxy fds {fds_before} -> {fds_during} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "proxy RSS {rss_before} -> {rss_after} KiB"
    );
    let max = |v: &[Duration]| v.iter().max().map_or(0, |d| d.as_millis() as u64);
    let mut outcomes_all = counts.clone();
    *outcomes_all.entry("slowloris closed".into()).or_default() += loris_closed.len() as u64;
    for (k, v) in body_statuses.iter().chain(nap_statuses.iter()) {
        *outcomes_all.entry(k.clone()).or_default() += v;
    }
    record(
        "slow clients (200 slowloris heads, 50 byte-a-time bodies) and a slow upstream (20 RPCs over the timeout) against the proxy, another tenant under load",
        json!({
            "requests": outcomes.len() + loris_closed.len() + body_ended.len() + nap_ended.len(),
            "outcomes": outcomes_all,
            "errors": 0,
            "p99_ms": p99_during,
            "slowest_ms": max(&nap_ended).max(max(&body_ended)),
            "data": format!(
                "slowloris closed after {}..{} ms (header timeout {} s); slow bodies 504 after at most {} ms, slow RPCs 504 after at most {} ms (timeout {} s); other tenant p99 {p99_before:.0} ms before, {p99_during:.0} ms during, no error; proxy fds {fds_before} -> {fds_during} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB",
                loris_closed.iter().min().map_or(0, |d| d.as_millis()),
                max(&loris_closed),
                HEAD_TIMEOUT.as_secs(),
                max(&body_ended),
                max(&nap_ended),
                REST_TIMEOUT.as_secs(),
            ),
        }),
    );
}
