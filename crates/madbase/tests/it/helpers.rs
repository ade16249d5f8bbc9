//! Running the real `madbase` binary in tests.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_madbase");
pub const JWT_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32

/// A `madbase <service>` child process with its stdout captured.
pub struct Running {
    child: Child,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Environment a service needs to start, with both listeners on free
/// loopback ports.
pub fn base_env(service: &str) -> Vec<(String, String)> {
    let env = vec![
        ("JWT_SECRET", JWT_SECRET),
        ("MADBASE_LISTEN", "127.0.0.1:0"),
        ("MADBASE_ADMIN_LISTEN", "127.0.0.1:0"),
        ("MADBASE_LOG", "info"),
        ("MADBASE_DRAIN_SECONDS", "5"),
        // Nothing listens there: readiness fails, health does not care.
        ("MADBASE_CONTROL_URL", "http://127.0.0.1:9"),
    ];
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if service == "control" {
        // Control migrates its database at start: give it a real one.
        let db = madbase_testkit::postgres().expect("test database");
        env.push(("DATABASE_URL".into(), db.url));
        env.push(("MADBASE_MASTER_KEY".into(), MASTER_KEY.into()));
    }
    env
}

/// `madbase <args>` with `env` replacing the inherited madbase, OTEL and
/// database variables.
pub fn madbase_command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("MADBASE_")
            || k.starts_with("OTEL_")
            || k == "DATABASE_URL"
            || k == "JWT_SECRET"
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Collects the lines of `reader` (a child's stdout or stderr) in the background.
pub fn capture_lines(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

/// Starts `madbase <service>` with `env` (which replaces the inherited
/// madbase/OTEL variables) and waits until it listens.
pub fn start(service: &str, env: &[(String, String)]) -> Running {
    let mut child = madbase_command(&[service], env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn madbase");
    let lines = capture_lines(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = lines.lock().expect("lines").iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let msg = v["message"].as_str()?;
            msg.ends_with("listening").then(|| {
                (
                    v["api"]
                        .as_str()
                        .expect("api addr")
                        .parse()
                        .expect("api addr"),
                    v["admin"]
                        .as_str()
                        .expect("admin addr")
                        .parse()
                        .expect("admin addr"),
                )
            })
        });
        if let Some(found) = found {
            return Running {
                child,
                api: found.0,
                admin: found.1,
                lines,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("madbase {service} exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "madbase {service} did not start listening:\n{}",
            lines.lock().expect("lines").join("\n")
        );

        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Running {
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits until a stdout line satisfies `pred`, returning it parsed.
    pub fn wait_for_line(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v))
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no matching log line in:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL.
    pub fn kill_hard(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill SIGKILL");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill SIGTERM");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A loopback server that records the headers of every request it gets
/// and answers 200 after `delay`.
pub struct Capture {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

pub async fn capture_server(delay: Duration) -> Capture {
    use axum::routing::any;
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().fallback(any(move |headers: http::HeaderMap| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("seen").push(headers);
            tokio::time::sleep(delay).await;
            "ok"
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Capture { addr, seen }
}

/// Runs `cmd` to completion, killing it (and failing) after `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill(2) on our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}
