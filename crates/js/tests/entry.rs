//! Entry points, the request the handler sees, the response it returns,
//! the NeedSource / cold / warm flow and the runtime cache.

mod common;

use common::*;
use madbase_js::protocol::{FunctionError, Outcome};
use madbase_js::worker::{Worker, WorkerConfig};

#[test]
fn deno_serve_answers_with_status_and_headers() {
    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        r#"Deno.serve(async (req) => new Response("hello", { status: 201, headers: { "X-Custom": "yes" } }));"#,
    );
    assert_eq!(ok(&reply, &body), (201, "hello".to_owned()));
    assert_eq!(header(&reply, "x-custom"), Some("yes"));
    assert_eq!(
        header(&reply, "content-type"),
        Some("text/plain;charset=UTF-8")
    );
    assert!(reply.cold);
    assert_eq!(reply.id, 1);
}

#[test]
fn deno_serve_with_options_first() {
    let out = eval_text(r#"Deno.serve({ port: 8000 }, () => new Response("opts"));"#);
    assert_eq!(out, "opts");
    let out = eval_text(r#"Deno.serve({ handler: () => new Response("in options") });"#);
    assert_eq!(out, "in options");
}

#[test]
fn export_default_fetch_is_called_with_this() {
    let out = eval_text(
        "export default { greeting: 'hi', async fetch(req) { return new Response(this.greeting + ' ' + req.method); } };",
    );
    assert_eq!(out, "hi GET");
}

#[test]
fn null_body_and_response_json() {
    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        "Deno.serve(() => new Response(null, { status: 204 }));",
    );
    assert_eq!(ok(&reply, &body), (204, String::new()));

    let (reply, body) = run(
        &mut w,
        "Deno.serve(() => Response.json({ a: [1, 2], b: 'x' }, { status: 202, headers: { 'x-a': '1' } }));",
    );
    // A new key is not needed: the cached runtime of t1/f/1 answers.
    assert!(!reply.cold);
    assert_eq!(ok(&reply, &body).0, 204);

    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        "Deno.serve(() => Response.json({ a: [1, 2], b: 'x' }, { status: 202, headers: { 'x-a': '1' } }));",
    );
    assert_eq!(
        ok(&reply, &body),
        (202, r#"{"a":[1,2],"b":"x"}"#.to_owned())
    );
    assert_eq!(header(&reply, "content-type"), Some("application/json"));
    assert_eq!(header(&reply, "x-a"), Some("1"));
}

#[test]
fn the_request_carries_method_url_headers_and_body() {
    let mut w = worker();
    let mut inv = invoke(
        key("t1", "echo", 1),
        Some(
            r#"Deno.serve(async (req) => {
                const body = await req.json();
                return Response.json({
                    method: req.method,
                    url: req.url,
                    path: new URL(req.url).pathname,
                    q: new URL(req.url).searchParams.get("q"),
                    ct: req.headers.get("Content-Type"),
                    auth: req.headers.get("authorization"),
                    name: body.name,
                });
            });"#,
        ),
    );
    inv.method = "POST".to_owned();
    inv.url = "http://localhost:8000/functions/v1/echo/sub?q=1".to_owned();
    inv.headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("Authorization".to_owned(), "Bearer abc".to_owned()),
    ]
    .into_iter()
    .collect();
    let (reply, body) = run_with(&mut w, inv, br#"{"name":"Functions"}"#.to_vec());
    let (status, text) = ok(&reply, &body);
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["url"], "http://localhost:8000/functions/v1/echo/sub?q=1");
    assert_eq!(v["path"], "/functions/v1/echo/sub");
    assert_eq!(v["q"], "1");
    assert_eq!(v["ct"], "application/json");
    assert_eq!(v["auth"], "Bearer abc");
    assert_eq!(v["name"], "Functions");
}

#[test]
fn request_text_and_binary_bodies() {
    let mut w = worker();
    let mut inv = invoke(
        key("t1", "bin", 1),
        Some(
            r#"Deno.serve(async (req) => {
                const bytes = new Uint8Array(await req.arrayBuffer());
                const out = new Uint8Array(bytes.length);
                for (let i = 0; i < bytes.length; i++) out[i] = 255 - bytes[i];
                return new Response(out, { headers: { "content-type": "application/octet-stream" } });
            });"#,
        ),
    );
    inv.method = "PUT".to_owned();
    let input: Vec<u8> = (0..=255u8).collect();
    let (reply, body) = run_with(&mut w, inv, input.clone());
    assert!(matches!(
        reply.outcome,
        Outcome::Response { status: 200, .. }
    ));
    let expected: Vec<u8> = input.iter().map(|b| 255 - b).collect();
    assert_eq!(body, expected);

    let mut inv = invoke(
        key("t1", "txt", 1),
        Some("Deno.serve(async (req) => new Response((await req.text()).toUpperCase() + ' ✓'));"),
    );
    inv.method = "POST".to_owned();
    let (reply, body) = run_with(&mut w, inv, "grüße".as_bytes().to_vec());
    assert_eq!(ok(&reply, &body), (200, "GRÜSSE ✓".to_owned()));
}

#[test]
fn need_source_then_cold_then_warm() {
    let mut w = worker();
    let k = key("t1", "counter", 3);
    let src = "let n = 0; Deno.serve(() => new Response(String(++n)));";
    let (reply, body) = run_with(&mut w, invoke(k.clone(), None), Vec::new());
    assert_eq!(reply.outcome, Outcome::NeedSource);
    assert!(body.is_empty());
    assert!(!w.holds(&k));

    let (reply, body) = run_with(&mut w, invoke(k.clone(), Some(src)), Vec::new());
    assert_eq!(ok(&reply, &body), (200, "1".to_owned()));
    assert!(reply.cold);
    assert!(w.holds(&k));

    // Warm: no source needed, module state kept, cold = false.
    let (reply, body) = run_with(&mut w, invoke(k.clone(), None), Vec::new());
    assert_eq!(ok(&reply, &body), (200, "2".to_owned()));
    assert!(!reply.cold);
    let (reply, body) = run_with(&mut w, invoke(k, Some(src)), Vec::new());
    assert_eq!(ok(&reply, &body), (200, "3".to_owned()));
    assert!(!reply.cold);
    assert!(reply.cpu_us < 2_000_000);
}

#[test]
fn keys_never_share_globals() {
    let mut w = worker();
    let src = r#"Deno.serve((req) => {
        const set = new URL(req.url).searchParams.get("set");
        if (set) globalThis.secret = set;
        return new Response(String(globalThis.secret));
    });"#;
    let call = |w: &mut Worker, tenant: &str, version: i64, url: &str| {
        let mut inv = invoke(key(tenant, "f", version), Some(src));
        inv.url = url.to_owned();
        let (reply, body) = run_with(w, inv, Vec::new());
        ok(&reply, &body).1
    };
    assert_eq!(call(&mut w, "a", 1, "http://x/f?set=A"), "A");
    assert_eq!(call(&mut w, "a", 1, "http://x/f"), "A");
    // Another tenant, same function name and version: its own runtime.
    assert_eq!(call(&mut w, "b", 1, "http://x/f"), "undefined");
    // Same tenant, another version: its own runtime too.
    assert_eq!(call(&mut w, "a", 2, "http://x/f"), "undefined");
    // Builtins are per runtime as well.
    let poison = "Array.prototype.push = () => 'poisoned'; Deno.serve(() => new Response('p'));";
    assert_eq!(text(&mut w, poison), "p");
    let clean =
        "Deno.serve(() => { const a = []; a.push(1); return new Response(String(a.length)); });";
    let (reply, body) = run_with(&mut w, invoke(key("c", "f", 1), Some(clean)), Vec::new());
    assert_eq!(ok(&reply, &body).1, "1");
}

#[test]
fn the_cache_is_lru_bounded() {
    let mut w = Worker::new(WorkerConfig {
        max_runtimes: 2,
        ..WorkerConfig::default()
    });
    let src = "Deno.serve(() => new Response('x'));";
    for (i, f) in ["a", "b", "a", "c"].iter().enumerate() {
        let (reply, _) = run_with(&mut w, invoke(key("t", f, 1), Some(src)), Vec::new());
        assert!(matches!(reply.outcome, Outcome::Response { .. }), "{i}");
    }
    assert_eq!(w.runtimes(), 2);
    // "b" was the least recently used.
    assert!(w.holds(&key("t", "a", 1)));
    assert!(!w.holds(&key("t", "b", 1)));
    assert!(w.holds(&key("t", "c", 1)));
}

#[test]
fn idle_runtimes_are_dropped() {
    let mut w = Worker::new(WorkerConfig {
        idle: std::time::Duration::ZERO,
        ..WorkerConfig::default()
    });
    let (reply, _) = run(&mut w, "Deno.serve(() => new Response('x'));");
    assert!(reply.cold);
    std::thread::sleep(std::time::Duration::from_millis(5));
    w.evict_idle();
    assert_eq!(w.runtimes(), 0);
}

#[test]
fn no_handler_bad_response_and_exceptions() {
    let mut w = worker();
    let (reply, _) = run(&mut w, "const x = 1;");
    assert_eq!(failed(&reply).0, FunctionError::NoHandler);

    let mut w = worker();
    let (reply, _) = run(&mut w, "Deno.serve(() => ({ status: 200 }));");
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::BadResponse);
    assert!(message.contains("not a Response"), "{message}");

    let mut w = worker();
    let (reply, _) = run(
        &mut w,
        "Deno.serve(async () => { await null; throw new TypeError('boom here'); });",
    );
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::Exception);
    assert!(message.starts_with("TypeError: boom here"), "{message}");

    // A throw at the module's top level.
    let mut w = worker();
    let (reply, _) = run(&mut w, "throw new Error('top level');");
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::Exception);
    assert!(message.contains("top level"), "{message}");

    // A promise that never settles is an error, not a hang.
    let mut w = worker();
    let (reply, _) = run(&mut w, "Deno.serve(() => new Promise(() => {}));");
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::Exception);
    assert!(message.contains("never settled"), "{message}");

    // The runtime survives an exception in one invocation.
    let mut w = worker();
    let src = "let n = 0; Deno.serve(() => { if (++n === 1) throw new Error('first'); return new Response('second'); });";
    let (reply, _) = run(&mut w, src);
    assert_eq!(failed(&reply).0, FunctionError::Exception);
    let (reply, body) = run(&mut w, src);
    assert_eq!(ok(&reply, &body), (200, "second".to_owned()));
}

#[test]
fn deno_env_is_the_invocations_env() {
    let mut w = worker();
    let mut inv = invoke(
        key("t1", "env", 1),
        Some(
            r#"const atLoad = Deno.env.get("SECRET");
               Deno.serve(() => Response.json({ atLoad, now: Deno.env.get("SECRET"), missing: Deno.env.get("NOPE") ?? null, all: Deno.env.toObject() }));"#,
        ),
    );
    inv.env = Some(vec![
        ("SECRET".to_owned(), "s1".to_owned()),
        ("SUPABASE_URL".to_owned(), "http://t1.localhost".to_owned()),
    ]);
    let (reply, body) = run_with(&mut w, inv.clone(), Vec::new());
    let v: serde_json::Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["atLoad"], "s1");
    assert_eq!(v["now"], "s1");
    assert_eq!(v["missing"], serde_json::Value::Null);
    assert_eq!(v["all"]["SUPABASE_URL"], "http://t1.localhost");
    // A changed secret is seen by the next (warm) invocation.
    inv.env = Some(vec![("SECRET".to_owned(), "s2".to_owned())]);
    let (reply, body) = run_with(&mut w, inv.clone(), Vec::new());
    let v: serde_json::Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["now"], "s2");
    assert_eq!(v["all"]["SUPABASE_URL"], serde_json::Value::Null);
    // No env sent: the runtime keeps what the last invocation saw.
    inv.env = None;
    let (reply, body) = run_with(&mut w, inv.clone(), Vec::new());
    let v: serde_json::Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["now"], "s2");
    // Another key never sees it: a cold start without an env has none.
    let mut other = invoke(
        key("t2", "env", 1),
        Some(r#"Deno.serve(() => Response.json({ now: Deno.env.get("SECRET") ?? null }));"#),
    );
    other.env = None;
    let (reply, body) = run_with(&mut w, other, Vec::new());
    let v: serde_json::Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["now"], serde_json::Value::Null);
}

#[test]
fn console_is_captured_with_levels() {
    let mut w = worker();
    let (reply, _) = run(
        &mut w,
        r#"Deno.serve(() => {
            console.log("hello", 1, { a: [1, "x"] });
            console.info("i"); console.warn("w"); console.error(new Error("e")); console.debug("d %s=%d", "n", 5);
            return new Response("ok");
        });"#,
    );
    let lines: Vec<(String, String)> = reply
        .logs
        .iter()
        .map(|l| (l.level.clone(), l.message.clone()))
        .collect();
    assert_eq!(
        lines[0],
        ("info".to_owned(), r#"hello 1 { a: [ 1, "x" ] }"#.to_owned())
    );
    assert_eq!(lines[1], ("info".to_owned(), "i".to_owned()));
    assert_eq!(lines[2], ("warn".to_owned(), "w".to_owned()));
    assert_eq!(lines[3].0, "error");
    assert!(lines[3].1.starts_with("Error: e"), "{:?}", lines[3]);
    assert_eq!(lines[4], ("debug".to_owned(), "d n=5".to_owned()));
    // Logs are per invocation.
    let (reply, _) = run(&mut w, "");
    assert_eq!(reply.logs.len(), 5);
}

#[test]
fn response_too_large() {
    let mut w = worker();
    let mut inv = invoke(
        key("t1", "big", 1),
        Some("Deno.serve(() => new Response('x'.repeat(2000)));"),
    );
    inv.limits.max_response_bytes = 1000;
    let (reply, body) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::ResponseTooLarge);
    assert!(body.is_empty());
}

#[test]
fn a_prepared_spare_runtime_serves_a_cold_start_with_the_invocations_limits() {
    let mut w = worker();
    w.prepare();
    let (reply, body) = run(
        &mut w,
        "globalThis.mark = 'a'; Deno.serve(() => new Response(String(globalThis.mark)));",
    );
    assert!(reply.cold);
    assert_eq!(ok(&reply, &body), (200, "a".to_owned()));
    // The next spare is fresh: nothing of key a's runtime in it.
    w.prepare();
    let (reply, body) = run_with(
        &mut w,
        invoke(
            key("t2", "f", 1),
            Some("Deno.serve(() => new Response(typeof globalThis.mark));"),
        ),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (200, "undefined".to_owned()));
    // The spare was made without limits; the invocation's apply.
    w.prepare();
    let mut inv = invoke(
        key("t3", "spin", 1),
        Some("Deno.serve(() => { for (;;) {} });"),
    );
    inv.limits.cpu_ms = 50;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::CpuLimit);
    w.prepare();
    let mut inv = invoke(
        key("t4", "bomb", 1),
        Some("Deno.serve(() => { const a = []; for (;;) a.push(new Array(100000).fill(1)); });"),
    );
    inv.limits.memory_bytes = 16 * 1024 * 1024;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::MemoryLimit);
}

#[test]
fn repeated_response_headers_stay_separate() {
    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        r#"Deno.serve(() => {
            const h = new Headers();
            h.append("Set-Cookie", "a=1; Path=/");
            h.append("Set-Cookie", "b=2; Path=/");
            h.append("Vary", "Origin");
            return new Response("ok", { headers: h });
        });"#,
    );
    assert_eq!(ok(&reply, &body).0, 200);
    let Outcome::Response { headers, .. } = &reply.outcome else {
        panic!("not a response");
    };
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(header(&reply, "vary"), Some("Origin"));
}

#[test]
fn unhandled_rejections_are_logged_handled_ones_are_not() {
    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        r#"Deno.serve(async () => {
            Promise.reject(new RangeError("lost"));
            const later = Promise.reject(new Error("handled later"));
            await null;
            later.catch(() => {});
            async function fails() { throw new TypeError("awaited"); }
            try { await fails(); } catch {}
            return new Response("ok");
        });"#,
    );
    assert_eq!(ok(&reply, &body), (200, "ok".to_owned()));
    let errors: Vec<&str> = reply
        .logs
        .iter()
        .filter(|l| l.level == "error")
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("Uncaught (in promise) RangeError: lost"),
        "{errors:?}"
    );
}

#[test]
fn an_incoming_multipart_upload_is_parsed() {
    let mut w = worker();
    let mut inv = invoke(
        key("t1", "upload", 1),
        Some(
            r#"Deno.serve(async (req) => {
                const form = await req.formData();
                const file = form.get("file");
                return Response.json({ title: form.get("title"), name: file.name, type: file.type, size: file.size, text: await file.text() });
            });"#,
        ),
    );
    inv.method = "POST".to_owned();
    inv.headers = vec![(
        "content-type".to_owned(),
        "multipart/form-data; boundary=XyZ".to_owned(),
    )]
    .into_iter()
    .collect();
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nMy file\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\nline 1\r\nline 2\r\n--XyZ--\r\n";
    let (reply, out) = run_with(&mut w, inv, body.as_bytes().to_vec());
    let v: serde_json::Value = serde_json::from_str(&ok(&reply, &out).1).expect("json");
    assert_eq!(v["title"], "My file");
    assert_eq!(v["name"], "notes.txt");
    assert_eq!(v["type"], "text/plain");
    assert_eq!(v["size"], 14);
    assert_eq!(v["text"], "line 1\r\nline 2");
}

#[test]
fn wait_until_work_finishes_before_the_reply() {
    let mut w = worker();
    let src = r#"
        let done = 0;
        Deno.serve(() => {
            EdgeRuntime.waitUntil(new Promise((r) => setTimeout(() => { done++; console.log("background"); r(); }, 20)));
            EdgeRuntime.waitUntil(Promise.reject(new Error("bg failed")));
            return new Response(String(done));
        });
    "#;
    let (reply, body) = run(&mut w, src);
    assert_eq!(ok(&reply, &body), (200, "0".to_owned()));
    let messages: Vec<&str> = reply.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(messages.contains(&"background"), "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Uncaught (in waitUntil) Error: bg failed")),
        "{messages:?}"
    );
    let (reply, body) = run(&mut w, src);
    assert_eq!(ok(&reply, &body), (200, "1".to_owned()));
}
