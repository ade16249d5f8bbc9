//! One function's runtime: a QuickJS `Runtime` + `Context` with the prelude
//! and the tenant's module evaluated once, then invoked per request.
//!
//! The event loop is ours: microtasks run through the engine's job queue,
//! timers live in the prelude (JavaScript asks Rust how long to sleep), and
//! `fetch` sub-requests run on the worker's [`Net`]. CPU time is the wall
//! time spent inside the engine (the worker is single-threaded), enforced
//! by the interrupt handler.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rquickjs::function::Opt;
use rquickjs::promise::PromiseState;
use rquickjs::{
    Context, Ctx, Error as JsError, Exception, Function, IntoJs as _, Module, Object, Persistent,
    Promise, Runtime, TypedArray, Value,
};

use crate::fetch::{FetchRequest, FetchResult, Net};
use crate::protocol::{Limits, LogLine};

/// The prelude: Web APIs written in JavaScript over the natives below.
const PRELUDE: &str = include_str!("prelude.js");

/// Maximum stack size of a function's runtime.
const STACK_LIMIT: usize = 1024 * 1024;
/// `console.*` output kept per invocation (the reply's header is bounded).
const MAX_LOG_BYTES: usize = 1024 * 1024;
/// Unhandled rejections tracked per invocation at most.
const MAX_REJECTIONS: usize = 100;
/// One log line is cut to this many bytes.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Why running JavaScript stopped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Cpu,
    Memory,
    /// An uncaught exception, with its message.
    Exception(String),
    /// The engine failed outside JavaScript (a bug or a broken runtime).
    Engine(String),
}

/// What the handler answered.
#[derive(Debug)]
pub(crate) enum Answer {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    NoHandler,
    BadResponse(String),
    FetchLimit(String),
}

/// CPU accounting of the current invocation, shared with the interrupt handler.
#[derive(Debug, Default)]
struct Meter {
    budget: Cell<Duration>,
    used: Cell<Duration>,
    since: Cell<Option<Instant>>,
    tripped: Cell<bool>,
}

impl Meter {
    fn reset(&self, budget: Duration) {
        self.budget.set(budget);
        self.used.set(Duration::ZERO);
        self.since.set(None);
        self.tripped.set(false);
    }
    fn start(&self) {
        self.since.set(Some(Instant::now()));
    }
    fn stop(&self) {
        if let Some(since) = self.since.take() {
            self.used.set(self.used.get() + since.elapsed());
        }
    }
    /// The interrupt handler: true stops the running JavaScript (uncatchable).
    fn interrupt(&self) -> bool {
        if self.tripped.get() {
            return true;
        }
        if let Some(since) = self.since.get()
            && self.used.get() + since.elapsed() > self.budget.get()
        {
            self.tripped.set(true);
            return true;
        }
        false
    }
}

/// State the natives share with the worker for the current invocation.
#[derive(Debug, Default)]
struct Shared {
    logs: RefCell<Vec<LogLine>>,
    log_bytes: Cell<usize>,
    log_dropped: Cell<usize>,
    fetch: RefCell<FetchQueue>,
    /// Promises rejected with no handler yet (reported at the end of the
    /// invocation unless one is attached meanwhile). Cleared before the
    /// runtime is dropped.
    rejections: RefCell<Vec<(Persistent<Value<'static>>, String)>>,
}

#[derive(Debug, Default)]
struct FetchQueue {
    next_id: u32,
    started: u32,
    max_fetches: u32,
    start: Vec<(u32, FetchRequest)>,
    cancel: Vec<u32>,
}

impl Shared {
    fn log(&self, level: String, mut message: String) {
        if self.log_bytes.get() + message.len() > MAX_LOG_BYTES {
            self.log_dropped.set(self.log_dropped.get() + 1);
            return;
        }
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("… (truncated)");
        }
        self.log_bytes.set(self.log_bytes.get() + message.len());
        self.logs.borrow_mut().push(LogLine { level, message });
    }

    fn take_logs(&self) -> Vec<LogLine> {
        let rejections = std::mem::take(&mut *self.rejections.borrow_mut());
        for (_, message) in rejections {
            self.log(
                "error".to_owned(),
                format!("Uncaught (in promise) {message}"),
            );
        }
        let mut logs = std::mem::take(&mut *self.logs.borrow_mut());
        let dropped = self.log_dropped.replace(0);
        if dropped > 0 {
            logs.push(LogLine {
                level: "warn".to_owned(),
                message: format!("{dropped} console lines dropped (over {MAX_LOG_BYTES} bytes)"),
            });
        }
        self.log_bytes.set(0);
        logs
    }
}

/// What a runtime evaluates: the module's source, or its bytecode as
/// [`compile`] wrote it (the build tag already checked and removed).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Code<'a> {
    Source(&'a str),
    Bytecode(&'a [u8]),
}

/// Reads a module's bytecode (the prelude's, or the host's with the tag
/// checked by [`untag`]).
#[allow(unsafe_code)]
fn load_bytecode<'js>(ctx: &Ctx<'js>, bytecode: &[u8]) -> rquickjs::Result<Module<'js>> {
    // SAFETY: `Module::load` trusts its input. `bytecode` is the prelude
    // this process compiled, or comes from the host (the functions
    // service, over this worker's stdin), which wrote it with `compile` of
    // a build whose tag [`untag`] found equal to this one's: the same
    // QuickJS wrote it. Tenants never supply it.
    unsafe { Module::load(ctx.clone(), bytecode) }
}

/// The prelude as a module (`export default` of its function), compiled
/// once per process: a new runtime loads it instead of parsing ~60 KiB.
/// `None` (then the source is evaluated) if it does not compile.
fn prelude_bytecode() -> Option<&'static [u8]> {
    static PRELUDE_BYTECODE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    PRELUDE_BYTECODE
        .get_or_init(|| {
            // Same lines as the script: `export default` before its first
            // line (a comment).
            compile_raw("madbase:prelude", &format!("export default {PRELUDE}")).ok()
        })
        .as_deref()
}

/// Length of the build tag in front of a compiled module.
const TAG_LEN: usize = 32;

/// This build's tag: SHA-256 of this crate's version and the bytecode this
/// QuickJS writes for a probe module, so bytecode of another QuickJS (or
/// another madbase) is refused and the worker asks for the source.
fn build_tag() -> &'static [u8; TAG_LEN] {
    static TAG: std::sync::OnceLock<[u8; TAG_LEN]> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let probe = compile_raw(
            "madbase:probe",
            "export const probe = [1, 'a', 2.5, { b: null }, () => 2, class P {}];\n",
        )
        .unwrap_or_default();
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        d.update(env!("CARGO_PKG_VERSION").as_bytes());
        d.update(&(usize::BITS).to_le_bytes());
        d.update(&probe);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(d.finish().as_ref());
        tag
    })
}

/// The module's bytecode without tag, in a fresh runtime with a memory limit.
fn compile_raw(name: &str, source: &str) -> Result<Vec<u8>, String> {
    let rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    rt.set_memory_limit(crate::CHECK_MEMORY_LIMIT);
    rt.set_max_stack_size(STACK_LIMIT);
    let ctx = Context::full(&rt).map_err(|e| format!("context: {e}"))?;
    ctx.with(|ctx| {
        Module::declare(ctx.clone(), name, source)
            .and_then(|m| m.write(rquickjs::WriteOptions::default()))
            .map_err(|e| {
                let caught = ctx.catch();
                format!("{e}: {}", describe(&caught))
            })
    })
}

/// Compiles `source` as the module `name` (not run): this build's tag and
/// the module's bytecode.
pub(crate) fn compile(name: &str, source: &str) -> Result<Vec<u8>, String> {
    let bytecode = compile_raw(name, source)?;
    let mut out = Vec::with_capacity(TAG_LEN + bytecode.len());
    out.extend_from_slice(build_tag());
    out.extend_from_slice(&bytecode);
    Ok(out)
}

/// The bytecode of a compiled module when this build wrote it.
pub(crate) fn untag(compiled: &[u8]) -> Option<&[u8]> {
    compiled
        .strip_prefix(build_tag().as_slice())
        .filter(|b| !b.is_empty())
}

/// A function's runtime. Field order matters: the persistent values must be
/// dropped before the context and the runtime.
pub(crate) struct FnRuntime {
    internal: Persistent<Object<'static>>,
    ctx: Context,
    rt: Runtime,
    shared: Rc<Shared>,
    meter: Rc<Meter>,
    /// The last invocation's URL as sent and as WHATWG-normalised (a warm
    /// function is mostly called at the same URL).
    last_url: Option<(String, String)>,
}

impl Drop for FnRuntime {
    fn drop(&mut self) {
        // Persistent values must not outlive the runtime.
        self.shared.rejections.borrow_mut().clear();
    }
}

impl std::fmt::Debug for FnRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnRuntime").finish_non_exhaustive()
    }
}

/// Bytes from a "binary string" (one char per byte, as the prelude sends them).
fn latin1_bytes(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

fn url_parts(u: &url::Url) -> Vec<String> {
    use url::quirks;
    vec![
        quirks::href(u).to_owned(),
        quirks::protocol(u).to_owned(),
        quirks::username(u).to_owned(),
        quirks::password(u).to_owned(),
        quirks::host(u).to_owned(),
        quirks::hostname(u).to_owned(),
        quirks::port(u).to_owned(),
        quirks::pathname(u).to_owned(),
        quirks::search(u).to_owned(),
        quirks::hash(u).to_owned(),
        quirks::origin(u),
    ]
}

fn url_parse(input: &str, base: Option<&str>) -> Option<url::Url> {
    match base {
        Some(base) => url::Url::parse(base).ok()?.join(input).ok(),
        None => url::Url::parse(input).ok(),
    }
}

/// The setter of a `URL` attribute; `None` when the new href does not parse.
fn url_set(href: &str, name: &str, value: &str) -> Option<url::Url> {
    use url::quirks;
    let mut u = url::Url::parse(href).ok()?;
    match name {
        "href" => quirks::set_href(&mut u, value).ok()?,
        "protocol" => {
            let _ = quirks::set_protocol(&mut u, value);
        }
        "username" => {
            let _ = quirks::set_username(&mut u, value);
        }
        "password" => {
            let _ = quirks::set_password(&mut u, value);
        }
        "host" => {
            let _ = quirks::set_host(&mut u, value);
        }
        "hostname" => {
            let _ = quirks::set_hostname(&mut u, value);
        }
        "port" => {
            let _ = quirks::set_port(&mut u, value);
        }
        "pathname" => quirks::set_pathname(&mut u, value),
        "search" => quirks::set_search(&mut u, value),
        "hash" => quirks::set_hash(&mut u, value),
        _ => {}
    }
    Some(u)
}

fn utf8_decode(bytes: &[u8], fatal: bool, ignore_bom: bool) -> Result<String, ()> {
    let bytes = if !ignore_bom && bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        &bytes[3..]
    } else {
        bytes
    };
    if fatal {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ())
    } else {
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

fn digest_algorithm(name: &str) -> Option<&'static ring::digest::Algorithm> {
    match name {
        "SHA-1" => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        "SHA-256" => Some(&ring::digest::SHA256),
        "SHA-384" => Some(&ring::digest::SHA384),
        "SHA-512" => Some(&ring::digest::SHA512),
        _ => None,
    }
}

fn hmac_algorithm(name: &str) -> Option<ring::hmac::Algorithm> {
    match name {
        "SHA-1" => Some(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        "SHA-256" => Some(ring::hmac::HMAC_SHA256),
        "SHA-384" => Some(ring::hmac::HMAC_SHA384),
        "SHA-512" => Some(ring::hmac::HMAC_SHA512),
        _ => None,
    }
}

/// The `native` object the prelude is called with.
fn natives<'js>(
    ctx: &Ctx<'js>,
    shared: &Rc<Shared>,
    test_hooks: bool,
) -> rquickjs::Result<Object<'js>> {
    let native = Object::new(ctx.clone())?;
    let s = shared.clone();
    native.set(
        "log",
        Function::new(ctx.clone(), move |level: String, message: String| {
            s.log(level, message);
        })?,
    )?;
    native.set(
        "utf8Encode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, s: String| {
            TypedArray::<u8>::new(ctx, s.into_bytes())
        })?,
    )?;
    native.set(
        "utf8Decode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, s: String, fatal: bool, ignore_bom: bool| {
                utf8_decode(&latin1_bytes(&s), fatal, ignore_bom).map_err(|()| {
                    Exception::throw_type(&ctx, "The encoded data was not valid for encoding utf-8")
                })
            },
        )?,
    )?;
    native.set(
        "randomBytes",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, n: usize| {
            let mut buf = vec![0u8; n.min(65536)];
            getrandom::fill(&mut buf)
                .map_err(|e| Exception::throw_internal(&ctx, &format!("getrandom: {e}")))?;
            TypedArray::<u8>::new(ctx, buf)
        })?,
    )?;
    native.set(
        "digest",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, alg: String, data: String| {
            let alg = digest_algorithm(&alg).ok_or_else(|| {
                Exception::throw_dom(
                    &ctx,
                    "NotSupportedError",
                    &format!("digest: unsupported algorithm {alg}"),
                )
            })?;
            let out = ring::digest::digest(alg, &latin1_bytes(&data));
            TypedArray::<u8>::new(ctx, out.as_ref().to_vec())
        })?,
    )?;
    native.set(
        "hmacSign",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, alg: String, key: String, data: String| {
                let alg = hmac_algorithm(&alg).ok_or_else(|| {
                    Exception::throw_dom(
                        &ctx,
                        "NotSupportedError",
                        &format!("HMAC: unsupported hash {alg}"),
                    )
                })?;
                let key = ring::hmac::Key::new(alg, &latin1_bytes(&key));
                let tag = ring::hmac::sign(&key, &latin1_bytes(&data));
                TypedArray::<u8>::new(ctx, tag.as_ref().to_vec())
            },
        )?,
    )?;
    native.set(
        "hmacVerify",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, alg: String, key: String, signature: String, data: String| {
                let alg = hmac_algorithm(&alg).ok_or_else(|| {
                    Exception::throw_dom(
                        &ctx,
                        "NotSupportedError",
                        &format!("HMAC: unsupported hash {alg}"),
                    )
                })?;
                let key = ring::hmac::Key::new(alg, &latin1_bytes(&key));
                // Constant time (ring).
                Ok::<_, JsError>(
                    ring::hmac::verify(&key, &latin1_bytes(&data), &latin1_bytes(&signature))
                        .is_ok(),
                )
            },
        )?,
    )?;
    native.set(
        "urlParse",
        Function::new(ctx.clone(), |input: String, base: Opt<Option<String>>| {
            url_parse(&input, base.0.flatten().as_deref()).map(|u| url_parts(&u))
        })?,
    )?;
    native.set(
        "urlSet",
        Function::new(ctx.clone(), |href: String, name: String, value: String| {
            url_set(&href, &name, &value).map(|u| url_parts(&u))
        })?,
    )?;
    native.set(
        "formParse",
        Function::new(ctx.clone(), |s: String| {
            let mut flat = Vec::new();
            for (k, v) in form_urlencoded::parse(s.as_bytes()) {
                flat.push(k.into_owned());
                flat.push(v.into_owned());
            }
            flat
        })?,
    )?;
    native.set(
        "formSerialize",
        Function::new(ctx.clone(), |flat: Vec<String>| {
            let mut out = form_urlencoded::Serializer::new(String::new());
            for pair in flat.chunks(2) {
                if let [k, v] = pair {
                    out.append_pair(k, v);
                }
            }
            out.finish()
        })?,
    )?;
    let s = shared.clone();
    native.set(
        "fetchStart",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  method: String,
                  url: String,
                  headers: Vec<String>,
                  body: Option<String>,
                  binary: bool,
                  redirect: String|
                  -> rquickjs::Result<Value<'js>> {
                let mut q = s.fetch.borrow_mut();
                if q.started >= q.max_fetches {
                    let message = format!(
                        "fetch: the limit of {} sub-requests per invocation is reached",
                        q.max_fetches
                    );
                    return message.into_js(&ctx);
                }
                q.started += 1;
                q.next_id += 1;
                let id = q.next_id;
                let body = body.map(|b| {
                    if binary {
                        latin1_bytes(&b)
                    } else {
                        b.into_bytes()
                    }
                });
                let headers = headers
                    .chunks(2)
                    .filter_map(|p| match p {
                        [k, v] => Some((k.clone(), latin1_bytes(v))),
                        _ => None,
                    })
                    .collect();
                q.start.push((
                    id,
                    FetchRequest {
                        method,
                        url,
                        headers,
                        body,
                        follow_redirects: redirect == "follow",
                        error_on_redirect: redirect == "error",
                    },
                ));
                id.into_js(&ctx)
            },
        )?,
    )?;
    let s = shared.clone();
    native.set(
        "fetchCancel",
        Function::new(ctx.clone(), move |id: u32| {
            s.fetch.borrow_mut().cancel.push(id);
        })?,
    )?;
    if test_hooks {
        native.set(
            "testCrash",
            Function::new(ctx.clone(), || -> () {
                eprintln!("madbase functions-worker: __madbaseTestCrash() called, aborting");
                std::process::abort()
            })?,
        )?;
    }
    Ok(native)
}

/// The message of a caught exception value.
fn describe(value: &Value<'_>) -> String {
    if let Some(ex) = value.as_exception() {
        let message = ex.message().unwrap_or_default();
        let name: String = ex.get("name").unwrap_or_else(|_| "Error".to_owned());
        let frame = ex.stack().and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("at "))
                .map(str::to_owned)
        });
        return match frame {
            Some(frame) => format!("{name}: {message}\n{}", frame.trim_end()),
            None => format!("{name}: {message}"),
        };
    }
    if let Some(s) = value.as_string().and_then(|s| s.to_string().ok()) {
        return format!("Uncaught {s}");
    }
    format!("Uncaught {}", value.type_name())
}

fn is_out_of_memory(value: &Value<'_>) -> bool {
    value
        .as_exception()
        .and_then(|ex| ex.message())
        .is_some_and(|m| m.contains("out of memory"))
        // QuickJS throws null when it cannot even allocate the error.
        || value.is_null()
}

impl FnRuntime {
    /// A fresh runtime with the prelude evaluated.
    pub(crate) fn new(limits: &Limits, test_hooks: bool) -> Result<Self, Failure> {
        let rt = Runtime::new().map_err(|e| Failure::Engine(format!("runtime: {e}")))?;
        rt.set_memory_limit(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX));
        rt.set_max_stack_size(STACK_LIMIT);
        let meter = Rc::new(Meter::default());
        let m = meter.clone();
        rt.set_interrupt_handler(Some(Box::new(move || m.interrupt())));
        let ctx = Context::full(&rt).map_err(|e| Failure::Engine(format!("context: {e}")))?;
        let shared = Rc::new(Shared::default());
        let s = shared.clone();
        rt.set_host_promise_rejection_tracker(Some(Box::new(
            move |ctx: Ctx<'_>, promise: Value<'_>, reason: Value<'_>, handled: bool| {
                if handled {
                    s.rejections.borrow_mut().retain(|(p, _)| {
                        p.clone()
                            .restore(&ctx)
                            .map_or(true, |p: Value<'_>| p != promise)
                    });
                } else {
                    // Described before borrowing: describing may run JavaScript.
                    let message = describe(&reason);
                    let mut rejections = s.rejections.borrow_mut();
                    if rejections.len() < MAX_REJECTIONS {
                        rejections.push((Persistent::save(&ctx, promise), message));
                    }
                }
            },
        )));
        meter.reset(Duration::from_millis(limits.cpu_ms.max(1)));
        meter.start();
        let internal = ctx.with(|ctx| -> Result<_, Failure> {
            let run = || -> rquickjs::Result<Object<'_>> {
                let prelude: Function = match prelude_bytecode() {
                    Some(bytecode) => {
                        let (module, _) = load_bytecode(&ctx, bytecode)?.eval()?;
                        module.namespace()?.get("default")?
                    }
                    None => {
                        let mut options = rquickjs::context::EvalOptions::default();
                        options.filename = Some("madbase:prelude".to_owned());
                        ctx.eval_with_options(PRELUDE, options)?
                    }
                };
                let native = natives(&ctx, &shared, test_hooks)?;
                prelude.call((native,))
            };
            match run() {
                Ok(internal) => Ok(Persistent::save(&ctx, internal)),
                Err(e) => Err(Self::caught(&ctx, e, &meter)),
            }
        });
        meter.stop();
        if internal.is_err() {
            // Nothing the runtime owns may outlive it (see `Drop`).
            shared.rejections.borrow_mut().clear();
        }
        let internal = internal?;
        Ok(FnRuntime {
            internal,
            ctx,
            rt,
            shared,
            meter,
            last_url: None,
        })
    }

    /// Classifies an error of a call into the engine.
    fn caught(ctx: &Ctx<'_>, e: JsError, meter: &Meter) -> Failure {
        if meter.tripped.get() {
            return Failure::Cpu;
        }
        match e {
            JsError::Exception => {
                let value = ctx.catch();
                if meter.tripped.get() {
                    Failure::Cpu
                } else if is_out_of_memory(&value) {
                    Failure::Memory
                } else {
                    Failure::Exception(describe(&value))
                }
            }
            JsError::Allocation => Failure::Memory,
            other => Failure::Engine(other.to_string()),
        }
    }

    /// Starts an invocation's accounting: CPU budget, fetch limits, env.
    pub(crate) fn begin(
        &mut self,
        limits: &Limits,
        env: Option<&[(String, String)]>,
    ) -> Result<(), Failure> {
        self.rt
            .set_memory_limit(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX));
        self.meter
            .reset(Duration::from_millis(limits.cpu_ms.max(1)));
        {
            let mut q = self.shared.fetch.borrow_mut();
            q.started = 0;
            q.max_fetches = limits.max_fetches;
            q.start.clear();
            q.cancel.clear();
        }
        match env {
            Some(env) => self.call_internal("setEnv", (flat_clone(env),)),
            // Unchanged since the runtime's last invocation.
            None => Ok(()),
        }
    }

    /// Evaluates the tenant's module (once per runtime) and registers its
    /// default export's `fetch` when `Deno.serve` was not called.
    pub(crate) fn load(
        &mut self,
        name: &str,
        code: Code<'_>,
        net: &mut Net,
    ) -> Result<(), Failure> {
        self.meter.start();
        let started = self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<(Persistent<Promise<'static>>, Persistent<Object<'static>>)> {
                let module = match code {
                    Code::Source(source) => Module::declare(ctx.clone(), name, source)?,
                    Code::Bytecode(bytecode) => load_bytecode(&ctx, bytecode)?,
                };
                let (module, promise) = module.eval()?;
                let namespace = module.namespace()?;
                Ok((Persistent::save(&ctx, promise), Persistent::save(&ctx, namespace)))
            };
            run().map_err(|e| Self::caught(&ctx, e, &self.meter))
        });
        self.meter.stop();
        let (promise, namespace) = started?;
        self.run_until_settled(&promise, net)?;
        self.meter.start();
        let done = self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<()> {
                let promise = promise.clone().restore(&ctx)?;
                if let Some(Err(e)) = promise.result::<Value>() {
                    return Err(e);
                }
                let namespace = namespace.clone().restore(&ctx)?;
                let default: Value = namespace.get("default")?;
                let internal = self.internal.clone().restore(&ctx)?;
                let set_default: Function = internal.get("setDefault")?;
                set_default.call::<_, ()>((default,))
            };
            run().map_err(|e| Self::caught(&ctx, e, &self.meter))
        });
        self.meter.stop();
        done
    }

    /// Runs the handler on one request to the end (the promise settles).
    pub(crate) fn invoke(
        &mut self,
        method: &str,
        url: &str,
        headers: &crate::protocol::HeaderList,
        body: Vec<u8>,
        net: &mut Net,
    ) -> Result<Answer, Failure> {
        self.meter.start();
        // The prelude takes these as they are (`new Request` would check
        // them): a WHATWG URL and lower-case names with trimmed values.
        if self.last_url.as_ref().is_none_or(|(sent, _)| sent != url) {
            let Some(parsed) = url_parse(url, None) else {
                self.meter.stop();
                return Err(Failure::Exception(format!(
                    "TypeError: Request: invalid URL '{url}'"
                )));
            };
            self.last_url = Some((url.to_owned(), parsed.into()));
        }
        let url = self.last_url.as_ref().map_or("", |(_, href)| href.as_str());
        // Names and values joined by NUL (which neither holds): one string
        // into the engine, split there. The host's list is that string
        // already, and is passed as it is when every header is in the form
        // `Headers` keeps (lower-case names, trimmed values: the usual case).
        let canonical = headers.iter().all(|(k, v)| {
            matches!(
                incoming_header(k, v),
                Some((Cow::Borrowed(_), Cow::Borrowed(trimmed))) if trimmed.len() == v.len()
            )
        });
        let joined: Cow<'_, str> = if canonical {
            Cow::Borrowed(headers.joined())
        } else {
            let mut joined = String::with_capacity(headers.joined().len());
            for (k, v) in headers.iter().filter_map(|(k, v)| incoming_header(k, v)) {
                if !joined.is_empty() {
                    joined.push('\0');
                }
                joined.push_str(&k);
                joined.push('\0');
                joined.push_str(&v);
            }
            Cow::Owned(joined)
        };
        let started = self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<Persistent<Promise<'static>>> {
                let internal = self.internal.clone().restore(&ctx)?;
                let invoke: Function = internal.get("invoke")?;
                let body = if body.is_empty() {
                    Value::new_null(ctx.clone())
                } else {
                    TypedArray::<u8>::new(ctx.clone(), body)?.into_value()
                };
                let promise: Promise = invoke.call((method, url, joined.as_ref(), body))?;
                Ok(Persistent::save(&ctx, promise))
            };
            run().map_err(|e| Self::caught(&ctx, e, &self.meter))
        });
        self.meter.stop();
        let promise = started?;
        self.run_until_settled(&promise, net)?;
        self.meter.start();
        let answer = self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<Result<Answer, Failure>> {
                let promise = promise.clone().restore(&ctx)?;
                let outcome: Object = match promise.result::<Object>() {
                    Some(r) => r?,
                    None => return Err(JsError::Unknown),
                };
                let kind: String = outcome.get("kind")?;
                Ok(Ok(match kind.as_str() {
                    "response" => {
                        let status: u16 = outcome.get("status")?;
                        let flat: Vec<String> = outcome.get("headers")?;
                        let headers = flat
                            .chunks(2)
                            .filter_map(|p| match p {
                                [k, v] => Some((k.clone(), v.clone())),
                                _ => None,
                            })
                            .collect();
                        let text: Option<String> = outcome.get("text")?;
                        let binary: Option<String> = outcome.get("binary")?;
                        let body = match (text, binary) {
                            (Some(t), _) => t.into_bytes(),
                            (None, Some(b)) => latin1_bytes(&b),
                            (None, None) => Vec::new(),
                        };
                        Answer::Response {
                            status,
                            headers,
                            body,
                        }
                    }
                    "no_handler" => Answer::NoHandler,
                    "bad_response" => Answer::BadResponse(outcome.get("message")?),
                    "fetch_limit" => Answer::FetchLimit(outcome.get("message")?),
                    "memory_limit" => return Ok(Err(Failure::Memory)),
                    _ => return Ok(Err(Failure::Exception(outcome.get("message")?))),
                }))
            };
            run().unwrap_or_else(|e| Err(Self::caught(&ctx, e, &self.meter)))
        });
        self.meter.stop();
        answer
    }

    /// Ends an invocation: drops its timers and pending fetches, returns its
    /// logs and CPU time.
    pub(crate) fn finish(&mut self, net: &mut Net) -> (Vec<LogLine>, Duration) {
        net.clear();
        self.meter.stop();
        // Timers and fetches do not outlive their invocation. Not metered: a
        // runtime stopped for its CPU limit is dropped anyway.
        if !self.meter.tripped.get() {
            self.meter.start();
            let _ = self.call_internal("clearTimers", ());
            let _ = self.call_internal("clearFetches", ());
            self.meter.stop();
        }
        (self.shared.take_logs(), self.meter.used.get())
    }

    /// Whether a limit stopped the last invocation (the runtime must go).
    pub(crate) fn tripped(&self) -> bool {
        self.meter.tripped.get()
    }

    fn call_internal<A>(&self, name: &str, args: A) -> Result<(), Failure>
    where
        A: for<'js> rquickjs::function::IntoArgs<'js>,
    {
        self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<()> {
                let internal = self.internal.clone().restore(&ctx)?;
                let f: Function = internal.get(name)?;
                f.call::<_, Value>(args).map(|_| ())
            };
            run().map_err(|e| Self::caught(&ctx, e, &self.meter))
        })
    }

    /// Calls an internal function returning a number.
    fn call_number(&self, name: &str) -> Result<f64, Failure> {
        self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<f64> {
                let internal = self.internal.clone().restore(&ctx)?;
                let f: Function = internal.get(name)?;
                f.call(())
            };
            run().map_err(|e| Self::caught(&ctx, e, &self.meter))
        })
    }

    /// Runs jobs, timers and fetches until `promise` settles.
    fn run_until_settled(
        &mut self,
        promise: &Persistent<Promise<'static>>,
        net: &mut Net,
    ) -> Result<(), Failure> {
        // Everything but waiting for a timer or a sub-request is the
        // invocation's CPU (the loop's own work too, so a chain of empty
        // timers cannot spin for free).
        self.meter.start();
        let result = self.event_loop(promise, net);
        self.meter.stop();
        result
    }

    fn event_loop(
        &mut self,
        promise: &Persistent<Promise<'static>>,
        net: &mut Net,
    ) -> Result<(), Failure> {
        loop {
            self.drain_jobs()?;
            let state = self.ctx.with(|ctx| {
                promise
                    .clone()
                    .restore(&ctx)
                    .map(|p| p.state())
                    .map_err(|e| Failure::Engine(e.to_string()))
            })?;
            if state != PromiseState::Pending {
                return Ok(());
            }
            let (start, cancel) = {
                let mut q = self.shared.fetch.borrow_mut();
                (std::mem::take(&mut q.start), std::mem::take(&mut q.cancel))
            };
            for id in cancel {
                net.cancel(id);
            }
            for (id, request) in start {
                net.start(id, request);
            }
            let next = self.call_number("nextTimer")?;
            if next == 0.0 {
                self.call_internal("runTimer", ())?;
                continue;
            }
            if next < 0.0 && !net.pending() {
                return Err(Failure::Exception(
                    "the handler's promise never settled (no timer or fetch pending)".to_owned(),
                ));
            }
            // At most a day per wait (the host's wall limit ends it sooner).
            let wait = (next > 0.0)
                .then(|| Duration::try_from_secs_f64(next.min(86_400_000.0) / 1000.0).ok())
                .flatten();
            self.meter.stop();
            let done = net.wait(wait);
            self.meter.start();
            if let Some((id, result)) = done {
                self.deliver(id, result)?;
            }
        }
    }

    /// Hands a finished sub-request to the prelude's `fetch` promise.
    fn deliver(&self, id: u32, result: FetchResult) -> Result<(), Failure> {
        self.ctx.with(|ctx| {
            let run = || -> rquickjs::Result<()> {
                let internal = self.internal.clone().restore(&ctx)?;
                match result {
                    Ok(ok) => {
                        let f: Function = internal.get("fetchDone")?;
                        let flat: Vec<String> =
                            ok.headers.into_iter().flat_map(|(k, v)| [k, v]).collect();
                        let body = TypedArray::<u8>::new(ctx.clone(), ok.body)?;
                        f.call::<_, ()>((
                            id,
                            ok.status,
                            ok.status_text,
                            flat,
                            body,
                            ok.url,
                            ok.redirected,
                        ))
                    }
                    Err(err) => {
                        let f: Function = internal.get("fetchFailed")?;
                        f.call::<_, ()>((id, err.limit, err.message))
                    }
                }
            };
            run().map_err(|e| Self::caught(&ctx, e, &self.meter))
        })
    }

    /// Runs the engine's job queue empty.
    fn drain_jobs(&self) -> Result<(), Failure> {
        loop {
            match self.rt.execute_pending_job() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(job) => {
                    if self.meter.tripped.get() {
                        return Err(Failure::Cpu);
                    }
                    let failure = job.0.with(|ctx| {
                        let value = ctx.catch();
                        if is_out_of_memory(&value) {
                            Some(Failure::Memory)
                        } else {
                            None
                        }
                    });
                    if let Some(failure) = failure {
                        return Err(failure);
                    }
                    // Any other job exception was already turned into a
                    // rejection by the engine; keep going.
                }
            }
        }
    }
}

/// A request header as the prelude's `Headers` holds it (WHATWG Fetch): the
/// name a token in lower case, the value without surrounding whitespace and
/// with no NUL, CR, LF or character above U+00FF; `None` for one that cannot
/// be (the host sends none such: it forwards what `http` parsed).
fn incoming_header<'a>(name: &'a str, value: &'a str) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
    // Per byte: 1 a token character, 2 an upper-case letter (a token
    // character too), 4 allowed in a value (not NUL, CR or LF, and not a
    // UTF-8 lead byte from 0xC4 on: a character above U+00FF).
    const fn classes() -> [u8; 256] {
        let mut table = [0u8; 256];
        let mut b = 0;
        while b < 256 {
            let byte = b as u8;
            if byte.is_ascii_alphanumeric() {
                table[b] |= 1;
            }
            if byte.is_ascii_uppercase() {
                table[b] |= 2;
            }
            if !matches!(byte, 0 | b'\r' | b'\n') && byte < 0xc4 {
                table[b] |= 4;
            }
            b += 1;
        }
        let extra = b"!#$%&'*+-.^_`|~";
        let mut i = 0;
        while i < extra.len() {
            table[extra[i] as usize] |= 1;
            i += 1;
        }
        table
    }
    const CLASS: [u8; 256] = classes();
    let mut seen = 1u8;
    let mut upper = 0u8;
    for b in name.bytes() {
        seen &= CLASS[usize::from(b)];
        upper |= CLASS[usize::from(b)];
    }
    if name.is_empty() || seen == 0 {
        return None;
    }
    let name = if upper & 2 != 0 {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    let space = |b: &u8| matches!(b, b'\t' | b'\n' | b'\r' | b' ');
    let bytes = value.as_bytes();
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |i| i + 1);
    // ASCII bytes: `start..end` are character boundaries.
    let value = &value[start..end];
    if !value.bytes().all(|b| CLASS[usize::from(b)] & 4 != 0) {
        return None;
    }
    Some((name, Cow::Borrowed(value)))
}

fn flat_clone(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .flat_map(|(k, v)| [k.clone(), v.clone()])
        .collect()
}
