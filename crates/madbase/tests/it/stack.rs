//! The real stack as child processes for the reliability scenarios
//! (issue 24): control on a throwaway Postgres (testkit), the worker and
//! the proxy (and, for the soak, the functions service with its worker
//! processes), each `madbase <service>` on loopback, so a scenario can kill
//! one with a signal. A load generator records every outcome; the
//! figures go to `MADBASE_RELIABILITY_OUT` (one JSON line per scenario)
//! when it is set, which `cargo xtask soak --report` turns into
//! RELIABILITY.md.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use madbase_testkit::tenant::Tenant;
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, MASTER_KEY, Running, start};

/// The proxy's timeout for a REST request in these scenarios.
pub const REST_TIMEOUT: Duration = Duration::from_secs(5);
/// The services' drain time in these scenarios.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Every tenant gets this: a table read and written under load, a
/// function that takes a while (so requests are in flight when a process
/// dies) and one that counts.
pub const FIXTURE: &str = r"
CREATE TABLE items (id bigserial PRIMARY KEY, body text NOT NULL, n int NOT NULL DEFAULT 0);
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO anon, authenticated;
GRANT USAGE ON SEQUENCE items_id_seq TO anon, authenticated;
INSERT INTO items (body) SELECT 'row ' || g FROM generate_series(1, 20) g;
CREATE FUNCTION nap(ms int) RETURNS int LANGUAGE sql AS $$ SELECT ms FROM pg_sleep(ms / 1000.0) $$;
";

/// The edge function every tenant gets when the stack runs the functions
/// service: reads a JSON body, answers it back with the caller's role
/// (verify_jwt on, so the tenant's key must be valid).
pub const ECHO_FUNCTION: &str = r"
Deno.serve(async (req) => {
  const { n } = await req.json();
  const auth = req.headers.get('authorization') ?? '';
  return Response.json({ n, authorized: auth.startsWith('Bearer ') });
});
";

pub struct Stack {
    pub db: madbase_testkit::TestDb,
    pub control: Running,
    pub worker: Running,
    pub proxy: Running,
    /// The functions service (with `echo` deployed for every tenant), when
    /// started by [`Stack::start_with_functions`].
    pub functions: Option<Running>,
    pub worker_env: Vec<(String, String)>,
    pub control_env: Vec<(String, String)>,
    pub tenants: Vec<Tenant>,
    pub http: reqwest::Client,
}

fn owned(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Stack {
    /// Control, worker (on a fixed port, so it can be restarted there) and
    /// proxy, with `tenants` tenants holding [`FIXTURE`].
    pub async fn start(tenants: usize) -> Stack {
        Stack::start_on(madbase_testkit::postgres().expect("postgres"), tenants).await
    }

    /// [`Stack::start`] with control's database `db` (and the tenants on
    /// its server).
    pub async fn start_on(db: madbase_testkit::TestDb, tenants: usize) -> Stack {
        Stack::start_with(db, tenants, &[]).await
    }

    /// [`Stack::start_on`] with `proxy_env` added to the proxy's environment.
    pub async fn start_with(
        db: madbase_testkit::TestDb,
        tenants: usize,
        proxy_env: &[(&str, &str)],
    ) -> Stack {
        Stack::launch(db, tenants, proxy_env, false).await
    }

    /// [`Stack::start`] plus the functions service (its worker processes
    /// are its own executable), routed by the proxy, and [`ECHO_FUNCTION`]
    /// deployed as `echo` for every tenant.
    pub async fn start_with_functions(tenants: usize) -> Stack {
        let db = madbase_testkit::postgres().expect("postgres");
        Stack::launch(db, tenants, &[], true).await
    }

    async fn launch(
        db: madbase_testkit::TestDb,
        tenants: usize,
        proxy_env: &[(&str, &str)],
        with_functions: bool,
    ) -> Stack {
        let extra_proxy_env = owned(proxy_env);
        let drain = DRAIN.as_secs().to_string();
        let common = [
            ("JWT_SECRET", JWT_SECRET),
            ("MADBASE_ADMIN_LISTEN", "127.0.0.1:0"),
            ("MADBASE_LOG", "info"),
            ("MADBASE_DRAIN_SECONDS", drain.as_str()),
        ];
        let mut control_env = owned(&common);
        let cluster = db.server.url_for("postgres");
        // A fixed port, so control can be restarted there.
        let control_listen = format!("127.0.0.1:{}", free_port());
        control_env.extend(owned(&[
            ("MADBASE_LISTEN", control_listen.as_str()),
            ("DATABASE_URL", db.url.as_str()),
            ("DEFAULT_TENANT_DB_URL", cluster.as_str()),
            ("MADBASE_MASTER_KEY", MASTER_KEY),
        ]));
        let control = start("control", &control_env);
        let control_url = control.api_url("");

        let worker_listen = format!("127.0.0.1:{}", free_port());
        let mut worker_env = owned(&common);
        worker_env.extend(owned(&[
            ("MADBASE_LISTEN", worker_listen.as_str()),
            ("MADBASE_CONTROL_URL", control_url.as_str()),
            ("MADBASE_WORKER_POOL_TIMEOUT_MS", "1000"),
        ]));
        let worker = start("worker", &worker_env);

        let worker_url = worker.api_url("");
        // The functions service must know the proxy's public URL first.
        let proxy_listen = if with_functions {
            format!("127.0.0.1:{}", free_port())
        } else {
            "127.0.0.1:0".to_owned()
        };
        let functions = with_functions.then(|| {
            let public_url = format!("http://{proxy_listen}");
            let mut env = owned(&common);
            env.extend(owned(&[
                ("MADBASE_LISTEN", "127.0.0.1:0"),
                ("MADBASE_CONTROL_URL", control_url.as_str()),
                ("MADBASE_PUBLIC_URL", public_url.as_str()),
                ("MADBASE_FUNCTIONS_PROXY_URL", public_url.as_str()),
                ("MADBASE_FUNCTIONS_WORKERS", "2"),
            ]));
            start("functions", &env)
        });
        let rest_timeout = REST_TIMEOUT.as_secs().to_string();
        let mut proxy_env = owned(&common);
        if let Some(f) = &functions {
            proxy_env.push(("MADBASE_FUNCTIONS_URL".into(), f.api_url("")));
        }
        proxy_env.extend(owned(&[
            ("MADBASE_LISTEN", proxy_listen.as_str()),
            ("MADBASE_CONTROL_URL", control_url.as_str()),
            ("MADBASE_WORKER_URL", worker_url.as_str()),
            ("MADBASE_REST_TIMEOUT_SECONDS", rest_timeout.as_str()),
            ("MADBASE_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "1"),
        ]));
        proxy_env.extend(extra_proxy_env);
        let proxy = start("proxy", &proxy_env);

        let http = reqwest::Client::builder()
            .timeout(REST_TIMEOUT * 3)
            .build()
            .expect("client");
        let mut made = Vec::new();
        for i in 0..tenants {
            let t = Tenant::create(&http, &control_url, &format!("rel{i}")).await;
            t.sql(&http, &control_url, FIXTURE).await;
            if with_functions {
                let resp = http
                    .put(format!("{control_url}/v1/tenants/{}/functions/echo", t.id))
                    .bearer_auth(madbase_testkit::tenant::platform_token("admin"))
                    .header("content-type", "application/javascript")
                    .body(ECHO_FUNCTION)
                    .send()
                    .await
                    .expect("deploy echo");
                assert!(resp.status().is_success(), "deploy echo: {}", resp.status());
            }
            made.push(t);
        }
        Stack {
            db,
            control,
            worker,
            proxy,
            functions,
            worker_env,
            control_env,
            tenants: made,
            http,
        }
    }

    /// Starts the worker again on its port.
    pub fn restart_worker(&mut self) {
        self.worker = start("worker", &self.worker_env);
    }

    /// Starts control again on its port, with its environment.
    pub fn restart_control(&mut self) {
        self.control = start("control", &self.control_env);
    }

    /// `path` of tenant `i` through the proxy.
    pub fn url(&self, i: usize, path: &str) -> String {
        self.proxy
            .api_url(&format!("/t/{}{path}", self.tenants[i].id))
    }

    /// Rows of `items` in tenant `i`'s database, counted by Postgres.
    pub fn count_rows(&self, i: usize, filter: &str) -> i64 {
        self.db
            .server
            .psql(
                &self.tenant_database(i),
                &format!("SELECT count(*) FROM items {filter}"),
            )
            .expect("count rows")
            .parse()
            .expect("count")
    }

    /// The name of tenant `i`'s database (control's naming).
    pub fn tenant_database(&self, i: usize) -> String {
        format!("tenant_{}", self.tenants[i].id.replace('-', "_"))
    }
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Sent, relative to the load's start.
    pub sent: Duration,
    pub took: Duration,
    /// The HTTP status, or what went wrong on the client's side.
    pub status: Result<u16, String>,
    pub body: Value,
    /// The `x-request-id` response header.
    pub request_id: Option<String>,
}

impl Outcome {
    pub fn label(&self) -> String {
        match &self.status {
            Ok(s) => s.to_string(),
            Err(e) => e.clone(),
        }
    }
}

/// One request of a load: what to send, built afresh each time.
pub type MakeRequest = Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// A load running in the background: `concurrency` tasks each sending
/// requests one after the other until [`Load::stop`].
pub struct Load {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    pub fn start(http: &reqwest::Client, concurrency: usize, make: &MakeRequest) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..concurrency)
            .map(|task| {
                let (http, make, stop) = (http.clone(), make.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut n = task as u64 * 1_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let sent = started.elapsed();
                        let t0 = Instant::now();
                        let result = make(&http, n).send().await;
                        let (status, request_id, body) = match result {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let rid = resp
                                    .headers()
                                    .get("x-request-id")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned);
                                match resp.bytes().await {
                                    Ok(b) => (
                                        Ok(status),
                                        rid,
                                        serde_json::from_slice(&b).unwrap_or(Value::Null),
                                    ),
                                    Err(e) => (Err(client_error(&e)), rid, Value::Null),
                                }
                            }
                            Err(e) => (Err(client_error(&e)), None, Value::Null),
                        };
                        out.push(Outcome {
                            sent,
                            took: t0.elapsed(),
                            status,
                            body,
                            request_id,
                        });
                    }
                    out
                })
            })
            .collect();
        Load {
            started,
            stop,
            tasks,
        }
    }

    /// Stops the load and returns every outcome, by time sent.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load task"));
        }
        all.sort_by_key(|o| o.sent);
        all
    }
}

fn client_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "client timeout".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else if e.is_body() || e.is_decode() {
        "incomplete body".into()
    } else {
        "connection error".into()
    }
}

/// Outcomes counted by status (or client-side error).
pub fn by_status(outcomes: &[Outcome]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o.label()).or_default() += 1;
    }
    m
}

/// The p99 of the time taken, in milliseconds.
pub fn p99_ms(outcomes: &[Outcome]) -> f64 {
    let mut t: Vec<Duration> = outcomes.iter().map(|o| o.took).collect();
    if t.is_empty() {
        return 0.0;
    }
    t.sort();
    let i = ((t.len() as f64) * 0.99).ceil() as usize;
    t[i.clamp(1, t.len()) - 1].as_secs_f64() * 1000.0
}

/// Appends the figures of a scenario to `MADBASE_RELIABILITY_OUT`, when set.
pub fn record(scenario: &str, figures: Value) {
    let line = json!({ "scenario": scenario, "figures": figures });
    eprintln!("reliability: {line}");
    if let Some(path) = std::env::var_os("MADBASE_RELIABILITY_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open MADBASE_RELIABILITY_OUT");
        writeln!(f, "{line}").expect("write figures");
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    rss_kib_if_alive(pid).expect("VmRSS")
}

/// [`rss_kib`] of a process that may have exited meanwhile.
pub fn rss_kib_if_alive(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// The processes whose parent is `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}
