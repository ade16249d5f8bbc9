//! `/functions/v1/{name}`: invocation. The proxy forwards here with
//! `X-Madbase-Tenant`; the tenant and its key are checked again here.
//!
//! Deploying functions (through control) and the JavaScript sandbox are not
//! built yet, so no function exists: every invocation of a known tenant
//! answers 404 `function_not_found` — and is counted as a run with outcome
//! `not_found`, so the run metrics and dashboards are real from day one.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use madbase_platform::metrics::{LatencyFamily, latency_family};
use madbase_platform::tenants::TenantClient;
use madbase_platform::{ApiError, Metrics, jwt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    tenant: String,
    /// The function's name when it is deployed; `unknown` otherwise (names
    /// from requests never become labels: unbounded cardinality).
    function: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// State of the invocation routes.
#[derive(Debug, Clone)]
pub(crate) struct Invoker {
    tenants: TenantClient,
    runs: Family<RunLabels, Counter>,
    durations: LatencyFamily<OutcomeLabels>,
}

impl Invoker {
    pub(crate) fn new(tenants: TenantClient, metrics: &Metrics) -> Arc<Self> {
        let runs = Family::default();
        metrics.register(
            "madbase_function_runs",
            "Function invocations by tenant, function and outcome",
            runs.clone(),
        );
        let durations = latency_family();
        metrics.register(
            "madbase_function_run_duration_seconds",
            "Function invocation time, by outcome",
            durations.clone(),
        );
        Arc::new(Invoker {
            tenants,
            runs,
            durations,
        })
    }
}

/// Any method on `/functions/v1/{name}` and below.
pub(crate) async fn invoke(
    State(inv): State<Arc<Invoker>>,
    Path(params): Path<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let Some(tenant) = headers
        .get("x-madbase-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return ApiError::bad_request("missing X-Madbase-Tenant: call functions through the proxy")
            .into_response();
    };
    tracing::Span::current().record("tenant", tenant.as_str());
    let info = match inv.tenants.get(&tenant).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                format!("no tenant {tenant:?}"),
            )
            .into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "tenant lookup failed");
            return ApiError::unavailable("the control plane is unreachable").into_response();
        }
    };
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(jwt::bearer)
        .or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()));
    if let Some(token) = token
        && let Err(e) = jwt::verify_tenant_token(&info.jwt_secret, &tenant, token)
    {
        return ApiError::unauthorized(format!("invalid token: {e}")).into_response();
    }
    let outcome = "not_found";
    inv.runs
        .get_or_create(&RunLabels {
            tenant: tenant.clone(),
            function: "unknown".to_owned(),
            outcome,
        })
        .inc();
    inv.durations
        .get_or_create(&OutcomeLabels { outcome })
        .observe(start.elapsed().as_secs_f64());
    ApiError::new(
        StatusCode::NOT_FOUND,
        "function_not_found",
        format!("no function {name:?} is deployed for tenant {tenant:?}"),
    )
    .into_response()
}
