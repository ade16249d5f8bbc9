//! The supervised pool of `madbase functions-worker` processes.
//!
//! At most `size` workers, started on demand (the first invocations) with
//! piped stdin/stdout (frames of `madbase_js::protocol`) and stderr read
//! line by line into this service's log. One invocation at a time per
//! worker; an invocation waits for a free worker in a bounded queue (full,
//! or waited too long: [`RunError::Busy`]). A worker that answers nothing
//! before the wall limit is SIGKILLed ([`RunError::WallLimit`]); one whose
//! stdout ends or breaks the protocol is killed too ([`RunError::Crashed`]).
//! Either way only that invocation fails and a fresh worker takes the place.
//!
//! Each worker remembers which [`FunctionKey`]s it has been sent the source
//! of, so warm invocations carry no source; invocations prefer a worker that
//! holds their key. A worker that evicted a runtime answers
//! [`Outcome::NeedSource`] and gets the invocation again with the module.
//! The module goes as the bytecode the service compiled in the background
//! when the code was loaded ([`Module::compiled`]; a cold start then skips
//! parsing), or as the source before that or when a worker refuses it.
//!
//! Exchanges run on their own task: a client that goes away does not kill
//! the worker mid-invocation.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madbase_js::protocol::{self, FromWorker, FunctionKey, Invoke, Outcome, Reply, ToWorker};
use madbase_platform::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

/// How the pool runs.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// Program and arguments of a worker.
    pub command: Vec<OsString>,
    /// Most workers.
    pub size: usize,
    /// Most invocations waiting for a worker.
    pub queue: usize,
    /// Longest wait for a worker.
    pub queue_wait: Duration,
}

/// Keys a worker is believed to hold (the worker evicts on its own; a miss
/// costs one `NeedSource` round trip).
const REMEMBERED_KEYS: usize = 256;

/// Whether a worker (which runs tenants' code) must not inherit this
/// variable of the service's environment: the platform's secrets
/// (`JWT_SECRET`, `MADBASE_MASTER_KEY`, the console password, database
/// URLs, OTLP headers) and anything else named like a secret.
fn withheld(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "KEY",
        "TOKEN",
        "CREDENTIAL",
        madbase_platform::env::DATABASE_URL,
        "DB_URL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ]
    .iter()
    .any(|part| upper.contains(part))
}

/// Why an invocation got no answer from a worker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("every worker is busy")]
    Busy,
    #[error("the invocation exceeded the wall-clock limit")]
    WallLimit,
    #[error("the worker process failed: {0}")]
    Crashed(String),
    #[error("cannot start a worker process: {0}")]
    Spawn(String),
}

/// A function's module as the pool sends it to a worker that does not hold
/// it: its bytecode when the service has compiled it (the worker loads it
/// instead of parsing), else (or when the worker refuses the bytecode, e.g.
/// of another build) the source.
#[derive(Debug, Clone)]
pub(crate) struct Module {
    pub source: Arc<str>,
    /// `madbase_js::worker::compile` of the source, once compiled.
    pub compiled: Option<Arc<[u8]>>,
}

/// How a worker was sent the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Nothing,
    Bytecode,
    Source,
}

/// Called once with an invocation's result.
pub(crate) type OnDone = Box<dyn FnOnce(&Result<Answer, RunError>) + Send>;

/// A worker's answer: the reply and its body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub reply: Reply,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone)]
struct PoolMetrics {
    restarts: Family<ReasonLabels, Counter>,
    busy: Gauge,
    workers: Gauge,
}

/// The pool.
#[derive(Debug)]
pub(crate) struct Pool {
    cfg: PoolConfig,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    idle: Arc<Mutex<Vec<Worker>>>,
    next_worker: AtomicU64,
    next_call: AtomicU64,
    metrics: PoolMetrics,
}

#[derive(Debug)]
struct Worker {
    id: u64,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The keys it was sent the module of, each with the env it last sent
    /// for it (a warm invocation with the same env sends none: the worker
    /// keeps the runtime's). Compared, not hashed: a few hundred bytes.
    loaded: VecDeque<(FunctionKey, Option<WorkerEnv>)>,
}

/// The environment an invocation sends a worker (name, value).
type WorkerEnv = Vec<(String, String)>;

/// The exchange failed: the worker cannot be trusted any more.
#[derive(Debug)]
enum Broken {
    /// Writing to it failed (it had exited before reading anything).
    Write(String),
    /// Its answer never came whole or made no sense.
    Read(String),
}

/// One invocation waiting for a worker.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// How many were waiting before this one.
    before: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::SeqCst);
        Waiting { count, before }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    pub(crate) fn new(cfg: PoolConfig, metrics: &Metrics) -> Arc<Self> {
        let m = PoolMetrics {
            restarts: Family::default(),
            busy: Gauge::default(),
            workers: Gauge::default(),
        };
        metrics.register(
            "madbase_function_worker_restarts",
            "Worker processes replaced, by reason: crashed, wall_limit, exited (while idle)",
            m.restarts.clone(),
        );
        metrics.register(
            "madbase_function_workers_busy",
            "Worker processes running an invocation",
            m.busy.clone(),
        );
        metrics.register(
            "madbase_function_workers",
            "Worker processes alive (busy or idle)",
            m.workers.clone(),
        );
        Arc::new(Pool {
            slots: Arc::new(Semaphore::new(cfg.size)),
            cfg,
            waiting: AtomicUsize::new(0),
            idle: Arc::default(),
            next_worker: AtomicU64::new(1),
            next_call: AtomicU64::new(1),
            metrics: m,
        })
    }

    /// Runs one invocation (`invoke.source` is set by the pool when the
    /// chosen worker needs it) within `wall` (its worker is killed beyond)
    /// and returns the worker's reply.
    /// `on_done` sees the result where the invocation ends (the exchange's
    /// own task, which goes on when the caller goes away).
    pub(crate) async fn run(
        self: &Arc<Self>,
        invoke: Invoke,
        source: Module,
        body: bytes::Bytes,
        wall: Duration,
        on_done: OnDone,
    ) -> Result<Answer, RunError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Counted out on drop: also when the caller goes away
                // while waiting.
                let waiting = Waiting::enter(&self.waiting);
                if waiting.before >= self.cfg.queue {
                    let busy = Err(RunError::Busy);
                    on_done(&busy);
                    return busy;
                }
                let waited =
                    tokio::time::timeout(self.cfg.queue_wait, self.slots.clone().acquire_owned())
                        .await;
                drop(waiting);
                match waited {
                    Ok(Ok(p)) => p,
                    _ => {
                        let busy = Err(RunError::Busy);
                        on_done(&busy);
                        return busy;
                    }
                }
            }
        };
        let pool = self.clone();
        // The invocation's span goes along: the pool's log lines keep the
        // request ID, tenant and function.
        let task = tokio::spawn(
            async move {
                let _permit = permit;
                pool.metrics.busy.inc();
                let result = pool.exchange(invoke, source, body, wall).await;
                pool.metrics.busy.dec();
                on_done(&result);
                result
            }
            .instrument(tracing::Span::current()),
        );
        task.await.unwrap_or_else(|e| {
            Err(RunError::Crashed(format!(
                "the invocation task failed: {e}"
            )))
        })
    }

    /// With a slot held: a worker, the exchange, the worker back (or gone).
    async fn exchange(
        &self,
        mut invoke: Invoke,
        source: Module,
        body: bytes::Bytes,
        wall: Duration,
    ) -> Result<Answer, RunError> {
        invoke.id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let key = invoke.key.clone();
        // Serialised by reference for each send: never cloned.
        let mut msg = ToWorker::Invoke(invoke);
        // A worker whose pipe is closed before it read anything had died
        // while idle: one more try with a fresh one.
        let mut fresh_tried = false;
        loop {
            let (mut worker, fresh) = match self.take(&key) {
                Some(w) => (w, false),
                None => (self.spawn()?, true),
            };
            let outcome = tokio::time::timeout(wall, worker.call(&mut msg, &source, &body)).await;
            match outcome {
                Ok(Ok(answer)) => {
                    self.give_back(worker);
                    return Ok(answer);
                }
                Ok(Err(Broken::Write(e))) if !fresh && !fresh_tried => {
                    tracing::warn!(worker = worker.id, error = %e, "an idle worker had exited; replacing it");
                    self.retire(worker, "exited").await;
                    fresh_tried = true;
                }
                Ok(Err(Broken::Write(e) | Broken::Read(e))) => {
                    let status = self.retire(worker, "crashed").await;
                    tracing::error!(error = %e, exit = %status, "a worker failed during an invocation");
                    self.replace();
                    return Err(RunError::Crashed(format!("{e} ({status})")));
                }
                Err(_) => {
                    tracing::warn!(
                        worker = worker.id,
                        wall_seconds = wall.as_secs_f64(),
                        "an invocation exceeded the wall limit: killing its worker"
                    );
                    self.retire(worker, "wall_limit").await;
                    self.replace();
                    return Err(RunError::WallLimit);
                }
            }
        }
    }

    /// An idle worker, preferring one that holds `key`. Whether it is still
    /// alive is not asked here (a `wait4` per invocation): one that exited
    /// while idle has its pipe closed, and the write to it fails, which
    /// [`Pool::exchange`] answers by retiring it and trying a fresh one.
    fn take(&self, key: &FunctionKey) -> Option<Worker> {
        let mut idle = self.lock_idle();
        let index = idle
            .iter()
            .position(|w| w.loaded.iter().any(|(k, _)| k == key))
            .or_else(|| idle.len().checked_sub(1))?;
        Some(idle.swap_remove(index))
    }

    fn give_back(&self, worker: Worker) {
        self.lock_idle().push(worker);
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kills a worker and reaps it; returns how it ended.
    async fn retire(&self, mut worker: Worker, reason: &'static str) -> String {
        let _ = worker.child.start_kill();
        let status = match tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => "did not exit within 5 s of SIGKILL".to_owned(),
        };
        self.metrics.workers.dec();
        self.metrics
            .restarts
            .get_or_create(&ReasonLabels { reason })
            .inc();
        status
    }

    /// Starts a worker in the background in place of one that was killed,
    /// so the next invocation does not pay for the start.
    fn replace(&self) {
        match self.spawn() {
            Ok(w) => self.give_back(w),
            Err(e) => tracing::error!(error = %e, "cannot start a replacement worker"),
        }
    }

    fn spawn(&self) -> Result<Worker, RunError> {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let (program, args) = self
            .cfg
            .command
            .split_first()
            .ok_or_else(|| RunError::Spawn("the worker command is empty".to_owned()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (var, _) in std::env::vars_os() {
            if withheld(&var.to_string_lossy()) {
                cmd.env_remove(var);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| RunError::Spawn(format!("{}: {e}", program.to_string_lossy())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(RunError::Spawn("no pipes to the worker".to_owned()));
        };
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "madbase_functions::worker", worker = id, "{line}");
                }
            });
        }
        self.metrics.workers.inc();
        tracing::debug!(worker = id, pid = child.id(), "worker started");
        Ok(Worker {
            id,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            loaded: VecDeque::new(),
        })
    }
}

impl Worker {
    /// One invocation: sends it (with the module when this worker has not
    /// had it: its bytecode if compiled, else the source), reads the reply;
    /// a worker that asks for the module gets the source.
    async fn call(
        &mut self,
        msg: &mut ToWorker,
        module: &Module,
        body: &[u8],
    ) -> Result<Answer, Broken> {
        let ToWorker::Invoke(invoke) = msg;
        let id = invoke.id;
        // The bytecode shares the frame's body with the request's.
        let bytecode_fits = module
            .compiled
            .as_ref()
            .is_some_and(|c| c.len() + body.len() <= protocol::MAX_BODY as usize);
        let held = self.loaded.iter().position(|(k, _)| *k == invoke.key);
        let env_held = held.is_some_and(|i| self.loaded[i].1 == invoke.env);
        let mut sent = if held.is_some() {
            Sent::Nothing
        } else if bytecode_fits {
            Sent::Bytecode
        } else {
            Sent::Source
        };
        // The env goes with the module, and when it changed.
        self.send(msg, sent, env_held, module, body).await?;
        let mut answer = self.receive(id).await?;
        while answer.reply.outcome == Outcome::NeedSource {
            sent = match sent {
                Sent::Nothing if bytecode_fits => Sent::Bytecode,
                Sent::Nothing => Sent::Source,
                Sent::Bytecode => {
                    tracing::warn!(
                        worker = self.id,
                        "the worker refused the compiled module (another build?): sending the source"
                    );
                    Sent::Source
                }
                Sent::Source => {
                    return Err(Broken::Read(
                        "the worker asked for a source it was sent".to_owned(),
                    ));
                }
            };
            // The worker read the request; writing again cannot be an
            // idle worker's death any more.
            self.send(msg, sent, false, module, body)
                .await
                .map_err(|e| Broken::Read(format!("{e:?}")))?;
            answer = self.receive(id).await?;
        }
        let ToWorker::Invoke(invoke) = msg;
        invoke.source = None;
        invoke.bytecode_len = None;
        // It now runs the key with this env (a runtime that failed its
        // load or hit a limit is gone: its next invocation is a
        // `NeedSource` and gets the module and the env again).
        match self.loaded.iter().position(|(k, _)| *k == invoke.key) {
            Some(i) if self.loaded[i].1 != invoke.env => {
                self.loaded[i].1.clone_from(&invoke.env);
            }
            Some(_) => {}
            None if sent != Sent::Nothing || answer.reply.cold => {
                if self.loaded.len() >= REMEMBERED_KEYS {
                    self.loaded.pop_front();
                }
                self.loaded
                    .push_back((invoke.key.clone(), invoke.env.clone()));
            }
            None => {}
        }
        Ok(answer)
    }

    /// Writes the frame; its env only when the worker may not hold it
    /// (`env_held` false, or the module goes with it).
    async fn send(
        &mut self,
        msg: &mut ToWorker,
        sent: Sent,
        env_held: bool,
        module: &Module,
        body: &[u8],
    ) -> Result<(), Broken> {
        let ToWorker::Invoke(invoke) = msg;
        let withheld_env = if env_held && sent == Sent::Nothing {
            invoke.env.take()
        } else {
            None
        };
        invoke.source = (sent == Sent::Source).then(|| module.source.to_string());
        let compiled = match (&module.compiled, sent) {
            (Some(c), Sent::Bytecode) => Some(c),
            _ => None,
        };
        invoke.bytecode_len = match compiled {
            Some(c) => Some(u32::try_from(c.len()).map_err(|e| Broken::Write(e.to_string()))?),
            None => None,
        };
        // The compiled module goes in front of the request body.
        let joined;
        let body = match compiled {
            Some(c) => {
                joined = [c, body].concat();
                &joined[..]
            }
            None => body,
        };
        let frame = protocol::encode(&*msg, body);
        if let Some(env) = withheld_env {
            let ToWorker::Invoke(invoke) = msg;
            invoke.env = Some(env);
        }
        let frame = frame.map_err(|e| Broken::Write(e.to_string()))?;
        self.stdin
            .write_all(&frame)
            .await
            .map_err(|e| Broken::Write(e.to_string()))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| Broken::Write(e.to_string()))
    }

    async fn receive(&mut self, id: u64) -> Result<Answer, Broken> {
        let broken = |what: &str, e: &dyn std::fmt::Display| Broken::Read(format!("{what}: {e}"));
        let mut prefix = [0u8; 8];
        self.stdout
            .read_exact(&mut prefix)
            .await
            .map_err(|e| broken("reading the reply", &e))?;
        let (header_len, body_len) =
            protocol::parse_prefix(prefix).map_err(|e| broken("reading the reply", &e))?;
        let mut header = vec![0u8; header_len as usize];
        self.stdout
            .read_exact(&mut header)
            .await
            .map_err(|e| broken("reading the reply header", &e))?;
        let mut body = vec![0u8; body_len as usize];
        self.stdout
            .read_exact(&mut body)
            .await
            .map_err(|e| broken("reading the reply body", &e))?;
        let FromWorker::Reply(reply) = serde_json::from_slice::<FromWorker>(&header)
            .map_err(|e| broken("a malformed reply", &e))?;
        if reply.id != id {
            return Err(Broken::Read(format!(
                "a reply for invocation {} while waiting for {id}",
                reply.id
            )));
        }
        Ok(Answer { reply, body })
    }
}

#[cfg(test)]
mod tests {
    use super::withheld;

    /// The worker process (`madbase_js`, which does not depend on the
    /// platform crate) reads the names `madbase_platform::env` declares.
    #[test]
    fn the_worker_reads_the_declared_variables() {
        use madbase_js::worker::env as js;
        use madbase_platform::env as platform;
        for (read, declared) in [
            (
                js::MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER,
                platform::MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER,
            ),
            (
                js::MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS,
                platform::MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS,
            ),
            (
                js::MADBASE_FUNCTIONS_TEST_HOOKS,
                platform::MADBASE_FUNCTIONS_TEST_HOOKS,
            ),
        ] {
            assert_eq!(read, declared);
        }
    }

    #[test]
    fn platform_secrets_are_withheld_from_workers() {
        for name in [
            madbase_platform::env::JWT_SECRET,
            madbase_platform::env::MADBASE_MASTER_KEY,
            madbase_platform::env::MADBASE_MASTER_KEY_FILE,
            madbase_platform::env::DATABASE_URL,
            madbase_platform::env::DEFAULT_TENANT_DB_URL,
            madbase_platform::env::MADBASE_CONSOLE_PASSWORD,
            "OTEL_EXPORTER_OTLP_HEADERS",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
        ] {
            assert!(withheld(name), "{name}");
        }
        for name in [
            "PATH",
            madbase_platform::env::MADBASE_FUNCTIONS_TEST_HOOKS,
            madbase_platform::env::MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER,
            madbase_platform::env::MADBASE_LOG,
            "RUST_BACKTRACE",
        ] {
            assert!(!withheld(name), "{name}");
        }
    }
}
