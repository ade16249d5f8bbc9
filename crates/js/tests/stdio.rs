//! The worker's frame loop: in-process over a byte buffer, and as a real
//! process over pipes (the NeedSource exchange, a clean exit at end of
//! input, and the test-only crash trigger).

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::*;
use madbase_js::protocol::{self, FromWorker, FunctionError, Invoke, Outcome, Reply, ToWorker};
use madbase_js::worker::{Worker, WorkerConfig, run_loop};

const HELLO: &str = "Deno.serve(async (req) => new Response('hi ' + (await req.text())));";

fn frame(inv: Invoke, body: &[u8]) -> Vec<u8> {
    protocol::encode(&ToWorker::Invoke(inv), body).expect("encode")
}

fn read_reply<R: Read>(r: &mut R) -> Option<(Reply, Vec<u8>)> {
    let (FromWorker::Reply(reply), body) =
        protocol::read_frame::<FromWorker, _>(r).expect("frame")?;
    Some((reply, body))
}

#[test]
fn run_loop_answers_each_frame_and_ends_at_eof() {
    let mut input = Vec::new();
    let mut first = invoke(key("t", "hello", 1), None);
    first.id = 10;
    input.extend(frame(first, b""));
    let mut second = invoke(key("t", "hello", 1), Some(HELLO));
    second.id = 11;
    input.extend(frame(second, b"there"));
    let mut third = invoke(key("t", "hello", 1), None);
    third.id = 12;
    input.extend(frame(third, b"again"));

    let mut worker = Worker::new(WorkerConfig::default());
    let mut output = Vec::new();
    run_loop(&mut worker, &mut input.as_slice(), &mut output).expect("loop");

    let mut out = output.as_slice();
    let (r, _) = read_reply(&mut out).expect("reply 10");
    assert_eq!((r.id, r.outcome), (10, Outcome::NeedSource));
    let (r, body) = read_reply(&mut out).expect("reply 11");
    assert_eq!(r.id, 11);
    assert!(r.cold);
    assert_eq!(body, b"hi there");
    let (r, body) = read_reply(&mut out).expect("reply 12");
    assert_eq!(r.id, 12);
    assert!(!r.cold);
    assert_eq!(body, b"hi again");
    assert!(read_reply(&mut out).is_none());
}

#[test]
fn a_malformed_frame_ends_the_loop_with_an_error() {
    let mut input = 1u32.to_be_bytes().to_vec();
    input.extend(0u32.to_be_bytes());
    input.push(b'{');
    let mut worker = Worker::new(WorkerConfig::default());
    let mut output = Vec::new();
    assert!(run_loop(&mut worker, &mut input.as_slice(), &mut output).is_err());
    assert!(output.is_empty());
}

fn spawn(test_hooks: bool) -> std::process::Child {
    spawn_with(test_hooks, &[])
}

fn spawn_with(test_hooks: bool, env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_madbase-js-test-worker"));
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_remove("MADBASE_FUNCTIONS_TEST_HOOKS");
    if test_hooks {
        cmd.env("MADBASE_FUNCTIONS_TEST_HOOKS", "1");
    }
    cmd.spawn().expect("spawn the worker")
}

#[test]
fn the_worker_process_speaks_frames_on_stdio() {
    let mut child = spawn(false);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");

    stdin
        .write_all(&frame(invoke(key("t", "hello", 1), None), b""))
        .expect("write");
    let (r, _) = read_reply(&mut stdout).expect("reply");
    assert_eq!(r.outcome, Outcome::NeedSource);

    stdin
        .write_all(&frame(
            invoke(key("t", "hello", 1), Some(HELLO)),
            b"process",
        ))
        .expect("write");
    let (r, body) = read_reply(&mut stdout).expect("reply");
    assert!(r.cold);
    assert_eq!(body, b"hi process");

    // Without MADBASE_FUNCTIONS_TEST_HOOKS the trigger does not exist.
    let crash = "Deno.serve(() => { __madbaseTestCrash(); return new Response('alive'); });";
    stdin
        .write_all(&frame(invoke(key("t", "crash", 1), Some(crash)), b""))
        .expect("write");
    let (r, _) = read_reply(&mut stdout).expect("reply");
    match r.outcome {
        Outcome::Error { error, message } => {
            assert_eq!(error, FunctionError::Exception);
            assert!(message.contains("__madbaseTestCrash"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_test_hook_aborts_the_process() {
    let mut child = spawn(true);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let crash = "Deno.serve(() => { __madbaseTestCrash(); return new Response('alive'); });";
    stdin
        .write_all(&frame(invoke(key("t", "crash", 1), Some(crash)), b""))
        .expect("write");
    // No reply: the process is gone.
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("read");
    assert!(rest.is_empty());
    let status = child.wait().expect("wait");
    assert!(!status.success());
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(6), "{status:?}"); // SIGABRT
    }
}

#[test]
fn the_test_hook_exists_only_when_enabled() {
    let src = "Deno.serve(() => new Response(typeof __madbaseTestCrash));";
    let mut with = Worker::new(WorkerConfig {
        test_hooks: true,
        ..WorkerConfig::default()
    });
    assert_eq!(text(&mut with, src), "function");
    assert_eq!(eval_text(src), "undefined");
}

#[test]
fn the_runtime_cap_comes_from_the_environment() {
    let mut child = spawn_with(false, &[("MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER", "1")]);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut call = |function: &str, source: Option<&str>| {
        stdin
            .write_all(&frame(invoke(key("t", function, 1), source), b""))
            .expect("write");
        read_reply(&mut stdout).expect("reply").0.outcome
    };
    assert!(matches!(call("a", Some(HELLO)), Outcome::Response { .. }));
    assert!(matches!(call("a", None), Outcome::Response { .. }));
    assert!(matches!(call("b", Some(HELLO)), Outcome::Response { .. }));
    // One runtime per worker: b's evicted a's.
    assert_eq!(call("a", None), Outcome::NeedSource);
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

/// The pool's exchange for a compiled module: the bytecode in front of the
/// request body; a worker that refuses it (another build's tag) asks for
/// the module and runs the source.
#[test]
fn run_loop_loads_a_compiled_module_from_the_frames_body() {
    let compiled = madbase_js::worker::compile("hello", HELLO).expect("compiles");
    let mut foreign = compiled.clone();
    foreign[1] ^= 0x55;
    let mut input = Vec::new();
    for (id, version, module) in [(20, 1, &compiled), (21, 2, &foreign)] {
        let mut inv = invoke(key("t", "hello", version), None);
        inv.id = id;
        inv.method = "POST".to_owned();
        inv.bytecode_len = Some(u32::try_from(module.len()).expect("small"));
        let mut body = module.clone();
        body.extend_from_slice(b"bytes");
        input.extend(frame(inv, &body));
    }
    let mut again = invoke(key("t", "hello", 2), Some(HELLO));
    again.id = 22;
    again.method = "POST".to_owned();
    input.extend(frame(again, b"source"));

    let mut worker = Worker::new(WorkerConfig::default());
    let mut output = Vec::new();
    run_loop(&mut worker, &mut input.as_slice(), &mut output).expect("loop");
    let mut out = output.as_slice();
    let (r, body) = read_reply(&mut out).expect("reply 20");
    assert_eq!(r.id, 20);
    assert!(r.cold, "{r:?}");
    assert_eq!(body, b"hi bytes");
    let (r, _) = read_reply(&mut out).expect("reply 21");
    assert_eq!((r.id, r.outcome), (21, Outcome::NeedSource));
    let (r, body) = read_reply(&mut out).expect("reply 22");
    assert_eq!(r.id, 22);
    assert!(r.cold);
    assert_eq!(body, b"hi source");
}
