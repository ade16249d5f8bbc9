//! Dependencies going away under load (issue 24): control stopped (the
//! services serve from their caches, a key rotation made meanwhile takes
//! effect when it returns) and the whole Postgres server stopped and
//! started again (fail fast, recover, lose no acknowledged write).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::stack::{DRAIN, Load, MakeRequest, Outcome, Stack, by_status, p99_ms, record};

/// `GET /ready` of `svc`'s admin listener: the status and the body.
pub async fn ready(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    match http.get(url).timeout(Duration::from_secs(3)).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or_default())
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

/// Polls `/ready` until it answers `want`, at most `limit`; the time it took.
async fn ready_becomes(http: &reqwest::Client, url: &str, want: u16, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (status, body) = ready(http, url).await;
        if status == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{url} still answers {status} {body} after {limit:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Control stopped under load: the proxy and the worker keep serving the
/// tenant from their caches and their `/ready` names control as the
/// failing dependency. Meanwhile another control (same database, another
/// port: a second replica) rotates the tenant's keys; the services follow
/// the first one's change feed, so they only learn of it once control
/// returns: from then on the old key is refused and the new one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_stopped_services_serve_from_cache_and_follow_changes_after() {
    let mut s = Stack::start(1).await;
    let t = s.tenants[0].clone();
    let read = s.url(0, "/rest/v1/items?select=id&limit=5");
    let make: MakeRequest = {
        let (read, key) = (read.clone(), t.anon_key.clone());
        Arc::new(move |http: &reqwest::Client, _| http.get(&read).header("apikey", &key))
    };
    let load = Load::start(&s.http, 8, &make);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t0 = Instant::now();
    s.control.terminate();
    s.control.wait_exit(DRAIN + Duration::from_secs(2));
    let stopped_at = load.started.elapsed();
    // Both services say control is unreachable, and nothing else.
    let mut not_ready_after = Vec::new();
    for url in [s.proxy.admin_url("/ready"), s.worker.admin_url("/ready")] {
        ready_becomes(&s.http, &url, 503, Duration::from_secs(3)).await;
        not_ready_after.push(t0.elapsed());
        let (_, body) = ready(&s.http, &url).await;
        assert_eq!(body["failed"], json!(["control"]), "{url}: {body}");
    }
    // A second control on the same database rotates the keys meanwhile.
    let mut replica_env = s.control_env.clone();
    for (k, v) in &mut replica_env {
        if k == "MADBASE_LISTEN" {
            *v = "127.0.0.1:0".into();
        }
    }
    let mut replica = crate::helpers::start("control", &replica_env);
    let fresh = madbase_testkit::tenant::rotate_keys(&s.http, &replica.api_url(""), &t.id).await;
    replica.terminate();
    replica.wait_exit(DRAIN + Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let returned_at = load.started.elapsed();
    let outcomes_down = load.stop().await;
    // Everything the load sent while control was away was served from the
    // caches (the old key included: the feed that would revoke it is down,
    // the 30 s TTL bounds that).
    let counts = by_status(&outcomes_down);
    assert!(
        outcomes_down.iter().all(|o| o.status == Ok(200)),
        "while control was away: {counts:?}"
    );
    let served_while_down = outcomes_down
        .iter()
        .filter(|o| o.sent > stopped_at && o.sent < returned_at)
        .count();
    assert!(served_while_down > 0, "load while control was down");

    s.restart_control();
    let back = Instant::now();
    // Once the services follow the returned control's feed again (a
    // `hello` after a gap reloads every tenant), the rotation takes effect.
    let took = loop {
        let old = s.http.get(&read).header("apikey", &t.anon_key).send().await;
        let new = s.http.get(&read).header("apikey", &fresh).send().await;
        let worker_old = s
            .http
            .get(s.worker.api_url("/rest/v1/items?select=id&limit=1"))
            .header("x-madbase-tenant", &t.id)
            .header("apikey", &t.anon_key)
            .send()
            .await;
        if old.is_ok_and(|r| r.status() == 401)
            && new.is_ok_and(|r| r.status() == 200)
            && worker_old.is_ok_and(|r| r.status() == 401)
        {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(8),
            "the rotation made while control was away is not in effect 8 s after its return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for url in [s.proxy.admin_url("/ready"), s.worker.admin_url("/ready")] {
        ready_becomes(&s.http, &url, 200, Duration::from_secs(3)).await;
    }
    record(
        "control stopped under load; keys rotated by a second control meanwhile; control restarted",
        json!({
            "requests": outcomes_down.len(),
            "outcomes": counts,
            "errors": 0,
            "recovery_ms": took.as_millis() as u64,
            "data": format!(
                "{served_while_down} requests served from cache while control was down; proxy and worker /ready 503 naming control after {:?} ms; the rotation in effect at proxy and worker {} ms after control's return",
                not_ready_after.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
                took.as_millis()
            ),
        }),
    );
}

/// The whole Postgres server stopped under load (`pg_ctl stop`, fast then
/// immediate: a crash) and started again. The stack runs on a cluster of
/// the test's own with `synchronous_commit=on`, so an acknowledged write
/// is on disk. While it is down the worker's `/ready` is 503 naming the
/// database, and requests fail fast with PostgREST's 503 `PGRST000`/
/// `PGRST001`; the pools recover by themselves; every insert
/// acknowledged before, between and after the outages is in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_fails_fast_and_loses_nothing() {
    let mut cluster =
        madbase_testkit::Cluster::start(&["synchronous_commit=on"]).expect("private cluster");
    cluster
        .server
        .psql("postgres", "CREATE DATABASE control")
        .expect("control database");
    let db = madbase_testkit::TestDb {
        url: cluster.server.url_for("control"),
        name: "control".into(),
        server: cluster.server.clone(),
    };
    let s = Stack::start_on(db, 1).await;
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
    let ready_url = s.worker.admin_url("/ready");
    let load = Load::start(&s.http, 8, &make);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(ready(&s.http, &ready_url).await.0, 200);

    let mut outages = Vec::new();
    let mut not_ready_after = Vec::new();
    let mut ready_again_after = Vec::new();
    for mode in ["fast", "immediate"] {
        let stop_at = load.started.elapsed();
        tokio::task::block_in_place(|| cluster.stop(mode)).expect("pg_ctl stop");
        let down_at = load.started.elapsed();
        // The worker's LISTEN connections broke: not ready, naming the
        // database (control, the other check, is up).
        let took = ready_becomes(&s.http, &ready_url, 503, Duration::from_secs(2)).await;
        not_ready_after.push(took);
        let (_, body) = ready(&s.http, &ready_url).await;
        assert_eq!(body["failed"], json!(["database"]), "{body}");
        tokio::time::sleep(Duration::from_millis(1500).saturating_sub(took)).await;
        let start_at = load.started.elapsed();
        tokio::task::block_in_place(|| cluster.start_again()).expect("start again");
        // Accepting connections (`start_again` waits for that).
        let back_at = load.started.elapsed();
        // The LISTEN connections retry every 2 s.
        ready_again_after
            .push(ready_becomes(&s.http, &ready_url, 200, Duration::from_secs(4)).await);
        outages.push((mode, stop_at, down_at, start_at, back_at));
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let outcomes = load.stop().await;
    let counts = by_status(&outcomes);

    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Ok(200 | 201)))
        .collect();
    assert!(!failed.is_empty(), "the outages were seen: {counts:?}");
    for o in &failed {
        assert_eq!(o.status, Ok(503), "at {:?}: {}", o.sent, o.body);
        let (code, message) = (
            o.body["code"].as_str().unwrap_or(""),
            o.body["message"].as_str().unwrap_or(""),
        );
        // PostgREST's codes and wording.
        match code {
            "PGRST000" => assert_eq!(
                message, "Database connection error. Retrying the connection.",
                "{}",
                o.body
            ),
            "PGRST001" => assert!(
                message.starts_with("Database client error. Retrying the connection.")
                    || message.starts_with("The connection was lost during COMMIT"),
                "{}",
                o.body
            ),
            _ => panic!("503 body: {}", o.body),
        }
        assert!(o.took < Duration::from_secs(1), "slow failure {:?}", o.took);
    }
    // No pile-up: nothing waits for the server to come back.
    let slowest = outcomes.iter().max_by_key(|o| o.took).expect("requests");
    assert!(
        slowest.took < Duration::from_secs(2),
        "slowest {:?}: {} sent at {:?}, outages {outages:?}: {}",
        slowest.took,
        slowest.label(),
        slowest.sent,
        slowest.body
    );
    let mut recoveries = Vec::new();
    for (i, (mode, _stop, down_at, start_at, back_at)) in outages.iter().enumerate() {
        // Sent while the server was down (after the stop returned, before
        // the start): all refused.
        let during: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| o.sent > *down_at && o.sent + o.took < *start_at)
            .cloned()
            .collect();
        assert!(!during.is_empty(), "{mode}: load while down");
        assert!(
            during.iter().all(|o| o.status == Ok(503)),
            "{mode}: {:?}",
            by_status(&during)
        );
        let next = outages.get(i + 1).map_or(Duration::MAX, |n| n.1);
        let recovered = outcomes
            .iter()
            .filter(|o| o.sent >= *back_at && o.sent < next && matches!(o.status, Ok(200 | 201)))
            .map(|o| o.sent + o.took)
            .min()
            .expect("a success after the restart");
        let recovery = recovered.saturating_sub(*back_at);
        assert!(
            recovery < Duration::from_secs(2),
            "{mode}: recovery {recovery:?}"
        );
        // From 2 s after the start on, everything succeeds.
        for o in outcomes
            .iter()
            .filter(|o| o.sent > *back_at + Duration::from_secs(2) && o.sent + o.took < next)
        {
            assert!(
                matches!(o.status, Ok(200 | 201)),
                "{mode}: after recovery: {} at {:?}: {}",
                o.label(),
                o.sent,
                o.body
            );
        }
        recoveries.push(recovery);
    }
    let acked = outcomes.iter().filter(|o| o.status == Ok(201)).count() as i64;
    // Writes cut by a stop may or may not have committed.
    let unknown = failed
        .iter()
        .filter(|o| o.body["code"] == "PGRST001")
        .count() as i64;
    let rows = s.count_rows(0, "WHERE body LIKE 'w%'");
    assert!(
        rows >= acked && rows <= acked + unknown,
        "rows {rows}, acknowledged {acked}, unknown {unknown}"
    );
    let ms = |d: &Duration| d.as_millis() as u64;
    let slowest_failure = failed.iter().map(|o| o.took).max().unwrap_or_default();
    record(
        "Postgres stopped (pg_ctl stop -m fast, then -m immediate) and restarted under load, 1.5 s down each",
        json!({
            "requests": outcomes.len(),
            "outcomes": counts,
            "errors": failed.len(),
            "slowest_ms": ms(&slowest_failure),
            "p99_ms": p99_ms(&outcomes),
            "recovery_ms": recoveries.iter().map(ms).max(),
            "data": format!(
                "{acked} inserts acknowledged, {rows} rows present; worker /ready 503 after {:?} ms, 200 again {:?} ms after the start; codes {:?}",
                not_ready_after.iter().map(ms).collect::<Vec<_>>(),
                ready_again_after.iter().map(ms).collect::<Vec<_>>(),
                failed.iter().map(|o| o.body["code"].as_str().unwrap_or("?")).collect::<std::collections::BTreeSet<_>>(),
            ),
        }),
    );
}
