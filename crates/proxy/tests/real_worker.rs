//! The proxy in front of the real stack, all in-process on loopback port 0:
//! a real Postgres (testkit), control, the worker and the proxy. Every
//! request goes client → proxy → worker → tenant database, and what the
//! worker saw of it is read back from Postgres: the worker stores the
//! request's headers in the `request.headers` setting of its transaction,
//! which the fixture's `seen()` function returns.
//!
//! `proxy.rs` covers the same ground against an echo upstream (and the
//! functions route); this file proves it holds on the real path.

use std::time::{Duration, Instant};

use http::HeaderMap;
use madbase_testkit::service::{Served, control_env, env, telemetry, unique_id};
use madbase_testkit::tenant::Tenant;
use serde_json::{Value, json};

const ALICE: &str = "00000000-0000-4000-8000-00000000000a";
const BOB: &str = "00000000-0000-4000-8000-00000000000b";
const DOMAIN: &str = "madbase.test";

/// How the proxy reaches the worker: over HTTP (separate services), or by
/// calling the worker's router in-process (`madbase dev`, `serve --all`).
/// The tests that run both ways assert the same answers.
#[derive(Debug, Clone, Copy)]
enum Hop {
    Http,
    InProcess,
    /// Over HTTP, in HTTP/2 cleartext (`MADBASE_UPSTREAM_HTTP2=true`).
    Http2,
}

/// Notes: anon sees the public ones, a user also their own, service_role
/// (BYPASSRLS) all four. `seen()` returns what the worker set for the
/// request; `slow()` takes three seconds.
const FIXTURE: &str = r#"
CREATE TABLE notes (id int PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL, public boolean NOT NULL DEFAULT false);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY notes_public ON notes FOR SELECT USING (public);
CREATE POLICY notes_own ON notes FOR SELECT TO authenticated USING (owner = auth.uid());
INSERT INTO notes VALUES
  (1, '00000000-0000-4000-8000-00000000000a', 'alice public', true),
  (2, '00000000-0000-4000-8000-00000000000a', 'alice private', false),
  (3, '00000000-0000-4000-8000-00000000000b', 'bob public', true),
  (4, '00000000-0000-4000-8000-00000000000b', 'bob private', false);
CREATE FUNCTION seen() RETURNS json LANGUAGE sql STABLE AS $$
  SELECT json_build_object('role', current_user, 'uid', auth.uid(),
    'headers', current_setting('request.headers', true)::json) $$;
CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep(3) $$;
"#;

/// The notes each caller may read.
const ANON_ROWS: [i64; 2] = [1, 3];
const ALICE_ROWS: [i64; 3] = [1, 2, 3];
const ALL_ROWS: [i64; 4] = [1, 2, 3, 4];
const NOTES: &str = "/rest/v1/notes?select=id&order=id";

/// Control, worker and proxy on one test database, with a tenant holding
/// [`FIXTURE`] and a second, empty tenant.
struct Stack {
    control: Option<Served>,
    worker: Option<Served>,
    proxy: Served,
    http: reqwest::Client,
    tenant: Tenant,
    other: Tenant,
}

impl Stack {
    /// The stack with extra proxy and worker configuration.
    async fn start(proxy_env: &[(&str, &str)], worker_env: &[(&str, &str)]) -> Stack {
        Stack::start_mode(proxy_env, worker_env, Hop::Http).await
    }

    /// The stack, the proxy reaching the worker as `hop` says.
    async fn start_mode(
        proxy_env: &[(&str, &str)],
        worker_env: &[(&str, &str)],
        hop: Hop,
    ) -> Stack {
        telemetry();
        let db = madbase_testkit::postgres().expect("postgres");
        let control_cfg =
            madbase_control::Config::from_env(&control_env(&db, &[])).expect("control config");
        let control =
            Served::start(madbase_control::app(&control_cfg).await.expect("control")).await;
        let control_url = control.url();

        let mut vars = vec![("MADBASE_CONTROL_URL", control_url.as_str())];
        vars.extend_from_slice(worker_env);
        let worker_cfg = madbase_worker::Config::from_env(&env(&vars)).expect("worker config");
        let worker_app = madbase_worker::app(&worker_cfg).expect("worker");
        let local = match hop {
            Hop::Http | Hop::Http2 => madbase_proxy::Local::default(),
            Hop::InProcess => madbase_proxy::Local {
                worker: Some(madbase_platform::server::api_router(&worker_app)),
                functions: None,
            },
        };
        let worker = Served::start(worker_app).await;
        let worker_url = worker.url();

        let mut vars = vec![
            ("MADBASE_CONTROL_URL", control_url.as_str()),
            ("MADBASE_WORKER_URL", worker_url.as_str()),
            ("MADBASE_DOMAIN", DOMAIN),
        ];
        vars.extend_from_slice(proxy_env);
        if let Hop::Http2 = hop {
            vars.push(("MADBASE_UPSTREAM_HTTP2", "true"));
        }
        let proxy_cfg = madbase_proxy::Config::from_env(&env(&vars)).expect("proxy config");
        let proxy =
            Served::start(madbase_proxy::app_with_local(&proxy_cfg, local).expect("proxy")).await;

        let http = reqwest::Client::new();
        let tenant = Tenant::create(&http, &control_url, "rw").await;
        tenant.sql(&http, &control_url, FIXTURE).await;
        let other = Tenant::create(&http, &control_url, "rwo").await;
        Stack {
            control: Some(control),
            worker: Some(worker),
            proxy,
            http,
            tenant,
            other,
        }
    }

    /// The stack with default settings.
    async fn with_defaults() -> Stack {
        Stack::start(&[], &[]).await
    }

    /// `path` under the tenant's path prefix on the proxy.
    fn url(&self, path: &str) -> String {
        format!("{}/t/{}{path}", self.proxy.url(), self.tenant.id)
    }

    /// A GET through the path prefix with `apikey`.
    fn get(&self, path: &str, apikey: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).header("apikey", apikey)
    }

    /// A GET through the path prefix with these headers only.
    fn get_with(&self, path: &str, headers: &Headers<'_>) -> reqwest::RequestBuilder {
        headers
            .iter()
            .fold(self.http.get(self.url(path)), |rb, (k, v)| rb.header(*k, v))
    }

    /// A GET routed by `Host: <tenant>.<domain>` with `apikey`.
    fn get_by_host(&self, host: &str, path: &str, apikey: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.proxy.url()))
            .header("host", host)
            .header("apikey", apikey)
    }

    /// The anon key plus the user JWT of `sub` as bearer.
    fn as_user(&self, path: &str, sub: &str) -> reqwest::RequestBuilder {
        self.get(path, &self.tenant.anon_key)
            .bearer_auth(self.tenant.user_token(sub))
    }

    async fn stop_worker(&mut self) {
        self.worker.take().expect("worker running").stop().await;
    }

    async fn stop_control(&mut self) {
        self.control.take().expect("control running").stop().await;
    }

    /// The sum of the worker's `http_requests_total` for its API routes:
    /// how many requests reached it.
    async fn worker_requests(&self) -> u64 {
        let worker = self.worker.as_ref().expect("worker running");
        let text = worker.metrics().await;
        text.lines()
            .filter(|l| l.starts_with("http_requests_total{") && l.contains("route=\"/rest/v1/"))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("a counter value")
            })
            .sum()
    }

    /// The proxy's `/ready`: status and body.
    async fn ready(&self) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/ready", self.proxy.admin_url()))
            .send()
            .await
            .expect("ready");
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }
}

/// Request headers: name, value.
type Headers<'a> = Vec<(&'a str, String)>;

/// A response: status, headers, JSON body (Null when not JSON).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    async fn of(rb: reqwest::RequestBuilder) -> Reply {
        let resp = rb.send().await.expect("request");
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.json().await.unwrap_or(Value::Null),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().expect("ascii header"))
    }

    /// Asserts a 200 whose rows have exactly these ids.
    #[track_caller]
    fn assert_rows(&self, ids: &[i64], case: &str) {
        assert_eq!(self.status, 200, "{case}: {}", self.body);
        let got: Vec<i64> = self
            .body
            .as_array()
            .unwrap_or_else(|| panic!("{case}: not rows: {}", self.body))
            .iter()
            .map(|r| r["id"].as_i64().expect("id"))
            .collect();
        assert_eq!(got, ids, "{case}");
    }

    /// Asserts a platform error: status, code, a message, and the request
    /// id in the body equal to the response's `x-request-id`.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, case: &str) {
        assert_eq!(self.status, status, "{case}: {}", self.body);
        assert_eq!(self.body["code"], code, "{case}: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {}",
            self.body
        );
        let id = self.body["request_id"].as_str().expect("request_id");
        assert!(!id.is_empty(), "{case}");
        assert_eq!(self.header("x-request-id"), id, "{case}");
    }
}

/// Rows from the real worker with row-level security applied per key, the
/// same through the path prefix and through `Host`; unknown tenants and
/// paths are 404 JSON.
#[tokio::test(flavor = "multi_thread")]
async fn rows_by_key_and_routing() {
    rows_by_key_and_routing_over(Hop::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_by_key_and_routing_over_http2() {
    rows_by_key_and_routing_over(Hop::Http2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_by_key_and_routing_in_process() {
    rows_by_key_and_routing_over(Hop::InProcess).await;
}

async fn rows_by_key_and_routing_over(hop: Hop) {
    let s = Stack::start_mode(&[], &[], hop).await;
    let (anon, service) = (&s.tenant.anon_key, &s.tenant.service_key);
    Reply::of(s.get(NOTES, anon))
        .await
        .assert_rows(&ANON_ROWS, "anon by path");
    Reply::of(s.get(NOTES, service))
        .await
        .assert_rows(&ALL_ROWS, "service_role by path");
    Reply::of(s.as_user(NOTES, ALICE))
        .await
        .assert_rows(&ALICE_ROWS, "alice by path");

    for host in [
        format!("{}.{DOMAIN}", s.tenant.id),
        format!("{}.{DOMAIN}:8000", s.tenant.id),
        format!("{}.{}", s.tenant.id, DOMAIN.to_uppercase()),
    ] {
        Reply::of(s.get_by_host(&host, NOTES, anon))
            .await
            .assert_rows(&ANON_ROWS, &format!("anon by host {host}"));
        Reply::of(s.get_by_host(&host, NOTES, service))
            .await
            .assert_rows(&ALL_ROWS, &format!("service_role by host {host}"));
    }
    // A filter in the query string reaches the worker.
    Reply::of(s.get("/rest/v1/notes?select=id,body&id=eq.3", anon))
        .await
        .assert_rows(&[3], "filtered");

    let proxy = s.proxy.url();
    let not_found = [
        (
            "unknown tenant by path",
            s.http.get(format!("{proxy}/t/no-such-tenant{NOTES}")),
            "tenant_not_found",
        ),
        (
            "invalid tenant id",
            s.http.get(format!("{proxy}/t/Not_Valid{NOTES}")),
            "tenant_not_found",
        ),
        (
            "unknown tenant by host",
            s.http
                .get(format!("{proxy}{NOTES}"))
                .header("host", format!("no-such-tenant.{DOMAIN}")),
            "tenant_not_found",
        ),
        (
            "host outside the domain",
            s.http
                .get(format!("{proxy}{NOTES}"))
                .header("host", "example.com"),
            "tenant_not_found",
        ),
        (
            "unknown path",
            s.http.get(s.url("/graphql/v1")),
            "not_found",
        ),
        (
            "unknown path at the root",
            s.http.get(format!("{proxy}/nothing/here")),
            "not_found",
        ),
    ];
    for (case, rb, code) in not_found {
        Reply::of(rb.header("apikey", anon))
            .await
            .assert_error(404, code, case);
    }
    // The worker's own 404 (unknown table) passes through.
    let r = Reply::of(s.get("/rest/v1/no_such_table", anon)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.body["code"], "PGRST205", "{}", r.body);
}

/// Every bad key is refused by the proxy (401 JSON, never reaching the
/// worker); good keys reach the worker, which applies their role.
#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_checked_on_the_real_path() {
    api_keys_are_checked_on_the_real_path_over(Hop::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_checked_on_the_real_path_in_process() {
    api_keys_are_checked_on_the_real_path_over(Hop::InProcess).await;
}

async fn api_keys_are_checked_on_the_real_path_over(hop: Hop) {
    let s = Stack::start_mode(&[], &[], hop).await;
    let (anon, service) = (s.tenant.anon_key.as_str(), s.tenant.service_key.as_str());
    let alice = s.tenant.user_token(ALICE);
    let bearer = |t: &str| format!("Bearer {t}");

    // Each bad key as apikey, as bearer, and as bearer next to a good apikey.
    let mut refused: Vec<(String, Headers)> = Vec::new();
    for (case, key) in s.tenant.bad_keys() {
        refused.extend([
            (format!("{case} apikey"), vec![("apikey", key.clone())]),
            (
                format!("{case} bearer"),
                vec![("authorization", bearer(&key))],
            ),
            (
                format!("good apikey, {case} bearer"),
                vec![("apikey", anon.into()), ("authorization", bearer(&key))],
            ),
        ]);
    }
    refused.extend([
        (
            "another tenant's key".into(),
            vec![("apikey", s.other.anon_key.clone())],
        ),
        (
            "another tenant's service key as bearer".into(),
            vec![("authorization", bearer(&s.other.service_key))],
        ),
        (
            "good user JWT, bad apikey".into(),
            vec![
                ("apikey", "garbage".into()),
                ("authorization", bearer(&alice)),
            ],
        ),
    ]);
    let reached_before = s.worker_requests().await;
    Reply::of(s.get_with(NOTES, &vec![]))
        .await
        .assert_error(401, "missing_api_key", "no key");
    for (case, headers) in &refused {
        Reply::of(s.get_with(NOTES, headers))
            .await
            .assert_error(401, "invalid_api_key", case);
    }
    assert_eq!(
        s.worker_requests().await,
        reached_before,
        "a refused request reached the worker"
    );

    let accepted: Vec<(&str, Headers, &[i64])> = vec![
        ("anon apikey", vec![("apikey", anon.into())], &ANON_ROWS),
        (
            "service_role apikey",
            vec![("apikey", service.into())],
            &ALL_ROWS,
        ),
        (
            "anon as bearer",
            vec![("authorization", bearer(anon))],
            &ANON_ROWS,
        ),
        (
            "service_role as bearer",
            vec![("authorization", bearer(service))],
            &ALL_ROWS,
        ),
        (
            "anon apikey + alice's JWT",
            vec![("apikey", anon.into()), ("authorization", bearer(&alice))],
            &ALICE_ROWS,
        ),
        (
            "anon apikey + bob's JWT",
            vec![
                ("apikey", anon.into()),
                ("authorization", bearer(&s.tenant.user_token(BOB))),
            ],
            &[1, 3, 4],
        ),
    ];
    for (case, headers, rows) in accepted {
        Reply::of(s.get_with(NOTES, &headers))
            .await
            .assert_rows(rows, case);
    }
    assert!(s.worker_requests().await > reached_before);

    // The worker runs the user's request as `authenticated` with their id.
    let r = Reply::of(s.as_user("/rest/v1/rpc/seen", ALICE)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["role"], "authenticated");
    assert_eq!(r.body["uid"], ALICE);
    let r = Reply::of(s.get("/rest/v1/rpc/seen", anon)).await;
    assert_eq!(
        (r.body["role"].clone(), r.body["uid"].clone()),
        (json!("anon"), Value::Null)
    );
}

/// What the worker saw: client-sent internal and hop-by-hop headers gone,
/// the tenant set by the proxy, forwarding headers added, and the client's
/// request id and trace id carried through.
#[tokio::test(flavor = "multi_thread")]
async fn worker_sees_clean_headers_and_the_same_ids() {
    worker_sees_clean_headers_and_the_same_ids_over(Hop::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_sees_clean_headers_and_the_same_ids_over_http2() {
    worker_sees_clean_headers_and_the_same_ids_over(Hop::Http2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_sees_clean_headers_and_the_same_ids_in_process() {
    worker_sees_clean_headers_and_the_same_ids_over(Hop::InProcess).await;
}

async fn worker_sees_clean_headers_and_the_same_ids_over(hop: Hop) {
    let s = Stack::start_mode(&[], &[], hop).await;
    let request_id = unique_id("rw-req");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = Reply::of(
        s.get("/rest/v1/rpc/seen", &s.tenant.anon_key)
            .header("x-madbase-tenant", &s.other.id)
            .header("x-madbase-internal", "1")
            .header("x-madbase-role", "service_role")
            .header("connection", "keep-alive, x-drop-me")
            .header("x-drop-me", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("upgrade", "h2c")
            .header("x-keep-me", "kept")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-request-id", &request_id)
            .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
            .header("tracestate", "congo=t61rcWkgMzE"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.body["headers"].as_object().expect("request.headers");
    let h = |name: &str| seen.get(name).and_then(Value::as_str);

    assert_eq!(h("x-madbase-tenant"), Some(s.tenant.id.as_str()));
    let internal: Vec<&String> = seen
        .keys()
        .filter(|k| k.starts_with("x-madbase-"))
        .collect();
    assert_eq!(internal, ["x-madbase-tenant"], "{seen:?}");
    for hop in [
        "connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "x-drop-me",
    ] {
        assert!(h(hop).is_none(), "{hop} reached the worker: {seen:?}");
    }
    assert_eq!(h("x-keep-me"), Some("kept"));
    assert_eq!(h("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(h("x-forwarded-proto"), Some("http"));
    assert_eq!(
        h("x-forwarded-host"),
        Some(s.proxy.api.to_string().as_str())
    );
    assert_eq!(
        h("host"),
        Some(s.worker.as_ref().expect("worker").api.to_string().as_str()),
        "the worker is addressed as itself"
    );
    assert_eq!(h("apikey"), Some(s.tenant.anon_key.as_str()));

    assert_eq!(h("x-request-id"), Some(request_id.as_str()));
    assert_eq!(r.header("x-request-id"), request_id);
    let tp = h("traceparent").expect("traceparent reached the worker");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], trace_id, "same trace: {tp}");
    assert_ne!(
        parts[2], client_span,
        "the proxy's span is the parent: {tp}"
    );

    // Without a client request id, the proxy's own reaches the worker and
    // comes back; by host, the original Host is the forwarded one.
    let host = format!("{}.{DOMAIN}:8443", s.tenant.id);
    let r = Reply::of(s.get_by_host(&host, "/rest/v1/rpc/seen", &s.tenant.anon_key)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.body["headers"];
    let generated = r.header("x-request-id");
    assert!(!generated.is_empty() && generated != request_id);
    assert_eq!(seen["x-request-id"], generated);
    assert_eq!(seen["x-forwarded-host"], host.as_str());
    assert_eq!(seen["x-madbase-tenant"], s.tenant.id.as_str());
    let tp = seen["traceparent"].as_str().expect("traceparent");
    assert!(!tp.contains(trace_id), "a new trace per request: {tp}");
}

/// With the worker gone, requests get 502 JSON with the request id.
#[tokio::test(flavor = "multi_thread")]
async fn stopped_worker_gives_502() {
    let mut s = Stack::with_defaults().await;
    let anon = s.tenant.anon_key.clone();
    // A first request leaves a pooled connection to the worker behind.
    Reply::of(s.get(NOTES, &anon))
        .await
        .assert_rows(&ANON_ROWS, "before");
    s.stop_worker().await;
    for attempt in 0..2 {
        let r = Reply::of(s.get(NOTES, &anon)).await;
        r.assert_error(502, "upstream_unavailable", &format!("attempt {attempt}"));
        assert!(
            r.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("worker")),
            "{}",
            r.body
        );
    }
}

/// The worker runs `pg_sleep(3)` under a 10 s statement timeout; the proxy
/// gives up at its 1 s route timeout with 504 and keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn slow_worker_gives_504() {
    slow_worker_gives_504_over(Hop::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_worker_gives_504_over_http2() {
    slow_worker_gives_504_over(Hop::Http2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_worker_gives_504_in_process() {
    slow_worker_gives_504_over(Hop::InProcess).await;
}

async fn slow_worker_gives_504_over(hop: Hop) {
    let s = Stack::start_mode(
        &[("MADBASE_REST_TIMEOUT_SECONDS", "1")],
        &[("MADBASE_WORKER_STATEMENT_TIMEOUT_MS", "10000")],
        hop,
    )
    .await;
    let anon = &s.tenant.anon_key;
    let start = Instant::now();
    let r = Reply::of(
        s.http
            .post(s.url("/rest/v1/rpc/slow"))
            .header("apikey", anon)
            .json(&json!({})),
    )
    .await;
    let took = start.elapsed();
    r.assert_error(504, "upstream_timeout", "slow rpc");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "answered after {took:?}, not at the 1 s route timeout"
    );
    Reply::of(s.get(NOTES, anon))
        .await
        .assert_rows(&ANON_ROWS, "after the timeout");
}

/// Bodies over `MADBASE_MAX_BODY_BYTES` are refused with 413, declared or
/// streamed, and never inserted; a body under it reaches the worker.
#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_give_413() {
    large_bodies_give_413_over(Hop::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_give_413_over_http2() {
    large_bodies_give_413_over(Hop::Http2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_give_413_in_process() {
    large_bodies_give_413_over(Hop::InProcess).await;
}

async fn large_bodies_give_413_over(hop: Hop) {
    let s = Stack::start_mode(&[("MADBASE_MAX_BODY_BYTES", "1024")], &[], hop).await;
    let service = &s.tenant.service_key;
    let note = |id: i64, len: usize| {
        json!({"id": id, "owner": ALICE, "body": "x".repeat(len), "public": true}).to_string()
    };
    let post = |body: reqwest::Body| {
        s.http
            .post(s.url("/rest/v1/notes"))
            .header("apikey", service)
            .header("content-type", "application/json")
            .body(body)
    };

    let big = note(6, 4096);
    Reply::of(post(big.clone().into())).await.assert_error(
        413,
        "payload_too_large",
        "declared length",
    );
    // Chunked, no Content-Length: the limit trips while streaming.
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = big
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let streamed = reqwest::Body::wrap(http_body_util::StreamBody::new(tokio_stream::iter(chunks)));
    Reply::of(post(streamed))
        .await
        .assert_error(413, "payload_too_large", "streamed");
    Reply::of(s.get("/rest/v1/notes?select=id&id=eq.6", service))
        .await
        .assert_rows(&[], "nothing oversized was inserted");

    let small = note(5, 900);
    assert!(small.len() < 1024);
    let r = Reply::of(post(small.into())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = Reply::of(s.get("/rest/v1/notes?select=id,body&id=eq.5", service)).await;
    r.assert_rows(&[5], "inserted");
    assert_eq!(r.body[0]["body"].as_str().map(str::len), Some(900));
}

/// A tiny per-tenant rate: the burst is served by the worker, then 429
/// with `Retry-After`.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_gives_429() {
    let s = Stack::start(
        &[
            ("MADBASE_RATE_LIMIT_RPS", "1"),
            ("MADBASE_RATE_LIMIT_BURST", "2"),
        ],
        &[],
    )
    .await;
    let anon = &s.tenant.anon_key;
    for i in 0..2 {
        Reply::of(s.get(NOTES, anon))
            .await
            .assert_rows(&ANON_ROWS, &format!("burst {i}"));
    }
    let reached = s.worker_requests().await;
    let r = Reply::of(s.get(NOTES, anon)).await;
    r.assert_error(429, "rate_limited", "over the rate");
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(s.worker_requests().await, reached, "the worker was spared");
    // The limit is per tenant: another tenant's requests still go through.
    let r = Reply::of(
        s.http
            .get(format!("{}/t/{}{NOTES}", s.proxy.url(), s.other.id))
            .header("apikey", &s.other.anon_key),
    )
    .await;
    assert_eq!(r.body["code"], "PGRST205", "reached the worker: {}", r.body);
}

/// Control stopped after the tenant was cached: data keeps flowing (proxy
/// and worker both serve their cached tenant), `/ready` names control.
#[tokio::test(flavor = "multi_thread")]
async fn serves_from_cache_with_control_stopped() {
    let mut s = Stack::start(&[("MADBASE_TENANT_CACHE_SECONDS", "0.2")], &[]).await;
    let (anon, service) = (s.tenant.anon_key.clone(), s.tenant.service_key.clone());
    Reply::of(s.get(NOTES, &anon))
        .await
        .assert_rows(&ANON_ROWS, "warm");
    assert_eq!(s.ready().await.0, 200);

    s.stop_control().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Past the proxy's TTL, control gone: the stale entry serves.
    Reply::of(s.get(NOTES, &anon))
        .await
        .assert_rows(&ANON_ROWS, "anon, control down");
    Reply::of(s.get(NOTES, &service))
        .await
        .assert_rows(&ALL_ROWS, "service_role, control down");
    // A tenant never seen cannot be looked up.
    Reply::of(
        s.http
            .get(format!("{}/t/{}{NOTES}", s.proxy.url(), s.other.id))
            .header("apikey", &s.other.anon_key),
    )
    .await
    .assert_error(503, "tenant_lookup_failed", "uncached tenant");
    let (status, body) = s.ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failed"], json!(["control"]));
}

/// Key rotation and tenant deletion take effect at once, under load: the
/// proxy's and the worker's caches (TTL 30 s) are dropped by control's
/// change feed, so the old key is refused — through the proxy and on the
/// worker itself — well within a second, while another tenant's requests
/// keep succeeding.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_keys_are_refused_within_a_second_under_load() {
    let mut s = Stack::with_defaults().await;
    let control_url = s.control.as_ref().expect("control").url();
    let worker_url = s.worker.as_ref().expect("worker").url();
    let old_anon = s.tenant.anon_key.clone();
    let id = s.tenant.id.clone();
    let on_worker = |key: &str| {
        s.http
            .get(format!("{worker_url}{NOTES}"))
            .header("x-madbase-tenant", &id)
            .header("apikey", key)
    };
    // Both caches hold the tenant and the feeds are connected.
    Reply::of(s.get(NOTES, &old_anon))
        .await
        .assert_rows(&ANON_ROWS, "warm");
    Reply::of(on_worker(&old_anon))
        .await
        .assert_rows(&ANON_ROWS, "warm, on the worker");
    for admin in [
        s.proxy.admin_url(),
        s.worker.as_ref().expect("worker").admin_url(),
    ] {
        wait_for_metric(&s.http, &admin, "madbase_tenant_change_feed_up 1").await;
    }

    // Load: the other tenant's requests, all the time.
    s.other.sql(&s.http, &control_url, FIXTURE).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, stop) = (s.http.clone(), stop.clone());
        let url = format!("{}/t/{}{NOTES}", s.proxy.url(), s.other.id);
        let key = s.other.anon_key.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(&url).header("apikey", &key).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }

    // Rotation: the old key stops working everywhere.
    let start = Instant::now();
    let new_anon = madbase_testkit::tenant::rotate_keys(&s.http, &control_url, &id).await;
    let proxy_refused = until_status(|| s.get(NOTES, &old_anon), 401).await;
    let worker_refused = until_status(|| on_worker(&old_anon), 401).await;
    let rotation = start.elapsed();
    eprintln!(
        "rotation: old key refused by the proxy after {:?}, by the worker after {:?} \
         (rotate call included)",
        proxy_refused, worker_refused
    );
    assert!(
        rotation < Duration::from_secs(1),
        "rotation took {rotation:?}"
    );
    Reply::of(s.get(NOTES, &new_anon))
        .await
        .assert_rows(&ANON_ROWS, "new key");

    // Deletion: the tenant disappears everywhere.
    let start = Instant::now();
    let resp = s
        .http
        .delete(format!("{control_url}/v1/tenants/{id}"))
        .bearer_auth(madbase_testkit::tenant::platform_token("admin"))
        .send()
        .await
        .expect("delete");
    assert!(resp.status().is_success(), "delete: {}", resp.status());
    let delete_call = start.elapsed();
    let start = Instant::now();
    let proxy_gone = until_status(|| s.get(NOTES, &new_anon), 404).await;
    let worker_gone = until_status(|| on_worker(&new_anon), 404).await;
    let deletion = start.elapsed();
    eprintln!(
        "deletion: the delete call took {delete_call:?} (it drops the database); then the \
         tenant was unknown to the proxy after {proxy_gone:?}, to the worker after {worker_gone:?}"
    );
    assert!(
        deletion < Duration::from_secs(1),
        "deletion took {deletion:?}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for task in load {
        let (o, f) = task.await.expect("load task");
        ok += o;
        failed += f;
    }
    eprintln!("other tenant during both: {ok} ok, {failed} failed");
    assert!(ok > 0, "the load ran");
    assert_eq!(failed, 0, "the other tenant was affected");
    s.stop_control().await;
}

/// Polls (every 10 ms, for at most 5 s) until `request` answers `status`;
/// returns how long that took.
async fn until_status(request: impl Fn() -> reqwest::RequestBuilder, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        let got = request().send().await.expect("request").status().as_u16();
        if got == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still {got}, not {status}, after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the admin `/metrics` at `admin` until it has the line `want`.
async fn wait_for_metric(http: &reqwest::Client, admin: &str, want: &str) {
    let start = Instant::now();
    loop {
        let text = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        if text.lines().any(|l| l == want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{admin}/metrics never had {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
