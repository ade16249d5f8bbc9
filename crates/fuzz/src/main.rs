//! `madbase-fuzz [--seconds N] [--seed S] [--json] [TARGET…]`: fuzzes each
//! target (every one by default) for N seconds (default 60) from its seed
//! corpus, prints a line per target, and exits non-zero when any input
//! panicked or hung. `--seed` replays a run (the seed is printed);
//! `--json` prints the figures as one JSON array on stdout (the lines go to
//! stderr then).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use madbase_fuzz::runner::{self, Config, FailureKind};
use madbase_fuzz::targets;

const USAGE: &str = "usage: madbase-fuzz [--seconds N] [--seed S] [--timeout-ms N] [--corpus DIR] [--json] [TARGET...]\ntargets: query select prefer jwt frame";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let mut seconds = 60.0_f64;
    let mut seed = None;
    let mut timeout = Duration::from_secs(1);
    let mut corpus = runner::corpus_dir();
    let mut json = false;
    let mut chosen = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
            }
            "--seed" => {
                seed = Some(
                    value("--seed")?
                        .parse::<u64>()
                        .map_err(|e| format!("--seed: {e}"))?,
                );
            }
            "--timeout-ms" => {
                timeout = Duration::from_millis(
                    value("--timeout-ms")?
                        .parse()
                        .map_err(|e| format!("--timeout-ms: {e}"))?,
                );
            }
            "--corpus" => corpus = value("--corpus")?.into(),
            "--json" => json = true,
            "-h" | "--help" => {
                return Err("madbase-fuzz: mutation fuzzing of madbase's parsers".into());
            }
            name => chosen
                .push(targets::by_name(name).ok_or_else(|| format!("unknown target {name:?}"))?),
        }
    }
    if chosen.is_empty() {
        chosen = targets::ALL.to_vec();
    }
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err("--seconds must be a number of seconds".into());
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    });
    let mut config = Config::new(Duration::from_secs_f64(seconds), seed);
    config.timeout = timeout;
    eprintln!("madbase-fuzz: seed {seed} (replay with --seed {seed}), {seconds} s per target");
    let mut all_ok = true;
    let mut reports = Vec::new();
    for target in &chosen {
        let dir = corpus.join(target.name);
        let seeds = runner::load_corpus(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let report = runner::run(target, seeds, &config);
        let status = match report.failures.first() {
            None => "ok".to_owned(),
            Some(f) => format!(
                "FAILED: {} (input saved to {})",
                match &f.kind {
                    FailureKind::Panic(m) => format!("panic: {m}"),
                    FailureKind::Timeout(d) =>
                        format!("timeout: still running after {} ms", d.as_millis()),
                },
                f.saved
                    .as_ref()
                    .map_or("nowhere: saving failed".to_owned(), |p| p
                        .display()
                        .to_string())
            ),
        };
        let line = format!(
            "{:<7} {:>10} execs in {:>5.1} s ({:>8.0}/s), {} seeds, corpus {}, {} outcomes: {status}",
            report.target,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.execs_per_sec(),
            report.seeds,
            report.corpus,
            report.outcomes,
        );
        if json {
            eprintln!("{line}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
        all_ok &= report.ok();
        reports.push(report.to_json());
    }
    if json {
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::Value::Array(reports)
        );
    }
    Ok(all_ok)
}
