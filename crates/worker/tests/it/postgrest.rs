//! PostgREST 12 conformance, organised by the sections of PostgREST's
//! documentation (API → tables and views → operators, Prefer header,
//! upsert, bulk insert, transactions, errors). Expected statuses, headers
//! and error bodies are PostgREST's own (read from its source,
//! `src/PostgREST/Error.hs`, `Response.hs`, `ApiRequest/Preferences.hs`).

use http::{HeaderMap, Method};
use serde_json::{Value, json};

use crate::helpers::*;

/// Extra tables for these tests (created before the first request, so the
/// schema cache sees them).
const EXTRA: &str = r#"
CREATE TABLE defaults_t (
  id serial PRIMARY KEY,
  name text NOT NULL,
  qty int NOT NULL DEFAULT 7,
  note text DEFAULT 'none',
  tags text[] DEFAULT '{a,b}'
);
CREATE TABLE nokey (a int, b text);
CREATE TABLE ranges (id int PRIMARY KEY, r int4range, d daterange, arr int[], doc text, vec tsvector);
INSERT INTO ranges VALUES
  (1, '[1,5)', '[2020-01-01,2020-02-01)', '{1,2,3}', 'The quick brown fox jumps', to_tsvector('english', 'The quick brown fox jumps')),
  (2, '[5,10)', '[2020-02-01,2020-03-01)', '{3,4}', 'Lazy dogs sleep all day', to_tsvector('english', 'Lazy dogs sleep all day')),
  (3, '[20,30)', NULL, '{}', 'quick thinking saves the day', to_tsvector('english', 'quick thinking saves the day')),
  (4, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE events (id int PRIMARY KEY, at timestamptz);
INSERT INTO events VALUES (1, '2020-01-01 00:00:00+00');
CREATE TABLE tri (id int PRIMARY KEY, b boolean, n int);
INSERT INTO tri VALUES (1, true, 1), (2, false, NULL), (3, NULL, 3);
CREATE FUNCTION echo_obj(payload json) RETURNS json LANGUAGE sql IMMUTABLE AS $$ SELECT payload $$;
CREATE FUNCTION echo_raw(jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
CREATE FUNCTION over(a int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a $$;
CREATE FUNCTION over(a int, b int DEFAULT 0) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
CREATE FUNCTION bump(n int) RETURNS int LANGUAGE sql VOLATILE AS
  $$ UPDATE items SET price = price + n WHERE id = 1 RETURNING price::int $$;
"#;

async fn stack() -> Stack {
    let s = Stack::start().await;
    s.sql(EXTRA).await;
    s
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

async fn ids_of(s: &Stack, table: &str, q: &str) -> Vec<i64> {
    let (st, v) = call(s.get(&format!("/{table}?select=id&order=id&{q}"))).await;
    assert_eq!(st, 200, "{q}: {v}");
    ids(&v)
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect()
}

fn applied(h: &HeaderMap) -> Option<&str> {
    h.get("preference-applied").and_then(|v| v.to_str().ok())
}

/// An error body with exactly PostgREST's keys and these values.
#[track_caller]
fn assert_body(got: &(http::StatusCode, Value), status: u16, body: Value) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1, body);
}

/// API → Tables and Views → Operator modifiers `(any)` / `(all)`.
#[tokio::test]
async fn operators_any_all() {
    let s = stack().await;
    let get = |q: &str| call(s.get(&format!("/users?select=name&order=name&{q}")));
    assert_eq!(
        names(&get("name=like(any).{a*,b*}").await.1),
        ["alice", "bob"]
    );
    assert_eq!(names(&get("name=like(any).{a*,z*}").await.1), ["alice"]);
    assert_eq!(names(&get("name=like(all).{a*,*e}").await.1), ["alice"]);
    assert_eq!(
        names(&get("name=like(all).{a*,*b}").await.1),
        Vec::<&str>::new()
    );
    assert_eq!(names(&get("name=ilike(any).{A*,Z*}").await.1), ["alice"]);
    assert_eq!(names(&get("name=ilike(all).{*L*,*C*}").await.1), ["alice"]);
    assert_eq!(names(&get("name=match(any).{^a,^z}").await.1), ["alice"]);
    assert_eq!(names(&get("name=imatch(all).{^A,E$}").await.1), ["alice"]);
    assert_eq!(names(&get("name=eq(any).{bob,carol}").await.1), ["bob"]);
    assert_eq!(names(&get("name=not.like(any).{a*}").await.1), ["bob"]);
    // Inside logic trees, where the array's commas are not separators.
    assert_eq!(
        names(&get("or=(name.like(any).{a*,z*},name.eq.nobody)").await.1),
        ["alice"]
    );
    assert_eq!(
        names(&get("and=(name.ilike(all).{*B*,*O*},name.neq.x)").await.1),
        ["bob"]
    );

    let get = |q: &str| call(s.get(&format!("/items?select=id&order=id&{q}")));
    assert_eq!(ids(&get("id=eq(any).{1,3}").await.1), [1, 3]);
    assert_eq!(ids(&get("id=gt(all).{27,28}").await.1), [29, 30]);
    assert_eq!(ids(&get("id=gte(any).{29,30}").await.1), [29, 30]);
    assert_eq!(ids(&get("id=lt(any).{2,3}").await.1), [1, 2]);
    assert_eq!(ids(&get("id=lte(all).{2,3}").await.1), [1, 2]);
    assert_eq!(ids(&get("price=eq(any).{1.5,3.0}").await.1), [1, 2]);
    assert_eq!(ids(&get("data->>n=eq(any).{4,5}").await.1), [4, 5]);
    // A value that is not the column's type is Postgres' error, as in PostgREST.
    assert_err(&get("id=eq(any).{1,x}").await, 400, "22P02");
    // `neq` takes no modifier.
    assert_err(&get("id=neq(any).{1,2}").await, 400, "PGRST100");
}

/// Prefer header → strict/lenient handling, Preference-Applied.
#[tokio::test]
async fn prefer_handling() {
    let s = stack().await;
    for (method, path, body) in [
        (Method::GET, "/items?id=eq.1", json!({})),
        (Method::POST, "/items", json!({"id": 1, "name": "x"})),
        (Method::PATCH, "/items?id=eq.1", json!({"name": "x"})),
        (Method::DELETE, "/items?id=eq.1", json!({})),
        (Method::POST, "/rpc/add", json!({"a": 1, "b": 2})),
    ] {
        let got = call(
            s.req(method, path)
                .header("Prefer", "handling=strict, anything, count=wrong")
                .json(&body),
        )
        .await;
        assert_body(
            &got,
            400,
            json!({
                "code": "PGRST122",
                "message": "Invalid preferences given with handling=strict",
                "details": "Invalid preferences: anything, count=wrong",
                "hint": null,
            }),
        );
    }
    // Nothing happened.
    let (_, v) = call(s.get("/items?id=eq.1&select=id")).await;
    assert_eq!(ids(&v), [1]);

    // Lenient (and the default) ignores what it does not know.
    let (st, h, v) = send(
        s.get("/items?id=eq.1&select=id")
            .header("Prefer", "handling=lenient, anything"),
    )
    .await;
    assert_eq!((st.as_u16(), ids(&v)), (200, vec![1]));
    assert_eq!(applied(&h), Some("handling=lenient"));
    let (st, h, _) = send(s.get("/items?id=eq.1").header("Prefer", "anything")).await;
    assert_eq!((st.as_u16(), applied(&h)), (200, None));
    // Known preferences pass in strict mode; the first of a kind wins;
    // Preference-Applied lists what the request used, in PostgREST's order.
    let (st, h, _) = send(
        s.get("/items?id=lt.3")
            .header("Prefer", "count=exact, handling=strict")
            .header("Prefer", "count=planned, tx=commit"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(applied(&h), Some("count=exact, tx=commit, handling=strict"));
    assert_eq!(range(&h), "0-1/2");
    let (st, h, _) = send(
        s.req(Method::POST, "/items")
            .header(
                "Prefer",
                "return=representation, missing=default, resolution=ignore-duplicates",
            )
            .json(&json!({"id": 1, "name": "x"})),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(
        applied(&h),
        Some("resolution=ignore-duplicates, missing=default, return=representation")
    );
    let (st, h, _) = send(
        s.req(Method::DELETE, "/items?id=eq.30")
            .header("Prefer", "return=minimal, max-affected=5"),
    )
    .await;
    // max-affected is applied (and reported) only with handling=strict.
    assert_eq!((st.as_u16(), applied(&h)), (204, Some("return=minimal")));
    let (st, h, _) = send(
        s.req(Method::DELETE, "/items?id=eq.29")
            .header("Prefer", "handling=strict, max-affected=5"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), applied(&h)),
        (204, Some("handling=strict, max-affected=5"))
    );
}

/// Prefer header → max-affected.
#[tokio::test]
async fn prefer_max_affected() {
    let s = stack().await;
    let strict = |n: u32| format!("handling=strict, max-affected={n}");
    let too_many = |n: u32| {
        json!({
            "code": "PGRST124",
            "message": "Query result exceeds max-affected preference constraint",
            "details": format!("The query affects {n} rows"),
            "hint": null,
        })
    };
    assert_body(
        &call(
            s.req(Method::PATCH, "/items?id=lt.5")
                .header("Prefer", strict(3))
                .json(&json!({"name": "changed"})),
        )
        .await,
        400,
        too_many(4),
    );
    assert_body(
        &call(
            s.req(Method::PATCH, "/items?id=lt.5&select=id")
                .header("Prefer", format!("{}, return=representation", strict(2)))
                .json(&json!({"name": "changed"})),
        )
        .await,
        400,
        too_many(4),
    );
    assert_body(
        &call(
            s.req(Method::DELETE, "/items?id=gt.25")
                .header("Prefer", strict(4)),
        )
        .await,
        400,
        too_many(5),
    );
    // Nothing changed.
    let (_, v) = call(s.get("/items?select=id,name&id=lt.5&order=id")).await;
    assert!(
        v.as_array()
            .expect("rows")
            .iter()
            .all(|r| r["name"] != "changed"),
        "{v}"
    );
    let (_, v) = call(s.get("/items?select=id&id=gt.25")).await;
    assert_eq!(ids(&v).len(), 5);
    // Within the limit, or without handling=strict: applied.
    let (st, _) = call(
        s.req(Method::PATCH, "/items?id=lt.5")
            .header("Prefer", strict(4))
            .json(&json!({"name": "changed"})),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = call(
        s.req(Method::DELETE, "/items?id=gt.25")
            .header("Prefer", "max-affected=1"),
    )
    .await;
    assert_eq!(st, 204);
    let (_, v) = call(s.get("/items?select=id&or=(id.gt.25,name.eq.changed)&order=id")).await;
    assert_eq!(ids(&v), [1, 2, 3, 4]);
}

/// Upsert: `resolution=merge-duplicates|ignore-duplicates`, status 201 when
/// a row was inserted and 200 when merge-duplicates only updated.
#[tokio::test]
async fn upsert() {
    let s = stack().await;
    let merge = "resolution=merge-duplicates, return=representation";
    let post = |q: &str, prefer: &str, body: Value| {
        send(
            s.req(Method::POST, &format!("/items{q}"))
                .header("Prefer", prefer.to_owned())
                .json(&body),
        )
    };
    // Every row exists: 200.
    let (st, h, v) = post(
        "?select=id,name",
        merge,
        json!([{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (
            200,
            json!([{"id": 1, "name": "one"}, {"id": 2, "name": "two"}])
        )
    );
    assert_eq!(
        applied(&h),
        Some("resolution=merge-duplicates, return=representation")
    );
    // One new row: 201.
    let (st, _, v) = post(
        "?select=id,name",
        merge,
        json!([{"id": 3, "name": "three"}, {"id": 40, "name": "forty"}]),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (
            201,
            json!([{"id": 3, "name": "three"}, {"id": 40, "name": "forty"}])
        )
    );
    // Minimal: the same statuses, no body.
    let (st, _, v) = post(
        "",
        "resolution=merge-duplicates",
        json!({"id": 3, "name": "3"}),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, Value::Null));
    let (st, _, v) = post(
        "",
        "resolution=merge-duplicates",
        json!({"id": 41, "name": "41"}),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, Value::Null));
    // A key-only body: the existing row is returned unchanged (on a table
    // whose other columns may be NULL: NOT NULL is checked before conflicts).
    let (st, _, v) = send(
        s.req(Method::POST, "/tri?select=id,b,n")
            .header("Prefer", merge)
            .json(&json!({"id": 1})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"id": 1, "b": true, "n": 1}]))
    );
    // on_conflict on a unique column: the conflicting row takes every sent column.
    let (st, _, v) = post(
        "?on_conflict=code&select=id,name,code",
        merge,
        json!({"id": 500, "code": "c5", "name": "by code"}),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"id": 500, "name": "by code", "code": "c5"}]))
    );
    // ignore-duplicates: 201, only the inserted rows come back.
    let (st, h, v) = post(
        "?select=id,name",
        "resolution=ignore-duplicates, return=representation",
        json!([{"id": 1, "name": "ignored"}, {"id": 42, "name": "new"}]),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, json!([{"id": 42, "name": "new"}])));
    assert_eq!(
        applied(&h),
        Some("resolution=ignore-duplicates, return=representation")
    );
    let (st, _, v) = post(
        "?select=id",
        "resolution=ignore-duplicates, return=representation",
        json!([{"id": 1, "name": "ignored"}]),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, json!([])));
    let (_, v) = call(s.get("/items?select=id,name&id=in.(1,2,3,40,41,42)&order=id")).await;
    assert_eq!(
        v,
        json!([{"id": 1, "name": "one"}, {"id": 2, "name": "two"}, {"id": 3, "name": "3"},
               {"id": 40, "name": "forty"}, {"id": 41, "name": "41"}, {"id": 42, "name": "new"}])
    );
    // A table without a primary key and no on_conflict: a plain insert,
    // and the resolution is not reported as applied.
    let (st, h, _) = send(
        s.service(Method::POST, "/nokey")
            .header("Prefer", "resolution=merge-duplicates")
            .json(&json!({"a": 1, "b": "x"})),
    )
    .await;
    assert_eq!((st.as_u16(), applied(&h)), (201, None));
}

/// Bulk insert → `Prefer: missing=default`.
#[tokio::test]
async fn missing_default() {
    let s = stack().await;
    let (st, h, v) = send(
        s.service(
            Method::POST,
            "/defaults_t?columns=name,qty,note,tags&select=name,qty,note,tags",
        )
        .header("Prefer", "missing=default, return=representation")
        .json(&json!([
            {"name": "a"},
            {"name": "b", "qty": 1, "note": null, "tags": ["z"]},
            {"name": "c", "note": "set"}
        ])),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v,
        json!([
            {"name": "a", "qty": 7, "note": "none", "tags": ["a", "b"]},
            {"name": "b", "qty": 1, "note": null, "tags": ["z"]},
            {"name": "c", "qty": 7, "note": "set", "tags": ["a", "b"]}
        ])
    );
    assert_eq!(applied(&h), Some("missing=default, return=representation"));
    // The serial key took its default for each row.
    let (_, v) = call(s.service(Method::GET, "/defaults_t?select=id&order=id")).await;
    assert_eq!(ids(&v), [1, 2, 3]);
    // A single object.
    let (st, v) = call(
        s.service(Method::POST, "/defaults_t?columns=name,qty&select=id,qty")
            .header("Prefer", "missing=default, return=representation")
            .json(&json!({"name": "d"})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, json!([{"id": 4, "qty": 7}])));
    // Without it, missing columns are NULL (here a NOT NULL violation).
    assert_err(
        &call(
            s.service(Method::POST, "/defaults_t?columns=name,qty")
                .json(&json!([{"name": "e"}])),
        )
        .await,
        400,
        "23502",
    );
    let (st, v) = call(
        s.service(Method::POST, "/defaults_t?columns=name,note&select=note")
            .header("Prefer", "missing=null, return=representation")
            .json(&json!([{"name": "e"}])),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, json!([{"note": null}])));
    // PATCH with columns= and missing=default resets the missing columns.
    let (st, v) = call(
        s.service(
            Method::PATCH,
            "/defaults_t?id=eq.2&columns=qty,note&select=qty,note",
        )
        .header("Prefer", "missing=default, return=representation")
        .json(&json!({"note": "patched"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"qty": 7, "note": "patched"}]))
    );
}

/// Prefer header → `tx=rollback` / `tx=commit`.
#[tokio::test]
async fn transactions() {
    let s = stack().await;
    let rb = "tx=rollback, return=representation";
    let (st, h, v) = send(
        s.req(Method::POST, "/items?select=id,name")
            .header("Prefer", rb)
            .json(&json!({"id": 200, "name": "ghost"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (201, json!([{"id": 200, "name": "ghost"}]))
    );
    assert_eq!(applied(&h), Some("return=representation, tx=rollback"));
    let (st, v) = call(
        s.req(Method::PATCH, "/items?id=eq.1&select=id,name")
            .header("Prefer", rb)
            .json(&json!({"name": "ghost"})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 1, "name": "ghost"}])));
    let (st, h, _) = send(
        s.req(Method::DELETE, "/items?id=eq.2")
            .header("Prefer", "tx=rollback"),
    )
    .await;
    assert_eq!((st.as_u16(), applied(&h)), (204, Some("tx=rollback")));
    let (st, v) = call(
        s.req(Method::POST, "/rpc/bump")
            .header("Prefer", "tx=rollback")
            .json(&json!({"n": 100})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!(102)));
    // Nothing was kept.
    let (_, v) = call(s.get("/items?select=id,name,price&id=in.(1,2,200)&order=id")).await;
    assert_eq!(
        v,
        json!([{"id": 1, "name": "item 1", "price": 1.5}, {"id": 2, "name": "item 2", "price": 3.0}])
    );
    // tx=commit is the default behaviour.
    let (st, h, _) = send(
        s.req(Method::POST, "/items")
            .header("Prefer", "tx=commit")
            .json(&json!({"id": 201, "name": "kept"})),
    )
    .await;
    assert_eq!((st.as_u16(), applied(&h)), (201, Some("tx=commit")));
    let (_, v) = call(s.get("/items?select=id&id=eq.201")).await;
    assert_eq!(ids(&v), [201]);
}

/// Errors: PostgREST's keys only (the request id is a header), PGRST116,
/// PGRST200 and PGRST201 with PostgREST's wording.
#[tokio::test]
async fn error_bodies() {
    let s = stack().await;
    let (st, h, v) = send(s.get("/nope")).await;
    assert_eq!(st, 404);
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "details", "hint", "message"], "{v}");
    assert!(!h["x-request-id"].is_empty());
    assert_eq!(h["content-type"], "application/json; charset=utf-8");
    // A database error too.
    let (_, v) = call(
        s.req(Method::POST, "/items")
            .json(&json!({"id": 1, "name": "dup"})),
    )
    .await;
    assert_eq!(v.as_object().expect("object").len(), 4, "{v}");
    assert_eq!(v["code"], "23505");

    // 401s say how to authenticate, as PostgREST.
    let (st, h, _) = send(s.get("/secrets")).await;
    assert_eq!(st, 401);
    assert_eq!(h["www-authenticate"], "Bearer");
    let (st, h, v) = send(s.get("/items").header("authorization", "Bearer not.a.jwt")).await;
    assert_eq!((st.as_u16(), &v["code"]), (401, &json!("PGRST301")));
    assert_eq!(
        h["www-authenticate"].to_str().expect("ascii"),
        format!(
            "Bearer error=\"invalid_token\", error_description={}",
            v["message"]
        )
    );

    let obj = "application/vnd.pgrst.object+json";
    for (q, n) in [("id=lt.4", 3), ("id=eq.999", 0)] {
        assert_body(
            &call(s.get(&format!("/items?{q}")).header("Accept", obj)).await,
            406,
            json!({
                "code": "PGRST116",
                "message": "JSON object requested, multiple (or no) rows returned",
                "details": format!("The result contains {n} rows"),
                "hint": null,
            }),
        );
    }

    // No relationship: PostgREST's details, and its hint when a name is close.
    assert_body(
        &call(s.get("/posts?select=id,user(name)")).await,
        400,
        json!({
            "code": "PGRST200",
            "message": "Could not find a relationship between 'posts' and 'user' in the schema cache",
            "details": "Searched for a foreign key relationship between 'posts' and 'user' in the schema 'public', but no matches were found.",
            "hint": "Perhaps you meant 'users' instead of 'user'.",
        }),
    );
    assert_body(
        &call(s.get("/messages?select=id,users!nope(name)")).await,
        400,
        json!({
            "code": "PGRST200",
            "message": "Could not find a relationship between 'messages' and 'users' in the schema cache",
            "details": "Searched for a foreign key relationship between 'messages' and 'users' using the hint 'nope' in the schema 'public', but no matches were found.",
            "hint": null,
        }),
    );
    assert_body(
        &call(s.get("/posts?select=id,zzzzzz(name)")).await,
        400,
        json!({
            "code": "PGRST200",
            "message": "Could not find a relationship between 'posts' and 'zzzzzz' in the schema cache",
            "details": "Searched for a foreign key relationship between 'posts' and 'zzzzzz' in the schema 'public', but no matches were found.",
            "hint": null,
        }),
    );
    // Ambiguous: 300 with every candidate, sorted as PostgREST sorts
    // relationships (by cardinality, then constraint name).
    assert_body(
        &call(s.get("/messages?select=body,users(name)")).await,
        300,
        json!({
            "code": "PGRST201",
            "message": "Could not embed because more than one relationship was found for 'messages' and 'users'",
            "details": [
                {
                    "cardinality": "many-to-one",
                    "embedding": "messages with users",
                    "relationship": "messages_recipient_id_fkey using messages(recipient_id) and users(id)",
                },
                {
                    "cardinality": "many-to-one",
                    "embedding": "messages with users",
                    "relationship": "messages_sender_id_fkey using messages(sender_id) and users(id)",
                },
            ],
            "hint": "Try changing 'users' to one of the following: 'users!messages_recipient_id_fkey', 'users!messages_sender_id_fkey'. Find the desired relationship in the 'details' key.",
        }),
    );
    let (st, v) = call(s.get("/users?select=name,messages(body)")).await;
    assert_eq!(st, 300, "{v}");
    assert_eq!(
        v["details"][0],
        json!({
            "cardinality": "one-to-many",
            "embedding": "users with messages",
            "relationship": "messages_recipient_id_fkey using users(id) and messages(recipient_id)",
        })
    );
}

/// API → Tables and Views → Operators: ranges, arrays, full-text search,
/// `isdistinct`, `is` with trilean values; `not.` and logic trees with them.
#[tokio::test]
async fn operators_ranges_arrays_fts_trilean() {
    let s = stack().await;
    let cases: &[(&str, &[i64])] = &[
        // Ranges.
        ("r=sl.[10,15)", &[1, 2]),
        ("r=sr.[10,15)", &[3]),
        ("r=nxr.[1,6)", &[1]),
        ("r=nxl.[4,6)", &[2, 3]),
        ("r=adj.[10,20)", &[2, 3]),
        ("r=ov.[3,6)", &[1, 2]),
        // A range literal with exclusive bounds stays a range.
        ("r=ov.(4,6)", &[2]),
        ("r=cs.[2,3]", &[1]),
        ("d=cd.[2020-01-01,2020-12-31]", &[1, 2]),
        ("r=not.sl.[10,15)", &[3]),
        // Arrays.
        ("arr=cs.{3}", &[1, 2]),
        ("arr=cd.{1,2,3,4}", &[1, 2, 3]),
        ("arr=ov.{4,9}", &[2]),
        ("arr=ov.(1,4)", &[1, 2]),
        ("arr=not.cs.{3}", &[3]),
        // In logic trees a range literal is quoted (as PostgREST requires).
        ("or=(r.adj.\"[10,20)\",arr.cs.{1})", &[1, 2, 3]),
        (
            "and=(arr.cs.{3},not.or(r.sl.\"[4,5)\",arr.cd.{1,2,3}))",
            &[2],
        ),
        // Full-text search on a tsvector and on a text column.
        ("vec=fts(english).jump", &[1]),
        ("vec=plfts(english).quick%20day", &[3]),
        ("vec=phfts(english).quick%20brown", &[1]),
        ("vec=wfts(english).quick%20-fox", &[3]),
        ("doc=fts.quick", &[1, 3]),
        ("doc=not.fts.quick", &[2]),
        ("or=(vec.fts(english).jump,doc.plfts.lazy)", &[1, 2]),
    ];
    for (q, want) in cases {
        assert_eq!(ids_of(&s, "ranges", q).await, *want, "{q}");
    }
    let cases: &[(&str, &[i64])] = &[
        ("b=isdistinct.true", &[2, 3]),
        ("n=isdistinct.1", &[2, 3]),
        ("n=not.isdistinct.1", &[1]),
        ("b=is.unknown", &[3]),
        ("b=is.true", &[1]),
        ("b=is.false", &[2]),
        ("b=not.is.true", &[2, 3]),
        ("b=is.TRUE", &[1]),
        ("n=is.null", &[2]),
        ("and=(b.is.unknown,n.eq.3)", &[3]),
        ("or=(b.isdistinct.true,n.eq.1)", &[1, 2, 3]),
    ];
    for (q, want) in cases {
        assert_eq!(ids_of(&s, "tri", q).await, *want, "{q}");
    }
    assert_err(&call(s.get("/tri?b=is.maybe")).await, 400, "PGRST100");
}

/// API → Pagination and Count: `limit`/`offset`, the `Range` header (GET
/// only), `Prefer: count=…` on reads, rpc and writes, Content-Range, 206
/// and 416 as PostgREST.
#[tokio::test]
async fn counts_and_ranges() {
    let s = stack().await;
    let exact = "count=exact";
    let page = |q: &str| s.get(&format!("/items?select=id&order=id&{q}"));
    let (st, h, v) = send(page("limit=5").header("Prefer", exact)).await;
    assert_eq!(
        (st.as_u16(), range(&h), ids(&v)),
        (206, "0-4/30", vec![1, 2, 3, 4, 5])
    );
    assert_eq!(applied(&h), Some("count=exact"));
    let (st, h, _) = send(page("").header("Prefer", exact)).await;
    assert_eq!((st.as_u16(), range(&h)), (200, "0-29/30"));
    // An offset at the end is an empty page; beyond it, 416.
    let (st, h, v) = send(page("offset=30").header("Prefer", exact)).await;
    assert_eq!((st.as_u16(), range(&h), v), (206, "*/30", json!([])));
    let (st, h, v) = send(page("offset=31").header("Prefer", exact)).await;
    assert_eq!(range(&h), "*/30");
    assert_body(
        &(st, v),
        416,
        json!({
            "code": "PGRST103",
            "message": "Requested range not satisfiable",
            "details": "An offset of 31 was requested, but there are only 30 rows.",
            "hint": null,
        }),
    );
    let (st, h, v) = send(page("offset=31")).await;
    assert_eq!((st.as_u16(), range(&h), v), (200, "*/*", json!([])));
    // limit=0.
    let (st, h, v) = send(page("limit=0").header("Prefer", exact)).await;
    assert_eq!((st.as_u16(), range(&h), v), (206, "*/30", json!([])));
    // ... whatever the offset or Range (found by the sql_prop property
    // with many cases: `limit=0&offset=1` was a 416).
    let (st, _, v) = send(page("limit=0&offset=1")).await;
    assert_eq!((st.as_u16(), v), (200, json!([])));
    let (st, _, v) = send(page("limit=0&offset=5").header("Range", "2-3")).await;
    assert_eq!((st.as_u16(), v), (200, json!([])));
    // Invalid ranges.
    let bad = |details: &str| {
        json!({
            "code": "PGRST103",
            "message": "Requested range not satisfiable",
            "details": details,
            "hint": null,
        })
    };
    assert_body(
        &call(page("limit=-1")).await,
        416,
        bad("Limit should be greater than or equal to zero."),
    );
    assert_body(
        &call(page("").header("Range", "3-1")).await,
        416,
        bad(
            "The lower boundary must be lower than or equal to the upper boundary in the Range header.",
        ),
    );
    // The Range header intersects limit/offset; a malformed one is ignored.
    let (st, h, v) = send(page("offset=2&limit=10").header("Range", "0-4")).await;
    assert_eq!(
        (st.as_u16(), range(&h), ids(&v)),
        (200, "2-4/*", vec![3, 4, 5])
    );
    let (_, h, _) = send(page("").header("Range", "5-")).await;
    assert_eq!(range(&h), "5-29/*");
    let (_, h, _) = send(page("").header("Range", "items=0-1")).await;
    assert_eq!(range(&h), "0-29/*");
    // HEAD ignores Range (PostgREST reads it on GET only). count=planned is
    // the planner's estimate: after ANALYZE saw 30 rows and 5 more were
    // added, it still says 30; count=estimated (no max rows) takes the
    // larger of the exact count and the estimate.
    s.sql("ANALYZE items").await;
    let (st, _) = call(
        s.req(Method::POST, "/items")
            .json(&json!([{"id": 400, "name": "a"}, {"id": 401, "name": "b"}, {"id": 402, "name": "c"}, {"id": 403, "name": "d"}, {"id": 404, "name": "e"}])),
    )
    .await;
    assert_eq!(st, 201);
    let (st, h, v) = send(
        s.req(Method::HEAD, "/items")
            .header("Range", "0-1")
            .header("Prefer", "count=planned"),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h), v), (200, "0-34/30", Value::Null));
    assert_eq!(applied(&h), Some("count=planned"));
    let (st, h, _) = send(
        s.get("/items?select=id&limit=2")
            .header("Prefer", "count=estimated"),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (206, "0-1/35"));
    let (_, h, _) = send(s.get("/items?select=id&limit=2").header("Prefer", exact)).await;
    assert_eq!(range(&h), "0-1/35");
    let (_, v) = call(s.req(Method::DELETE, "/items?id=gte.400")).await;
    assert_eq!(v, Value::Null);
    // rpc: Range on GET only; counts.
    let path = format!("/rpc/posts_by?author={ALICE}&select=id&order=id");
    let (st, h, v) = send(
        s.service(Method::GET, &path)
            .header("Range", "0-0")
            .header("Prefer", exact),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h), ids(&v)), (206, "0-0/2", vec![1]));
    let (st, h, v) = send(
        s.service(Method::POST, "/rpc/posts_by?select=id&order=id")
            .header("Range", "0-0")
            .header("Prefer", exact)
            .json(&json!({"author": ALICE})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), range(&h), ids(&v)),
        (200, "0-1/2", vec![1, 2])
    );
    // rpc returning one value, a set of values, nothing.
    let (_, h, _) = send(s.get("/rpc/add?a=1&b=2")).await;
    assert_eq!(range(&h), "0-0/*");
    let (_, h, _) = send(s.get("/rpc/numbers?n=3")).await;
    assert_eq!(range(&h), "0-2/*");
    let (st, h, _) = send(s.req(Method::POST, "/rpc/touch").json(&json!({}))).await;
    assert_eq!((st.as_u16(), range(&h)), (204, "0-0/*"));
    // Writes.
    let (st, h, _) = send(
        s.req(Method::POST, "/items")
            .header("Prefer", exact)
            .json(&json!([{"id": 300, "name": "a"}, {"id": 301, "name": "b"}])),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (201, "*/2"));
    assert_eq!(applied(&h), Some("count=exact"));
    let (st, h, _) = send(
        s.req(Method::PATCH, "/items?id=lt.4")
            .header("Prefer", exact)
            .json(&json!({"name": "x"})),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (204, "0-2/3"));
    let (st, h, _) = send(
        s.req(Method::PATCH, "/items?id=eq.999")
            .json(&json!({"name": "x"})),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (204, "*/*"));
    let (st, h, _) = send(
        s.req(Method::DELETE, "/items?id=gte.300")
            .header("Prefer", exact),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (204, "*/2"));
    let (st, h, _) = send(s.req(Method::DELETE, "/items?id=gte.300")).await;
    assert_eq!((st.as_u16(), range(&h)), (204, "*/*"));
}

/// API → Media type handling: `nulls=stripped`, `text/csv`, unknown types.
#[tokio::test]
async fn media_types() {
    let s = stack().await;
    // nulls=stripped: null members are left out.
    let stripped = "application/vnd.pgrst.array+json;nulls=stripped";
    let (st, h, v) = send(
        s.get("/tri?select=id,b,n&order=id")
            .header("Accept", stripped),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!([{"id": 1, "b": true, "n": 1}, {"id": 2, "b": false}, {"id": 3, "n": 3}])
    );
    assert_eq!(
        h["content-type"],
        "application/vnd.pgrst.array+json;nulls=stripped; charset=utf-8"
    );
    let (st, h, v) = send(
        s.get("/tri?select=id,b,n&id=eq.3")
            .header("Accept", "application/vnd.pgrst.object+json;nulls=stripped"),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!({"id": 3, "n": 3})));
    assert_eq!(
        h["content-type"],
        "application/vnd.pgrst.object+json;nulls=stripped; charset=utf-8"
    );
    // Plain JSON keeps them.
    let (_, v) = call(s.get("/tri?select=id,b&id=eq.3")).await;
    assert_eq!(v, json!([{"id": 3, "b": null}]));
    // CSV: a header line, then one line per row in Postgres' record format.
    let resp = s
        .get("/items?select=id,name,price&id=lte.3&order=id")
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        resp.text().await.expect("body"),
        "id,name,price\n1,\"item 1\",1.5\n2,\"item 2\",3.0\n3,\"item 3\",4.5"
    );
    let resp = s
        .get("/items?select=id&id=gt.1000")
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.text().await.expect("body"), "\n");
    // The first acceptable type wins; unknown ones alone are 406.
    let (st, h, _) = send(
        s.get("/items?id=eq.1")
            .header("Accept", "text/xml, text/csv;q=0.5"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "text/csv; charset=utf-8");
    assert_body(
        &call(s.get("/items").header("Accept", "text/xml")).await,
        406,
        json!({
            "code": "PGRST107",
            "message": "None of these media types are available: text/xml",
            "details": null,
            "hint": null,
        }),
    );
}

/// Prefer header → `timezone=`: a zone Postgres knows is set for the
/// transaction and reported; an unknown one is an invalid preference.
#[tokio::test]
async fn prefer_timezone() {
    let s = stack().await;
    let (st, h, v) = send(
        s.get("/events?select=at")
            .header("Prefer", "timezone=America/Los_Angeles, handling=strict"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"at": "2019-12-31T16:00:00-08:00"}]))
    );
    assert_eq!(
        applied(&h),
        Some("handling=strict, timezone=America/Los_Angeles")
    );
    // Without it, the server's zone (UTC for the test cluster) applies.
    let (_, v) = call(s.get("/events?select=at")).await;
    assert_eq!(v, json!([{"at": "2020-01-01T00:00:00+00:00"}]));
    assert_body(
        &call(
            s.get("/events")
                .header("Prefer", "handling=strict, timezone=Nowhere/Atlantis"),
        )
        .await,
        400,
        json!({
            "code": "PGRST122",
            "message": "Invalid preferences given with handling=strict",
            "details": "Invalid preferences: timezone=Nowhere/Atlantis",
            "hint": null,
        }),
    );
    let (st, h, _) = send(
        s.get("/events")
            .header("Prefer", "timezone=Nowhere/Atlantis"),
    )
    .await;
    assert_eq!((st.as_u16(), applied(&h)), (200, None));
    // Writes see it too.
    let (st, v) = call(
        s.service(Method::PATCH, "/events?id=eq.1&select=at")
            .header("Prefer", "timezone=Asia/Tokyo, return=representation")
            .json(&json!({"at": "2020-01-01 09:00:00"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"at": "2020-01-01T09:00:00+09:00"}]))
    );
}

/// Functions as RPC → `Prefer: params=single-object` and a single unnamed
/// json/jsonb parameter (the body is the argument).
#[tokio::test]
async fn rpc_whole_body() {
    let s = stack().await;
    let body = json!({"a": 1, "b": [2, {"c": null}]});
    let (st, h, v) = send(
        s.req(Method::POST, "/rpc/echo_obj")
            .header("Prefer", "params=single-object")
            .json(&body),
    )
    .await;
    assert_eq!((st.as_u16(), &v), (200, &body));
    assert_eq!(applied(&h), Some("params=single-object"));
    // Without the preference the keys are argument names: no such function.
    assert_err(
        &call(s.req(Method::POST, "/rpc/echo_obj").json(&body)).await,
        404,
        "PGRST202",
    );
    // One unnamed json/jsonb parameter takes the body, object or not.
    let (st, v) = call(s.req(Method::POST, "/rpc/echo_raw").json(&body)).await;
    assert_eq!((st.as_u16(), v), (200, body));
    let (st, v) = call(s.req(Method::POST, "/rpc/echo_raw").json(&json!([1, 2]))).await;
    assert_eq!((st.as_u16(), v), (200, json!([1, 2])));
    // Overloads: the names choose; two that both fit are PGRST203.
    let (st, v) = call(
        s.req(Method::POST, "/rpc/over")
            .json(&json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!(3)));
    let (st, v) = call(s.req(Method::POST, "/rpc/over").json(&json!({"a": 1}))).await;
    assert_eq!(st, 300, "{v}");
    assert_eq!(v["code"], "PGRST203");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.starts_with("Could not choose the best candidate function between: ")
            && message.contains("public.over(a => integer)")
            && message.contains("public.over(a => integer, b => integer)"),
        "{v}"
    );
    assert_eq!(
        (&v["details"], &v["hint"]),
        (
            &Value::Null,
            &json!(
                "Try renaming the parameters or the function itself in the database so function overloading can be resolved"
            )
        )
    );
    // No such function: PostgREST's PGRST202 wording.
    assert_body(
        &call(
            s.req(Method::POST, "/rpc/add")
                .header("Prefer", "params=single-object")
                .json(&json!({"a": 1, "b": 2})),
        )
        .await,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function public.add in the schema cache",
            "details": "Searched for the function public.add with a single json/jsonb parameter, but no matches were found in the schema cache.",
            "hint": null,
        }),
    );
    assert_body(
        &call(
            s.req(Method::POST, "/rpc/add")
                .json(&json!({"c": 2, "a": 1})),
        )
        .await,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function public.add(a, c) in the schema cache",
            "details": "Searched for the function public.add with parameters a, c or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function public.add(a, b)",
        }),
    );
    assert_body(
        &call(s.req(Method::POST, "/rpc/ad").json(&json!({}))).await,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function public.ad without parameters in the schema cache",
            "details": "Searched for the function public.ad without parameters or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function public.add",
        }),
    );
    assert_body(
        &call(s.get("/rpc/add?a=1")).await,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function public.add(a) in the schema cache",
            "details": "Searched for the function public.add with parameter a, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function public.add(a, b)",
        }),
    );
}
