//! POST (single, bulk, upsert, columns), PATCH, DELETE and `Prefer: return`.

use http::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn inserts_upserts_updates_deletes() {
    let s = Stack::start().await;
    let repr = "return=representation";

    // Single insert: minimal (default), then representation with select.
    let (st, h, v) = send(
        s.req(Method::POST, "/items")
            .json(&json!({"id": 100, "name": "a"})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, serde_json::Value::Null));
    assert_eq!(range(&h), "*/*");
    let (st, v) = call(
        s.req(Method::POST, "/items?select=id,name,price")
            .header("Prefer", repr)
            .json(&json!({"id": 101, "name": "b", "price": 2.5})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (201, json!([{"id": 101, "name": "b", "price": 2.5}]))
    );
    let (st, h, v) = send(
        s.req(Method::POST, "/items")
            .header("Prefer", "return=headers-only")
            .json(&json!({"id": 99, "name": "h"})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, serde_json::Value::Null));
    assert_eq!(h["location"], "/items?id=eq.99");
    // Bulk insert; arrays and JSON values.
    let (st, v) = call(
        s.req(Method::POST, "/items?select=id,tags,data")
            .header("Prefer", repr)
            .json(&json!([
                {"id": 102, "name": "c", "tags": ["x", "y"], "data": {"k": [1, 2]}},
                {"id": 103, "name": "d", "tags": [], "data": null}
            ])),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v,
        json!([{"id": 102, "tags": ["x", "y"], "data": {"k": [1, 2]}}, {"id": 103, "tags": [], "data": null}])
    );
    // columns= picks keys and lets objects differ.
    let (st, v) = call(
        s.req(Method::POST, "/items?columns=id,name&select=id,name,price")
            .header("Prefer", repr)
            .json(&json!([
                {"id": 104, "name": "e", "price": 9}, {"id": 105, "name": "f"}
            ])),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (
            201,
            json!([{"id": 104, "name": "e", "price": null}, {"id": 105, "name": "f", "price": null}])
        )
    );
    // Bad bodies.
    assert_err(
        &call(
            s.req(Method::POST, "/items")
                .json(&json!([{"id": 1}, {"name": "x"}])),
        )
        .await,
        400,
        "PGRST102",
    );
    assert_err(
        &call(
            s.req(Method::POST, "/items")
                .header("content-type", "application/json")
                .body("{nope"),
        )
        .await,
        400,
        "PGRST102",
    );
    assert_err(
        &call(s.req(Method::POST, "/items").json(&json!(5))).await,
        400,
        "PGRST102",
    );
    assert_err(
        &call(
            s.req(Method::POST, "/items")
                .json(&json!({"id": 106, "nope": 1})),
        )
        .await,
        400,
        "PGRST204",
    );
    // Constraint violations.
    assert_err(
        &call(
            s.req(Method::POST, "/items")
                .json(&json!({"id": 100, "name": "dup"})),
        )
        .await,
        409,
        "23505",
    );
    assert_err(
        &call(
            s.service(Method::POST, "/comments")
                .json(&json!({"post_id": 999, "body": "x"})),
        )
        .await,
        409,
        "23503",
    );
    assert_err(
        &call(s.req(Method::POST, "/items").json(&json!({"id": 107}))).await,
        400,
        "23502",
    );

    // Upserts: merge, ignore, on_conflict on a unique column.
    let (st, v) = call(
        s.req(Method::POST, "/items?select=id,name")
            .header(
                "Prefer",
                "resolution=merge-duplicates,return=representation",
            )
            .json(&json!([
                {"id": 100, "name": "merged"}, {"id": 110, "name": "new"}
            ])),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (
            201,
            json!([{"id": 100, "name": "merged"}, {"id": 110, "name": "new"}])
        )
    );
    let (st, v) = call(
        s.req(Method::POST, "/items?select=id,name")
            .header("Prefer", "resolution=ignore-duplicates")
            .header("Prefer", repr)
            .json(&json!([
                {"id": 100, "name": "ignored"}, {"id": 111, "name": "new2"}
            ])),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (201, json!([{"id": 111, "name": "new2"}]))
    );
    let (st, v) = call(
        s.req(Method::POST, "/items?on_conflict=code&select=id,name,code")
            .header(
                "Prefer",
                "resolution=merge-duplicates,return=representation",
            )
            .json(&json!({"id": 500, "code": "c5", "name": "by code"})),
    )
    .await;
    // Merge updates every column sent; only an update happened, so 200 (PostgREST).
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!([{"id": 500, "name": "by code", "code": "c5"}]));
    assert_err(
        &call(
            s.req(Method::POST, "/items?on_conflict=nope")
                .header("Prefer", "resolution=merge-duplicates")
                .json(&json!({"id": 1, "name": "x"})),
        )
        .await,
        400,
        "42703",
    );

    // PATCH with filters: minimal 204, representation 200.
    let (st, h, v) = send(
        s.req(Method::PATCH, "/items?id=in.(100,101)")
            .json(&json!({"price": 7})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (204, serde_json::Value::Null));
    assert_eq!(range(&h), "0-1/*");
    let (st, v) = call(
        s.req(Method::PATCH, "/items?id=eq.100&select=id,price,name")
            .header("Prefer", repr)
            .json(&json!({"name": "patched"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"id": 100, "price": 7, "name": "patched"}]))
    );
    // Filters are not re-applied to the new values.
    let (_, v) = call(
        s.req(Method::PATCH, "/items?name=eq.patched&select=id")
            .header("Prefer", repr)
            .json(&json!({"name": "again"})),
    )
    .await;
    assert_eq!(v, json!([{"id": 100}]));
    assert_err(
        &call(
            s.req(Method::PATCH, "/items?id=eq.1")
                .json(&json!([{"name": "x"}])),
        )
        .await,
        400,
        "PGRST102",
    );
    // DELETE.
    let (st, v) = call(
        s.req(Method::DELETE, "/items?id=gte.110&id=lt.200&select=id")
            .header("Prefer", repr),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 110}, {"id": 111}])));
    let (st, _) = call(s.req(Method::DELETE, "/items?id=eq.105")).await;
    assert_eq!(st, 204);
    let (_, v) = call(s.get("/items?id=in.(105,110,111)")).await;
    assert_eq!(v, json!([]));

    // Singular writes: exactly one row, else 406 and nothing written.
    let obj = "application/vnd.pgrst.object+json";
    let (st, v) = call(
        s.req(Method::POST, "/items?select=id")
            .header("Prefer", repr)
            .header("Accept", obj)
            .json(&json!({"id": 120, "name": "one"})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (201, json!({"id": 120})));
    assert_err(
        &call(
            s.req(Method::PATCH, "/items?id=gte.120&select=id")
                .header("Prefer", repr)
                .header("Accept", obj)
                .json(&json!({"name": "x"})),
        )
        .await,
        406,
        "PGRST116",
    );
    assert_err(
        &call(
            s.req(Method::DELETE, "/items?id=lt.10")
                .header("Accept", obj),
        )
        .await,
        406,
        "PGRST116",
    );
    let (_, v) = call(s.get("/items?select=id&id=lt.10")).await;
    // 1..9 but 5, which the upsert on code moved to 500.
    assert_eq!(v.as_array().map(Vec::len), Some(8), "rolled back");

    // Representation with an embed, and RLS on writes.
    let alice = s.user_token(ALICE);
    let (st, v) = call(
        s.req(Method::POST, "/posts?select=title,author:users(name)")
            .bearer_auth(&alice)
            .header("Prefer", repr)
            .json(&json!({"author_id": ALICE, "title": "mine"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (201, json!([{"title": "mine", "author": {"name": "alice"}}]))
    );
    assert_err(
        &call(
            s.req(Method::POST, "/posts")
                .bearer_auth(&alice)
                .json(&json!({"author_id": BOB, "title": "forged"})),
        )
        .await,
        403,
        "42501",
    );
    // Anon may not write posts (no policy): 401.
    assert_err(
        &call(
            s.req(Method::POST, "/posts")
                .json(&json!({"author_id": BOB, "title": "anon"})),
        )
        .await,
        401,
        "42501",
    );
    // Bob's rows are invisible to alice's PATCH.
    let (st, v) = call(
        s.req(
            Method::PATCH,
            &format!("/posts?author_id=eq.{BOB}&select=id"),
        )
        .bearer_auth(&alice)
        .header("Prefer", repr)
        .json(&json!({"title": "hijack"})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([])));
}
