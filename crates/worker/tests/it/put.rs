//! PostgREST 12's PUT (single-row upsert): `PUT /table?pk=eq.v` with the
//! row as its body inserts it or replaces the existing one. Statuses,
//! headers and error bodies as PostgREST's source has them
//! (`ApiRequest.hs` getRanges, `Plan.hs` mutatePlan `MutationSingleUpsert`,
//! `Query.hs` failPut, `Response.hs`, `Error.hs`); each refusal has its test.

use http::{HeaderMap, Method};
use serde_json::{Value, json};

use crate::helpers::*;

const EXTRA: &str = r#"
CREATE TABLE langs (name text PRIMARY KEY, rank int NOT NULL, note text DEFAULT 'none');
INSERT INTO langs VALUES ('Java', 1, 'old'), ('C', 2, 'older');
CREATE TABLE employees (
  first_name text, last_name text, salary int, company text,
  PRIMARY KEY (first_name, last_name)
);
INSERT INTO employees VALUES ('Frances', 'Roe', 24000, 'One-Up');
CREATE TABLE nokey (a int, b text);
"#;

async fn stack() -> Stack {
    let s = Stack::start().await;
    s.sql(EXTRA).await;
    s
}

fn put(s: &Stack, path: &str, body: Value) -> reqwest::RequestBuilder {
    s.req(Method::PUT, path).json(&body)
}

fn applied(h: &HeaderMap) -> Option<&str> {
    h.get("preference-applied").and_then(|v| v.to_str().ok())
}

async fn rows(s: &Stack, path: &str) -> Value {
    let (st, v) = call(s.get(path)).await;
    assert_eq!(st, 200, "{v}");
    v
}

#[track_caller]
fn assert_pgrst(got: &(http::StatusCode, Value), status: u16, code: &str, message: &str) {
    assert_eq!(
        (got.0.as_u16(), &got.1),
        (
            status,
            &json!({"code": code, "message": message, "details": null, "hint": null})
        )
    );
}

const PGRST105: &str = "Filters must include all and only primary key columns with 'eq' operators";
const PGRST115: &str = "Payload values do not match URL in primary key column(s)";

/// Insert (201 with the row), replace (200), minimal (204), without
/// `Content-Range`; a one-element array; a composite key; the preferences
/// PUT reports (`return`, `count`, `tx`, not `missing`).
#[tokio::test]
async fn put_inserts_or_replaces_one_row() {
    let s = stack().await;
    let rep = "return=representation";
    // A new key: inserted, 201.
    let (st, h, v) =
        send(put(&s, "/langs?name=eq.Go", json!({"name": "Go", "rank": 19})).header("Prefer", rep))
            .await;
    assert_eq!(
        (st.as_u16(), v),
        (201, json!([{"name": "Go", "rank": 19, "note": "none"}]))
    );
    assert_eq!(h.get("content-range"), None);
    assert_eq!(h["content-type"], "application/json; charset=utf-8");
    assert_eq!(applied(&h), Some(rep));
    // The same key: the row replaced (every sent column), 200.
    let (st, _, v) = send(
        put(
            &s,
            "/langs?name=eq.Go&select=name,rank",
            json!([{"name": "Go", "rank": 7}]),
        )
        .header("Prefer", rep),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([{"name": "Go", "rank": 7}])));
    // Without representation: 204, no body, no Content-Range.
    let (st, h, v) = send(put(
        &s,
        "/langs?name=eq.Java",
        json!({"name": "Java", "rank": 3}),
    ))
    .await;
    assert_eq!((st.as_u16(), v), (204, Value::Null));
    assert_eq!(h.get("content-range"), None);
    assert_eq!(applied(&h), None);
    let (st, _, _) = send(
        put(
            &s,
            "/langs?name=eq.Rust",
            json!({"name": "Rust", "rank": 4}),
        )
        .header("Prefer", "return=headers-only"),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        rows(&s, "/langs?select=name,rank,note&order=name").await,
        json!([
            {"name": "C", "rank": 2, "note": "older"},
            {"name": "Go", "rank": 7, "note": "none"},
            {"name": "Java", "rank": 3, "note": "old"},
            {"name": "Rust", "rank": 4, "note": "none"},
        ])
    );
    // Composite key, singular response.
    let (st, h, v) = send(
        put(
            &s,
            "/employees?first_name=eq.Frances&last_name=eq.Roe",
            json!({"first_name": "Frances", "last_name": "Roe", "salary": 60000, "company": "Gamma"}),
        )
        .header("Prefer", rep)
        .header("Accept", "application/vnd.pgrst.object+json"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (
            200,
            json!({"first_name": "Frances", "last_name": "Roe", "salary": 60000, "company": "Gamma"})
        )
    );
    assert_eq!(
        h["content-type"],
        "application/vnd.pgrst.object+json; charset=utf-8"
    );
    // What PUT reports: return, count, tx, handling; missing=default is
    // neither applied nor reported (PostgREST's PUT has no defaults).
    let (st, h, v) = send(
        put(
            &s,
            "/langs?name=eq.Zig",
            json!({"name": "Zig", "rank": 30, "note": null}),
        )
        .header(
            "Prefer",
            "return=representation, count=exact, missing=default, tx=rollback, max-affected=5",
        ),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (201, json!([{"name": "Zig", "rank": 30, "note": null}]))
    );
    assert_eq!(
        applied(&h),
        Some("return=representation, count=exact, tx=rollback")
    );
    assert_eq!(h.get("content-range"), None);
    // Rolled back.
    assert_eq!(rows(&s, "/langs?name=eq.Zig").await, json!([]));
    // A CSV body (one record) works as PostgREST's.
    let (st, _) = call(
        s.req(Method::PUT, "/langs?name=eq.C")
            .header("Content-Type", "text/csv")
            .body("name,rank\nC,22"),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        rows(&s, "/langs?name=eq.C&select=rank").await,
        json!([{"rank": 22}])
    );
    // An array whose other rows have another key: only the URL's is written.
    let (st, _, v) = send(
        put(
            &s,
            "/langs?name=eq.Java",
            json!([{"name": "Java", "rank": 19}, {"name": "Swift", "rank": 12}]),
        )
        .header("Prefer", rep),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"name": "Java", "rank": 19, "note": "old"}]))
    );
    assert_eq!(rows(&s, "/langs?name=eq.Swift").await, json!([]));
}

/// A filter on a column outside the primary key (also next to the key),
/// or none at all: 405 PGRST105.
#[tokio::test]
async fn put_filter_on_another_column_is_pgrst105() {
    let s = stack().await;
    for path in [
        "/langs?rank=eq.19",
        "/langs?name=eq.Go&rank=eq.19",
        "/langs",
    ] {
        let got = call(put(&s, path, json!({"name": "Go", "rank": 19}))).await;
        assert_pgrst(&got, 405, "PGRST105", PGRST105);
    }
}

/// An operator other than plain `eq` on the key: 405 PGRST105.
#[tokio::test]
async fn put_filter_other_than_eq_is_pgrst105() {
    let s = stack().await;
    for q in [
        "name=not.eq.Go",
        "name=in.(Go)",
        "name=gte.Go",
        "name=eq(any).{Go}",
        "name=is.null",
        "and=(name.eq.Go)",
        "or=(name.eq.Go)",
    ] {
        let got = call(put(
            &s,
            &format!("/langs?{q}"),
            json!({"name": "Go", "rank": 19}),
        ))
        .await;
        assert_pgrst(&got, 405, "PGRST105", PGRST105);
    }
}

/// Part of a composite key: 405 PGRST105.
#[tokio::test]
async fn put_partial_composite_key_is_pgrst105() {
    let s = stack().await;
    let body = json!({"first_name": "Susan", "last_name": "Heidt", "salary": 48000});
    for q in ["first_name=eq.Susan", "last_name=eq.Heidt"] {
        let got = call(put(&s, &format!("/employees?{q}"), body.clone())).await;
        assert_pgrst(&got, 405, "PGRST105", PGRST105);
    }
}

/// A table without a primary key cannot be PUT to: 405 PGRST105.
#[tokio::test]
async fn put_table_without_primary_key_is_pgrst105() {
    let s = stack().await;
    let got = call(put(&s, "/nokey?a=eq.1&b=eq.x", json!({"a": 1, "b": "x"}))).await;
    assert_pgrst(&got, 405, "PGRST105", PGRST105);
    assert_eq!(rows(&s, "/nokey").await, json!([]));
}

/// `limit` or `offset` on PUT: 400 PGRST114 (`offset=0` is no offset).
#[tokio::test]
async fn put_limit_or_offset_is_pgrst114() {
    let s = stack().await;
    for q in ["limit=1", "offset=1", "limit=0"] {
        let got = call(put(
            &s,
            &format!("/langs?name=eq.Go&{q}"),
            json!({"name": "Go", "rank": 19}),
        ))
        .await;
        assert_pgrst(
            &got,
            400,
            "PGRST114",
            "limit/offset querystring parameters are not allowed for PUT",
        );
    }
    let (st, _) = call(put(
        &s,
        "/langs?name=eq.Go&offset=0",
        json!({"name": "Go", "rank": 19}),
    ))
    .await;
    assert_eq!(st, 204);
}

/// A body whose key is not the URL's (another value, or no key at all):
/// 400 PGRST115, nothing written.
#[tokio::test]
async fn put_payload_key_not_the_urls_is_pgrst115() {
    let s = stack().await;
    for (path, body) in [
        ("/langs?name=eq.MATLAB", json!({"name": "Perl", "rank": 17})),
        // The existing row is not touched either.
        ("/langs?name=eq.Java", json!({"name": "C", "rank": 99})),
        (
            "/employees?first_name=eq.Wendy&last_name=eq.Anderson",
            json!({"first_name": "Susan", "last_name": "Anderson", "salary": 1}),
        ),
        // No key in the body, an empty array.
        ("/langs?name=eq.Go", json!({"rank": 17})),
        ("/langs?name=eq.Go", json!([])),
    ] {
        let got = call(put(&s, path, body)).await;
        assert_pgrst(&got, 400, "PGRST115", PGRST115);
    }
    // With representation too (no singular error first).
    let got = call(
        put(&s, "/langs?name=eq.Go", json!({"name": "Perl", "rank": 17}))
            .header("Prefer", "return=representation")
            .header("Accept", "application/vnd.pgrst.object+json"),
    )
    .await;
    assert_pgrst(&got, 400, "PGRST115", PGRST115);
    assert_eq!(
        rows(&s, "/langs?select=name,rank&order=name").await,
        json!([{"name": "C", "rank": 2}, {"name": "Java", "rank": 1}])
    );
}

/// Bad bodies and values: PostgREST's 4xx, never a 500.
#[tokio::test]
async fn put_bad_bodies_are_4xx() {
    let s = stack().await;
    assert_err(
        &call(s.req(Method::PUT, "/langs?name=eq.Go").body("{")).await,
        400,
        "PGRST102",
    );
    assert_err(
        &call(put(
            &s,
            "/langs?name=eq.Go",
            json!({"name": "Go", "nope": 1}),
        ))
        .await,
        400,
        "PGRST204",
    );
    // A key value that is not of the column's type: Postgres' 22P02.
    assert_err(
        &call(put(
            &s,
            "/employees?first_name=eq.A&last_name=eq.B",
            json!({"first_name": "A", "last_name": "B", "salary": "x"}),
        ))
        .await,
        400,
        "22P02",
    );
    // Unknown table.
    assert_err(
        &call(put(&s, "/nope?id=eq.1", json!({"id": 1}))).await,
        404,
        "PGRST205",
    );
}
