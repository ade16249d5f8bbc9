//! Hostile input (issue 24) against the real processes: tenant isolation
//! and role escalation, a JWT corpus, a query corpus and limits. Every
//! answer must be a 4xx JSON error (or a harmless 2xx), never a 5xx, in
//! bounded time, with no side effect in the databases and bounded worker
//! memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use madbase_tenancy::jwt;
use serde_json::{Value, json};

use crate::stack::{Stack, record, rss_kib};

/// Any single hostile request must be answered within this.
const QUICK: Duration = Duration::from_secs(5);

/// Status and JSON body (Null when not JSON), with the time taken.
async fn send(rb: reqwest::RequestBuilder) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let resp = rb
        .send()
        .await
        .expect("a response, not a dropped connection");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("complete body");
    (
        status,
        // Not JSON: the text, so a failing check shows it.
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
        t0.elapsed(),
    )
}

/// Tallies statuses and fails on 5xx or slowness.
#[derive(Default)]
struct Tally {
    sent: u64,
    by_status: BTreeMap<String, u64>,
    slowest: Duration,
}

impl Tally {
    fn check(&mut self, case: &str, (status, body, took): &(u16, Value, Duration)) {
        self.sent += 1;
        *self.by_status.entry(status.to_string()).or_default() += 1;
        self.slowest = self.slowest.max(*took);
        assert!(*status < 500, "{case}: {status} {body}");
        assert!(*took < QUICK, "{case}: took {took:?}");
    }

    fn figures(&self, data: &str) -> Value {
        json!({
            "requests": self.sent,
            "outcomes": self.by_status,
            "errors": self.by_status.iter().filter(|(s, _)| s.starts_with('5')).map(|(_, n)| n).sum::<u64>(),
            "slowest_ms": self.slowest.as_millis() as u64,
            "data": data,
        })
    }
}

/// A careless tenant's function that runs whatever SQL it is given, as
/// the caller (SECURITY INVOKER): what `authenticated` can do through it
/// is what the database lets that role do.
const RUN_SQL: &str = r"
CREATE FUNCTION run_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text; BEGIN EXECUTE q INTO r; RETURN coalesce(r, 'ok'); END $$;
GRANT EXECUTE ON FUNCTION run_sql(text) TO anon, authenticated;
";

/// What tenant B holds and A must never see.
const SECRET_B: &str =
    "CREATE TABLE secret_b (v text); INSERT INTO secret_b VALUES ('tenant-b-secret');";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_are_isolated_and_roles_cannot_escalate() {
    let s = Stack::start(2).await;
    let control = s.control.api_url("");
    let (a, b) = (&s.tenants[0], &s.tenants[1]);
    a.sql(&s.http, &control, RUN_SQL).await;
    b.sql(&s.http, &control, SECRET_B).await;
    let mut tally = Tally::default();

    // A's keys against B.
    for (name, key) in [("anon", &a.anon_key), ("service_role", &a.service_key)] {
        let r = send(s.http.get(s.url(1, "/rest/v1/items")).header("apikey", key)).await;
        tally.check(name, &r);
        assert_eq!(r.0, 401, "A's {name} key against B: {}", r.1);
        let r = send(
            s.http
                .get(s.url(1, "/rest/v1/items"))
                .header("apikey", &b.anon_key)
                .bearer_auth(key),
        )
        .await;
        tally.check(name, &r);
        assert_eq!(r.0, 401, "A's {name} key as bearer on B: {}", r.1);
    }
    // Internal headers sent by the client change nothing: A's path with
    // B named in every internal header still reads A (no secret_b).
    let internal = [
        ("x-madbase-tenant", b.id.as_str()),
        ("x-madbase-role", "service_role"),
        ("x-madbase-tenant-id", b.id.as_str()),
        ("x-madbase-internal", "1"),
        ("x-forwarded-host", "evil.example"),
    ];
    let mut rb = s
        .http
        .get(s.url(0, "/rest/v1/secret_b?select=v"))
        .header("apikey", &a.anon_key);
    for (k, v) in internal {
        rb = rb.header(k, v);
    }
    let r = send(rb).await;
    tally.check("internal headers", &r);
    assert!(
        !r.1.to_string().contains("tenant-b-secret"),
        "B's data via internal headers: {}",
        r.1
    );
    // A has no such table.
    assert_eq!(r.0, 404, "{}", r.1);

    // SQL run as `authenticated` in A: each escalation refused.
    let b_db = s.tenant_database(1);
    let attacks = [
        "SET ROLE service_role",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
        "RESET ROLE",
        "CREATE EXTENSION dblink",
        &format!("SELECT * FROM dblink('dbname={b_db}', 'SELECT v FROM secret_b') AS t(v text)"),
        "CREATE EXTENSION postgres_fdw",
        "CREATE SERVER b FOREIGN DATA WRAPPER postgres_fdw",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY secret_b FROM PROGRAM 'echo pwned'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_read_binary_file('/etc/passwd')::text",
        "SELECT pg_ls_dir('.')::text",
        "SELECT lo_import('/etc/passwd')::text",
        "SELECT lo_export(1, '/tmp/x')::text",
        "ALTER ROLE authenticated SUPERUSER",
        "CREATE ROLE evil SUPERUSER",
        "GRANT service_role TO authenticated",
        &format!("SELECT v FROM {b_db}.public.secret_b"),
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_reload_conf()::text",
        "LOAD 'plpgsql'",
    ];
    let user = a.user_token("00000000-0000-4000-8000-00000000000a");
    for q in attacks {
        let r = send(
            s.http
                .post(s.url(0, "/rest/v1/rpc/run_sql"))
                .header("apikey", &a.anon_key)
                .bearer_auth(&user)
                .json(&json!({ "q": q })),
        )
        .await;
        tally.check(q, &r);
        assert!(
            (400..500).contains(&r.0),
            "as authenticated, {q:?} was not refused: {} {}",
            r.0,
            r.1
        );
        assert!(!r.1.to_string().contains("tenant-b-secret"), "{q}: {}", r.1);
    }
    // SET ROLE inside the transaction's SQL does not outlive it either:
    // the next request is plain `authenticated` (current_user).
    let r = send(
        s.http
            .post(s.url(0, "/rest/v1/rpc/run_sql"))
            .header("apikey", &a.anon_key)
            .bearer_auth(&user)
            .json(&json!({ "q": "SELECT current_user::text" })),
    )
    .await;
    tally.check("current_user", &r);
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1, json!("authenticated"));

    // Nothing changed in the databases.
    let roles =
        s.db.server
            .psql(
                "postgres",
                "SELECT rolname FROM pg_roles WHERE rolsuper ORDER BY 1",
            )
            .expect("roles");
    assert_eq!(roles, "postgres", "superusers: {roles}");
    let exts =
        s.db.server
            .psql(
                &s.tenant_database(0),
                "SELECT count(*) FROM pg_extension WHERE extname IN ('dblink','postgres_fdw')",
            )
            .expect("extensions");
    assert_eq!(exts, "0");
    assert_eq!(s.count_rows(0, ""), 20);
    record(
        "tenant isolation and role escalation",
        tally.figures(&format!(
            "{} escalation statements refused; superusers and extensions unchanged",
            attacks.len()
        )),
    );
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token from raw header and claims JSON, signed with HS256 `secret`
/// whatever the header says.
fn raw_token(header: &str, claims: &str, secret: &[u8]) -> String {
    let signing = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    format!(
        "{signing}.{}",
        b64(&hmac_sha256(secret, signing.as_bytes()))
    )
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_corpus_is_refused_with_401_json() {
    let s = Stack::start(1).await;
    let t = &s.tenants[0];
    let secret = t.jwt_secret.as_bytes();
    let now = jwt::now();
    let good_claims = format!(r#"{{"role":"service_role","exp":{}}}"#, now + 600);
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let mut corpus: Vec<(String, String)> = t
        .bad_keys()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
            b64(good_claims.as_bytes())
        )
    };
    let mut add = |name: &str, token: String| corpus.push((name.to_owned(), token));
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        add(&format!("alg {alg:?} unsigned"), unsigned(alg));
    }
    // HS/RS confusion: RS256 in the header, HMAC'd with the secret.
    for alg in ["RS256", "ES256", "PS256", "EdDSA", "HS384", "HS512"] {
        add(
            &format!("alg {alg} HMAC-signed"),
            raw_token(
                &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
                &good_claims,
                secret,
            ),
        );
    }
    add(
        "wrong secret",
        raw_token(
            hs,
            &good_claims,
            b"another-secret-another-secret-another-secret",
        ),
    );
    add(
        "expired",
        raw_token(
            hs,
            &format!(r#"{{"role":"anon","exp":{}}}"#, now - 60),
            secret,
        ),
    );
    add(
        "nbf in future",
        raw_token(
            hs,
            &format!(r#"{{"role":"anon","nbf":{}}}"#, now + 3600),
            secret,
        ),
    );
    add("missing role", raw_token(hs, r#"{"sub":"x"}"#, secret));
    add("unknown role", raw_token(hs, r#"{"role":"admin"}"#, secret));
    add(
        "role postgres",
        raw_token(hs, r#"{"role":"postgres"}"#, secret),
    );
    add("role number", raw_token(hs, r#"{"role":1}"#, secret));
    add(
        "role array",
        raw_token(hs, r#"{"role":["service_role"]}"#, secret),
    );
    add("role object", raw_token(hs, r#"{"role":{"a":1}}"#, secret));
    add("role null", raw_token(hs, r#"{"role":null}"#, secret));
    add(
        "exp string",
        raw_token(hs, r#"{"role":"anon","exp":"never"}"#, secret),
    );
    add("claims not an object", raw_token(hs, "[1,2]", secret));
    add("claims not JSON", raw_token(hs, "{", secret));
    let good = raw_token(hs, &good_claims, secret);
    add("truncated", good[..good.len() - 5].to_owned());
    add(
        "no signature",
        good[..good.rfind('.').expect("dot")].to_owned(),
    );
    add("signature flipped", {
        let mut t = good.clone();
        let last = t.pop().expect("char");
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    });
    add("four parts", format!("{good}.xyz"));
    add(
        "duplicate alg keys",
        raw_token(
            r#"{"alg":"HS256","alg":"none","typ":"JWT"}"#,
            &good_claims,
            b"x",
        ),
    );
    add(
        "duplicate role keys",
        raw_token(
            hs,
            r#"{"role":"anon","role":"service_role","exp":1}"#,
            secret,
        ),
    );
    for kid in [
        "../../../../dev/null",
        "' OR 1=1 --",
        "\u{0}",
        "http://127.0.0.1:9/k",
    ] {
        add(
            &format!("kid {kid:?}"),
            raw_token(
                &json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string(),
                &good_claims,
                b"",
            ),
        );
    }
    add("empty", String::new());
    add("dots", "..".to_owned());
    add("bad base64", "@@@.@@@.@@@".to_owned());
    add(
        "64 KiB token",
        format!("{}.{}.x", "a".repeat(32 * 1024), "b".repeat(32 * 1024)),
    );
    add(
        "1 MiB token",
        format!("{}.{}.x", "a".repeat(512 * 1024), "b".repeat(512 * 1024)),
    );

    let mut tally = Tally::default();
    let url = s.url(0, "/rest/v1/items?select=id&limit=1");
    for (name, token) in &corpus {
        // As the API key, and as a bearer next to a valid anon key.
        for as_bearer in [false, true] {
            let rb = if as_bearer {
                s.http
                    .get(&url)
                    .header("apikey", &t.anon_key)
                    .header("authorization", format!("Bearer {token}"))
            } else {
                s.http.get(&url).header("apikey", token)
            };
            let r = send(rb).await;
            let case = format!("{name} (bearer: {as_bearer})");
            tally.check(&case, &r);
            if token.len() > 32 * 1024 {
                // Beyond the header limit: refused before any key check.
                assert_eq!(r.0, 431, "{case}: {}", r.1);
            } else {
                assert_eq!(r.0, 401, "{case}: {} {}", r.0, r.1);
                assert!(
                    r.1["message"].is_string(),
                    "{case}: JSON error: {} {:.300}",
                    r.0,
                    r.1
                );
            }
        }
    }
    // The valid key still works (the corpus did not break anything).
    let ok = send(s.http.get(&url).header("apikey", &good)).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    record(
        "JWT corpus",
        tally.figures(&format!(
            "{} tokens, each as apikey and as bearer: 401 JSON (431 over the header limit)",
            corpus.len()
        )),
    );
}

/// Every request of the query corpus: method, path and query (percent
/// encoded as given), extra headers, body.
type Case = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Option<&'static str>,
);

fn query_corpus() -> Vec<Case> {
    let get = |q: &str| ("GET", q.to_owned(), vec![], None);
    let mut cases: Vec<Case> = [
        // select
        "/rest/v1/items?select=id;DROP TABLE items",
        "/rest/v1/items?select=id,(SELECT 1)",
        "/rest/v1/items?select=id::text);DROP TABLE items;--",
        "/rest/v1/items?select=\"id\"\"; DROP TABLE items; --\"",
        "/rest/v1/items?select=pg_sleep(10)",
        "/rest/v1/items?select=*,pg_catalog.pg_authid(*)",
        "/rest/v1/items?select=id->>'a'';DROP TABLE items;--'",
        "/rest/v1/items?select=body->>x%27%3BDROP%20TABLE%20items%3B--",
        "/rest/v1/items?select=id%00,body",
        "/rest/v1/items?select=%FF%FE",
        "/rest/v1/items?select=((((((id",
        "/rest/v1/items?select=id:pg_sleep(1)",
        // filters
        "/rest/v1/items?id=eq.1;DROP TABLE items",
        "/rest/v1/items?id=eq.1%27%20OR%20%271%27=%271",
        "/rest/v1/items?body=eq.x%27);DROP TABLE items;--",
        "/rest/v1/items?body=like.*%00*",
        "/rest/v1/items?body=in.(a,b\",c)",
        "/rest/v1/items?body=fts(english'').x",
        "/rest/v1/items?id=gt.1)%20OR%20(1=1",
        "/rest/v1/items?or=(id.eq.1,id.eq.1);DROP TABLE items",
        "/rest/v1/items?or=(body.eq.\"a\"\"),id.eq.1)",
        "/rest/v1/items?and=(id.eq.1,or(id.eq.2,body.eq.x'))",
        "/rest/v1/items?id=not.eq.1;SELECT",
        "/rest/v1/items?body->>\"x';DROP\"=eq.1",
        "/rest/v1/items?id=eq.%FF",
        "/rest/v1/items?id=is.true;DROP TABLE items",
        "/rest/v1/items?pg_sleep(10)=eq.1",
        "/rest/v1/items?id=cs.{1,2}'",
        // order, limit, offset
        "/rest/v1/items?order=id;DROP TABLE items",
        "/rest/v1/items?order=id.desc,(SELECT 1)",
        "/rest/v1/items?order=\"id\"\".asc",
        "/rest/v1/items?order=id.asc.nullsfirst;--",
        "/rest/v1/items?order=random()",
        "/rest/v1/items?limit=1;DROP TABLE items",
        "/rest/v1/items?limit=-1",
        "/rest/v1/items?offset=99999999999999999999999",
        "/rest/v1/items?limit=1e9",
        // table and schema names
        "/rest/v1/items;DROP TABLE items",
        "/rest/v1/items%22;DROP%20TABLE%20items;--",
        "/rest/v1/pg_catalog.pg_authid",
        "/rest/v1/%2e%2e/%2e%2e/internal/v1/tenants",
        "/rest/v1/..%2f..%2finternal",
        "/rest/v1/information_schema.tables",
        "/rest/v1/%00",
        "/rest/v1/items%FF",
        "/rest/v1/rpc/pg_sleep?seconds=10",
        "/rest/v1/rpc/nap;DROP TABLE items",
        "/rest/v1/rpc/pg_read_file?filename=/etc/passwd",
        "/rest/v1/rpc/nap?ms=1);DROP TABLE items;--",
        "/rest/v1/rpc/nap?ms%22=1",
    ]
    .into_iter()
    .map(get)
    .collect();
    let schema = |p: &'static str, v: &'static str| {
        (
            "GET",
            "/rest/v1/items?select=id".to_owned(),
            vec![(p, v)],
            None,
        )
    };
    cases.push(schema("accept-profile", "pg_catalog"));
    cases.push(schema("accept-profile", "public\";DROP TABLE items;--"));
    cases.push(schema("accept-profile", "auth"));
    cases.push(schema("prefer", "count=exact;DROP TABLE items"));
    cases.push(schema("prefer", "count=estimated\", tx=commit"));
    cases.push(schema("prefer", "tx=rollback'; DROP TABLE items; --"));
    cases.push(schema("prefer", "max-affected=1;DROP"));
    cases.push(schema("prefer", "timezone=UTC';DROP TABLE items;--"));
    cases.push(schema("range", "0-1;DROP"));
    cases.push(schema("range", "99999999999999999999-1"));
    let write = |m: &'static str,
                 p: &'static str,
                 h: Vec<(&'static str, &'static str)>,
                 b: &'static str| { (m, p.to_owned(), h, Some(b)) };
    cases.extend([
        write(
            "POST",
            "/rest/v1/items?columns=body);DROP TABLE items;--",
            vec![],
            r#"{"body":"x"}"#,
        ),
        write(
            "POST",
            "/rest/v1/items?columns=\"body\"\"",
            vec![],
            r#"{"body":"x"}"#,
        ),
        write(
            "POST",
            "/rest/v1/items?on_conflict=id);DROP TABLE items;--",
            vec![("prefer", "resolution=merge-duplicates")],
            r#"{"id":1,"body":"x"}"#,
        ),
        write(
            "POST",
            "/rest/v1/items",
            vec![],
            r#"{"body\"; DROP TABLE items; --":"x"}"#,
        ),
        write(
            "POST",
            "/rest/v1/items",
            vec![],
            r#"{"body":"x", "id": "1; DROP TABLE items"}"#,
        ),
        write("POST", "/rest/v1/items", vec![], "{\"body\":\"\\u0000\"}"),
        write("POST", "/rest/v1/items", vec![], "not json"),
        write(
            "POST",
            "/rest/v1/items",
            vec![("content-type", "text/csv")],
            "body\nx'); DROP TABLE items; --\n",
        ),
        write(
            "POST",
            "/rest/v1/items",
            vec![],
            "[{\"body\":\"x\"},{\"n\":\"y\"}]",
        ),
        write("PATCH", "/rest/v1/items", vec![], r#"{"body":"wiped"}"#),
        write("DELETE", "/rest/v1/items", vec![], ""),
        write(
            "PATCH",
            "/rest/v1/items?id=eq.1",
            vec![],
            r#"{"n":"1; DROP TABLE items"}"#,
        ),
        write(
            "POST",
            "/rest/v1/rpc/nap",
            vec![],
            r#"{"ms\"); DROP TABLE items; --":1}"#,
        ),
        write(
            "POST",
            "/rest/v1/rpc/nap",
            vec![],
            r#"{"ms":"1); DROP TABLE items; --"}"#,
        ),
        write("POST", "/rest/v1/rpc/nap", vec![], r#"{"ms":1,"extra":2}"#),
        write(
            "POST",
            "/rest/v1/rpc/nap",
            vec![("prefer", "params=single-object")],
            r#"{"ms":1}"#,
        ),
        write(
            "POST",
            "/rest/v1/rpc/nap",
            vec![("content-type", "application/x-www-form-urlencoded")],
            "ms=1%27);DROP%20TABLE%20items;--",
        ),
    ]);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_corpus_gives_4xx_and_changes_nothing() {
    let s = Stack::start(1).await;
    let t = &s.tenants[0];
    let control = s.control.api_url("");
    // Row-level security: anon may read, never write (so a PATCH or
    // DELETE without a filter is refused, not a wipe).
    t.sql(
        &s.http,
        &control,
        "REVOKE INSERT, UPDATE, DELETE ON items FROM anon; ALTER TABLE items ENABLE ROW LEVEL SECURITY; CREATE POLICY read ON items FOR SELECT USING (true);",
    )
    .await;
    let before = s
        .db
        .server
        .psql(
            &s.tenant_database(0),
            "SELECT count(*) || ':' || md5(string_agg(id || body || n, ',' ORDER BY id)) FROM items",
        )
        .expect("checksum");
    let tables = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
    let tables_before =
        s.db.server
            .psql(&s.tenant_database(0), tables)
            .expect("tables");
    let mut tally = Tally::default();
    let corpus = query_corpus();
    for (method, path, headers, body) in &corpus {
        // The path as given: reqwest keeps percent escapes, and a raw
        // request carries the invalid bytes.
        let url = s.url(0, path);
        let mut rb = s
            .http
            .request(method.parse().expect("method"), &url)
            .header("apikey", &t.anon_key);
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(*b);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = send(rb).await;
        let case = format!("{method} {path} {headers:?}");
        tally.check(&case, &r);
        // Every refusal is JSON, invalid UTF-8 in the path included (the
        // platform's pipeline answers it before axum's plain-text 400).
        if r.0 >= 400 {
            assert!(
                r.1["message"].is_string(),
                "{case}: JSON error: {} {:.300}",
                r.0,
                r.1
            );
        }
    }
    let after = s
        .db
        .server
        .psql(
            &s.tenant_database(0),
            "SELECT count(*) || ':' || md5(string_agg(id || body || n, ',' ORDER BY id)) FROM items",
        )
        .expect("checksum");
    assert_eq!(before, after, "items changed");
    let tables_after =
        s.db.server
            .psql(&s.tenant_database(0), tables)
            .expect("tables");
    assert_eq!(tables_before, tables_after);
    record(
        "query corpus (worker, via proxy)",
        tally.figures(&format!(
            "{} requests; no 5xx; every refusal JSON (invalid UTF-8 in the path included); items checksum and table count unchanged",
            corpus.len()
        )),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_are_refused_quickly_with_bounded_memory() {
    let s = Stack::start(1).await;
    let t = &s.tenants[0];
    let rss_before = rss_kib(s.worker.pid());
    let proxy_rss_before = rss_kib(s.proxy.pid());
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_obj = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    let in_list = (0..5_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let or_tree = format!("{}id.eq.1{}", "or(".repeat(2_000), ")".repeat(2_000));
    let embeds = vec!["items(id)"; 2_500].join(",");
    let cases: Vec<(&str, reqwest::RequestBuilder, &[u16])> = vec![
        (
            "11 MiB body",
            s.http
                .post(s.url(0, "/rest/v1/items"))
                .body(vec![b' '; 11 << 20]),
            &[413],
        ),
        (
            "64 KiB header",
            s.http
                .get(s.url(0, "/rest/v1/items"))
                .header("x-big", "a".repeat(64 << 10)),
            &[431],
        ),
        (
            "60 KiB URL",
            s.http.get(s.url(
                0,
                &format!("/rest/v1/items?body=eq.{}", "a".repeat(60 << 10)),
            )),
            &[414, 431],
        ),
        (
            "10 000-level nested JSON array",
            s.http
                .post(s.url(0, "/rest/v1/items"))
                .header("content-type", "application/json")
                .body(nested(10_000)),
            &[400],
        ),
        (
            "10 000-level nested JSON object (RPC)",
            s.http
                .post(s.url(0, "/rest/v1/rpc/nap"))
                .header("content-type", "application/json")
                .body(deep_obj(10_000)),
            &[400],
        ),
        (
            "in.() with 5 000 values",
            s.http
                .get(s.url(0, &format!("/rest/v1/items?select=id&id=in.({in_list})"))),
            &[200, 400, 414],
        ),
        (
            "or tree 2 000 deep",
            s.http
                .get(s.url(0, &format!("/rest/v1/items?select=id&or=({or_tree})"))),
            &[400],
        ),
        (
            "select nested 5 000 deep",
            s.http.get(s.url(
                0,
                &format!(
                    "/rest/v1/items?select={}id{}",
                    "a(".repeat(5_000),
                    ")".repeat(5_000)
                ),
            )),
            &[400],
        ),
        (
            "2 500 embedded selects",
            s.http
                .get(s.url(0, &format!("/rest/v1/items?select={embeds}"))),
            &[400, 414],
        ),
    ];
    let mut tally = Tally::default();
    // Beyond what an HTTP client library sends: raw requests.
    let many_embeds = vec!["items(id)"; 10_000].join(",");
    let raw_cases: [(&str, String, &[u16]); 2] = [
        (
            "10 000 embedded selects (100 KiB URL)",
            format!("/t/{}/rest/v1/items?select={many_embeds}", t.id),
            &[414, 431],
        ),
        (
            "1 MiB URL",
            format!("/t/{}/rest/v1/items?x={}", t.id, "a".repeat(1 << 20)),
            &[414, 431],
        ),
    ];
    for (name, target, allowed) in raw_cases {
        let r = raw_get(s.proxy.api, &target, &t.anon_key).await;
        tally.check(name, &r);
        assert!(allowed.contains(&r.0), "{name}: {} {:.300}", r.0, r.1);
    }
    for (name, rb, allowed) in cases {
        let r = send(rb.header("apikey", &t.anon_key)).await;
        tally.check(name, &r);
        assert!(allowed.contains(&r.0), "{name}: {} {:.300}", r.0, r.1);
    }
    let rss_after = rss_kib(s.worker.pid());
    let proxy_rss_after = rss_kib(s.proxy.pid());
    // A normal request still works.
    let ok = send(
        s.http
            .get(s.url(0, "/rest/v1/items?select=id&limit=1"))
            .header("apikey", &t.anon_key),
    )
    .await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let grew =
        rss_after.saturating_sub(rss_before) + proxy_rss_after.saturating_sub(proxy_rss_before);
    assert!(grew < 256 << 10, "worker+proxy RSS grew {grew} KiB");
    let mut figures = tally.figures(&format!(
        "worker RSS {rss_before} -> {rss_after} KiB, proxy RSS {proxy_rss_before} -> {proxy_rss_after} KiB"
    ));
    figures["rss_growth_kib"] = json!(grew);
    record("limits (oversize and deep input)", figures);
}

/// A GET written byte for byte on a fresh connection (`Connection:
/// close`), for targets no client library sends: status and body.
async fn raw_get(addr: std::net::SocketAddr, target: &str, apikey: &str) -> (u16, Value, Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t0 = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET {target} HTTP/1.1\r\nhost: {addr}\r\napikey: {apikey}\r\nconnection: close\r\n\r\n"
    );
    // The server may answer and close before reading it all.
    let _ = conn.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(QUICK, conn.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {:.300}", text));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
        t0.elapsed(),
    )
}
