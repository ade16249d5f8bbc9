//! `madbase dev` end to end: a child process in a temporary directory with
//! its own Postgres, the printed `curl` flow, SIGTERM, no Postgres left
//! behind, and the data still there on the next start.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{capture_lines, madbase_command};

pub(crate) struct Dev {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub(crate) fn start(data_dir: &Path, ports: &[(String, String)]) -> Dev {
    let data_dir = data_dir.to_string_lossy();
    let mut child = madbase_command(&["dev", "--data-dir", &data_dir], ports)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn madbase dev");
    let lines = capture_lines(child.stderr.take().expect("stderr"));
    let dev = Dev {
        child,
        stderr: lines,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if dev.text().contains("madbase dev: ready") {
            return dev;
        }
        assert!(
            Instant::now() < deadline,
            "madbase dev not ready:\n{}",
            dev.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Dev {
    pub(crate) fn text(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }

    pub(crate) fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert_eq!(status.code(), Some(0), "{}", self.text());
                return self.text();
            }
            assert!(
                Instant::now() < deadline,
                "madbase dev did not stop:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn dev_runs_the_platform_and_keeps_its_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Postgres may run as another user (when the tests run as root).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data_dir = tmp.path().join(".madbase");
    let mut ports = Vec::new();
    for svc in ["PROXY", "CONTROL", "WORKER", "FUNCTIONS"] {
        ports.push((
            format!("MADBASE_{svc}_LISTEN"),
            format!("127.0.0.1:{}", free_port()),
        ));
        ports.push((
            format!("MADBASE_{svc}_ADMIN_LISTEN"),
            format!("127.0.0.1:{}", free_port()),
        ));
    }

    // A JWT_SECRET from the environment wins over the generated one, for the
    // services and for the admin token dev signs to create the demo tenant.
    let mut env = ports.clone();
    env.push(("JWT_SECRET".to_owned(), "e".repeat(48)));
    let dev = start(&data_dir, &env);
    let banner = dev.text();
    assert!(
        banner.contains("initialising Postgres"),
        "progress shown on first run:\n{banner}"
    );
    for secret in ["jwt_secret", "master_key", "demo.json"] {
        let mode = std::fs::metadata(data_dir.join(secret))
            .expect(secret)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    // The printed curl line works as pasted.
    let curl = banner
        .lines()
        .find(|l| l.starts_with("curl "))
        .unwrap_or_else(|| panic!("no curl line in:\n{banner}"))
        .to_owned();
    let out = Command::new("sh").args(["-c", &curl]).output().expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl flow failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("try madbase"), "{stdout}");
    // So does the call of the example function (run by a functions worker).
    let fn_curl = banner
        .lines()
        .find(|l| l.starts_with("curl ") && l.contains("/functions/v1/hello"))
        .unwrap_or_else(|| panic!("no function curl line in:\n{banner}"))
        .to_owned();
    let out = Command::new("sh")
        .args(["-c", &fn_curl])
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Hello madbase!"),
        "function call failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data_path = data_dir.join("postgres");
    let data_str = data_path.to_string_lossy().into_owned();
    assert!(
        !processes_mentioning(&data_str).is_empty(),
        "postgres runs from the data dir"
    );
    let log = dev.stop();
    assert!(log.contains("Postgres stopped"), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        processes_mentioning(&data_str).is_empty(),
        "no Postgres left behind"
    );
    assert!(
        !data_path.join("postmaster.pid").exists(),
        "no stale postmaster.pid"
    );

    // Second start: no initdb, same secrets, the rows are still there.
    let dev = start(&data_dir, &env);
    assert!(
        !dev.text().contains("initialising Postgres"),
        "{}",
        dev.text()
    );
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("demo.json")).expect("keys"))
            .expect("json");
    let proxy = &ports[0].1;
    let out = Command::new("curl")
        .args([
            "-sf",
            &format!("http://{proxy}/t/demo/rest/v1/todos?select=task"),
            "-H",
        ])
        .arg(format!(
            "apikey: {}",
            keys["anon_key"].as_str().expect("anon key")
        ))
        .output()
        .expect("curl");
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(rows, serde_json::json!([{"task": "try madbase"}]));
    dev.stop();
    assert!(processes_mentioning(&data_str).is_empty());
}
