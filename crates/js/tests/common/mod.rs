//! Helpers shared by the worker tests: invocations with defaults.
#![allow(dead_code)]

use madbase_js::protocol::{FunctionError, FunctionKey, Invoke, Limits, Outcome, Reply};
use madbase_js::worker::{Worker, WorkerConfig};

pub fn limits() -> Limits {
    Limits {
        cpu_ms: 2000,
        memory_bytes: 64 * 1024 * 1024,
        max_response_bytes: 8 * 1024 * 1024,
        max_fetches: 10,
        max_fetch_bytes: 1024 * 1024,
    }
}

pub fn key(tenant: &str, function: &str, version: i64) -> FunctionKey {
    FunctionKey {
        tenant: tenant.to_owned(),
        function: function.to_owned(),
        version,
    }
}

pub fn invoke(key: FunctionKey, source: Option<&str>) -> Invoke {
    Invoke {
        id: 1,
        key,
        source: source.map(str::to_owned),
        bytecode_len: None,
        env: Some(Vec::new()),
        request_id: "req-1".to_owned(),
        method: "GET".to_owned(),
        url: "http://localhost:8000/functions/v1/hello".to_owned(),
        headers: Default::default(),
        limits: limits(),
        fetch_allow: Vec::new(),
    }
}

pub fn worker() -> Worker {
    Worker::new(WorkerConfig::default())
}

/// The reply of running `source` once (a cold start) on a GET.
pub fn run(worker: &mut Worker, source: &str) -> (Reply, Vec<u8>) {
    run_with(worker, invoke(key("t1", "f", 1), Some(source)), Vec::new())
}

pub fn run_with(worker: &mut Worker, invoke: Invoke, body: Vec<u8>) -> (Reply, Vec<u8>) {
    let (reply, body) = worker.handle(invoke, body);
    for line in &reply.logs {
        eprintln!("[{}] {}", line.level, line.message);
    }
    (reply, body)
}

/// The status and the body as text, panicking (with the reply) otherwise.
pub fn ok(reply: &Reply, body: &[u8]) -> (u16, String) {
    match &reply.outcome {
        Outcome::Response { status, .. } => (*status, String::from_utf8_lossy(body).into_owned()),
        other => panic!("not a response: {other:?}"),
    }
}

/// The body of a 200 response, as text.
pub fn text(worker: &mut Worker, source: &str) -> String {
    let (reply, body) = run(worker, source);
    let (status, text) = ok(&reply, &body);
    assert_eq!(status, 200, "{text}");
    text
}

/// A fresh worker answering `source`, the body as text.
pub fn eval_text(source: &str) -> String {
    text(&mut worker(), source)
}

/// The error and message, panicking otherwise.
pub fn failed(reply: &Reply) -> (FunctionError, String) {
    match &reply.outcome {
        Outcome::Error { error, message } => (*error, message.clone()),
        other => panic!("not an error: {other:?}"),
    }
}

pub fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    match &reply.outcome {
        Outcome::Response { headers, .. } => headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}
