//! `cargo xtask soak [--minutes N] [--report]`: the reliability scenarios
//! of issue 24 with their figures. The fast ones (worker killed, SIGTERM
//! drains, control and Postgres stopped, slow clients, disk full, tenant
//! isolation, JWT and query corpora, limits: the `faults::`, `outages::`,
//! `slow::`, `disk::` and `hostile::` tests of `crates/madbase/tests/it`, which
//! the nextest check also runs in `cargo xtask ci`), the property tests
//! with many cases, each fuzz target of `crates/fuzz` for 60 s (a release
//! build of `madbase-fuzz`), then the long mixed soak (`soak::`, ignored in the
//! fast runs) for `--minutes` (default 10). Each scenario appends one
//! JSON line of figures to `target/reliability/figures.jsonl`;
//! `--report` turns them into RELIABILITY.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{root, run, step};

/// The property tests in crates/{worker,tenancy}/tests/prop.rs and the
/// worker's rendered-SQL property (crates/worker/tests/it/sql_prop.rs).
const PROPERTIES: u64 = 9;

/// Fuzzing time per target of `madbase-fuzz` (crates/fuzz).
const FUZZ_SECONDS: u32 = 60;

/// The fast scenarios, as a nextest filter.
const FAST: &str = "test(/^(faults|hostile|outages|slow|disk)::/)";

pub fn run_task(minutes: f64, report: bool, proptest_cases: u32) -> Result<()> {
    let dir = root().join("target/reliability");
    std::fs::create_dir_all(&dir)?;
    let figures = dir.join("figures.jsonl");
    let _ = std::fs::remove_file(&figures);
    let seconds = (minutes * 60.0).round().max(10.0) as u64;

    step("reliability: fast scenarios (faults, hostile input)");
    run(nextest(&["-p", "madbase", "--test", "it", "-E", FAST])
        .env("MADBASE_RELIABILITY_OUT", &figures))?;

    step(&format!(
        "reliability: property tests, {proptest_cases} cases each"
    ));
    let started = std::time::Instant::now();
    run(nextest(&[
        "-p",
        "madbase-worker",
        "-p",
        "madbase-tenancy",
        "-E",
        "binary(prop) | test(prop_rendered_sql_is_accepted_by_postgres)",
    ])
    .env("PROPTEST_CASES", proptest_cases.to_string()))?;
    let line = serde_json::json!({
        "scenario": "property tests (worker query string, select, filters, Prefer; JWT and key extraction; rendered SQL run by Postgres)",
        "figures": {
            "requests": u64::from(proptest_cases) * PROPERTIES,
            "outcomes": {},
            "errors": 0,
            "data": format!(
                "{PROPERTIES} properties x {proptest_cases} cases in {:.0} s: no panic, nesting over the limit refused, well-formed queries parse, the SQL rendered for random valid queries is accepted and run by Postgres, unsigned tokens refused",
                started.elapsed().as_secs_f64()
            ),
        },
    });
    let mut text = std::fs::read_to_string(&figures).unwrap_or_default();
    text.push_str(&format!("{line}\n"));
    std::fs::write(&figures, text)?;

    step(&format!(
        "reliability: fuzz targets, {FUZZ_SECONDS} s each (crates/fuzz)"
    ));
    let fuzz_failures = fuzz(&figures)?;

    step(&format!("reliability: mixed soak, {seconds} s"));
    run(nextest(&[
        "-p",
        "madbase",
        "--test",
        "it",
        "--run-ignored",
        "only",
        "-E",
        "test(/^soak::/)",
    ])
    .env("MADBASE_RELIABILITY_OUT", &figures)
    .env("MADBASE_SOAK_SECONDS", seconds.to_string()))?;

    if report {
        let text = std::fs::read_to_string(&figures)
            .with_context(|| format!("reading {}", figures.display()))?;
        let md = render(&text, minutes)?;
        std::fs::write(root().join("RELIABILITY.md"), md)?;
        eprintln!("wrote RELIABILITY.md");
    }
    if fuzz_failures > 0 {
        bail!(
            "the fuzz targets found {fuzz_failures} failing input(s) (saved under target/fuzz/crashes; replay with the seed above)"
        );
    }
    Ok(())
}

/// Runs every fuzz target for [`FUZZ_SECONDS`] (release build) and appends
/// a figures line per target; the number of failing inputs found (the
/// figures are kept either way, the soak fails at its end).
fn fuzz(figures: &std::path::Path) -> Result<u64> {
    crate::images::cargo_release(&["-p", "madbase-fuzz"])?;
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "-q",
        "--release",
        "-p",
        "madbase-fuzz",
        "--",
        "--json",
    ])
    .args(["--seconds", &FUZZ_SECONDS.to_string()])
    .env("RUST_BACKTRACE", "0")
    .current_dir(root())
    .stderr(Stdio::inherit());
    // As built just above: `cargo run` would build again otherwise.
    crate::images::release_env(&mut cmd, &crate::images::revision()?);
    eprintln!("+ {cmd:?}");
    // Exits 1 when a target failed: the figures say which.
    let out = cmd.output().context("cannot start madbase-fuzz")?;
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "madbase-fuzz ({}) printed no figures: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let mut text = std::fs::read_to_string(figures).unwrap_or_default();
    let mut failed = 0;
    for line in fuzz_lines(&reports) {
        failed += line["figures"]["errors"].as_u64().unwrap_or(0);
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(figures, text)?;
    if failed == 0 && !out.status.success() {
        bail!(
            "madbase-fuzz failed with {} and no failing input",
            out.status
        );
    }
    Ok(failed)
}

/// A figures line per target from `madbase-fuzz --json`.
fn fuzz_lines(reports: &[Value]) -> Vec<Value> {
    reports
        .iter()
        .map(|r| {
            let failures = r["failures"].as_array().cloned().unwrap_or_default();
            let found = failures
                .iter()
                .map(|f| {
                    format!(
                        "{}: {} (saved to {})",
                        f["kind"].as_str().unwrap_or("?"),
                        f["message"].as_str().unwrap_or(""),
                        f["saved"].as_str().unwrap_or("nowhere")
                    )
                })
                .collect::<Vec<_>>();
            serde_json::json!({
                "scenario": format!("fuzz {}", r["target"].as_str().unwrap_or("?")),
                "figures": {
                    "requests": r["executions"],
                    "outcomes": {},
                    "errors": failures.len(),
                    "data": format!(
                        "{} execs/s over {:.0} s; corpus {} seeds -> {} kept ({} distinct outcomes); seed {}{}",
                        r["execs_per_sec"],
                        r["seconds"].as_f64().unwrap_or(0.0),
                        r["seeds"],
                        r["corpus"],
                        r["outcomes"],
                        r["seed"],
                        if found.is_empty() {
                            "; no panic, no timeout".to_owned()
                        } else {
                            format!("; FOUND {}", found.join("; "))
                        }
                    ),
                },
            })
        })
        .collect()
}

fn nextest(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["nextest", "run", "--no-fail-fast", "--no-capture"])
        .args(args)
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// RELIABILITY.md from the figures (one JSON object per line:
/// `{"scenario", "figures": {requests, outcomes, errors, ...}}`).
pub fn render(jsonl: &str, minutes: f64) -> Result<String> {
    let mut rows = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("bad line {line}"))?;
        rows.push(v);
    }
    if rows.is_empty() {
        bail!("no figures were recorded");
    }
    let mut md = String::new();
    let now = utc_now();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "# Reliability\n\n\
         What madbase survived, measured. Regenerated by `cargo xtask soak --report` \
         (this run: {now}, commit {commit}, soak of {minutes} min{}). The scenarios \
         are the tests in `crates/madbase/tests/it/{{faults,hostile,soak}}.rs`, the \
         property tests (`prop_*`) of the worker and the platform, and the fuzz targets \
         of `crates/fuzz` (`madbase-fuzz`, 60 s each; their seeds and 2-second runs are \
         tests too); the fast ones run in `cargo xtask ci` (nextest check). Everything runs against the real `madbase` \
         processes and a real Postgres on loopback.\n",
        if minutes < 10.0 {
            " — shortened: the default is 10 minutes"
        } else {
            ""
        }
    );
    md.push_str(
        "| Scenario | Requests | Outcomes by status | Errors | Recovery / timing | Data check |\n\
         |---|---:|---|---:|---|---|\n",
    );
    for v in &rows {
        let f = &v["figures"];
        let outcomes: BTreeMap<String, Value> = f["outcomes"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let outcomes = outcomes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut timing = Vec::new();
        for (key, label) in [
            ("recovery_ms", "recovery"),
            ("slowest_ms", "slowest"),
            ("p99_ms", "p99"),
            ("refused_after_ms", "listener closed after"),
            ("exit_after_ms", "exit 0 after"),
        ] {
            if let Some(n) = f[key].as_f64() {
                timing.push(format!("{label} {:.0} ms", n));
            }
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            v["scenario"].as_str().unwrap_or("?"),
            f["requests"],
            if outcomes.is_empty() {
                "—".into()
            } else {
                outcomes
            },
            f["errors"],
            timing.join("; "),
            f["data"].as_str().unwrap_or("").replace('|', "/"),
        );
    }
    // Series of the soak.
    for v in rows
        .iter()
        .filter(|v| v["figures"]["worker_rss_kib"].is_array())
    {
        let f = &v["figures"];
        let _ = writeln!(md, "\n## {}\n", v["scenario"].as_str().unwrap_or("soak"));
        md.push_str("Sampled every interval (KiB for RSS):\n\n");
        for key in [
            "worker_rss_kib",
            "proxy_rss_kib",
            "control_rss_kib",
            "functions_rss_kib",
            "functions_workers_rss_kib",
            "functions_workers",
            "worker_fds",
            "proxy_fds",
            "functions_fds",
            "pg_connections",
            "p99_ms_by_window",
        ] {
            // Reports of runs before a series existed lack it.
            if f[key].is_null() {
                continue;
            }
            let _ = writeln!(md, "- `{key}`: {}", f[key]);
        }
    }
    md.push_str(
        "\n## Not covered yet\n\n\
         - `cargo fuzz` (libFuzzer, coverage-guided): it needs a nightly toolchain \
         (`-Z sanitizer`), and this project builds with stable Rust only \
         (`rust-toolchain.toml`). The `fuzz` rows above come from `crates/fuzz` \
         instead: mutation fuzzing of committed seed corpora on stable (bit and byte \
         flips, ranges inserted, deleted and duplicated, splices, grammar tokens), an \
         input kept when it reaches an outcome not seen before (a new error message or \
         parsed shape): no coverage guidance. The property tests stand in for the \
         grammar-aware half, and the SQL the worker renders for random valid selects, \
         filters, logic trees, orders and pages is run by a real Postgres \
         (`crates/worker/tests/it/sql_prop.rs`).\n\
         - This report has no figures of `podman stop` of the compose stack under \
         load: `cargo xtask e2e` checks it (reads through the proxy while \
         `podman-compose stop` runs: every answer complete, a 200 or a JSON 502/503 \
         with a request id, connections failing only after the stop began, every \
         container exiting 0) and prints its counts in its own output.\n\
         - The disk-full scenario needs `mount(2)` (root): `cargo xtask soak` runs it; \
         the sandboxed nextest check of `cargo xtask ci` runs as `nobody` and skips \
         it, saying so.\n",
    );
    Ok(md)
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_row_per_scenario() {
        let md = super::render(
            r#"{"scenario":"x","figures":{"requests":3,"outcomes":{"200":2,"502":1},"errors":1,"recovery_ms":12,"data":"ok"}}"#,
            1.0,
        )
        .expect("render");
        assert!(
            md.contains("| x | 3 | 200: 2, 502: 1 | 1 | recovery 12 ms | ok |"),
            "{md}"
        );
        assert!(md.contains("shortened"));
    }

    #[test]
    fn a_fuzz_target_becomes_a_row() {
        let reports: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"target":"query","seed":42,"executions":1000,"seconds":60.0,"execs_per_sec":17,"seeds":41,"corpus":90,"outcomes":120,"failures":[]},
                {"target":"jwt","seed":42,"executions":5,"seconds":0.1,"execs_per_sec":50.0,"seeds":39,"corpus":39,"outcomes":3,"failures":[{"kind":"panic","message":"boom","saved":"target/fuzz/crashes/jwt/00"}]}]"#,
        )
        .expect("json");
        let lines: String = super::fuzz_lines(&reports)
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        let md = super::render(&lines, 10.0).expect("render");
        assert!(
            md.contains("| fuzz query | 1000 | — | 0 |  | 17 execs/s over 60 s; corpus 41 seeds -> 90 kept (120 distinct outcomes); seed 42; no panic, no timeout |"),
            "{md}"
        );
        assert!(md.contains("| fuzz jwt | 5 | — | 1 |"), "{md}");
        assert!(
            md.contains("FOUND panic: boom (saved to target/fuzz/crashes/jwt/00)"),
            "{md}"
        );
    }
}
