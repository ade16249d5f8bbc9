//! The proxy on real sockets, with control (and its Postgres) in-process and
//! an echo server standing in for worker and functions, so every header the
//! upstream sees can be asserted, and upstream statuses and delays can be
//! forced. The same checks through the real worker (RLS-filtered rows, the
//! headers the worker itself saw, 502/504/413/429, control down) are in
//! `real_worker.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::any;
use serde_json::{Value, json};

use madbase_testkit::service::{Served, control_env, env, telemetry};
use madbase_testkit::tenant::Tenant;

/// An upstream that answers with what it received: method, HTTP version,
/// path, query, headers, body length, and the address of the connection it came on
/// (`peer`). `x-echo-status` sets the status, `x-echo-delay-ms` delays the
/// answer, `x-echo-close` closes the connection after it.
async fn echo() -> SocketAddr {
    let app = axum::Router::new().fallback(any(
        |ConnectInfo(peer): ConnectInfo<SocketAddr>, method: http::Method, version: http::Version, uri: http::Uri, headers: http::HeaderMap, body: Bytes| async move {
            if let Some(ms) = headers.get("x-echo-delay-ms").and_then(|v| v.to_str().ok()?.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let status = headers
                .get("x-echo-status")
                .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                .and_then(|s| http::StatusCode::from_u16(s).ok())
                .unwrap_or(http::StatusCode::OK);
            let h: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let connection = if headers.contains_key("x-echo-close") { "close" } else { "keep-alive" };
            (
                status,
                [("x-upstream", "echo"), ("connection", connection)],
                Json(json!({"method": method.as_str(), "version": format!("{version:?}"), "path": uri.path(), "query": uri.query(), "headers": h, "body_len": body.len(), "peer": peer.to_string()})),
            )
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

struct Stack {
    control: Option<Served>,
    proxy: Served,
    http: reqwest::Client,
    tenant: Tenant,
    other: Tenant,
}

async fn stack(extra: &[(&str, &str)]) -> Stack {
    telemetry();
    let db = madbase_testkit::postgres().expect("postgres");
    let control_cfg =
        madbase_control::Config::from_env(&control_env(&db, &[])).expect("control config");
    let control = Served::start(madbase_control::app(&control_cfg).await.expect("control")).await;
    let (control_url, upstream) = (control.url(), format!("http://{}", echo().await));
    let mut vars = vec![
        ("MADBASE_CONTROL_URL", control_url.as_str()),
        ("MADBASE_WORKER_URL", upstream.as_str()),
        ("MADBASE_FUNCTIONS_URL", upstream.as_str()),
        ("MADBASE_DOMAIN", "madbase.test"),
    ];
    vars.extend_from_slice(extra);
    let proxy_cfg = madbase_proxy::Config::from_env(&env(&vars)).expect("proxy config");
    let proxy = Served::start(madbase_proxy::app(&proxy_cfg).expect("proxy")).await;

    let http = reqwest::Client::new();
    let tenant = Tenant::create(&http, &control_url, "edge").await;
    let other = Tenant::create(&http, &control_url, "other").await;
    Stack {
        control: Some(control),
        proxy,
        http,
        tenant,
        other,
    }
}

impl Stack {
    fn url(&self, path: &str) -> String {
        format!("http://{}/t/{}{path}", self.proxy.api, self.tenant.id)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Value) {
        let mut req = self.http.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_checked() {
    let s = stack(&[]).await;
    let user = s.tenant.user_token("00000000-0000-4000-8000-000000000001");
    let bad = s.tenant.bad_keys();
    let expired = bad
        .iter()
        .find(|(case, _)| *case == "expired")
        .map(|(_, key)| key.clone())
        .expect("an expired key");
    let bearer = |t: &str| format!("Bearer {t}");
    /// (case, headers, expected error code)
    type Refusal<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let mut refused: Vec<Refusal> = vec![("missing", vec![], "missing_api_key")];
    refused.extend(
        bad.iter()
            .map(|(case, key)| (*case, vec![("apikey", key.clone())], "invalid_api_key")),
    );
    refused.extend([
        (
            "another tenant's key",
            vec![("apikey", s.other.anon_key.clone())],
            "invalid_api_key",
        ),
        (
            "bad bearer",
            vec![("authorization", bearer("garbage"))],
            "invalid_api_key",
        ),
        (
            "valid user JWT but bad apikey",
            vec![
                ("apikey", "garbage".into()),
                ("authorization", bearer(&user)),
            ],
            "invalid_api_key",
        ),
        (
            "valid apikey but expired user JWT",
            vec![
                ("apikey", s.tenant.anon_key.clone()),
                ("authorization", bearer(&expired)),
            ],
            "invalid_api_key",
        ),
    ]);
    for (case, headers, code) in refused {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, resp_headers, body) = s.get("/rest/v1/items", &h).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["code"], code, "{case}");
        assert!(body["request_id"].is_string(), "{case}");
        assert_eq!(
            resp_headers["x-request-id"].to_str().expect("ascii"),
            body["request_id"].as_str().expect("id")
        );
    }
    let accepted: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("anon apikey", vec![("apikey", s.tenant.anon_key.clone())]),
        (
            "service_role apikey",
            vec![("apikey", s.tenant.service_key.clone())],
        ),
        (
            "anon as bearer",
            vec![("authorization", bearer(&s.tenant.anon_key))],
        ),
        (
            "apikey plus user JWT",
            vec![
                ("apikey", s.tenant.anon_key.clone()),
                ("authorization", bearer(&user)),
            ],
        ),
    ];
    for (case, headers) in accepted {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = s.get("/rest/v1/items", &h).await;
        assert_eq!(status, 200, "{case}: {body}");
        assert_eq!(body["path"], "/rest/v1/items", "{case}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_by_path_and_host_and_header_hygiene() {
    let s = stack(&[]).await;
    let key = s.tenant.anon_key.as_str();
    // Path prefix: prefix stripped, query kept, tenant header set by the proxy.
    let (status, _, body) = s
        .get(
            "/rest/v1/items?select=id,name&id=eq.1",
            &[
                ("apikey", key),
                ("x-madbase-tenant", "evil"),
                ("x-madbase-internal", "1"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("x-keep-me", "1"),
                ("x-request-id", "route-req-1"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/rest/v1/items");
    assert_eq!(body["query"], "select=id,name&id=eq.1");
    let h = &body["headers"];
    assert_eq!(h["x-madbase-tenant"], s.tenant.id.as_str());
    assert!(h.get("x-madbase-internal").is_none(), "{h}");
    assert!(
        h.get("x-drop-me").is_none(),
        "connection-listed headers are hop-by-hop: {h}"
    );
    assert_eq!(h["x-keep-me"], "1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], s.proxy.api.to_string());
    assert_eq!(h["x-request-id"], "route-req-1");
    let tp = h["traceparent"].as_str().expect("traceparent");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "the proxy's own span is the parent: {tp}"
    );

    // Functions route.
    let (status, _, body) = s.get("/functions/v1/hello?x=1", &[("apikey", key)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/functions/v1/hello");

    // Host routing: <tenant>.<domain>.
    let resp = s
        .http
        .post(format!("http://{}/rest/v1/items", s.proxy.api))
        .header("host", format!("{}.madbase.test:8000", s.tenant.id))
        .header("apikey", key)
        .body("{\"a\":1}")
        .send()
        .await
        .expect("host routed");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["headers"]["x-madbase-tenant"], s.tenant.id.as_str());
    assert_eq!(body["body_len"], 7);

    // Anything else is 404 JSON; unknown tenants too.
    for (url, code) in [
        (s.url("/other/v1/x"), "not_found"),
        (
            format!("http://{}/t/no-such-tenant/rest/v1/items", s.proxy.api),
            "tenant_not_found",
        ),
        (
            format!("http://{}/t/BAD_ID/rest/v1/items", s.proxy.api),
            "tenant_not_found",
        ),
        (
            format!("http://{}/rest/v1/items", s.proxy.api),
            "tenant_not_found",
        ),
        (format!("http://{}/metrics", s.proxy.api), "not_found"),
    ] {
        let resp = s
            .http
            .get(&url)
            .header("apikey", key)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 404, "{url}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["code"], code, "{url}");
    }

    // Upstream statuses and headers pass through untouched.
    let (status, headers, body) = s
        .get(
            "/rest/v1/teapot",
            &[("apikey", key), ("x-echo-status", "418")],
        )
        .await;
    assert_eq!(status, 418);
    assert_eq!(headers["x-upstream"], "echo");
    assert_eq!(body["path"], "/rest/v1/teapot");
    let (status, _, _) = s
        .get(
            "/rest/v1/down",
            &[("apikey", key), ("x-echo-status", "503")],
        )
        .await;
    assert_eq!(status, 503);

    let text = s.proxy.metrics().await;
    assert!(
        text.contains(&format!(
            r#"madbase_proxy_requests_total{{tenant="{}",upstream="worker",status="200"}}"#,
            s.tenant.id
        )),
        "{text}"
    );
    // A tenant control does not know is not a label (bounded cardinality).
    assert!(!text.contains(r#"tenant="no-such-tenant""#), "{text}");
    assert!(
        text.contains(
            r#"madbase_proxy_requests_total{tenant="unknown",upstream="worker",status="404"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"madbase_proxy_upstream_request_duration_seconds_bucket{upstream="worker",status="418""#), "{text}");
    assert!(
        text.contains(r#"route="/t/{tenant}/rest/v1/{*rest}""#),
        "{text}"
    );
}

/// The X-Forwarded-* headers the upstream sees when the client claims https,
/// another host and a prior hop.
async fn spoofed_forwarded(s: &Stack) -> Value {
    let headers = [
        ("apikey", s.tenant.anon_key.as_str()),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    let (status, _, body) = s.get("/rest/v1/items", &headers).await;
    assert_eq!(status, 200, "{body}");
    body["headers"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_kept_only_from_trusted_proxies() {
    // The test client (127.0.0.1) is not trusted by default: what it claims
    // about the scheme and host is replaced; its X-Forwarded-For chain is
    // kept as information, with the real peer appended.
    let s = stack(&[]).await;
    let h = spoofed_forwarded(&s).await;
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], s.proxy.api.to_string());
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    // Behind a trusted TLS terminator they are passed on.
    let s = stack(&[("MADBASE_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).await;
    let h = spoofed_forwarded(&s).await;
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "evil.example");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    // A bad value names the variable.
    let err =
        madbase_proxy::Config::from_env(&env(&[("MADBASE_TRUSTED_PROXIES", "10.0.0.0/8, nope")]))
            .expect_err("bad trusted proxies");
    assert_eq!(err.var, "MADBASE_TRUSTED_PROXIES");
    assert!(err.problem.contains("\"nope\""), "{}", err.problem);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_timeouts_and_limits() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let s = stack(&[
        ("MADBASE_FUNCTIONS_URL", &format!("http://{dead}")),
        ("MADBASE_REST_TIMEOUT_SECONDS", "0.5"),
        ("MADBASE_MAX_BODY_BYTES", "1024"),
    ])
    .await;
    let key = s.tenant.anon_key.as_str();
    // Unreachable upstream → 502 (the port was closed again).
    let (status, headers, body) = s.get("/functions/v1/x", &[("apikey", key)]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "upstream_unavailable");
    assert_eq!(
        headers["x-request-id"].to_str().expect("ascii"),
        body["request_id"].as_str().expect("id")
    );
    // Slow upstream → 504.
    let (status, _, body) = s
        .get(
            "/rest/v1/slow",
            &[("apikey", key), ("x-echo-delay-ms", "2000")],
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "upstream_timeout");
    // Bodies over the limit → 413, declared or streamed.
    let resp = s
        .http
        .post(s.url("/rest/v1/items"))
        .header("apikey", key)
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "payload_too_large");
    // Chunked (no Content-Length): the limit trips while streaming.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..8)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 512]))))
        .collect();
    let streamed = reqwest::Body::wrap(http_body_util::StreamBody::new(tokio_stream::iter(chunks)));
    let resp = s
        .http
        .post(s.url("/rest/v1/items"))
        .header("apikey", key)
        .body(streamed)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    // A body under the limit streams through.
    let resp = s
        .http
        .post(s.url("/rest/v1/items"))
        .header("apikey", key)
        .body(vec![b'z'; 1000])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["body_len"], 1000);
    // Oversized headers → 431 JSON with the request id, the upstream never asked.
    let big_head = |bytes: usize| {
        s.http
            .get(s.url("/rest/v1/items"))
            .header("apikey", key)
            .header("x-request-id", "big-head-1")
            .header("x-big", "a".repeat(bytes))
            .send()
    };
    let resp = big_head(64 * 1024).await.expect("request");
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["x-request-id"], "big-head-1");
    let body: Value = resp.json().await.expect("431 json");
    assert_eq!(body["code"], "request_header_too_large", "{body}");
    assert_eq!(body["request_id"], "big-head-1", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("32768")),
        "{body}"
    );
    // Just under the limit still goes through.
    let resp = big_head(16 * 1024).await.expect("request");
    assert_eq!(resp.status(), 200);
    // Beyond hyper's own buffer limit the answer is still a 431, not a hang.
    let resp = big_head(512 * 1024).await.expect("request");
    assert_eq!(resp.status(), 431);
    let text = s.proxy.metrics().await;
    assert!(
        text.contains(
            r#"madbase_proxy_upstream_errors_total{upstream="functions",kind="connect"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"madbase_proxy_upstream_errors_total{upstream="worker",kind="timeout"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_per_tenant() {
    let s = stack(&[
        ("MADBASE_RATE_LIMIT_RPS", "1"),
        ("MADBASE_RATE_LIMIT_BURST", "2"),
    ])
    .await;
    let key = s.tenant.anon_key.as_str();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (status, headers, body) = s.get("/rest/v1/items", &[("apikey", key)]).await;
        if status == 429 {
            assert_eq!(body["code"], "rate_limited");
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").to_owned());
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..2], [200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&secs));
    let text = s.proxy.metrics().await;
    assert!(
        text.contains(&format!(
            r#"madbase_proxy_rate_limited_total{{tenant="{}"}}"#,
            s.tenant.id
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_from_cache_when_control_is_down() {
    let mut s = stack(&[("MADBASE_TENANT_CACHE_SECONDS", "0.2")]).await;
    let key = s.tenant.anon_key.clone();
    let (status, _, _) = s.get("/rest/v1/items", &[("apikey", &key)]).await;
    assert_eq!(status, 200);
    let ready = s
        .http
        .get(format!("http://{}/ready", s.proxy.admin))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    s.control.take().expect("control").stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Past the TTL, control gone: the cached tenant keeps serving.
    let (status, _, body) = s.get("/rest/v1/items", &[("apikey", &key)]).await;
    assert_eq!(status, 200, "{body}");
    // Unknown tenants cannot be looked up: 503, not a hang or a 500.
    let resp = s
        .http
        .get(format!("http://{}/t/never-seen/rest/v1/x", s.proxy.api))
        .header("apikey", &key)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 503);
    // /ready names control.
    let ready = s
        .http
        .get(format!("http://{}/ready", s.proxy.admin))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["failed"], json!(["control"]));
    let text = s.proxy.metrics().await;
    assert!(
        text.contains(r#"madbase_tenant_lookups_total{outcome="stale"}"#),
        "{text}"
    );
}

/// An HTTP/1 client connection keeps one upstream connection for its
/// requests; one the upstream closed is replaced without an error, and
/// another client connection gets an upstream connection of its own.
#[tokio::test(flavor = "multi_thread")]
async fn client_connections_keep_their_upstream_connection() {
    use http_body_util::BodyExt as _;
    use hyper::client::conn::http1::{SendRequest, handshake};

    let s = stack(&[]).await;
    let key = s.tenant.anon_key.as_str();
    // One client connection each (a pooling client could open more).
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(s.proxy.api)
            .await
            .expect("connect");
        let (sender, conn) = handshake::<_, String>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender
    };
    let path = format!("/t/{}/rest/v1/items", s.tenant.id);
    let request = |close: bool| {
        let mut req = http::Request::get(path.as_str())
            .header("host", s.proxy.api.to_string())
            .header("apikey", key);
        if close {
            req = req.header("x-echo-close", "1");
        }
        req.body(String::new()).expect("request")
    };
    // The upstream connection's address, as the upstream saw it.
    async fn peer(sender: &mut SendRequest<String>, req: http::Request<String>) -> String {
        sender.ready().await.expect("client connection open");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body: Value = serde_json::from_slice(&body).expect("json");
        body["peer"].as_str().expect("peer").to_owned()
    }
    let mut one = connect().await;
    let first = peer(&mut one, request(false)).await;
    for _ in 0..3 {
        assert_eq!(
            peer(&mut one, request(false)).await,
            first,
            "one upstream connection"
        );
    }
    // The upstream closes it after this answer; the next request opens another.
    assert_eq!(peer(&mut one, request(true)).await, first);
    let second = peer(&mut one, request(false)).await;
    assert_ne!(second, first, "a new upstream connection");
    assert_eq!(peer(&mut one, request(false)).await, second);
    // Another client connection, another upstream connection.
    let mut two = connect().await;
    assert_ne!(peer(&mut two, request(false)).await, second);

    // HTTP/2 clients (concurrent requests on one connection) go through
    // the pool.
    let tcp = tokio::net::TcpStream::connect(s.proxy.api)
        .await
        .expect("connect");
    let (h2, conn) = hyper::client::conn::http2::handshake::<_, _, String>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let mut answers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut h2 = h2.clone();
        let req = http::Request::get(format!("http://{}{path}", s.proxy.api))
            .header("apikey", key)
            .header("x-echo-delay-ms", "50")
            .body(String::new())
            .expect("request");
        answers.spawn(async move {
            let resp = h2.send_request(req).await.expect("h2 response");
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<Value>(&body).expect("json")
        });
    }
    let answers = answers.join_all().await;
    assert_eq!(answers.len(), 4);
    for body in answers {
        assert_eq!(body["path"], "/rest/v1/items");
        assert_eq!(body["headers"]["x-madbase-tenant"], s.tenant.id.as_str());
    }
}

/// `MADBASE_UPSTREAM_HTTP2=true`: the upstream is spoken to in HTTP/2
/// cleartext, the requests of different client connections multiplexed on
/// one upstream connection; by default HTTP/1.1, each client connection
/// with upstream connections of its own.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_http2_multiplexes_client_connections() {
    for (extra, version, shared) in [
        (vec![], "HTTP/1.1", false),
        (vec![("MADBASE_UPSTREAM_HTTP2", "true")], "HTTP/2.0", true),
    ] {
        let s = stack(&extra).await;
        let mut seen = Vec::new();
        // Two clients, each with its own connection to the proxy.
        for _ in 0..2 {
            let client = reqwest::Client::new();
            for _ in 0..2 {
                let resp = client
                    .get(s.url("/rest/v1/items?id=eq.1"))
                    .header("apikey", &s.tenant.anon_key)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(resp.status(), 200, "{extra:?}");
                let body: Value = resp.json().await.expect("echo json");
                assert_eq!(body["version"], version, "{extra:?}: {body}");
                assert_eq!(body["path"], "/rest/v1/items", "{extra:?}");
                assert_eq!(body["query"], "id=eq.1", "{extra:?}");
                assert_eq!(body["headers"]["apikey"], s.tenant.anon_key.as_str());
                assert!(body["headers"]["x-request-id"].is_string(), "{body}");
                seen.push(body["peer"].as_str().expect("peer").to_owned());
            }
        }
        // With HTTP/2 every request came on one upstream connection; with
        // HTTP/1.1 the two clients' connections each had their own.
        if shared {
            assert!(seen.iter().all(|p| *p == seen[0]), "{extra:?}: {seen:?}");
        } else {
            assert_ne!(seen[0], seen[2], "{extra:?}: {seen:?}");
        }
    }
}
