//! Times the stages of a cold invocation in one process (no pipes): the
//! module's parse, its evaluation, a cold and a warm invocation through
//! [`Worker::handle`], for a small function and a ~200 KiB bundle.
//! `cargo run --release -p madbase-js --example cold_profile`
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a measuring harness

use std::time::{Duration, Instant};

use madbase_js::protocol::{FunctionKey, Invoke, Limits};
use madbase_js::worker::{Worker, WorkerConfig};
use rquickjs::{Context, Module, Runtime};

const SMALL: &str = r#"Deno.serve(async (req) => {
  const { name } = await req.json();
  return new Response(JSON.stringify({ message: `Hello ${name}!` }), {
    headers: { "Content-Type": "application/json" },
  });
});
"#;

fn bundle(bytes: usize) -> String {
    let mut src = "// generated bundle\n\"use strict\";\n".to_owned();
    let mut i = 0;
    while src.len() + 12 * i + 600 < bytes {
        src.push_str(&format!(
            "const table_{i} = [{a}, {b}, 3, 4, 5, 6, 7, 8];\n\
             const messages_{i} = {{ ok: \"module {i} ok\", fail: \"module {i} failed\", retry: \"module {i} retry\" }};\n\
             function helper_{i}(x) {{\n  let s = 0;\n  for (const v of table_{i}) s += (v * x) % {m};\n  \
             return s > {i} ? messages_{i}.ok : messages_{i}.fail;\n}}\n\
             class Model_{i} {{\n  constructor(id) {{ this.id = id; this.kind = \"model_{i}\"; }}\n  \
             describe() {{ return `${{this.kind}}#${{this.id}}: ${{helper_{i}(this.id)}}`; }}\n}}\n",
            a = i * 7 % 101,
            b = i * 13 % 103,
            m = i % 97 + 3,
        ));
        i += 1;
    }
    src.push_str("const registry = [");
    for j in 0..i {
        src.push_str(&format!("Model_{j}, "));
    }
    src.push_str(
        "];\nDeno.serve(async (req) => Response.json({ models: registry.length, \
         first: new registry[7](3).describe() }));\n",
    );
    src
}

fn invoke(version: i64, source: Option<&str>) -> Invoke {
    Invoke {
        id: 1,
        key: FunctionKey {
            tenant: "t".into(),
            function: "f".into(),
            version,
        },
        source: source.map(str::to_owned),
        bytecode_len: None,
        // What the functions service sends: the URL and two ~190-byte keys.
        env: Some(vec![
            ("SUPABASE_URL".into(), "http://127.0.0.1:8000/t/t".into()),
            ("SUPABASE_ANON_KEY".into(), "k".repeat(190)),
            ("SUPABASE_SERVICE_ROLE_KEY".into(), "s".repeat(200)),
        ]),
        request_id: "r".into(),
        method: "POST".into(),
        url: "http://localhost/functions/v1/f".into(),
        // What the functions service forwards of a supabase-js call
        // through the proxy.
        headers: <Vec<(String, String)>>::into_iter(vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), "12".into()),
            (
                "authorization".into(),
                format!("Bearer {}", "k".repeat(190)),
            ),
            ("apikey".into(), "k".repeat(190)),
            ("x-client-info".into(), "supabase-js/2.45.4".into()),
            ("accept".into(), "*/*".into()),
            ("user-agent".into(), "node".into()),
            ("x-forwarded-for".into(), "127.0.0.1".into()),
            ("x-forwarded-proto".into(), "http".into()),
            ("x-forwarded-host".into(), "127.0.0.1:8000".into()),
        ])
        .collect(),
        limits: Limits {
            cpu_ms: 10_000,
            memory_bytes: 256 << 20,
            max_response_bytes: 10 << 20,
            max_fetches: 10,
            max_fetch_bytes: 10 << 20,
        },
        fetch_allow: Vec::new(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One cold start of the bundle from its source (as before bytecode).
#[inline(never)]
fn cold_from_source(w: &mut Worker, src: &str, version: i64) {
    let (r, _) = w.handle(invoke(version, Some(src)), b"{}".to_vec());
    assert!(r.cold);
}

/// One cold start of the bundle from the host's bytecode.
#[inline(never)]
fn cold_from_bytecode(w: &mut Worker, compiled: &[u8], version: i64) {
    let mut inv = invoke(version, None);
    inv.bytecode_len = Some(compiled.len() as u32);
    let mut body = compiled.to_vec();
    body.extend_from_slice(b"{}");
    let (r, _) = w.handle(inv, body);
    assert!(r.cold);
}

/// One warm invocation of the small function (its runtime cached); with
/// `env` as the host sends it when it changed, else none (unchanged).
#[inline(never)]
fn warm_once(w: &mut Worker, env: bool) {
    let mut inv = invoke(1, None);
    if !env {
        inv.env = None;
    }
    let (r, _) = w.handle(inv, b"{\"name\":\"x\"}".to_vec());
    assert!(!r.cold);
}

#[allow(unsafe_code)] // Module::load of bytecode this process just wrote
fn main() {
    let big = bundle(200 * 1024);
    // `callgrind`: 5 cold starts each way, for
    // `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*cold_from_*'`
    // (instruction counts of `Worker::handle` per path; the spare runtime is
    // made outside).
    // `warm`: 200 warm invocations of the small function, for
    // `--toggle-collect='*warm_once*'` (`warm env`: each sent the env, as
    // when it changed every time; `PROFILE_SRC` another function's source).
    if std::env::args().nth(1).as_deref() == Some("warm") {
        let env = std::env::args().nth(2).as_deref() == Some("env");
        let mut w = Worker::new(WorkerConfig::default());
        let src = std::env::var("PROFILE_SRC").unwrap_or_else(|_| SMALL.to_owned());
        let (r, _) = w.handle(invoke(1, Some(&src)), b"{\"name\":\"x\"}".to_vec());
        assert!(r.cold);
        for _ in 0..200 {
            warm_once(&mut w, env);
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("callgrind") {
        let mut w = Worker::new(WorkerConfig::default());
        let compiled = madbase_js::worker::compile("f", &big).unwrap();
        for v in 0..5 {
            w.prepare();
            cold_from_source(&mut w, &big, 1000 + v);
            w.prepare();
            cold_from_bytecode(&mut w, &compiled, 2000 + v);
        }
        return;
    }
    for (label, src) in [("small", SMALL), ("bundle", big.as_str())] {
        let (mut parse, mut eval, mut write, mut load) = (vec![], vec![], vec![], vec![]);
        for _ in 0..9 {
            let rt = Runtime::new().unwrap();
            let ctx = Context::full(&rt).unwrap();
            ctx.with(|ctx| {
                let t = Instant::now();
                let m = Module::declare(ctx.clone(), "f", src).unwrap();
                parse.push(t.elapsed());
                let t = Instant::now();
                let bc = m.write(Default::default()).unwrap();
                write.push(t.elapsed());
                let t = Instant::now();
                let _m2 = unsafe { Module::load(ctx.clone(), &bc) }.unwrap();
                load.push(t.elapsed());
                let t = Instant::now();
                let r = m.eval();
                eval.push(t.elapsed());
                drop(r);
            });
        }
        let mut w = Worker::new(WorkerConfig::default());
        let (mut cold, mut warm, mut prep) = (vec![], vec![], vec![]);
        for v in 0..9 {
            let t = Instant::now();
            w.prepare();
            prep.push(t.elapsed());
            let t = Instant::now();
            let (r, _) = w.handle(invoke(v, Some(src)), b"{\"name\":\"x\"}".to_vec());
            cold.push(t.elapsed());
            assert!(r.cold, "{r:?}");
            for _ in 0..20 {
                let t = Instant::now();
                let (r, _) = w.handle(invoke(v, None), b"{\"name\":\"x\"}".to_vec());
                warm.push(t.elapsed());
                assert!(!r.cold);
            }
        }
        // The same cold start from the host's bytecode.
        let compiled = madbase_js::worker::compile("f", src).unwrap();
        let mut cold_bc = vec![];
        for v in 100..109 {
            w.prepare();
            let mut inv = invoke(v, None);
            inv.bytecode_len = Some(compiled.len() as u32);
            let mut body = compiled.clone();
            body.extend_from_slice(b"{\"name\":\"x\"}");
            let t = Instant::now();
            let (r, _) = w.handle(inv, body);
            cold_bc.push(t.elapsed());
            assert!(r.cold, "{r:?}");
        }
        let t = Instant::now();
        let _ = madbase_js::worker::compile("f", src).unwrap();
        println!(
            "{label}: compile (host, once per deploy) {:?}; cold handle from bytecode {:?}",
            t.elapsed(),
            median(cold_bc)
        );
        println!(
            "{label} ({} bytes): parse {:?}, bytecode write {:?}, bytecode load {:?}, module eval {:?}; worker: prepare(spare) {:?}, cold handle {:?}, warm handle {:?}",
            src.len(),
            median(parse),
            median(write),
            median(load),
            median(eval),
            median(prep),
            median(cold),
            median(warm)
        );
    }
}
