//! The request pipeline every service shares, driven without a socket
//! (`tower::ServiceExt::oneshot`).

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use madbase_platform::server::{admin_router, api_router};
use madbase_platform::{ApiError, Metrics, Service, ServiceApp};
use serde_json::Value;
use tower::ServiceExt as _;

fn app() -> ServiceApp {
    ServiceApp {
        service: Service::Worker,
        api: Router::new()
            .route("/items/{id}", get(|| async { "item" }))
            .route(
                "/fail",
                get(|| async { ApiError::bad_request("nope").hint("try again") }),
            ),
        ready: vec![],
        metrics: Metrics::new(),
    }
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get_req(path: &str) -> http::request::Builder {
    Request::builder().uri(path)
}

#[tokio::test]
async fn test_request_id_middleware() {
    let router = api_router(&app());

    // No header: one is generated (a UUID) and returned.
    let (_, headers, _) = call(
        &router,
        get_req("/health").body(Body::empty()).expect("req"),
    )
    .await;
    let generated = headers["x-request-id"].to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    // A valid one is kept.
    let (_, headers, _) = call(
        &router,
        get_req("/health")
            .header("x-request-id", "client-id_123.abc")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(headers["x-request-id"], "client-id_123.abc");

    // Invalid ones are replaced: too long, control characters, spaces, several.
    let long = "a".repeat(129);
    for bad in [long.as_str(), "has\tcontrol", "has space"] {
        let (_, headers, _) = call(
            &router,
            get_req("/health")
                .header("x-request-id", bad)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        let got = headers["x-request-id"].to_str().expect("ascii");
        assert_ne!(got, bad);
        assert!(uuid::Uuid::parse_str(got).is_ok(), "{got}");
    }
    let (_, headers, _) = call(
        &router,
        get_req("/health")
            .header("x-request-id", "one")
            .header("x-request-id", "two")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(headers.get_all("x-request-id").iter().count(), 1);
    assert!(uuid::Uuid::parse_str(headers["x-request-id"].to_str().expect("ascii")).is_ok());

    // Exactly 128 visible characters are kept.
    let max = "b".repeat(128);
    let (_, headers, _) = call(
        &router,
        get_req("/health")
            .header("x-request-id", &max)
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(headers["x-request-id"], max.as_str());
}

#[tokio::test]
async fn errors_are_json_with_the_request_id() {
    let router = api_router(&app());
    for (path, status, code) in [
        ("/fail", 400, "bad_request"),
        ("/missing/route", 404, "not_found"),
        // Not UTF-8 once percent-decoded: axum's `Path` would answer a
        // plain-text 400; the pipeline answers JSON first.
        ("/items/%FF", 400, "bad_request"),
        ("/items/a%C3%28b", 400, "bad_request"),
        ("/missing/%E2%82", 400, "bad_request"),
    ] {
        let (got, headers, body) = call(
            &router,
            get_req(path)
                .header("x-request-id", "err-1")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(got.as_u16(), status, "{path}");
        assert_eq!(headers["x-request-id"], "err-1");
        assert_eq!(headers["content-type"], "application/json");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["code"], code);
        assert_eq!(v["request_id"], "err-1");
        assert!(v["message"].is_string());
        assert!(v.get("details").is_some() && v.get("hint").is_some());
    }
    // Valid UTF-8 percent-encoded, and a lone `%`, reach the route.
    for path in ["/items/%C3%A9t%C3%A9", "/items/100%", "/items/%zz"] {
        let (got, _, body) = call(&router, get_req(path).body(Body::empty()).expect("req")).await;
        assert_eq!((got.as_u16(), body.as_str()), (200, "item"), "{path}");
    }
}

#[tokio::test]
async fn metrics_use_route_templates_and_stay_on_admin() {
    let app = app();
    let api = api_router(&app);
    let admin = admin_router(&app);
    for path in ["/items/1", "/items/2", "/items/3", "/no/such/thing"] {
        call(&api, get_req(path).body(Body::empty()).expect("req")).await;
    }
    // Methods nobody defined are counted under one label, not one each.
    for method in ["BREW", "WHEN"] {
        let req = get_req("/items/1").method(method).body(Body::empty());
        call(&api, req.expect("req")).await;
    }
    let (status, headers, text) = call(
        &admin,
        get_req("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"http_request_duration_seconds_bucket{method="GET",route="/items/{id}",le="0.001"}"#
    ));
    assert!(text.contains(r#"le="10"} 3"#), "10 s bucket: {text}");
    assert!(!text.contains("/items/1"), "raw paths never become labels");
    assert!(
        text.contains(r#"http_requests_total{method="_OTHER",route="/items/{id}",status="405"} 2"#),
        "{text}"
    );
    assert!(!text.contains("BREW"), "{text}");
    assert!(text.contains(r#"madbase_build_info{version=""#));

    // OpenMetrics on request.
    let (_, headers, om) = call(
        &admin,
        get_req("/metrics")
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    assert!(om.trim_end().ends_with("# EOF"));

    // Not on the API listener.
    let (status, _, _) = call(&api, get_req("/metrics").body(Body::empty()).expect("req")).await;
    assert_eq!(status, 404);
    // Admin requests are not counted as API traffic.
    let (_, _, again) = call(
        &admin,
        get_req("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert!(!again.contains(r#"route="/metrics""#));
}

#[tokio::test]
async fn ready_reports_the_failing_dependency() {
    let mut app = app();
    app.ready = vec![
        madbase_platform::ReadyCheck::new("database", || async { Ok(()) }),
        madbase_platform::ReadyCheck::new("control", || async {
            Err("connection refused".to_owned())
        }),
    ];
    let admin = admin_router(&app);
    let (status, _, body) = call(&admin, get_req("/ready").body(Body::empty()).expect("req")).await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["failed"], serde_json::json!(["control"]));
    assert_eq!(v["checks"]["database"], "ok");
    assert_eq!(v["checks"]["control"], "connection refused");

    app.ready.truncate(1);
    let admin = admin_router(&app);
    let (status, _, _) = call(&admin, get_req("/ready").body(Body::empty()).expect("req")).await;
    assert_eq!(status, 200);
}
