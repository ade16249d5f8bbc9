//! `cargo xtask bench footprint`: what a deployment costs besides CPU.
//!
//! - the images' sizes: [`crate::images::build`] (the release build every
//!   benchmark needs, then the four docker-archives, assembled in under a
//!   second), and the stripped binary they share;
//! - each service's start: from the process's spawn to its admin `/ready`
//!   answering 200 (Postgres and a control for the others' readiness
//!   already up; the median of the rounds), and its resident memory idle
//!   (VmRSS two seconds after ready; the functions service's worker
//!   processes listed apart);
//! - the resident memory of the proxy and the worker after a throughput
//!   run through them (VmHWM, the peak, and VmRSS), and of `madbase serve
//!   --all` after the same run through its proxy.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::bench_common::{
    BenchControl, Figure, MASTER_KEY, Plan, Report, SECRET, Table, Target, Wrk, children,
    control_with_tenant, post_json, target_dir,
};
use crate::procs::{GRACE, Guard};
use crate::util::{free_port, http_client, step};

/// Issue 23's targets.
const IMAGE_TARGET_MB: f64 = 15.0;
const IDLE_RSS_TARGET_MB: f64 = 15.0;
const READY_TARGET_MS: f64 = 50.0;
/// Megabytes as the images report them: 10^6 bytes.
const MB: f64 = 1_000_000.0;
/// The benchmark's tenant (its roles are cluster-wide: unique among the
/// benchmarks, which share one Postgres in `bench-smoke`).
pub(crate) const TENANT: &str = "footbench";
/// Client connections of the throughput run.
const CONNECTIONS: u32 = 16;

/// A started service: its process and admin/API ports.
struct Started {
    proc: Guard,
    api: u16,
    /// Spawn to `/ready` 200.
    ready: Duration,
}

/// `madbase <args>` with `env`, its stdout to `log`; waits for its admin
/// `/ready` (at `admin`) to answer 200, polling every millisecond.
fn start(
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    admin: u16,
    api: u16,
    log: &Path,
) -> Result<Started> {
    let http = http_client(Duration::from_secs(2))?;
    let url = format!("http://127.0.0.1:{admin}/ready");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("JWT_SECRET", SECRET)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::fs::File::create(log)?)
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut proc = Guard::spawn(&mut cmd, GRACE)
        .with_context(|| format!("starting madbase {}", args.join(" ")))?;
    loop {
        if http.get(&url).send().is_ok_and(|a| a.status() == 200) {
            return Ok(Started {
                ready: started.elapsed(),
                proc,
                api,
            });
        }
        if let Some(status) = proc.try_wait()? {
            bail!("madbase {} exited with {status}", args.join(" "));
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("madbase {} not ready within 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// VmRSS and VmHWM of `pid`, in bytes.
fn rss(pid: u32) -> Result<(f64, f64)> {
    let status = procfs::process::Process::new(i32::try_from(pid)?)?.status()?;
    let kib = |v: Option<u64>| v.unwrap_or(0) as f64 * 1024.0;
    Ok((kib(status.vmrss), kib(status.vmhwm)))
}

/// The summed VmRSS of `pid`'s child processes (the functions service's
/// workers), in bytes, and how many there are.
fn children_rss(pid: u32) -> Result<(f64, usize)> {
    let children = children(pid)?;
    let mut total = 0.0;
    for child in &children {
        total += rss(*child).map(|r| r.0).unwrap_or(0.0);
    }
    Ok((total, children.len()))
}

/// Environment variables of a process.
type Vars = Vec<(String, String)>;

/// The listen variables of one service on fresh ports: (env, api, admin).
fn listeners(prefix: &str) -> Result<(Vars, u16, u16)> {
    let (api, admin) = (free_port()?, free_port()?);
    Ok((
        vec![
            (
                format!("MADBASE_{prefix}LISTEN"),
                format!("127.0.0.1:{api}"),
            ),
            (
                format!("MADBASE_{prefix}ADMIN_LISTEN"),
                format!("127.0.0.1:{admin}"),
            ),
        ],
        api,
        admin,
    ))
}

/// What each service reads besides its listeners.
fn service_env(service: &str, control: &BenchControl) -> Vec<(String, String)> {
    let mut env = vec![
        ("MADBASE_CONTROL_URL".to_owned(), control.url.clone()),
        ("MADBASE_RATE_LIMIT_RPS".to_owned(), "1000000".to_owned()),
        (
            "MADBASE_WORKER_POOL_MAX_PER_TENANT".to_owned(),
            (CONNECTIONS + 1).to_string(),
        ),
    ];
    if service == "control" || service == "serve --all" {
        env.extend([
            ("MADBASE_MASTER_KEY".to_owned(), MASTER_KEY.to_owned()),
            ("DATABASE_URL".to_owned(), control.db.url.clone()),
            (
                "DEFAULT_TENANT_DB_URL".to_owned(),
                control.db.server.url_for("postgres"),
            ),
        ]);
    }
    env
}

/// One `wrk -c16` run of `seconds` with `headers` against `url`: requests per second.
fn wrk(url: &str, headers: &[&str], seconds: u32) -> Result<f64> {
    Ok(Wrk::new(url, CONNECTIONS, seconds)
        .headers(headers)
        .unpinned()
        .run()?
        .rps)
}

/// Runs the footprint benchmark, writes its report.
pub fn footprint(plan: Plan) -> Result<()> {
    step("bench: footprint (images, start, memory)");
    // A smoke run (the `bench-smoke` check) builds no images: `strip` and
    // `ldd` are not among that check's tools.
    let images = if plan.smoke {
        crate::images::cargo_release(&["-p", "madbase"])?;
        Vec::new()
    } else {
        crate::images::build()?
    };
    let target = target_dir();
    let bin = target.join("release/madbase");
    let work = target.join(if plan.smoke {
        "bench/footprint-smoke"
    } else {
        "bench/footprint"
    });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut report = Report::start(
        "footprint",
        plan,
        "Images: `cargo xtask images` (the release build, stripped with `strip --strip-all`, \
         its shared libraries, the CA bundle; one layer shared by the four images), \
         uncompressed, MB = 10^6 bytes. Start: from spawning `madbase <service>` to its admin \
         `/ready` answering 200 (polled every millisecond; Postgres and a control for the \
         others' readiness checks already running), the median of the rounds. Memory: VmRSS \
         two seconds after ready, and VmHWM (the peak) and VmRSS after a `wrk -t1 -c16` run of \
         single-row GETs through the proxy. No CPU pinning: each service runs as many Tokio \
         threads as the machine has cores.",
    );

    let stripped = match images.first() {
        Some(image) => image.archive.with_file_name("madbase.stripped"),
        None => bin.clone(),
    };
    let stripped_size = std::fs::metadata(&stripped)?.len() as f64;
    let mut table = Table::new(
        "images",
        "Images:",
        &["image", "size MB", "target", "of which the binary MB"],
    );
    for image in &images {
        let size = Figure::median(vec![image.size as f64 / MB], "", 1)
            .target(Target::AtMost(IMAGE_TARGET_MB));
        let target = size.target_shown();
        table.row(vec![
            image.service.as_str().into(),
            size.into(),
            target.into(),
            format!("{:.1}", stripped_size / MB).into(),
        ]);
    }
    report.tables.push(table);

    // Postgres and a control (with a tenant and a table) the others ask.
    let control = control_with_tenant(&bin, &work, TENANT)?;
    post_json(
        &format!("{}/v1/tenants/{TENANT}/sql", control.url),
        &control.token,
        &serde_json::json!({ "query":
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL); \
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g" }),
    )?;

    // Start and idle memory, each service `plan.rounds` times.
    let services = ["control", "worker", "functions", "proxy", "serve --all"];
    let mut ready_ms: Vec<Vec<f64>> = vec![Vec::new(); services.len()];
    let mut idle: Vec<Vec<f64>> = vec![Vec::new(); services.len()];
    let mut workers_idle: Vec<(f64, usize)> = vec![(0.0, 0); services.len()];
    for round in 0..plan.rounds {
        for (i, service) in services.iter().enumerate() {
            let mut env = service_env(service, &control);
            let (api, admin) = if *service == "serve --all" {
                let mut ports = Vec::new();
                for prefix in ["PROXY_", "CONTROL_", "WORKER_", "FUNCTIONS_"] {
                    let (vars, api, admin) = listeners(prefix)?;
                    env.extend(vars);
                    ports.push((api, admin));
                }
                env.retain(|(k, _)| k != "MADBASE_CONTROL_URL");
                ports[0]
            } else {
                let (vars, api, admin) = listeners("")?;
                env.extend(vars);
                (api, admin)
            };
            let args: Vec<&str> = service.split(' ').collect();
            let log = work.join(format!("{}-{round}.log", service.replace(' ', "")));
            let s = start(&bin, &args, &env, admin, api, &log)?;
            ready_ms[i].push(s.ready.as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_secs(2));
            idle[i].push(rss(s.proc.id())?.0 / MB);
            workers_idle[i] = children_rss(s.proc.id())?;
        }
    }
    let mut table = Table::new(
        "start",
        "Start and idle memory:",
        &[
            "service",
            "spawn to /ready 200 ms",
            "target",
            "rounds",
            "idle RSS MB",
            "target",
            "its child processes",
        ],
    );
    for (i, service) in services.iter().enumerate() {
        let ready =
            Figure::median(ready_ms[i].clone(), "", 1).target(Target::AtMost(READY_TARGET_MS));
        let mut rss_figure = Figure::median(idle[i].clone(), "", 1);
        if *service != "serve --all" {
            rss_figure = rss_figure.target(Target::AtMost(IDLE_RSS_TARGET_MB));
        }
        let (children, n) = workers_idle[i];
        table.row(vec![
            format!("`madbase {service}`").into(),
            ready.clone().into(),
            ready.target_shown().into(),
            ready.rounds_shown().into(),
            rss_figure.clone().into(),
            rss_figure.target_shown().into(),
            if n == 0 {
                String::new().into()
            } else {
                format!("{n} worker processes, {:.1} MB", children / MB).into()
            },
        ]);
    }
    report.tables.push(table);

    // Memory under load: a worker and a proxy in front of it, then
    // `serve --all`.
    let mut table = Table::new(
        "load",
        &format!(
            "Memory after {} s of single-row GETs (`wrk -t1 -c{CONNECTIONS}`) through the proxy:",
            plan.seconds
        ),
        &["process", "req/s", "peak RSS MB (VmHWM)", "RSS after MB"],
    );
    let headers_owned = [format!("apikey: {}", control.anon)];
    let headers: Vec<&str> = headers_owned.iter().map(String::as_str).collect();
    let mut env = service_env("worker", &control);
    let (vars, api, admin) = listeners("")?;
    env.extend(vars);
    let worker = start(
        &bin,
        &["worker"],
        &env,
        admin,
        api,
        &work.join("worker.log"),
    )?;
    let mut env = service_env("proxy", &control);
    env.push((
        "MADBASE_WORKER_URL".to_owned(),
        format!("http://127.0.0.1:{}", worker.api),
    ));
    let (vars, api, admin) = listeners("")?;
    env.extend(vars);
    let proxy = start(&bin, &["proxy"], &env, admin, api, &work.join("proxy.log"))?;
    let url = format!(
        "http://127.0.0.1:{}/t/{TENANT}/rest/v1/items?id=eq.5",
        proxy.api
    );
    wrk(&url, &headers, plan.warmup)?;
    let rps = wrk(&url, &headers, plan.seconds)?;
    for (name, p) in [("proxy", &proxy), ("worker", &worker)] {
        let (now, peak) = rss(p.proc.id())?;
        table.row(vec![
            format!("`madbase {name}`").into(),
            format!("{rps:.0}").into(),
            format!("{:.1}", peak / MB).into(),
            format!("{:.1}", now / MB).into(),
        ]);
    }
    drop((proxy, worker));
    let mut env = service_env("serve --all", &control);
    env.retain(|(k, _)| k != "MADBASE_CONTROL_URL");
    let mut ports = Vec::new();
    for prefix in ["PROXY_", "CONTROL_", "WORKER_", "FUNCTIONS_"] {
        let (vars, api, admin) = listeners(prefix)?;
        env.extend(vars);
        ports.push((api, admin));
    }
    let all = start(
        &bin,
        &["serve", "--all"],
        &env,
        ports[0].1,
        ports[0].0,
        &work.join("all.log"),
    )?;
    let url = format!(
        "http://127.0.0.1:{}/t/{TENANT}/rest/v1/items?id=eq.5",
        all.api
    );
    wrk(&url, &headers, plan.warmup)?;
    let rps = wrk(&url, &headers, plan.seconds)?;
    let (now, peak) = rss(all.proc.id())?;
    table.row(vec![
        "`madbase serve --all` (four services)".into(),
        format!("{rps:.0}").into(),
        format!("{:.1}", peak / MB).into(),
        format!("{:.1}", now / MB).into(),
    ]);
    report.tables.push(table);
    report.notes.push(
        "The clean release build time and the release profile's effect on it are measured \
         by hand (below), not by this benchmark."
            .to_owned(),
    );
    report.write()?;
    Ok(())
}
