//! `madbase serve --all`: the four services in one process on a testkit
//! Postgres, the proxy handing requests to the worker and the functions
//! service in-process.

use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use madbase_testkit::tenant::{Tenant, platform_token};
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, MASTER_KEY, capture_lines, madbase_command};
use crate::stack::free_port;

struct All {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// `http://127.0.0.1:<port>` of each service's API and admin listeners.
    urls: Vec<(&'static str, String, String)>,
    _db: madbase_testkit::TestDb,
}

impl All {
    fn start(extra: &[(&str, &str)]) -> All {
        let db = madbase_testkit::postgres().expect("postgres");
        let cluster = db.server.url_for("postgres");
        let mut env: Vec<(String, String)> = [
            ("JWT_SECRET", JWT_SECRET),
            ("MADBASE_MASTER_KEY", MASTER_KEY),
            ("DATABASE_URL", db.url.as_str()),
            ("DEFAULT_TENANT_DB_URL", cluster.as_str()),
            ("MADBASE_LOG", "info"),
            ("MADBASE_DRAIN_SECONDS", "2"),
            ("MADBASE_FUNCTIONS_WORKERS", "1"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let mut urls = Vec::new();
        for service in ["proxy", "control", "worker", "functions"] {
            let upper = service.to_ascii_uppercase();
            let (api, admin) = (free_port(), free_port());
            env.push((
                format!("MADBASE_{upper}_LISTEN"),
                format!("127.0.0.1:{api}"),
            ));
            env.push((
                format!("MADBASE_{upper}_ADMIN_LISTEN"),
                format!("127.0.0.1:{admin}"),
            ));
            urls.push((
                service,
                format!("http://127.0.0.1:{api}"),
                format!("http://127.0.0.1:{admin}"),
            ));
        }
        let mut child = madbase_command(&["serve", "--all"], &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn madbase serve --all");
        let lines = capture_lines(child.stdout.take().expect("stdout"));
        All {
            child,
            lines,
            urls,
            _db: db,
        }
    }

    fn url(&self, service: &str) -> &str {
        &self
            .urls
            .iter()
            .find(|u| u.0 == service)
            .expect("service")
            .1
    }

    /// Waits until every service's `/ready` answers 200.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (service, _, admin) in &self.urls {
            loop {
                let ok = http()
                    .get(format!("{admin}/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    break;
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("madbase serve --all exited with {status}");
                }
                assert!(
                    Instant::now() < deadline,
                    "{service} not ready:\n{}",
                    self.lines.lock().expect("lines").join("\n")
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "serve --all did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for All {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

const HELLO: &str =
    r#"Deno.serve(async (req) => Response.json({ hello: (await req.json()).name }));"#;

/// The worker's and the functions service's URLs point where nothing
/// listens: the proxy's requests reach them only in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_all_runs_four_services_and_the_proxy_hands_off_in_process() {
    let mut all = All::start(&[
        ("MADBASE_WORKER_URL", "http://127.0.0.1:9"),
        ("MADBASE_FUNCTIONS_URL", "http://127.0.0.1:9"),
    ]);
    all.ready().await;
    let control = all.url("control").to_owned();
    let proxy = all.url("proxy").to_owned();
    let http = http();
    let tenant = Tenant::create(&http, &control, "all").await;
    tenant
        .sql(
            &http,
            &control,
            "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
             GRANT SELECT, INSERT ON notes TO anon;
             GRANT USAGE ON SEQUENCE notes_id_seq TO anon;
             INSERT INTO notes (body) VALUES ('first');
             NOTIFY pgrst, 'reload schema';",
        )
        .await;

    let rest = format!("{proxy}/t/{}/rest/v1/notes", tenant.id);
    let resp = http
        .post(&rest)
        .header("apikey", &tenant.anon_key)
        .json(&json!({"body": "second"}))
        .send()
        .await
        .expect("insert");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let resp = http
        .get(format!("{rest}?select=body&order=id"))
        .header("apikey", &tenant.anon_key)
        .send()
        .await
        .expect("read");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let rows: Value = resp.json().await.expect("json");
    assert_eq!(rows, json!([{"body": "first"}, {"body": "second"}]));
    // The key check is the proxy's, in front of the hand-off.
    let resp = http.get(&rest).send().await.expect("no key");
    assert_eq!(resp.status(), 401);

    let deployed = http
        .put(format!(
            "{control}/v1/tenants/{}/functions/hello?verify_jwt=false",
            tenant.id
        ))
        .bearer_auth(platform_token("admin"))
        .header("content-type", "application/javascript")
        .body(HELLO)
        .send()
        .await
        .expect("deploy");
    assert!(deployed.status().is_success(), "{deployed:?}");
    let resp = http
        .post(format!("{proxy}/t/{}/functions/v1/hello", tenant.id))
        .json(&json!({"name": "all"}))
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body, json!({"hello": "all"}));

    // The worker still serves its own listener for other callers.
    let resp = http
        .get(format!("{}/rest/v1/notes", all.url("worker")))
        .header("x-madbase-tenant", &tenant.id)
        .header("apikey", &tenant.anon_key)
        .send()
        .await
        .expect("direct");
    assert_eq!(resp.status(), 200);

    let status = all.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_all_refuses_a_global_listen_address() {
    let env = [
        ("JWT_SECRET".to_owned(), JWT_SECRET.to_owned()),
        ("MADBASE_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let out = madbase_command(&["serve", "--all"], &env)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration error: MADBASE_LISTEN: cannot apply to four services"),
        "{stderr}"
    );
}
