//! GET/HEAD: select, embedding, filters, order, pages, counts, singular.

use serde_json::{Value, json};

use crate::helpers::*;

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn select_embed_filter_order() {
    let s = Stack::start().await;

    // Columns, alias, cast, JSON paths, star.
    let (st, v) = call(s.get("/users?select=id,who:name,age:profile->>age,city:profile->city,profile->langs->0,email::text&order=name")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v[0],
        json!({"id": ALICE, "who": "alice", "age": "30", "city": "Paris", "0": "fr", "email": "alice@example.com"})
    );
    let (_, v) = call(s.get("/items?select=*&id=eq.2")).await;
    assert_eq!(v[0]["name"], "item 2");
    assert_eq!(v[0]["data"], json!({"n": 2, "even": true}));
    let (_, v) = call(s.get("/items?select=id,price::text&id=eq.3")).await;
    assert_eq!(v, json!([{"id": 3, "price": "4.5"}]));

    // RLS: anon sees public posts only.
    let (_, v) = call(s.get("/posts?select=id&order=id")).await;
    assert_eq!(ids(&v), [1, 3]);

    // Many-to-one and one-to-many, nested, with embedded filter/order/limit.
    let (st, v) = call(s.get("/posts?select=id,title,author:users(name),comments(body,users(name))&order=id&comments.order=id.desc&comments.limit=1")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v[0],
        json!({"id": 1, "title": "Hello world", "author": {"name": "alice"}, "comments": [{"body": "thanks", "users": {"name": "alice"}}]})
    );
    assert_eq!(
        v[1]["comments"],
        json!([{"body": "hi bob", "users": {"name": "alice"}}])
    );
    let (_, v) = call(s.get("/users?select=name,posts(title)&order=name&posts.order=title")).await;
    assert_eq!(
        v[0],
        json!({"name": "alice", "posts": [{"title": "Hello world"}]})
    );
    let (_, v) =
        call(s.get("/posts?select=id,comments(body)&comments.body=eq.nice&order=id")).await;
    assert_eq!(
        v,
        json!([{"id": 1, "comments": [{"body": "nice"}]}, {"id": 3, "comments": []}])
    );
    // !inner drops parents without matching children.
    let (_, v) = call(s.get("/posts?select=id,comments!inner(body)&comments.body=eq.nice")).await;
    assert_eq!(v, json!([{"id": 1, "comments": [{"body": "nice"}]}]));
    let (_, v) = call(s.get("/posts?select=id,users!inner(name)&users.name=eq.bob")).await;
    assert_eq!(v, json!([{"id": 3, "users": {"name": "bob"}}]));
    // Disambiguation by column or constraint name.
    let (st, v) = call(s.get("/messages?select=body,users(name)")).await;
    assert_err(&(st, v), 300, "PGRST201");
    let (_, v) = call(s.get("/messages?select=body,from:users!sender_id(name),to:users!messages_recipient_id_fkey(name)")).await;
    assert_eq!(
        v,
        json!([{"body": "ping", "from": {"name": "alice"}, "to": {"name": "bob"}}])
    );
    // No relationship; filter on a resource not embedded.
    assert_err(
        &call(s.get("/items?select=id,users(name)")).await,
        400,
        "PGRST200",
    );
    assert_err(
        &call(s.get("/posts?select=id&comments.body=eq.x")).await,
        400,
        "PGRST108",
    );
    // A view.
    let (_, v) = call(s.get("/public_posts?select=title&order=id")).await;
    assert_eq!(
        v,
        json!([{"title": "Hello world"}, {"title": "Bob public"}])
    );

    // Filters: each operator.
    let cases: &[(&str, &[i64])] = &[
        ("id=eq.3", &[3]),
        ("id=neq.3&id=lte.4", &[1, 2, 4]),
        ("id=gt.28", &[29, 30]),
        ("id=gte.29", &[29, 30]),
        ("id=lt.2", &[1]),
        (
            "name=like.item%202*",
            &[2, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29],
        ),
        ("name=ilike.ITEM%203*", &[3, 30]),
        ("name=match.^item 1[0-2]$", &[10, 11, 12]),
        ("id=in.(1,5,7)", &[1, 5, 7]),
        ("code=in.(c1,\"c2\")", &[1, 2]),
        ("id=lt.4&price=is.null", &[]),
        ("id=lt.3&price=not.is.null", &[1, 2]),
        ("tags=cs.{t1}&id=lt.8", &[1, 4, 7]),
        ("tags=cd.{t2,t9}&id=lt.6", &[2, 5]),
        ("tags=ov.{t0,t2}&id=lt.6", &[2, 3, 5]),
        ("data=cs.{\"even\":true}&id=lt.5", &[2, 4]),
        ("data->>n=eq.7", &[7]),
        ("data->even=eq.true&id=lt.5", &[2, 4]),
        ("id=not.in.(1,2,3)&id=lt.6", &[4, 5]),
        ("id=lt.10&or=(id.eq.1,id.eq.9)", &[1, 9]),
        ("or=(id.eq.1,and(id.gt.5,id.lt.8))", &[1, 6, 7]),
        ("id=lt.6&not.or=(id.eq.1,id.eq.2)", &[3, 4, 5]),
        (
            "and=(id.gt.3,id.lt.6,or(name.eq.item 4,name.like.*5))",
            &[4, 5],
        ),
        ("or=(id.in.(2,3),name.eq.\"item 9\")", &[2, 3, 9]),
        ("id=lt.4&name=isdistinct.item 1", &[2, 3]),
        ("name=fts.item&id=eq.1", &[1]),
        ("name=plfts(english).item 12", &[12]),
    ];
    for (q, want) in cases {
        let (st, v) = call(s.get(&format!("/items?select=id&order=id&{q}"))).await;
        assert_eq!(st, 200, "{q}: {v}");
        assert_eq!(ids(&v), *want, "{q}");
    }
    // Values that do not parse as the column type are Postgres' 400.
    assert_err(&call(s.get("/items?id=eq.abc")).await, 400, "22P02");

    // Order with nulls, JSON path order, multiple terms.
    let (_, v) = call(s.service(
        http::Method::GET,
        "/posts?select=id&order=score.desc.nullslast,id",
    ))
    .await;
    assert_eq!(ids(&v), [1, 4, 2, 3]);
    let (_, v) = call(s.service(
        http::Method::GET,
        "/posts?select=id&order=score.asc.nullsfirst",
    ))
    .await;
    assert_eq!(ids(&v), [3, 2, 4, 1]);
    let (_, v) = call(s.get("/users?select=name&order=profile->>city")).await;
    assert_eq!(v, json!([{"name": "bob"}, {"name": "alice"}]));
}

#[tokio::test]
async fn pages_counts_and_singular() {
    let s = Stack::start_with(&[("MADBASE_WORKER_MAX_ROWS", "25")]).await;

    // Content-Range on every read; limit/offset; max rows.
    let (st, h, v) = send(s.get("/items?select=id&order=id")).await;
    assert_eq!(st, 200);
    assert_eq!(range(&h), "0-24/*");
    assert_eq!(v.as_array().expect("array").len(), 25);
    let (st, h, v) = send(s.get("/items?select=id&order=id&limit=2&offset=3")).await;
    assert_eq!((st.as_u16(), range(&h)), (200, "3-4/*"));
    assert_eq!(ids(&v), [4, 5]);
    let (_, h, v) = send(s.get("/items?id=gt.100")).await;
    assert_eq!((range(&h), v), ("*/*", json!([])));
    // Range header, with and without count.
    let (st, h, v) = send(
        s.get("/items?select=id&order=id")
            .header("Range-Unit", "items")
            .header("Range", "5-9"),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (200, "5-9/*"));
    assert_eq!(ids(&v), [6, 7, 8, 9, 10]);
    let (st, h, _) = send(
        s.get("/items?select=id&order=id")
            .header("Range", "0-9")
            .header("Prefer", "count=exact"),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (206, "0-9/30"));
    let (st, h, _) = send(
        s.get("/items?select=id&id=lte.3")
            .header("Prefer", "count=exact"),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (200, "0-2/3"));
    let (st, h, _) = send(
        s.get("/items?select=id&id=gt.100")
            .header("Prefer", "count=exact"),
    )
    .await;
    assert_eq!((st.as_u16(), range(&h)), (200, "*/0"));
    // Impossible ranges.
    let (st, h, v) = send(s.get("/items?offset=100").header("Prefer", "count=exact")).await;
    assert_err(&(st, v), 416, "PGRST103");
    let _ = h;
    assert_err(
        &call(s.get("/items").header("Range", "9-2")).await,
        416,
        "PGRST103",
    );
    // Extreme numbers are no problem.
    let (st, _, v) = send(
        s.get("/items?offset=9223372036854775807&limit=9223372036854775807")
            .header("Range", "0-9223372036854775807"),
    )
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([])));
    assert_err(
        &call(s.get("/items?limit=99999999999999999999")).await,
        400,
        "PGRST100",
    );
    // Count follows filters and RLS.
    let (_, h, _) = send(s.get("/posts?select=id").header("Prefer", "count=exact")).await;
    assert_eq!(range(&h), "0-1/2");

    // HEAD: headers, no body.
    let (st, h, v) = send(
        s.req(http::Method::HEAD, "/items?id=lte.5")
            .header("Prefer", "count=exact"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), range(&h), v),
        (200, "0-4/5", serde_json::Value::Null)
    );

    // Singular object.
    let obj = "application/vnd.pgrst.object+json";
    let (st, h, v) = send(s.get("/items?select=id,name&id=eq.4").header("Accept", obj)).await;
    assert_eq!((st.as_u16(), v), (200, json!({"id": 4, "name": "item 4"})));
    assert!(h["content-type"].to_str().expect("ct").starts_with(obj));
    assert_err(
        &call(s.get("/items?id=lt.3").header("Accept", obj)).await,
        406,
        "PGRST116",
    );
    assert_err(
        &call(s.get("/items?id=eq.300").header("Accept", obj)).await,
        406,
        "PGRST116",
    );
    assert_err(
        &call(s.get("/items").header("Accept", "text/xml")).await,
        406,
        "PGRST107",
    );
    // Profiles.
    let (st, _) = call(s.get("/items?id=eq.1").header("Accept-Profile", "public")).await;
    assert_eq!(st, 200);
    assert_err(
        &call(s.get("/items").header("Accept-Profile", "private")).await,
        406,
        "PGRST106",
    );
}

/// `Content-Location` of a table read (GET, HEAD, also 206/416), as
/// PostgREST 12 (`Response.hs`, `qsCanonical`): the table and its query
/// string sorted by name; not on rpc.
#[tokio::test]
async fn content_location() {
    let s = Stack::start().await;
    let location = |path: &'static str| {
        let s = &s;
        async move {
            let (_, h, _) = send(s.get(path)).await;
            h.get("content-location")
                .map(|v| v.to_str().expect("ascii").to_owned())
        }
    };
    assert_eq!(
        location("/items?id=eq.1").await.as_deref(),
        Some("/items?id=eq.1")
    );
    assert_eq!(location("/items").await.as_deref(), Some("/items"));
    assert_eq!(
        location("/items?select=id,name&order=id&id=lt.3")
            .await
            .as_deref(),
        Some("/items?id=lt.3&order=id&select=id%2Cname")
    );
    let (st, h, _) = send(
        s.req(http::Method::HEAD, "/items?offset=100&id=gt.0")
            .header("Prefer", "count=exact"),
    )
    .await;
    assert_eq!(st, 416);
    assert_eq!(h["content-location"], "/items?id=gt.0&offset=100");
    assert_eq!(location("/rpc/numbers?n=2").await, None);
}
