//! Helpers for service tests: configuration from a map, and the health
//! contract checked without a socket.

use std::collections::HashMap;

use madbase_platform::ServiceApp;
use madbase_platform::config::Env;
use madbase_platform::server::{admin_router, api_router};

/// A `JWT_SECRET` for tests.
pub const JWT_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// A `MADBASE_MASTER_KEY` for tests (bytes 0..32, base64).
pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Configuration variables: the test secrets plus `extra`.
pub fn env(extra: &[(&str, &str)]) -> Env<HashMap<String, String>> {
    let mut vars: HashMap<String, String> = [
        ("JWT_SECRET", JWT_SECRET),
        ("MADBASE_MASTER_KEY", MASTER_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Env::new(vars)
}

/// Asserts `GET /health` answers `200 {"status":"ok","service":…,"version":…}`
/// on both the API and the admin router.
pub async fn assert_health(app: &ServiceApp) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    for router in [api_router(app), admin_router(app)] {
        let resp = router
            .oneshot(
                http::Request::get("/health")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["service"], app.service.name());
        assert_eq!(v["version"], madbase_platform::VERSION);
    }
}

/// A tenant id unique across parallel test processes sharing one cluster
/// (roles and databases are cluster-wide).
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
