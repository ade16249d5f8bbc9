//! Helpers for service tests: configuration from a map, the health
//! contract checked without a socket, telemetry as in the binary, and
//! services served on loopback port 0.

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
        (madbase_platform::env::JWT_SECRET, JWT_SECRET),
        (madbase_platform::env::MADBASE_MASTER_KEY, MASTER_KEY),
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

/// [`env`] plus the variables control needs for `db`: its own
/// database, and the cluster tenant databases are created on.
pub fn control_env(db: &crate::TestDb, extra: &[(&str, &str)]) -> Env<HashMap<String, String>> {
    let tenant_cluster = db.server.url_for("postgres");
    let mut vars = vec![
        (madbase_platform::env::DATABASE_URL, db.url.as_str()),
        (
            madbase_platform::env::DEFAULT_TENANT_DB_URL,
            tenant_cluster.as_str(),
        ),
    ];
    vars.extend_from_slice(extra);
    env(&vars)
}

/// Installs the process's telemetry once, as the binary does (W3C
/// propagation, spans), logging only warnings. Later calls do nothing.
pub fn telemetry() {
    use madbase_platform::telemetry::{TelemetryConfig, TelemetryGuard, init};
    static GUARD: std::sync::OnceLock<Option<TelemetryGuard>> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| {
        init(&TelemetryConfig {
            service: "test".into(),
            log_filter: "warn".into(),
            log_format: madbase_platform::config::LogFormat::Json,
            otel: madbase_platform::config::OtelConfig::from_env(
                madbase_platform::Service::Proxy,
                &Env::new(HashMap::<String, String>::new()),
            )
            .expect("otel config"),
        })
        .ok()
    });
}

/// A service served on loopback port 0 (API and admin) until [`Served::stop`].
#[derive(Debug)]
pub struct Served {
    /// The API listener's address.
    pub api: std::net::SocketAddr,
    /// The admin listener's address.
    pub admin: std::net::SocketAddr,
    stop: madbase_platform::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Binds both listeners and serves `app` on a spawned task.
    pub async fn start(app: ServiceApp) -> Served {
        let l = madbase_platform::Listeners::bind(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
        .expect("bind");
        let (api, admin) = (l.api_addr(), l.admin_addr());
        let stop = madbase_platform::CancellationToken::new();
        let task = tokio::spawn(l.serve(app, stop.clone(), std::time::Duration::from_secs(1)));
        Served {
            api,
            admin,
            stop,
            task,
        }
    }

    /// `http://<api address>`
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// `http://<admin address>`
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops serving (graceful, bounded drain) and waits until both
    /// listeners are closed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("join").expect("serve");
    }
}
