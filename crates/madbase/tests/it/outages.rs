//! Dependencies going away under load (issue 24): control stopped (the
//! services serve from their caches, a key rotation made meanwhile takes
//! effect when it returns) and the whole Postgres server stopped and
//! started again (fail fast, recover, lose no acknowledged write).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::stack::{DRAIN, Load, MakeRequest, Stack, by_status, record};

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
    let rotated: serde_json::Value = s
        .http
        .post(replica.api_url(&format!("/v1/tenants/{}/keys/rotate", t.id)))
        .bearer_auth(madbase_testkit::tenant::platform_token("admin"))
        .send()
        .await
        .expect("rotate")
        .json()
        .await
        .expect("rotate json");
    let fresh = rotated["anon_key"].as_str().expect("anon_key").to_owned();
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
