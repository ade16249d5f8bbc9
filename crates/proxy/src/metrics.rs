//! The proxy's own metrics.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use madbase_platform::Metrics;
use madbase_platform::metrics::{LatencyFamily, latency_family};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::Upstream;

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

/// Status codes with a resolved histogram handle (`ProxyMetrics::upstream`).
const STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

#[derive(Debug, Clone)]
pub(crate) struct ProxyMetrics {
    upstream_duration: LatencyFamily<UpstreamStatus>,
    /// The upstream histogram's handle per (upstream, status), resolved on
    /// first use: a request then costs no label hashing nor family lock.
    upstream_handles: Arc<[Vec<OnceLock<Histogram>>; 2]>,
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
        let handles = || STATUSES.map(|_| OnceLock::new()).collect::<Vec<_>>();
        ProxyMetrics {
            upstream_duration,
            upstream_handles: Arc::new([handles(), handles()]),
            upstream_errors,
            rate_limited,
            requests,
        }
    }

    pub(crate) fn upstream(&self, upstream: Upstream, status: u16, elapsed: Duration) {
        let labels = || UpstreamStatus {
            upstream: upstream.name(),
            status,
        };
        let slot = usize::from(status.wrapping_sub(*STATUSES.start()));
        match self.upstream_handles[upstream.index()].get(slot) {
            Some(handle) => handle
                .get_or_init(|| self.upstream_duration.get_or_create_owned(&labels()))
                .observe(elapsed.as_secs_f64()),
            None => self
                .upstream_duration
                .get_or_create(&labels())
                .observe(elapsed.as_secs_f64()),
        }
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

    /// `tenant` by value: the handler's own string becomes the label (no copy).
    pub(crate) fn request(&self, tenant: String, upstream: &'static str, status: u16) {
        self.requests
            .get_or_create(&TenantRequest {
                tenant,
                upstream,
                status,
            })
            .inc();
    }
}
