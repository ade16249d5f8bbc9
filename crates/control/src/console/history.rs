//! The figures of the health and tenants pages: a supervised task scrapes
//! the `/metrics` of every service in `MADBASE_CONSOLE_SERVICES` every
//! [`ConsoleConfig::scrape_every`](super::ConsoleConfig) (15 s; each scrape
//! bounded by a timeout) and keeps one hour of samples per service in
//! memory (a ring buffer). History starts when control starts and is lost
//! when it stops; each control process has its own.
//!
//! A sample keeps only what the pages need, summed over the labels the
//! pages do not show:
//! - `http_requests_total{method,route,status}`: all requests, and those
//!   with a 5xx status (the error ratio is 5xx / all);
//! - `http_request_duration_seconds_bucket{le}`: the cumulative bucket
//!   counts, for the p99 (interpolated in its bucket, as PromQL's
//!   `histogram_quantile` does);
//! - the proxy's `madbase_proxy_requests_total{tenant,upstream,status}`:
//!   all and 5xx requests per tenant (at most [`MAX_TENANTS`] tenants a
//!   sample).
//!
//! Figures are counter increases between consecutive samples (a counter
//! that went down was reset: its service restarted, and the new value is
//! the increase), so a window's rate is its increase over its duration.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// How long samples are kept.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Most tenants kept per sample (the proxy's label values).
pub const MAX_TENANTS: usize = 10_000;
/// Longest `/metrics` body read.
const MAX_BODY: usize = 16 << 20;

/// What one scrape of one service kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// `http_requests_total`, all series.
    pub requests: f64,
    /// `http_requests_total` with a 5xx status.
    pub errors: f64,
    /// `http_request_duration_seconds_bucket`: (le, cumulative count),
    /// summed over series, sorted by `le` (`+Inf` last).
    pub buckets: Vec<(f64, f64)>,
    /// `madbase_proxy_requests_total` per tenant: (all, 5xx).
    pub tenants: HashMap<String, (f64, f64)>,
}

/// One scrape's time and result (`None`: it failed).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub scrape: Option<Arc<Scrape>>,
}

/// The samples of every service, newest last.
#[derive(Debug)]
pub struct History {
    every: Duration,
    started: DateTime<Utc>,
    services: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl History {
    pub fn new(every: Duration) -> Self {
        History {
            every,
            started: Utc::now(),
            services: Mutex::default(),
        }
    }

    /// How many samples one window holds.
    fn capacity(&self) -> usize {
        let every = self.every.as_secs_f64().max(0.001);
        (WINDOW.as_secs_f64() / every).ceil() as usize + 1
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// When this history began (control's start).
    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    pub fn push(&self, service: &str, sample: Sample) {
        let cap = self.capacity();
        let mut all = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ring = all.entry(service.to_owned()).or_default();
        while ring.len() >= cap {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// A copy of `service`'s samples (the ring holds `Arc`s).
    pub fn samples(&self, service: &str) -> Vec<Sample> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(service)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Starts the scraper of `services` (name, admin URL) into `history`.
pub fn start(history: Arc<History>, services: Vec<(String, String)>, http: reqwest::Client) {
    if services.is_empty() {
        return;
    }
    madbase_platform::tasks::supervise("console-metrics-scraper", move || {
        let (history, services, http) = (history.clone(), services.clone(), http.clone());
        async move {
            let mut tick = tokio::time::interval(history.every());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Each scrape ends before the next one is due.
            let timeout = history
                .every()
                .mul_f64(0.8)
                .clamp(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                tick.tick().await;
                let at = Utc::now();
                let scrapes = futures_util::future::join_all(services.iter().map(|(name, url)| {
                    let http = &http;
                    async move { (name, scrape(http, url, timeout).await) }
                }))
                .await;
                for (name, result) in scrapes {
                    let scrape = match result {
                        Ok(s) => Some(Arc::new(s)),
                        Err(e) => {
                            tracing::debug!(service = %name, error = %e, "console: metrics scrape failed");
                            None
                        }
                    };
                    history.push(name, Sample { at, scrape });
                }
            }
        }
    });
}

async fn scrape(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<Scrape, String> {
    let fetch = async {
        let mut resp = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url}/metrics answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(format!("{url}/metrics is larger than {MAX_BODY} bytes"));
            }
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{url}/metrics took longer than {timeout:?}"))??;
    Ok(parse(&text))
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One sample line of the text exposition format: name, labels, value.
fn sample_line(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        loop {
            // Key up to '=' (or the closing brace).
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &after[i + 1..];
                    break;
                }
                ',' | ' ' => continue,
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn is_5xx(labels: &[(String, String)]) -> bool {
    label(labels, "status").is_some_and(|s| s.len() == 3 && s.starts_with('5'))
}

/// What the pages need from a `/metrics` text.
pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample_line(line) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        match name {
            "http_requests_total" => {
                s.requests += value;
                if is_5xx(&labels) {
                    s.errors += value;
                }
            }
            "http_request_duration_seconds_bucket" => {
                let le = match label(&labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse::<f64>() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += value,
                    None => buckets.push((le, value)),
                }
            }
            "madbase_proxy_requests_total" => {
                let Some(tenant) = label(&labels, "tenant") else {
                    continue;
                };
                let known = s.tenants.contains_key(tenant);
                if !known && s.tenants.len() >= MAX_TENANTS {
                    continue;
                }
                let e = s.tenants.entry(tenant.to_owned()).or_default();
                e.0 += value;
                if is_5xx(&labels) {
                    e.1 += value;
                }
            }
            _ => {}
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s.buckets = buckets;
    s
}

/// A counter's increase from `prev` to `cur` (a decrease is a reset).
fn increase(prev: f64, cur: f64) -> f64 {
    if cur >= prev { cur - prev } else { cur }
}

/// The traffic of one interval (or a whole window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub seconds: f64,
    pub requests: f64,
    pub errors: f64,
    /// Cumulative bucket increases, by `le`.
    pub buckets: Vec<(f64, f64)>,
}

impl Delta {
    fn between(prev: &Sample, cur: &Sample) -> Option<Delta> {
        let (p, c) = (prev.scrape.as_ref()?, cur.scrape.as_ref()?);
        let seconds = (cur.at - prev.at).num_milliseconds() as f64 / 1000.0;
        if seconds <= 0.0 {
            return None;
        }
        // A restarted service resets every counter at once.
        let reset = c.requests < p.requests
            || c.buckets.iter().any(|(le, n)| {
                p.buckets
                    .iter()
                    .find(|(ple, _)| ple == le)
                    .is_some_and(|(_, pn)| n < pn)
            });
        let buckets = c
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = if reset {
                    0.0
                } else {
                    p.buckets
                        .iter()
                        .find(|(ple, _)| ple == le)
                        .map_or(0.0, |(_, pn)| *pn)
                };
                (*le, (n - before).max(0.0))
            })
            .collect();
        let (requests, errors) = if reset {
            (c.requests, c.errors)
        } else {
            (c.requests - p.requests, increase(p.errors, c.errors))
        };
        Some(Delta {
            seconds,
            requests,
            errors,
            buckets,
        })
    }

    fn add(&mut self, other: &Delta) {
        self.seconds += other.seconds;
        self.requests += other.requests;
        self.errors += other.errors;
        for (le, n) in &other.buckets {
            match self.buckets.iter_mut().find(|(b, _)| b == le) {
                Some((_, m)) => *m += n,
                None => self.buckets.push((*le, *n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Requests per second.
    pub fn rate(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.requests / self.seconds)
    }

    /// 5xx / all, when there were requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }

    /// The `q` quantile of the latency, in seconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(q, &self.buckets)
    }
}

/// PromQL's `histogram_quantile` over cumulative `(le, count)` buckets
/// sorted by `le`: linear within the bucket the rank falls in; in the
/// `+Inf` bucket, the largest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            if inside <= 0.0 {
                return Some(*le);
            }
            return Some(lower + (le - lower) * (rank - below) / inside);
        }
        lower = *le;
        below = *count;
    }
    Some(lower)
}

/// A service's figures: one [`Delta`] per interval between consecutive
/// successful samples (with the interval's end), and their sum.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub points: Vec<(DateTime<Utc>, Delta)>,
    pub window: Delta,
    /// Samples, and how many of them failed.
    pub samples: usize,
    pub failed: usize,
    pub latest: Option<DateTime<Utc>>,
}

pub fn figures(samples: &[Sample]) -> Figures {
    let mut f = Figures {
        samples: samples.len(),
        failed: samples.iter().filter(|s| s.scrape.is_none()).count(),
        latest: samples
            .iter()
            .rev()
            .find(|s| s.scrape.is_some())
            .map(|s| s.at),
        ..Figures::default()
    };
    for pair in samples.windows(2) {
        if let Some(d) = Delta::between(&pair[0], &pair[1]) {
            f.window.add(&d);
            f.points.push((pair[1].at, d));
        }
    }
    f
}

/// Requests and 5xx per tenant over `samples` (consecutive successful
/// pairs, each tenant's counters reset-aware).
pub fn tenant_totals(samples: &[Sample]) -> (f64, HashMap<String, (f64, f64)>) {
    let mut seconds = 0.0;
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for pair in samples.windows(2) {
        let (Some(p), Some(c)) = (&pair[0].scrape, &pair[1].scrape) else {
            continue;
        };
        let dt = (pair[1].at - pair[0].at).num_milliseconds() as f64 / 1000.0;
        if dt <= 0.0 {
            continue;
        }
        seconds += dt;
        for (tenant, (all, errors)) in &c.tenants {
            let (pa, pe) = p.tenants.get(tenant).copied().unwrap_or((0.0, 0.0));
            let (da, de) = if *all < pa {
                (*all, *errors)
            } else {
                (all - pa, increase(pe, *errors))
            };
            if da > 0.0 || de > 0.0 {
                let e = out.entry(tenant.clone()).or_default();
                e.0 += da;
                e.1 += de;
            }
        }
    }
    (seconds, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total HTTP requests served
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/rest/v1/{*rest}",status="200"} 90
http_requests_total{method="POST",route="/a",status="503"} 10
http_requests_total{method="GET",route="/we\"ird,\\route}",status="500"} 0
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_sum{method="GET",route="/a"} 1.5
http_request_duration_seconds_count{method="GET",route="/a"} 100
http_request_duration_seconds_bucket{le="0.01",method="GET",route="/a"} 50
http_request_duration_seconds_bucket{le="0.1",method="GET",route="/a"} 98
http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/a"} 100
http_request_duration_seconds_bucket{le="0.01",method="POST",route="/b"} 0
http_request_duration_seconds_bucket{le="0.1",method="POST",route="/b"} 0
http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/b"} 0
madbase_proxy_requests_total{tenant="acme",upstream="worker",status="200"} 7
madbase_proxy_requests_total{tenant="acme",upstream="worker",status="502"} 3
madbase_proxy_requests_total{tenant="<b>",upstream="functions",status="404"} 1 1700000000000
not a line
# EOF
"#;

    #[test]
    fn parses_what_the_pages_need() {
        let s = parse(TEXT);
        assert_eq!(s.requests, 100.0);
        assert_eq!(s.errors, 10.0);
        assert_eq!(
            s.buckets,
            [(0.01, 50.0), (0.1, 98.0), (f64::INFINITY, 100.0)]
        );
        assert_eq!(s.tenants["acme"], (10.0, 3.0));
        assert_eq!(s.tenants["<b>"], (1.0, 0.0));
        let (_, labels, _) =
            sample_line(r#"x{a="1\"2\\3\n",b="}"} 4"#).expect("a line with escapes");
        assert_eq!(labels[0].1, "1\"2\\3\n");
        assert_eq!(labels[1].1, "}");
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        let b = [(0.01, 50.0), (0.1, 98.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(0.01));
        let p99 = quantile(0.99, &b).expect("p99");
        assert!((p99 - 0.1).abs() < 1e-9, "{p99}");
        let p97 = quantile(0.97, &b).expect("p97");
        assert!((p97 - (0.01 + 0.09 * 47.0 / 48.0)).abs() < 1e-9, "{p97}");
        assert_eq!(quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    fn sample(secs: i64, requests: f64, errors: f64, fast: f64, tenant: f64) -> Sample {
        Sample {
            at: DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time"),
            scrape: Some(Arc::new(Scrape {
                requests,
                errors,
                buckets: vec![(0.01, fast), (f64::INFINITY, requests)],
                tenants: HashMap::from([("acme".to_owned(), (tenant, 0.0))]),
            })),
        }
    }

    #[test]
    fn deltas_rates_and_resets() {
        let samples = vec![
            sample(0, 100.0, 0.0, 100.0, 10.0),
            sample(15, 130.0, 3.0, 127.0, 16.0),
            Sample {
                at: DateTime::from_timestamp(1_700_000_030, 0).expect("time"),
                scrape: None,
            },
            // Restarted: counters start again.
            sample(45, 15.0, 0.0, 15.0, 4.0),
            sample(60, 45.0, 0.0, 45.0, 10.0),
        ];
        let f = figures(&samples);
        assert_eq!(f.samples, 5);
        assert_eq!(f.failed, 1);
        assert_eq!(f.points.len(), 2);
        assert_eq!(f.window.requests, 60.0);
        assert_eq!(f.window.errors, 3.0);
        assert_eq!(f.window.seconds, 30.0);
        assert_eq!(f.window.rate(), Some(2.0));
        assert_eq!(f.window.error_ratio(), Some(0.05));
        assert_eq!(f.points[0].1.rate(), Some(2.0));
        let (secs, tenants) = tenant_totals(&samples);
        assert_eq!(secs, 30.0);
        assert_eq!(tenants["acme"], (12.0, 0.0));
        let h = History::new(Duration::from_secs(900));
        for s in samples {
            h.push("x", s);
        }
        assert_eq!(h.samples("x").len(), 5, "one hour of 15-minute samples");
        h.push("x", sample(75, 1.0, 0.0, 1.0, 1.0));
        assert_eq!(h.samples("x").len(), 5);
    }
}
