//! The fuzz targets: each a function of arbitrary bytes that must never
//! panic or hang. Bytes reach the parsers the way the services hand them
//! over: query strings as text (lossily converted: `http::Uri` admits only
//! ASCII, so any real query string is among these), header values through
//! [`HeaderValue::from_bytes`] (what hyper would refuse never reaches a
//! service), frames as raw bytes.

use http::{HeaderMap, HeaderValue};
use madbase_js::protocol::{self, FrameError, FromWorker, Outcome, ToWorker};
use madbase_tenancy::jwt::{self, JwtError};
use madbase_tenancy::{ApiKey, Refusal, Surface};
use madbase_worker::prefer::{Prefer, Reported};
use madbase_worker::query::{self, Cond, Op, SelectItem};

use crate::runner::{Outcomes, Target};

/// Every target, in the order the binary runs them.
pub const ALL: &[Target] = &[QUERY, SELECT, PREFER, JWT, FRAME];

/// The target named `name`.
pub fn by_name(name: &str) -> Option<Target> {
    ALL.iter().copied().find(|t| t.name == name)
}

/// The worker's whole query string: [`query::parse`].
pub const QUERY: Target = Target {
    name: "query",
    run: query_string,
    dictionary: GRAMMAR,
    max_len: 4096,
};

/// The select grammar and the filter, order and field grammars:
/// [`query::parse_select`], [`query::parse_filter`], [`query::parse_order`],
/// [`query::parse_field`].
pub const SELECT: Target = Target {
    name: "select",
    run: select_and_filter,
    dictionary: GRAMMAR,
    max_len: 4096,
};

/// The `Prefer` header: [`Prefer::from_headers`] and what the services ask
/// of it. One header value per line.
pub const PREFER: Target = Target {
    name: "prefer",
    run: prefer,
    dictionary: PREFER_WORDS,
    max_len: 2048,
};

/// Key extraction and verification: [`ApiKey::from_headers`] on each
/// surface, then each key verified with a fixed tenant secret; the first
/// line is `Authorization`, the second `apikey`. An input that is JSON is
/// also signed with the secret as claims and verified (the claim checks
/// after the signature).
pub const JWT: Target = Target {
    name: "jwt",
    run: keys,
    dictionary: JWT_TOKENS,
    max_len: 4096,
};

/// The functions request bridge: frames decoded by
/// [`protocol::read_frame`] as the worker reads invocations and the host
/// reads replies, and re-encoded.
pub const FRAME: Target = Target {
    name: "frame",
    run: frame,
    dictionary: FRAME_TOKENS,
    max_len: 4096,
};

const GRAMMAR: &[&[u8]] = &[
    b"select=",
    b"&",
    b"=",
    b",",
    b"(",
    b")",
    b".",
    b":",
    b"::",
    b"->",
    b"->>",
    b"\"",
    b"\\",
    b"!inner",
    b"!left",
    b"!hint",
    b"...",
    b"*",
    b"{",
    b"}",
    b"%",
    b"%00",
    b"%FF",
    b"%2C",
    b"%22",
    b"+",
    b"or=(",
    b"and=(",
    b"not.or=(",
    b"and(",
    b"or(",
    b"not.",
    b"eq.",
    b"neq.",
    b"gt.",
    b"gte.",
    b"lt.",
    b"lte.",
    b"like.",
    b"ilike.",
    b"match.",
    b"imatch.",
    b"in.(",
    b"is.",
    b"null",
    b"true",
    b"false",
    b"unknown",
    b"isdistinct.",
    b"cs.",
    b"cd.",
    b"ov.",
    b"sl.",
    b"sr.",
    b"nxr.",
    b"nxl.",
    b"adj.",
    b"fts.",
    b"plfts.",
    b"phfts.",
    b"wfts.",
    b"fts(english).",
    b"(any).",
    b"(all).",
    b"like(any).",
    b"eq(all).",
    b"order=",
    b".asc",
    b".desc",
    b".nullsfirst",
    b".nullslast",
    b"limit=",
    b"offset=",
    b"on_conflict=",
    b"columns=",
    b"count()",
    b".sum()",
    b".avg()",
    b".max()",
    b".min()",
    b".count()",
    b"::text",
    b"::int",
    b"alias:",
    b"embed(",
    b"a.b.c.",
    b"\0",
    b"\xff",
    b"\xc3\xa9",
    b"9223372036854775808",
    b"-1",
];

const PREFER_WORDS: &[&[u8]] = &[
    b"return=representation",
    b"return=minimal",
    b"return=headers-only",
    b"count=exact",
    b"count=planned",
    b"count=estimated",
    b"resolution=merge-duplicates",
    b"resolution=ignore-duplicates",
    b"missing=default",
    b"missing=null",
    b"handling=strict",
    b"handling=lenient",
    b"tx=commit",
    b"tx=rollback",
    b"params=single-object",
    b"timezone=",
    b"timezone=UTC",
    b"timezone=Europe/Paris",
    b"max-affected=",
    b"max-affected=-1",
    b",",
    b", ",
    b"\n",
    b"=",
    b" ",
    b"\t",
    b"\x80",
    b"\xff",
    b"9223372036854775808",
];

const JWT_TOKENS: &[&[u8]] = &[
    b".",
    b"..",
    b"eyJ",
    b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
    b"eyJhbGciOiJub25lIn0.",
    b"eyJhbGciOiJSUzI1NiJ9.",
    b"Bearer ",
    b"bearer ",
    b"BEARER  ",
    b"Basic ",
    b"\n",
    b" ",
    b"\t",
    b"=",
    b"==",
    b"-",
    b"_",
    b"+",
    b"/",
    b"A",
    b"AAAA",
    b"alg",
    b"none",
    b"HS256",
    b"typ",
    b"JWT",
    b"{\"role\":\"anon\"}",
    b"{\"role\":\"service_role\"}",
    b"\"role\":",
    b"\"exp\":",
    b"\"nbf\":",
    b"\"ref\":",
    b"\"acme\"",
    b"\"authenticated\"",
    b"\"postgres\"",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"null",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b",",
    b":",
];

const FRAME_TOKENS: &[&[u8]] = &[
    b"\0\0\0\0",
    b"\0\0\0\x01",
    b"\0\0\0\x10",
    b"\xff\xff\xff\xff",
    b"\0\x80\0\0",
    b"\0\x80\0\x01",
    b"\x04\0\0\0",
    b"\x04\0\0\x01",
    b"{\"type\":\"invoke\"",
    b"{\"type\":\"reply\"",
    b"\"type\":",
    b"\"kind\":\"response\"",
    b"\"kind\":\"need_source\"",
    b"\"kind\":\"error\"",
    b"\"error\":",
    b"\"exception\"",
    b"\"cpu_limit\"",
    b"\"bytecode_len\":",
    b"\"source\":",
    b"\"id\":",
    b"\"key\":",
    b"\"limits\":",
    b"\"headers\":",
    b"\"env\":",
    b"\"logs\":",
    b"\"status\":",
    b"\"fetch_allow\":",
    b"null",
    b"true",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\\u0000",
    b"\\ud800",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-1",
    b"65536",
    b"1e999",
    b"1.5",
];

/// `select=`-shaped outcomes, depth-first.
fn note_select(items: &[SelectItem], depth: usize, out: &mut Outcomes) {
    for item in items {
        match item {
            SelectItem::Star => out.note(("star", depth)),
            SelectItem::Column {
                field,
                cast,
                alias,
                agg,
                agg_cast,
            } => out.note((
                "column",
                depth,
                field.json.len().min(3),
                field.json.last().map(|s| s.text),
                cast.is_some(),
                alias.is_some(),
                agg.map(|a| a.name()),
                agg_cast.is_some(),
            )),
            SelectItem::Embed(e) => {
                out.note((
                    "embed",
                    depth,
                    e.alias.is_some(),
                    e.hint.is_some(),
                    e.inner,
                    e.spread,
                ));
                note_select(&e.select, depth + 1, out);
            }
        }
    }
}

fn note_op(op: &Op, out: &mut Outcomes) {
    match op {
        Op::Cmp(o, v) => out.note(("cmp", *o, v.is_empty())),
        Op::Like(ci, _) => out.note(("like", *ci)),
        Op::Match(ci, _) => out.note(("match", *ci)),
        Op::Quant { op, all, .. } => out.note(("quant", format!("{op:?}"), *all)),
        Op::In(v) => out.note(("in", v.len().min(4))),
        Op::Is(v) => out.note(("is", *v)),
        Op::IsDistinct(_) => out.note("isdistinct"),
        Op::Fts(o, lang, _) => out.note(("fts", *o, lang.is_some())),
    }
}

fn note_cond(cond: &Cond, depth: usize, out: &mut Outcomes) {
    match cond {
        Cond::Filter(f) => {
            out.note(("filter", depth.min(8), f.negate, f.field.json.len().min(3)));
            note_op(&f.op, out);
        }
        Cond::Tree { or, negate, items } => {
            out.note(("tree", depth.min(8), *or, *negate, items.len().min(4)));
            for item in items {
                note_cond(item, depth + 1, out);
            }
        }
    }
}

fn note_err(what: &str, e: &query::ParseError, out: &mut Outcomes) {
    // The message, not the details (they quote the input).
    out.note((what, e.message.as_str()));
}

fn query_string(data: &[u8], out: &mut Outcomes) {
    let raw = String::from_utf8_lossy(data);
    let is_arg = |k: &str| matches!(k, "a" | "b" | "name" | "id");
    match query::parse(&raw, &is_arg) {
        Ok(q) => {
            // One note per part: new combinations of known parts are not new.
            out.note(("select", q.select.is_some()));
            out.note(("conds", q.conds.len().min(4)));
            out.note(("orders", q.orders.len().min(4)));
            out.note(("limits", q.limits.len().min(2), q.offsets.len().min(2)));
            out.note((
                "on_conflict",
                q.on_conflict.as_ref().map(|c| c.len().min(3)),
            ));
            out.note(("columns", q.columns.as_ref().map(|c| c.len().min(3))));
            out.note(("args", q.args.len().min(3)));
            if let Some(select) = &q.select {
                note_select(select, 0, out);
            }
            for (path, cond) in &q.conds {
                out.note(("path", path.len().min(4)));
                note_cond(cond, 0, out);
            }
        }
        Err(e) => note_err("query", &e, out),
    }
}

fn select_and_filter(data: &[u8], out: &mut Outcomes) {
    let text = String::from_utf8_lossy(data);
    match query::parse_select(&text) {
        Ok(items) => note_select(&items, 0, out),
        Err(e) => note_err("select", &e, out),
    }
    match query::parse_order(&text) {
        Ok(terms) => out.note((
            "order",
            terms.len().min(4),
            terms
                .first()
                .map(|t| (t.relation.is_some(), t.desc, t.nulls_first)),
        )),
        Err(e) => note_err("order", &e, out),
    }
    // `field=filter` as in a query string; the whole input as the filter
    // of a plain column otherwise.
    let (field, value) = text.split_once('=').unwrap_or(("col", &text));
    match query::parse_field(field) {
        Ok(field) => {
            out.note(("field", field.json.len().min(3)));
            for in_tree in [false, true] {
                match query::parse_filter(field.clone(), value, in_tree) {
                    Ok(f) => note_cond(&Cond::Filter(f), usize::from(in_tree), out),
                    Err(e) => note_err(if in_tree { "tree filter" } else { "filter" }, &e, out),
                }
            }
        }
        Err(e) => note_err("field", &e, out),
    }
}

/// One header value per line; values hyper would refuse are left out.
fn header_lines(data: &[u8]) -> Vec<HeaderValue> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect()
}

fn prefer(data: &[u8], out: &mut Outcomes) {
    let mut headers = HeaderMap::new();
    for value in header_lines(data) {
        headers.append("prefer", value);
    }
    let mut p = Prefer::from_headers(&headers);
    p.resolve_timezone(|tz| tz == "UTC" || tz.starts_with("Europe/"));
    for word in [
        format!("{:?}", p.ret),
        format!("{:?}", p.count),
        format!("{:?}", p.resolution),
        format!("{:?}", p.missing),
        format!("{:?}", p.handling),
        format!("{:?}", p.tx),
        format!("{:?}", p.params),
    ] {
        out.note(word);
    }
    out.note((
        p.timezone.is_some(),
        p.max_affected().map(i64::signum),
        p.check().is_err(),
    ));
    out.note(p.count_plan(Some(10)));
    out.note(p.settle_count(Some(11), Some(7), Some(10)));
    for reported in [
        Reported::default(),
        Reported {
            params: true,
            resolution: true,
            missing: true,
            ret: true,
            max_affected: true,
        },
    ] {
        out.note(p.applied(reported).map(|v| v.len().min(64)));
    }
}

/// The tenant secret the `jwt` target verifies with (the corpus has tokens
/// signed with it).
pub const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";
/// The tenant the `jwt` target verifies for.
pub const TENANT: &str = "acme";

fn note_jwt(what: &str, e: &JwtError, out: &mut Outcomes) {
    match e {
        // The message up to where it would quote the input.
        JwtError::Malformed(m) => {
            let head: String = m
                .split(" at line")
                .next()
                .unwrap_or_default()
                .chars()
                .take_while(|c| !matches!(c, '"' | '`'))
                .filter(|c| !c.is_ascii_digit())
                .take(40)
                .collect();
            out.note((what, "malformed", head));
        }
        other => out.note((what, format!("{other:?}"))),
    }
}

fn note_claims(claims: &serde_json::Map<String, serde_json::Value>, out: &mut Outcomes) {
    // Accepted only with an API role and numeric time claims.
    let role = claims.get("role").and_then(|r| r.as_str());
    assert!(
        role.is_some_and(|r| jwt::API_ROLES.contains(&r)),
        "a token was accepted with role {role:?}"
    );
    for c in ["exp", "nbf"] {
        assert!(
            claims.get(c).is_none_or(serde_json::Value::is_number),
            "a token was accepted with a non-numeric {c}"
        );
    }
    out.note(("accepted", role, claims.len().min(8)));
}

fn keys(data: &[u8], out: &mut Outcomes) {
    let mut lines = header_lines(data).into_iter();
    let mut headers = HeaderMap::new();
    if let Some(v) = lines.next() {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    if let Some(v) = lines.next() {
        headers.insert("apikey", v);
    }
    for surface in [Surface::Gateway, Surface::DataApi, Surface::Functions] {
        let keys = ApiKey::from_headers(&headers, surface);
        out.note((format!("{surface:?}"), keys.len()));
        let cache = jwt::VerifiedTokens::default();
        match madbase_tenancy::caller::check_keys(&cache, SECRET, TENANT, &keys) {
            None => out.note("no key"),
            Some(Ok(claims)) => out.note(("verified", format!("{:?}", claims.role))),
            Some(Err(Refusal::InvalidKey { source, error })) => {
                note_jwt(&format!("{surface:?} {source:?}"), &error, out);
            }
            Some(Err(other)) => out.note(format!("{other:?}")),
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Some(token) = jwt::bearer(&text) {
        out.note(("bearer", token.len().min(4)));
    }
    match jwt::verify_tenant_token(SECRET, TENANT, &text) {
        Ok(claims) => note_claims(&claims, out),
        Err(e) => note_jwt("raw", &e, out),
    }
    // Claims of any shape, signed: the checks after the signature.
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) {
        let token = jwt::sign(SECRET.as_bytes(), &claims);
        match jwt::verify_tenant_token(SECRET, TENANT, &token) {
            Ok(claims) => note_claims(&claims, out),
            Err(e) => note_jwt("signed", &e, out),
        }
    }
}

fn note_frame_err(what: &str, e: &FrameError, out: &mut Outcomes) {
    match e {
        FrameError::HeaderTooLarge(_) => out.note((what, "header too large")),
        FrameError::BodyTooLarge(_) => out.note((what, "body too large")),
        FrameError::Json(e) => {
            // serde's message without where, nor what it quotes of the input
            // (field names are the protocol's own).
            let text = e.to_string();
            let text = text.split(" at line").next().unwrap_or_default();
            let head = if text.starts_with("missing field") || text.starts_with("duplicate field") {
                text
            } else {
                text.split(['`', '"']).next().unwrap_or_default()
            };
            out.note((what, "json", format!("{:?}", e.classify()), head.to_owned()));
        }
        FrameError::Io(e) => out.note((what, "io", format!("{:?}", e.kind()))),
        FrameError::Trailer(e) => out.note((what, "trailer", e.clone())),
    }
}

/// Up to four frames of type `T` from `bytes`; each decoded frame is
/// encoded again and must decode to the same encoding.
fn frames<T>(what: &str, bytes: &[u8], out: &mut Outcomes, shape: fn(&T, &[u8], &mut Outcomes))
where
    T: protocol::Frame,
{
    let mut cursor = std::io::Cursor::new(bytes);
    for n in 0..4 {
        match protocol::read_frame::<T, _>(&mut cursor) {
            Ok(None) => {
                out.note((what, n, "end"));
                return;
            }
            Ok(Some((msg, body))) => {
                shape(&msg, &body, out);
                let again = protocol::encode(&msg, &body);
                let Ok(again) = again else {
                    panic!("a decoded {what} frame does not encode again");
                };
                match protocol::read_frame::<T, _>(&mut std::io::Cursor::new(&again)) {
                    Ok(Some((back, back_body))) => assert!(
                        back_body == body
                            && protocol::encode(&back, &back_body).ok().as_ref() == Some(&again),
                        "a {what} frame does not round-trip"
                    ),
                    _ => panic!("a re-encoded {what} frame does not decode"),
                }
            }
            Err(e) => {
                note_frame_err(what, &e, out);
                return;
            }
        }
    }
}

fn invoke_shape(msg: &ToWorker, body: &[u8], out: &mut Outcomes) {
    let ToWorker::Invoke(i) = msg;
    out.note((
        "invoke",
        i.source.is_some(),
        i.bytecode_len.map(|n| n as usize <= body.len()),
        i.env.as_ref().map(|e| e.len().min(2)),
        i.headers.len().min(2),
        i.fetch_allow.len().min(2),
        body.is_empty(),
    ));
}

fn reply_shape(msg: &FromWorker, body: &[u8], out: &mut Outcomes) {
    let FromWorker::Reply(r) = msg;
    let outcome = match &r.outcome {
        Outcome::Response { status, headers } => {
            format!("response {} {}", status / 100, headers.len().min(2))
        }
        Outcome::NeedSource => "need source".to_owned(),
        Outcome::Error { error, .. } => format!("error {error:?}"),
    };
    out.note((
        "reply",
        outcome,
        r.cold,
        r.logs.len().min(2),
        body.is_empty(),
    ));
}

fn frame(data: &[u8], out: &mut Outcomes) {
    // As sent: the host's frames to a worker, a worker's replies to the host.
    frames::<ToWorker>("invoke", data, out, invoke_shape);
    frames::<FromWorker>("reply", data, out, reply_shape);
    // The same bytes behind a prefix that fits them (header up to the first
    // NUL, the rest the body), so mutations reach the JSON decoding.
    let (header, body) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[data.len()..]),
    };
    let mut framed = Vec::with_capacity(8 + data.len());
    framed.extend_from_slice(&(header.len() as u32).to_be_bytes());
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(header);
    framed.extend_from_slice(body);
    frames::<ToWorker>("framed invoke", &framed, out, invoke_shape);
    frames::<FromWorker>("framed reply", &framed, out, reply_shape);
}
