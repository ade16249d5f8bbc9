//! `cargo xtask observability`: the live verification of the observability
//! config (issue 8), on loopback only, from the installed Debian packages
//! (`victoria-metrics` for victoria-metrics/vmagent/vmalert,
//! `prometheus-alertmanager`).
//!
//! 1. A throwaway Postgres (`madbase_testkit::postgres()`), the images'
//!    release build of madbase, and the four services as child processes on free loopback
//!    ports, exporting OTLP/gRPC traces to an in-process receiver, their stdout
//!    JSON logs in `target/observability/logs/<service>.log`.
//! 2. VictoriaMetrics, vmagent, vmalert and Alertmanager. The committed config
//!    is used unchanged except addresses: `config/vmagent.yml` is copied to
//!    `target/observability/vmagent.yml` with its targets rewritten to the
//!    loopback addresses and its scrape interval/timeout shortened to
//!    5s/4s (nothing else changes); `config/alerts.yml` and
//!    `config/alertmanager.yml` are loaded as they are.
//! 3. Traffic through the proxy: a tenant and a table made through control's
//!    admin API, table reads (must be 200), bad keys (401), unknown routes
//!    (404), slow reads (a view sleeping 0.3 s), and 5xx (502 from the proxy
//!    while functions is stopped, then functions is started again).
//! 4. Every Prometheus panel query of every dashboard in
//!    `config/grafana/dashboards`, variables substituted, returns a non-empty
//!    result from VictoriaMetrics (bounded wait for the scrapes).
//! 5. functions is stopped: `ServiceDown{job="functions"}` fires in vmalert
//!    and reaches Alertmanager (the real 1m `for`; bounded wait).
//! 6. One request's `X-Request-Id` is in the JSON log lines of proxy and worker.
//! 7. That request produced spans from madbase-proxy and madbase-worker with
//!    one trace id.
//!
//! Every step prints a PASS/FAIL line; the task fails when any step fails.
//! Every process it starts is killed when it ends (return, error, panic,
//! Ctrl-C/SIGTERM); the Postgres cluster dies with the process.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::observability_config::{dashboard_queries, substitute_variables};
use crate::otlp::{self, Spans};
use crate::procs::{Lines, Procs, tail};
use crate::util::{files_with_ext, random_bytes, random_hex, root, step};

/// Where everything of a run goes (data dirs, logs, rewritten vmagent.yml).
const WORK: &str = "target/observability";
const VMAGENT: &str = "config/vmagent.yml";
const ALERTS: &str = "config/alerts.yml";
const ALERTMANAGER: &str = "config/alertmanager.yml";
const DASHBOARD_DIR: &str = "config/grafana/dashboards";

/// The services in start order (proxy last: it needs the others' addresses).
const SERVICES: [&str; 4] = ["control", "worker", "functions", "proxy"];
/// The scrape targets of `config/vmagent.yml` (compose addresses) and whose
/// loopback address replaces each.
const TARGETS: [(&str, &str); 5] = [
    ("proxy:9000", "proxy"),
    ("control:9001", "control"),
    ("worker:9002", "worker"),
    ("functions:9003", "functions"),
    ("victoria-metrics:8428", "victoria-metrics"),
];
/// Scrape interval and timeout of the run (the committed config says 15s/10s).
const SCRAPE_INTERVAL: &str = "5s";
const SCRAPE_TIMEOUT: &str = "4s";
/// The service stopped for the 5xx traffic (briefly) and for ServiceDown.
const STOPPED: &str = "functions";

const TABLE: &str = "obs_items";
const SLOW_VIEW: &str = "obs_slow_items";
const BROKEN_VIEW: &str = "obs_broken";
/// How long a read of `SLOW_VIEW` sleeps in Postgres.
const SLOW: Duration = Duration::from_millis(300);
const SETUP_SQL: &str = "
create table obs_items (id int primary key, name text not null);
insert into obs_items values (1, 'one'), (2, 'two'), (3, 'three');
create function obs_pause() returns boolean language plpgsql as
  $$ begin perform pg_sleep(0.3); return true; end $$;
create view obs_slow_items as select id, name from obs_items where (select obs_pause());
create function obs_fail() returns boolean language plpgsql as
  $$ begin raise exception 'deliberate internal error (cargo xtask observability)'
     using errcode = 'XX000'; end $$;
create view obs_broken as select id, name from obs_items where (select obs_fail());
notify pgrst, 'reload schema';
";

/// Bounds of the waits; `TOTAL` bounds the whole check after the build.
const TOTAL: Duration = Duration::from_secs(330);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const DASHBOARD_WAIT: Duration = Duration::from_secs(90);
const ALERT_WAIT: Duration = Duration::from_secs(150);
const LOG_WAIT: Duration = Duration::from_secs(10);
const SPAN_WAIT: Duration = Duration::from_secs(15);

/// `cargo xtask observability`.
pub fn run() -> Result<()> {
    let started = Instant::now();
    // SIGINT/SIGTERM end the check below, which stops every child.
    crate::procs::task_handles_signals();
    let bin = build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        tokio::select! {
            r = check(&bin) => r,
            signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
            () = tokio::time::sleep(TOTAL) => Err(anyhow!(
                "the check did not finish within {TOTAL:?}; every process is stopped"
            )),
        }
    });
    // Dropping the check future above killed every child process.
    drop(runtime);
    eprintln!(
        "\nobservability: finished in {:.0} s (logs in {WORK}/logs)",
        started.elapsed().as_secs_f64()
    );
    result
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// The madbase binary the live checks run: the images' release build.
/// Shared by the live checks that run the services from the tree.
pub fn build() -> Result<PathBuf> {
    crate::images::release_binary()
}

/// PASS/FAIL lines, printed as the steps finish.
#[derive(Debug, Default)]
struct Report {
    results: Vec<(String, bool, String)>,
}

impl Report {
    fn record(&mut self, name: &str, result: Result<String>) -> bool {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(e) => (false, format!("{e:#}")),
        };
        eprintln!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.results.push((name.to_owned(), ok, detail));
        ok
    }

    fn finish(&self) -> Result<()> {
        eprintln!("\n==> observability: summary");
        let mut sorted: Vec<_> = self.results.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ok, detail) in &sorted {
            let first = detail.lines().next().unwrap_or_default();
            eprintln!("{} {name}: {first}", if *ok { "PASS" } else { "FAIL" });
        }
        let failed = sorted.iter().filter(|r| !r.1).count();
        if failed > 0 {
            bail!(
                "observability: {failed} of {} steps failed",
                self.results.len()
            );
        }
        eprintln!("observability: all {} steps passed", self.results.len());
        Ok(())
    }
}

/// One running madbase service.
#[derive(Debug, Clone)]
struct Svc {
    api: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Svc {
    fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }
}

/// What every step needs.
#[derive(Debug)]
struct Stack {
    bin: PathBuf,
    work: PathBuf,
    env: Vec<(String, String)>,
    svcs: BTreeMap<&'static str, Svc>,
    spans: Spans,
    http: reqwest::Client,
    /// Base URLs of the monitoring stack.
    vm: String,
    vmalert: String,
    alertmanager: String,
}

/// The tenant the traffic goes to.
#[derive(Debug, Clone)]
struct Tenant {
    id: String,
    anon_key: String,
}

async fn check(bin: &Path) -> Result<()> {
    let work = root().join(WORK);
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(work.join("logs"))?;
    // Owns every child process: dropping it (return, error, panic, or this
    // future dropped on a signal or the time limit) kills them all.
    let mut procs = Procs::default();
    let mut report = Report::default();

    step("1. Postgres and the four services");
    let stack = start_services(&mut procs, bin, &work).await;
    let mut stack = match stack {
        Ok(s) => {
            let detail = SERVICES
                .iter()
                .filter_map(|n| {
                    s.svcs
                        .get(n)
                        .map(|svc| format!("{n} {}/{}", svc.api, svc.admin))
                })
                .collect::<Vec<_>>()
                .join(", ");
            report.record("1. services", Ok(detail));
            s
        }
        Err(e) => {
            report.record("1. services", Err(e));
            return report.finish();
        }
    };

    step("2. VictoriaMetrics, vmagent, vmalert, Alertmanager");
    let monitoring = start_monitoring(&mut procs, &mut stack).await;
    if !report.record("2. monitoring stack", monitoring) {
        return report.finish();
    }

    step("3. traffic through the proxy (6. request IDs in logs, 7. traces)");
    let (traffic, tenant) = traffic(&mut procs, &mut stack, &mut report).await;
    report.record("3. traffic", traffic);
    let background = tenant
        .as_ref()
        .map(|t| tokio::spawn(background_traffic(stack.clone_for_traffic(), t.clone())));

    step("4. every dashboard panel query returns data from VictoriaMetrics");
    let tenant_id = tenant.as_ref().map_or(".*", |t| t.id.as_str()).to_owned();
    report.record("4. dashboards", dashboards(&stack, &tenant_id).await);

    step("5. stop functions: ServiceDown fires in vmalert and reaches Alertmanager");
    report.record(
        "5. ServiceDown alert",
        service_down(&mut procs, &stack).await,
    );

    if let Some(b) = background {
        b.abort();
    }
    drop(procs);
    report.finish()
}

impl Stack {
    /// What the background traffic needs (it outlives no step).
    fn clone_for_traffic(&self) -> (reqwest::Client, String) {
        (
            self.http.clone(),
            self.svcs
                .get("proxy")
                .map(|p| p.api_url(""))
                .unwrap_or_default(),
        )
    }
}

// ---------------------------------------------------------------------------
// 1. services

/// A free loopback port (the listener is closed again: tiny race, retried by
/// nothing; the start of the process then fails with the port named).
fn free_addr(used: &mut BTreeSet<u16>) -> Result<SocketAddr> {
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if used.insert(addr.port()) {
            return Ok(addr);
        }
    }
}

async fn start_services(procs: &mut Procs, bin: &Path, work: &Path) -> Result<Stack> {
    let db = madbase_testkit::postgres().context("starting a throwaway Postgres")?;
    eprintln!("postgres: {}", db.server.url_for("postgres"));
    let (otlp, spans) = otlp::start().await.context("starting the OTLP receiver")?;
    eprintln!("OTLP receiver: {otlp}");

    let mut used = BTreeSet::new();
    let mut addrs = BTreeMap::new();
    for name in SERVICES {
        addrs.insert(name, (free_addr(&mut used)?, free_addr(&mut used)?));
    }
    let api = |name: &str| addrs.get(name).map(|a| format!("http://{}", a.0));
    let key = random_bytes(32)?;
    let env: Vec<(String, String)> = [
        ("JWT_SECRET", random_hex(32)?),
        (
            "MADBASE_MASTER_KEY",
            base64::engine::general_purpose::STANDARD.encode(&key),
        ),
        ("DATABASE_URL", db.url.clone()),
        ("DEFAULT_TENANT_DB_URL", db.server.url_for("postgres")),
        ("MADBASE_CONTROL_URL", api("control").unwrap_or_default()),
        ("MADBASE_WORKER_URL", api("worker").unwrap_or_default()),
        (
            "MADBASE_FUNCTIONS_URL",
            api("functions").unwrap_or_default(),
        ),
        ("MADBASE_LOG", "info".to_owned()),
        ("MADBASE_LOG_FORMAT", "json".to_owned()),
        ("MADBASE_DRAIN_SECONDS", "2".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut stack = Stack {
        bin: bin.to_path_buf(),
        work: work.to_path_buf(),
        env,
        svcs: BTreeMap::new(),
        spans,
        http,
        vm: String::new(),
        vmalert: String::new(),
        alertmanager: String::new(),
    };
    for name in SERVICES {
        let (api, admin) = addrs[name];
        start_service(procs, &mut stack, name, api, admin).await?;
    }
    Ok(stack)
}

/// Starts `madbase <name>` on `api`/`admin`, waits until it listens and its
/// admin `/health` answers 200.
async fn start_service(
    procs: &mut Procs,
    stack: &mut Stack,
    name: &'static str,
    api: SocketAddr,
    admin: SocketAddr,
) -> Result<()> {
    let mut cmd = Command::new(&stack.bin);
    cmd.arg(name).current_dir(&stack.work);
    for (k, _) in std::env::vars() {
        if k.starts_with("MADBASE_")
            || k.starts_with("OTEL_")
            || ["DATABASE_URL", "DEFAULT_TENANT_DB_URL", "JWT_SECRET"].contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(stack.env.iter().map(|(k, v)| (k, v)))
        .env("MADBASE_LISTEN", api.to_string())
        .env("MADBASE_ADMIN_LISTEN", admin.to_string());
    let log = stack.work.join("logs").join(format!("{name}.log"));
    let stderr = stack.work.join("logs").join(format!("{name}.stderr.log"));
    let lines = procs.spawn(name, &mut cmd, &log, &stderr, true)?;
    wait_listening(procs, name, &lines).await?;
    let health = format!("http://{admin}/health");
    wait_ok(&stack.http, &health, START_TIMEOUT)
        .await
        .with_context(|| format!("{name}: admin /health"))?;
    eprintln!("{name}: api {api}, admin {admin}");
    stack.svcs.insert(name, Svc { api, admin, log });
    Ok(())
}

/// Waits for the service's `"<service> listening"` log line.
async fn wait_listening(procs: &mut Procs, name: &str, lines: &Lines) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let listening = lines.all().iter().any(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["message"].as_str().map(|m| m.ends_with("listening")))
                .unwrap_or(false)
        });
        if listening {
            return Ok(());
        }
        procs.check_alive(name)?;
        if Instant::now() > deadline {
            bail!(
                "{name} did not log \"listening\" within {START_TIMEOUT:?}:\n{}",
                lines.all().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `url` until it answers 200.
async fn wait_ok(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("{e}"),
        };
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// 2. monitoring stack

/// `config/vmagent.yml` with its targets replaced by `addresses[job]` and its
/// scrape interval/timeout shortened; nothing else changes.
fn rewrite_vmagent(text: &str, addresses: &BTreeMap<&str, String>) -> Result<String> {
    let mut text = text.to_owned();
    for (target, job) in TARGETS {
        let quoted = format!("\"{target}\"");
        let n = text.matches(&quoted).count();
        if n != 1 {
            bail!("{VMAGENT}: expected the target {quoted} once, found it {n} times");
        }
        let addr = addresses
            .get(job)
            .with_context(|| format!("no address for {job}"))?;
        text = text.replace(&quoted, &format!("\"{addr}\""));
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("scrape_interval:") {
            out.push_str(&format!("{indent}scrape_interval: {SCRAPE_INTERVAL}"));
        } else if trimmed.starts_with("scrape_timeout:") {
            out.push_str(&format!("{indent}scrape_timeout: {SCRAPE_TIMEOUT}"));
        } else {
            if trimmed.contains("targets:") && !trimmed.starts_with('#') {
                let rest = trimmed.split('[').nth(1).unwrap_or_default();
                if rest.split(',').any(|t| {
                    !t.trim()
                        .trim_matches(['"', ']', ' '])
                        .starts_with("127.0.0.1:")
                }) {
                    bail!("{VMAGENT}: a target this check does not know: {trimmed}");
                }
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

async fn start_monitoring(procs: &mut Procs, stack: &mut Stack) -> Result<String> {
    let work = stack.work.clone();
    let logs = work.join("logs");
    let mut used: BTreeSet<u16> = stack
        .svcs
        .values()
        .flat_map(|s| [s.api.port(), s.admin.port()])
        .collect();
    let vm = free_addr(&mut used)?;
    let vmagent = free_addr(&mut used)?;
    let vmalert = free_addr(&mut used)?;
    let am = free_addr(&mut used)?;
    let http = stack.http.clone();

    let log = logs.join("victoria-metrics.log");
    procs.spawn(
        "victoria-metrics",
        Command::new("victoria-metrics").args([
            format!("-httpListenAddr={vm}"),
            format!(
                "-storageDataPath={}",
                work.join("victoria-metrics").display()
            ),
            "-retentionPeriod=1d".to_owned(),
            // Recent samples are queryable at once (default: hidden for 30 s).
            "-search.latencyOffset=1s".to_owned(),
            "-loggerLevel=WARN".to_owned(),
        ]),
        &log,
        &log,
        false,
    )?;
    wait_up(
        procs,
        &http,
        "victoria-metrics",
        &format!("http://{vm}/health"),
    )
    .await?;

    let log = logs.join("alertmanager.log");
    procs.spawn(
        "alertmanager",
        Command::new("prometheus-alertmanager").args([
            format!("--config.file={}", root().join(ALERTMANAGER).display()),
            format!("--storage.path={}", work.join("alertmanager").display()),
            format!("--web.listen-address={am}"),
            "--cluster.listen-address=".to_owned(),
            "--log.level=warn".to_owned(),
        ]),
        &log,
        &log,
        false,
    )?;
    wait_up(
        procs,
        &http,
        "alertmanager",
        &format!("http://{am}/-/ready"),
    )
    .await?;

    let committed = std::fs::read_to_string(root().join(VMAGENT))
        .with_context(|| format!("reading {VMAGENT}"))?;
    let mut addresses: BTreeMap<&str, String> = stack
        .svcs
        .iter()
        .map(|(name, s)| (*name, s.admin.to_string()))
        .collect();
    addresses.insert("victoria-metrics", vm.to_string());
    let config = work.join("vmagent.yml");
    std::fs::write(&config, rewrite_vmagent(&committed, &addresses)?)?;
    let log = logs.join("vmagent.log");
    procs.spawn(
        "vmagent",
        Command::new("vmagent").args([
            format!("-promscrape.config={}", config.display()),
            "-promscrape.config.strictParse=true".to_owned(),
            format!("-remoteWrite.url=http://{vm}/api/v1/write"),
            format!(
                "-remoteWrite.tmpDataPath={}",
                work.join("vmagent-remotewrite").display()
            ),
            "-remoteWrite.flushInterval=1s".to_owned(),
            format!("-httpListenAddr={vmagent}"),
            "-loggerLevel=WARN".to_owned(),
        ]),
        &log,
        &log,
        false,
    )?;
    wait_up(procs, &http, "vmagent", &format!("http://{vmagent}/health")).await?;

    let log = logs.join("vmalert.log");
    procs.spawn(
        "vmalert",
        Command::new("vmalert").args([
            format!("-rule={}", root().join(ALERTS).display()),
            format!("-datasource.url=http://{vm}"),
            format!("-notifier.url=http://{am}"),
            format!("-remoteWrite.url=http://{vm}"),
            format!("-remoteRead.url=http://{vm}"),
            "-evaluationInterval=5s".to_owned(),
            format!("-httpListenAddr={vmalert}"),
            format!("-external.url=http://{vmalert}"),
            "-loggerLevel=WARN".to_owned(),
        ]),
        &log,
        &log,
        false,
    )?;
    wait_up(procs, &http, "vmalert", &format!("http://{vmalert}/health")).await?;

    stack.vm = format!("http://{vm}");
    stack.vmalert = format!("http://{vmalert}");
    stack.alertmanager = format!("http://{am}");
    Ok(format!(
        "victoria-metrics {vm}, vmagent {vmagent} ({} with targets rewritten, scrape {SCRAPE_INTERVAL}), \
         vmalert {vmalert} ({ALERTS}, eval 5s), alertmanager {am} ({ALERTMANAGER})",
        config.strip_prefix(root()).unwrap_or(&config).display()
    ))
}

/// Waits until `url` answers 200, failing early (with its log) when `name` exits.
async fn wait_up(procs: &mut Procs, http: &reqwest::Client, name: &str, url: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        procs.check_alive(name)?;
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            eprintln!("{name}: up ({url})");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: {url} not 200 within {START_TIMEOUT:?}; end of its log:\n{}",
                procs.log_tail(name, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// 3. traffic (and 6, 7 on one of its requests)

/// One request of the traffic and what it got.
struct Outcome {
    status: u16,
    elapsed: Duration,
    body: String,
    request_id: Option<String>,
}

async fn send(req: reqwest::RequestBuilder) -> Result<Outcome> {
    let start = Instant::now();
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    Ok(Outcome {
        status,
        elapsed: start.elapsed(),
        body,
        request_id,
    })
}

fn short(body: &str) -> String {
    let one_line = body.replace('\n', " ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// The admin token (`madbase token admin`), a tenant and its table.
async fn make_tenant(stack: &Stack) -> Result<Tenant> {
    let secret = stack
        .env
        .iter()
        .find(|(k, _)| k == "JWT_SECRET")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let out = Command::new(&stack.bin)
        .args(["token", "admin"])
        .env("JWT_SECRET", secret)
        .output()
        .context("running madbase token admin")?;
    if !out.status.success() {
        bail!(
            "madbase token admin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let control = &stack.svcs["control"];
    let id = format!("obs-{}", random_hex(4)?);
    let created = send(
        stack
            .http
            .post(control.api_url("/v1/tenants"))
            .bearer_auth(&token)
            .json(&json!({ "id": id })),
    )
    .await?;
    if created.status != 201 {
        bail!(
            "POST /v1/tenants: {} {}",
            created.status,
            short(&created.body)
        );
    }
    let body: Value = serde_json::from_str(&created.body)?;
    let anon_key = body["anon_key"]
        .as_str()
        .context("no anon_key in the created tenant")?
        .to_owned();
    let sql = send(
        stack
            .http
            .post(control.api_url(&format!("/v1/tenants/{id}/sql")))
            .bearer_auth(&token)
            .json(&json!({ "query": SETUP_SQL })),
    )
    .await?;
    if sql.status != 200 {
        bail!(
            "POST /v1/tenants/{id}/sql: {} {}",
            sql.status,
            short(&sql.body)
        );
    }
    eprintln!("tenant {id} created with table {TABLE}, views {SLOW_VIEW} and {BROKEN_VIEW}");
    Ok(Tenant { id, anon_key })
}

/// The anon key with its signature replaced: well-formed, wrongly signed.
fn forged(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((head, sig)) => format!("{head}.{}", "A".repeat(sig.len().max(8))),
        None => "not-a-key".to_owned(),
    }
}

async fn traffic(
    procs: &mut Procs,
    stack: &mut Stack,
    report: &mut Report,
) -> (Result<String>, Option<Tenant>) {
    let tenant = match make_tenant(stack).await {
        Ok(t) => t,
        Err(e) => {
            let e = e.context("creating the tenant through control's admin API");
            report.record(
                "6. request id in proxy and worker logs",
                Err(anyhow!("no tenant, no request")),
            );
            report.record("7. traces", Err(anyhow!("no tenant, no request")));
            return (Err(e), None);
        }
    };
    let proxy = stack.svcs["proxy"].clone();
    let t = &tenant.id;
    let http = stack.http.clone();
    let get = |path: &str, key: &str| {
        http.get(proxy.api_url(&format!("/t/{t}{path}")))
            .header("apikey", key)
    };
    let anon = tenant.anon_key.as_str();
    let mut checks = Checks::default();

    let read = send(get(&format!("/rest/v1/{TABLE}?select=id,name"), anon)).await;
    checks.expect(
        &format!("GET /rest/v1/{TABLE} (anon key, must be 200 with 3 rows)"),
        read,
        &|o| {
            o.status == 200
                && serde_json::from_str::<Value>(&o.body)
                    .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 3))
        },
    );
    checks.expect(
        "GET /rest/v1 with a malformed key (must be 401)",
        send(get(&format!("/rest/v1/{TABLE}"), "not-a-key")).await,
        &|o| o.status == 401,
    );
    checks.expect(
        "GET /rest/v1 with a wrongly signed key (must be 401)",
        send(get(&format!("/rest/v1/{TABLE}"), &forged(anon))).await,
        &|o| o.status == 401,
    );
    checks.expect(
        "GET an unknown route (must be 404)",
        send(get("/nope/v1/anything", anon)).await,
        &|o| o.status == 404,
    );
    checks.expect(
        &format!(
            "GET /rest/v1/{SLOW_VIEW} (must be 200, >= {} ms)",
            SLOW.as_millis()
        ),
        send(get(&format!("/rest/v1/{SLOW_VIEW}"), anon)).await,
        &|o| o.status == 200 && o.elapsed >= SLOW,
    );
    checks.expect(
        &format!("GET /rest/v1/{BROKEN_VIEW} (a Postgres internal error; any status)"),
        send(get(&format!("/rest/v1/{BROKEN_VIEW}"), anon)).await,
        &|_| true,
    );
    checks.expect(
        "GET /functions/v1/obs-missing (functions up; any status)",
        send(get("/functions/v1/obs-missing", anon)).await,
        &|_| true,
    );

    // 6 and 7: one request through proxy -> worker, with our request id
    // (whatever the worker answers: they check propagation; step 3 checks
    // the status).
    step("6. the request's X-Request-Id in proxy and worker logs");
    // (the tenant id, itself random, should the OS have no randomness)
    let rid = format!("obs-{}", random_hex(16).unwrap_or_else(|_| t.to_string()));
    let traced =
        send(get(&format!("/rest/v1/{TABLE}?select=id"), anon).header("x-request-id", &rid)).await;
    let trace_id = match &traced {
        Ok(o) => {
            eprintln!(
                "  GET /rest/v1/{TABLE} with X-Request-Id {rid}: {}",
                o.status
            );
            let r = request_id_in_logs(stack, &rid, o).await;
            let trace_id = r.as_ref().ok().map(|(_, t)| t.clone());
            report.record(
                "6. request id in proxy and worker logs",
                r.map(|(detail, _)| detail),
            );
            trace_id
        }
        Err(e) => {
            report.record(
                "6. request id in proxy and worker logs",
                Err(anyhow!("request failed: {e:#}")),
            );
            None
        }
    };
    step("7. spans of the request from madbase-proxy and madbase-worker, one trace id");
    let traces = match &traced {
        Ok(_) => one_trace(&stack.spans, &rid, trace_id).await,
        Err(_) => Err(anyhow!("the traced request failed")),
    };
    report.record("7. traces", traces);

    // 5xx: the proxy with its functions upstream stopped, then started again.
    if let Err(e) = stop(procs, STOPPED) {
        checks.problems.push(format!("stopping {STOPPED}: {e:#}"));
    }
    for n in 0..3 {
        checks.expect(
            &format!("GET /functions/v1/obs-{n} with {STOPPED} stopped (must be 5xx)"),
            send(get(&format!("/functions/v1/obs-{n}"), anon)).await,
            &|o| (500..600).contains(&o.status),
        );
    }
    let (api, admin) = (stack.svcs[STOPPED].api, stack.svcs[STOPPED].admin);
    if let Err(e) = start_service(procs, stack, STOPPED, api, admin).await {
        checks.problems.push(format!("restarting {STOPPED}: {e:#}"));
    }

    let result = if checks.problems.is_empty() {
        Ok(format!("{} requests as expected", checks.seen.len()))
    } else {
        Err(anyhow!(
            "{} of {} checks failed:\n  {}",
            checks.problems.len(),
            checks.seen.len(),
            checks.problems.join("\n  ")
        ))
    };
    (result, Some(tenant))
}

/// The outcomes of the traffic's requests.
#[derive(Default)]
struct Checks {
    problems: Vec<String>,
    seen: Vec<String>,
}

impl Checks {
    fn expect(&mut self, what: &str, got: Result<Outcome>, ok: &dyn Fn(&Outcome) -> bool) {
        match got {
            Ok(o) => {
                let line = format!("{what}: {} in {} ms", o.status, o.elapsed.as_millis());
                eprintln!("  {line}");
                if !ok(&o) {
                    self.problems.push(format!("{line}: {}", short(&o.body)));
                }
                self.seen.push(line);
            }
            Err(e) => self.problems.push(format!("{what}: {e:#}")),
        }
    }
}

/// SIGTERM (SIGKILL after 5 s) to a service.
fn stop(procs: &mut Procs, name: &str) -> Result<()> {
    tokio::task::block_in_place(|| procs.stop(name, Duration::from_secs(5)))?;
    eprintln!("{name}: stopped");
    Ok(())
}

/// Requests through the proxy until aborted, so every rate has samples.
async fn background_traffic((http, proxy): (reqwest::Client, String), tenant: Tenant) {
    let t = &tenant.id;
    let paths = [
        (format!("/t/{t}/rest/v1/{TABLE}?select=id,name"), true),
        (format!("/t/{t}/rest/v1/{TABLE}"), false),
        (format!("/t/{t}/rest/v1/{SLOW_VIEW}"), true),
        (format!("/t/{t}/nope"), true),
        (format!("/t/{t}/rest/v1/{BROKEN_VIEW}"), true),
        (format!("/t/{t}/functions/v1/obs"), true),
        (format!("/t/{t}/rest/v1/{TABLE}?id=eq.1"), true),
    ];
    let mut n = 0usize;
    loop {
        let (path, good_key) = &paths[n % paths.len()];
        let key = if *good_key {
            tenant.anon_key.clone()
        } else {
            "not-a-key".to_owned()
        };
        let _ = http
            .get(format!("{proxy}{path}"))
            .header("apikey", key)
            .send()
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// 6. request id in logs

/// Finds JSON log lines with `request_id == rid` in the proxy's and the
/// worker's log files; returns the detail and the proxy's trace id.
async fn request_id_in_logs(stack: &Stack, rid: &str, resp: &Outcome) -> Result<(String, String)> {
    if resp.request_id.as_deref() != Some(rid) {
        bail!(
            "the response carries X-Request-Id {:?}, not the one sent ({rid})",
            resp.request_id
        );
    }
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let mut found = BTreeMap::new();
        let mut not_json = Vec::new();
        for name in ["proxy", "worker"] {
            let log = &stack.svcs[name].log;
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(v) if v.is_object() => {
                        if v["request_id"] == rid {
                            found.entry(name).or_insert_with(Vec::new).push(v);
                        }
                    }
                    _ => not_json.push(format!("{name}: {}", short(line))),
                }
            }
        }
        if !not_json.is_empty() {
            bail!(
                "log lines that are not JSON objects:\n  {}",
                not_json.join("\n  ")
            );
        }
        if found.len() == 2 {
            let trace_id = found["proxy"]
                .iter()
                .find_map(|v| v["trace_id"].as_str())
                .unwrap_or_default()
                .to_owned();
            let detail = format!(
                "request_id {rid} in {} proxy and {} worker log lines (proxy trace_id {trace_id})",
                found["proxy"].len(),
                found["worker"].len()
            );
            return Ok((detail, trace_id));
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = ["proxy", "worker"]
                .into_iter()
                .filter(|n| !found.contains_key(n))
                .collect();
            bail!(
                "no JSON log line with request_id {rid} from {} within {LOG_WAIT:?} ({})",
                missing.join(" and "),
                missing
                    .iter()
                    .map(|n| stack.svcs[n].log.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// 7. traces

/// Spans from madbase-proxy and madbase-worker with one trace id: the proxy's
/// span of request `rid` (its `request_id` attribute, or the trace id of its
/// log line) gives the trace id.
async fn one_trace(spans: &Spans, rid: &str, log_trace_id: Option<String>) -> Result<String> {
    let deadline = Instant::now() + SPAN_WAIT;
    loop {
        let all = spans.all();
        let trace_id = all
            .iter()
            .find(|r| {
                r.service == "madbase-proxy"
                    && otlp::str_attr(&r.span.attributes, "request_id").as_deref() == Some(rid)
            })
            .map(|r| hex::encode(&r.span.trace_id))
            .or_else(|| log_trace_id.clone().filter(|t| t.len() == 32));
        if let Some(trace_id) = &trace_id {
            let of = |service: &str| -> Vec<_> {
                all.iter()
                    .filter(|r| r.service == service && hex::encode(&r.span.trace_id) == *trace_id)
                    .collect()
            };
            let (proxy, worker) = (of("madbase-proxy"), of("madbase-worker"));
            if !proxy.is_empty() && !worker.is_empty() {
                let proxy_ids: BTreeSet<String> =
                    proxy.iter().map(|r| hex::encode(&r.span.span_id)).collect();
                let linked = worker
                    .iter()
                    .any(|r| proxy_ids.contains(&hex::encode(&r.span.parent_span_id)));
                let names = |v: &[&otlp::Received]| {
                    v.iter()
                        .map(|r| r.span.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Ok(format!(
                    "trace {trace_id}: madbase-proxy [{}], madbase-worker [{}]{}",
                    names(&proxy),
                    names(&worker),
                    if linked {
                        "; a worker span is a child of a proxy span"
                    } else {
                        "; (no worker span has a proxy span as parent)"
                    }
                ));
            }
        }
        if Instant::now() > deadline {
            let services: BTreeSet<&str> = all.iter().map(|r| r.service.as_str()).collect();
            bail!(
                "within {SPAN_WAIT:?}: trace of request {rid}: {}; {} spans received in all, from {services:?}",
                match &trace_id {
                    None =>
                        "no madbase-proxy span with that request_id and no trace_id in its log line"
                            .to_owned(),
                    Some(t) =>
                        format!("trace {t} lacks spans from madbase-proxy or madbase-worker"),
                },
                all.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// 4. dashboards

/// The value of a Grafana variable in this check: every builtin, `service`
/// (`.*`: every job), `tenant` (the tenant of the traffic).
fn variable_value(name: &str, tenant: &str, now_ms: i64) -> Option<String> {
    let v = match name {
        "service" => ".*".to_owned(),
        "tenant" => tenant.to_owned(),
        "__rate_interval" => "1m".to_owned(),
        "__rate_interval_ms" => "60000".to_owned(),
        "__interval" => "15s".to_owned(),
        "__interval_ms" => "15000".to_owned(),
        "__range" => "5m".to_owned(),
        "__range_s" => "300".to_owned(),
        "__range_ms" => "300000".to_owned(),
        "__from" => (now_ms.saturating_sub(300_000)).to_string(),
        "__to" => now_ms.to_string(),
        "__dashboard" => "madbase".to_owned(),
        "__org" => "1".to_owned(),
        "__user" => "admin".to_owned(),
        _ => return None,
    };
    Some(v)
}

/// One panel query, ready to run.
struct PanelQuery {
    panel: String,
    expr: Result<String, String>,
}

/// Runs `expr` as an instant query; returns the number of series (or 1 for
/// a scalar).
async fn vm_query(http: &reqwest::Client, vm: &str, expr: &str) -> Result<usize> {
    let resp = http
        .get(format!("{vm}/api/v1/query"))
        .query(&[("query", expr), ("nocache", "1")])
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    let body: Value =
        serde_json::from_str(&text).map_err(|_| anyhow!("HTTP {status}: {}", short(&text)))?;
    if body["status"] != "success" {
        bail!(
            "query error (HTTP {status}): {}",
            body["error"].as_str().unwrap_or(&text)
        );
    }
    match body["data"]["resultType"].as_str() {
        Some("scalar" | "string") => Ok(1),
        _ => Ok(body["data"]["result"].as_array().map_or(0, Vec::len)),
    }
}

async fn dashboards(stack: &Stack, tenant: &str) -> Result<String> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let files = files_with_ext(DASHBOARD_DIR, ".json")?;
    if files.is_empty() {
        bail!("no dashboard in {DASHBOARD_DIR}");
    }
    let mut queries = Vec::new();
    for path in &files {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (title, expr) in dashboard_queries(path)? {
            queries.push(PanelQuery {
                panel: format!("{file}: {title:?}"),
                expr: substitute_variables(&expr, |n| variable_value(n, tenant, now_ms))
                    .map_err(|e| format!("{e:#}")),
            });
        }
    }
    let start = Instant::now();
    let deadline = start + DASHBOARD_WAIT;
    loop {
        let mut failures = Vec::new();
        let mut only_errors = true;
        for q in &queries {
            let outcome = match &q.expr {
                Err(e) => Err(e.clone()),
                Ok(expr) => match vm_query(&stack.http, &stack.vm, expr).await {
                    Ok(0) => {
                        only_errors = false;
                        Err(format!("empty result: {expr}"))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{e:#}: {expr}")),
                },
            };
            if let Err(e) = outcome {
                failures.push(format!("{}: {e}", q.panel));
            }
        }
        if failures.is_empty() {
            return Ok(format!(
                "all {} panel queries of {} dashboards return data (after {:.0} s; $service=.*, $tenant={tenant})",
                queries.len(),
                files.len(),
                start.elapsed().as_secs_f64()
            ));
        }
        if Instant::now() > deadline || only_errors {
            bail!(
                "{} of {} panel queries fail after {:.0} s:\n  {}",
                failures.len(),
                queries.len(),
                start.elapsed().as_secs_f64(),
                failures.join("\n  ")
            );
        }
        eprintln!(
            "  {} of {} panel queries without data yet; waiting for scrapes",
            failures.len(),
            queries.len()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

// ---------------------------------------------------------------------------
// 5. ServiceDown

/// The state of `ServiceDown{job=STOPPED}` in vmalert (`pending`, `firing`).
async fn vmalert_state(stack: &Stack) -> Result<Option<String>> {
    let body: Value = stack
        .http
        .get(format!("{}/api/v1/alerts", stack.vmalert))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| {
            (a["name"] == "ServiceDown" || a["labels"]["alertname"] == "ServiceDown")
                && a["labels"]["job"] == STOPPED
        })
        .and_then(|a| a["state"].as_str().map(str::to_owned)))
}

/// Whether Alertmanager holds `ServiceDown{job=STOPPED}`.
async fn in_alertmanager(stack: &Stack) -> Result<Option<Value>> {
    let body: Value = stack
        .http
        .get(format!("{}/api/v2/alerts", stack.alertmanager))
        .query(&[("filter", "alertname=\"ServiceDown\"")])
        .send()
        .await?
        .json()
        .await?;
    Ok(body
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "ServiceDown" && a["labels"]["job"] == STOPPED)
        .cloned())
}

async fn service_down(procs: &mut Procs, stack: &Stack) -> Result<String> {
    stop(procs, STOPPED)?;
    let start = Instant::now();
    let deadline = start + ALERT_WAIT;
    let mut last_state: Option<String> = None;
    let mut firing_at = None;
    loop {
        let state = vmalert_state(stack).await.unwrap_or_else(|e| {
            eprintln!("  vmalert: {e:#}");
            None
        });
        if state != last_state {
            eprintln!(
                "  {:>3.0} s: ServiceDown{{job={STOPPED}}} in vmalert: {}",
                start.elapsed().as_secs_f64(),
                state.as_deref().unwrap_or("inactive")
            );
            if state.as_deref() == Some("firing") {
                firing_at = Some(start.elapsed());
            }
            last_state.clone_from(&state);
        }
        if firing_at.is_some()
            && let Some(alert) = in_alertmanager(stack).await.unwrap_or_else(|e| {
                eprintln!("  alertmanager: {e:#}");
                None
            })
        {
            return Ok(format!(
                "ServiceDown{{job={STOPPED}, severity={}}} firing in vmalert after {:.0} s, in Alertmanager ({}) after {:.0} s",
                alert["labels"]["severity"].as_str().unwrap_or("?"),
                firing_at.map_or(0.0, |d| d.as_secs_f64()),
                alert["status"]["state"].as_str().unwrap_or("?"),
                start.elapsed().as_secs_f64()
            ));
        }
        if Instant::now() > deadline {
            bail!(
                "ServiceDown{{job={STOPPED}}} did not reach Alertmanager within {ALERT_WAIT:?} \
                 (vmalert state: {}); vmalert log:\n{}",
                last_state.as_deref().unwrap_or("inactive"),
                tail(&stack.work.join("logs/vmalert.log"), 20)
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability_config::GRAFANA_BUILTINS;

    #[test]
    fn every_grafana_builtin_has_a_value() {
        for name in GRAFANA_BUILTINS {
            assert!(variable_value(name, "t", 0).is_some(), "${name}");
        }
        assert_eq!(variable_value("service", "t", 0).as_deref(), Some(".*"));
        assert_eq!(variable_value("tenant", "t", 0).as_deref(), Some("t"));
        assert!(variable_value("nope", "t", 0).is_none());
    }

    #[test]
    fn vmagent_config_changes_only_addresses_and_intervals() -> Result<()> {
        let committed = std::fs::read_to_string(root().join(VMAGENT))?;
        let addresses: BTreeMap<&str, String> = TARGETS
            .iter()
            .enumerate()
            .map(|(n, (_, job))| (*job, format!("127.0.0.1:{}", 10_000 + n)))
            .collect();
        let rewritten = rewrite_vmagent(&committed, &addresses)?;
        for (target, _) in TARGETS {
            assert!(!rewritten.contains(&format!("\"{target}\"")), "{target}");
        }
        let (old, new): (Vec<&str>, Vec<&str>) =
            (committed.lines().collect(), rewritten.lines().collect());
        assert_eq!(old.len(), new.len());
        for (a, b) in old.iter().zip(&new) {
            if a != b {
                let key = a.trim_start().split(':').next().unwrap_or_default();
                assert!(
                    ["scrape_interval", "scrape_timeout", "- targets"].contains(&key),
                    "changed line {a:?} -> {b:?}"
                );
            }
        }
        // An unknown target is refused rather than scraped from nowhere.
        let extra = committed.replacen("\"worker:9002\"", "\"worker:9002\", \"other:1\"", 1);
        assert!(rewrite_vmagent(&extra, &addresses).is_err());
        Ok(())
    }
}
