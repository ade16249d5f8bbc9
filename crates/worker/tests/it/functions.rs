//! PostgREST 12 conformance: API → Functions as RPC (overloads, a single
//! unnamed json/jsonb/text/xml/bytea parameter taking the raw body,
//! set-returning functions filtered, ordered and embedded like tables,
//! counts). See also `rpc.rs` and `postgrest.rs::rpc_whole_body`.

use http::Method;
use serde_json::{Value, json};

use crate::embedding::films_stack;
use crate::helpers::*;

const FUNCS: &str = r#"
CREATE FUNCTION shout(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper($1) $$;
CREATE FUNCTION xml_len(xml) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT length($1::text) $$;
CREATE FUNCTION byte_len(bytea) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT length($1) $$;
CREATE FUNCTION films_of(d int) RETURNS SETOF films LANGUAGE sql STABLE AS $$ SELECT * FROM films WHERE director_id = d $$;
CREATE FUNCTION nominated() RETURNS SETOF nominated_films LANGUAGE sql STABLE AS $$ SELECT * FROM nominated_films $$;
CREATE FUNCTION pick(a int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'a' $$;
CREATE FUNCTION pick(b text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'b' $$;
CREATE FUNCTION pick(a int, b text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'ab' $$;
CREATE FUNCTION twice(json) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'json' $$;
CREATE FUNCTION twice(jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'jsonb' $$;
CREATE FUNCTION defaults_only(x int DEFAULT 1, y int DEFAULT 2) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT x * 10 + y $$;
"#;

async fn stack() -> Stack {
    let s = films_stack(&[]).await;
    s.sql(FUNCS).await;
    s
}

async fn ok(rb: reqwest::RequestBuilder) -> Value {
    let (st, v) = call(rb).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Functions as RPC → a single unnamed parameter: `text/plain` to `text`,
/// `text/xml` to `xml`, `application/octet-stream` to `bytea`.
#[tokio::test]
async fn raw_bodies() {
    let s = stack().await;
    let post = |f: &str, ct: &str| {
        s.req(Method::POST, &format!("/rpc/{f}"))
            .header("Content-Type", ct)
    };
    assert_eq!(
        ok(post("shout", "text/plain").body("hello, world")).await,
        json!("HELLO, WORLD")
    );
    assert_eq!(
        ok(post("shout", "text/plain; charset=utf-8").body("abc")).await,
        json!("ABC")
    );
    assert_eq!(
        ok(post("xml_len", "text/xml").body("<a>x</a>")).await,
        json!(8)
    );
    assert_eq!(
        ok(post("byte_len", "application/octet-stream").body(vec![0u8, 1, 2, 255, 0])).await,
        json!(5)
    );
    // Malformed XML is Postgres' error.
    assert_err(
        &call(post("xml_len", "text/xml").body("<a>")).await,
        400,
        "2200N",
    );
    // No function takes such a body: PostgREST's PGRST202 without a hint.
    for (ct, what) in [
        ("text/plain", "text"),
        ("text/xml", "xml"),
        ("application/octet-stream", "bytea"),
    ] {
        let got = call(post("add", ct).body("1")).await;
        assert_eq!(got.0, 404, "{}", got.1);
        assert_eq!(
            got.1,
            json!({
                "code": "PGRST202",
                "message": "Could not find the function public.add in the schema cache",
                "details": format!("Searched for the function public.add with a single unnamed {what} parameter, but no matches were found in the schema cache."),
                "hint": null,
            })
        );
    }
    // A function without parameters does not take a raw body.
    assert_err(
        &call(post("whoami", "text/plain").body("x")).await,
        404,
        "PGRST202",
    );
    // Two functions that could take the body: PGRST203.
    let got = call(s.req(Method::POST, "/rpc/twice").json(&json!([1]))).await;
    assert_eq!(got.0, 300, "{}", got.1);
    assert_eq!(
        (&got.1["code"], &got.1["message"]),
        (
            &json!("PGRST203"),
            &json!(
                "Could not choose the best candidate function between: public.twice( => json), public.twice( => jsonb)"
            )
        )
    );
    // Functions whose parameters all have defaults still may.
    assert_eq!(
        ok(post("defaults_only", "text/plain").body("ignored")).await,
        json!(12)
    );
}

/// Functions as RPC → overloaded functions: the argument names choose
/// (POST body keys or GET parameters).
#[tokio::test]
async fn overloads() {
    let s = stack().await;
    assert_eq!(ok(s.get("/rpc/pick?a=1")).await, json!("a"));
    assert_eq!(ok(s.get("/rpc/pick?b=x")).await, json!("b"));
    assert_eq!(ok(s.get("/rpc/pick?a=1&b=x")).await, json!("ab"));
    assert_eq!(
        ok(s.req(Method::POST, "/rpc/pick").json(&json!({"b": "x"}))).await,
        json!("b")
    );
    assert_eq!(
        ok(s.req(Method::POST, "/rpc/pick")
            .json(&json!({"a": 1, "b": "x"})))
        .await,
        json!("ab")
    );
    let got = call(s.get("/rpc/pick?c=1")).await;
    assert_eq!(got.0, 404, "{}", got.1);
    assert_eq!(
        (&got.1["code"], &got.1["message"], &got.1["details"]),
        (
            &json!("PGRST202"),
            &json!("Could not find the function public.pick(c) in the schema cache"),
            &json!(
                "Searched for the function public.pick with parameter c, but no matches were found in the schema cache."
            ),
        )
    );
    // GET parameters are arguments unless their value is a filter.
    assert_eq!(
        ok(s.get("/rpc/films_of?d=2&select=id&id=eq.3")).await,
        json!([{"id": 3}])
    );
    // Form bodies: the pairs are the arguments.
    assert_eq!(
        ok(s.req(Method::POST, "/rpc/pick")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("a=1&b=x%20y"))
        .await,
        json!("ab")
    );
    assert_eq!(
        ok(s.req(Method::POST, "/rpc/add")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("a=2&b=40"))
        .await,
        json!(42)
    );
    // Only GET, HEAD and POST (PostgREST's PGRST101 wording).
    let got = call(s.req(Method::PATCH, "/rpc/pick")).await;
    assert_eq!(
        (got.0.as_u16(), got.1),
        (
            405,
            json!({
                "code": "PGRST101",
                "message": "Cannot use the PATCH method on RPC",
                "details": null,
                "hint": null,
            })
        )
    );
    // Defaults: every subset of optional parameters.
    assert_eq!(ok(s.get("/rpc/defaults_only")).await, json!(12));
    assert_eq!(ok(s.get("/rpc/defaults_only?y=5")).await, json!(15));
    assert_eq!(
        ok(s.req(Method::POST, "/rpc/defaults_only")
            .json(&json!({"x": 3})))
        .await,
        json!(32)
    );
}

/// Functions as RPC → table-valued functions: filters, order, pages,
/// counts and embeddings on their rows, as on the table they return.
#[tokio::test]
async fn set_returning_functions() {
    let s = stack().await;
    assert_eq!(
        ok(s.get(
            "/rpc/films_of?d=1&select=title,directors(last_name),actors!roles(last_name)&year=gt.2005&order=year.desc"
        ))
        .await,
        json!([
            {"title": "Interstellar", "directors": {"last_name": "Nolan"}, "actors": [{"last_name": "McConaughey"}, {"last_name": "Chalamet"}]},
            {"title": "Inception", "directors": {"last_name": "Nolan"}, "actors": [{"last_name": "DiCaprio"}]},
        ])
    );
    let (st, h, v) = send(
        s.req(Method::POST, "/rpc/films_of?select=id&order=id&limit=2")
            .header("Prefer", "count=exact")
            .json(&json!({"d": 1})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), range(&h), v),
        (206, "0-1/3", json!([{"id": 1}, {"id": 2}]))
    );
    // Null filtering and spread on a function's rows.
    assert_eq!(
        ok(s.get(
            "/rpc/films_of?d=2&select=title,...technical_specs(camera),nominations()&nominations=not.is.null"
        ))
        .await,
        json!([{"title": "Dune", "camera": "Alexa"}])
    );
    // A function returning a view's rows embeds through the view.
    assert_eq!(
        ok(s.get("/rpc/nominated?select=title,directors(last_name)&order=film_id")).await,
        json!([
            {"title": "Inception", "directors": {"last_name": "Nolan"}},
            {"title": "Dune", "directors": {"last_name": "Villeneuve"}},
        ])
    );
    assert_err(
        &call(s.get("/rpc/films_of?d=1&select=title,nope(*)")).await,
        400,
        "PGRST200",
    );
}
