//! Starting, configuration errors, health, readiness, propagation, shutdown.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{BIN, MASTER_KEY, base_env, capture_server, http, output_within, start};

/// A configuration error must end the process at once.
const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn missing_required_variable_is_one_clear_line() {
    for (service, var) in [
        ("control", "DATABASE_URL"),
        ("worker", "JWT_SECRET"),
        ("proxy", "JWT_SECRET"),
        ("functions", "JWT_SECRET"),
    ] {
        let out = output_within(Command::new(BIN).arg(service).env_clear(), LIMIT);
        assert_eq!(out.status.code(), Some(2), "{service}: exit code");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{service}: one line, got {stderr:?}"
        );
        assert!(stderr.contains(var), "{service}: names {var}: {stderr:?}");
        assert!(
            !stderr.contains("panicked"),
            "{service}: no panic: {stderr:?}"
        );
    }
}

#[test]
fn bad_values_name_the_variable() {
    let cases = [
        ("MADBASE_LISTEN", "not-an-address"),
        ("MADBASE_MASTER_KEY", "c2hvcnQ="),
        ("DATABASE_URL", "mysql://nope"),
        ("MADBASE_LOG_FORMAT", "xml"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ];
    for (var, value) in cases {
        let mut env = base_env("control");
        env.retain(|(k, _)| k != var);
        env.push((var.to_owned(), value.to_owned()));
        let out = output_within(
            Command::new(BIN).arg("control").env_clear().envs(env),
            LIMIT,
        );
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: {stderr:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{var}: {stderr:?}");
    }
}

#[test]
fn taken_port_is_named() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let mut env = base_env("worker");
    env.retain(|(k, _)| k != "MADBASE_LISTEN");
    env.push(("MADBASE_LISTEN".into(), addr.clone()));
    let out = output_within(Command::new(BIN).arg("worker").env_clear().envs(env), LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("MADBASE_LISTEN"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_answers_health_on_both_listeners_and_metrics_on_admin_only() {
    for service in ["proxy", "control", "worker", "functions"] {
        let svc = start(service, &base_env(service));
        for url in [svc.api_url("/health"), svc.admin_url("/health")] {
            let resp = http().get(&url).send().await.expect("health");
            assert_eq!(resp.status(), 200, "{url}");
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body["status"], "ok");
            assert_eq!(body["service"], service);
            assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        }
        let metrics = http()
            .get(svc.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.expect("text");
        assert!(text.contains("madbase_build_info{"), "{text}");
        let on_api = http()
            .get(svc.api_url("/metrics"))
            .send()
            .await
            .expect("api metrics");
        assert_eq!(
            on_api.status(),
            404,
            "{service}: /metrics must not be on the API listener"
        );
        // Control has its database; the others cannot reach control here,
        // and /ready says so.
        let ready = http()
            .get(svc.admin_url("/ready"))
            .send()
            .await
            .expect("ready");
        let status = ready.status();
        let body: Value = ready.json().await.expect("json");
        if service == "control" {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["checks"]["database"], "ok");
        } else {
            assert_eq!(status, 503, "{service}");
            assert_eq!(
                body["failed"],
                serde_json::json!(["control"]),
                "{service}: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool() {
    let svc = start("worker", &base_env("worker"));
    http()
        .get(svc.api_url("/health"))
        .send()
        .await
        .expect("health");
    http().get(svc.api_url("/nope")).send().await.expect("404");
    let text = http()
        .get(svc.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt: prometheus) must be installed");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

#[test]
fn control_fails_clearly_without_its_database() {
    let mut env = base_env("control");
    env.retain(|(k, _)| k != "DATABASE_URL");
    env.push((
        "DATABASE_URL".into(),
        "postgres://postgres@127.0.0.1:9/none".into(),
    ));
    env.push(("MADBASE_DB_CONNECT_SECONDS".into(), "1".into()));
    let out = output_within(
        Command::new(BIN).arg("control").env_clear().envs(env),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(MASTER_KEY.len() > 40);
}

#[test]
fn token_prints_an_admin_token() {
    let out = output_within(
        Command::new(BIN)
            .args(["token", "admin", "--ttl", "2h"])
            .env_clear()
            .env("JWT_SECRET", crate::helpers::JWT_SECRET),
        LIMIT,
    );
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let claims = madbase_tenancy::jwt::verify_platform(crate::helpers::JWT_SECRET, &token, "admin")
        .expect("valid admin token");
    assert_eq!(claims.exp - claims.iat, 7200);
    let bad = output_within(
        Command::new(BIN)
            .args(["token", "admin", "--ttl", "soon"])
            .env("JWT_SECRET", "x".repeat(40)),
        LIMIT,
    );
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn test_request_id_propagated() {
    // Worker's readiness check calls control: that outgoing request must
    // carry the incoming request's ID and trace.
    let control = capture_server(Duration::ZERO).await;
    let mut env = base_env("worker");
    env.retain(|(k, _)| k != "MADBASE_CONTROL_URL");
    env.push((
        "MADBASE_CONTROL_URL".into(),
        format!("http://{}", control.addr),
    ));
    let svc = start("worker", &env);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = http()
        .get(svc.admin_url("/ready"))
        .header("x-request-id", "propagate-me-42")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("ready");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "propagate-me-42");
    let seen = control.seen.lock().expect("seen").clone();
    let outgoing = seen.last().expect("control was called");
    assert_eq!(outgoing["x-request-id"], "propagate-me-42");
    let traceparent = outgoing["traceparent"].to_str().expect("ascii");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    // A slow dependency keeps a /ready request in flight during shutdown.
    let control = capture_server(Duration::from_millis(1500)).await;
    let mut env = base_env("worker");
    env.retain(|(k, _)| k != "MADBASE_CONTROL_URL");
    env.push((
        "MADBASE_CONTROL_URL".into(),
        format!("http://{}", control.addr),
    ));
    let mut svc = start("worker", &env);
    let url = svc.admin_url("/ready");
    let in_flight = tokio::spawn(async move { http().get(url).send().await });
    while control.seen.lock().expect("seen").is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    svc.terminate();
    let resp = in_flight
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    let status = svc.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0));
    // New connections are refused once draining is over.
    assert!(std::net::TcpStream::connect(svc.admin).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_exit_codes() {
    let svc = start("functions", &base_env("functions"));
    let ok = Command::new(BIN)
        .args(["healthcheck", "--url", &svc.admin_url("/health")])
        .status()
        .expect("healthcheck");
    assert_eq!(ok.code(), Some(0));
    let down = Command::new(BIN)
        .args([
            "healthcheck",
            "--url",
            "http://127.0.0.1:9/health",
            "--timeout",
            "1",
        ])
        .status()
        .expect("healthcheck");
    assert_eq!(down.code(), Some(1));
    let not_found = Command::new(BIN)
        .args(["healthcheck", "--url", &svc.admin_url("/nope")])
        .status()
        .expect("healthcheck");
    assert_eq!(not_found.code(), Some(1));
}
