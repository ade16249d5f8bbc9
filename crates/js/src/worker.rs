//! The `madbase functions-worker` process: reads [`ToWorker`] frames on
//! stdin, runs each invocation in the function's cached runtime, writes one
//! [`FromWorker`] frame per invocation on stdout. stderr is its log.
//!
//! One runtime per [`FunctionKey`] (never shared between keys), kept in an
//! LRU of at most `MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER` (default 32) and
//! dropped after `MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS` (default 300) unused.
//! A runtime that hit a limit (CPU, memory) is discarded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::engine::{self, Answer, Code, Failure, FnRuntime};
use crate::fetch::Net;
use crate::protocol::{
    self, FromWorker, FunctionError, FunctionKey, Invoke, LogLine, Outcome, Reply, ToWorker,
};

/// The environment variables the worker process reads. This crate does not
/// depend on the platform crate, whose `madbase_platform::env` declares
/// every variable with its meaning; these are the same names (a test in
/// `crates/functions/src/pool.rs` checks they are equal).
pub mod env {
    /// Runtimes a worker process keeps (default 32).
    pub const MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER: &str = "MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER";
    /// Seconds an idle runtime is kept (default 300).
    pub const MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS: &str = "MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS";
    /// `1`: the worker offers test-only hooks; never in production.
    pub const MADBASE_FUNCTIONS_TEST_HOOKS: &str = "MADBASE_FUNCTIONS_TEST_HOOKS";
}

/// Default number of cached runtimes per worker.
pub const DEFAULT_RUNTIMES: usize = 32;
/// The limits a spare runtime's prelude is evaluated under; an invocation
/// sets its own before any tenant code runs.
const SPARE_LIMITS: protocol::Limits = protocol::Limits {
    cpu_ms: 10_000,
    memory_bytes: 0,
    max_response_bytes: 0,
    max_fetches: 0,
    max_fetch_bytes: 0,
};

/// How long a worker waits after a reply, with no new frame, before making
/// its spare runtime (~1 ms of CPU).
const SPARE_AFTER: Duration = Duration::from_millis(3);

/// Default idle time after which a cached runtime is dropped.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// How a worker behaves (from the environment in the real process).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Cached runtimes at most (LRU beyond).
    pub max_runtimes: usize,
    /// A runtime unused this long is dropped.
    pub idle: Duration,
    /// `__madbaseTestCrash()` exists (tests of the host's crash recovery).
    pub test_hooks: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_runtimes: DEFAULT_RUNTIMES,
            idle: DEFAULT_IDLE,
            test_hooks: false,
        }
    }
}

impl WorkerConfig {
    /// `MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER`,
    /// `MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS` and
    /// `MADBASE_FUNCTIONS_TEST_HOOKS=1`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        WorkerConfig {
            max_runtimes: var(env::MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER)
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_RUNTIMES),
            idle: var(env::MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS)
                .and_then(|v| v.trim().parse().ok())
                .map_or(DEFAULT_IDLE, Duration::from_secs),
            test_hooks: var(env::MADBASE_FUNCTIONS_TEST_HOOKS).as_deref() == Some("1"),
        }
    }
}

#[derive(Debug)]
struct Cached {
    runtime: FnRuntime,
    last_used: Instant,
}

/// Runs invocations; pure (no I/O besides the functions' own `fetch`).
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    runtimes: HashMap<FunctionKey, Cached>,
    net: Net,
    /// A fresh runtime with the prelude evaluated, made between invocations
    /// so a cold start only evaluates the module. Never used by any key yet.
    spare: Option<FnRuntime>,
}

impl Default for Worker {
    fn default() -> Self {
        Self::new(WorkerConfig::default())
    }
}

impl Worker {
    /// A worker with no runtimes yet, limited by `config`.
    pub fn new(config: WorkerConfig) -> Self {
        Worker {
            config,
            runtimes: HashMap::new(),
            net: Net::new(),
            spare: None,
        }
    }

    /// How many runtimes are cached.
    pub fn runtimes(&self) -> usize {
        self.runtimes.len()
    }

    /// Whether the runtime of `key` is cached.
    pub fn holds(&self, key: &FunctionKey) -> bool {
        self.runtimes.contains_key(key)
    }

    /// Makes the spare runtime if there is none (between invocations: the
    /// next cold start then skips the prelude).
    pub fn prepare(&mut self) {
        if self.spare.is_none() {
            self.spare = FnRuntime::new(&SPARE_LIMITS, self.config.test_hooks).ok();
        }
    }

    /// Drops runtimes unused for longer than the idle time.
    pub fn evict_idle(&mut self) {
        let idle = self.config.idle;
        self.runtimes.retain(|_, c| c.last_used.elapsed() <= idle);
    }

    /// Makes room for one more runtime (least recently used goes).
    fn evict_lru(&mut self) {
        while self.runtimes.len() >= self.config.max_runtimes.max(1) {
            let Some(oldest) = self
                .runtimes
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.runtimes.remove(&oldest);
        }
    }

    /// Runs one invocation: the reply and its response body.
    pub fn handle(&mut self, invoke: Invoke, mut body: Vec<u8>) -> (Reply, Vec<u8>) {
        self.evict_idle();
        let id = invoke.id;
        let reply = |outcome: Outcome, logs: Vec<LogLine>, cold: bool, cpu: Duration| Reply {
            id,
            outcome,
            logs,
            cold,
            cpu_us: u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX),
        };
        let limits = invoke.limits;
        self.net.begin(&invoke.fetch_allow, limits.max_fetch_bytes);
        let key = invoke.key.clone();
        // The compiled module in front of the request body, if sent.
        let compiled = match invoke.bytecode_len.map(|n| n as usize) {
            Some(n) if n <= body.len() => {
                let request = body.split_off(n);
                Some(std::mem::replace(&mut body, request))
            }
            Some(_) => {
                return (
                    reply(
                        error(
                            FunctionError::Exception,
                            "engine error: the compiled module is longer than the frame's body"
                                .to_owned(),
                        ),
                        Vec::new(),
                        false,
                        Duration::ZERO,
                    ),
                    Vec::new(),
                );
            }
            None => None,
        };

        // A cold start's CPU includes making the runtime (the prelude).
        let mut setup = Duration::ZERO;
        let (mut runtime, cold) = match self.runtimes.remove(&key) {
            Some(cached) => (cached.runtime, false),
            None => {
                // Source first; bytecode only when this build wrote it
                // (otherwise the host sends the source).
                let code = match (invoke.source.as_deref(), compiled.as_deref()) {
                    (Some(source), _) => Some(Code::Source(source)),
                    (None, Some(compiled)) => engine::untag(compiled).map(Code::Bytecode),
                    (None, None) => None,
                };
                let Some(code) = code else {
                    return (
                        reply(Outcome::NeedSource, Vec::new(), false, Duration::ZERO),
                        Vec::new(),
                    );
                };
                self.evict_lru();
                let started = Instant::now();
                let created = match self.spare.take() {
                    Some(spare) => Ok(spare),
                    None => FnRuntime::new(&limits, self.config.test_hooks),
                };
                setup = started.elapsed();
                let mut runtime = match created {
                    Ok(r) => r,
                    Err(f) => {
                        let (outcome, _) = failure_outcome(f);
                        return (reply(outcome, Vec::new(), true, setup), Vec::new());
                    }
                };
                let loaded = runtime
                    .begin(&limits, Some(invoke.env.as_deref().unwrap_or_default()))
                    .and_then(|()| runtime.load(&key.function, code, &mut self.net));
                if let Err(f) = loaded {
                    let (logs, cpu) = runtime.finish(&mut self.net);
                    let (outcome, _) = failure_outcome(f);
                    return (reply(outcome, logs, true, setup + cpu), Vec::new());
                }
                (runtime, true)
            }
        };

        // A warm runtime starts a new invocation; a cold one already did
        // (its module's top level is part of the first invocation).
        let begun = if cold {
            Ok(())
        } else {
            runtime.begin(&limits, invoke.env.as_deref())
        };
        let result = begun.and_then(|()| {
            runtime.invoke(
                &invoke.method,
                &invoke.url,
                &invoke.headers,
                body,
                &mut self.net,
            )
        });
        let (logs, cpu) = runtime.finish(&mut self.net);
        let (outcome, response_body, keep) = match result {
            Ok(Answer::Response {
                status,
                headers,
                body,
            }) => {
                if body.len() as u64 > limits.max_response_bytes {
                    (
                        error(
                            FunctionError::ResponseTooLarge,
                            format!(
                                "the response body ({} bytes) exceeds the limit of {} bytes",
                                body.len(),
                                limits.max_response_bytes
                            ),
                        ),
                        Vec::new(),
                        true,
                    )
                } else {
                    (Outcome::Response { status, headers }, body, true)
                }
            }
            Ok(Answer::NoHandler) => (
                error(
                    FunctionError::NoHandler,
                    "the function registered no handler (call Deno.serve(handler) or export default { fetch })"
                        .to_owned(),
                ),
                Vec::new(),
                true,
            ),
            Ok(Answer::BadResponse(m)) => {
                (error(FunctionError::BadResponse, m), Vec::new(), true)
            }
            Ok(Answer::FetchLimit(m)) => (error(FunctionError::FetchLimit, m), Vec::new(), true),
            Err(f) => {
                let (outcome, keep) = failure_outcome(f);
                (outcome, Vec::new(), keep)
            }
        };
        if keep && !runtime.tripped() {
            self.runtimes.insert(
                key,
                Cached {
                    runtime,
                    last_used: Instant::now(),
                },
            );
        }
        (reply(outcome, logs, cold, setup + cpu), response_body)
    }
}

/// Compiles `source` as the module `name` without running it, for
/// [`Invoke::bytecode_len`]: a worker of this build loads it instead of
/// parsing the source (a cold start of a 200 KiB bundle: ~1.5 ms instead of
/// ~34 ms). The error is the engine's message (the source does not compile).
pub fn compile(name: &str, source: &str) -> Result<Vec<u8>, String> {
    engine::compile(name, source)
}

fn error(error: FunctionError, message: String) -> Outcome {
    Outcome::Error { error, message }
}

/// The outcome of a failure, and whether the runtime may be kept.
fn failure_outcome(f: Failure) -> (Outcome, bool) {
    match f {
        Failure::Cpu => (
            error(
                FunctionError::CpuLimit,
                "the function exceeded its CPU time limit".to_owned(),
            ),
            false,
        ),
        Failure::Memory => (
            error(
                FunctionError::MemoryLimit,
                "the function exceeded its memory limit".to_owned(),
            ),
            false,
        ),
        Failure::Exception(m) => (error(FunctionError::Exception, m), true),
        Failure::Engine(m) => (
            error(FunctionError::Exception, format!("engine error: {m}")),
            false,
        ),
    }
}

/// The worker's loop over any reader and writer: one reply frame per
/// invocation frame, until a clean end of input.
pub fn run_loop<R: Read, W: Write>(
    worker: &mut Worker,
    input: &mut R,
    output: &mut W,
) -> Result<(), protocol::FrameError> {
    while let Some((ToWorker::Invoke(invoke), body)) = protocol::read_frame::<ToWorker, _>(input)? {
        let (reply, body) = worker.handle(invoke, body);
        write_reply(output, reply, &body)?;
        worker.prepare();
    }
    Ok(())
}

fn write_reply<W: Write>(
    output: &mut W,
    reply: Reply,
    body: &[u8],
) -> Result<(), protocol::FrameError> {
    let id = reply.id;
    let frame = match protocol::encode(&FromWorker::Reply(reply), body) {
        Ok(frame) => frame,
        // Too large to frame (a body over MAX_BODY): say so instead.
        Err(e) => protocol::encode(
            &FromWorker::Reply(Reply {
                id,
                outcome: error(
                    FunctionError::ResponseTooLarge,
                    format!("the reply cannot be framed: {e}"),
                ),
                logs: Vec::new(),
                cold: false,
                cpu_us: 0,
            }),
            &[],
        )?,
    };
    output.write_all(&frame)?;
    output.flush()?;
    Ok(())
}

/// `madbase functions-worker`: frames on stdin and stdout until stdin ends.
///
/// One thread: it waits for the next frame with `poll(2)`, so idle runtimes
/// are evicted (and the spare made) while no invocation arrives, and a frame
/// wakes the thread that runs it (no reader thread to hand it over: one
/// context switch less per invocation).
pub fn run_stdio() -> Result<(), protocol::FrameError> {
    use std::os::fd::AsFd as _;
    let config = WorkerConfig::from_env();
    let idle = config.idle;
    let mut worker = Worker::new(config);
    worker.prepare();
    // stdin's descriptor read through a buffer of our own: `poll` cannot
    // see what std's `Stdin` would have buffered.
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut input = std::io::BufReader::with_capacity(64 * 1024, stdin);
    let mut stdout = std::io::stdout().lock();
    let tick = (idle / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    // The spare runtime is made once no frame came for SPARE_AFTER since
    // the last reply, not right after it: the host still has to read the
    // reply and answer its client, maybe on the same core.
    let mut spare_due = false;
    loop {
        let wait = if spare_due { SPARE_AFTER } else { tick };
        if input.buffer().is_empty() && !readable(input.get_ref(), wait)? {
            if spare_due {
                worker.prepare();
                spare_due = false;
            } else {
                worker.evict_idle();
            }
            continue;
        }
        let Some((ToWorker::Invoke(invoke), body)) =
            protocol::read_frame::<ToWorker, _>(&mut input)?
        else {
            return Ok(());
        };
        let (reply, body) = worker.handle(invoke, body);
        write_reply(&mut stdout, reply, &body)?;
        spare_due = true;
    }
}

/// Whether `input` has something to read (or its end) within `wait`.
fn readable(input: &std::fs::File, wait: Duration) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(input, PollFlags::IN)];
    let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    loop {
        match poll(&mut fds, timeout) {
            Ok(ready) => return Ok(ready > 0),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
