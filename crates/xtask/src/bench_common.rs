//! What the benchmarks (`bench` for the worker, `bench_proxy` for the
//! proxy, and the others) use: how long to measure ([`Plan`]: a full run or
//! `--smoke`), the results' JSON and BENCHMARKS.md writer ([`Report`]),
//! medians and per-round ratios, ports, the target directory, HTTP probes,
//! CPU time from /proc, and the madbase services they start (control with a
//! tenant, the proxy), each a [`Guard`] ended with the benchmark, and
//! another build to measure alongside ([`Baseline`], from `--baseline`).
//!
//! A benchmark builds a [`Report`] of [`Table`]s whose cells are text or
//! [`Figure`]s (a value with its unit, the per-round values it is the median
//! of, and its target), and calls [`Report::write`]: the JSON goes to
//! `target/bench/<name>.json` (`<name>-smoke.json` for `--smoke`), and a full
//! run also regenerates BENCHMARKS.md between the lines
//! `<!-- bench:<name>:begin -->` and `<!-- bench:<name>:end -->` (a smoke run
//! never touches it). Everything outside the markers is hand-kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Serialize;

use crate::procs::{GRACE, Guard};
use crate::util::{free_port, http_client, output, root, run};

/// How long each measurement runs and how many rounds: a full run, or
/// `--smoke` (1 s, one round, a 1 s warm-up: only that the harness works).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Plan {
    pub(crate) smoke: bool,
    /// Seconds of one measured run.
    pub(crate) seconds: u32,
    /// Rounds: each side runs once per round, in turn.
    pub(crate) rounds: usize,
    /// Seconds of each side's warm-up run.
    pub(crate) warmup: u32,
}

impl Plan {
    pub(crate) fn new(smoke: bool) -> Plan {
        if smoke {
            Plan {
                smoke,
                seconds: 1,
                rounds: 1,
                warmup: 1,
            }
        } else {
            Plan {
                smoke,
                seconds: 8,
                rounds: 5,
                warmup: 2,
            }
        }
    }
}

/// Another build to compare with, from `--baseline <label>=<path>`.
#[derive(Debug, Clone)]
pub(crate) struct Baseline {
    pub(crate) bin: PathBuf,
    /// How it is named in the report (e.g. its commit).
    pub(crate) label: String,
}

impl std::str::FromStr for Baseline {
    type Err = String;

    fn from_str(s: &str) -> Result<Baseline, String> {
        let (label, bin) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected <label>=<madbase binary>"))?;
        Ok(Baseline {
            bin: PathBuf::from(bin),
            label: label.to_owned(),
        })
    }
}

/// The median (the upper one of an even count); 0 for none.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Each round's `a / b` (runs of the same round sit next to each other in
/// time, so the machine's drift cancels out of their ratio).
pub(crate) fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// A target a figure is held to.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    AtLeast(f64),
    #[allow(dead_code, reason = "for upper bounds (CPU, size, time)")]
    AtMost(f64),
}

impl Target {
    pub(crate) fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(t) => value >= t,
            Target::AtMost(t) => value <= t,
        }
    }
}

/// One measured figure: the median of its rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) value: f64,
    /// Appended to the value in BENCHMARKS.md ("×", " µs", or "").
    pub(crate) unit: &'static str,
    /// Decimals shown in BENCHMARKS.md (the JSON has the full value).
    pub(crate) decimals: usize,
    /// The per-round values the figure is the median of.
    pub(crate) rounds: Vec<f64>,
    /// Smallest and largest round.
    pub(crate) spread: [f64; 2],
    pub(crate) target: Option<Target>,
    /// Whether the value meets the target (absent without one).
    pub(crate) met: Option<bool>,
}

impl Figure {
    /// The median of `rounds`.
    pub(crate) fn median(rounds: Vec<f64>, unit: &'static str, decimals: usize) -> Figure {
        let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Figure {
            value: median(&rounds),
            unit,
            decimals,
            spread: if rounds.is_empty() {
                [0.0; 2]
            } else {
                [lo, hi]
            },
            rounds,
            target: None,
            met: None,
        }
    }

    /// The median of the per-round ratios `a / b`, shown as "0.72×".
    pub(crate) fn ratio(a: &[f64], b: &[f64]) -> Figure {
        Figure::median(ratios(a, b), "×", 2)
    }

    pub(crate) fn target(mut self, target: Target) -> Figure {
        self.met = Some(target.met(self.value));
        self.target = Some(target);
        self
    }

    /// The value as shown ("0.72×").
    pub(crate) fn shown(&self) -> String {
        format!("{:.*}{}", self.decimals, self.value, self.unit)
    }

    /// Every round's value ("0.70 0.85 0.72").
    pub(crate) fn rounds_shown(&self) -> String {
        let decimals = if self.unit == "×" { 2 } else { self.decimals };
        self.rounds
            .iter()
            .map(|r| format!("{r:.decimals$}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The target as shown ("≥ 0.8×"; empty without one).
    pub(crate) fn target_shown(&self) -> String {
        match self.target {
            None => String::new(),
            Some(Target::AtLeast(t)) => format!("≥ {t}{}", self.unit),
            Some(Target::AtMost(t)) => format!("≤ {t}{}", self.unit),
        }
    }
}

/// A table cell: text, or a figure (shown as [`Figure::shown`]).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Cell {
    Text(String),
    Figure(Figure),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<Figure> for Cell {
    fn from(f: Figure) -> Cell {
        Cell::Figure(f)
    }
}

impl Cell {
    fn shown(&self) -> String {
        match self {
            Cell::Text(t) => t.replace('|', "\\|"),
            Cell::Figure(f) => f.shown(),
        }
    }
}

/// One table of a report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Table {
    /// Stable key for readers of the JSON ("worker", "mixed").
    pub(crate) id: String,
    /// Shown above the table (empty: none).
    pub(crate) title: String,
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Cell>>,
    /// Shown below the table (how to read it).
    pub(crate) notes: Vec<String>,
}

impl Table {
    pub(crate) fn new(id: &str, title: &str, columns: &[&str]) -> Table {
        Table {
            id: id.to_owned(),
            title: title.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The Markdown table (title, header, rows, notes).
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        if !self.title.is_empty() {
            out.push_str(&format!("{}\n\n", self.title));
        }
        out.push_str(&format!("| {} |\n", self.columns.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(Cell::shown).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        for note in &self.notes {
            out.push_str(&format!("\n{note}\n"));
        }
        out
    }

    /// The figures of the table that missed their target, as "row: column".
    pub(crate) fn missed(&self) -> Vec<String> {
        let mut missed = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Cell::Figure(f) = cell
                    && f.met == Some(false)
                {
                    let name = row.first().map(Cell::shown).unwrap_or_default();
                    let column = self.columns.get(i).cloned().unwrap_or_default();
                    missed.push(format!(
                        "{name}: {column} {} ({})",
                        f.shown(),
                        f.target_shown()
                    ));
                }
            }
        }
        missed
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    /// 1-, 5- and 15-minute load averages when the run started and ended.
    pub(crate) load_start: [f64; 3],
    pub(crate) load_end: [f64; 3],
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

impl Machine {
    fn now() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            load_start: load_average(),
            load_end: [0.0; 3],
        }
    }
}

/// One benchmark's results: [`Report::start`] when the benchmark starts,
/// tables pushed as they are measured, [`Report::write`] at the end.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// `worker`, `proxy`, `functions`, `footprint`: the JSON file's name and
    /// BENCHMARKS.md's markers.
    pub(crate) name: String,
    pub(crate) plan: Plan,
    /// UTC, RFC 3339.
    pub(crate) started: String,
    pub(crate) finished: String,
    /// `git rev-parse HEAD` (short), its subject, and whether the work tree
    /// had uncommitted changes (it is measured as built).
    pub(crate) commit: String,
    pub(crate) subject: String,
    pub(crate) dirty: bool,
    pub(crate) machine: Machine,
    /// How it was measured (a paragraph above the tables).
    pub(crate) method: String,
    pub(crate) tables: Vec<Table>,
    /// Shown below the tables.
    pub(crate) notes: Vec<String>,
}

fn git(args: &[&str]) -> String {
    output(Command::new("git").args(args))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Where BENCHMARKS.md's generated part for `name` begins and ends.
fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench:{name}:begin -->"),
        format!("<!-- bench:{name}:end -->"),
    )
}

/// `doc` with the text between `name`'s markers replaced by `generated`.
pub(crate) fn splice(doc: &str, name: &str, generated: &str) -> Result<String> {
    let (begin, end) = markers(name);
    let (head, rest) = doc
        .split_once(&begin)
        .with_context(|| format!("BENCHMARKS.md has no line {begin}"))?;
    let (_, tail) = rest
        .split_once(&end)
        .with_context(|| format!("BENCHMARKS.md has no line {end} after {begin}"))?;
    ensure!(
        !tail.contains(&begin),
        "BENCHMARKS.md has {begin} more than once"
    );
    Ok(format!("{head}{begin}\n{generated}{end}{tail}"))
}

impl Report {
    pub(crate) fn start(name: &str, plan: Plan, method: &str) -> Report {
        Report {
            name: name.to_owned(),
            plan,
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished: String::new(),
            commit: git(&["rev-parse", "--short", "HEAD"]),
            subject: git(&["log", "-1", "--format=%s"]),
            dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
            machine: Machine::now(),
            method: method.to_owned(),
            tables: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// `<name>.json`, or `<name>-smoke.json` for a smoke run.
    fn file_name(&self) -> String {
        if self.plan.smoke {
            format!("{}-smoke.json", self.name)
        } else {
            format!("{}.json", self.name)
        }
    }

    /// The generated Markdown: when, what, where, then the tables.
    pub(crate) fn markdown(&self) -> String {
        let subject: String = self.subject.chars().take(60).collect();
        let ellipsis = if subject.len() < self.subject.len() {
            "…"
        } else {
            ""
        };
        let m = &self.machine;
        let busy = if m.load_start[0] >= 0.5 || m.load_end[0] >= 1.5 {
            " The machine was busy with other work (load above), so absolute \
             figures are low and noisy; the ratios compare peers measured in \
             the same round."
        } else {
            ""
        };
        let mut out = format!(
            "Generated by `cargo xtask bench {name}` from `target/bench/{file}`; \
             do not edit between the markers.\n\n\
             Run: {started} to {finished}, commit `{commit}` ({subject}{ellipsis}){dirty}; \
             {rounds} round(s) × {seconds} s. Machine: {cpus} × {model}, Linux {kernel}, \
             load average {l0:.2} / {l1:.2} / {l2:.2} at the start, {e0:.2} at the end.{busy}\n\n",
            name = self.name,
            file = self.file_name(),
            started = self.started,
            finished = self.finished,
            commit = self.commit,
            dirty = if self.dirty {
                " plus uncommitted changes"
            } else {
                ""
            },
            rounds = self.plan.rounds,
            seconds = self.plan.seconds,
            cpus = m.cpus,
            model = m.cpu_model,
            kernel = m.kernel,
            l0 = m.load_start[0],
            l1 = m.load_start[1],
            l2 = m.load_start[2],
            e0 = m.load_end[0],
        );
        if !self.method.is_empty() {
            out.push_str(&format!("{}\n\n", self.method));
        }
        for table in &self.tables {
            out.push_str(&table.markdown());
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(&format!("{note}\n\n"));
        }
        out
    }

    /// Every figure that missed its target.
    pub(crate) fn missed(&self) -> Vec<String> {
        self.tables.iter().flat_map(Table::missed).collect()
    }

    /// Prints the report, writes its JSON and, for a full run, regenerates
    /// BENCHMARKS.md's part for it; returns the JSON's path.
    #[allow(clippy::print_stdout)] // the report is the benchmark's output
    pub(crate) fn write(mut self) -> Result<PathBuf> {
        self.finished = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.machine.load_end = load_average();
        let markdown = self.markdown();
        println!("\n{markdown}");
        let missed = self.missed();
        if !missed.is_empty() {
            println!("below target:\n  {}", missed.join("\n  "));
        }
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(self.file_name());
        std::fs::write(&path, serde_json::to_string_pretty(&self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
        if !self.plan.smoke {
            let doc_path = root().join("BENCHMARKS.md");
            let doc = std::fs::read_to_string(&doc_path)?;
            std::fs::write(&doc_path, splice(&doc, &self.name, &markdown)?)?;
            eprintln!("bench: regenerated BENCHMARKS.md ({})", self.name);
        }
        Ok(path)
    }
}

/// The services' `JWT_SECRET`.
pub(crate) const SECRET: &str = "bench-secret-that-is-at-least-32-bytes-long";
/// Control's `MADBASE_MASTER_KEY`.
pub(crate) const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Cargo's target directory (`CARGO_TARGET_DIR` when set).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Polls `GET url` until it answers a success, for up to 60 s.
pub(crate) fn wait_http(url: &str) -> Result<()> {
    let http = http_client(Duration::from_secs(2))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http.get(url).send().is_ok_and(|a| a.status().is_success()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 60 s")
}

/// `POST url` of `body` with `Authorization: Bearer <token>`; the JSON answer
/// of a success.
pub(crate) fn post_json(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let answer = http_client(Duration::from_secs(60))?
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .with_context(|| format!("POST {url}"))?;
    let status = answer.status();
    let text = answer.text()?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// CPU seconds (user + system) a process has used, from /proc.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = procfs::process::Process::new(i32::try_from(pid)?)?.stat()?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// CPU seconds of `pid` and every process below it (nginx's master and
/// worker, the functions service and its workers), children of any of its
/// threads.
pub(crate) fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let mut total = cpu_seconds(pid)?;
    for child in children(pid)? {
        total += tree_cpu_seconds(child).unwrap_or(0.0);
    }
    Ok(total)
}

/// The child processes of `pid`, whichever of its threads started them
/// (`/proc/<pid>/task/<tid>/children` of every thread).
pub(crate) fn children(pid: u32) -> Result<Vec<u32>> {
    let process = procfs::process::Process::new(i32::try_from(pid)?)?;
    let mut out = Vec::new();
    for task in process.tasks()?.flatten() {
        out.extend(task.children().unwrap_or_default());
    }
    Ok(out)
}

/// Pins the Postgres server (postmaster and its processes; backends forked
/// later inherit it) to `cpu`: it is a server like the others, and its
/// backends must not borrow the load generator's core.
fn pin_postgres(server: &madbase_testkit::PgServer, cpu: &str) -> Result<()> {
    let data = server.psql("postgres", "SHOW data_directory")?;
    let pidfile = std::fs::read_to_string(Path::new(&data).join("postmaster.pid"))
        .context("reading postmaster.pid")?;
    let postmaster = pidfile
        .lines()
        .next()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .context("postmaster.pid has no pid")?
        .to_owned();
    let children = output(Command::new("pgrep").args(["-P", &postmaster]))?;
    for pid in std::iter::once(postmaster.as_str()).chain(children.lines().map(str::trim)) {
        run(Command::new("taskset")
            .args(["-apc", cpu, pid])
            .stdout(Stdio::null()))?;
    }
    Ok(())
}

/// Control, running on CPU1 against a throwaway Postgres, with one tenant.
pub(crate) struct BenchControl {
    _proc: Guard,
    pub(crate) url: String,
    /// The admin token (`Authorization: Bearer` of control's admin API).
    pub(crate) token: String,
    pub(crate) anon: String,
    /// The throwaway database control runs on (its server holds the tenant's).
    pub(crate) db: madbase_testkit::TestDb,
}

/// Starts control (logging to `work/control.log`) and creates `tenant`.
pub(crate) fn control_with_tenant(bin: &Path, work: &Path, tenant: &str) -> Result<BenchControl> {
    let db = madbase_testkit::postgres()?;
    pin_postgres(&db.server, "0")?;
    let control_port = free_port()?;
    let mut control_cmd = Command::new("taskset");
    control_cmd
        .args(["-c", "1"])
        .arg(bin)
        .arg("control")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_MASTER_KEY", MASTER_KEY)
        .env("DATABASE_URL", &db.url)
        .env("DEFAULT_TENANT_DB_URL", db.server.url_for("postgres"))
        .env("MADBASE_LISTEN", format!("127.0.0.1:{control_port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .stdout(std::fs::File::create(work.join("control.log"))?)
        .stderr(Stdio::inherit());
    let proc = Guard::spawn(&mut control_cmd, GRACE).context("starting control")?;
    let url = format!("http://127.0.0.1:{control_port}");
    wait_http(&format!("{url}/health"))?;
    let admin = output(
        Command::new(bin)
            .args(["token", "admin"])
            .env("JWT_SECRET", SECRET),
    )?;
    let token = admin.trim().to_owned();
    let created = post_json(
        &format!("{url}/v1/tenants"),
        &token,
        &serde_json::json!({ "id": tenant }),
    )?;
    let anon = created["anon_key"].as_str().context("anon key")?.to_owned();
    Ok(BenchControl {
        _proc: proc,
        url,
        token,
        anon,
        db,
    })
}

/// The proxy on CPU0 with one Tokio thread (logging to `work/proxy.log`),
/// in front of `worker_url`; returns it and its port once healthy.
pub(crate) fn start_proxy(
    bin: &Path,
    work: &Path,
    control_url: &str,
    worker_url: &str,
) -> Result<(Guard, u16)> {
    start_proxy_with(
        bin,
        work,
        control_url,
        &[("MADBASE_WORKER_URL", worker_url.to_owned())],
    )
}

/// [`start_proxy`] with its upstreams (or other settings) in `env`, e.g.
/// `MADBASE_FUNCTIONS_URL`.
pub(crate) fn start_proxy_with(
    bin: &Path,
    work: &Path,
    control_url: &str,
    env: &[(&str, String)],
) -> Result<(Guard, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(bin)
        .arg("proxy")
        .env("TOKIO_WORKER_THREADS", "1")
        .env("JWT_SECRET", SECRET)
        .env("MADBASE_CONTROL_URL", control_url)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("MADBASE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "MADBASE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env("MADBASE_RATE_LIMIT_RPS", "1000000")
        .stdout(std::fs::File::create(work.join("proxy.log"))?)
        .stderr(Stdio::inherit());
    let proxy = Guard::spawn(&mut cmd, GRACE).context("starting the proxy")?;
    wait_http(&format!("http://127.0.0.1:{port}/health"))?;
    Ok((proxy, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_between_the_markers_only() {
        let doc =
            "# B\nkept\n<!-- bench:worker:begin -->\nold\n<!-- bench:worker:end -->\nhistory\n";
        let new = splice(doc, "worker", "new\n").expect("markers");
        assert_eq!(
            new,
            "# B\nkept\n<!-- bench:worker:begin -->\nnew\n<!-- bench:worker:end -->\nhistory\n"
        );
        assert!(splice(doc, "proxy", "x").is_err());
    }

    #[test]
    fn figures_are_medians_of_rounds_with_targets() {
        let f = Figure::ratio(&[1.0, 3.0, 2.0], &[2.0, 4.0, 4.0]).target(Target::AtLeast(0.6));
        assert_eq!(f.value, 0.5);
        assert_eq!(f.spread, [0.5, 0.75]);
        assert_eq!(f.met, Some(false));
        assert_eq!(f.shown(), "0.50×");
        assert_eq!(f.target_shown(), "≥ 0.6×");
        let mut t = Table::new("t", "", &["workload", "ratio"]);
        t.row(vec!["get".into(), f.into()]);
        assert_eq!(t.missed(), vec!["get: ratio 0.50× (≥ 0.6×)".to_owned()]);
        assert!(t.markdown().contains("| get | 0.50× |"));
    }

    #[test]
    fn cpu_seconds_reads_this_process() {
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(busy.elapsed());
        }
        let cpu = cpu_seconds(std::process::id()).expect("/proc/<pid>/stat");
        assert!(cpu > 0.0 && cpu < 3600.0, "{cpu}");
    }

    #[test]
    fn children_started_by_any_thread_are_found() {
        // Started from a thread other than the main one, as a Tokio
        // worker thread starts the functions service's workers.
        let mut child = std::thread::spawn(|| {
            std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .expect("sleep")
        })
        .join()
        .expect("thread");
        let found = super::children(std::process::id()).expect("/proc");
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.contains(&child.id()),
            "{found:?} lacks {}",
            child.id()
        );
    }
}

/// What one `wrk --latency` run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkRun {
    /// Requests completed.
    pub requests: f64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, in seconds (NaN when wrk printed none).
    pub p50: f64,
    pub p99: f64,
}

/// One `wrk -t1 --latency` run (the benchmarks' one load generator),
/// pinned to CPU1 unless [`Wrk::unpinned`]. A non-2xx answer fails it.
pub(crate) struct Wrk<'a> {
    url: &'a str,
    connections: u32,
    seconds: u32,
    script: Option<&'a Path>,
    headers: Vec<String>,
    pinned: bool,
}

impl<'a> Wrk<'a> {
    pub(crate) fn new(url: &'a str, connections: u32, seconds: u32) -> Self {
        Wrk {
            url,
            connections,
            seconds,
            script: None,
            headers: Vec::new(),
            pinned: true,
        }
    }

    /// A Lua script (`-s`).
    pub(crate) fn script(mut self, script: &'a Path) -> Self {
        self.script = Some(script);
        self
    }

    /// Request headers (`-H "name: value"`).
    pub(crate) fn headers<S: AsRef<str>>(mut self, headers: &[S]) -> Self {
        self.headers = headers.iter().map(|h| h.as_ref().to_owned()).collect();
        self
    }

    /// Not pinned: wrk runs wherever the scheduler puts it.
    pub(crate) fn unpinned(mut self) -> Self {
        self.pinned = false;
        self
    }

    pub(crate) fn run(&self) -> Result<WrkRun> {
        let mut cmd = if self.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", "wrk"]);
            c
        } else {
            Command::new("wrk")
        };
        cmd.args(["-t1", "--latency"])
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds));
        if let Some(script) = self.script {
            cmd.arg("-s").arg(script);
        }
        for h in &self.headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .arg(self.url)
            .output()
            .context("running wrk (apt: wrk)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "wrk against {} failed: {text}{}",
                self.url,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if text.contains("Non-2xx") {
            bail!(
                "non-2xx answers from {} during the benchmark:\n{text}",
                self.url
            );
        }
        parse_wrk(&text)
    }
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.01s`, `1.10m`) in seconds.
fn wrk_seconds(v: &str) -> Option<f64> {
    let v = v.trim();
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The figures of wrk's output (with `--latency`).
pub(crate) fn parse_wrk(text: &str) -> Result<WrkRun> {
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("wrk output: requests in\n{text}"))?;
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: Requests/sec in\n{text}"))?;
    let percentile = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(wrk_seconds)
            .unwrap_or(f64::NAN)
    };
    Ok(WrkRun {
        requests,
        rps,
        p50: percentile("50%"),
        p99: percentile("99%"),
    })
}

#[cfg(test)]
mod wrk_tests {
    use super::parse_wrk;

    /// `bench-smoke` runs every benchmark on one Postgres, where a
    /// tenant's roles are cluster-wide: two benchmarks with one tenant
    /// name collide (`role "tenant_…_owner" already exists`).
    #[test]
    fn each_benchmark_has_its_own_tenant() {
        let names = [
            crate::bench::TENANT,
            crate::bench_proxy::TENANT,
            crate::bench_functions::TENANT,
            crate::bench_footprint::TENANT,
        ];
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn baseline_is_label_equals_binary() {
        let b: super::Baseline = "abc123=/tmp/x=y/madbase".parse().expect("parsed");
        assert_eq!(b.label, "abc123");
        assert_eq!(b.bin, std::path::PathBuf::from("/tmp/x=y/madbase"));
        assert!("no-equals-sign".parse::<super::Baseline>().is_err());
    }

    #[test]
    fn wrk_latency_and_rate_are_read() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n\
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                    Latency     1.50ms  300.00us   5.00ms   90.00%\n\
                    Latency Distribution\n     50%  812.00us\n     75%    1.20ms\n\
                    90%    2.00ms\n     99%    1.05s\n\
                    1000 requests in 1.00s, 100.00KB read\nRequests/sec:   1000.50\n";
        let w = parse_wrk(text).expect("parsed");
        assert_eq!(w.requests, 1000.0);
        assert_eq!(w.rps, 1000.5);
        assert!((w.p50 - 0.000_812).abs() < 1e-12);
        assert!((w.p99 - 1.05).abs() < 1e-12);
        assert!(parse_wrk("no figures").is_err());
    }
}
