//! `madbase dev`: the whole platform in one process.
//!
//! Without `DATABASE_URL`, a Postgres cluster is started from the server
//! binaries (PATH, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`) with
//! its data in `<data-dir>/postgres`, listening only on a unix socket in
//! `<data-dir>/run`. `JWT_SECRET` and `MADBASE_MASTER_KEY` are generated
//! once into `<data-dir>` (mode 0600). The first start creates the `demo`
//! tenant and its example function `hello`; every start prints the URLs,
//! keys, an admin token and `curl` lines. SIGTERM/Ctrl-C stop the services,
//! then Postgres.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use madbase_platform::config::{Env, Source};
use madbase_platform::{Service, pgbin};
use madbase_tenancy::jwt;
use serde_json::{Value, json};

use crate::run::{self, Config};

/// The demo tenant every dev install starts with.
const DEMO: &str = "demo";

/// `madbase dev [--data-dir DIR]`.
pub fn main(data_dir: PathBuf) -> ExitCode {
    let runtime = match crate::run::service_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("madbase dev: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dev(data_dir)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("madbase dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Variables `madbase dev` sets unless the environment does.
struct Overlay(HashMap<String, String>);

impl Source for Overlay {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.0.get(name).cloned())
    }
}

async fn dev(data_dir: PathBuf) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&data_dir)?;
    let mut vars = HashMap::new();
    vars.insert(
        madbase_platform::env::JWT_SECRET.to_owned(),
        secret_file(&data_dir.join("jwt_secret"), 48)?,
    );
    vars.insert(
        madbase_platform::env::MADBASE_MASTER_KEY.to_owned(),
        secret_file(&data_dir.join("master_key"), 32)?,
    );
    vars.insert(
        madbase_platform::env::MADBASE_LOG_FORMAT.to_owned(),
        "pretty".to_owned(),
    );
    for service in Service::ALL {
        let (api, admin) = (service.default_api_port(), service.default_admin_port());
        let prefix = service.name().to_ascii_uppercase();
        vars.insert(
            format!("MADBASE_{prefix}_LISTEN"),
            format!("127.0.0.1:{api}"),
        );
        vars.insert(
            format!("MADBASE_{prefix}_ADMIN_LISTEN"),
            format!("127.0.0.1:{admin}"),
        );
    }

    // The services find each other at their (possibly overridden) addresses.
    let overlay = Overlay(vars.clone());
    for service in [Service::Control, Service::Worker, Service::Functions] {
        let prefix = service.name().to_ascii_uppercase();
        if let Some(listen) = overlay.get(&format!("MADBASE_{prefix}_LISTEN"))
            && let Ok(addr) = listen.parse::<std::net::SocketAddr>()
        {
            vars.insert(
                format!("MADBASE_{prefix}_URL"),
                format!("http://{}", loopback(addr)),
            );
        }
    }

    // The console's health and tenants pages scrape every service's admin
    // listener (MADBASE_CONSOLE_SERVICES in the environment wins).
    let services: Vec<String> = Service::ALL
        .iter()
        .filter_map(|service| {
            let prefix = service.name().to_ascii_uppercase();
            let addr = overlay
                .get(&format!("MADBASE_{prefix}_ADMIN_LISTEN"))?
                .parse::<std::net::SocketAddr>()
                .ok()?;
            Some(format!("{}=http://{}", service.name(), loopback(addr)))
        })
        .collect();
    vars.insert(
        madbase_platform::env::MADBASE_CONSOLE_SERVICES.to_owned(),
        services.join(","),
    );

    // Where clients reach the proxy (functions' SUPABASE_URL, control's rest_url).
    if let Some(listen) = overlay.get(madbase_platform::env::MADBASE_PROXY_LISTEN)
        && let Ok(addr) = listen.parse::<std::net::SocketAddr>()
    {
        vars.insert(
            madbase_platform::env::MADBASE_PUBLIC_URL.to_owned(),
            format!("http://{}", loopback(addr)),
        );
    }

    let postgres =
        if std::env::var_os(madbase_platform::env::DATABASE_URL).is_some_and(|v| !v.is_empty()) {
            None
        } else {
            let pg = Postgres::start(&data_dir).await?;
            vars.insert(
                madbase_platform::env::DATABASE_URL.to_owned(),
                pg.url("madbase"),
            );
            vars.insert(
                madbase_platform::env::DEFAULT_TENANT_DB_URL.to_owned(),
                pg.url("postgres"),
            );
            Some(pg)
        };

    let result = serve(&data_dir, vars).await;
    if let Some(pg) = postgres {
        pg.stop().await?;
    }
    result
}

async fn serve(data_dir: &Path, vars: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    // Every service reads the shared variables plus its own listen addresses.
    let mut configs = Vec::new();
    for service in Service::ALL {
        let prefix = service.name().to_ascii_uppercase();
        let mut own = vars.clone();
        let shared = Overlay(vars.clone());
        for (var, key) in [
            (madbase_platform::env::MADBASE_LISTEN, "LISTEN"),
            (madbase_platform::env::MADBASE_ADMIN_LISTEN, "ADMIN_LISTEN"),
        ] {
            if let Some(v) = shared.get(&format!("MADBASE_{prefix}_{key}")) {
                own.insert(var.to_owned(), v);
            }
        }
        // Each service gets its own port: a global MADBASE_LISTEN cannot apply.
        let env = Env::new(DevSource(Overlay(own)));
        match Config::read(service, &env) {
            Ok(c) => configs.push(c),
            Err(e) => {
                eprintln!("madbase dev: configuration error: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    // The secret the services use: the environment's when set, as for
    // every other variable.
    let secret = Overlay(vars.clone())
        .get(madbase_platform::env::JWT_SECRET)
        .unwrap_or_default();
    let data_dir = data_dir.to_owned();
    let url_of = |service: Service| {
        configs
            .iter()
            .find(|c| c.service() == service)
            .map(|c| format!("http://{}", loopback(c.common().listen)))
            .unwrap_or_default()
    };
    let urls = Urls {
        proxy: url_of(Service::Proxy),
        control: url_of(Service::Control),
    };
    let hook: run::AfterStart =
        Box::new(move || Box::pin(async move { announce(&data_dir, &secret, &urls).await }));
    run::serve("dev", configs, Some(hook)).await?;
    Ok(ExitCode::SUCCESS)
}

/// The overlay, except that the per-service listen addresses always win
/// over a global `MADBASE_LISTEN` in the environment.
struct DevSource(Overlay);

impl Source for DevSource {
    fn get(&self, name: &str) -> Option<String> {
        if name == madbase_platform::env::MADBASE_LISTEN
            || name == madbase_platform::env::MADBASE_ADMIN_LISTEN
        {
            return self.0.0.get(name).cloned();
        }
        self.0.get(name)
    }
}

/// Where the proxy and control listen.
struct Urls {
    proxy: String,
    control: String,
}

/// A listen address as a client reaches it (0.0.0.0 → 127.0.0.1).
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Creates (first start) or reuses the demo tenant and prints how to use it.
async fn announce(data_dir: &Path, secret: &str, urls: &Urls) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let control = urls.control.as_str();
    let proxy = urls.proxy.as_str();
    let admin = jwt::platform_token(secret, "admin", Duration::from_secs(24 * 3600));
    let keys_file = data_dir.join("demo.json");
    let keys: Value = match std::fs::read(&keys_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("reading demo.json")?,
        Err(_) => {
            eprintln!("madbase dev: creating the demo tenant (first run)");
            let created = http
                .post(format!("{control}/v1/tenants"))
                .bearer_auth(&admin)
                .json(&json!({ "id": DEMO }))
                .send()
                .await?;
            let keys: Value = if created.status() == reqwest::StatusCode::CONFLICT {
                // The tenant exists but its keys were lost: issue new ones.
                http.post(format!("{control}/v1/tenants/{DEMO}/keys/rotate"))
                    .bearer_auth(&admin)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?
            } else {
                created.error_for_status()?.json().await?
            };
            let keep =
                json!({"anon_key": keys["anon_key"], "service_role_key": keys["service_role_key"]});
            write_private(&keys_file, keep.to_string().as_bytes())?;
            keep
        }
    };
    let anon = keys["anon_key"].as_str().unwrap_or_default();
    let service = keys["service_role_key"].as_str().unwrap_or_default();
    ensure_hello(&http, control, &admin).await?;
    let fn_curl = format!(
        "curl -s -X POST '{proxy}/t/{DEMO}/functions/v1/hello' -H 'Authorization: Bearer {anon}' \
         -H 'Content-Type: application/json' -d '{{\"name\":\"madbase\"}}'"
    );
    let sql = r#"{"query":"create table if not exists todos (id serial primary key, task text not null); insert into todos (task) values ($$try madbase$$)"}"#;
    let curl = format!(
        "curl -sf -X POST {control}/v1/tenants/{DEMO}/sql -H 'Authorization: Bearer {admin}' \
         -H 'Content-Type: application/json' -d '{sql}' && \
         curl -sf '{proxy}/t/{DEMO}/rest/v1/todos?select=id,task' -H 'apikey: {anon}'"
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\nmadbase dev is running (data in {dir})\n\n  \
         proxy          {proxy}\n  \
         demo REST      {proxy}/t/{DEMO}/rest/v1\n  \
         control API    {control}\n  \
         console        {control}/console\n                 \
         (sign in with the admin token below{password})\n  \
         anon key       {anon}\n  \
         service key    {service}\n  \
         admin token    {admin}\n                 (valid 24 h; `madbase token admin` makes more)\n\n\
         Try it (creates a table through the SQL endpoint, reads it back through /rest/v1):\n\n{curl}\n\n\
         Call the example function `hello` (deployed on first start; redeploy with\n\
         PUT {control}/v1/tenants/{DEMO}/functions/hello):\n\n{fn_curl}\n\n\
         Ctrl-C stops everything.\nmadbase dev: ready",
        dir = data_dir.display(),
        password = if std::env::var_os(madbase_platform::env::MADBASE_CONSOLE_PASSWORD).is_some()
            || std::env::var_os(madbase_platform::env::MADBASE_CONSOLE_PASSWORD_FILE).is_some()
        {
            " or MADBASE_CONSOLE_PASSWORD"
        } else {
            ""
        },
    );
    Ok(())
}

/// The example function `madbase dev` deploys.
const HELLO_FUNCTION: &str = r#"// madbase dev's example function: POST {"name": "..."} to /functions/v1/hello.
Deno.serve(async (req) => {
  let name = "world";
  try {
    name = (await req.json()).name ?? name;
  } catch {
    // no JSON body
  }
  console.log(`hello ${name}`);
  return Response.json({ message: `Hello ${name}!` });
});
"#;

/// Deploys the demo tenant's `hello` function unless it exists (a version
/// the developer deployed is left alone).
async fn ensure_hello(http: &reqwest::Client, control: &str, admin: &str) -> anyhow::Result<()> {
    let url = format!("{control}/v1/tenants/{DEMO}/functions/hello");
    let existing = http.get(&url).bearer_auth(admin).send().await?;
    if existing.status() != reqwest::StatusCode::NOT_FOUND {
        existing.error_for_status()?;
        return Ok(());
    }
    http.put(&url)
        .bearer_auth(admin)
        .header("content-type", "application/javascript")
        .body(HELLO_FUNCTION)
        .send()
        .await?
        .error_for_status()
        .context("deploying the example function")?;
    eprintln!("madbase dev: deployed the example function `hello`");
    Ok(())
}

/// Reads a secret file, or creates it (mode 0600) with `len` random bytes, base64.
fn secret_file(path: &Path, len: usize) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by other users (mode {mode:o}); chmod 600 it",
                path.display()
            );
        }
        return Ok(text.trim().to_owned());
    }
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    write_private(path, text.as_bytes())?;
    Ok(text)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// The embedded cluster.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    /// Run Postgres as this user (we are root, Postgres refuses to be).
    run_as: Option<String>,
    child: tokio::process::Child,
}

impl Postgres {
    async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bin = pgbin::find_bin_dir().map_err(anyhow::Error::msg)?;
        let data = data_dir.join("postgres");
        let socket_dir = data_dir.join("run");
        // Unix sockets have a path limit of about 107 bytes.
        if socket_dir.join(".s.PGSQL.5432.lock").as_os_str().len() > 100 {
            bail!(
                "{} is too long a path for a Postgres socket; use --data-dir with a shorter path",
                socket_dir.display()
            );
        }
        let run_as = if std::fs::metadata("/proc/self")?.uid() == 0 {
            Some("postgres".to_owned())
        } else {
            None
        };
        if run_as.is_some() {
            // Postgres runs as `postgres` and must reach its data directory.
            for dir in data_dir.ancestors().skip(1) {
                let mode = std::fs::metadata(dir)?.permissions().mode();
                if mode & 0o001 == 0 {
                    bail!(
                        "running as root, Postgres runs as the `postgres` user, which cannot enter {} (mode {:o}); \
                         use --data-dir somewhere it can reach (e.g. under /srv or /tmp) or run as a normal user",
                        dir.display(),
                        mode & 0o777
                    );
                }
            }
        }
        std::fs::create_dir_all(&socket_dir)?;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user)?;
            for dir in [data_dir, &socket_dir] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
            }
            if data.exists() {
                std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
            }
        }
        let pg = |program: &str| {
            let mut cmd = match &run_as {
                Some(user) => {
                    let mut c = tokio::process::Command::new("runuser");
                    c.args(["-u", user, "--"]).arg(bin.join(program));
                    c
                }
                None => tokio::process::Command::new(bin.join(program)),
            };
            cmd.stdin(Stdio::null());
            cmd
        };
        if !data.join("PG_VERSION").exists() {
            eprintln!(
                "madbase dev: initialising Postgres in {} (first run) …",
                data.display()
            );
            let started = Instant::now();
            let out = pg("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .output()
                .await
                .context("running initdb")?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&data);
                bail!(
                    "initdb failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            eprintln!(
                "madbase dev: initdb done in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        // A Postgres left over from a killed run: stop it before starting ours.
        if data.join("postmaster.pid").exists() {
            let status = pg("pg_ctl")
                .arg("status")
                .arg("-D")
                .arg(&data)
                .output()
                .await?;
            if status.status.success() {
                eprintln!("madbase dev: stopping a Postgres left running by an earlier run");
                pg("pg_ctl")
                    .args(["stop", "-m", "fast", "-w", "-D"])
                    .arg(&data)
                    .output()
                    .await?;
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(data_dir.join("postgres.log"))?;
        let child = pg("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=", "-c", "max_connections=200"])
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches madbase, which stops the
            // services first and then Postgres.
            .process_group(0)
            .spawn()
            .context("starting postgres")?;
        let mut pg_handle = Postgres {
            bin,
            data,
            socket_dir,
            run_as,
            child,
        };
        pg_handle.wait_ready().await?;
        pg_handle.ensure_database("madbase").await?;
        Ok(pg_handle)
    }

    fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}",
            self.socket_dir.display()
        )
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "postgres exited with {status}; see {}",
                    self.data.with_file_name("postgres.log").display()
                );
            }
            let ok = tokio::process::Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.socket_dir)
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ensure_database(&self, name: &str) -> anyhow::Result<()> {
        use sqlx::{Connection as _, Executor as _, Row as _};
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .context("connecting to the embedded Postgres")?;
        let exists = sqlx::query("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await?
            .get::<i64, _>(0)
            > 0;
        if !exists {
            eprintln!("madbase dev: creating the control database (first run)");
            conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Fast shutdown (active connections are closed, data is safe), waiting
    /// for the postmaster to exit so no `postmaster.pid` is left behind.
    async fn stop(mut self) -> anyhow::Result<()> {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join("pg_ctl"));
                c
            }
            None => tokio::process::Command::new(self.bin.join("pg_ctl")),
        };
        let out = cmd
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.data)
            .output()
            .await?;
        if !out.status.success() {
            let _ = self.child.start_kill();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        match status {
            Ok(Ok(_)) => {
                eprintln!("madbase dev: Postgres stopped");
                Ok(())
            }
            _ => {
                let _ = self.child.start_kill();
                bail!("postgres did not stop within 30 s");
            }
        }
    }
}

/// uid and gid of `user`, from `id`.
fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = std::process::Command::new("id")
            .arg(flag)
            .arg(user)
            .output()?;
        if !out.status.success() {
            bail!("running as root, and there is no `{user}` user to run Postgres as");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}
