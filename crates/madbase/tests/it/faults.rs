//! Faults under load (issue 24): the worker killed with SIGKILL while a
//! load runs through the proxy, and SIGTERM to each service under load.
//! Real processes, real Postgres, loopback; every outcome counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::stack::{
    DRAIN, Load, MakeRequest, Outcome, REST_TIMEOUT, Stack, by_status, children_of, p99_ms, record,
};

/// The load: reads, slow RPCs (in flight when something dies) and
/// inserts (whose acknowledgements are checked against the database).
fn mixed(s: &Stack, tenant: usize) -> MakeRequest {
    let key = s.tenants[tenant].anon_key.clone();
    let read = s.url(tenant, "/rest/v1/items?select=id,body&limit=5");
    let rpc = s.url(tenant, "/rest/v1/rpc/nap");
    let insert = s.url(tenant, "/rest/v1/items");
    Arc::new(move |http: &reqwest::Client, n: u64| match n % 3 {
        0 => http.get(&read).header("apikey", &key),
        1 => http
            .post(&rpc)
            .header("apikey", &key)
            .json(&json!({ "ms": 300 })),
        _ => http
            .post(&insert)
            .header("apikey", &key)
            .header("prefer", "return=minimal")
            .json(&json!({ "body": format!("w{n}") })),
    })
}

fn is_write(o: &Outcome) -> bool {
    o.status == Ok(201)
}

/// Every 502 is the proxy's JSON error carrying the request id of its
/// response header.
fn assert_502_json(outcomes: &[Outcome]) {
    for o in outcomes.iter().filter(|o| o.status == Ok(502)) {
        let rid = o.request_id.as_deref().expect("502 has x-request-id");
        assert_eq!(o.body["request_id"], rid, "502 body: {}", o.body);
        assert!(
            o.body["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("upstream_")),
            "502 body: {}",
            o.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_under_load_gives_502_json_and_recovers() {
    let mut s = Stack::start(1).await;
    let before = s.count_rows(0, "WHERE body LIKE 'w%'");
    assert_eq!(before, 0);
    let load = Load::start(&s.http, 12, &mixed(&s, 0));
    // Warm: the tenant is cached and answers.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed_at = load.started.elapsed();
    s.worker.kill_hard();
    s.worker.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.restart_worker();
    let back_at = load.started.elapsed();
    // Run on until 3 s after the worker's return.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;

    let counts = by_status(&outcomes);
    // None hangs: every request ended with a response within the proxy's
    // timeout (plus scheduling slack).
    let slowest = outcomes.iter().map(|o| o.took).max().expect("requests");
    assert!(
        outcomes.iter().all(|o| o.status.is_ok()),
        "client-side failures: {counts:?}"
    );
    assert!(
        slowest < REST_TIMEOUT + Duration::from_secs(1),
        "{slowest:?}"
    );
    for o in &outcomes {
        let status = o.status.clone().expect("status");
        assert!(
            [200, 201, 502].contains(&status),
            "unexpected {status}: {}",
            o.body
        );
    }
    assert_502_json(&outcomes);
    let failed = outcomes.iter().filter(|o| o.status == Ok(502)).count();
    assert!(failed > 0, "the kill was seen: {counts:?}");
    // Before the kill and from 2 s after the return, all succeed.
    for o in &outcomes {
        if o.sent + o.took < killed_at || o.sent > back_at + Duration::from_secs(2) {
            assert_ne!(o.status, Ok(502), "at {:?}: {}", o.sent, o.body);
        }
    }
    let recovered = outcomes
        .iter()
        .filter(|o| o.sent >= back_at && o.status.as_ref().is_ok_and(|s| *s < 300))
        .map(|o| o.sent + o.took)
        .min()
        .expect("a success after the return");
    let recovery = recovered.saturating_sub(back_at);
    assert!(recovery < Duration::from_secs(2), "recovery {recovery:?}");

    // Every acknowledged insert is in the database; an insert cut by the
    // kill may or may not be.
    let acked = outcomes.iter().filter(|o| is_write(o)).count() as i64;
    let rows = s.count_rows(0, "WHERE body LIKE 'w%'");
    let cut_writes = failed as i64;
    assert!(
        rows >= acked && rows <= acked + cut_writes,
        "rows {rows}, acknowledged {acked}"
    );
    record(
        "worker SIGKILL under load (via proxy)",
        json!({
            "requests": outcomes.len(),
            "outcomes": counts,
            "errors": failed,
            "slowest_ms": slowest.as_millis() as u64,
            "p99_ms": p99_ms(&outcomes),
            "recovery_ms": recovery.as_millis() as u64,
            "data": format!("{acked} inserts acknowledged, {rows} rows present"),
        }),
    );
}

/// SIGTERM to `which` under load: every request that got a response got a
/// complete one, the process exits 0 within the drain time, and the
/// listener refuses connections as soon as the drain begins.
async fn sigterm_under_load(which: &str) {
    let mut s = Stack::start(1).await;
    let load = Load::start(&s.http, 8, &mixed(&s, 0));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let svc = match which {
        "worker" => &mut s.worker,
        "proxy" => &mut s.proxy,
        "control" => &mut s.control,
        other => panic!("{other}"),
    };
    let api = svc.api;
    let t0 = Instant::now();
    svc.terminate();
    let refused_after = refused_within_1s(api, t0, which).await;
    let status = svc.wait_exit(DRAIN + Duration::from_secs(2));
    let exited_after = t0.elapsed();
    assert!(status.success(), "{which} exited with {status}");
    let outcomes = load.stop().await;
    let counts = by_status(&outcomes);
    // Requests under way at the signal completed: no truncated bodies,
    // no reset connections. Requests after it see a refused connection
    // (the proxy or the worker itself) or the proxy's 502 (worker gone).
    for o in &outcomes {
        match &o.status {
            Ok(200 | 201) => {}
            Ok(502) if which == "worker" => {}
            Ok(503) if which == "control" => {}
            Err(e) if e == "connection refused" => {}
            // A keep-alive connection the server closed while the
            // request was being written: never accepted.
            Err(e) if e == "connection error" && o.sent >= t0_offset(&outcomes, o) => {}
            other => panic!("{which}: {other:?} at {:?}: {}", o.sent, o.body),
        }
    }
    if which == "worker" {
        assert_502_json(&outcomes);
    }
    record(
        &format!("SIGTERM to {which} under load"),
        json!({
            "requests": outcomes.len(),
            "outcomes": counts,
            "errors": 0,
            "refused_after_ms": refused_after.as_millis() as u64,
            "exit_after_ms": exited_after.as_millis() as u64,
            "data": "every accepted request answered completely; exit 0",
        }),
    );
}

/// How long after `t0` (the signal) `api` refused a connection: the
/// listener closes as the drain begins, within 1 s.
async fn refused_within_1s(api: std::net::SocketAddr, t0: Instant, which: &str) -> Duration {
    loop {
        match tokio::net::TcpStream::connect(api).await {
            Err(_) => return t0.elapsed(),
            Ok(_) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(1),
                    "{which} still accepts connections 1 s after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Connection errors are only accepted for requests sent after the
/// signal; the signal time is not known to the outcome, so this returns
/// the earliest time a request was refused (the listener closed).
fn t0_offset(outcomes: &[Outcome], _o: &Outcome) -> Duration {
    outcomes
        .iter()
        .filter(|o| o.status.as_ref().is_err_and(|e| e == "connection refused"))
        .map(|o| o.sent)
        .min()
        .unwrap_or(Duration::MAX)
        .saturating_sub(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_worker_under_load_drains() {
    sigterm_under_load("worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_proxy_under_load_drains() {
    sigterm_under_load("proxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_control_under_load_keeps_data_path_serving() {
    // Control is not on the data path: the load keeps succeeding from the
    // tenant caches while control drains and exits.
    sigterm_under_load("control").await;
}

/// A function that is in flight for 100 ms, then answers its input with
/// 4 KiB of padding (a cut body cannot pass for a whole one).
const NAP_FUNCTION: &str = r#"
Deno.serve(async (req) => {
  const { n } = await req.json();
  await new Promise((r) => setTimeout(r, 100));
  return Response.json({ n, pad: "x".repeat(4096) });
});
"#;

/// The state of process `pid` (`R`, `S`, `Z`, …), `None` once it is gone
/// (reaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// SIGTERM to the functions service while 8 clients invoke a 100 ms
/// function through the proxy: its listener closes at once, every
/// invocation it accepted (running or queued for a worker) ends with a
/// complete 200, it exits 0 within the drain time and leaves no worker
/// process behind. Requests after it closed get the proxy's 502 JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_functions_under_load_drains() {
    let drain = DRAIN.as_secs().to_string();
    let mut s = crate::functions::Stack::start(&[
        ("MADBASE_DRAIN_SECONDS", drain.as_str()),
        ("MADBASE_FUNCTIONS_WORKERS", "4"),
    ]);
    let t = s.tenant("fnterm").await;
    s.deploy(&t, "nap", "", NAP_FUNCTION).await;
    let (status, body, _) = s.call(&t, "nap", json!({ "n": 0 })).await;
    assert_eq!((status, &body["n"]), (200, &json!(0)), "{body}");

    let url = s.fn_url(&t, "nap");
    let key = t.anon_key.clone();
    let make: MakeRequest = Arc::new(move |http: &reqwest::Client, n: u64| {
        http.post(&url)
            .header("apikey", &key)
            .bearer_auth(&key)
            .header("x-request-id", format!("fnterm-{n}"))
            .json(&json!({ "n": n }))
    });
    let http = reqwest::Client::builder()
        .timeout(REST_TIMEOUT * 3)
        .build()
        .expect("client");
    let load = Load::start(&http, 8, &make);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pid = s.functions.pid();
    let workers = children_of(pid);
    assert!(!workers.is_empty(), "no worker processes under load");
    let api = s.functions.api;
    let t0 = Instant::now();
    let signal_at = load.started.elapsed();
    s.functions.terminate();
    let refused_after = refused_within_1s(api, t0, "functions").await;
    let status = s.functions.wait_exit(DRAIN + Duration::from_secs(2));
    let exited_after = t0.elapsed();
    assert!(status.success(), "functions exited with {status}");
    // The load goes on against the proxy with the service gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.stop().await;
    let counts = by_status(&outcomes);

    // No worker outlives the service (a zombie would be one nobody reaped).
    let deadline = Instant::now() + Duration::from_secs(2);
    let left = loop {
        let left: Vec<(u32, Option<char>)> = workers
            .iter()
            .map(|&w| (w, proc_state(w)))
            .filter(|(_, st)| st.is_some())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(left.is_empty(), "worker processes left behind: {left:?}");

    // What the service itself answered, by request id (its log lines,
    // read after its exit: complete).
    let answered: std::collections::HashMap<String, u64> = s
        .functions
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request completed")
        .filter_map(|v| {
            let id = v["request_id"].as_str()?;
            id.starts_with("fnterm-")
                .then(|| (id.to_owned(), v["status"].as_u64().unwrap_or(0)))
        })
        .collect();
    let mut in_flight = 0;
    for o in &outcomes {
        let n = o
            .request_id
            .as_deref()
            .and_then(|id| id.strip_prefix("fnterm-"))
            .and_then(|n| n.parse::<u64>().ok());
        match &o.status {
            Ok(200) => {
                // Complete: the echo and all of the padding.
                assert_eq!(o.body["n"].as_u64(), n, "body of {:?}", o.request_id);
                assert_eq!(o.body["pad"].as_str().map(str::len), Some(4096));
                if o.sent < signal_at && o.sent + o.took > signal_at {
                    in_flight += 1;
                }
            }
            // The service had stopped accepting: the proxy's answer. A
            // request sent 100 ms before the signal had reached the
            // service (and was in flight or queued there): never a 502.
            Ok(502) => assert!(
                o.sent + Duration::from_millis(100) >= signal_at,
                "502 for a request sent {:?} before the signal: {}",
                signal_at.saturating_sub(o.sent),
                o.body
            ),
            other => panic!("{other:?} at {:?}: {}", o.sent, o.body),
        }
    }
    assert_502_json(&outcomes);
    // Every request the service accepted and answered got that answer
    // whole; every 200 the clients saw came from it.
    for (id, status) in &answered {
        let o = outcomes
            .iter()
            .find(|o| o.request_id.as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| {
                panic!("{id}: the service answered {status}, the client saw nothing")
            });
        assert_eq!(o.status, Ok(*status as u16), "{id}: {}", o.body);
    }
    let ok = outcomes.iter().filter(|o| o.status == Ok(200)).count();
    assert_eq!(ok, answered.values().filter(|s| **s == 200).count());
    assert!(in_flight > 0, "no invocation was in flight at the signal");
    let failed = outcomes.iter().filter(|o| o.status == Ok(502)).count();
    assert!(failed > 0, "the service's exit was not seen: {counts:?}");
    record(
        "SIGTERM to functions under load",
        json!({
            "requests": outcomes.len(),
            "outcomes": counts,
            "errors": 0,
            "refused_after_ms": refused_after.as_millis() as u64,
            "exit_after_ms": exited_after.as_millis() as u64,
            "data": format!(
                "{in_flight} invocations in flight at the signal, all answered 200 completely; \
                 every invocation the service accepted answered; {} worker processes, none left; \
                 exit 0; afterwards the proxy's 502 JSON",
                workers.len()
            ),
        }),
    );
}

/// The tenant's database becomes unavailable under load (every session
/// terminated, new connections refused: `ALLOW_CONNECTIONS false`), then
/// comes back. Requests fail fast with a 503 JSON error while it is gone,
/// the worker's pool recovers by itself, and every insert acknowledged
/// before or after is in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_database_unavailable_fails_fast_and_recovers() {
    let s = Stack::start(1).await;
    let db = s.tenant_database(0);
    let key = s.tenants[0].anon_key.clone();
    let read = s.url(0, "/rest/v1/items?select=id&limit=5");
    let insert = s.url(0, "/rest/v1/items");
    let make: MakeRequest = Arc::new(move |http: &reqwest::Client, n: u64| {
        if n.is_multiple_of(2) {
            http.get(&read).header("apikey", &key)
        } else {
            http.post(&insert)
                .header("apikey", &key)
                .header("prefer", "return=minimal")
                .json(&json!({ "body": format!("w{n}") }))
        }
    });
    let load = Load::start(&s.http, 8, &make);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let psql = |sql: &str| s.db.server.psql("postgres", sql).expect("psql");
    psql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    // A session still starting when the ALTER committed has no database
    // name in pg_stat_activity yet and escapes one terminate: terminate
    // until none is left.
    for _ in 0..50 {
        let ended = psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'"
        ));
        if ended == "0" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Gone from here on (sessions still open before the terminate may
    // have served requests).
    let down_at = load.started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    psql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    let back_at = load.started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;
    let counts = by_status(&outcomes);

    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent > down_at + Duration::from_millis(200) && o.sent + o.took < back_at)
        .collect();
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Ok(200 | 201)))
        .collect();
    assert!(!failed.is_empty(), "the outage was seen: {counts:?}");
    for o in &failed {
        assert_eq!(o.status, Ok(503), "at {:?}: {}", o.sent, o.body);
        let code = o.body["code"].as_str().unwrap_or("");
        assert!(code.starts_with("PGRST00"), "503 body: {}", o.body);
        assert!(o.took < Duration::from_secs(1), "slow failure {:?}", o.took);
    }
    assert!(
        during.iter().all(|o| o.status == Ok(503)),
        "requests during the outage: {:?}",
        by_status(&during.iter().map(|o| (*o).clone()).collect::<Vec<_>>())
    );
    let recovered = outcomes
        .iter()
        .filter(|o| o.sent >= back_at && matches!(o.status, Ok(200 | 201)))
        .map(|o| o.sent + o.took)
        .min()
        .expect("a success after the return");
    let recovery = recovered.saturating_sub(back_at);
    assert!(recovery < Duration::from_secs(2), "recovery {recovery:?}");
    for o in &outcomes {
        assert!(
            o.sent < back_at + Duration::from_secs(2) || matches!(o.status, Ok(200 | 201)),
            "after recovery: {} at {:?}",
            o.label(),
            o.sent
        );
    }
    let acked = outcomes.iter().filter(|o| o.status == Ok(201)).count() as i64;
    let rows = s.count_rows(0, "WHERE body LIKE 'w%'");
    assert!(rows >= acked, "rows {rows}, acknowledged {acked}");
    let slowest_failure = failed.iter().map(|o| o.took).max().unwrap_or_default();
    record(
        "tenant database unavailable under load (sessions killed, connections refused 1.5 s)",
        json!({
            "requests": outcomes.len(),
            "outcomes": counts,
            "errors": failed.len(),
            "slowest_ms": slowest_failure.as_millis() as u64,
            "recovery_ms": recovery.as_millis() as u64,
            "data": format!("{acked} inserts acknowledged, {rows} rows present"),
        }),
    );
}
