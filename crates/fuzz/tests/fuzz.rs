//! The fuzz targets over their committed seeds, a short run of each, and
//! the runner itself: a planted panic and a planted hang are found, so a
//! run cannot pass silently.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use madbase_fuzz::runner::{self, Config, FailureKind, Outcomes, Target};
use madbase_fuzz::targets;

/// A crash directory of this test process (not the workspace's target/).
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("madbase-fuzz-{name}-{}", std::process::id()))
}

fn config(seconds: f64, seed: u64, name: &str) -> Config {
    let mut c = Config::new(Duration::from_secs_f64(seconds), seed);
    c.crash_dir = scratch(name);
    c
}

#[test]
fn every_target_has_seeds_and_none_panics() {
    let mut failures = Vec::new();
    for target in targets::ALL {
        let dir = runner::corpus_dir().join(target.name);
        let seeds = runner::load_corpus(&dir).expect("the seed corpus is readable");
        assert!(
            seeds.len() >= 20,
            "{}: only {} seeds",
            target.name,
            seeds.len()
        );
        for (n, seed) in seeds.iter().enumerate() {
            let mut out = Outcomes::default();
            if catch_unwind(AssertUnwindSafe(|| (target.run)(seed, &mut out))).is_err() {
                failures.push(format!("{} seed {n}", target.name));
            }
        }
    }
    assert!(failures.is_empty(), "seeds that panic: {failures:?}");
}

/// Two seconds of each target.
fn short_run(name: &str) {
    let target = targets::by_name(name).expect("a target");
    let seeds = runner::load_corpus(&runner::corpus_dir().join(name)).expect("seeds");
    let report = runner::run(&target, seeds, &config(2.0, 0x5EED, name));
    assert!(report.ok(), "{name}: {:?}", report.failures);
    assert!(report.executions > report.seeds as u64, "{report:?}");
    assert!(report.corpus >= report.seeds, "{report:?}");
    assert!(
        report.to_json()["failures"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

#[test]
fn fuzz_query_briefly() {
    short_run("query");
}

#[test]
fn fuzz_select_briefly() {
    short_run("select");
}

#[test]
fn fuzz_prefer_briefly() {
    short_run("prefer");
}

#[test]
fn fuzz_jwt_briefly() {
    short_run("jwt");
}

#[test]
fn fuzz_frame_briefly() {
    short_run("frame");
}

fn planted_panic(data: &[u8], out: &mut Outcomes) {
    out.note(data.len().min(4));
    if data.windows(4).any(|w| w == b"B0OM") {
        panic!("planted bug");
    }
}

fn planted_hang(data: &[u8], out: &mut Outcomes) {
    out.note(data.len().min(4));
    if data.windows(4).any(|w| w == b"HANG") {
        // A hang that does not burn a CPU while the test process lives on.
        loop {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const PLANTED_DICTIONARY: &[&[u8]] = &[b"a", b"b", b"(", b")", b".", b"=", b"B0OM", b"HANG", b"x"];

#[test]
fn a_planted_panic_is_found_and_saved() {
    let target = Target {
        name: "planted-panic",
        run: planted_panic,
        dictionary: PLANTED_DICTIONARY,
        max_len: 256,
    };
    let c = config(10.0, 1, "panic");
    let report = runner::run(&target, vec![b"a=b".to_vec(), b"(x)".to_vec()], &c);
    assert!(
        report.elapsed < Duration::from_secs(5),
        "found late: {report:?}"
    );
    let [failure] = &report.failures[..] else {
        panic!("the planted bug was not found: {report:?}");
    };
    assert_eq!(failure.kind, FailureKind::Panic("planted bug".into()));
    assert!(failure.input.windows(4).any(|w| w == b"B0OM"));
    let saved = failure.saved.as_ref().expect("the input is saved");
    assert!(saved.starts_with(c.crash_dir.join("planted-panic")));
    assert_eq!(std::fs::read(saved).expect("saved input"), failure.input);
    let _ = std::fs::remove_dir_all(&c.crash_dir);
}

#[test]
fn a_planted_hang_is_reported_as_a_timeout() {
    let target = Target {
        name: "planted-hang",
        run: planted_hang,
        dictionary: PLANTED_DICTIONARY,
        max_len: 256,
    };
    let mut c = config(10.0, 2, "hang");
    c.timeout = Duration::from_millis(300);
    let report = runner::run(&target, vec![b"a=b".to_vec()], &c);
    assert!(
        report.elapsed < Duration::from_secs(6),
        "found late: {report:?}"
    );
    let [failure] = &report.failures[..] else {
        panic!("the planted hang was not reported: {report:?}");
    };
    assert!(
        matches!(failure.kind, FailureKind::Timeout(d) if d >= c.timeout),
        "{failure:?}"
    );
    assert!(failure.input.windows(4).any(|w| w == b"HANG"));
    assert!(failure.saved.is_some());
    assert_eq!(report.to_json()["failures"][0]["kind"], "timeout");
    let _ = std::fs::remove_dir_all(&c.crash_dir);
}

#[test]
fn a_panicking_seed_fails_the_run() {
    let target = Target {
        name: "planted-seed",
        run: planted_panic,
        dictionary: &[],
        max_len: 16,
    };
    let report = runner::run(&target, vec![b"B0OM".to_vec()], &config(0.0, 3, "seed"));
    assert!(!report.ok());
    assert_eq!(report.executions, 1);
    let _ = std::fs::remove_dir_all(scratch("seed"));
}

fn planted_slow(data: &[u8], out: &mut Outcomes) {
    out.note(data.len());
    if data == b"slow" {
        std::thread::sleep(Duration::from_millis(120));
    }
}

#[test]
fn an_input_slower_than_the_timeout_fails() {
    let target = Target {
        name: "planted-slow",
        run: planted_slow,
        dictionary: &[],
        max_len: 16,
    };
    let mut c = config(0.0, 4, "slow");
    // Whichever sees it first: the watching thread, or the input's own
    // clock once it returns.
    c.timeout = Duration::from_millis(100);
    let report = runner::run(&target, vec![b"slow".to_vec()], &c);
    assert!(
        matches!(
            report.failures.first().map(|f| &f.kind),
            Some(FailureKind::Timeout(_))
        ),
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(&c.crash_dir);
}
