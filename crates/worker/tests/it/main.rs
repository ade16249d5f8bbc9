//! The worker against a real Postgres and an in-process control plane:
//! reads, writes, rpc, security, errors, the engine, and the
//! `@supabase/postgrest-js` compatibility script.

mod compat;
mod engine;
mod helpers;
mod reads;
mod rpc;
mod security;
mod writes;

use axum::body::Body;
use http_body_util::BodyExt as _;
use madbase_platform::config::Env;
use madbase_platform::server::{admin_router, api_router};
use serde_json::Value;
use tower::ServiceExt as _;

fn config() -> madbase_worker::Config {
    let vars: std::collections::HashMap<String, String> = [
        ("JWT_SECRET", "test-secret-that-is-at-least-32-bytes-long"),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:9/none"),
        (
            "MADBASE_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    madbase_worker::Config::from_env(&Env::new(vars)).expect("valid config")
}

#[tokio::test]
async fn test_health_endpoint_worker() {
    let app = madbase_worker::app(&config()).expect("app");
    for router in [api_router(&app), admin_router(&app)] {
        let resp = router
            .oneshot(
                http::Request::get("/health")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["service"], "worker");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }
}
