//! Configuration from environment variables only, typed and validated at
//! start. Every problem is reported as one line naming the variable.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::service::Service;

/// A missing or invalid configuration variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong with it, in a few words.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// A source of variables: the process environment, or a map in tests.
pub trait Source {
    /// The variable's value, or None when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Typed access to configuration variables.
#[derive(Debug, Clone)]
pub struct Env<S = ProcessEnv> {
    source: S,
}

impl Env<ProcessEnv> {
    /// Reads the process environment.
    pub fn process() -> Self {
        Env { source: ProcessEnv }
    }
}

impl<S: Source> Env<S> {
    /// Typed access over `source` (a map in tests).
    pub fn new(source: S) -> Self {
        Env { source }
    }

    /// The raw value; empty values count as unset.
    pub fn raw(&self, name: &str) -> Option<String> {
        self.source.get(name).filter(|v| !v.trim().is_empty())
    }

    /// A required string.
    pub fn required(&self, name: &str, what: &str) -> Result<String, ConfigError> {
        self.raw(name)
            .ok_or_else(|| err(name, format!("is required ({what}) but not set")))
    }

    /// An optional value parsed with `FromStr`.
    pub fn parse<T>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
    {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| err(name, format!("{v:?} is not {expected}"))),
        }
    }

    /// A socket address such as `0.0.0.0:8000`.
    pub fn socket_addr(&self, name: &str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
        Ok(self
            .parse(name, "a socket address like 0.0.0.0:8000")?
            .unwrap_or(default))
    }

    /// An `http://` or `https://` base URL, without trailing slash.
    pub fn url(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        let v = self.raw(name).unwrap_or_else(|| default.to_owned());
        let v = v.trim().trim_end_matches('/').to_owned();
        let parsed = v
            .parse::<http::Uri>()
            .map_err(|e| err(name, format!("{v:?} is not a URL: {e}")))?;
        match (parsed.scheme_str(), parsed.host()) {
            (Some("http" | "https"), Some(_)) => Ok(v),
            _ => Err(err(
                name,
                format!("{v:?} is not an http:// or https:// URL"),
            )),
        }
    }

    /// A duration in seconds (fractions allowed), e.g. `30` or `0.5`.
    pub fn seconds(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.parse::<f64>(name, "a number of seconds")? {
            None => Ok(default),
            Some(s) if (0.0..1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(err(name, format!("{s} is not a usable number of seconds"))),
        }
    }

    /// A secret of at least `min_len` bytes.
    pub fn secret(&self, name: &str, min_len: usize, what: &str) -> Result<String, ConfigError> {
        let v = self.required(name, what)?;
        if v.len() < min_len {
            return Err(err(
                name,
                format!("is {} bytes long; at least {min_len} are required", v.len()),
            ));
        }
        Ok(v)
    }
}

pub(crate) fn err(var: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        problem: problem.into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, multi-line output for a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            _ => Err(()),
        }
    }
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// Which service these settings are for (picks the default ports).
    pub service: Service,
    /// `MADBASE_LISTEN`: the API listener.
    pub listen: SocketAddr,
    /// `MADBASE_ADMIN_LISTEN`: health, readiness and metrics.
    pub admin_listen: SocketAddr,
    /// `MADBASE_LOG`: a tracing filter directive, default `info`.
    pub log_filter: String,
    /// `MADBASE_LOG_FORMAT`: `json` (default) or `pretty`.
    pub log_format: LogFormat,
    /// `MADBASE_DRAIN_SECONDS`: how long in-flight requests may run after SIGTERM.
    pub drain_timeout: Duration,
    /// The OpenTelemetry exporter settings from the standard `OTEL_*` variables.
    pub otel: OtelConfig,
    /// `MADBASE_MAX_HEADER_BYTES` (default 32768) and
    /// `MADBASE_HEADER_READ_TIMEOUT_SECONDS` (default 10).
    pub conn_limits: ConnLimits,
}

/// OTLP trace export, configured by the standard `OTEL_*` variables.
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`; export is off without one.
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: OtlpProtocol,
    /// `OTEL_SERVICE_NAME`, default `madbase-<service>`.
    pub service_name: String,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (the default).
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

impl CommonConfig {
    /// Reads the shared settings for `service`.
    pub fn from_env<S: Source>(service: Service, env: &Env<S>) -> Result<Self, ConfigError> {
        let log_format = env
            .parse::<LogFormat>(crate::env::MADBASE_LOG_FORMAT, "json or pretty")?
            .unwrap_or(LogFormat::Json);
        let log_filter = env
            .raw(crate::env::MADBASE_LOG)
            .unwrap_or_else(|| "info".to_owned());
        tracing_subscriber::EnvFilter::try_new(&log_filter).map_err(|e| {
            err(
                crate::env::MADBASE_LOG,
                format!("{log_filter:?} is not a valid filter: {e}"),
            )
        })?;
        Ok(CommonConfig {
            service,
            listen: env.socket_addr(crate::env::MADBASE_LISTEN, service.default_listen())?,
            admin_listen: env.socket_addr(
                crate::env::MADBASE_ADMIN_LISTEN,
                service.default_admin_listen(),
            )?,
            log_filter,
            log_format,
            drain_timeout: env
                .seconds(crate::env::MADBASE_DRAIN_SECONDS, Duration::from_secs(10))?,
            otel: OtelConfig::from_env(service, env)?,
            conn_limits: ConnLimits {
                max_header_bytes: match env
                    .parse::<usize>(crate::env::MADBASE_MAX_HEADER_BYTES, "a number of bytes")?
                {
                    None => 32 * 1024,
                    Some(n) if (8192..=1 << 20).contains(&n) => n,
                    Some(n) => {
                        return Err(err(
                            crate::env::MADBASE_MAX_HEADER_BYTES,
                            format!("{n} is outside 8192..=1048576"),
                        ));
                    }
                },
                header_read_timeout: env.seconds(
                    crate::env::MADBASE_HEADER_READ_TIMEOUT_SECONDS,
                    Duration::from_secs(10),
                )?,
            },
        })
    }
}

impl OtelConfig {
    /// Reads the standard `OTEL_*` variables; the trace-specific ones win over the general ones.
    pub fn from_env<S: Source>(service: Service, env: &Env<S>) -> Result<Self, ConfigError> {
        let (endpoint_var, endpoint) = match env.raw(crate::env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
        {
            Some(v) => (crate::env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, Some(v)),
            None => (
                crate::env::OTEL_EXPORTER_OTLP_ENDPOINT,
                env.raw(crate::env::OTEL_EXPORTER_OTLP_ENDPOINT),
            ),
        };
        if let Some(e) = &endpoint {
            env.url(endpoint_var, e)?;
        }
        let (proto_var, proto) = match env.raw(crate::env::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) {
            Some(v) => (crate::env::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, Some(v)),
            None => (
                crate::env::OTEL_EXPORTER_OTLP_PROTOCOL,
                env.raw(crate::env::OTEL_EXPORTER_OTLP_PROTOCOL),
            ),
        };
        let protocol = match proto.as_deref().map(str::trim) {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => {
                return Err(err(
                    proto_var,
                    format!("{other:?} is not supported (use grpc or http/protobuf)"),
                ));
            }
        };
        Ok(OtelConfig {
            endpoint,
            protocol,
            service_name: env
                .raw(crate::env::OTEL_SERVICE_NAME)
                .unwrap_or_else(|| format!("madbase-{service}")),
        })
    }
}

/// Connection-level limits of both listeners.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest request head (request line and headers) accepted; larger
    /// ones get 431 from hyper. At least 8 KiB.
    pub max_header_bytes: usize,
    /// How long a client may take to send the request head (slow clients).
    pub header_read_timeout: Duration,
}

impl ConnLimits {
    /// hyper's read-buffer limit: a head larger than this gets hyper's own
    /// 431 without a body. Heads between `max_header_bytes` and this get
    /// the JSON 431 of the pipeline.
    pub fn hard_head_limit(&self) -> usize {
        self.max_header_bytes
            .saturating_mul(4)
            .max(HYPER_DEFAULT_BUF_SIZE)
    }
}

/// hyper's default `max_buf_size` (~400 KiB).
const HYPER_DEFAULT_BUF_SIZE: usize = 8192 + 4096 * 100;

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env<HashMap<String, String>> {
        Env::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_follow_the_service() {
        let c = CommonConfig::from_env(Service::Worker, &env(&[])).expect("defaults are valid");
        assert_eq!(c.listen.port(), 8002);
        assert_eq!(c.admin_listen.port(), 9002);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.otel.service_name, "madbase-worker");
        assert!(c.otel.endpoint.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = CommonConfig::from_env(
            Service::Proxy,
            &env(&[(crate::env::MADBASE_LISTEN, "nope")]),
        )
        .expect_err("invalid address");
        assert_eq!(e.var, crate::env::MADBASE_LISTEN);
        let e = CommonConfig::from_env(
            Service::Proxy,
            &env(&[(crate::env::MADBASE_LOG_FORMAT, "xml")]),
        )
        .expect_err("invalid format");
        assert_eq!(e.var, crate::env::MADBASE_LOG_FORMAT);
        let e = CommonConfig::from_env(
            Service::Proxy,
            &env(&[(crate::env::OTEL_EXPORTER_OTLP_PROTOCOL, "http/json")]),
        )
        .expect_err("unsupported protocol");
        assert_eq!(e.var, crate::env::OTEL_EXPORTER_OTLP_PROTOCOL);
        let e = env(&[])
            .secret(crate::env::JWT_SECRET, 32, "signs tokens")
            .expect_err("missing");
        assert_eq!(
            e.to_string(),
            "JWT_SECRET: is required (signs tokens) but not set"
        );
        let e = env(&[("X", "ftp://a")])
            .url("X", "http://b")
            .expect_err("scheme");
        assert_eq!(e.var, "X");
    }
}
