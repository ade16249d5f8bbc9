//! Logs and traces.
//!
//! One JSON object per line on stdout with `timestamp`, `level`, `target`,
//! `message`, `service`, `request_id`, `trace_id`, `span_id` and `tenant`
//! (where known), plus the event's own fields. Traces go through
//! OpenTelemetry: spans always get W3C trace context (so `traceparent` is
//! continued and propagated even without an exporter), and are exported over
//! OTLP (gRPC, or HTTP/protobuf) only when an OTLP endpoint is configured.
//! Warnings and errors are attached to their span as span events; info
//! events (such as each request's "request completed" line, whose facts the
//! span itself carries) go to the log only.

use std::fmt;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtelConfig, OtlpProtocol};

/// Span fields copied onto every log line emitted inside the span.
const CONTEXT_FIELDS: [&str; 5] = ["service", "request_id", "trace_id", "span_id", "tenant"];
/// Where `trace_id` and `span_id` sit in [`CONTEXT_FIELDS`]; unless a span
/// sets them as fields, they come from the innermost span's OpenTelemetry
/// data.
const TRACE_ID: usize = 2;
const SPAN_ID: usize = 3;

/// What [`init`] needs to know.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The `service` field of log lines outside any request (a request span
    /// may carry its own, as in `madbase dev` where four services share a process).
    pub service: String,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub otel: OtelConfig,
}

/// Flushes and shuts the trace exporter down when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now (tests use this to avoid waiting for a batch).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            eprintln!("trace flush failed: {e}");
        }
    }
}

/// How long the last spans may take to leave at shutdown: an unreachable
/// collector (or a DNS lookup that never answers) must not hold the process
/// past its container's stop timeout.
const EXPORT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_SHUTDOWN) {
            // The logger is being torn down too; stderr is all that is left.
            eprintln!("trace exporter shutdown: {e}");
        }
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the global subscriber and tracer provider. Must run inside a
/// Tokio runtime (the gRPC exporter needs one). Only the first call in a
/// process installs anything; later calls fail.
pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    if INSTALLED.set(()).is_err() {
        anyhow::bail!("telemetry is already initialised in this process");
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(cfg.otel.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build(),
    );
    if cfg.otel.endpoint.is_some() {
        // The exporters read the standard OTEL_EXPORTER_OTLP_* variables
        // themselves (endpoint, headers, timeout, compression).
        let exporter = match cfg.otel.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
        }
        .context("building the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("madbase");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_new(&cfg.log_filter)
        .with_context(|| format!("MADBASE_LOG: {:?} is not a valid filter", cfg.log_filter))?;
    // Nothing here reads OpenTelemetry's own current context (propagation
    // and log lines read the span's data), so entering a span does not
    // activate one; spans carry no busy/idle timing nor thread attributes.
    // Each of those cost work on every poll of every instrumented future.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false);
    // MADBASE_LOG filters log lines only: request spans (traces, trace
    // propagation, the log context) stay on whatever the log level is.
    let fmt_layer = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(NoSpanFields)
            .event_format(JsonFormat {
                service: cfg.service.clone(),
            })
            .with_writer(std::io::stdout)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(
            otel_layer.with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    let most_verbose = if meta.is_event() {
                        Level::WARN
                    } else {
                        Level::INFO
                    };
                    *meta.level() <= most_verbose
                })
                // Without the hint the subscriber's maximum level would be
                // TRACE, and every `log` record of a dependency (tokio-postgres
                // logs each statement at debug) would be formatted and offered.
                .with_max_level_hint(Level::INFO),
            ),
        )
        .with(ContextLayer.with_filter(LevelFilter::INFO))
        .with(fmt_layer)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// The JSON format reads span context from [`ContextLayer`]; the fmt layer's
/// own per-span field formatting (ANSI text stored for every span) would be
/// wasted work on every request.
struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> fmt::Result {
        Ok(())
    }
}

/// The context fields a span carries, stored in its extensions.

#[derive(Debug, Default, Clone)]
struct ContextFields([Option<String>; CONTEXT_FIELDS.len()]);

impl Visit for ContextFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(i) = CONTEXT_FIELDS.iter().position(|n| *n == field.name()) {
            self.0[i] = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(i) = CONTEXT_FIELDS.iter().position(|n| *n == field.name()) {
            self.0[i] = Some(format!("{value:?}"));
        }
    }
}

/// Keeps each span's context fields so the formatter can put them on every
/// line without re-parsing formatted span fields.
struct ContextLayer;

impl<S> Layer<S> for ContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = ContextFields::default();
        attrs.record(&mut fields);
        if fields.0.iter().any(Option::is_some)
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        match ext.get_mut::<ContextFields>() {
            Some(fields) => values.record(fields),
            None => {
                let mut fields = ContextFields::default();
                values.record(&mut fields);
                if fields.0.iter().any(Option::is_some) {
                    ext.insert(fields);
                }
            }
        }
    }
}

/// Collects an event's fields, in order.
struct JsonVisitor<'a>(&'a mut Vec<(&'static str, Value)>);

impl JsonVisitor<'_> {
    fn push(&mut self, field: &Field, value: Value) {
        self.0.push((field.name(), value));
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, Value::from(format!("{value:?}")));
    }
}

/// Appends `"key":<value>` to a JSON object being written.
fn put(out: &mut Vec<u8>, key: &str, value: &impl serde::Serialize) {
    if out.len() > 1 {
        out.push(b',');
    }
    // Serialising a string key or a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, value);
}

/// The JSON line format of the observability contract.
struct JsonFormat {
    service: String,
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Vec::with_capacity(8);
        event.record(&mut JsonVisitor(&mut fields));
        let message = fields
            .iter()
            .position(|(k, _)| *k == "message")
            .map(|i| fields.remove(i).1)
            .unwrap_or(Value::from(""));

        let mut out = Vec::with_capacity(384);
        out.push(b'{');
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        put(&mut out, "timestamp", &now);
        put(&mut out, "level", &meta.level().as_str());
        put(&mut out, "target", &meta.target());
        put(&mut out, "message", &message);

        let mut context: [Option<String>; CONTEXT_FIELDS.len()] = Default::default();
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                if let Some(found) = span.extensions().get::<ContextFields>() {
                    for (slot, value) in context.iter_mut().zip(&found.0) {
                        if slot.is_none() {
                            slot.clone_from(value);
                        }
                    }
                }
            }
        }
        if context[TRACE_ID].is_none()
            && let Some((trace_id, span_id)) = ctx.event_scope().and_then(|scope| {
                scope.into_iter().find_map(|span| {
                    let ext = span.extensions();
                    let otel = ext.get::<tracing_opentelemetry::OtelData>()?;
                    Some((otel.trace_id()?, otel.span_id()?))
                })
            })
            && trace_id != opentelemetry::TraceId::INVALID
        {
            context[TRACE_ID] = Some(trace_id.to_string());
            context[SPAN_ID] = Some(span_id.to_string());
        }
        for (name, value) in CONTEXT_FIELDS.iter().zip(&context) {
            match (*name, value) {
                (_, Some(v)) => put(&mut out, name, v),
                ("service", None) => put(&mut out, name, &self.service),
                _ => {}
            }
        }
        const RESERVED: [&str; 4] = ["timestamp", "level", "target", "message"];
        for (k, v) in &fields {
            let taken = RESERVED.contains(k)
                || CONTEXT_FIELDS
                    .iter()
                    .zip(&context)
                    .any(|(n, c)| n == k && (c.is_some() || *n == "service"));
            if !taken {
                put(&mut out, k, v);
            }
        }
        out.push(b'}');
        let text = String::from_utf8(out).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}
