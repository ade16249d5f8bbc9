//! Disk full and read-only data directories (issue 24). Control's secret
//! store (its Postgres) on a size-limited tmpfs filled to the last byte:
//! writes are refused with a clear JSON error, nothing stored before is
//! lost or damaged, and writes work again once space returns. `madbase
//! dev` given a read-only data directory: a clear error and exit, then a
//! normal start once it is writable. Needs root for `mount(2)` (CI's
//! outer run and `cargo xtask soak`); where mounting is not permitted (the
//! Nix-like sandbox runs tests as `nobody`) each test says so and passes
//! without running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, MASTER_KEY, start};
use crate::stack::record;

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not permitted.
    fn mount(size: &str) -> Option<Tmpfs> {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("madbase-disk-{}-{size}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let rc = sys_mount(&dir, &format!("size={size},mode=0755"), 0);
        if let Err(e) = rc {
            eprintln!(
                "SKIPPED: mounting a tmpfs at {} is not permitted here ({e}); this scenario needs root (cargo xtask soak runs it)",
                dir.display()
            );
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Tmpfs { dir })
    }

    /// Remounts read-only (`true`) or read-write.
    fn set_read_only(&self, ro: bool) {
        let flags = libc::MS_REMOUNT | if ro { libc::MS_RDONLY } else { 0 };
        sys_mount(&self.dir, "mode=0755", flags).expect("remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: umount2(2) on a mount point this test made.
        #[allow(unsafe_code)]
        unsafe {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn sys_mount(dir: &Path, options: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    let fstype = c"tmpfs";
    let data = std::ffi::CString::new(options).expect("options");
    // SAFETY: mount(2) with valid C strings.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Fills the file system holding `dir` with a file of zeros until it is
/// full; the file's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Down to the last bytes.
    while f.write_all(&[0u8; 512]).is_ok() {}
    path
}

async fn put_secret(
    http: &reqwest::Client,
    control: &str,
    tenant: &str,
    name: &str,
    value: &str,
) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let r = http
        .put(format!("{control}/v1/tenants/{tenant}/secrets"))
        .bearer_auth(madbase_testkit::tenant::platform_token("admin"))
        .json(&json!({ name: value }))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("put secret");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null), t0.elapsed())
}

async fn secret_names(http: &reqwest::Client, control: &str, tenant: &str) -> Option<Vec<String>> {
    let r = http
        .get(format!("{control}/v1/tenants/{tenant}/secrets"))
        .bearer_auth(madbase_testkit::tenant::platform_token("admin"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_secret_store_full_refuses_writes_keeps_data_and_recovers() {
    let Some(fs) = Tmpfs::mount("160m") else {
        return;
    };
    let mut cluster = madbase_testkit::Cluster::start_at(
        &fs.dir.join("pg"),
        &[
            "synchronous_commit=on",
            "min_wal_size=32MB",
            "max_wal_size=48MB",
        ],
    )
    .expect("cluster on the tmpfs");
    cluster
        .server
        .psql("postgres", "CREATE DATABASE control")
        .expect("control database");
    // Tenants live on the usual test cluster: only control's store is small.
    let tenants = madbase_testkit::postgres().expect("postgres");
    let env: Vec<(String, String)> = [
        ("JWT_SECRET", JWT_SECRET),
        ("MADBASE_ADMIN_LISTEN", "127.0.0.1:0"),
        ("MADBASE_LISTEN", "127.0.0.1:0"),
        ("MADBASE_LOG", "info"),
        ("MADBASE_MASTER_KEY", MASTER_KEY),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .chain([
        ("DATABASE_URL".to_owned(), cluster.server.url_for("control")),
        (
            "DEFAULT_TENANT_DB_URL".to_owned(),
            tenants.server.url_for("postgres"),
        ),
    ])
    .collect();
    let control = start("control", &env);
    let control_url = control.api_url("");
    let http = reqwest::Client::new();
    let t = madbase_testkit::tenant::Tenant::create(&http, &control_url, "disk").await;
    let value = "v".repeat(8 * 1024);
    let (status, body, _) = put_secret(&http, &control_url, &t.id, "BEFORE", &value).await;
    assert_eq!(status, 200, "{body}");

    let filler = fill(&fs.dir);
    // Writes until the store refuses one (each a new row, 8 KiB sealed).
    let mut acknowledged = vec!["BEFORE".to_owned()];
    let mut refusals: Vec<(u16, Value, Duration)> = Vec::new();
    for i in 0..150 {
        let name = format!("FULL_{i}");
        let (status, body, took) = put_secret(&http, &control_url, &t.id, &name, &value).await;
        assert!(took < Duration::from_secs(15), "{name} took {took:?}");
        if status == 200 {
            acknowledged.push(name);
        } else {
            // A clear JSON error, never a success that was not stored.
            assert_eq!(status, 507, "{body}");
            assert_eq!(body["code"], "insufficient_storage", "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("out of disk space")),
                "{body}"
            );
            refusals.push((status, body, took));
            if refusals.len() >= 3 {
                break;
            }
        }
    }
    assert!(!refusals.is_empty(), "the full disk refused no write");
    eprintln!("refusals: {refusals:?}");

    // Space returns: writes work again by themselves, and every write
    // acknowledged before (or while) the disk was full is there.
    std::fs::remove_file(&filler).expect("free space");
    let freed = Instant::now();
    let recovery = loop {
        let (status, _, _) = put_secret(&http, &control_url, &t.id, "AFTER", "x").await;
        if status == 200 {
            break freed.elapsed();
        }
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "no write accepted 20 s after space returned: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    acknowledged.push("AFTER".into());
    let names = secret_names(&http, &control_url, &t.id)
        .await
        .expect("list secrets");
    for n in &acknowledged {
        assert!(
            names.contains(n),
            "{n} was acknowledged and is gone: {names:?}"
        );
    }
    // No corruption: Postgres reads every page of the store back.
    let check = cluster
        .server
        .psql(
            "control",
            "SELECT count(*) || ':' || sum(length(value_enc)) FROM function_secrets",
        )
        .expect("read back");
    drop(control);
    cluster.stop("fast").expect("clean shutdown");
    record(
        "disk full: control's secret store (its Postgres on a 160 MiB tmpfs filled to the last byte)",
        json!({
            "requests": acknowledged.len() + refusals.len(),
            "outcomes": { "200": acknowledged.len(), "refused": refusals.len() },
            "errors": refusals.len(),
            "recovery_ms": recovery.as_millis() as u64,
            "slowest_ms": refusals.iter().map(|r| r.2.as_millis() as u64).max(),
            "data": format!(
                "refused with {}; {} writes acknowledged, all present after space returned ({check} rows:bytes read back); clean shutdown",
                refusals.iter().map(|r| format!("{} {}", r.0, r.1["message"].as_str().unwrap_or(""))).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(" / "),
                acknowledged.len()
            ),
        }),
    );
}

/// `madbase dev` on a read-only data directory: it says so and exits at
/// once (no half-made cluster); once the directory is writable it starts
/// as on any first run. Then its disk fills: writes get Postgres' own
/// disk-full error, nothing acknowledged is lost, and writes work again
/// once space returns; it stops cleanly.
#[test]
fn dev_data_directory_read_only_then_full() {
    let Some(fs) = Tmpfs::mount("256m") else {
        return;
    };
    let data_dir = fs.dir.join(".madbase");
    let mut env = Vec::new();
    for svc in ["PROXY", "CONTROL", "WORKER", "FUNCTIONS"] {
        for kind in ["LISTEN", "ADMIN_LISTEN"] {
            env.push((
                format!("MADBASE_{svc}_{kind}"),
                format!("127.0.0.1:{}", crate::dev::free_port()),
            ));
        }
    }
    fs.set_read_only(true);
    let t0 = Instant::now();
    let out = crate::helpers::output_within(
        &mut crate::helpers::madbase_command(
            &["dev", "--data-dir", &data_dir.to_string_lossy()],
            &env,
        ),
        Duration::from_secs(30),
    );
    let refused_after = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Read-only file system") && stderr.contains(&*data_dir.to_string_lossy()),
        "a clear error naming the directory and the cause: {stderr}"
    );
    assert!(!data_dir.exists(), "nothing was made");
    fs.set_read_only(false);
    let t1 = Instant::now();
    let dev = crate::dev::start(&data_dir, &env);
    let started_after = t1.elapsed();
    assert!(
        dev.text().contains("initialising Postgres"),
        "{}",
        dev.text()
    );

    // Its Postgres on a full disk: the demo's printed curl line makes a
    // table; inserts are refused with Postgres' own 53100 (503 JSON) once
    // the disk is full, and accepted again once space returns.
    let curl = dev
        .text()
        .lines()
        .find(|l| l.starts_with("curl ") && l.contains("/sql"))
        .unwrap_or_else(|| panic!("no SQL curl line in:\n{}", dev.text()))
        .to_owned();
    let made = std::process::Command::new("sh")
        .args(["-c", &curl])
        .output()
        .expect("sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let keys: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("demo.json")).expect("demo.json"))
            .expect("demo keys");
    let service = keys["service_role_key"]
        .as_str()
        .expect("service key")
        .to_owned();
    let proxy = &env
        .iter()
        .find(|(k, _)| k == "MADBASE_PROXY_LISTEN")
        .expect("proxy")
        .1;
    let todos = format!("http://{proxy}/t/demo/rest/v1/todos");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::new();
    let insert = |task: String| {
        let (http, todos, service) = (http.clone(), todos.clone(), service.clone());
        rt.block_on(async move {
            let r = http
                .post(&todos)
                .header("apikey", &service)
                .header("prefer", "return=minimal")
                .json(&json!({ "task": task }))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .expect("insert");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let filler = fill(&fs.dir);
    let (mut acked, mut refused) = (0, None);
    for i in 0..500 {
        let (status, body) = insert(format!("{i}{}", "x".repeat(8 * 1024)));
        if status == 201 {
            acked += 1;
            continue;
        }
        assert_eq!((status, &body["code"]), (503, &json!("53100")), "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("No space left on device")),
            "{body}"
        );
        refused = Some(body);
        break;
    }
    let refused = refused.expect("the full disk refused no insert");
    std::fs::remove_file(&filler).expect("free space");
    let freed = Instant::now();
    let dev_recovery = loop {
        if insert("after".into()).0 == 201 {
            break freed.elapsed();
        }
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "no insert 20 s after space returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let rows: Value = rt.block_on(async {
        http.get(format!("{todos}?select=id"))
            .header("apikey", &service)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("rows")
    });
    // The demo row, every acknowledged insert, and the one after.
    assert_eq!(rows.as_array().map(Vec::len), Some(acked + 2), "{rows}");
    dev.stop();
    record(
        "read-only, then full, data directory: madbase dev",
        json!({
            "requests": acked + 4,
            "outcomes": { "read-only refused": 1, "started": 1, "201": acked + 1, "503": 1 },
            "errors": 2,
            "slowest_ms": refused_after.as_millis() as u64,
            "recovery_ms": started_after.as_millis() as u64,
            "data": format!(
                "read-only: exit {} after {} ms with {:?}; writable again: first-run start (initdb) in {} ms; then its disk full: insert refused with 503 {} {:?}, {acked} inserts acknowledged and all present after space returned, inserts again {} ms after; SIGTERM exit 0",
                out.status.code().unwrap_or(-1),
                refused_after.as_millis(),
                stderr.lines().last().unwrap_or("").trim(),
                started_after.as_millis(),
                refused["code"].as_str().unwrap_or(""),
                refused["message"].as_str().unwrap_or(""),
                dev_recovery.as_millis()
            ),
        }),
    );
}
