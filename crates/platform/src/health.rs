//! `GET /health` (liveness) and `GET /ready` (dependencies reachable).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::service::Service;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// A named readiness check: a dependency the service needs.
#[derive(Clone)]
pub struct ReadyCheck {
    name: String,
    check: Arc<CheckFn>,
}

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyCheck")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadyCheck {
    /// A check named `name` that passes when `check` returns `Ok`; the error string says why it fails.
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        ReadyCheck {
            name: name.into(),
            check: Arc::new(move || Box::pin(check())),
        }
    }

    /// Ready when `GET <base_url>/health` answers 200.
    pub fn http(name: impl Into<String>, client: reqwest::Client, base_url: &str) -> Self {
        let url = format!("{base_url}/health");
        ReadyCheck::new(name, move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = client
                    .get(&url)
                    .headers(crate::client::propagation_headers())
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {}", crate::client::describe(&e)))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{url} answered {}", resp.status()))
                }
            }
        })
    }

    /// The name `/ready` reports the check under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the check with [`CHECK_TIMEOUT`].
    pub async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, (self.check)()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

/// What the health handlers report.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// The service answering (named in `/health`).
    pub service: Service,
    /// The checks `/ready` runs.
    pub checks: Arc<Vec<ReadyCheck>>,
}

/// `GET /health`: 200 while the process serves requests.
pub async fn health(State(state): State<HealthState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "service": state.service.name(),
        "version": crate::VERSION,
    }))
}

/// `GET /ready`: 200 when every dependency answers, else 503 naming the
/// failing ones.
pub async fn ready(State(state): State<HealthState>) -> Response {
    let results = futures_util::future::join_all(
        state
            .checks
            .iter()
            .map(|c| async move { (c.name(), c.run().await) }),
    )
    .await;
    let mut checks = Map::new();
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Ok(()) => {
                checks.insert(name.to_owned(), Value::from("ok"));
            }
            Err(e) => {
                tracing::warn!(dependency = name, error = %e, "readiness check failed");
                checks.insert(name.to_owned(), Value::from(e));
                failed.push(name.to_owned());
            }
        }
    }
    let ok = failed.is_empty();
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "service": state.service.name(),
        "checks": checks,
        "failed": failed,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
