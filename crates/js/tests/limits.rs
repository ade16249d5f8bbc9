//! CPU and memory limits: the invocation fails with the right error, the
//! runtime is discarded, and the worker serves the next invocation.

mod common;

use std::time::{Duration, Instant};

use common::*;
use madbase_js::protocol::{FunctionError, Outcome};

#[test]
fn an_infinite_loop_hits_the_cpu_limit_and_the_worker_recovers() {
    let mut w = worker();
    let k = key("a", "spin", 1);
    let mut inv = invoke(k.clone(), Some("Deno.serve(() => { for (;;) {} });"));
    inv.limits.cpu_ms = 100;
    let started = Instant::now();
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    let took = started.elapsed();
    assert_eq!(failed(&reply).0, FunctionError::CpuLimit);
    // Slack for a debug build on a loaded machine (2 shared cores).
    assert!(took < Duration::from_millis(100 + 900), "took {took:?}");
    assert!(reply.cpu_us >= 100_000, "cpu_us {}", reply.cpu_us);
    // The runtime that hit the limit is gone.
    assert!(!w.holds(&k));
    // Another function on the same worker answers at once.
    let started = Instant::now();
    let (reply, body) = run_with(
        &mut w,
        invoke(
            key("b", "hello", 1),
            Some("Deno.serve(() => new Response('fine'));"),
        ),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (200, "fine".to_owned()));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn a_loop_that_catches_cannot_escape_the_cpu_limit() {
    let mut w = worker();
    let mut inv = invoke(
        key("a", "sneaky", 1),
        Some(
            "Deno.serve(async () => { for (;;) { try { for (;;) {} } catch (e) { console.log('caught', e); } } });",
        ),
    );
    inv.limits.cpu_ms = 50;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::CpuLimit);
}

#[test]
fn cpu_is_counted_across_timers_and_at_the_top_level() {
    // The module's top level spins: the cold invocation hits the limit.
    let mut w = worker();
    let mut inv = invoke(
        key("a", "top", 1),
        Some(
            "const end = Date.now() + 10000; while (Date.now() < end) {} Deno.serve(() => new Response('x'));",
        ),
    );
    inv.limits.cpu_ms = 50;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::CpuLimit);

    // Spinning inside a timer callback counts too.
    let mut w = worker();
    let mut inv = invoke(
        key("a", "timer", 1),
        Some("Deno.serve(() => new Promise((resolve) => setTimeout(() => { for (;;) {} }, 1)));"),
    );
    inv.limits.cpu_ms = 50;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::CpuLimit);
}

#[test]
fn waiting_on_a_timer_is_not_cpu() {
    let mut w = worker();
    // The prelude is made ahead (it counts towards a cold start otherwise).
    w.prepare();
    let mut inv = invoke(
        key("a", "sleep", 1),
        Some(
            "Deno.serve(async () => { await new Promise((r) => setTimeout(r, 150)); return new Response('slept'); });",
        ),
    );
    // Under the 150 ms waited (which would exceed it if it counted), with
    // room for a debug build on a loaded machine (50 ms failed once there).
    inv.limits.cpu_ms = 120;
    let started = Instant::now();
    let (reply, body) = run_with(&mut w, inv, Vec::new());
    assert_eq!(ok(&reply, &body), (200, "slept".to_owned()));
    assert!(started.elapsed() >= Duration::from_millis(150));
    // 150 ms waited; only the JavaScript around the wait is CPU.
    assert!(reply.cpu_us < 100_000, "cpu_us {}", reply.cpu_us);
}

#[test]
fn an_allocation_bomb_hits_the_memory_limit_and_the_worker_recovers() {
    let mut w = worker();
    let k = key("a", "bomb", 1);
    let mut inv = invoke(
        k.clone(),
        Some("Deno.serve(() => { const a = []; for (;;) a.push(new Array(100000).fill(1)); });"),
    );
    inv.limits.memory_bytes = 32 * 1024 * 1024;
    inv.limits.cpu_ms = 10_000;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::MemoryLimit, "{message}");
    assert!(!w.holds(&k));
    let (reply, body) = run_with(
        &mut w,
        invoke(
            key("b", "hello", 1),
            Some("Deno.serve(() => new Response('fine'));"),
        ),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (200, "fine".to_owned()));
    // The same key gets a fresh runtime when the host sends the source again.
    let (reply, _) = run_with(&mut w, invoke(k, None), Vec::new());
    assert_eq!(reply.outcome, Outcome::NeedSource);
}

#[test]
fn a_string_bomb_hits_the_memory_limit() {
    let mut w = worker();
    let mut inv = invoke(
        key("a", "strings", 1),
        Some(
            "Deno.serve(() => { const a = []; for (let i = 0; ; i++) a.push('x'.repeat(10000) + i); });",
        ),
    );
    inv.limits.memory_bytes = 32 * 1024 * 1024;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::MemoryLimit, "{message}");
}

#[test]
fn deep_recursion_is_an_exception_not_a_crash() {
    let mut w = worker();
    let (reply, _) = run(
        &mut w,
        "function f(n) { return f(n + 1) + 1; } Deno.serve(() => new Response(String(f(0))));",
    );
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::Exception);
    assert!(
        message.contains("Maximum call stack size exceeded"),
        "{message}"
    );
}

#[test]
fn endless_microtasks_and_timer_chains_hit_the_cpu_limit() {
    for (name, src) in [
        ("micro", "Deno.serve(async () => { for (;;) await null; });"),
        (
            "chain",
            "Deno.serve(() => new Promise(() => { const tick = () => setTimeout(tick, 0); tick(); }));",
        ),
    ] {
        let mut w = worker();
        w.prepare();
        let mut inv = invoke(key("a", name, 1), Some(src));
        inv.limits.cpu_ms = 100;
        let started = Instant::now();
        let (reply, _) = run_with(&mut w, inv, Vec::new());
        let took = started.elapsed();
        assert_eq!(failed(&reply).0, FunctionError::CpuLimit, "{name}");
        assert!(
            took < Duration::from_millis(100 + 900),
            "{name} took {took:?}"
        );
    }
}

#[test]
fn a_memory_limit_too_small_for_the_prelude_is_a_memory_limit() {
    let mut w = worker();
    let mut inv = invoke(
        key("a", "tiny", 1),
        Some("Deno.serve(() => new Response('x'));"),
    );
    inv.limits.memory_bytes = 128 * 1024;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::MemoryLimit);
    // Through a spare runtime (made without a limit) as well.
    w.prepare();
    let mut inv = invoke(
        key("a", "tiny2", 1),
        Some("Deno.serve(() => new Response('x'));"),
    );
    inv.limits.memory_bytes = 128 * 1024;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::MemoryLimit);
    let (reply, body) = run_with(
        &mut w,
        invoke(
            key("b", "ok", 1),
            Some("Deno.serve(() => new Response('fine'));"),
        ),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (200, "fine".to_owned()));
}
