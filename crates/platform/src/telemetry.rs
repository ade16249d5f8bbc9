//! Logs and traces.
//!
//! One JSON object per line on stdout with `timestamp`, `level`, `target`,
//! `message`, `service`, `request_id`, `trace_id`, `span_id` and `tenant`
//! (where known), plus the event's own fields. Spans always get W3C trace
//! context (so `traceparent` is continued and propagated, and log lines carry
//! trace and span ids, even without an exporter). With an OTLP endpoint
//! configured, spans go through OpenTelemetry's tracing layer and are
//! exported over OTLP (gRPC, or HTTP/protobuf). Without one, that layer
//! (which builds every span's data for export) is not installed: the context
//! layer here gives each span its ids, generated as the SDK does, and nothing
//! else.
//! Warnings and errors are attached to their span as span events; info
//! events (such as each request's "request completed" line, whose facts the
//! span itself carries) go to the log only.

use std::fmt;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, TraceContextExt as _, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, SdkTracerProvider};
use smallvec::SmallVec;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtelConfig, OtlpProtocol};
use crate::text::lower_hex;
pub use crate::text::needs_json_escape;

/// Span fields copied onto every log line emitted inside the span.
const CONTEXT_FIELDS: [&str; 5] = ["service", "request_id", "trace_id", "span_id", "tenant"];
/// Each of [`CONTEXT_FIELDS`] as written before its value on a line.
const CONTEXT_KEYS: [&[u8]; 5] = [
    b",\"service\":",
    b",\"request_id\":",
    b",\"trace_id\":",
    b",\"span_id\":",
    b",\"tenant\":",
];

/// Where `name` sits in [`CONTEXT_FIELDS`] (a `match` on the name: its
/// length first, then at most one comparison).
fn context_slot(name: &str) -> Option<usize> {
    match name {
        "service" => Some(0),
        "request_id" => Some(1),
        "trace_id" => Some(TRACE_ID),
        "span_id" => Some(SPAN_ID),
        "tenant" => Some(4),
        _ => None,
    }
}
/// Where `trace_id` and `span_id` sit in [`CONTEXT_FIELDS`]; unless a span
/// sets them as fields, they come from the innermost span's trace context.
const TRACE_ID: usize = 2;
const SPAN_ID: usize = 3;

/// What [`init`] needs to know.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The `service` field of log lines outside any request (a request span
    /// may carry its own, as in `madbase dev` where four services share a process).
    pub service: String,
    /// The tracing filter directive (`MADBASE_LOG`).
    pub log_filter: String,
    /// JSON or pretty log lines (`MADBASE_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Trace export settings.
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
    let export = cfg.otel.endpoint.is_some();
    let provider = builder.build();
    let tracer = provider.tracer("madbase");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_new(&cfg.log_filter)
        .with_context(|| format!("MADBASE_LOG: {:?} is not a valid filter", cfg.log_filter))?;
    // Nothing here reads OpenTelemetry's own current context (propagation
    // and log lines read the span's data), so entering a span does not
    // activate one; spans carry no busy/idle timing nor thread attributes.
    // Each of those cost work on every poll of every instrumented future.
    let otel_layer = export.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(
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
            )
    });
    // MADBASE_LOG filters log lines only: request spans (traces, trace
    // propagation, the log context) stay on whatever the log level is.
    let fmt_layer = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(NoSpanFields)
            .event_format(JsonFormat {
                service: cfg.service.clone(),
            })
            .with_writer(LogWriter)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(LogWriter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        // Unfiltered: a per-layer filter would be consulted on every enter
        // and exit of every span; the layer checks the level itself, once
        // per span.
        .with(ContextLayer {
            local_trace: !export,
        })
        .with(fmt_layer)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// How many bytes of log lines a runtime worker thread keeps before it
/// writes them (about a hundred request lines).
const LOG_BUFFER_BYTES: usize = 32 * 1024;

thread_local! {
    /// Set on a runtime worker thread once it has parked (see
    /// [`buffer_log_lines`]); other threads write each line at once.
    static BUFFERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LOG_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes the runtime's worker threads write their log lines in batches:
/// a worker keeps its lines and writes them, with one `write` to stdout,
/// when it is about to park (it has nothing else to do), when it has
/// [`LOG_BUFFER_BYTES`], and when it stops. Under load that is one system
/// call for many requests' lines instead of one per line (as nginx's
/// `access_log … buffer=`); when idle, a line is written as soon as its
/// request is done. Lines of other threads (the runtime's blocking pool,
/// `block_on`'s thread) are written at once. A process killed with SIGKILL
/// loses what its workers had not written yet; a stopping runtime writes it.
pub fn buffer_log_lines(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .on_thread_park(|| {
            BUFFERING.set(true);
            flush_log_buffer();
        })
        .on_thread_stop(|| {
            BUFFERING.set(false);
            flush_log_buffer();
        })
}

/// Writes this thread's kept log lines to stdout.
fn flush_log_buffer() {
    use std::io::Write as _;
    LOG_BUFFER.with_borrow_mut(|buffer| {
        if !buffer.is_empty() {
            // Nowhere to report a failed write of the log itself.
            let _ = std::io::stdout().lock().write_all(buffer);
            buffer.clear();
        }
    });
}

/// The log writer: each formatted line is written to stdout, or kept in
/// the thread's buffer on a runtime worker (see [`buffer_log_lines`]).
struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

impl std::io::Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if !BUFFERING.get() {
            return std::io::stdout().lock().write(line);
        }
        let full = LOG_BUFFER.with_borrow_mut(|buffer| {
            buffer.extend_from_slice(line);
            buffer.len() >= LOG_BUFFER_BYTES
        });
        if full {
            flush_log_buffer();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if BUFFERING.get() {
            Ok(())
        } else {
            std::io::stdout().lock().flush()
        }
    }
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
        if let Some(i) = context_slot(field.name()) {
            self.0[i] = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(i) = context_slot(field.name()) {
            self.0[i] = Some(format!("{value:?}"));
        }
    }
}

/// A span's W3C trace context, kept by [`ContextLayer`] when spans are not
/// exported (OpenTelemetry's layer keeps it otherwise).
#[derive(Debug, Clone)]
struct LocalTrace(SpanContext);

impl LocalTrace {
    /// A new span's context: a fresh span id in its parent's trace (same
    /// sampling flag and trace state), or a new sampled trace at the root,
    /// as the SDK's default (parent-based, always-on) sampler decides.
    fn child_of(parent: Option<&SpanContext>) -> Self {
        let ids = RandomIdGenerator::default();
        LocalTrace(match parent.filter(|p| p.is_valid()) {
            Some(p) => SpanContext::new(
                p.trace_id(),
                ids.new_span_id(),
                p.trace_flags() & TraceFlags::SAMPLED,
                false,
                p.trace_state().clone(),
            ),
            None => SpanContext::new(
                ids.new_trace_id(),
                ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
        })
    }
}

/// Runs `f` on `span`'s [`LocalTrace`], if it has one.
fn with_local_trace<R>(span: &tracing::Span, f: impl FnOnce(&mut LocalTrace) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let data = registry.span(id)?;
        let mut ext = data.extensions_mut();
        ext.get_mut::<LocalTrace>().map(f)
    })
    .flatten()
}

/// The W3C trace context of `span` (None for a span without one, such as
/// a span below INFO or one made while no telemetry is installed).
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if let Some(sc) = with_local_trace(span, |t| t.0.clone()) {
        return Some(sc);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` continue the trace of `parent` (an extracted remote
/// context): its trace id, sampling flag and trace state. An invalid
/// `parent` leaves `span` the root of its own trace. Call it before the
/// span's context is first read (OpenTelemetry's layer fixes the context
/// then).
pub fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    let remote = parent.span().span_context().clone();
    let local = with_local_trace(span, |t| {
        if remote.is_valid() {
            t.0 = SpanContext::new(
                remote.trace_id(),
                t.0.span_id(),
                remote.trace_flags() & TraceFlags::SAMPLED,
                false,
                remote.trace_state().clone(),
            );
        }
    });
    if local.is_none() {
        // Spans are exported: OpenTelemetry's layer keeps their context.
        let _ = span.set_parent(parent);
    }
}

/// Keeps each span's context fields (spans at INFO or above) so the
/// formatter can put them on every line without re-parsing formatted span
/// fields, and, when spans are not exported (`local_trace`), gives each
/// such span its W3C trace context.
struct ContextLayer {
    local_trace: bool,
}

impl<S> Layer<S> for ContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    /// Without this hint the subscriber's maximum level would be TRACE (see
    /// the OpenTelemetry layer's filter in [`init`]).
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if *attrs.metadata().level() > Level::INFO {
            return;
        }
        let mut fields = ContextFields::default();
        attrs.record(&mut fields);
        let has_fields = fields.0.iter().any(Option::is_some);
        let trace = self.local_trace.then(|| {
            // The parent as tracing sees it (explicit, or the current span),
            // and its nearest ancestor with a trace context.
            let parent = match attrs.parent() {
                Some(p) => ctx.span(p),
                None if attrs.is_contextual() => ctx.lookup_current(),
                None => None,
            };
            let inherited = parent.and_then(|p| {
                p.scope()
                    .find_map(|s| s.extensions().get::<LocalTrace>().map(|t| t.0.clone()))
            });
            LocalTrace::child_of(inherited.as_ref())
        });
        if (has_fields || trace.is_some())
            && let Some(span) = ctx.span(id)
        {
            let mut ext = span.extensions_mut();
            if has_fields {
                ext.insert(fields);
            }
            if let Some(trace) = trace {
                ext.insert(trace);
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if *span.metadata().level() > Level::INFO {
            return;
        }
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

/// Writes an event's fields as `,"name":value` into `out`, except the
/// message (written as text into `message`: it comes first) and the names
/// in `skip`.
struct JsonFields<'a> {
    out: &'a mut Vec<u8>,
    message: &'a mut String,
    skip: &'a [&'a str],
}

impl JsonFields<'_> {
    /// Whether the line has its own `name` (only the line's keys and the
    /// context fields can be in `skip`: one `match` rules out the rest).
    fn skipped(&self, name: &str) -> bool {
        (context_slot(name).is_some()
            || matches!(name, "timestamp" | "level" | "target" | "message"))
            && self.skip.contains(&name)
    }

    fn put(&mut self, field: &Field, value: &(impl serde::Serialize + ?Sized)) {
        if !self.skipped(field.name()) {
            put(self.out, field.name(), value);
        }
    }

    fn put_str(&mut self, field: &Field, value: &str) {
        if !self.skipped(field.name()) {
            put_str(self.out, field.name(), value);
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.clear();
            self.message.push_str(value);
        } else {
            self.put_str(field, value);
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, &value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json writes a non-finite float as null.
        self.put(field, &value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put_str(field, &value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            // The message as text, without a String of its own (a
            // `format_args!` message writes its pieces straight in).
            self.message.clear();
            let _ = write!(self.message, "{value:?}");
        } else {
            self.put_str(field, &format!("{value:?}"));
        }
    }
}

/// Appends `,"key":<value>` to a JSON object being written.
fn put(out: &mut Vec<u8>, key: &str, value: &(impl serde::Serialize + ?Sized)) {
    out.push(b',');
    put_json_str(out, key);
    out.push(b':');
    // Serialising a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Appends `,"key":"value"`.
fn put_str(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    put_json_str(out, key);
    out.push(b':');
    put_json_str(out, value);
}

/// Appends `s` as a JSON string: copied as is when nothing in it needs
/// escaping (the usual case), else escaped by serde_json.
fn put_json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_json_escape(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends `key` (`,"name":`, written as is) and `"value"`.
fn put_keyed_str(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    put_json_str(out, value);
}

/// Appends `key` (`,"name":`, written as is) and `"<hex of bytes>"`.
fn put_hex<const N: usize>(out: &mut Vec<u8>, key: &[u8], bytes: [u8; N]) {
    out.extend_from_slice(key);
    out.push(b'"');
    let start = out.len();
    out.resize(start + 2 * N, 0);
    lower_hex(&bytes, &mut out[start..]);
    out.push(b'"');
}

/// Appends `now` as RFC 3339 UTC with microseconds
/// (`2026-11-26T21:02:39.610704Z`). The part up to the seconds is formatted
/// once per second per thread.
fn put_timestamp(out: &mut Vec<u8>, now: chrono::DateTime<chrono::Utc>) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<((i64, bool), String)> =
            const { RefCell::new(((i64::MIN, false), String::new())) };
    }
    // A leap second shows as :60 with the fraction of the second (chrono
    // keeps it as a sub-second part of a second or more).
    let micros = now.timestamp_subsec_micros();
    let key = (now.timestamp(), micros >= 1_000_000);
    let micros = micros % 1_000_000;
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != key {
            *second = key;
            *prefix = now.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        out.extend_from_slice(prefix.as_bytes());
    });
    let mut digits = *b".000000Z";
    let mut rest = micros;
    for d in digits[1..7].iter_mut().rev() {
        // A digit: below 10.
        *d = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
    out.extend_from_slice(&digits);
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
        // The innermost span's value of each context field (the spans'
        // extensions stay borrowed while the line is written), and the
        // trace and span ids of the innermost span that has them.
        let spans: SmallVec<[_; 4]> = ctx.event_scope().into_iter().flatten().collect();
        let extensions: SmallVec<[_; 4]> = spans.iter().map(|s| s.extensions()).collect();
        let mut context: [Option<&str>; CONTEXT_FIELDS.len()] = Default::default();
        let mut trace = None;
        for ext in &extensions {
            if let Some(found) = ext.get::<ContextFields>() {
                for (slot, value) in context.iter_mut().zip(&found.0) {
                    if slot.is_none() {
                        *slot = value.as_deref();
                    }
                }
            }
            if trace.is_none() {
                trace = match ext.get::<LocalTrace>() {
                    Some(local) => Some((local.0.trace_id(), local.0.span_id())),
                    None => ext
                        .get::<tracing_opentelemetry::OtelData>()
                        .and_then(|otel| otel.trace_id().zip(otel.span_id())),
                }
                .filter(|(t, _)| *t != opentelemetry::TraceId::INVALID);
            }
        }
        // Span fields named trace_id/span_id take precedence over the
        // trace context's ids.
        if context[TRACE_ID].is_some() {
            trace = None;
        }

        // Event fields may not replace the line's own keys nor a context
        // field the line has.
        let mut skip: SmallVec<[&str; 10]> =
            SmallVec::from_slice(&["timestamp", "level", "target", "message", "service"]);
        skip.extend(
            CONTEXT_FIELDS
                .iter()
                .zip(&context)
                .enumerate()
                .filter(|(i, (_, v))| {
                    v.is_some() || (trace.is_some() && (*i == TRACE_ID || *i == SPAN_ID))
                })
                .map(|(_, (n, _))| *n),
        );
        // The line is built in this thread's scratch buffers (a line logged
        // while one is being formatted gets buffers of its own).
        thread_local! {
            static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>, String)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new(), String::new())) };
        }
        let mut write = |(own, out, message): &mut (Vec<u8>, Vec<u8>, String)| {
            own.clear();
            out.clear();
            message.clear();
            let mut fields = JsonFields {
                out: own,
                message,
                skip: &skip,
            };
            event.record(&mut fields);

            out.extend_from_slice(b"{\"timestamp\":\"");
            put_timestamp(out, chrono::Utc::now());
            out.push(b'"');
            put_keyed_str(out, b",\"level\":", meta.level().as_str());
            put_keyed_str(out, b",\"target\":", meta.target());
            put_keyed_str(out, b",\"message\":", message);
            for (i, (key, value)) in CONTEXT_KEYS.iter().zip(&context).enumerate() {
                match (value, trace) {
                    (Some(v), _) => put_keyed_str(out, key, v),
                    (None, Some((t, _))) if i == TRACE_ID => put_hex(out, key, t.to_bytes()),
                    (None, Some((_, s))) if i == SPAN_ID => put_hex(out, key, s.to_bytes()),
                    (None, _) if i == 0 => put_keyed_str(out, key, &self.service),
                    _ => {}
                }
            }
            out.extend_from_slice(own);
            out.extend_from_slice(b"}\n");
            let text = std::str::from_utf8(out).map_err(|_| fmt::Error)?;
            writer.write_str(text)
        };
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buffers) => write(&mut buffers),
            Err(_) => write(&mut Default::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TraceId};

    use super::*;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The subscriber [`init`] installs, writing to `buffer`: with spans
    /// exported through OpenTelemetry's layer, or (`local_trace`) not.
    fn subscriber(local_trace: bool, buffer: &Buffer) -> impl Subscriber + Send + Sync {
        let writer = buffer.clone();
        let provider = SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with((!local_trace).then(|| {
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_context_activation(false)
            }))
            .with(ContextLayer { local_trace })
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(NoSpanFields)
                    .event_format(JsonFormat {
                        service: "svc".into(),
                    })
                    .with_writer(move || writer.clone()),
            )
    }

    #[test]
    fn context_keys_and_slots_follow_the_context_fields() {
        for (i, name) in CONTEXT_FIELDS.iter().enumerate() {
            assert_eq!(CONTEXT_KEYS[i], format!(",\"{name}\":").as_bytes());
            assert_eq!(context_slot(name), Some(i));
        }
        assert_eq!(context_slot("status"), None);
    }

    #[test]
    fn timestamps_are_rfc3339_micros_as_chrono_writes_them() {
        use chrono::TimeZone as _;
        let base = chrono::Utc
            .with_ymd_and_hms(2026, 11, 26, 23, 59, 59)
            .single()
            .expect("time");
        for (offset_micros, leap) in [
            (0, false),
            (1, false),
            (999_999, false),
            (1_000_000, false),
            (10_000_000_000, false),
            (450_120, true),
        ] {
            let mut t = base + chrono::Duration::microseconds(offset_micros);
            if leap {
                // A leap second: chrono keeps it as nanoseconds ≥ 1e9.
                t = chrono::Utc
                    .timestamp_opt(base.timestamp(), 1_450_120_000)
                    .single()
                    .expect("leap");
            }
            let mut out = Vec::new();
            put_timestamp(&mut out, t);
            let expected = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(expected.contains(":60."), leap);
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
        }
    }

    #[test]
    fn json_lines_carry_span_context_and_escape_values() {
        for local_trace in [true, false] {
            json_lines(local_trace);
        }
    }

    fn json_lines(local_trace: bool) {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(subscriber(local_trace, &buffer), || {
            tracing::info!(count = 3_u64, "outside \"any\" span");
            let span = tracing::info_span!(
                "request",
                request_id = "rid-1",
                tenant = tracing::field::Empty
            );
            span.record("tenant", "acme");
            // As `observe` does for each request span (OpenTelemetry's layer
            // builds a span's context on the first read).
            assert!(span_context(&span).is_some());
            span.in_scope(|| {
                tracing::warn!(
                    level = "not the level",
                    tenant = "not the tenant",
                    text = "line\nbreak \\ \u{1}",
                    ratio = f64::NAN,
                    ok = true,
                    "in {}",
                    "span"
                );
            });
        });

        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let outside = &lines[0];
        assert_eq!(outside["message"], "outside \"any\" span");
        assert_eq!(outside["service"], "svc");
        assert_eq!(outside["level"], "INFO");
        assert_eq!(outside["count"], 3);
        assert!(outside.get("request_id").is_none() && outside.get("trace_id").is_none());

        let inside = &lines[1];
        assert_eq!(inside["message"], "in span");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["request_id"], "rid-1");
        assert_eq!(inside["tenant"], "acme");
        assert_eq!(inside["service"], "svc");
        assert_eq!(inside["text"], "line\nbreak \\ \u{1}");
        assert_eq!(inside["ratio"], serde_json::Value::Null);
        assert_eq!(inside["ok"], true);
        let trace_id = inside["trace_id"].as_str().expect("trace_id");
        let span_id = inside["span_id"].as_str().expect("span_id");
        assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(span_id.len() == 16 && span_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(trace_id, "0".repeat(32));
        assert!(
            inside["timestamp"]
                .as_str()
                .expect("timestamp")
                .ends_with('Z')
        );
    }

    /// Both ways of keeping trace context (OpenTelemetry's layer when
    /// spans are exported, [`LocalTrace`] when not) continue an incoming
    /// trace the same way: its trace id, sampling flag and trace state, a
    /// span id of their own; children inherit the trace; log lines carry
    /// the innermost span's ids; an invalid parent leaves a root alone.
    #[test]
    fn trace_context_is_continued_and_inherited() {
        for local_trace in [true, false] {
            let buffer = Buffer::default();
            let remote = |flags| {
                SpanContext::new(
                    TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
                    SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
                    flags,
                    true,
                    TraceState::from_key_value([("congo", "t61rcWkgMzE")]).expect("state"),
                )
            };
            let parent = |sc| opentelemetry::Context::new().with_remote_span_context(sc);
            let child_cx =
                tracing::subscriber::with_default(subscriber(local_trace, &buffer), || {
                    let fresh = tracing::info_span!("request");
                    let own = span_context(&fresh).expect("a root span has a context");
                    assert!(own.is_sampled(), "{local_trace}");
                    assert_ne!(own.trace_id(), remote(TraceFlags::SAMPLED).trace_id());

                    let root = tracing::info_span!("request");
                    set_parent(&root, parent(remote(TraceFlags::SAMPLED)));
                    let continued = span_context(&root).expect("context");
                    assert_eq!(continued.trace_id(), remote(TraceFlags::SAMPLED).trace_id());
                    assert_ne!(continued.span_id(), remote(TraceFlags::SAMPLED).span_id());
                    assert!(continued.is_sampled(), "{local_trace}");
                    assert_eq!(continued.trace_state().header(), "congo=t61rcWkgMzE");

                    let child = root.in_scope(|| tracing::info_span!("child"));
                    let child_cx = span_context(&child).expect("context");
                    assert_eq!(child_cx.trace_id(), continued.trace_id());
                    assert_ne!(child_cx.span_id(), continued.span_id());
                    child.in_scope(|| tracing::info!("in child"));

                    let unsampled = tracing::info_span!("request");
                    set_parent(&unsampled, parent(remote(TraceFlags::default())));
                    let cx = span_context(&unsampled).expect("context");
                    assert!(!cx.is_sampled(), "{local_trace}");
                    assert_eq!(cx.trace_id(), continued.trace_id());

                    let lone = tracing::info_span!("request");
                    set_parent(&lone, opentelemetry::Context::new());
                    let cx = span_context(&lone).expect("a root's context");
                    assert!(cx.is_sampled(), "{local_trace}");
                    assert_ne!(cx.trace_id(), continued.trace_id());
                    child_cx
                });
            let lines = lines(&buffer);
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(lines[0]["span_id"], child_cx.span_id().to_string());
        }
    }
}
