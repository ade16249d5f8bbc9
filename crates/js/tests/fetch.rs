//! `fetch` from a function against a real loopback HTTP server: allowed
//! through `fetch_allow`, refused by the SSRF guard otherwise, and bounded
//! in number and size.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use common::*;
use madbase_js::protocol::{FunctionError, Invoke};
use serde_json::{Value, json};

/// A tiny HTTP/1.1 server on 127.0.0.1 (one thread, `Connection: close`).
fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve(stream);
            });
        }
    });
    addr
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_owned();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let (status, extra, out): (&str, String, Vec<u8>) = match path.as_str() {
        "/json" => (
            "200 OK",
            "content-type: application/json\r\nx-test: yes\r\n".to_owned(),
            br#"{"hello":"world"}"#.to_vec(),
        ),
        "/echo" => {
            let h = headers
                .iter()
                .find(|(k, _)| k == "x-sent")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut out = format!("{method} {h} ").into_bytes();
            out.extend_from_slice(&body);
            ("201 Created", String::new(), out)
        }
        "/big" => ("200 OK", String::new(), vec![b'x'; 200_000]),
        "/metadata-redirect" => (
            "302 Found",
            "location: http://169.254.169.254/latest/meta-data/\r\n".to_owned(),
            Vec::new(),
        ),
        "/redirect" => ("302 Found", "location: /json\r\n".to_owned(), Vec::new()),
        _ => ("404 Not Found", String::new(), b"nope".to_vec()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        out.len()
    )?;
    stream.write_all(&out)?;
    stream.flush()
}

fn fetch_invoke(function: &str, source: &str, allow: &[&str]) -> Invoke {
    let mut inv = invoke(key("t1", function, 1), Some(source));
    inv.fetch_allow = allow.iter().map(|s| (*s).to_owned()).collect();
    inv
}

fn json_of(inv: Invoke) -> Value {
    let mut w = worker();
    let (reply, body) = run_with(&mut w, inv, Vec::new());
    let (status, text) = ok(&reply, &body);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn fetch_reaches_an_allowed_loopback_server() {
    let addr = server();
    let src = format!(
        r#"Deno.serve(async () => {{
            const r = await fetch("http://{addr}/json");
            const e = await fetch(new Request("http://{addr}/echo", {{ method: "POST", body: "payload", headers: {{ "X-Sent": "h1" }} }}));
            const bin = await fetch("http://{addr}/echo", {{ method: "PUT", body: new Uint8Array([0x61, 0x62]) }});
            const red = await fetch("http://{addr}/redirect");
            const missing = await fetch("http://{addr}/missing");
            return Response.json({{
                status: r.status, ok: r.ok, statusText: r.statusText, ct: r.headers.get("Content-Type"), x: r.headers.get("x-test"),
                body: await r.json(), url: r.url,
                echo: [e.status, await e.text()],
                bin: new TextDecoder().decode(await bin.arrayBuffer()),
                redirected: [red.redirected, red.url.endsWith("/json"), (await red.json()).hello],
                missing: [missing.status, missing.ok, await missing.text()],
            }});
        }});"#
    );
    let v = json_of(fetch_invoke("fetcher", &src, &["127.0.0.1"]));
    assert_eq!(v["status"], 200);
    assert_eq!(v["ok"], true);
    assert_eq!(v["statusText"], "OK");
    assert_eq!(v["ct"], "application/json");
    assert_eq!(v["x"], "yes");
    assert_eq!(v["body"], json!({"hello": "world"}));
    assert_eq!(v["url"], format!("http://{addr}/json"));
    assert_eq!(v["echo"], json!([201, "POST h1 payload"]));
    assert_eq!(v["bin"], "PUT  ab");
    assert_eq!(v["redirected"], json!([true, true, "world"]));
    assert_eq!(v["missing"], json!([404, false, "nope"]));
}

#[test]
fn a_cidr_in_fetch_allow_admits_the_server() {
    let addr = server();
    let src = format!(
        r#"Deno.serve(async () => new Response(await (await fetch("http://{addr}/json")).text()));"#
    );
    let mut w = worker();
    let (reply, body) = run_with(
        &mut w,
        fetch_invoke("cidr", &src, &["127.0.0.0/8"]),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (200, r#"{"hello":"world"}"#.to_owned()));
}

#[test]
fn loopback_is_refused_without_fetch_allow() {
    let addr = server();
    // Uncaught: the invocation fails with FetchLimit.
    let src = format!(r#"Deno.serve(async () => fetch("http://{addr}/json"));"#);
    let mut w = worker();
    let (reply, _) = run_with(&mut w, fetch_invoke("blocked", &src, &[]), Vec::new());
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::FetchLimit);
    assert!(message.contains("127.0.0.1"), "{message}");

    // Caught: a TypeError the function can handle.
    let src = format!(
        r#"Deno.serve(async () => {{
            try {{ await fetch("http://{addr}/json"); return new Response("reached"); }}
            catch (e) {{ return new Response(e.name + ": " + e.message); }}
        }});"#
    );
    let (reply, body) = run_with(&mut w, fetch_invoke("caught", &src, &[]), Vec::new());
    let (_, text) = ok(&reply, &body);
    assert!(
        text.starts_with("TypeError: fetch: the address 127.0.0.1"),
        "{text}"
    );

    // A name resolving to loopback is refused at resolution.
    let port = addr.port();
    let src = format!(r#"Deno.serve(async () => fetch("http://localhost:{port}/json"));"#);
    let (reply, _) = run_with(&mut w, fetch_invoke("byname", &src, &[]), Vec::new());
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::FetchLimit, "{message}");
    assert!(message.contains("localhost"), "{message}");

    // ... and admitted when the name is allowed.
    let src = format!(
        r#"Deno.serve(async () => new Response((await fetch("http://localhost:{port}/json")).status));"#
    );
    let (reply, body) = run_with(
        &mut w,
        fetch_invoke("named", &src, &["localhost"]),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (200, "200".to_owned()));
}

#[test]
fn the_metadata_address_is_refused_directly_and_through_a_redirect() {
    let src = r#"Deno.serve(async () => fetch("http://169.254.169.254/latest/meta-data/"));"#;
    let mut w = worker();
    let (reply, _) = run_with(&mut w, fetch_invoke("meta", src, &[]), Vec::new());
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::FetchLimit);
    assert!(message.contains("169.254.169.254"), "{message}");

    let addr = server();
    let src = format!(r#"Deno.serve(async () => fetch("http://{addr}/metadata-redirect"));"#);
    let (reply, _) = run_with(
        &mut w,
        fetch_invoke("via", &src, &["127.0.0.1"]),
        Vec::new(),
    );
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::FetchLimit, "{message}");
    assert!(message.contains("169.254.169.254"), "{message}");
}

#[test]
fn the_number_of_sub_requests_is_limited() {
    let addr = server();
    let src = format!(
        r#"Deno.serve(async () => {{
            const first = await fetch("http://{addr}/json");
            let second;
            try {{ await fetch("http://{addr}/json"); second = "allowed"; }} catch (e) {{ second = e.name + ": " + e.message; }}
            return Response.json({{ first: first.status, second }});
        }});"#
    );
    let mut inv = fetch_invoke("count", &src, &["127.0.0.1"]);
    inv.limits.max_fetches = 1;
    let mut w = worker();
    let (reply, body) = run_with(&mut w, inv.clone(), Vec::new());
    let v: Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["first"], 200);
    assert_eq!(
        v["second"],
        "TypeError: fetch: the limit of 1 sub-requests per invocation is reached"
    );
    // The count is per invocation.
    let (reply, body) = run_with(&mut w, inv, Vec::new());
    let v: Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["first"], 200);

    // Uncaught, it is FetchLimit.
    let src = format!(
        r#"Deno.serve(async () => {{ await fetch("http://{addr}/json"); return fetch("http://{addr}/json"); }});"#
    );
    let mut inv = fetch_invoke("count2", &src, &["127.0.0.1"]);
    inv.limits.max_fetches = 1;
    let (reply, _) = run_with(&mut w, inv, Vec::new());
    assert_eq!(failed(&reply).0, FunctionError::FetchLimit);
}

#[test]
fn the_size_of_a_sub_response_is_limited() {
    let addr = server();
    let src = format!(r#"Deno.serve(async () => fetch("http://{addr}/big"));"#);
    let mut inv = fetch_invoke("big", &src, &["127.0.0.1"]);
    inv.limits.max_fetch_bytes = 100_000;
    let mut w = worker();
    let (reply, _) = run_with(&mut w, inv.clone(), Vec::new());
    let (error, message) = failed(&reply);
    assert_eq!(error, FunctionError::FetchLimit);
    assert!(message.contains("100000"), "{message}");
    inv.limits.max_fetch_bytes = 300_000;
    let (reply, body) = run_with(&mut w, inv, Vec::new());
    assert_eq!(ok(&reply, &body).1.len(), 200_000);
}

#[test]
fn concurrent_fetches_and_abort() {
    let addr = server();
    let src = format!(
        r#"Deno.serve(async () => {{
            const [a, b] = await Promise.all([fetch("http://{addr}/json"), fetch("http://{addr}/echo", {{ method: "POST", body: "x" }})]);
            const c = new AbortController();
            c.abort();
            let aborted;
            try {{ await fetch("http://{addr}/json", {{ signal: c.signal }}); aborted = "no"; }} catch (e) {{ aborted = e.name; }}
            let scheme;
            try {{ await fetch("file:///etc/passwd"); }} catch (e) {{ scheme = e.name; }}
            return Response.json({{ a: a.status, b: await b.text(), aborted, scheme }});
        }});"#
    );
    let v = json_of(fetch_invoke("conc", &src, &["127.0.0.1"]));
    assert_eq!(v["a"], 200);
    assert_eq!(v["b"], "POST  x");
    assert_eq!(v["aborted"], "AbortError");
    assert_eq!(v["scheme"], "TypeError");
}

#[test]
fn https_goes_through_rustls() {
    // The loopback server speaks plain HTTP: the TLS handshake fails, which
    // shows https URLs are supported (not refused as an unknown scheme).
    let addr = server();
    let src = format!(
        r#"Deno.serve(async () => {{
            try {{ await fetch("https://{addr}/json"); return new Response("no error"); }}
            catch (e) {{ return new Response(e.name + ": " + e.message); }}
        }});"#
    );
    let mut w = worker();
    let (reply, body) = run_with(
        &mut w,
        fetch_invoke("tls", &src, &["127.0.0.1"]),
        Vec::new(),
    );
    let (_, text) = ok(&reply, &body);
    assert!(text.starts_with("TypeError: fetch failed"), "{text}");
    assert!(text.contains("tls"), "{text}");
}

#[test]
fn a_fetched_response_can_be_returned_as_is() {
    let addr = server();
    let src = format!(
        r#"Deno.serve(() => fetch("http://{addr}/echo", {{ method: "POST", body: "through" }}));"#
    );
    let mut w = worker();
    let (reply, body) = run_with(
        &mut w,
        fetch_invoke("proxy", &src, &["127.0.0.1"]),
        Vec::new(),
    );
    assert_eq!(ok(&reply, &body), (201, "POST  through".to_owned()));
}
