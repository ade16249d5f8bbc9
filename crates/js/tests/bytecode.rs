//! Modules compiled by the host (`worker::compile`) and sent as bytecode in
//! front of the request body: they run like their source; bytecode another
//! build wrote is refused with NeedSource (the host then sends the source).

mod common;

use common::*;
use madbase_js::protocol::Outcome;
use madbase_js::worker::compile;

const ECHO: &str = r#"const greeting = "compiled";
Deno.serve(async (req) => new Response(`${greeting} ${req.method} ${await req.text()}`));
"#;

fn with_bytecode(
    version: i64,
    compiled: &[u8],
    request: &[u8],
) -> (madbase_js::protocol::Invoke, Vec<u8>) {
    let mut inv = invoke(key("t1", "echo", version), None);
    inv.method = "POST".to_owned();
    inv.bytecode_len = Some(u32::try_from(compiled.len()).expect("small"));
    let mut body = compiled.to_vec();
    body.extend_from_slice(request);
    (inv, body)
}

#[test]
fn a_compiled_module_runs_cold_then_warm() {
    let compiled = compile("echo", ECHO).expect("compiles");
    let mut w = worker();
    let (inv, body) = with_bytecode(1, &compiled, b"payload");
    let (reply, out) = run_with(&mut w, inv, body);
    assert!(reply.cold);
    assert_eq!(ok(&reply, &out), (200, "compiled POST payload".to_owned()));
    // Warm: no bytecode, the runtime is cached.
    let mut inv = invoke(key("t1", "echo", 1), None);
    inv.method = "POST".to_owned();
    let (reply, out) = run_with(&mut w, inv, b"again".to_vec());
    assert!(!reply.cold);
    assert_eq!(ok(&reply, &out), (200, "compiled POST again".to_owned()));
}

#[test]
fn a_redeployed_version_runs_its_own_bytecode() {
    let mut w = worker();
    let v1 = compile("echo", "Deno.serve(() => new Response('one'));").expect("v1");
    let v2 = compile("echo", "Deno.serve(() => new Response('two'));").expect("v2");
    let (inv, body) = with_bytecode(1, &v1, b"");
    let (reply, out) = run_with(&mut w, inv, body);
    assert_eq!(ok(&reply, &out), (200, "one".to_owned()));
    let (inv, body) = with_bytecode(2, &v2, b"");
    let (reply, out) = run_with(&mut w, inv, body);
    assert!(reply.cold);
    assert_eq!(ok(&reply, &out), (200, "two".to_owned()));
}

#[test]
fn bytecode_of_another_build_is_refused_for_the_source() {
    let mut compiled = compile("echo", ECHO).expect("compiles");
    // Another QuickJS or madbase build has another tag.
    compiled[0] ^= 0xff;
    let mut w = worker();
    let (inv, body) = with_bytecode(1, &compiled, b"payload");
    let (reply, _) = run_with(&mut w, inv, body);
    assert_eq!(reply.outcome, Outcome::NeedSource);
    assert!(!w.holds(&key("t1", "echo", 1)));
    // The host's fallback: the same invocation with the source.
    let mut inv = invoke(key("t1", "echo", 1), Some(ECHO));
    inv.method = "POST".to_owned();
    let (reply, out) = run_with(&mut w, inv, b"payload".to_vec());
    assert!(reply.cold);
    assert_eq!(ok(&reply, &out), (200, "compiled POST payload".to_owned()));
}

#[test]
fn a_module_that_does_not_compile_is_an_error_not_bytecode() {
    let err = compile("broken", "const a = (;").expect_err("syntax error");
    assert!(!err.is_empty());
}

#[test]
fn a_bytecode_length_beyond_the_body_is_an_error() {
    let mut inv = invoke(key("t1", "echo", 1), None);
    inv.bytecode_len = Some(100);
    let mut w = worker();
    let (reply, _) = run_with(&mut w, inv, vec![0; 10]);
    assert!(matches!(reply.outcome, Outcome::Error { .. }), "{reply:?}");
}
