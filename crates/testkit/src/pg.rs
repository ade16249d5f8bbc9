use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A Postgres server tests can create databases on.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// `postgres://user@host:port` with no database.
    base: String,
    /// Query string to keep (e.g. `?host=/socket/dir`), or empty.
    query: String,
    bin_dir: Option<PathBuf>,
}

/// One empty database, for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Connection URL of the database.
    pub url: String,
    /// Name of the database.
    pub name: String,
    /// The server it lives on.
    pub server: PgServer,
}

impl PgServer {
    /// URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("{}/{}{}", self.base, db, self.query)
    }

    /// Runs SQL through `psql` against database `db`, returning stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let psql = self
            .bin_dir
            .as_ref()
            .map(|d| d.join("psql"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("psql"));
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url_for(db))
            .args(["-c", sql])
            .output()
            .context("running psql (install the Postgres client)")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty database for the calling test.
pub fn postgres() -> Result<TestDb> {
    let server = SERVER
        .get_or_init(|| server().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    let name = format!(
        "test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    );
    server.psql("postgres", &format!("CREATE DATABASE {name}"))?;
    Ok(TestDb {
        url: server.url_for(&name),
        name,
        server,
    })
}

fn server() -> Result<PgServer> {
    if let Some(url) =
        std::env::var_os(madbase_platform::env::DATABASE_URL).filter(|u| !u.is_empty())
    {
        let url = url.to_string_lossy().into_owned();
        return from_url(&url);
    }
    start_cluster()
}

/// Splits `postgres://user@host:port/db?query` into the server part and the query.
fn from_url(url: &str) -> Result<PgServer> {
    let (without_query, query) = match url.split_once('?') {
        Some((a, q)) => (a, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = without_query
        .find("://")
        .context("DATABASE_URL is not a URL")?
        + 3;
    let base = match without_query[scheme_end..].find('/') {
        Some(i) => &without_query[..scheme_end + i],
        None => without_query,
    };
    Ok(PgServer {
        base: base.to_owned(),
        query,
        bin_dir: find_bin_dir().ok(),
    })
}

/// Where `initdb` and `postgres` live.
fn find_bin_dir() -> Result<PathBuf> {
    madbase_platform::pgbin::find_bin_dir().map_err(anyhow::Error::msg)
}

/// The uid/gid Postgres runs as: ours, or the `postgres` user when we are root.
fn run_as() -> Result<Option<(u32, u32)>> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: name is a valid C string; the result is read before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, and there is no `postgres` user to run Postgres as");
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// A command run as `user`, killed (SIGINT: fast shutdown) when the thread
/// that spawned it dies.
fn command(program: PathBuf, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After setuid: changing credentials clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn chown_tree(path: &Path, user: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A directory for clusters under the target dir (or the system temp dir).
fn work_root() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("tmp")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("madbase-testpg")
}

/// Makes (once per machine and Postgres version) an initdb'd template data
/// directory, so each test process only copies it.
fn template(bin: &Path, user: Option<(u32, u32)>, root: &Path) -> Result<PathBuf> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pg".to_owned());
    let template = root.join(format!("template-{version}"));
    if template.join("PG_VERSION").exists() && template.join(".complete").exists() {
        return Ok(template);
    }
    let staging = root.join(format!("staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    chown_tree(&staging, user)?;
    let out = command(bin.join("initdb"), user)
        .arg("-D")
        .arg(&staging)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(staging.join(".complete"), b"")?;
    // Another process may have won the race; either template is fine.
    if std::fs::rename(&staging, &template).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(template)
}

/// The running cluster's process, kept by a thread that never exits (the
/// parent-death signal fires when the spawning thread dies).
static CHILD: Mutex<Option<Child>> = Mutex::new(None);

fn start_cluster() -> Result<PgServer> {
    let Prepared { bin, user, data } = prepare_data_dir(&format!("data-{}", std::process::id()))?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<u16>>();
    let (bin2, data2) = (bin.clone(), data.clone());
    std::thread::Builder::new()
        .name("testpg-keeper".into())
        .spawn(move || {
            let result = spawn_postgres(&bin2, &data2, user, None, &[]).map(|(port, child)| {
                *CHILD
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
                port
            });
            let failed = result.is_err();
            let _ = tx.send(result);
            if !failed {
                loop {
                    std::thread::park();
                }
            }
        })
        .context("spawning the cluster keeper thread")?;
    let port = rx.recv().context("cluster keeper thread died")??;
    Ok(PgServer {
        base: format!("postgres://postgres@127.0.0.1:{port}"),
        query: String::new(),
        bin_dir: Some(bin),
    })
}

/// The binaries' directory, the user Postgres runs as, a data directory.
struct Prepared {
    bin: PathBuf,
    user: Option<(u32, u32)>,
    data: PathBuf,
}

/// A copy of the template cluster in `<work root>/<name>`, owned by the
/// user Postgres runs as.
fn prepare_data_dir(name: &str) -> Result<Prepared> {
    let bin = find_bin_dir()?;
    let user = run_as()?;
    let root = work_root();
    std::fs::create_dir_all(&root)?;
    chown_tree(&root, user)?;
    // Postgres needs to traverse every parent directory.
    let mut dir = root.parent();
    while let Some(d) = dir {
        if user.is_some()
            && let Ok(meta) = std::fs::metadata(d)
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001));
            }
        }
        dir = d.parent();
    }
    cleanup_stale(&root);
    let template = template(&bin, user, &root)?;
    let data = root.join(name);
    let _ = std::fs::remove_dir_all(&data);
    let status = Command::new("cp")
        .arg("-a")
        .arg(&template)
        .arg(&data)
        .status()
        .context("copying the template cluster")?;
    if !status.success() {
        bail!("cp -a {} {} failed", template.display(), data.display());
    }
    let _ = std::fs::remove_file(data.join(".complete"));
    chown_tree(&data, user)?;
    Ok(Prepared { bin, user, data })
}

/// A cluster of one test's own, which the test may stop and start (the
/// shared one of [`postgres`] must stay up for every other test of the
/// process). Always started from the binaries here, even when
/// `DATABASE_URL` names a server. Stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The server, for databases and `psql`.
    pub server: PgServer,
    /// Its data directory.
    pub data: PathBuf,
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    settings: Vec<String>,
    child: Option<Child>,
}

static PRIVATE: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// A new cluster, with `settings` (`name=value`) added to the test
    /// settings (e.g. `synchronous_commit=on` for a durability check).
    pub fn start(settings: &[&str]) -> Result<Cluster> {
        let name = format!(
            "private-{}-{}",
            std::process::id(),
            PRIVATE.fetch_add(1, Ordering::Relaxed)
        );
        Self::start_in(prepare_data_dir(&name)?, settings)
    }

    /// A cluster on a copy of the template placed at `data` by the caller
    /// (e.g. on a size-limited file system), which must be empty or absent.
    pub fn start_at(data: &Path, settings: &[&str]) -> Result<Cluster> {
        let Prepared {
            bin,
            user,
            data: template_copy,
        } = prepare_data_dir(&format!(
            "private-{}-{}",
            std::process::id(),
            PRIVATE.fetch_add(1, Ordering::Relaxed)
        ))?;
        let status = Command::new("cp")
            .arg("-a")
            .arg(template_copy.join("."))
            .arg(data)
            .status()
            .context("copying the template cluster")?;
        let _ = std::fs::remove_dir_all(&template_copy);
        if !status.success() {
            bail!("cp -a into {} failed", data.display());
        }
        chown_tree(data, user)?;
        Self::start_in(
            Prepared {
                bin,
                user,
                data: data.to_owned(),
            },
            settings,
        )
    }

    fn start_in(Prepared { bin, user, data }: Prepared, settings: &[&str]) -> Result<Cluster> {
        let settings: Vec<String> = settings.iter().map(|s| (*s).to_owned()).collect();
        let (port, child) = keep(&bin, &data, user, None, &settings)?;
        Ok(Cluster {
            server: PgServer {
                base: format!("postgres://postgres@127.0.0.1:{port}"),
                query: String::new(),
                bin_dir: Some(bin.clone()),
            },
            data,
            port,
            bin,
            user,
            settings,
            child: Some(child),
        })
    }

    /// The TCP port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pg_ctl stop --mode <mode>` (`smart`, `fast` or `immediate`),
    /// waiting until the server is gone.
    pub fn stop(&mut self, mode: &str) -> Result<()> {
        let out = command(self.bin.join("pg_ctl"), self.user)
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30"])
            .output()
            .context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop -m {mode} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory
    /// (crash recovery after an immediate stop), waiting until it accepts
    /// connections.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the cluster is running");
        }
        let (_, child) = keep(
            &self.bin,
            &self.data,
            self.user,
            Some(self.port),
            &self.settings,
        )?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: fast shutdown.
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Starts Postgres from a thread that never exits (the parent-death
/// signal fires when the spawning thread dies).
fn keep(
    bin: &Path,
    data: &Path,
    user: Option<(u32, u32)>,
    port: Option<u16>,
    settings: &[String],
) -> Result<(u16, Child)> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(u16, Child)>>();
    let (bin, data, settings) = (bin.to_owned(), data.to_owned(), settings.to_vec());
    std::thread::Builder::new()
        .name("testpg-keeper".into())
        .spawn(move || {
            let result = spawn_postgres(&bin, &data, user, port, &settings);
            let failed = result.is_err();
            let _ = tx.send(result);
            if !failed {
                loop {
                    std::thread::park();
                }
            }
        })
        .context("spawning the cluster keeper thread")?;
    rx.recv().context("cluster keeper thread died")?
}

/// Postgres on `port` (else a free one), with the test settings and
/// `extra` ones, once it accepts connections.
fn spawn_postgres(
    bin: &Path,
    data: &Path,
    user: Option<(u32, u32)>,
    port: Option<u16>,
    extra: &[String],
) -> Result<(u16, Child)> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = match port {
            Some(p) => p,
            None => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
        };
        let mut child = command(bin.join("postgres"), user)
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ])
            .args(extra.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting postgres")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                last_error = format!("postgres exited with {status}: {err}");
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && ready(bin, port) {
                // Drain stderr in the background so postgres never blocks on it.
                if let Some(mut s) = child.stderr.take() {
                    std::thread::spawn(move || {
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                    });
                }
                return Ok((port, child));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("postgres did not accept connections within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    bail!("could not start postgres: {last_error}")
}

fn ready(bin: &Path, port: u16) -> bool {
    let isready = bin.join("pg_isready");
    if !isready.exists() {
        return true;
    }
    Command::new(isready)
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes data directories of test processes that are gone.
fn cleanup_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("data-")
            .or_else(|| name.strip_prefix("staging-"))
            .or_else(|| {
                name.strip_prefix("private-")
                    .and_then(|p| p.split('-').next())
            })
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
