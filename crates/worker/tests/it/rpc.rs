//! `/rpc`: named arguments, GET for stable functions, set-returning
//! functions with filters, scalars, void, errors.

use http::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn functions() {
    let s = Stack::start().await;
    // POST with named JSON args; GET with query-string args.
    let (st, v) = call(
        s.req(Method::POST, "/rpc/add")
            .json(&json!({"a": 2, "b": 3})),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!(5)));
    let (st, v) = call(s.get("/rpc/add?a=4&b=5")).await;
    assert_eq!((st.as_u16(), v), (200, json!(9)));
    // Set-returning functions take table filters, select, order, limit and count.
    let (st, h, v) = send(
        s.get(&format!(
            "/rpc/posts_by?author={ALICE}&select=title&order=id"
        ))
        .header("Prefer", "count=exact"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), v),
        (200, json!([{"title": "Hello world"}])),
        "RLS applies in the function"
    );
    assert_eq!(range(&h), "0-0/1");
    let (_, v) = call(
        s.service(
            Method::POST,
            "/rpc/posts_by?select=id,score&score=gt.6&order=id",
        )
        .json(&json!({"author": ALICE})),
    )
    .await;
    assert_eq!(v, json!([{"id": 1, "score": 10}]));
    let (_, v) = call(
        s.service(
            Method::POST,
            "/rpc/posts_by?select=title,users(name)&limit=1&order=id",
        )
        .json(&json!({"author": BOB})),
    )
    .await;
    assert_eq!(
        v,
        json!([{"title": "Bob public", "users": {"name": "bob"}}])
    );
    let (_, v) = call(s.get("/rpc/numbers?n=4")).await;
    assert_eq!(v, json!([1, 2, 3, 4]));
    let (_, v) = call(s.get("/rpc/item_stats?min_id=29")).await;
    assert_eq!(v, json!([{"total": 2, "max_price": 45.0}]));
    let (_, v) = call(s.get("/rpc/item_stats?select=total")).await;
    assert_eq!(v, json!([{"total": 30}]), "defaults");
    // A function returning one composite row: an object.
    let alice = s.user_token(ALICE);
    let (st, v) = call(
        s.req(Method::POST, "/rpc/create_post")
            .bearer_auth(&alice)
            .json(&json!({"title": "via rpc"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["title"].clone(),
            v["author_id"].clone(),
            v["public"].clone()
        ),
        (json!("via rpc"), json!(ALICE), json!(true))
    );
    // Volatile through GET runs read-only: 405.
    assert_err(&call(s.get("/rpc/touch")).await, 405, "25006");
    let (st, _) = call(s.req(Method::POST, "/rpc/touch")).await;
    assert_eq!(st, 204);
    // Errors.
    assert_err(
        &call(
            s.req(Method::POST, "/rpc/fail")
                .json(&json!({"msg": "boom"})),
        )
        .await,
        400,
        "P0001",
    );
    let (_, v) = call(
        s.req(Method::POST, "/rpc/fail")
            .json(&json!({"msg": "boom"})),
    )
    .await;
    assert_eq!(
        (v["message"].clone(), v["hint"].clone()),
        (json!("boom"), json!("raised on purpose"))
    );
    assert_err(
        &call(s.req(Method::POST, "/rpc/nope").json(&json!({}))).await,
        404,
        "PGRST202",
    );
    assert_err(
        &call(
            s.req(Method::POST, "/rpc/add")
                .json(&json!({"a": 1, "c": 2})),
        )
        .await,
        404,
        "PGRST202",
    );
    assert_err(
        &call(s.req(Method::POST, "/rpc/add").json(&json!([1, 2]))).await,
        400,
        "PGRST102",
    );
    assert_err(
        &call(
            s.req(Method::POST, "/rpc/add")
                .json(&json!({"a": "x", "b": 1})),
        )
        .await,
        400,
        "22P02",
    );
    assert_err(
        &call(s.req(Method::DELETE, "/rpc/add")).await,
        405,
        "PGRST101",
    );
}
