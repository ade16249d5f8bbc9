//! CORS at the proxy, on real sockets: control (and its Postgres), the real
//! worker and the proxy in-process on loopback, with a stand-in for
//! functions that answers `OPTIONS` the way Supabase's documented function
//! pattern does and records what reached it.
//!
//! Preflights for `/rest/v1` are answered by the proxy without a key and
//! without reaching the worker (its request counter does not move);
//! every response to a request with `Origin`, the proxy's own errors
//! included, carries `Access-Control-Allow-Origin` and
//! `Access-Control-Expose-Headers`; allowed origins come from
//! `MADBASE_CORS_ORIGINS` or the tenant's settings in control; a function's
//! `OPTIONS` reaches the function.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::any;
use http::HeaderMap;
use madbase_testkit::service::{Served, control_env, env, telemetry};
use madbase_testkit::tenant::{Tenant, platform_token};
use serde_json::{Value, json};

/// What supabase-js sends on a data API request, as a browser lists it in
/// `Access-Control-Request-Headers`.
const SUPABASE_HEADERS: &str = "accept-profile,apikey,authorization,content-profile,content-type,prefer,range,x-client-info,x-supabase-api-version";
const EXPOSED: [&str; 6] = [
    "content-range",
    "content-location",
    "location",
    "preference-applied",
    "x-request-id",
    "retry-after",
];
const APP: &str = "https://app.example";
const FIXTURE: &str = r#"
CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);
GRANT SELECT, INSERT ON notes TO anon;
INSERT INTO notes VALUES (1, 'one'), (2, 'two'), (3, 'three');
CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep(3) $$;
"#;

/// Requests that reached the functions stand-in: (method, path, headers).
type Seen = Arc<Mutex<Vec<(String, String, HeaderMap)>>>;

/// A functions service stand-in: `OPTIONS` gets Supabase's documented
/// function CORS answer (`'ok'` with `Access-Control-Allow-*`), anything
/// else a JSON echo; every request is recorded.
async fn functions() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(any(
        move |method: http::Method, uri: http::Uri, headers: HeaderMap| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push((
                    method.to_string(),
                    uri.path().to_owned(),
                    headers,
                ));
                if method == http::Method::OPTIONS {
                    (
                        [
                            ("access-control-allow-origin", "*"),
                            (
                                "access-control-allow-headers",
                                "authorization, x-client-info, apikey, content-type",
                            ),
                            ("x-upstream", "function"),
                        ],
                        "ok",
                    )
                        .into_response()
                } else {
                    axum::Json(json!({"function": uri.path()})).into_response()
                }
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

struct Stack {
    control: Option<Served>,
    control_url: String,
    worker: Option<Served>,
    proxy: Served,
    http: reqwest::Client,
    tenant: Tenant,
    functions_seen: Seen,
}

impl Stack {
    async fn start(proxy_env: &[(&str, &str)]) -> Stack {
        telemetry();
        let db = madbase_testkit::postgres().expect("postgres");
        let control_cfg =
            madbase_control::Config::from_env(&control_env(&db, &[])).expect("control config");
        let control =
            Served::start(madbase_control::app(&control_cfg).await.expect("control")).await;
        let control_url = control.url();
        let worker_cfg =
            madbase_worker::Config::from_env(&env(&[("MADBASE_CONTROL_URL", &control_url)]))
                .expect("worker config");
        let worker = Served::start(madbase_worker::app(&worker_cfg).expect("worker")).await;
        let worker_url = worker.url();
        let (functions, functions_seen) = functions().await;
        let functions_url = format!("http://{functions}");
        let mut vars = vec![
            ("MADBASE_CONTROL_URL", control_url.as_str()),
            ("MADBASE_WORKER_URL", worker_url.as_str()),
            ("MADBASE_FUNCTIONS_URL", functions_url.as_str()),
            ("MADBASE_DOMAIN", "madbase.test"),
        ];
        vars.extend_from_slice(proxy_env);
        let proxy_cfg = madbase_proxy::Config::from_env(&env(&vars)).expect("proxy config");
        let proxy = Served::start(madbase_proxy::app(&proxy_cfg).expect("proxy")).await;
        let http = reqwest::Client::new();
        let tenant = Tenant::create(&http, &control_url, "cors").await;
        tenant.sql(&http, &control_url, FIXTURE).await;
        Stack {
            control: Some(control),
            control_url,
            worker: Some(worker),
            proxy,
            http,
            tenant,
            functions_seen,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/t/{}{path}", self.proxy.url(), self.tenant.id)
    }

    /// A browser's preflight of `method` from `origin`.
    async fn preflight(&self, path: &str, origin: &str, method: &str) -> Reply {
        Reply::of(
            self.http
                .request(http::Method::OPTIONS, self.url(path))
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", SUPABASE_HEADERS),
        )
        .await
    }

    /// A GET from `origin` with the anon key.
    fn get(&self, path: &str, origin: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(path))
            .header("origin", origin)
            .header("apikey", &self.tenant.anon_key)
    }

    /// Requests the worker has answered on `/rest/v1` routes.
    async fn worker_requests(&self) -> u64 {
        let text = self
            .worker
            .as_ref()
            .expect("worker running")
            .metrics()
            .await;
        text.lines()
            .filter(|l| l.starts_with("http_requests_total{") && l.contains("route=\"/rest/v1/"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// `PATCH /v1/tenants/{id}/settings` on control.
    async fn settings(&self, id: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .patch(format!("{}/v1/tenants/{id}/settings", self.control_url))
            .bearer_auth(platform_token("admin"))
            .json(&body)
            .send()
            .await
            .expect("settings");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    async fn of(req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("request");
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A complete preflight answer allowing `origin` (`*` or the origin).
    fn assert_preflight(&self, allow_origin: &str, case: &str) {
        assert_eq!(self.status, 204, "{case}: {}", self.text);
        assert_eq!(
            self.header("access-control-allow-origin"),
            Some(allow_origin),
            "{case}"
        );
        let methods = self
            .header("access-control-allow-methods")
            .unwrap_or_default();
        for m in ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"] {
            assert!(
                methods.split(',').any(|x| x.trim() == m),
                "{case}: {m} in {methods}"
            );
        }
        let allowed = self
            .header("access-control-allow-headers")
            .unwrap_or_default();
        for h in SUPABASE_HEADERS.split(',') {
            assert!(
                allowed.split(',').any(|x| x.trim().eq_ignore_ascii_case(h)),
                "{case}: {h} in {allowed}"
            );
        }
        assert_eq!(
            self.header("access-control-max-age"),
            Some("3600"),
            "{case}"
        );
        self.assert_vary(case);
        assert!(self.text.is_empty(), "{case}: {}", self.text);
    }

    /// An actual response readable by a page of `origin` (`allow_origin` is
    /// what it must say).
    fn assert_readable(&self, allow_origin: &str, case: &str) {
        assert_eq!(
            self.header("access-control-allow-origin"),
            Some(allow_origin),
            "{case}"
        );
        let exposed = self
            .header("access-control-expose-headers")
            .unwrap_or_default();
        for h in EXPOSED {
            assert!(
                exposed.split(',').any(|x| x.trim().eq_ignore_ascii_case(h)),
                "{case}: {h} exposed in {exposed:?}"
            );
        }
        self.assert_vary(case);
        assert!(self.header("x-request-id").is_some(), "{case}");
    }

    fn assert_vary(&self, case: &str) {
        let vary: Vec<&str> = self
            .headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(
            vary.iter()
                .any(|v| v.to_ascii_lowercase().contains("origin")),
            "{case}: Vary {vary:?}"
        );
    }

    /// A JSON error with `code` from the proxy.
    fn assert_error(&self, status: u16, code: &str, case: &str) {
        assert_eq!(self.status, status, "{case}: {}", self.text);
        assert_eq!(self.json()["code"], code, "{case}: {}", self.text);
    }
}

/// The default (`*`): a preflight is answered by the proxy without a key
/// and without reaching the worker, for any origin, for a known or unknown
/// tenant; actual responses say `*` and never allow credentials.
#[tokio::test(flavor = "multi_thread")]
async fn preflight_is_answered_without_a_key() {
    let s = Stack::start(&[]).await;
    let before = s.worker_requests().await;
    for method in ["GET", "POST", "PATCH", "DELETE"] {
        let r = s.preflight("/rest/v1/notes", APP, method).await;
        r.assert_preflight("*", method);
        assert_eq!(
            r.header("access-control-allow-credentials"),
            None,
            "{method}"
        );
    }
    let r = s
        .preflight("/rest/v1/rpc/slow", "http://localhost:3000", "POST")
        .await;
    r.assert_preflight("*", "rpc from localhost");
    let r = Reply::of(
        s.http
            .request(
                http::Method::OPTIONS,
                format!("{}/t/no-such-tenant/rest/v1/x", s.proxy.url()),
            )
            .header("origin", APP)
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(r.status, 204, "unknown tenant: {}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // By host too.
    let r = Reply::of(
        s.http
            .request(
                http::Method::OPTIONS,
                format!("{}/rest/v1/notes", s.proxy.url()),
            )
            .header("host", format!("{}.madbase.test", s.tenant.id))
            .header("origin", APP)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", SUPABASE_HEADERS),
    )
    .await;
    r.assert_preflight("*", "by host");
    assert_eq!(
        s.worker_requests().await,
        before,
        "no preflight reached the worker"
    );

    let r = Reply::of(s.get("/rest/v1/notes?select=id&order=id", APP)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!([{"id": 1}, {"id": 2}, {"id": 3}]));
    r.assert_readable("*", "select");
    assert_eq!(r.header("access-control-allow-credentials"), None);

    // Without Origin (a server-side client): no CORS answer, but Vary, so
    // a shared cache keeps the two apart.
    let r = Reply::of(
        s.http
            .get(s.url("/rest/v1/notes?select=id"))
            .header("apikey", &s.tenant.anon_key),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), None);
    r.assert_vary("no origin");
}

/// Every status the proxy itself answers (401, 404, 413, 429, 502, 503, 504)
/// and the worker's own errors and successes carry the CORS headers, so a
/// page can read them; `count=exact`'s `Content-Range` is exposed.
#[tokio::test(flavor = "multi_thread")]
async fn every_response_is_readable() {
    let mut s = Stack::start(&[
        ("MADBASE_MAX_BODY_BYTES", "1024"),
        ("MADBASE_REST_TIMEOUT_SECONDS", "1"),
        ("MADBASE_RATE_LIMIT_RPS", "1"),
        ("MADBASE_RATE_LIMIT_BURST", "12"),
    ])
    .await;
    let origin = "http://127.0.0.1:5173";

    let r = Reply::of(
        s.get("/rest/v1/notes?select=id", origin)
            .header("prefer", "count=exact")
            .header("range", "0-0"),
    )
    .await;
    assert_eq!(r.status, 206, "{}", r.text);
    assert_eq!(r.header("content-range"), Some("0-0/3"));
    r.assert_readable("*", "count=exact");

    let r = Reply::of(
        s.http
            .post(s.url("/rest/v1/notes"))
            .header("origin", origin)
            .header("apikey", &s.tenant.anon_key)
            .header("prefer", "return=representation")
            .json(&json!({"id": 4, "body": "four"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.assert_readable("*", "insert");

    let r = Reply::of(s.get("/rest/v1/no_such_table", origin)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    r.assert_readable("*", "the worker's 404");

    let r = Reply::of(s.http.get(s.url("/rest/v1/notes")).header("origin", origin)).await;
    r.assert_error(401, "missing_api_key", "no key");
    r.assert_readable("*", "401");
    let r = Reply::of(
        s.http
            .get(s.url("/rest/v1/notes"))
            .header("origin", origin)
            .header("apikey", "garbage"),
    )
    .await;
    r.assert_error(401, "invalid_api_key", "bad key");
    r.assert_readable("*", "401 invalid");

    let r = Reply::of(
        s.http
            .get(format!("{}/t/no-such-tenant/rest/v1/notes", s.proxy.url()))
            .header("origin", origin)
            .header("apikey", &s.tenant.anon_key),
    )
    .await;
    r.assert_error(404, "tenant_not_found", "unknown tenant");
    r.assert_readable("*", "404");

    let r = Reply::of(
        s.http
            .post(s.url("/rest/v1/notes"))
            .header("origin", origin)
            .header("apikey", &s.tenant.anon_key)
            .json(&json!({"id": 5, "body": "x".repeat(4096)})),
    )
    .await;
    r.assert_error(413, "payload_too_large", "large body");
    r.assert_readable("*", "413");

    let r = Reply::of(
        s.http
            .post(s.url("/rest/v1/rpc/slow"))
            .header("origin", origin)
            .header("apikey", &s.tenant.anon_key)
            .json(&json!({})),
    )
    .await;
    r.assert_error(504, "upstream_timeout", "slow rpc");
    r.assert_readable("*", "504");

    let mut limited = None;
    for _ in 0..30 {
        let r = Reply::of(s.get("/rest/v1/notes?select=id", origin)).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a 429 within 30 requests at 1/s, burst 12");
    r.assert_error(429, "rate_limited", "over the rate");
    assert!(r.header("retry-after").is_some());
    r.assert_readable("*", "429");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.worker.take().expect("worker").stop().await;
    let r = Reply::of(s.get("/rest/v1/notes", origin)).await;
    r.assert_error(502, "upstream_unavailable", "worker stopped");
    r.assert_readable("*", "502");

    // Control down and the tenant never seen: 503, readable too.
    s.control.take().expect("control").stop().await;
    let r = Reply::of(
        s.http
            .get(format!("{}/t/never-seen/rest/v1/notes", s.proxy.url()))
            .header("origin", origin)
            .header("apikey", &s.tenant.anon_key),
    )
    .await;
    r.assert_error(503, "tenant_lookup_failed", "control down");
    r.assert_readable("*", "503");
}

/// An explicit list: a listed origin is answered by name with credentials;
/// another gets no `Access-Control-Allow-Origin` (the browser blocks it)
/// and its preflight is not run.
#[tokio::test(flavor = "multi_thread")]
async fn explicit_origins() {
    let s = Stack::start(&[(
        "MADBASE_CORS_ORIGINS",
        "https://App.example, http://localhost:3000",
    )])
    .await;
    let before = s.worker_requests().await;
    for origin in [APP, "http://localhost:3000"] {
        let r = s.preflight("/rest/v1/notes", origin, "POST").await;
        r.assert_preflight(origin, origin);
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    }
    for origin in [
        "https://evil.example",
        "https://app.example.evil",
        "http://localhost:3001",
    ] {
        let r = s.preflight("/rest/v1/notes", origin, "POST").await;
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
    assert_eq!(
        s.worker_requests().await,
        before,
        "no preflight reached the worker"
    );

    let r = Reply::of(s.get("/rest/v1/notes?select=id", APP)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.assert_readable(APP, "listed");
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = Reply::of(s.http.get(s.url("/rest/v1/notes")).header("origin", APP)).await;
    r.assert_error(401, "missing_api_key", "listed, no key");
    r.assert_readable(APP, "listed 401");
    let r = Reply::of(s.get("/rest/v1/notes?select=id", "https://evil.example")).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    r.assert_vary("unlisted");

    // A bad list is refused at start, naming the variable.
    for bad in ["*, https://a.example", "https://a.example/", "a.example"] {
        let e =
            madbase_proxy::Config::from_env(&env(&[("MADBASE_CORS_ORIGINS", bad)])).expect_err(bad);
        assert_eq!(e.var, "MADBASE_CORS_ORIGINS", "{bad}");
    }
}

/// A tenant's settings in control override `MADBASE_CORS_ORIGINS` for its
/// data API; `null` gives it the platform's list back (within the proxy's
/// tenant cache lifetime).
#[tokio::test(flavor = "multi_thread")]
async fn tenant_settings_override_the_platform_origins() {
    let s = Stack::start(&[
        ("MADBASE_CORS_ORIGINS", "https://platform.example"),
        ("MADBASE_TENANT_CACHE_SECONDS", "1"),
    ])
    .await;
    let id = s.tenant.id.clone();
    let tenant_origin = "https://tenant.example";

    let (status, body) = s
        .settings(&id, json!({"cors_origins": [" HTTPS://Tenant.example "]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": id, "cors_origins": [tenant_origin]}));
    let got: Value = s
        .http
        .get(format!("{}/v1/tenants/{id}/settings", s.control_url))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("get settings")
        .json()
        .await
        .expect("json");
    assert_eq!(got["cors_origins"], json!([tenant_origin]));

    let r = s.preflight("/rest/v1/notes", tenant_origin, "GET").await;
    r.assert_preflight(tenant_origin, "tenant's origin");
    let r = s
        .preflight("/rest/v1/notes", "https://platform.example", "GET")
        .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "the platform's origin"
    );
    let r = Reply::of(s.get("/rest/v1/notes?select=id", tenant_origin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.assert_readable(tenant_origin, "tenant's origin");
    // Another tenant keeps the platform's list.
    let r = Reply::of(
        s.http
            .request(
                http::Method::OPTIONS,
                format!("{}/t/no-such-tenant/rest/v1/x", s.proxy.url()),
            )
            .header("origin", "https://platform.example")
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://platform.example")
    );

    // `*` for this tenant.
    let (status, body) = s.settings(&id, json!({"cors_origins": ["*"]})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = s
        .preflight("/rest/v1/notes", "https://anyone.example", "GET")
        .await;
    r.assert_preflight("*", "tenant's *");

    // `null`: the platform's list again; `{}` changes nothing.
    let (status, body) = s.settings(&id, json!({"cors_origins": null})).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"id": id, "cors_origins": null}))
    );
    let (status, body) = s.settings(&id, json!({})).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"id": id, "cors_origins": null}))
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = s
        .preflight("/rest/v1/notes", "https://platform.example", "GET")
        .await;
    r.assert_preflight("https://platform.example", "platform's again");
    let r = s.preflight("/rest/v1/notes", tenant_origin, "GET").await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Refusals.
    for bad in [
        json!({"cors_origins": ["*", "https://a.example"]}),
        json!({"cors_origins": ["https://a.example/path"]}),
        json!({"cors_origins": "https://a.example"}),
        json!({"origins": []}),
    ] {
        let (status, body) = s.settings(&id, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["code"].is_string(), "{bad}: {body}");
    }
    let (status, body) = s
        .settings(&id, json!({"cors_origins": ["*", "https://a.example"]}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_cors_origins"))
    );
    let (status, body) = s
        .settings("no-such-tenant", json!({"cors_origins": ["*"]}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("tenant_not_found"))
    );
    let status = s
        .http
        .patch(format!("{}/v1/tenants/{id}/settings", s.control_url))
        .json(&json!({"cors_origins": ["*"]}))
        .send()
        .await
        .expect("unauthenticated")
        .status();
    assert_eq!(status, 401);
}

/// A function's `OPTIONS` reaches the function without a key, which
/// answers CORS itself; its other methods still need a key, and the proxy
/// adds no CORS headers of its own there.
#[tokio::test(flavor = "multi_thread")]
async fn function_preflight_reaches_the_function() {
    let s = Stack::start(&[("MADBASE_CORS_ORIGINS", "https://platform.example")]).await;
    let r = Reply::of(
        s.http
            .request(http::Method::OPTIONS, s.url("/functions/v1/hello"))
            .header("origin", APP)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, x-client-info, apikey, content-type",
            ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, "ok");
    assert_eq!(r.header("x-upstream"), Some("function"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "the function's own answer"
    );
    {
        let seen = s.functions_seen.lock().expect("lock");
        let (method, path, headers) = seen.last().expect("the function was called");
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("OPTIONS", "/functions/v1/hello")
        );
        assert_eq!(headers["x-madbase-tenant"], s.tenant.id.as_str());
        assert_eq!(headers["origin"], APP);
    }

    let r = Reply::of(
        s.http
            .post(s.url("/functions/v1/hello"))
            .header("origin", APP)
            .json(&json!({})),
    )
    .await;
    // No key check at the proxy for functions (as Supabase's gateway): the
    // functions service verifies the JWT when the function asks for it.
    assert_eq!(
        r.status, 200,
        "POST without a key reaches the function: {}",
        r.text
    );
    assert_eq!(s.functions_seen.lock().expect("lock").len(), 2);
    let r = Reply::of(
        s.http
            .post(s.url("/functions/v1/hello"))
            .header("origin", APP)
            .header("apikey", &s.tenant.anon_key)
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.functions_seen.lock().expect("lock").len(), 3);

    let r = Reply::of(
        s.http
            .request(
                http::Method::OPTIONS,
                format!("{}/t/no-such-tenant/functions/v1/hello", s.proxy.url()),
            )
            .header("origin", APP)
            .header("access-control-request-method", "POST"),
    )
    .await;
    r.assert_error(404, "tenant_not_found", "unknown tenant's function");
    assert_eq!(s.functions_seen.lock().expect("lock").len(), 3);
}
