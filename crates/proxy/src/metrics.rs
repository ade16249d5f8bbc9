//! The proxy's own metrics.

use std::time::Duration;

use madbase_platform::Metrics;
use madbase_platform::metrics::{LatencyFamily, latency_family};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatus {
    upstream: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamError {
    upstream: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantRequest {
    tenant: String,
    upstream: &'static str,
    status: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct ProxyMetrics {
    upstream_duration: LatencyFamily<UpstreamStatus>,
    upstream_errors: Family<UpstreamError, Counter>,
    rate_limited: Family<Tenant, Counter>,
    requests: Family<TenantRequest, Counter>,
}

impl ProxyMetrics {
    pub(crate) fn new(metrics: &Metrics) -> Self {
        let upstream_duration = latency_family();
        metrics.register(
            "madbase_proxy_upstream_request_duration_seconds",
            "Time to the upstream's response head, by upstream and status",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::default();
        metrics.register(
            "madbase_proxy_upstream_errors",
            "Upstream failures by upstream and kind (connect, timeout, other)",
            upstream_errors.clone(),
        );
        let rate_limited = Family::default();
        metrics.register(
            "madbase_proxy_rate_limited",
            "Requests refused with 429 by the per-tenant rate limit",
            rate_limited.clone(),
        );
        let requests = Family::default();
        metrics.register(
            "madbase_proxy_requests",
            "Requests forwarded (or refused) per tenant, upstream and status",
            requests.clone(),
        );
        ProxyMetrics {
            upstream_duration,
            upstream_errors,
            rate_limited,
            requests,
        }
    }

    pub(crate) fn upstream(&self, upstream: &'static str, status: u16, elapsed: Duration) {
        self.upstream_duration
            .get_or_create(&UpstreamStatus { upstream, status })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn upstream_error(&self, upstream: &'static str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamError { upstream, kind })
            .inc();
    }

    pub(crate) fn rate_limited(&self, tenant: &str) {
        self.rate_limited
            .get_or_create(&Tenant {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    pub(crate) fn request(&self, tenant: &str, upstream: &'static str, status: u16) {
        self.requests
            .get_or_create(&TenantRequest {
                tenant: tenant.to_owned(),
                upstream,
                status,
            })
            .inc();
    }
}
