//! The Web APIs of the prelude, against the behaviour the WHATWG standards
//! (Fetch, URL, Encoding, HTML timers and base64, DOM abort) specify.

mod common;

use common::*;
use serde_json::{Value, json};

/// Runs `body` (the body of an async function) in a handler; its value as JSON.
fn js(body: &str) -> Value {
    let source = format!(
        "Deno.serve(async (req) => {{ const value = await (async () => {{ {body} }})(); return Response.json(value === undefined ? null : value); }});"
    );
    let mut w = worker();
    let (reply, out) = run(&mut w, &source);
    let (status, text) = ok(&reply, &out);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("the handler's JSON")
}

#[test]
fn headers_are_case_insensitive_combined_and_sorted() {
    let v = js(r#"
        const h = new Headers({ "Content-Type": "text/plain", "X-B": "2" });
        h.append("x-a", "1");
        h.append("X-A", "one more");
        h.append("Set-Cookie", "a=1");
        h.append("set-cookie", "b=2");
        const entries = [...h];
        const seen = [];
        h.forEach((value, name) => seen.push(name + "=" + value));
        const out = {
            get: h.get("CONTENT-TYPE"),
            combined: h.get("x-a"),
            missing: h.get("nope"),
            has: [h.has("x-b"), h.has("X-B"), h.has("x-c")],
            entries,
            keys: [...h.keys()],
            cookies: h.getSetCookie(),
            seen,
        };
        h.set("X-A", "replaced");
        h.delete("x-b");
        out.afterSet = h.get("x-a");
        out.afterDelete = h.has("x-b");
        out.fromPairs = [...new Headers([["A", " padded "]])];
        out.fromHeaders = new Headers(h).get("x-a");
        try { h.append("bad name", "x"); out.badName = "accepted"; } catch (e) { out.badName = e.name; }
        try { h.append("x", "a\nb"); out.badValue = "accepted"; } catch (e) { out.badValue = e.name; }
        return out;
    "#);
    assert_eq!(v["get"], "text/plain");
    assert_eq!(v["combined"], "1, one more");
    assert_eq!(v["missing"], Value::Null);
    assert_eq!(v["has"], json!([true, true, false]));
    assert_eq!(
        v["entries"],
        json!([
            ["content-type", "text/plain"],
            ["set-cookie", "a=1"],
            ["set-cookie", "b=2"],
            ["x-a", "1, one more"],
            ["x-b", "2"]
        ])
    );
    assert_eq!(
        v["keys"],
        json!(["content-type", "set-cookie", "set-cookie", "x-a", "x-b"])
    );
    assert_eq!(v["cookies"], json!(["a=1", "b=2"]));
    assert_eq!(v["seen"][0], "content-type=text/plain");
    assert_eq!(v["afterSet"], "replaced");
    assert_eq!(v["afterDelete"], false);
    assert_eq!(v["fromPairs"], json!([["a", "padded"]]));
    assert_eq!(v["fromHeaders"], "replaced");
    assert_eq!(v["badName"], "TypeError");
    assert_eq!(v["badValue"], "TypeError");
}

#[test]
fn response_fields_and_body_methods() {
    let v = js(r#"
        const r = new Response("héllo", { status: 404, statusText: "Not Here" });
        const out = { status: r.status, ok: r.ok, statusText: r.statusText, ct: r.headers.get("content-type"), used: r.bodyUsed };
        out.text = await r.text();
        out.usedAfter = r.bodyUsed;
        try { await r.text(); out.second = "read twice"; } catch (e) { out.second = e.name; }
        out.json = await new Response('{"a":1}').json();
        const ab = await new Response(new Uint8Array([1, 2, 3])).arrayBuffer();
        out.ab = [ab instanceof ArrayBuffer, ab.byteLength, ...new Uint8Array(ab)];
        out.fromBuffer = await new Response(new Uint8Array([104, 105]).buffer).text();
        out.utf8 = [...new Uint8Array(await new Response("é").arrayBuffer())];
        out.defaultStatus = new Response().status;
        out.nullBody = new Response(null).body;
        out.okRange = [new Response(null, { status: 299 }).ok, new Response(null, { status: 300 }).ok];
        try { new Response("x", { status: 99 }); } catch (e) { out.badStatus = e.name; }
        try { new Response("x", { status: 204 }); } catch (e) { out.bodyOn204 = e.name; }
        const j = Response.json({ x: 1 }, { status: 418 });
        out.jsonStatic = [j.status, j.headers.get("content-type"), await j.text()];
        const redirect = Response.redirect("https://example.com/a b", 307);
        out.redirect = [redirect.status, redirect.headers.get("location")];
        const e = Response.error();
        out.error = [e.type, e.status];
        const c = new Response("clone me");
        const c2 = c.clone();
        out.clone = [await c.text(), await c2.text()];
        const reader = new Response("streamed").body.getReader();
        const chunk = await reader.read();
        out.reader = [new TextDecoder().decode(chunk.value), (await reader.read()).done];
        out.params = await new Response(new URLSearchParams({ a: "1 2" })).text();
        return out;
    "#);
    assert_eq!(v["status"], 404);
    assert_eq!(v["ok"], false);
    assert_eq!(v["statusText"], "Not Here");
    assert_eq!(v["ct"], "text/plain;charset=UTF-8");
    assert_eq!(v["used"], false);
    assert_eq!(v["text"], "héllo");
    assert_eq!(v["usedAfter"], true);
    assert_eq!(v["second"], "TypeError");
    assert_eq!(v["json"], json!({"a": 1}));
    assert_eq!(v["ab"], json!([true, 3, 1, 2, 3]));
    assert_eq!(v["fromBuffer"], "hi");
    assert_eq!(v["utf8"], json!([195, 169]));
    assert_eq!(v["defaultStatus"], 200);
    assert_eq!(v["nullBody"], Value::Null);
    assert_eq!(v["okRange"], json!([true, false]));
    assert_eq!(v["badStatus"], "RangeError");
    assert_eq!(v["bodyOn204"], "TypeError");
    assert_eq!(
        v["jsonStatic"],
        json!([418, "application/json", "{\"x\":1}"])
    );
    assert_eq!(v["redirect"], json!([307, "https://example.com/a%20b"]));
    assert_eq!(v["error"], json!(["error", 0]));
    assert_eq!(v["clone"], json!(["clone me", "clone me"]));
    assert_eq!(v["reader"], json!(["streamed", true]));
    assert_eq!(v["params"], "a=1+2");
}

#[test]
fn request_construction() {
    let v = js(r#"
        const r = new Request("https://example.com/x?y=1", { method: "post", headers: { A: "1" }, body: "data" });
        const out = { method: r.method, url: r.url, a: r.headers.get("a"), ct: r.headers.get("content-type"), text: await r.text() };
        out.patch = new Request("https://example.com", { method: "patch" }).method;
        try { new Request("https://example.com", { method: "GET", body: "x" }); } catch (e) { out.getBody = e.name; }
        try { new Request("/relative"); } catch (e) { out.relative = e.name; }
        const copy = new Request(new Request("https://example.com/", { method: "PUT", body: "b" }));
        out.copy = [copy.method, await copy.text()];
        out.signal = r.signal instanceof AbortSignal;
        out.incoming = [req.method, req.headers instanceof Headers, req.bodyUsed];
        return out;
    "#);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["url"], "https://example.com/x?y=1");
    assert_eq!(v["a"], "1");
    assert_eq!(v["ct"], "text/plain;charset=UTF-8");
    assert_eq!(v["text"], "data");
    // Only the six standard methods are upper-cased (Fetch standard).
    assert_eq!(v["patch"], "patch");
    assert_eq!(v["getBody"], "TypeError");
    assert_eq!(v["relative"], "TypeError");
    assert_eq!(v["copy"], json!(["PUT", "b"]));
    assert_eq!(v["signal"], true);
    assert_eq!(v["incoming"], json!(["GET", true, false]));
}

/// The request an invocation hands the handler: its URL normalised as
/// `new URL` would, header names in lower case with their values trimmed
/// (one that no `Headers` could hold is not passed), the body readable
/// once, a signal made when asked for.
#[test]
fn the_invocations_request() {
    let source = r#"Deno.serve(async (req, info) => {
        const out = { url: req.url, method: req.method, entries: [...req.headers] };
        out.signal = [req.signal instanceof AbortSignal, req.signal === req.signal, req.signal.aborted];
        const first = req.text();
        out.firstIsPromise = first instanceof Promise;
        out.body = await first;
        const again = req.json();
        out.againIsPromise = again instanceof Promise;
        try { await again; out.again = "read twice"; } catch (e) { out.again = e.name; }
        out.info = [info.remoteAddr.transport, Object.isFrozen(info.remoteAddr), info.completed instanceof Promise];
        return Response.json(out);
    });"#;
    let mut w = worker();
    let mut inv = invoke(key("t", "f", 1), Some(source));
    inv.method = "PUT".to_owned();
    inv.url = "HTTP://Example.COM:80/a/./b/../c?x=1#frag".to_owned();
    inv.headers = vec![
        ("X-Upper".to_owned(), " padded\t".to_owned()),
        ("content-type".to_owned(), "text/plain".to_owned()),
        ("bad name".to_owned(), "dropped".to_owned()),
        ("x-wide".to_owned(), "\u{0100}".to_owned()),
        ("x-latin1".to_owned(), "caf\u{e9}".to_owned()),
    ]
    .into_iter()
    .collect();
    let (reply, out) = run_with(&mut w, inv, b"{\"a\":1}".to_vec());
    let (status, text) = ok(&reply, &out);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["url"], "http://example.com/a/c?x=1#frag");
    assert_eq!(v["method"], "PUT");
    assert_eq!(
        v["entries"],
        json!([
            ["content-type", "text/plain"],
            ["x-latin1", "caf\u{e9}"],
            ["x-upper", "padded"]
        ])
    );
    assert_eq!(v["signal"], json!([true, true, false]));
    assert_eq!(v["firstIsPromise"], true);
    assert_eq!(v["body"], "{\"a\":1}");
    // A second read rejects (it does not throw where it is called).
    assert_eq!(v["againIsPromise"], true);
    assert_eq!(v["again"], "TypeError");
    assert_eq!(v["info"], json!(["tcp", true, true]));

    // A URL no Request could have: the invocation fails as the handler's
    // `new Request` would have.
    let mut bad = invoke(key("t", "f", 1), None);
    bad.url = "not a url".to_owned();
    let (reply, _) = run_with(&mut w, bad, Vec::new());
    let (_, message) = failed(&reply);
    assert!(message.contains("invalid URL"), "{message}");
}

/// The invocation's `Headers` are made when first read (most handlers never
/// read them): read first through a clone, through a Request made from it,
/// or by a body method that needs the content type, they are the same
/// headers, one object, and later invocations get their own.
#[test]
fn the_invocations_headers_are_made_when_first_read() {
    let source = r#"Deno.serve(async (req) => {
        const mode = new URL(req.url).searchParams.get("mode");
        const out = { mode };
        if (mode === "clone") {
            out.clone = [...req.clone().headers];
        } else if (mode === "wrap") {
            out.wrap = [...new Request(req).headers];
        } else if (mode === "blob") {
            out.type = (await req.blob()).type;
        }
        out.same = req.headers === req.headers;
        out.own = [...req.headers];
        req.headers.set("x-added", "1");
        return Response.json(out);
    });"#;
    let mut w = worker();
    let headers = [("content-type", "text/plain"), ("x-one", "1")];
    let expected = json!([["content-type", "text/plain"], ["x-one", "1"]]);
    for mode in ["clone", "wrap", "blob", "none"] {
        let mut inv = invoke(key("t", "f", 1), Some(source));
        inv.method = "POST".to_owned();
        inv.url = format!("http://localhost/f?mode={mode}");
        inv.headers = headers.into_iter().collect();
        let (reply, out) = run_with(&mut w, inv, b"x".to_vec());
        let (status, text) = ok(&reply, &out);
        assert_eq!(status, 200, "{mode}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["same"], true, "{mode}");
        assert_eq!(v["own"], expected, "{mode}: {text}");
        match mode {
            "clone" => assert_eq!(v["clone"], expected),
            "wrap" => assert_eq!(v["wrap"], expected),
            "blob" => assert_eq!(v["type"], "text/plain"),
            _ => {}
        }
    }
    // Lower-case names with a value to trim: trimmed, not passed as sent.
    let mut inv = invoke(key("t", "f", 1), Some(source));
    inv.url = "http://localhost/f?mode=none".to_owned();
    inv.headers = [("x-pad", "  v\t"), ("x-ok", "w")].into_iter().collect();
    let (reply, out) = run_with(&mut w, inv, Vec::new());
    let (status, text) = ok(&reply, &out);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["own"], json!([["x-ok", "w"], ["x-pad", "v"]]));
    // No headers at all: an empty Headers, not an error.
    let mut inv = invoke(key("t", "f", 1), Some(source));
    inv.url = "http://localhost/f?mode=none".to_owned();
    inv.headers = Default::default();
    let (reply, out) = run_with(&mut w, inv, Vec::new());
    let (status, text) = ok(&reply, &out);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["own"], json!([]));
}
/// Headers keep names and values as Fetch says through every change; the
/// checks of names and values are the same for a name seen before.
#[test]
fn headers_edits_and_checks() {
    let v = js(r#"
        const h = new Headers();
        for (const [n, v] of [["A", "1"], ["b", "2"], ["a", "3"], ["C", "4"], ["A", "5"]]) h.append(n, v);
        const out = { all: h.get("a") };
        h.set("a", "only");
        out.afterSet = [...h];
        h.set("d", "new");
        h.delete("B");
        out.afterDelete = [...h];
        out.trimmed = new Headers({ x: " \t v \t " }).get("x");
        out.empty = new Headers({ x: "" }).get("x");
        out.inner = new Headers({ x: "a \t b" }).get("x");
        const bad = [];
        for (const value of ["a\0b", "a\rb", "\u0100", "ok\n"]) {
            try { new Headers({ x: value }); bad.push("accepted"); } catch (e) { bad.push(e.name); }
        }
        out.bad = bad;
        // The same name twice: checked both times.
        const names = [];
        for (const n of ["X-Seen", "X-Seen", "bad name", "bad name"]) {
            try { new Headers([[n, "v"]]); names.push("ok"); } catch (e) { names.push(e.name); }
        }
        out.names = names;
        const r = Response.json({ a: 1 }, { status: 201, headers: { "Content-Type": "application/vnd.api+json" } });
        out.json = [r.status, r.headers.get("content-type"), await r.json()];
        try { Response.json({}, { status: 204 }); out.json204 = "accepted"; } catch (e) { out.json204 = e.name; }
        return out;
    "#);
    assert_eq!(v["all"], "1, 3, 5");
    assert_eq!(
        v["afterSet"],
        json!([["a", "only"], ["b", "2"], ["c", "4"]])
    );
    assert_eq!(
        v["afterDelete"],
        json!([["a", "only"], ["c", "4"], ["d", "new"]])
    );
    assert_eq!(v["trimmed"], "v");
    assert_eq!(v["empty"], "");
    assert_eq!(v["inner"], "a \t b");
    assert_eq!(
        v["bad"],
        json!(["TypeError", "TypeError", "TypeError", "accepted"])
    );
    assert_eq!(v["names"], json!(["ok", "ok", "TypeError", "TypeError"]));
    assert_eq!(
        v["json"],
        json!([201, "application/vnd.api+json", {"a": 1}])
    );
    assert_eq!(v["json204"], "TypeError");
}

#[test]
fn url_parsing_and_setters() {
    let v = js(r#"
        const u = new URL("HTTPS://user:pw@Example.COM:443/a/./b/../c?x=1&y=2#frag");
        const out = {
            href: u.href, protocol: u.protocol, username: u.username, password: u.password,
            host: u.host, hostname: u.hostname, port: u.port, pathname: u.pathname,
            search: u.search, hash: u.hash, origin: u.origin, json: JSON.stringify(u), str: String(u),
        };
        out.relative = new URL("../d?q", "http://h/a/b/c").href;
        out.idna = new URL("http://ÉXAMPLE.com/ä").href;
        out.port8080 = new URL("http://h:8080/").port;
        try { new URL("not a url"); } catch (e) { out.invalid = e.name; }
        out.canParse = [URL.canParse("http://x"), URL.canParse("nope"), URL.canParse("/p", "http://x")];
        u.pathname = "/new path";
        u.hash = "";
        u.search = "?z=9";
        out.afterSet = u.href;
        u.searchParams.append("w", "a b");
        out.afterParams = u.href;
        u.search = "k=v";
        out.paramsFollow = u.searchParams.get("k");
        u.host = "other.org:8443";
        out.newHost = u.href;
        return out;
    "#);
    assert_eq!(v["href"], "https://user:pw@example.com/a/c?x=1&y=2#frag");
    assert_eq!(v["protocol"], "https:");
    assert_eq!(v["username"], "user");
    assert_eq!(v["password"], "pw");
    assert_eq!(v["host"], "example.com");
    assert_eq!(v["hostname"], "example.com");
    assert_eq!(v["port"], "");
    assert_eq!(v["pathname"], "/a/c");
    assert_eq!(v["search"], "?x=1&y=2");
    assert_eq!(v["hash"], "#frag");
    assert_eq!(v["origin"], "https://example.com");
    assert_eq!(
        v["json"],
        "\"https://user:pw@example.com/a/c?x=1&y=2#frag\""
    );
    assert_eq!(v["str"], v["href"]);
    assert_eq!(v["relative"], "http://h/a/d?q");
    assert_eq!(v["idna"], "http://xn--xample-9ua.com/%C3%A4");
    assert_eq!(v["port8080"], "8080");
    assert_eq!(v["invalid"], "TypeError");
    assert_eq!(v["canParse"], json!([true, false, true]));
    assert_eq!(v["afterSet"], "https://user:pw@example.com/new%20path?z=9");
    assert_eq!(
        v["afterParams"],
        "https://user:pw@example.com/new%20path?z=9&w=a+b"
    );
    assert_eq!(v["paramsFollow"], "v");
    assert_eq!(
        v["newHost"],
        "https://user:pw@other.org:8443/new%20path?k=v"
    );
}

#[test]
fn url_search_params() {
    let v = js(r#"
        const p = new URLSearchParams("?a=1&b=x%20y&a=2&c=%zz&plus=1+2&empty=&novalue");
        const out = {
            a: p.get("a"), all: p.getAll("a"), b: p.get("b"), bad: p.get("c"), plus: p.get("plus"),
            empty: p.get("empty"), novalue: p.get("novalue"), missing: p.get("m"), size: p.size,
            has: [p.has("a"), p.has("a", "2"), p.has("a", "3")],
        };
        p.set("a", "3");
        p.delete("b");
        p.append("é", "ü&=");
        out.str = p.toString();
        const s = new URLSearchParams({ z: "1", a: "2", m: "3", b: "4" });
        s.append("a", "1");
        s.sort();
        out.sorted = [...s];
        out.fromPairs = new URLSearchParams([["x", "1"], ["y", "2"]]).toString();
        out.keys = [...new URLSearchParams("k=1&j=2").keys()];
        return out;
    "#);
    assert_eq!(v["a"], "1");
    assert_eq!(v["all"], json!(["1", "2"]));
    assert_eq!(v["b"], "x y");
    assert_eq!(v["bad"], "%zz");
    assert_eq!(v["plus"], "1 2");
    assert_eq!(v["empty"], "");
    assert_eq!(v["novalue"], "");
    assert_eq!(v["missing"], Value::Null);
    assert_eq!(v["size"], 7);
    assert_eq!(v["has"], json!([true, true, false]));
    assert_eq!(
        v["str"],
        "a=3&c=%25zz&plus=1+2&empty=&novalue=&%C3%A9=%C3%BC%26%3D"
    );
    assert_eq!(
        v["sorted"],
        json!([["a", "2"], ["a", "1"], ["b", "4"], ["m", "3"], ["z", "1"]])
    );
    assert_eq!(v["fromPairs"], "x=1&y=2");
    assert_eq!(v["keys"], json!(["k", "j"]));
}

#[test]
fn text_encoder_and_decoder() {
    let v = js(r#"
        const enc = new TextEncoder();
        const bytes = enc.encode("aé€😀");
        const out = { encoding: enc.encoding, bytes: [...bytes], empty: enc.encode().length };
        out.lone = [...enc.encode("\uD800")];
        out.decoded = new TextDecoder().decode(bytes);
        out.bom = new TextDecoder().decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0x61]));
        out.keepBom = new TextDecoder("utf-8", { ignoreBOM: true }).decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0x61])).length;
        out.replacement = new TextDecoder().decode(new Uint8Array([0x61, 0xFF, 0x62]));
        try { new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array([0xFF])); } catch (e) { out.fatal = e.name; }
        try { new TextDecoder("latin1"); } catch (e) { out.label = e.name; }
        out.view = new TextDecoder().decode(new DataView(new Uint8Array([0x68, 0x69]).buffer));
        const dest = new Uint8Array(4);
        out.into = enc.encodeInto("a€b", dest);
        out.intoBytes = [...dest];
        return out;
    "#);
    assert_eq!(v["encoding"], "utf-8");
    assert_eq!(
        v["bytes"],
        json!([0x61, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80])
    );
    assert_eq!(v["empty"], 0);
    assert_eq!(v["lone"], json!([0xEF, 0xBF, 0xBD]));
    assert_eq!(v["decoded"], "aé€😀");
    assert_eq!(v["bom"], "a");
    assert_eq!(v["keepBom"], 2);
    assert_eq!(v["replacement"], "a\u{FFFD}b");
    assert_eq!(v["fatal"], "TypeError");
    assert_eq!(v["label"], "RangeError");
    assert_eq!(v["view"], "hi");
    assert_eq!(v["into"], json!({"read": 2, "written": 4}));
    assert_eq!(v["intoBytes"], json!([0x61, 0xE2, 0x82, 0xAC]));
}

#[test]
fn atob_and_btoa() {
    let v = js(r#"
        const out = { b: btoa("hello"), b1: btoa("a"), b2: btoa("ab"), bin: btoa("\xff\x00"), a: atob("aGVsbG8="), nopad: atob("YQ"), ws: atob(" aG Vs\nbG8= ") };
        try { btoa("€"); } catch (e) { out.wide = e.name; }
        try { atob("a"); } catch (e) { out.badLength = e.name; }
        try { atob("a*=="); } catch (e) { out.badChar = e.name; }
        out.roundTrip = atob(btoa("\x00\x01\xfe\xff")).split("").map((c) => c.charCodeAt(0));
        return out;
    "#);
    assert_eq!(v["b"], "aGVsbG8=");
    assert_eq!(v["b1"], "YQ==");
    assert_eq!(v["b2"], "YWI=");
    assert_eq!(v["bin"], "/wA=");
    assert_eq!(v["a"], "hello");
    assert_eq!(v["nopad"], "a");
    assert_eq!(v["ws"], "hello");
    assert_eq!(v["wide"], "InvalidCharacterError");
    assert_eq!(v["badLength"], "InvalidCharacterError");
    assert_eq!(v["badChar"], "InvalidCharacterError");
    assert_eq!(v["roundTrip"], json!([0, 1, 254, 255]));
}

#[test]
fn crypto_random() {
    let v = js(r#"
        const uuids = new Set();
        for (let i = 0; i < 100; i++) uuids.add(crypto.randomUUID());
        const u = crypto.randomUUID();
        const a = crypto.getRandomValues(new Uint8Array(32));
        const b = crypto.getRandomValues(new Uint32Array(8));
        const out = { distinct: uuids.size, format: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(u),
            same: a === a, nonZero: a.some((x) => x !== 0) && b.some((x) => x !== 0), len: a.length };
        out.returnsArg = crypto.getRandomValues(a) === a;
        try { crypto.getRandomValues(new Uint8Array(65537)); } catch (e) { out.quota = e.name; }
        try { crypto.getRandomValues(new Float64Array(2)); } catch (e) { out.float = e.name; }
        return out;
    "#);
    assert_eq!(v["distinct"], 100);
    assert_eq!(v["format"], true);
    assert_eq!(v["nonZero"], true);
    assert_eq!(v["len"], 32);
    assert_eq!(v["returnsArg"], true);
    assert_eq!(v["quota"], "QuotaExceededError");
    assert_eq!(v["float"], "TypeMismatchError");
}

#[test]
fn timers_run_within_the_invocation_in_order() {
    let v = js(r#"
        const order = [];
        const t0 = Date.now();
        setTimeout(() => order.push("b30"), 30);
        setTimeout((x) => order.push(x), 10, "a10");
        const cancelled = setTimeout(() => order.push("never"), 5);
        clearTimeout(cancelled);
        setTimeout(() => order.push("c0"));
        let n = 0;
        const iv = setInterval(() => { order.push("i" + ++n); if (n === 3) clearInterval(iv); }, 5);
        queueMicrotask(() => order.push("micro"));
        await new Promise((r) => setTimeout(r, 50));
        return { order, waited: Date.now() - t0 >= 50 };
    "#);
    let order: Vec<&str> = v["order"]
        .as_array()
        .expect("order")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(order[0], "micro");
    assert_eq!(order[1], "c0");
    let pos = |s: &str| order.iter().position(|x| *x == s).expect(s);
    assert!(pos("a10") < pos("b30"));
    assert!(pos("i1") < pos("i2") && pos("i2") < pos("i3"));
    assert!(!order.contains(&"never"));
    assert!(!order.contains(&"i4"));
    assert_eq!(v["waited"], true);
}

#[test]
fn timers_do_not_outlive_their_invocation() {
    let mut w = worker();
    let src = r#"
        let fired = 0;
        Deno.serve(() => { setTimeout(() => fired++, 0); setTimeout(() => fired += 100, 60000); return new Response(String(fired)); });
    "#;
    // The invocation ends when the handler's promise settles: the pending
    // timers are dropped, not run in the next invocation.
    let (reply, body) = run(&mut w, src);
    assert_eq!(ok(&reply, &body).1, "0");
    let (reply, body) = run(&mut w, src);
    assert_eq!(ok(&reply, &body).1, "0");
}

#[test]
fn abort_controller_and_signal() {
    let v = js(r#"
        const c = new AbortController();
        const events = [];
        c.signal.addEventListener("abort", (e) => events.push(e.type));
        c.signal.onabort = () => events.push("onabort");
        const before = c.signal.aborted;
        c.abort();
        c.abort("again");
        const out = { before, after: c.signal.aborted, reason: c.signal.reason.name, events };
        try { c.signal.throwIfAborted(); } catch (e) { out.thrown = e.name; }
        const custom = new AbortController();
        custom.abort("why");
        out.custom = custom.signal.reason;
        out.static = [AbortSignal.abort().aborted, AbortSignal.abort(1).reason];
        const t = AbortSignal.timeout(10);
        await new Promise((r) => setTimeout(r, 30));
        out.timeout = [t.aborted, t.reason.name];
        const any = AbortSignal.any([new AbortController().signal, AbortSignal.abort("first")]);
        out.any = any.reason;
        try { new AbortSignal(); } catch (e) { out.ctor = e.name; }
        return out;
    "#);
    assert_eq!(v["before"], false);
    assert_eq!(v["after"], true);
    assert_eq!(v["reason"], "AbortError");
    assert_eq!(v["events"], json!(["onabort", "abort"]));
    assert_eq!(v["thrown"], "AbortError");
    assert_eq!(v["custom"], "why");
    assert_eq!(v["static"], json!([true, 1]));
    assert_eq!(v["timeout"], json!([true, "TimeoutError"]));
    assert_eq!(v["any"], "first");
    assert_eq!(v["ctor"], "TypeError");
}

#[test]
fn structured_clone() {
    let v = js(r#"
        const src = { n: 1, s: "x", d: new Date(5), m: new Map([[1, { a: 1 }]]), set: new Set([1, 2]), arr: [1, [2]], u8: new Uint8Array([1, 2]), re: /a+/gi };
        src.self = src;
        const c = structuredClone(src);
        const out = {
            distinct: c !== src && c.arr !== src.arr && c.m.get(1) !== src.m.get(1),
            cycle: c.self === c,
            date: c.d instanceof Date && c.d.getTime() === 5,
            map: c.m.get(1).a, set: [...c.set], arr: c.arr, u8: [...c.u8], u8Type: c.u8 instanceof Uint8Array,
            re: [c.re.source, c.re.flags], prim: structuredClone(3),
            err: structuredClone(new RangeError("r")) instanceof RangeError,
        };
        try { structuredClone({ f() {} }); } catch (e) { out.fn = e.name; }
        return out;
    "#);
    assert_eq!(v["distinct"], true);
    assert_eq!(v["cycle"], true);
    assert_eq!(v["date"], true);
    assert_eq!(v["map"], 1);
    assert_eq!(v["set"], json!([1, 2]));
    assert_eq!(v["arr"], json!([1, [2]]));
    assert_eq!(v["u8"], json!([1, 2]));
    assert_eq!(v["u8Type"], true);
    assert_eq!(v["re"], json!(["a+", "gi"]));
    assert_eq!(v["prim"], 3);
    assert_eq!(v["err"], true);
    assert_eq!(v["fn"], "DataCloneError");
}

#[test]
fn async_await_and_promise_combinators() {
    let v = js(r#"
        const sleep = (ms, v) => new Promise((r) => setTimeout(() => r(v), ms));
        const all = await Promise.all([sleep(5, 1), sleep(1, 2), 3]);
        const race = await Promise.race([sleep(20, "slow"), sleep(1, "fast")]);
        const settled = await Promise.allSettled([Promise.reject(new Error("no")), 1]);
        let caught = null;
        try { await Promise.reject(new TypeError("t")); } catch (e) { caught = e.name; }
        async function* gen() { yield 1; await sleep(1); yield 2; }
        const got = [];
        for await (const x of gen()) got.push(x);
        return { all, race, settled: settled.map((s) => s.status), caught, got };
    "#);
    assert_eq!(v["all"], json!([1, 2, 3]));
    assert_eq!(v["race"], "fast");
    assert_eq!(v["settled"], json!(["rejected", "fulfilled"]));
    assert_eq!(v["caught"], "TypeError");
    assert_eq!(v["got"], json!([1, 2]));
}

#[test]
fn globals_of_the_prelude_are_not_enumerable_and_natives_are_hidden() {
    let v = js(r#"
        return {
            keys: Object.keys(globalThis).filter((k) => !["value", "performance"].includes(k)),
            native: typeof native, internal: typeof internal,
            crash: typeof __madbaseTestCrash,
            types: [typeof fetch, typeof Deno.serve, typeof EdgeRuntime, typeof console.log, typeof performance.now],
        };
    "#);
    assert_eq!(v["keys"], json!([]));
    assert_eq!(v["native"], "undefined");
    assert_eq!(v["internal"], "undefined");
    // Without MADBASE_FUNCTIONS_TEST_HOOKS=1 the crash trigger does not exist.
    assert_eq!(v["crash"], "undefined");
    assert_eq!(
        v["types"],
        json!(["function", "function", "object", "function", "function"])
    );
}

#[test]
fn crypto_subtle_digest_and_hmac() {
    let v = js(r#"
        const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
        const enc = new TextEncoder();
        const out = {
            sha256: hex(await crypto.subtle.digest("SHA-256", enc.encode("abc"))),
            sha1: hex(await crypto.subtle.digest({ name: "SHA-1" }, enc.encode("abc"))),
            sha512: hex(await crypto.subtle.digest("SHA-512", new Uint8Array(0))),
        };
        // RFC 4231, test case 2.
        const key = await crypto.subtle.importKey("raw", enc.encode("Jefe"), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
        const data = enc.encode("what do ya want for nothing?");
        const sig = await crypto.subtle.sign("HMAC", key, data);
        out.hmac = hex(sig);
        out.verify = [await crypto.subtle.verify("HMAC", key, sig, data), await crypto.subtle.verify("HMAC", key, sig, enc.encode("other"))];
        out.key = [key instanceof CryptoKey, key.type, key.algorithm.name, key.algorithm.hash.name, key.extractable];
        try { await crypto.subtle.exportKey("raw", key); } catch (e) { out.export = e.name; }
        const gen = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-512" }, true, ["sign"]);
        out.generated = (await crypto.subtle.exportKey("raw", gen)).byteLength;
        try { await crypto.subtle.verify("HMAC", gen, sig, data); } catch (e) { out.usage = e.name; }
        try { await crypto.subtle.digest("MD5", data); } catch (e) { out.md5 = e.name; }
        try { await crypto.subtle.encrypt({ name: "AES-GCM" }, key, data); } catch (e) { out.encrypt = e.name; }
        return out;
    "#);
    assert_eq!(
        v["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(v["sha1"], "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(
        v["sha512"],
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
    );
    assert_eq!(
        v["hmac"],
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(v["verify"], json!([true, false]));
    assert_eq!(v["key"], json!([true, "secret", "HMAC", "SHA-256", false]));
    assert_eq!(v["export"], "InvalidAccessError");
    assert_eq!(v["generated"], 128);
    assert_eq!(v["usage"], "InvalidAccessError");
    assert_eq!(v["md5"], "NotSupportedError");
    assert_eq!(v["encrypt"], "NotSupportedError");
}

#[test]
fn readable_streams_made_by_the_function_are_buffered() {
    let v = js(r#"
        const enc = new TextEncoder();
        const s = new ReadableStream({
            start(c) { c.enqueue(enc.encode("a")); setTimeout(() => { c.enqueue("b"); c.close(); }, 5); },
        });
        const r = new Response(s);
        const out = { used: r.bodyUsed, same: r.body === s, text: await r.text(), after: r.bodyUsed };
        let n = 0;
        const pulled = new ReadableStream({ pull(c) { if (++n > 3) c.close(); else c.enqueue(enc.encode(String(n))); } });
        const chunks = [];
        for await (const chunk of pulled) chunks.push(new TextDecoder().decode(chunk));
        out.pulled = chunks;
        const failing = new ReadableStream({ start(c) { c.error(new RangeError("broken")); } });
        try { await new Response(failing).text(); } catch (e) { out.failing = e.name; }
        const locked = new ReadableStream({ start(c) { c.close(); } });
        locked.getReader();
        try { new Response(locked); } catch (e) { out.locked = e.name; }
        return out;
    "#);
    assert_eq!(v["used"], false);
    assert_eq!(v["same"], true);
    assert_eq!(v["text"], "ab");
    assert_eq!(v["after"], true);
    assert_eq!(v["pulled"], json!(["1", "2", "3"]));
    assert_eq!(v["failing"], "RangeError");
    assert_eq!(v["locked"], "TypeError");
}

#[test]
fn a_streamed_response_is_sent_whole() {
    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        r#"Deno.serve(() => {
            const enc = new TextEncoder();
            let i = 0;
            const body = new ReadableStream({
                start(c) {
                    const t = setInterval(() => {
                        c.enqueue(enc.encode(`data: ${++i}\n\n`));
                        if (i === 3) { clearInterval(t); c.close(); }
                    }, 1);
                },
            });
            return new Response(body, { headers: { "content-type": "text/event-stream" } });
        });"#,
    );
    assert_eq!(
        ok(&reply, &body),
        (200, "data: 1\n\ndata: 2\n\ndata: 3\n\n".to_owned())
    );
    assert_eq!(header(&reply, "content-type"), Some("text/event-stream"));
}

#[test]
fn timer_delays_convert_like_webidl_long() {
    // 2 ** 31 wraps to a negative long, hence 0; huge and NaN delays too.
    let v = js(r#"
        const order = [];
        setTimeout(() => order.push("wrapped"), 2 ** 31);
        setTimeout(() => order.push("nan"), NaN);
        setTimeout(() => order.push("huge"), 1e300);
        await new Promise((r) => setTimeout(r, 20));
        return order;
    "#);
    assert_eq!(v, json!(["wrapped", "nan", "huge"]));
}

#[test]
fn text_decoder_streams_across_chunks() {
    let v = js(r#"
        const bytes = new TextEncoder().encode("\uFEFFé€😀!");
        const d = new TextDecoder();
        let out = "";
        for (const b of bytes) out += d.decode(new Uint8Array([b]), { stream: true });
        out += d.decode();
        const cut = new TextDecoder();
        const truncated = cut.decode(new Uint8Array([0x61, 0xE2, 0x82]), { stream: true }) + "|" + cut.decode();
        return { out, truncated };
    "#);
    assert_eq!(v["out"], "é€😀!");
    assert_eq!(v["truncated"], "a|\u{FFFD}");
}

#[test]
fn small_globals_and_console_helpers() {
    let mut w = worker();
    let (reply, body) = run(
        &mut w,
        r#"Deno.serve(() => {
            console.count(); console.count(); console.time("t"); console.timeEnd("t"); console.dir({ a: 1 });
            const own = Response.json({}, { headers: { "content-type": "application/vnd.api+json" } });
            return Response.json({ self: self === globalThis, ua: navigator.userAgent, ct: own.headers.get("content-type") });
        });"#,
    );
    let v: Value = serde_json::from_str(&ok(&reply, &body).1).expect("json");
    assert_eq!(v["self"], true);
    assert_eq!(v["ua"], "madbase-functions");
    assert_eq!(v["ct"], "application/vnd.api+json");
    let lines: Vec<&str> = reply.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(lines[0], "default: 1");
    assert_eq!(lines[1], "default: 2");
    assert!(
        lines[2].starts_with("t: ") && lines[2].ends_with("ms"),
        "{lines:?}"
    );
    assert_eq!(lines[3], "{ a: 1 }");
}

#[test]
fn blob_and_file() {
    let v = js(r#"
        const b = new Blob(["héllo", new Uint8Array([32]), new Blob(["world"])], { type: "Text/Plain" });
        const f = new File([b], "greeting.txt", { type: "text/plain", lastModified: 5 });
        const r = new Response(b);
        return {
            size: b.size, type: b.type, text: await b.text(), slice: await b.slice(-5).text(), neg: await b.slice(1, 3).text(),
            bytes: [...(await b.slice(0, 2).bytes())], file: [f.name, f.lastModified, f.size, f instanceof Blob],
            ct: r.headers.get("content-type"), fromResponse: await (await new Response("abc").blob()).text(),
            stream: await new Response(b.stream()).text(),
        };
    "#);
    assert_eq!(v["size"], 12);
    assert_eq!(v["type"], "text/plain");
    assert_eq!(v["text"], "héllo world");
    assert_eq!(v["slice"], "world");
    assert_eq!(v["neg"], "é");
    assert_eq!(v["bytes"], json!([104, 195]));
    assert_eq!(v["file"], json!(["greeting.txt", 5, 12, true]));
    assert_eq!(v["ct"], "text/plain");
    assert_eq!(v["fromResponse"], "abc");
    assert_eq!(v["stream"], "héllo world");
}

#[test]
fn form_data_round_trips_through_multipart_and_urlencoded() {
    let v = js(r#"
        const fd = new FormData();
        fd.append("name", "Ada \"L\"\nline");
        fd.append("tags", "a");
        fd.append("tags", "b");
        fd.append("upload", new Blob([new Uint8Array([0, 255, 13, 10, 45, 45])], { type: "application/octet-stream" }), "data.bin");
        fd.set("single", "1");
        const req = new Request("https://example.com/", { method: "POST", body: fd });
        const ct = req.headers.get("content-type");
        const back = await req.formData();
        const file = back.get("upload");
        const urlencoded = await new Response("a=1&b=x+y&a=2", { headers: { "content-type": "application/x-www-form-urlencoded" } }).formData();
        let bad;
        try { await new Response("x").formData(); } catch (e) { bad = e.name; }
        return {
            multipart: ct.startsWith("multipart/form-data; boundary="),
            name: back.get("name"), tags: back.getAll("tags"), single: back.get("single"),
            file: [file instanceof File, file.name, file.type, [...(await file.bytes())]],
            keys: [...back.keys()], urlencoded: [...urlencoded], bad,
        };
    "#);
    assert_eq!(v["multipart"], true);
    // Values are sent as they are, with newlines normalised to CRLF.
    assert_eq!(v["name"], "Ada \"L\"\r\nline");
    assert_eq!(v["tags"], json!(["a", "b"]));
    assert_eq!(v["single"], "1");
    assert_eq!(
        v["file"],
        json!([
            true,
            "data.bin",
            "application/octet-stream",
            [0, 255, 13, 10, 45, 45]
        ])
    );
    assert_eq!(
        v["keys"],
        json!(["name", "tags", "tags", "upload", "single"])
    );
    assert_eq!(
        v["urlencoded"],
        json!([["a", "1"], ["b", "x y"], ["a", "2"]])
    );
    assert_eq!(v["bad"], "TypeError");
}
