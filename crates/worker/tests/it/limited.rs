//! PostgREST 12's limited update and delete: `limit`/`offset` with an
//! `order` on PATCH and DELETE write only the first rows of the filtered
//! ones in that order (PostgREST's `LimitedMutationSpec`; `QueryBuilder.hs`
//! `mutatePlanToQuery`, `ApiRequest.hs` getRanges, `Query.hs`
//! failsChangesOffLimits, `Error.hs` PGRST109/PGRST110).

use http::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const EXTRA: &str = r#"
CREATE TABLE things (id int PRIMARY KEY, name text NOT NULL, grp int NOT NULL);
INSERT INTO things SELECT g, 'thing-' || g, g % 2 FROM generate_series(1, 5) g;
CREATE TABLE loose (id int, name text);
INSERT INTO loose VALUES (1, 'a'), (2, 'b'), (3, 'c');
CREATE VIEW things_view AS SELECT id, name, grp, 1 AS static FROM things;
"#;

async fn stack() -> Stack {
    let s = Stack::start().await;
    s.sql(EXTRA).await;
    s
}

async fn names(s: &Stack, table: &str) -> Value {
    let (st, v) = call(s.get(&format!("/{table}?select=id,name&order=id"))).await;
    assert_eq!(st, 200, "{v}");
    v
}

fn patch(s: &Stack, path: &str) -> reqwest::RequestBuilder {
    s.req(Method::PATCH, path).json(&json!({"name": "updated"}))
}

fn things(updated: &[i64]) -> Value {
    Value::Array(
        (1..=5)
            .map(|i| {
                let name = if updated.contains(&i) {
                    "updated".to_owned()
                } else {
                    format!("thing-{i}")
                };
                json!({"id": i, "name": name})
            })
            .collect(),
    )
}

fn without(deleted: &[i64]) -> Value {
    Value::Array(
        (1..=5)
            .filter(|i| !deleted.contains(i))
            .map(|i| json!({"id": i, "name": format!("thing-{i}")}))
            .collect(),
    )
}

/// PATCH with `order` and `limit`/`offset`: those rows only, filters
/// included; the written rows returned; the Range header ignored.
#[tokio::test]
async fn limited_update() {
    let s = stack().await;
    let (st, h, v) = send(patch(&s, "/things?order=id&limit=2")).await;
    assert_eq!((st.as_u16(), v), (204, Value::Null));
    assert_eq!(range(&h), "0-1/*");
    assert_eq!(names(&s, "things").await, things(&[1, 2]));
    // With a filter, an offset and a descending order; representation.
    let (st, v) = call(
        patch(
            &s,
            "/things?grp=eq.1&order=id.desc&limit=1&offset=1&select=id,name",
        )
        .header("Prefer", "return=representation"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"id": 3, "name": "updated"}]))
    );
    assert_eq!(names(&s, "things").await, things(&[1, 2, 3]));
    // `Range` does not limit a PATCH; `order` alone does not either.
    let (st, _) = call(
        s.req(Method::PATCH, "/things?order=id&id=gte.4")
            .header("Range", "0-0")
            .json(&json!({"name": "updated"})),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(names(&s, "things").await, things(&[1, 2, 3, 4, 5]));
    // limit=0 writes nothing.
    let (st, h, _) = send(
        s.req(Method::PATCH, "/things?order=id&limit=0")
            .json(&json!({"name": "zero"})),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (204, "*/*"));
    assert_eq!(names(&s, "things").await, things(&[1, 2, 3, 4, 5]));
}

/// DELETE with `order` and `limit`/`offset`; a view; a table without a
/// unique key through `order=ctid`, as PostgREST documents.
#[tokio::test]
async fn limited_delete() {
    let s = stack().await;
    let (st, _) = call(s.req(Method::DELETE, "/things?order=id&limit=1&offset=1")).await;
    assert_eq!(st, 204);
    assert_eq!(names(&s, "things").await, without(&[2]));
    let (st, v) = call(
        s.req(
            Method::DELETE,
            "/things?order=name.desc&limit=2&id=lt.5&select=id",
        )
        .header("Prefer", "return=representation"),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 4}, {"id": 3}])));
    assert_eq!(names(&s, "things").await, without(&[2, 3, 4]));
    // Through an auto-updatable view.
    let (st, _) = call(s.req(Method::DELETE, "/things_view?order=id&limit=1")).await;
    assert_eq!(st, 204);
    assert_eq!(names(&s, "things").await, without(&[1, 2, 3, 4]));
    // No key: the row's ctid.
    let (st, v) = call(s.req(Method::DELETE, "/loose?order=ctid&limit=1&offset=1")).await;
    assert_eq!(st, 204, "{v}");
    assert_eq!(
        names(&s, "loose").await,
        json!([{"id": 1, "name": "a"}, {"id": 3, "name": "c"}])
    );
    let (st, _) = call(
        s.req(Method::PATCH, "/loose?order=ctid&limit=1")
            .json(&json!({"name": "z"})),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        names(&s, "loose").await,
        json!([{"id": 1, "name": "z"}, {"id": 3, "name": "c"}])
    );
}

/// `limit` or `offset` without `order`: 400 PGRST109 with PostgREST's hint.
#[tokio::test]
async fn limit_without_order_is_pgrst109() {
    let s = stack().await;
    let expected = json!({
        "code": "PGRST109",
        "message": "A 'limit' was applied without an explicit 'order'",
        "details": null,
        "hint": "Apply an 'order' using unique column(s)",
    });
    for (method, q) in [
        (Method::PATCH, "limit=1&offset=1"),
        (Method::PATCH, "offset=2"),
        (Method::DELETE, "limit=1"),
        (Method::DELETE, "id=gt.1&limit=1"),
    ] {
        let got = call(
            s.req(method.clone(), &format!("/things?{q}"))
                .json(&json!({"name": "updated"})),
        )
        .await;
        assert_eq!(
            (got.0.as_u16(), got.1),
            (400, expected.clone()),
            "{method} {q}"
        );
    }
    assert_eq!(names(&s, "things").await, without(&[]));
    // A negative limit is the empty range's 416 first.
    assert_err(
        &call(s.req(Method::DELETE, "/things?limit=-1&order=id")).await,
        416,
        "PGRST103",
    );
}

/// Order columns that are not unique match more rows than the limit: 400
/// PGRST110, nothing written.
#[tokio::test]
async fn limit_on_non_unique_order_is_pgrst110() {
    let s = stack().await;
    let expected = |n: i64| {
        json!({
            "code": "PGRST110",
            "message": "The maximum number of rows allowed to change was surpassed",
            "details": format!("Results contain {n} rows changed but the maximum number allowed is 1"),
            "hint": null,
        })
    };
    let got = call(patch(&s, "/things_view?order=static&limit=1")).await;
    assert_eq!((got.0.as_u16(), got.1), (400, expected(5)));
    let got = call(s.req(Method::DELETE, "/things?order=grp&limit=1")).await;
    assert_eq!((got.0.as_u16(), got.1), (400, expected(2)));
    assert_eq!(names(&s, "things").await, without(&[]));
    // An order by a column that does not exist: Postgres' 42703.
    assert_err(
        &call(s.req(Method::DELETE, "/things?order=nope&limit=1")).await,
        400,
        "42703",
    );
}
