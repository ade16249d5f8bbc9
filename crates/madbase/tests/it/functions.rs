//! Functions end to end: real control (on a testkit Postgres), proxy, data
//! API worker and functions service, each the real `madbase` binary, with
//! the functions service running real `madbase functions-worker` processes
//! (its default worker command: its own executable).
//! Functions are deployed through control's admin API and invoked through
//! the proxy.

use std::time::{Duration, Instant};

use madbase_testkit::tenant::{Tenant, platform_token, rotate_keys};
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, MASTER_KEY, Running, start};

/// The platform's processes for one test (also `faults.rs`' SIGTERM to
/// the functions service).
pub(crate) struct Stack {
    pub(crate) control: Running,
    pub(crate) functions: Running,
    pub(crate) proxy: Running,
    _worker: Running,
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A free loopback port (the proxy's: the functions service must know the
/// public URL before the proxy starts).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Stack {
    /// Starts everything; `functions_env` adds to the functions service's
    /// variables.
    pub(crate) fn start(functions_env: &[(&str, &str)]) -> Stack {
        let db = madbase_testkit::postgres().expect("test database");
        let tenant_cluster = db.server.url_for("postgres");
        let common = [
            ("JWT_SECRET", JWT_SECRET),
            ("MADBASE_LISTEN", "127.0.0.1:0"),
            ("MADBASE_ADMIN_LISTEN", "127.0.0.1:0"),
            ("MADBASE_LOG", "info"),
            ("MADBASE_DRAIN_SECONDS", "1"),
        ];
        let mut control_env = env(&common);
        control_env.extend(env(&[
            ("DATABASE_URL", &db.url),
            ("DEFAULT_TENANT_DB_URL", &tenant_cluster),
            ("MADBASE_MASTER_KEY", MASTER_KEY),
        ]));
        let control = start("control", &control_env);
        let control_url = format!("http://{}", control.api);

        let mut worker_env = env(&common);
        worker_env.push(("MADBASE_CONTROL_URL".into(), control_url.clone()));
        let worker = start("worker", &worker_env);

        let proxy_port = free_port();
        let public_url = format!("http://127.0.0.1:{proxy_port}");
        let mut fn_env = env(&common);
        fn_env.extend(env(&[
            ("MADBASE_CONTROL_URL", &control_url),
            ("MADBASE_PUBLIC_URL", &public_url),
            ("MADBASE_FUNCTIONS_PROXY_URL", &public_url),
            ("MADBASE_FUNCTIONS_WORKERS", "3"),
            ("MADBASE_FUNCTIONS_CODE_CACHE_SECONDS", "0.5"),
        ]));
        fn_env.extend(env(functions_env));
        let functions = start("functions", &fn_env);

        let mut proxy_env = env(&common);
        proxy_env.retain(|(k, _)| k != "MADBASE_LISTEN");
        proxy_env.extend(env(&[
            ("MADBASE_LISTEN", &format!("127.0.0.1:{proxy_port}")),
            ("MADBASE_CONTROL_URL", &control_url),
            ("MADBASE_WORKER_URL", &format!("http://{}", worker.api)),
            (
                "MADBASE_FUNCTIONS_URL",
                &format!("http://{}", functions.api),
            ),
        ]));
        let proxy = start("proxy", &proxy_env);
        Stack {
            control,
            functions,
            proxy,
            _worker: worker,
        }
    }

    fn control_url(&self) -> String {
        format!("http://{}", self.control.api)
    }

    pub(crate) async fn tenant(&self, prefix: &str) -> Tenant {
        Tenant::create(&http(), &self.control_url(), prefix).await
    }

    /// Deploys `source` as `name`; `query` e.g. `?verify_jwt=false`.
    pub(crate) async fn deploy(
        &self,
        tenant: &Tenant,
        name: &str,
        query: &str,
        source: &str,
    ) -> Value {
        let resp = http()
            .put(format!(
                "{}/v1/tenants/{}/functions/{name}{query}",
                self.control_url(),
                tenant.id
            ))
            .bearer_auth(platform_token("admin"))
            .header("content-type", "application/javascript")
            .body(source.to_owned())
            .send()
            .await
            .expect("deploy");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert!(status.is_success(), "deploy {name}: {status} {body}");
        body
    }

    pub(crate) fn fn_url(&self, tenant: &Tenant, path: &str) -> String {
        format!(
            "http://{}/t/{}/functions/v1/{path}",
            self.proxy.api, tenant.id
        )
    }

    /// `POST` with the tenant's anon key as apikey and bearer.
    pub(crate) async fn call(
        &self,
        tenant: &Tenant,
        path: &str,
        body: Value,
    ) -> (u16, Value, Duration) {
        let started = Instant::now();
        let resp = http()
            .post(self.fn_url(tenant, path))
            .header("apikey", &tenant.anon_key)
            .bearer_auth(&tenant.anon_key)
            .json(&body)
            .send()
            .await
            .expect("invoke");
        let status = resp.status().as_u16();
        assert!(resp.headers().contains_key("x-request-id"));
        let text = resp.text().await.expect("body");
        let elapsed = started.elapsed();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v, elapsed)
    }

    async fn metrics(&self) -> String {
        http()
            .get(self.functions.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Calls until `done` holds for the answer (a redeploy or delete shows
/// within the code cache's lifetime), at most 10 s.
async fn eventually(
    stack: &Stack,
    tenant: &Tenant,
    path: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body, _) = stack.call(tenant, path, json!({})).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const HELLO: &str = r#"
Deno.serve(async (req) => {
  const input = await req.json();
  const url = new URL(req.url);
  console.log("hello called for", input.name);
  console.error("an error line");
  return new Response(JSON.stringify({
    hello: input.name,
    method: req.method,
    url: req.url,
    path: url.pathname,
    q: url.searchParams.get("q"),
    auth: req.headers.get("authorization"),
    custom: req.headers.get("x-custom"),
    internal: req.headers.get("x-madbase-tenant"),
    host: req.headers.get("host"),
    forwarded_host: req.headers.get("x-forwarded-host"),
  }), { status: 201, headers: { "content-type": "application/json", "x-fn": "yes" } });
});
"#;

const DEFAULT_EXPORT: &str = r#"
export default {
  async fetch(req) {
    return Response.json({
      style: "default",
      secret: Deno.env.get("MY_SECRET") ?? null,
      url: Deno.env.get("SUPABASE_URL") ?? null,
      has_anon: (Deno.env.get("SUPABASE_ANON_KEY") ?? "").length > 20,
      has_service: (Deno.env.get("SUPABASE_SERVICE_ROLE_KEY") ?? "").length > 20,
      no_master: Deno.env.get("MADBASE_MASTER_KEY") ?? null,
    });
  },
};
"#;

const REST: &str = r#"
Deno.serve(async () => {
  const key = Deno.env.get("SUPABASE_SERVICE_ROLE_KEY");
  const r = await fetch(Deno.env.get("SUPABASE_URL") + "/rest/v1/todos?select=task&order=id", {
    headers: { apikey: key, authorization: "Bearer " + key },
  });
  return new Response(await r.text(), {
    status: r.status,
    headers: { "content-type": "application/json" },
  });
});
"#;

#[tokio::test(flavor = "multi_thread")]
async fn functions_deploy_invoke_redeploy_delete_through_the_proxy() {
    // Clients know the platform by a public name; functions reach the proxy
    // on loopback (as `http://proxy:8000` in compose).
    let stack = Stack::start(&[("MADBASE_PUBLIC_URL", "https://api.example.test")]);
    let t = stack.tenant("fne2e").await;
    let deployed = stack.deploy(&t, "hello", "", HELLO).await;
    assert_eq!(deployed["version"], 1);

    // JSON in and out, status and headers, the URL the function sees.
    let resp = http()
        .post(stack.fn_url(&t, "hello/sub/path?q=42"))
        .header("apikey", &t.anon_key)
        .bearer_auth(&t.anon_key)
        .header("x-custom", "custom-value")
        .header("x-request-id", "fn-e2e-request-1")
        .json(&json!({"name": "madbase"}))
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-fn"], "yes");
    assert_eq!(resp.headers()["x-request-id"], "fn-e2e-request-1");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["hello"], "madbase");
    assert_eq!(body["method"], "POST");
    assert_eq!(
        body["path"],
        format!("/t/{}/functions/v1/hello/sub/path", t.id)
    );
    assert_eq!(body["q"], "42");
    assert_eq!(
        body["url"],
        format!(
            "https://api.example.test/t/{}/functions/v1/hello/sub/path?q=42",
            t.id
        )
    );
    assert_eq!(body["auth"], format!("Bearer {}", t.anon_key));
    assert_eq!(body["custom"], "custom-value");
    assert_eq!(
        body["internal"],
        Value::Null,
        "X-Madbase-* never reach a function"
    );
    assert_eq!(
        body["host"],
        Value::Null,
        "the internal Host is not passed on"
    );
    assert_eq!(body["forwarded_host"], stack.proxy.api.to_string());

    // console.* → JSON log lines of the functions service.
    let line = stack.functions.wait_for_line(|v| {
        v["message"] == "hello called for madbase" && v["request_id"] == "fn-e2e-request-1"
    });
    assert_eq!(line["function"], "hello");
    assert_eq!(line["version"], 1);
    assert_eq!(line["tenant"], t.id.as_str());
    assert_eq!(line["level"], "INFO");
    let line = stack
        .functions
        .wait_for_line(|v| v["message"] == "an error line");
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["console"], "error");
    // ... and in the record of recent invocations the console reads (kept
    // just after those lines are logged).
    let deadline = Instant::now() + Duration::from_secs(5);
    let call = loop {
        let recent: Value = http()
            .get(format!(
                "http://{}/internal/v1/tenants/{}/functions/hello/invocations",
                stack.functions.api, t.id
            ))
            .bearer_auth(platform_token("internal"))
            .send()
            .await
            .expect("recent invocations")
            .json()
            .await
            .expect("json");
        let found = recent["invocations"].as_array().and_then(|calls| {
            calls
                .iter()
                .find(|c| c["request_id"] == "fn-e2e-request-1")
                .cloned()
        });
        match found {
            Some(call) => break call,
            None => assert!(Instant::now() < deadline, "not recorded: {recent}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["status"], 201, "{call}");
    assert_eq!(call["outcome"], "ok");
    assert_eq!(call["version"], 1);
    assert_eq!(
        call["console"],
        json!([
            {"level": "info", "message": "hello called for madbase"},
            {"level": "error", "message": "an error line"},
        ])
    );

    // The default-export style, with a secret and the platform's variables.
    let resp = http()
        .put(format!(
            "{}/v1/tenants/{}/secrets",
            stack.control_url(),
            t.id
        ))
        .bearer_auth(platform_token("admin"))
        .json(&json!({"MY_SECRET": "s3cr3t"}))
        .send()
        .await
        .expect("secrets");
    assert_eq!(resp.status(), 200);
    stack.deploy(&t, "styles", "", DEFAULT_EXPORT).await;
    let (status, body, _) = stack.call(&t, "styles", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["style"], "default");
    assert_eq!(body["secret"], "s3cr3t");
    assert_eq!(
        body["url"],
        format!("http://{}/t/{}", stack.proxy.api, t.id)
    );
    assert_eq!(body["has_anon"], true);
    assert_eq!(body["has_service"], true);
    assert_eq!(body["no_master"], Value::Null);

    // Redeploy: the next invocations run the new version.
    let v2 = "Deno.serve(() => Response.json({ version: 2 }, { status: 200 }));";
    let deployed = stack.deploy(&t, "hello", "", v2).await;
    assert_eq!(deployed["version"], 2);
    let (_, body) = eventually(&stack, &t, "hello", |s, b| s == 200 && b["version"] == 2).await;
    assert_eq!(body, json!({"version": 2}));

    // verify_jwt: on (default) needs a valid bearer JWT; off runs without.
    let resp = http()
        .post(stack.fn_url(&t, "hello"))
        .header("apikey", &t.anon_key)
        .send()
        .await
        .expect("no bearer");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "missing_authorization");
    assert!(body["request_id"].is_string());
    let resp = http()
        .post(stack.fn_url(&t, "hello"))
        .header("apikey", &t.anon_key)
        .bearer_auth(t.user_token("user-1"))
        .send()
        .await
        .expect("user jwt");
    assert_eq!(resp.status(), 200);
    stack
        .deploy(
            &t,
            "open",
            "?verify_jwt=false",
            "Deno.serve((req) => new Response(req.headers.get('authorization') ?? 'none'));",
        )
        .await;
    let resp = http()
        .post(stack.fn_url(&t, "open"))
        .header("apikey", &t.anon_key)
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("text"), "none");
    // Without any key at all (as on Supabase: the gateway does not check
    // keys for functions; verify_jwt is the function's own choice).
    let resp = http()
        .post(stack.fn_url(&t, "open"))
        .send()
        .await
        .expect("open, no key");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("text"), "none");
    let resp = http()
        .post(stack.fn_url(&t, "hello"))
        .send()
        .await
        .expect("verify_jwt, no key");
    assert_eq!(resp.status(), 401);

    // A function reading its tenant's /rest/v1 through the proxy with fetch
    // and the service key.
    t.sql(
        &http(),
        &stack.control_url(),
        "create table todos (id serial primary key, task text not null); \
         insert into todos (task) values ('write tests'), ('ship')",
    )
    .await;
    stack.deploy(&t, "rest", "", REST).await;
    let (status, body, _) = stack.call(&t, "rest", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([{"task": "write tests"}, {"task": "ship"}]));

    // Delete: 404 function_not_found (after the code cache's lifetime).
    let resp = http()
        .delete(format!(
            "{}/v1/tenants/{}/functions/hello",
            stack.control_url(),
            t.id
        ))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let (_, body) = eventually(&stack, &t, "hello", |s, _| s == 404).await;
    assert_eq!(body["code"], "function_not_found");
    let (status, body, _) = stack.call(&t, "never-deployed", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "function_not_found");

    // Metrics: invocations by outcome, cold starts, workers.
    let metrics = stack.metrics().await;
    for needle in [
        format!(
            "madbase_function_invocations_total{{tenant=\"{}\",function=\"hello\",outcome=\"ok\"}}",
            t.id
        ),
        format!(
            "madbase_function_invocations_total{{tenant=\"{}\",function=\"unknown\",outcome=\"not_found\"}}",
            t.id
        ),
        format!(
            "madbase_function_cold_starts_total{{tenant=\"{}\",function=\"hello\"}}",
            t.id
        ),
        "madbase_function_duration_seconds_bucket".to_owned(),
        "madbase_function_workers_busy".to_owned(),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
    assert!(!metrics.contains("never-deployed"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn function_limits_crashes_and_isolation() {
    let stack = Stack::start(&[
        ("MADBASE_FUNCTIONS_CPU_MS", "1500"),
        ("MADBASE_FUNCTIONS_MEMORY_MB", "32"),
        ("MADBASE_FUNCTIONS_WALL_SECONDS", "3"),
        ("MADBASE_FUNCTIONS_TENANT_CONCURRENCY", "1"),
        ("MADBASE_FUNCTIONS_MAX_REQUEST_BYTES", "4096"),
        ("MADBASE_FUNCTIONS_TEST_HOOKS", "1"),
    ]);
    let a = stack.tenant("fnlima").await;
    let b = stack.tenant("fnlimb").await;
    stack
        .deploy(&a, "spin", "", "Deno.serve(() => { while (true) {} });")
        .await;
    stack
        .deploy(
            &a,
            "bomb",
            "",
            "Deno.serve(() => { const keep = []; while (true) { keep.push(new Array(100000).fill('x' + keep.length)); } });",
        )
        .await;
    stack
        .deploy(
            &a,
            "crash",
            "",
            "Deno.serve(() => { __madbaseTestCrash(); return new Response('unreachable'); });",
        )
        .await;
    stack
        .deploy(
            &a,
            "sleepy",
            "",
            "Deno.serve(async () => { await new Promise((r) => setTimeout(r, 60000)); return new Response('late'); });",
        )
        .await;
    stack
        .deploy(
            &b,
            "hello",
            "",
            "Deno.serve(() => Response.json({ b: true }));",
        )
        .await;
    // Warm tenant B's function.
    let (status, body, _) = stack.call(&b, "hello", json!({})).await;
    assert_eq!(status, 200, "{body}");

    // An infinite loop in A: 546 function_cpu_limit; meanwhile B answers,
    // and A's second concurrent invocation is refused (cap 1).
    let spin = {
        let url = stack.fn_url(&a, "spin");
        let key = a.anon_key.clone();
        tokio::spawn(async move {
            let resp = http()
                .post(url)
                .header("apikey", &key)
                .bearer_auth(&key)
                .send()
                .await
                .expect("spin");
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.expect("json");
            (status, body, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, body, took) = stack.call(&b, "hello", json!({})).await;
    let b_done = Instant::now();
    assert_eq!(status, 200, "{body}");
    // Printed, not asserted against 50 ms: a loaded 2-core machine running
    // debug builds is not a benchmark (cargo xtask bench is).
    eprintln!("tenant B answered in {took:?} while tenant A's function spun");
    let (status, body, _) = stack.call(&a, "spin", json!({})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "function_concurrency_limit");
    let (status, body, spin_done) = spin.await.expect("join");
    assert!(
        b_done < spin_done,
        "tenant B's function answered only after tenant A's loop was stopped"
    );
    assert_eq!(status, 546, "{body}");
    assert_eq!(body["code"], "function_cpu_limit");
    assert!(body["request_id"].is_string());

    // An allocation bomb: 500 function_memory_limit.
    let (status, body, _) = stack.call(&a, "bomb", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["code"], "function_memory_limit");

    // A request body over the limit: 413.
    let big = "x".repeat(8192);
    let (status, body, _) = stack.call(&b, "hello", json!({ "big": big })).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "function_request_too_large");

    // A worker crash: that request gets 500 function_crashed, the next ones
    // are served.
    let (status, body, _) = stack.call(&a, "crash", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["code"], "function_crashed");
    let rid = body["request_id"].as_str().expect("request id").to_owned();
    let line = stack.functions.wait_for_line(|v| {
        v["message"] == "a worker failed during an invocation" && v["request_id"] == rid.as_str()
    });
    assert_eq!(line["tenant"], a.id.as_str());
    assert_eq!(line["level"], "ERROR");
    for _ in 0..4 {
        let (status, body, _) = stack.call(&b, "hello", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }

    // Wall-clock limit: the worker is killed, 504; service goes on.
    let (status, body, took) = stack.call(&a, "sleepy", json!({})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "function_wall_limit");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (status, _, _) = stack.call(&b, "hello", json!({})).await;
    assert_eq!(status, 200);

    let metrics = stack.metrics().await;
    for needle in [
        "madbase_function_worker_restarts_total{reason=\"crashed\"} 1".to_owned(),
        "madbase_function_worker_restarts_total{reason=\"wall_limit\"} 1".to_owned(),
        format!(
            "madbase_function_invocations_total{{tenant=\"{}\",function=\"spin\",outcome=\"cpu_limit\"}} 1",
            a.id
        ),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dropped_a_runtime_is_sent_the_source_again() {
    // One worker holding one runtime: b evicts a, and the service (which
    // believes the worker still holds a) gets NeedSource and sends it.
    let stack = Stack::start(&[
        ("MADBASE_FUNCTIONS_WORKERS", "1"),
        ("MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER", "1"),
    ]);
    let t = stack.tenant("fnsrc").await;
    stack
        .deploy(&t, "a", "", "Deno.serve(() => Response.json({ f: 'a' }));")
        .await;
    stack
        .deploy(&t, "b", "", "Deno.serve(() => Response.json({ f: 'b' }));")
        .await;
    for (name, expected) in [("a", "a"), ("a", "a"), ("b", "b"), ("a", "a")] {
        let (status, body, _) = stack.call(&t, name, json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["f"], expected);
    }
    let metrics = stack.metrics().await;
    for needle in [
        format!(
            "madbase_function_cold_starts_total{{tenant=\"{}\",function=\"a\"}} 2",
            t.id
        ),
        format!(
            "madbase_function_invocations_total{{tenant=\"{}\",function=\"a\",outcome=\"ok\"}} 3",
            t.id
        ),
        "madbase_function_workers 1".to_owned(),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
}

/// A worker that dies while idle (nothing in flight) costs no invocation:
/// its closed pipe fails the write of the next one, which then runs on a
/// fresh worker (the service does not ask every worker whether it is alive
/// before each invocation).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_while_idle_costs_no_invocation() {
    let stack = Stack::start(&[("MADBASE_FUNCTIONS_WORKERS", "1")]);
    let t = stack.tenant("fnidle").await;
    stack
        .deploy(
            &t,
            "idle",
            "",
            "Deno.serve(() => Response.json({ pid: 1 }));",
        )
        .await;
    let (status, body, _) = stack.call(&t, "idle", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let service = stack.functions.pid();
    let workers = crate::stack::children_of(service);
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    let killed = workers[0];
    // SIGKILL, then wait until the process is gone (a zombie until reaped).
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{killed}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    }) {
        assert!(Instant::now() < deadline, "worker {killed} still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let (status, body, _) = stack.call(&t, "idle", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let now = crate::stack::children_of(service);
    assert!(!now.contains(&killed), "{now:?}");
    let metrics = stack.metrics().await;
    let needle = "madbase_function_worker_restarts_total{reason=\"exited\"} 1";
    assert!(metrics.contains(needle), "{needle} in\n{metrics}");
}

impl Stack {
    /// `PUT`/`GET`/`DELETE /v1/tenants/{id}/function-limits` (admin token):
    /// status and JSON body (`Null` for none).
    async fn limits(
        &self,
        tenant: &Tenant,
        method: reqwest::Method,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = http()
            .request(
                method,
                format!(
                    "{}/v1/tenants/{}/function-limits",
                    self.control_url(),
                    tenant.id
                ),
            )
            .bearer_auth(platform_token("admin"));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = req.send().await.expect("function limits");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Busy for 400 ms of CPU time, then answers which tenant it ran for.
const BUSY: &str = r#"
Deno.serve(() => {
  const start = Date.now();
  while (Date.now() - start < 400) {}
  return Response.json({ busy: "done", secret: Deno.env.get("FEED_SECRET") ?? null });
});
"#;

#[tokio::test(flavor = "multi_thread")]
async fn changes_and_tenant_limits_reach_the_functions_service_through_the_change_feed() {
    // An hour-long code cache: only control's change feed can make a
    // redeploy, a delete, a secret or a limit visible within the test.
    let stack = Stack::start(&[
        ("MADBASE_FUNCTIONS_CODE_CACHE_SECONDS", "3600"),
        ("MADBASE_FUNCTIONS_CPU_MS", "2000"),
    ]);
    let a = stack.tenant("fnfeeda").await;
    let b = stack.tenant("fnfeedb").await;
    stack
        .deploy(
            &a,
            "v",
            "",
            "Deno.serve(() => Response.json({ version: 1 }));",
        )
        .await;
    let (status, body, _) = stack.call(&a, "v", json!({})).await;
    assert_eq!((status, &body), (200, &json!({"version": 1})));

    // Redeploy and delete are seen although the cached entry is fresh.
    stack
        .deploy(
            &a,
            "v",
            "",
            "Deno.serve(() => Response.json({ version: 2 }));",
        )
        .await;
    eventually(&stack, &a, "v", |s, b| s == 200 && b["version"] == 2).await;
    let resp = http()
        .delete(format!(
            "{}/v1/tenants/{}/functions/v",
            stack.control_url(),
            a.id
        ))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let (_, body) = eventually(&stack, &a, "v", |s, _| s == 404).await;
    assert_eq!(body["code"], "function_not_found");

    // The default CPU limit (2 s) lets 400 ms of work through, in both tenants.
    for t in [&a, &b] {
        stack.deploy(t, "busy", "", BUSY).await;
        let (status, body, _) = stack.call(t, "busy", json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["secret"], Value::Null);
    }
    // A secret set after the code was cached is seen.
    let resp = http()
        .put(format!(
            "{}/v1/tenants/{}/secrets",
            stack.control_url(),
            a.id
        ))
        .bearer_auth(platform_token("admin"))
        .json(&json!({"FEED_SECRET": "s1"}))
        .send()
        .await
        .expect("secrets");
    assert_eq!(resp.status(), 200);
    eventually(&stack, &a, "busy", |s, b| s == 200 && b["secret"] == "s1").await;
    // Warm invocations with that env unchanged are sent none: still seen.
    for _ in 0..2 {
        let (status, body, _) = stack.call(&a, "busy", json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["secret"], "s1", "{body}");
    }

    // Tenant A's limits, through control's admin API. Bad input is a JSON error.
    for (body, code) in [
        (r#"{"cpu_ms": 0}"#, "invalid_function_limits"),
        (r#"{"max_concurrent": 100001}"#, "invalid_function_limits"),
        (r#"{"cpu_ms": 50, "memory": 5}"#, "invalid_json"),
        (r#"{"cpu_ms": "fast"}"#, "invalid_json"),
        ("not json", "invalid_json"),
    ] {
        let (status, answer) = stack.limits(&a, reqwest::Method::PUT, Some(body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    let (status, answer) = stack.limits(&a, reqwest::Method::GET, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"cpu_ms": null, "wall_seconds": null, "memory_mb": null, "max_concurrent": null})
    );
    let (status, answer) = stack
        .limits(
            &a,
            reqwest::Method::PUT,
            Some(r#"{"cpu_ms": 100, "wall_seconds": 30}"#),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cpu_ms"], 100);
    assert_eq!(answer["memory_mb"], Value::Null);
    let (status, answer) = stack.limits(&a, reqwest::Method::GET, None).await;
    assert_eq!((status, answer["cpu_ms"].clone()), (200, json!(100)));

    // A's invocation now stops at 100 ms of CPU: 546 function_cpu_limit,
    // where the default passed; B is unaffected.
    let (status, body) = eventually(&stack, &a, "busy", |s, _| s != 200).await;
    assert_eq!(status, 546, "{body}");
    assert_eq!(body["code"], "function_cpu_limit");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("100 ms")),
        "{body}"
    );
    let (status, body, _) = stack.call(&b, "busy", json!({})).await;
    assert_eq!(status, 200, "{body}");

    // A lower wall time: a function waiting 3 s is cut at 1 s with 504.
    stack
        .deploy(
            &a,
            "wait",
            "",
            "Deno.serve(async () => { await new Promise((r) => setTimeout(r, 3000)); return new Response('late'); });",
        )
        .await;
    let (status, _) = stack
        .limits(
            &a,
            reqwest::Method::PUT,
            Some(r#"{"cpu_ms": 100, "wall_seconds": 1}"#),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = eventually(&stack, &a, "wait", |s, _| s != 200).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "function_wall_limit");

    // Back to the defaults: A's work passes again.
    let (status, _) = stack.limits(&a, reqwest::Method::DELETE, None).await;
    assert_eq!(status, 204);
    eventually(&stack, &a, "busy", |s, _| s == 200).await;
    let ghost = Tenant {
        id: "fnfeed-no-such-tenant".to_owned(),
        ..a.clone()
    };
    let (status, answer) = stack.limits(&ghost, reqwest::Method::GET, None).await;
    assert_eq!(status, 404);
    assert_eq!(answer["code"], "tenant_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_function_answers_within_50_ms_while_runaway_functions_run() {
    // Three workers: tenant A's infinite loop and allocation bomb hold two
    // (each until its limit stops it), tenant B's function gets the third.
    let stack = Stack::start(&[
        ("MADBASE_FUNCTIONS_WORKERS", "3"),
        ("MADBASE_FUNCTIONS_CPU_MS", "3000"),
        ("MADBASE_FUNCTIONS_MEMORY_MB", "1024"),
    ]);
    let a = stack.tenant("fnrunaway").await;
    let b = stack.tenant("fnbystand").await;
    stack
        .deploy(&a, "spin", "", "Deno.serve(() => { while (true) {} });")
        .await;
    stack
        .deploy(
            &a,
            "bomb",
            "",
            "Deno.serve(() => { const keep = []; while (true) { keep.push(new Array(100000).fill(keep.length)); } });",
        )
        .await;
    stack
        .deploy(
            &b,
            "hello",
            "",
            "Deno.serve(() => Response.json({ b: true }));",
        )
        .await;
    for _ in 0..3 {
        let (status, body, _) = stack.call(&b, "hello", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }

    let runaway = |name: &'static str| {
        let url = stack.fn_url(&a, name);
        let key = a.anon_key.clone();
        tokio::spawn(async move {
            let resp = http()
                .post(url)
                .header("apikey", &key)
                .bearer_auth(&key)
                .send()
                .await
                .expect("runaway");
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.expect("json");
            (status, body, Instant::now())
        })
    };
    let spin = runaway("spin");
    let bomb = runaway("bomb");
    // Both are running once the workers are busy with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stack
        .metrics()
        .await
        .contains("madbase_function_workers_busy 2")
    {
        assert!(Instant::now() < deadline, "the runaways never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut took = Vec::new();
    for _ in 0..7 {
        let (status, body, t) = stack.call(&b, "hello", json!({})).await;
        assert_eq!(status, 200, "{body}");
        took.push(t);
    }
    let b_done = Instant::now();
    let (spin_status, spin_body, spin_done) = spin.await.expect("join");
    let (bomb_status, bomb_body, bomb_done) = bomb.await.expect("join");
    assert!(
        b_done < spin_done,
        "tenant B's calls ended only after tenant A's loop was stopped"
    );
    assert_eq!(spin_status, 546, "{spin_body}");
    assert_eq!(spin_body["code"], "function_cpu_limit");
    assert_eq!(bomb_status, 500, "{bomb_body}");
    assert_eq!(bomb_body["code"], "function_memory_limit");
    took.sort();
    eprintln!(
        "tenant B while A's runaways ran: {took:?} (bomb ended after B: {})",
        b_done < bomb_done
    );
    assert!(
        took[took.len() / 2] <= Duration::from_millis(50),
        "tenant B's median answer took {:?} while tenant A's runaways ran: {took:?}",
        took[took.len() / 2]
    );
}

/// Revocation reaches the functions service too (issue 20): a function with
/// `verify_jwt` on refuses a rotated key, and a deleted tenant's function
/// stops answering, within 1 s of control's answer, while it is called.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_and_a_deleted_tenant_are_refused_by_functions_within_a_second() {
    let stack = Stack::start(&[]);
    let a = stack.tenant("fnrev").await;
    stack
        .deploy(
            &a,
            "hello",
            "",
            "Deno.serve(() => Response.json({ ok: true }));",
        )
        .await;
    let call = |key: String| {
        let url = stack.fn_url(&a, "hello");
        async move {
            let resp = http()
                .post(url)
                .header("apikey", &key)
                .bearer_auth(&key)
                .json(&json!({}))
                .send()
                .await
                .expect("invoke");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    // Warm: the key is verified and cached by the functions service.
    let (status, body) = eventually(&stack, &a, "hello", |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..20 {
        assert_eq!(call(a.anon_key.clone()).await.0, 200);
    }

    let fresh = rotate_keys(&http(), &stack.control_url(), &a.id).await;
    let t0 = Instant::now();
    loop {
        let (old, old_body) = call(a.anon_key.clone()).await;
        let (new, _) = call(fresh.clone()).await;
        if old == 401 && new == 200 {
            assert_eq!(old_body["code"], "invalid_jwt", "{old_body}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the rotated key still answers {old} (the new one {new}) after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rotation = t0.elapsed();

    let resp = http()
        .delete(format!("{}/v1/tenants/{}", stack.control_url(), a.id))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("delete");
    assert!(resp.status().is_success(), "{}", resp.status());
    let t0 = Instant::now();
    let (status, body) = loop {
        let (status, body) = call(fresh.clone()).await;
        if status != 200 {
            break (status, body);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the deleted tenant's function still answers after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let deletion = t0.elapsed();
    assert!(matches!(status, 401 | 404), "{status} {body}");
    assert!(body["code"].is_string(), "{body}");
    eprintln!(
        "functions: rotated key refused after {rotation:?}, deleted tenant refused after {deletion:?} ({status} {})",
        body["code"]
    );
}
