//! The runner: mutation fuzzing of one [`Target`] over its seed corpus.
//!
//! Every seed runs first, unmutated; then, until the time is up, a random
//! corpus entry is mutated ([`crate::mutate`]) and run. An input is kept in
//! the in-memory corpus when it reaches an outcome not seen before (a new
//! error message, a new shape of parsed value: whatever the target notes in
//! [`Outcomes`]). That is a crude stand-in for coverage guidance, which
//! needs compiler instrumentation (libFuzzer through `cargo fuzz`, nightly
//! only): this runner is mutation-based without coverage feedback.
//!
//! Each input runs under [`std::panic::catch_unwind`]: a panic saves the
//! input to `<crash dir>/<target>/<hash>` and ends the run as failed. The
//! inputs run on a worker thread that publishes a heartbeat (when the
//! current input started); the calling thread watches it, and an input
//! running longer than [`Config::timeout`] is reported as a timeout (and
//! saved) without waiting for it: the stuck thread is left behind. What
//! `catch_unwind` cannot catch (a stack overflow, an abort) ends the whole
//! process: the run's seed, printed first, replays it.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mutate::mutate;
use crate::rng::Rng;

/// What one input led to, as the target notes it: the runner keeps a
/// mutated input whose outcomes include one never seen before.
#[derive(Debug, Default)]
pub struct Outcomes {
    seen: Vec<u64>,
}

impl Outcomes {
    /// Notes one outcome (an error message, a parsed shape, …). Note
    /// nothing that copies the input itself (every input would be new).
    pub fn note(&mut self, what: impl Hash) {
        let mut h = DefaultHasher::new();
        what.hash(&mut h);
        self.seen.push(h.finish());
    }
}

/// A fuzz target: a function of arbitrary bytes that must never panic or
/// hang, with the tokens its grammar is made of.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: the corpus directory and the command-line argument.
    pub name: &'static str,
    /// Runs one input.
    pub run: fn(&[u8], &mut Outcomes),
    /// Tokens the mutator inserts.
    pub dictionary: &'static [&'static [u8]],
    /// Mutated inputs are cut to this length.
    pub max_len: usize,
}

/// How long and how a target is fuzzed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fuzzing time after the seeds ran.
    pub duration: Duration,
    /// The PRNG's seed (mixed with the target's name).
    pub seed: u64,
    /// An input running longer than this is a failure.
    pub timeout: Duration,
    /// Failing inputs are saved under `<crash_dir>/<target>/`.
    pub crash_dir: PathBuf,
    /// The in-memory corpus grows to at most this many entries.
    pub max_corpus: usize,
}

impl Config {
    /// `duration` of fuzzing with `seed`, a 1 s timeout, crashes saved
    /// under [`default_crash_dir`].
    pub fn new(duration: Duration, seed: u64) -> Self {
        Config {
            duration,
            seed,
            timeout: Duration::from_secs(1),
            crash_dir: default_crash_dir(),
            max_corpus: 20_000,
        }
    }
}

/// How a failing input failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// It panicked, with this message.
    Panic(String),
    /// It ran longer than the timeout (and had not returned when reported).
    Timeout(Duration),
}

/// An input that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// How.
    pub kind: FailureKind,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was saved (None if saving failed).
    pub saved: Option<PathBuf>,
}

/// What a run of one target did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// The seed the run was given (`--seed` replays it).
    pub seed: u64,
    /// Inputs run (seeds included).
    pub executions: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Seed corpus entries.
    pub seeds: usize,
    /// In-memory corpus at the end: the seeds and the inputs kept.
    pub corpus: usize,
    /// Distinct outcomes noted.
    pub outcomes: usize,
    /// Failures (the run stops at the first).
    pub failures: Vec<Failure>,
}

impl Report {
    /// Executions per second.
    pub fn execs_per_sec(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The run found nothing.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The figures as JSON (for `cargo xtask soak`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "seed": self.seed,
            "executions": self.executions,
            "seconds": self.elapsed.as_secs_f64(),
            "execs_per_sec": self.execs_per_sec().round() as u64,
            "seeds": self.seeds,
            "corpus": self.corpus,
            "outcomes": self.outcomes,
            "failures": self.failures.iter().map(|f| serde_json::json!({
                "kind": match &f.kind {
                    FailureKind::Panic(_) => "panic",
                    FailureKind::Timeout(_) => "timeout",
                },
                "message": match &f.kind {
                    FailureKind::Panic(m) => m.clone(),
                    FailureKind::Timeout(d) => format!("still running after {} ms", d.as_millis()),
                },
                "saved": f.saved.as_ref().map(|p| p.display().to_string()),
            })).collect::<Vec<_>>(),
        })
    }
}

/// `crates/fuzz/corpus` of this source tree.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// `$CARGO_TARGET_DIR/fuzz/crashes`, else the workspace's
/// `target/fuzz/crashes`.
pub fn default_crash_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("fuzz/crashes")
}

/// The files of `dir`, sorted by name (the seed corpus of one target).
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|p| p.is_file());
    paths.sort();
    paths.iter().map(std::fs::read).collect()
}

/// FNV-1a: a stable name for a saved input.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the worker thread and the watching thread share.
#[derive(Debug, Default)]
struct Shared {
    executions: AtomicU64,
    /// Nanoseconds since the start when the current input began, plus 1;
    /// 0 between inputs.
    busy_since: AtomicU64,
    /// The input running now (for a timeout's report).
    current: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

/// What the worker thread found.
#[derive(Debug)]
struct Finished {
    corpus: usize,
    outcomes: usize,
    failure: Option<(FailureKind, Vec<u8>)>,
}

/// Fuzzes `target` from `seeds` for `config.duration`.
pub fn run(target: &Target, seeds: Vec<Vec<u8>>, config: &Config) -> Report {
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let n_seeds = seeds.len();
    let worker = {
        let (shared, target, config) = (shared.clone(), *target, config.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{}", target.name))
            .spawn(move || work(&target, seeds, &config, &shared, started))
    };
    let mut report = Report {
        target: target.name,
        seed: config.seed,
        executions: 0,
        elapsed: Duration::ZERO,
        seeds: n_seeds,
        corpus: 0,
        outcomes: 0,
        failures: Vec::new(),
    };
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            report.failures.push(Failure {
                kind: FailureKind::Panic(format!("cannot start the fuzzing thread: {e}")),
                input: Vec::new(),
                saved: None,
            });
            return report;
        }
    };
    let tick = (config.timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
    loop {
        if worker.is_finished() {
            match worker.join() {
                Ok(done) => {
                    report.corpus = done.corpus;
                    report.outcomes = done.outcomes;
                    if let Some((kind, input)) = done.failure {
                        let saved = save(&config.crash_dir, target.name, &input);
                        report.failures.push(Failure { kind, input, saved });
                    }
                }
                Err(_) => report.failures.push(Failure {
                    kind: FailureKind::Panic("the fuzzing thread panicked outside an input".into()),
                    input: Vec::new(),
                    saved: None,
                }),
            }
            break;
        }
        let since = shared.busy_since.load(Ordering::Acquire);
        if since > 0 {
            let running = started
                .elapsed()
                .saturating_sub(Duration::from_nanos(since - 1));
            if running > config.timeout {
                shared.stop.store(true, Ordering::Release);
                let input = shared
                    .current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let saved = save(&config.crash_dir, target.name, &input);
                report.failures.push(Failure {
                    kind: FailureKind::Timeout(running),
                    input,
                    saved,
                });
                // The worker is stuck in the input: leave it behind.
                break;
            }
        }
        std::thread::sleep(tick);
    }
    report.executions = shared.executions.load(Ordering::Acquire);
    report.elapsed = started.elapsed();
    report
}

fn save(dir: &Path, target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{:016x}", fnv1a(input)));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// The worker thread: the seeds, then mutations until the time is up.
fn work(
    target: &Target,
    seeds: Vec<Vec<u8>>,
    config: &Config,
    shared: &Shared,
    started: Instant,
) -> Finished {
    let mut seen = HashSet::new();
    let mut outcomes = Outcomes::default();
    // One input: true when it reached an outcome not seen before.
    let mut exec = |input: &[u8], seen: &mut HashSet<u64>| -> Result<bool, FailureKind> {
        {
            let mut current = shared.current.lock().unwrap_or_else(|e| e.into_inner());
            current.clear();
            current.extend_from_slice(input);
        }
        let now = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        shared.busy_since.store(now + 1, Ordering::Release);
        outcomes.seen.clear();
        let began = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| (target.run)(input, &mut outcomes)));
        let took = began.elapsed();
        shared.busy_since.store(0, Ordering::Release);
        shared.executions.fetch_add(1, Ordering::AcqRel);
        match result {
            // Slow, though done before the watching thread looked.
            Ok(()) if took > config.timeout => Err(FailureKind::Timeout(took)),
            Ok(()) => {
                let mut new = false;
                for o in &outcomes.seen {
                    new |= seen.insert(*o);
                }
                Ok(new)
            }
            Err(payload) => Err(FailureKind::Panic(panic_message(&*payload))),
        }
    };
    let finished = |corpus: &Vec<Vec<u8>>, seen: &HashSet<u64>, failure| Finished {
        corpus: corpus.len(),
        outcomes: seen.len(),
        failure,
    };
    let mut corpus: Vec<Vec<u8>> = Vec::with_capacity(seeds.len());
    for seed in seeds {
        if let Err(kind) = exec(&seed, &mut seen) {
            return finished(&corpus, &seen, Some((kind, seed)));
        }
        corpus.push(seed);
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut rng = Rng::new(config.seed ^ fnv1a(target.name.as_bytes()));
    let deadline = started + config.duration;
    let mut input = Vec::new();
    while Instant::now() < deadline && !shared.stop.load(Ordering::Acquire) {
        let parent = rng.below(corpus.len());
        let other = rng.below(corpus.len());
        input.clone_from(&corpus[parent]);
        mutate(
            &mut rng,
            &mut input,
            &corpus[other],
            target.dictionary,
            target.max_len,
        );
        match exec(&input, &mut seen) {
            Ok(true) if corpus.len() < config.max_corpus => corpus.push(input.clone()),
            Ok(_) => {}
            Err(kind) => return finished(&corpus, &seen, Some((kind, input))),
        }
    }
    finished(&corpus, &seen, None)
}
