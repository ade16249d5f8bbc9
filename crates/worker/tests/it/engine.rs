//! The engine: schema cache reloads, broken connections, limits, metrics.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn schema_cache_connections_limits_metrics() {
    let s = Stack::start_with(&[
        ("MADBASE_WORKER_STATEMENT_TIMEOUT_MS", "500"),
        ("MADBASE_WORKER_POOL_MAX_PER_TENANT", "2"),
        ("MADBASE_WORKER_POOL_TIMEOUT_MS", "300"),
    ])
    .await;
    let (st, _) = call(s.get("/items?id=eq.1")).await;
    assert_eq!(st, 200);

    // Unknown table: 404 PGRST205; a table created since is found (the miss reloads the cache).
    assert_err(&call(s.get("/nope")).await, 404, "PGRST205");
    s.sql("CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1)")
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, v) = call(s.get("/later")).await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 1}])));

    // A new column appears after NOTIFY pgrst, 'reload schema'.
    s.sql("ALTER TABLE later ADD COLUMN note text").await;
    assert_err(&call(s.get("/later?select=note")).await, 400, "42703");
    s.sql("NOTIFY pgrst, 'reload schema'").await;
    let mut ok = false;
    for _ in 0..50 {
        if call(s.get("/later?select=note")).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the NOTIFY reloaded the schema cache");

    // Broken connections are retried once. Only this test's tenant database:
    // the cluster is shared with the tests running beside this one.
    let killed = s
        .db
        .server
        .psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'madbase-worker' AND datname = '{}' AND query NOT ILIKE '%LISTEN%'",
                s.tenant_database()
            ),
        )
        .expect("terminate");
    assert_ne!(killed, "0");
    let (st, v) = call(s.get("/items?id=eq.1&select=id")).await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 1}])));

    // statement_timeout per request: 57014.
    let (st, v) = call(s.req(Method::POST, "/rpc/slow")).await;
    assert_eq!(st.as_u16(), 503, "{v}");
    assert_eq!(v["code"], "57014");

    // Pool exhaustion: two connections (one is the LISTEN), so a second
    // concurrent request waits and gets 504 PGRST003.
    let slow = s.req(Method::POST, "/rpc/slow").send();
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call(s.get("/items?id=eq.1")).await
    };
    let (_, second) = tokio::join!(slow, second);
    assert_err(&second, 504, "PGRST003");

    // Metrics.
    let text = s
        .http
        .get(format!("{}/metrics", s.worker_admin_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        "madbase_worker_pools 1".to_owned(),
        format!(
            "madbase_worker_pool_connections{{tenant=\"{}\",state=\"idle\"}}",
            s.tenant
        ),
        format!(
            "madbase_worker_pool_connections{{tenant=\"{}\",state=\"in_use\"}}",
            s.tenant
        ),
        format!(
            "madbase_worker_pool_max_connections{{tenant=\"{}\"}} 2",
            s.tenant
        ),
        "madbase_worker_query_duration_seconds_bucket".to_owned(),
        format!(
            "madbase_worker_schema_cache_reloads_total{{tenant=\"{}\"}}",
            s.tenant
        ),
        "madbase_tenant_lookups_total".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle} in\n{text}");
    }
    // Readiness checks control.
    let ready = s
        .http
        .get(format!("{}/ready", s.worker_admin_url))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn pools_are_bounded_and_closed_when_idle() {
    let s = Stack::start_with(&[
        ("MADBASE_WORKER_POOL_MAX_PER_TENANT", "3"),
        ("MADBASE_WORKER_POOL_MAX_TOTAL", "5"),
        ("MADBASE_WORKER_POOL_IDLE_SECONDS", "2"),
    ])
    .await;
    let (st, _) = call(s.get("/items?id=eq.1")).await;
    assert_eq!(st, 200);
    assert!(s.metrics().await.contains("madbase_worker_pools 1"));
    // Room for one pool only (5 / 3): the second tenant's pool replaces the first.
    let (other, key) = s.another_tenant().await;
    let (st, v) = call(
        s.http
            .get(format!("{}/rest/v1/things", s.worker_url))
            .header("X-Madbase-Tenant", &other)
            .header("apikey", &key),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 7}])));
    let text = s.metrics().await;
    assert!(text.contains("madbase_worker_pools 1"), "{text}");
    assert!(
        text.contains(&format!(
            "madbase_worker_pool_max_connections{{tenant=\"{other}\"}} 3"
        )),
        "{text}"
    );
    assert!(
        !text.contains(&format!("tenant=\"{}\",state", s.tenant)),
        "{text}"
    );
    // The first tenant still works (a new pool), and idle pools close.
    let (st, _) = call(s.get("/items?id=eq.1")).await;
    assert_eq!(st, 200);
    let mut closed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.metrics().await.contains("madbase_worker_pools 0") {
            closed = true;
            break;
        }
    }
    assert!(closed, "idle pools are closed");
    let (st, v) = call(s.get("/items?id=eq.2")).await;
    assert_eq!(st, 200, "{v}");
}

#[test]
fn config_errors_name_the_variable() {
    use madbase_platform::config::Env;
    let base = [("JWT_SECRET", SECRET)];
    for (var, value) in [
        ("MADBASE_WORKER_STATEMENT_TIMEOUT_MS", "soon"),
        ("MADBASE_WORKER_STATEMENT_TIMEOUT_MS", "0"),
        ("MADBASE_WORKER_MAX_ROWS", "-1"),
        ("MADBASE_WORKER_POOL_MAX_PER_TENANT", "0"),
        ("MADBASE_WORKER_POOL_MAX_TOTAL", "3"),
        ("MADBASE_WORKER_POOL_TIMEOUT_MS", "x"),
        ("MADBASE_WORKER_POOL_IDLE_SECONDS", "-5"),
        ("MADBASE_WORKER_SCHEMAS", ","),
    ] {
        let vars: std::collections::HashMap<String, String> = base
            .iter()
            .chain([(var, value)].iter())
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let e = madbase_worker::Config::from_env(&Env::new(vars)).expect_err(var);
        assert_eq!(e.var, var, "{e}");
    }
}
