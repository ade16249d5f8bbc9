//! The functions service's routers, driven without a socket, against the
//! real control service (in-process on loopback, on a testkit Postgres):
//! tenants are created, functions deployed and limits set through its
//! admin API. Worker processes here are stand-ins (`cat`, which echoes
//! frames it should answer; `sleep`, which never answers) for the pool's
//! failure paths; the real `madbase functions-worker` runs in the madbase
//! crate's end-to-end tests (`crates/madbase/tests/it/functions.rs`).

use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt as _;
use madbase_platform::server::{admin_router, api_router};
use madbase_tenancy::jwt;
use madbase_testkit::service::{Served, control_env, telemetry};
use madbase_testkit::tenant::{Tenant, platform_token};
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn config(extra: &[(&str, &str)]) -> madbase_functions::Config {
    madbase_functions::Config::from_env(&madbase_testkit::service::env(extra))
        .expect("valid config")
}

#[tokio::test]
async fn test_health_endpoint_functions() {
    let app = madbase_functions::app(&config(&[])).expect("app");
    madbase_testkit::service::assert_health(&app).await;
}

#[test]
fn configuration_defaults_and_errors() {
    let c = config(&[]);
    assert_eq!(c.public_url, "http://127.0.0.1:8000");
    assert_eq!(c.proxy_url, c.public_url);
    assert_eq!(c.wall, Duration::from_secs(150));
    assert_eq!(c.cpu_ms, 2000);
    assert_eq!(c.memory_bytes, 256 << 20);
    assert_eq!(c.max_request_bytes, 6 << 20);
    assert_eq!(c.max_fetches, 50);
    assert_eq!(c.max_fetch_bytes, 10 << 20);
    assert!(c.workers >= 1);
    assert_eq!(c.worker_command.len(), 2);
    assert_eq!(c.worker_command[1], "functions-worker");
    let c = config(&[
        (
            "MADBASE_FUNCTIONS_WORKER_CMD",
            "/bin/madbase functions-worker --x",
        ),
        (
            "MADBASE_FUNCTIONS_FETCH_ALLOW",
            "10.0.0.0/8, api.internal ,",
        ),
        ("MADBASE_FUNCTIONS_QUEUE", "0"),
        ("MADBASE_PUBLIC_URL", "https://api.example.com/"),
        ("MADBASE_FUNCTIONS_PROXY_URL", "http://proxy:8000"),
    ]);
    assert_eq!(c.public_url, "https://api.example.com");
    assert_eq!(c.proxy_url, "http://proxy:8000");
    assert_eq!(
        c.worker_command,
        ["/bin/madbase", "functions-worker", "--x"].map(std::ffi::OsString::from)
    );
    assert_eq!(c.fetch_allow, ["10.0.0.0/8", "api.internal"]);
    assert_eq!(c.queue, 0);
    for (var, value) in [
        ("MADBASE_FUNCTIONS_WORKERS", "0"),
        ("MADBASE_FUNCTIONS_WORKERS", "many"),
        ("MADBASE_FUNCTIONS_CPU_MS", "-1"),
        ("MADBASE_FUNCTIONS_WALL_SECONDS", "soon"),
        ("MADBASE_PUBLIC_URL", "ftp://x"),
        ("MADBASE_FUNCTIONS_PROXY_URL", "proxy:8000"),
    ] {
        let err =
            madbase_functions::Config::from_env(&madbase_testkit::service::env(&[(var, value)]))
                .expect_err(var);
        assert_eq!(err.var, var);
    }
}

/// The functions service's routers in front of a real control with one
/// tenant, which has the functions `open` (verify_jwt off) and `locked`
/// (on) and the secret `A_SECRET`.
struct Functions {
    api: axum::Router,
    admin: axum::Router,
    /// Stopped by a test that needs control gone.
    control: Option<Served>,
    control_base: String,
    http: reqwest::Client,
    tenant: Tenant,
    _db: madbase_testkit::TestDb,
}

impl Functions {
    async fn start(extra: &[(&str, &str)]) -> Functions {
        telemetry();
        let db = madbase_testkit::postgres().expect("postgres");
        let control_cfg =
            madbase_control::Config::from_env(&control_env(&db, &[])).expect("control config");
        let control =
            Served::start(madbase_control::app(&control_cfg).await.expect("control")).await;
        let http = reqwest::Client::new();
        let tenant = Tenant::create(&http, &control.url(), "acme").await;
        let control_url = control.url();
        let mut vars = vec![("MADBASE_CONTROL_URL", control_url.as_str())];
        vars.extend_from_slice(extra);
        let app = madbase_functions::app(&config(&vars)).expect("app");
        let f = Functions {
            api: api_router(&app),
            admin: admin_router(&app),
            control: Some(control),
            control_base: control_url.clone(),
            http,
            tenant,
            _db: db,
        };
        f.deploy("open", "?verify_jwt=false").await;
        f.deploy("locked", "").await;
        let resp = f
            .http
            .put(f.control_url("secrets"))
            .bearer_auth(platform_token("admin"))
            .json(&json!({"A_SECRET": "x"}))
            .send()
            .await
            .expect("secrets");
        assert_eq!(resp.status(), 200);
        f
    }

    /// `<control>/v1/tenants/<tenant>/<path>`
    fn control_url(&self, path: &str) -> String {
        format!("{}/v1/tenants/{}/{path}", self.control_base, self.tenant.id)
    }

    /// Deploys a small function as `name` through control.
    async fn deploy(&self, name: &str, query: &str) {
        let resp = self
            .http
            .put(format!(
                "{}{query}",
                self.control_url(&format!("functions/{name}"))
            ))
            .bearer_auth(platform_token("admin"))
            .body("Deno.serve(() => new Response('hi'));")
            .send()
            .await
            .expect("deploy");
        assert!(
            resp.status().is_success(),
            "deploy {name}: {}",
            resp.status()
        );
    }

    /// A `madbase_function_invocations_total` line of this tenant.
    fn counted(&self, function: &str, outcome: &str, n: u32) -> String {
        format!(
            "madbase_function_invocations_total{{tenant=\"{}\",function=\"{function}\",outcome=\"{outcome}\"}} {n}",
            self.tenant.id
        )
    }

    async fn call(&self, req: http::request::Builder, body: Body) -> (u16, Value) {
        let req = req
            .header("x-madbase-tenant", &self.tenant.id)
            .body(body)
            .expect("request");
        let resp = self.api.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        assert!(resp.headers().contains_key("x-request-id"));
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    async fn post(&self, name: &str) -> (u16, Value) {
        self.call(
            http::Request::post(format!("/functions/v1/{name}")),
            Body::empty(),
        )
        .await
    }

    async fn metrics(&self) -> String {
        let resp = self
            .admin
            .clone()
            .oneshot(
                http::Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[tokio::test]
async fn invocations_need_a_tenant_and_control() {
    // Control's address: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let control_url = format!("http://{closed}");
    let app =
        madbase_functions::app(&config(&[("MADBASE_CONTROL_URL", &control_url)])).expect("app");
    let api = api_router(&app);
    let call = |req: http::Request<Body>| {
        let api = api.clone();
        async move {
            let resp = api.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).expect("json"),
            )
        }
    };
    // Not through the proxy: no tenant header.
    let (status, body) = call(
        http::Request::post("/functions/v1/hello")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["request_id"].is_string());
    // Control is unreachable in this test: the tenant cannot be looked up.
    let (status, body) = call(
        http::Request::post("/functions/v1/hello")
            .header("x-madbase-tenant", "acme")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_jwt_and_body_limits_come_before_any_worker() {
    // A worker command that cannot start: nothing here may need one.
    let f = Functions::start(&[
        ("MADBASE_FUNCTIONS_WORKER_CMD", "/nonexistent/worker"),
        ("MADBASE_FUNCTIONS_MAX_REQUEST_BYTES", "100"),
    ])
    .await;
    for name in ["nope", "Bad.Name"] {
        let (status, body) = f.post(name).await;
        assert_eq!(status, 404, "{name}: {body}");
        assert_eq!(body["code"], "function_not_found");
    }
    let nested = format!("{}/functions/open", f.tenant.id);
    for other in ["other", nested.as_str(), "x"] {
        let (status, body) = f
            .call(
                http::Request::post("/functions/v1/open").header("x-madbase-tenant", other),
                Body::empty(),
            )
            .await;
        assert_eq!(status, 404, "{other}: {body}");
        assert_eq!(body["code"], "tenant_not_found");
    }

    // verify_jwt on: no bearer, a bad one, another tenant's.
    let (status, body) = f.post("locked").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "missing_authorization");
    let other = jwt::api_key(
        "another-secret-another-secret-another",
        &f.tenant.id,
        "anon",
    );
    for token in ["garbage", other.as_str()] {
        let (status, body) = f
            .call(
                http::Request::post("/functions/v1/locked")
                    .header("authorization", format!("Bearer {token}")),
                Body::empty(),
            )
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["code"], "invalid_jwt");
    }
    // A valid key passes the check and reaches the (missing) worker.
    let key = jwt::api_key(&f.tenant.jwt_secret, &f.tenant.id, "anon");
    let (status, body) = f
        .call(
            http::Request::post("/functions/v1/locked")
                .header("authorization", format!("Bearer {key}")),
            Body::empty(),
        )
        .await;
    assert_eq!(status, 503, "{body}");

    // Request bodies over the limit: 413, declared or streamed.
    let (status, body) = f
        .call(
            http::Request::post("/functions/v1/open"),
            Body::from(vec![b'x'; 101]),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "function_request_too_large");
    let stream = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 40]))),
    );
    let (status, body) = f
        .call(
            http::Request::post("/functions/v1/open"),
            Body::from_stream(stream),
        )
        .await;
    assert_eq!(status, 413, "{body}");

    let metrics = f.metrics().await;
    for needle in [
        f.counted("unknown", "not_found", 2),
        f.counted("locked", "unauthorized", 3),
        f.counted("open", "request_too_large", 2),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
    assert!(!metrics.contains("Bad.Name"));
    assert!(
        metrics.contains(
            "madbase_function_invocations_total{tenant=\"unknown\",function=\"unknown\",outcome=\"tenant_not_found\"} 3"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("tenant=\"other\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_breaks_the_protocol_fails_only_its_invocation() {
    // `cat` echoes the invocation instead of answering it.
    let f = Functions::start(&[("MADBASE_FUNCTIONS_WORKER_CMD", "cat")]).await;
    for _ in 0..2 {
        let (status, body) = f.post("open").await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["code"], "function_crashed");
        assert!(body["request_id"].is_string());
    }
    let metrics = f.metrics().await;
    assert!(
        metrics.contains("madbase_function_worker_restarts_total{reason=\"crashed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&f.counted("open", "crashed", 2)),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wall_limit_queue_and_tenant_cap() {
    // `sleep` never answers: every invocation runs into the wall limit.
    let f = std::sync::Arc::new(
        Functions::start(&[
            ("MADBASE_FUNCTIONS_WORKER_CMD", "sleep 60"),
            ("MADBASE_FUNCTIONS_WORKERS", "1"),
            ("MADBASE_FUNCTIONS_QUEUE", "1"),
            ("MADBASE_FUNCTIONS_QUEUE_SECONDS", "0.2"),
            ("MADBASE_FUNCTIONS_WALL_SECONDS", "1.5"),
            ("MADBASE_FUNCTIONS_TENANT_CONCURRENCY", "3"),
        ])
        .await,
    );
    let started = Instant::now();
    let first = {
        let f = f.clone();
        tokio::spawn(async move { f.post("open").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The one worker is busy: one caller may wait (0.2 s), a second at the
    // same time finds the queue full at once.
    let waiting = {
        let f = f.clone();
        tokio::spawn(async move { f.post("open").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quick = Instant::now();
    let (status, body) = f.post("open").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "function_pool_busy");
    assert!(
        quick.elapsed() < Duration::from_millis(150),
        "{:?}",
        quick.elapsed()
    );
    let (status, body) = waiting.await.expect("join");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "function_pool_busy");
    // A caller that goes away while waiting leaves the queue: the next one
    // may wait again (rather than finding the queue full).
    let abandoned = tokio::time::timeout(Duration::from_millis(50), f.post("open")).await;
    assert!(abandoned.is_err(), "still waiting when abandoned");
    let probe = Instant::now();
    let (status, body) = f.post("open").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        probe.elapsed() >= Duration::from_millis(150),
        "{:?}",
        probe.elapsed()
    );

    let (status, body) = first.await.expect("join");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "function_wall_limit");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let metrics = f.metrics().await;
    for needle in [
        "madbase_function_worker_restarts_total{reason=\"wall_limit\"} 1".to_owned(),
        f.counted("open", "pool_busy", 3),
        f.counted("open", "wall_limit", 1),
        "madbase_function_workers_busy 0".to_owned(),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_concurrency_cap_gets_429() {
    let f = std::sync::Arc::new(
        Functions::start(&[
            ("MADBASE_FUNCTIONS_WORKER_CMD", "sleep 60"),
            ("MADBASE_FUNCTIONS_WORKERS", "4"),
            ("MADBASE_FUNCTIONS_WALL_SECONDS", "1"),
            ("MADBASE_FUNCTIONS_TENANT_CONCURRENCY", "2"),
        ])
        .await,
    );
    let running: Vec<_> = (0..2)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.post("open").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = f.post("open").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "function_concurrency_limit");
    for r in running {
        let (status, _) = r.await.expect("join");
        assert_eq!(status, 504);
    }
    // The slots are free again.
    let (status, _) = f.post("open").await;
    assert_eq!(status, 504);

    // An invocation whose caller went away runs to its end and is counted.
    let abandoned = tokio::time::timeout(Duration::from_millis(200), f.post("open")).await;
    assert!(abandoned.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    let needle = f.counted("open", "wall_limit", 4);
    loop {
        let metrics = f.metrics().await;
        if metrics.contains(&needle) {
            break;
        }
        assert!(Instant::now() < deadline, "{needle} in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deployed function's recent invocations (here: refusals before any
/// worker) are kept for the console, behind the internal token.
#[tokio::test(flavor = "multi_thread")]
async fn recent_invocations_are_kept_for_the_console() {
    let f = Functions::start(&[("MADBASE_FUNCTIONS_WORKER_CMD", "/nonexistent/worker")]).await;
    let recent = |token: String| {
        let api = f.api.clone();
        let uri = format!(
            "/internal/v1/tenants/{}/functions/locked/invocations",
            f.tenant.id
        );
        async move {
            let resp = api
                .oneshot(
                    http::Request::get(uri)
                        .header("authorization", format!("Bearer {token}"))
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).expect("json"),
            )
        }
    };
    let internal = || {
        jwt::platform_token(
            madbase_testkit::service::JWT_SECRET,
            "internal",
            Duration::from_secs(60),
        )
    };
    let (status, body) = recent(internal()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["invocations"], json!([]));
    for _ in 0..2 {
        let (status, _) = f.post("locked").await;
        assert_eq!(status, 401);
    }
    // Not a deployed function: nothing is kept.
    assert_eq!(f.post("nope").await.0, 404);
    let (status, body) = recent(internal()).await;
    assert_eq!(status, 200, "{body}");
    let calls = body["invocations"].as_array().expect("list");
    assert_eq!(calls.len(), 2, "{body}");
    assert_eq!(calls[0]["status"], 401);
    assert_eq!(calls[0]["outcome"], "unauthorized");
    assert!(
        calls[0]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(
        calls[0]["at_ms"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );
    assert!(
        calls[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("verifies JWTs")),
        "{body}"
    );
    let admin = jwt::platform_token(
        madbase_testkit::service::JWT_SECRET,
        "admin",
        Duration::from_secs(60),
    );
    assert_eq!(recent(admin).await.0, 401);
}

/// A redeploy and a delete reach the functions service through control's
/// change feed: with an hour-long code cache, nothing else could show them.
#[tokio::test(flavor = "multi_thread")]
async fn the_code_cache_follows_controls_change_feed() {
    let f = Functions::start(&[
        ("MADBASE_FUNCTIONS_WORKER_CMD", "/nonexistent/worker"),
        ("MADBASE_FUNCTIONS_CODE_CACHE_SECONDS", "3600"),
    ])
    .await;
    // Cached: `locked` verifies JWTs; `open` reaches the (missing) worker.
    let (status, body) = f.post("locked").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = f.post("open").await;
    assert_eq!(status, 503, "{body}");

    f.deploy("locked", "?verify_jwt=false").await;
    let resp = f
        .http
        .delete(f.control_url("functions/open"))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (locked, _) = f.post("locked").await;
        let (open, body) = f.post("open").await;
        if locked == 503 && open == 404 {
            assert_eq!(body["code"], "function_not_found");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 10 s: locked {locked}, open {open} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tenant's limit overrides, set in control, apply to its invocations:
/// a concurrency cap of 1 where the service allows 20, and a 1 s wall time
/// where the service allows 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_limit_overrides_apply_to_its_invocations() {
    let f = std::sync::Arc::new(
        Functions::start(&[
            ("MADBASE_FUNCTIONS_WORKER_CMD", "sleep 60"),
            ("MADBASE_FUNCTIONS_WORKERS", "4"),
            ("MADBASE_FUNCTIONS_WALL_SECONDS", "30"),
            ("MADBASE_FUNCTIONS_TENANT_CONCURRENCY", "20"),
        ])
        .await,
    );
    let resp = f
        .http
        .put(f.control_url("function-limits"))
        .bearer_auth(platform_token("admin"))
        .json(&json!({"max_concurrent": 1, "wall_seconds": 1}))
        .send()
        .await
        .expect("limits");
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let first = {
        let f = f.clone();
        tokio::spawn(async move { f.post("open").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = f.post("open").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "function_concurrency_limit");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("already runs 1 function")),
        "{body}"
    );
    let (status, body) = first.await.expect("join");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "function_wall_limit");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the tenant's 1 s wall time, not the service's 30 s: {:?}",
        started.elapsed()
    );
}

/// After a redeploy the change feed has the new version loaded before any
/// invocation asks: with control gone right after, the next invocation runs
/// the new version (verify_jwt off), not the stale cached one.
#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_is_loaded_before_the_next_invocation() {
    let mut f = Functions::start(&[
        ("MADBASE_FUNCTIONS_WORKER_CMD", "/nonexistent/worker"),
        ("MADBASE_FUNCTIONS_CODE_CACHE_SECONDS", "3600"),
    ])
    .await;
    let (status, _) = f.post("locked").await;
    assert_eq!(status, 401);
    let announced = |metrics: String| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("madbase_tenant_invalidations_total{reason=\"functions\"} ")
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = announced(f.metrics().await);
    f.deploy("locked", "?verify_jwt=false").await;
    // The feed's announcement, then the reload (a few milliseconds).
    let deadline = Instant::now() + Duration::from_secs(10);
    while announced(f.metrics().await) <= before {
        assert!(Instant::now() < deadline, "no change announced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.control.take().expect("control").stop().await;
    // Reaches the (missing) worker: 503, where the old version said 401.
    let (status, body) = f.post("locked").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
}
