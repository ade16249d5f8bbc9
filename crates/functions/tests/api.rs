//! The functions service's routers, driven without a socket.

use axum::body::Body;
use http_body_util::BodyExt as _;
use madbase_platform::server::api_router;
use serde_json::Value;
use tower::ServiceExt as _;

fn config() -> madbase_functions::Config {
    madbase_functions::Config::from_env(&madbase_testkit::service::env(&[])).expect("valid config")
}

#[tokio::test]
async fn test_health_endpoint_functions() {
    let app = madbase_functions::app(&config()).expect("app");
    madbase_testkit::service::assert_health(&app).await;
}

#[tokio::test]
async fn invocations_need_a_tenant_and_are_counted() {
    let app = madbase_functions::app(&config()).expect("app");
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
