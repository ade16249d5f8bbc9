//! PostgREST 12 conformance, media types in and out, by the sections of
//! PostgREST's documentation: API → Tables and Views → Insert / Update and
//! Bulk insert with `Content-Type: text/csv` (its `ApiRequest/Payload.hs`:
//! the first line names the columns, every field is text cast by Postgres,
//! `NULL` is null, an empty field the empty string; a malformed body is 400
//! PGRST102), and Observability → Execution plan (`Accept:
//! application/vnd.pgrst.plan[+json|+text]`, `for=`, `options=`, behind
//! `db-plan-enabled`).

use http::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const EXTRA: &str = r"
CREATE TABLE csv_t (id int PRIMARY KEY, name text, qty int, tags text[]);
INSERT INTO csv_t VALUES (1, 'one', 1, '{x}');
";

async fn stack_with(env: &[(&str, &str)]) -> Stack {
    let s = Stack::start_with(env).await;
    s.sql(EXTRA).await;
    s
}

async fn rows(s: &Stack) -> Value {
    let (st, v) = call(s.get("/csv_t?order=id")).await;
    assert_eq!(st, 200, "{v}");
    v
}

fn csv(rb: reqwest::RequestBuilder, body: &'static str) -> reqwest::RequestBuilder {
    rb.header("Content-Type", "text/csv").body(body)
}

/// API → Tables and Views → Insert, Bulk insert, Upsert and Update with a
/// CSV body.
#[tokio::test]
async fn csv_request_bodies() {
    let s = stack_with(&[]).await;
    // Bulk insert: quoted fields (commas, quotes, line breaks), NULL, empty
    // strings, an array literal, CRLF line ends.
    let (st, h, v) = send(
        csv(
            s.service(Method::POST, "/csv_t")
                .header("Prefer", "return=representation"),
            "id,name,qty,tags\r\n2,\"a, \"\"b\"\"\",NULL,\"{p,q}\"\r\n3,,3,NULL\r\n4,\"two\nlines\",4,{}\r\n",
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(range(&h), "*/*");
    assert_eq!(
        v,
        json!([
            {"id": 2, "name": "a, \"b\"", "qty": null, "tags": ["p", "q"]},
            {"id": 3, "name": "", "qty": 3, "tags": null},
            {"id": 4, "name": "two\nlines", "qty": 4, "tags": []},
        ])
    );
    // One row, no final line break; 201 without a body.
    let (st, v) = call(csv(s.service(Method::POST, "/csv_t"), "id,name\n5,five")).await;
    assert_eq!((st.as_u16(), v), (201, Value::Null));
    // A header alone inserts nothing.
    let (st, v) = call(csv(
        s.service(Method::POST, "/csv_t")
            .header("Prefer", "return=representation"),
        "id,name\n",
    ))
    .await;
    assert_eq!((st.as_u16(), v), (201, json!([])));
    // The response can be CSV too.
    let resp = csv(
        s.service(Method::POST, "/csv_t?select=id,name")
            .header("Prefer", "return=representation")
            .header("Accept", "text/csv"),
        "id,name\n6,six",
    )
    .send()
    .await
    .expect("request");
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(resp.text().await.expect("body"), "id,name\n6,six");
    // An empty field is the empty string, which an int column refuses
    // (Postgres' 22P02, 400 as PostgREST maps it).
    assert_err(
        &call(csv(s.service(Method::POST, "/csv_t"), "id,qty\n7,\n")).await,
        400,
        "22P02",
    );
    // Upsert: merge-duplicates updates the existing row, inserts the new.
    let (st, h, v) = send(csv(
        s.service(Method::POST, "/csv_t?select=id,name").header(
            "Prefer",
            "return=representation,resolution=merge-duplicates",
        ),
        "id,name\n1,uno\n8,eight",
    ))
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v,
        json!([{"id": 1, "name": "uno"}, {"id": 8, "name": "eight"}])
    );
    assert_eq!(
        h["preference-applied"],
        "resolution=merge-duplicates, return=representation"
    );
    // ignore-duplicates keeps the existing row.
    let (st, v) = call(csv(
        s.service(Method::POST, "/csv_t?select=id,name").header(
            "Prefer",
            "return=representation,resolution=ignore-duplicates",
        ),
        "id,name\n1,ignored\n9,nine",
    ))
    .await;
    assert_eq!((st.as_u16(), v), (201, json!([{"id": 9, "name": "nine"}])));
    // Update: the one record's columns, NULL included.
    let (st, v) = call(csv(
        s.service(Method::PATCH, "/csv_t?id=eq.1"),
        "name,qty\nfirst,NULL\n",
    ))
    .await;
    assert_eq!((st.as_u16(), v), (204, Value::Null));
    let all = rows(&s).await;
    assert_eq!(
        all[0],
        json!({"id": 1, "name": "first", "qty": null, "tags": ["x"]})
    );
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(8),
        "ids 1-6, 8, 9 and nothing else: {all}"
    );
    // A column the table lacks, as with JSON: PGRST204.
    assert_err(
        &call(csv(s.service(Method::POST, "/csv_t"), "id,nope\n10,x")).await,
        400,
        "PGRST204",
    );
}

/// A malformed CSV body is 400 PGRST102 (PostgREST's invalid body), and
/// nothing is written.
#[tokio::test]
async fn csv_request_bodies_malformed() {
    let s = stack_with(&[]).await;
    for body in [
        "id,name\n10",
        "id,name\n10,a,b",
        "id,name\n10,\"open",
        "id,name\n10,a\"b",
    ] {
        let got = call(csv(s.service(Method::POST, "/csv_t"), body)).await;
        assert_err(&got, 400, "PGRST102");
    }
    assert_err(
        &call(csv(
            s.service(Method::PATCH, "/csv_t?id=eq.1"),
            "name\n\"x\"y",
        ))
        .await,
        400,
        "PGRST102",
    );
    assert_eq!(
        rows(&s).await,
        json!([{"id": 1, "name": "one", "qty": 1, "tags": ["x"]}])
    );
}

const PLAN_JSON: &str = "application/vnd.pgrst.plan+json";

/// Observability → Execution plan: off by default (`db-plan-enabled`), the
/// plan media types are then not acceptable (406 PGRST107).
#[tokio::test]
async fn execution_plan_disabled() {
    let s = stack_with(&[]).await;
    for accept in [
        PLAN_JSON,
        "application/vnd.pgrst.plan",
        "application/vnd.pgrst.plan+text; options=analyze",
    ] {
        assert_err(
            &call(s.get("/csv_t").header("Accept", accept)).await,
            406,
            "PGRST107",
        );
    }
    // Another acceptable type after it is used.
    let (st, v) = call(s.get("/csv_t?select=id").header(
        "Accept",
        "application/vnd.pgrst.plan+json, application/json",
    ))
    .await;
    assert_eq!((st.as_u16(), v), (200, json!([{"id": 1}])));
}

fn ctype(h: &http::HeaderMap) -> &str {
    h.get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Observability → Execution plan, with `MADBASE_DB_PLAN_ENABLED=true`:
/// the `EXPLAIN` of the request's statement, in JSON (`+json`) or text
/// (`+text` or no suffix), for the media type named by `for=`, with the
/// `EXPLAIN` options named by `options=`; 200 without `Content-Range`.
#[tokio::test]
async fn execution_plan() {
    let s = stack_with(&[("MADBASE_DB_PLAN_ENABLED", "true")]).await;
    // JSON: EXPLAIN (FORMAT JSON)'s one document.
    let (st, h, v) = send(s.get("/csv_t?id=eq.1").header("Accept", PLAN_JSON)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        ctype(&h),
        "application/vnd.pgrst.plan+json; for=\"application/json\"; charset=utf-8"
    );
    assert!(h.get("content-range").is_none());
    assert!(v[0]["Plan"]["Node Type"].is_string(), "{v}");
    assert!(v[0]["Plan"]["Total Cost"].is_number(), "{v}");
    assert!(v[0]["Plan"].get("Actual Rows").is_none(), "{v}");
    // Text, the default format.
    for accept in [
        "application/vnd.pgrst.plan",
        "application/vnd.pgrst.plan+text",
    ] {
        let (st, h, v) = send(s.get("/csv_t").header("Accept", accept)).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            ctype(&h),
            "application/vnd.pgrst.plan+text; for=\"application/json\"; charset=utf-8"
        );
        let text = v.as_str().unwrap_or_else(|| panic!("text plan: {v}"));
        assert!(text.contains("cost="), "{text}");
        assert!(text.ends_with('\n'), "{text}");
    }
    // for= another media type, options= (PostgREST's order in the answer).
    let (st, h, v) = send(s.get("/csv_t").header(
        "Accept",
        "application/vnd.pgrst.plan+json; for=\"text/csv\"; options=buffers|analyze",
    ))
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        ctype(&h),
        "application/vnd.pgrst.plan+json; for=\"text/csv\"; options=analyze|buffers; charset=utf-8"
    );
    assert!(v[0]["Plan"]["Actual Rows"].is_number(), "{v}");
    assert!(v[0]["Execution Time"].is_number(), "{v}");
    // for= a media type the data API does not produce: 406.
    assert_err(
        &call(s.get("/csv_t").header(
            "Accept",
            "application/vnd.pgrst.plan+json; for=\"text/xml\"",
        ))
        .await,
        406,
        "PGRST107",
    );
    // A write's plan, without analyze, writes nothing.
    let (st, h, v) = send(
        s.service(Method::POST, "/csv_t")
            .header("Accept", PLAN_JSON)
            .header("Prefer", "return=representation")
            .json(&json!({"id": 50, "name": "planned"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        ctype(&h).starts_with("application/vnd.pgrst.plan+json"),
        "{h:?}"
    );
    assert!(v.to_string().contains("Insert"), "{v}");
    let (st, v) = call(
        s.service(Method::PATCH, "/csv_t?id=eq.1")
            .header("Accept", "application/vnd.pgrst.plan+text")
            .json(&json!({"name": "planned"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v.as_str().is_some_and(|t| t.contains("Update")), "{v}");
    assert_eq!(
        rows(&s).await,
        json!([{"id": 1, "name": "one", "qty": 1, "tags": ["x"]}])
    );
    // An rpc's plan.
    let (st, v) = call(s.get("/rpc/numbers?n=3").header("Accept", PLAN_JSON)).await;
    assert_eq!(st, 200, "{v}");
    assert!(v[0]["Plan"].is_object(), "{v}");
    // Singular media: the plan, not PGRST116.
    let (st, v) = call(s.get("/csv_t").header(
        "Accept",
        "application/vnd.pgrst.plan+json; for=\"application/vnd.pgrst.object+json\"",
    ))
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v[0]["Plan"].is_object(), "{v}");
}

/// `Accept` with q-values, weighed as PostgREST 12 does (wai-extra's
/// `parseHttpAccept`: by quality, then specificity, then order; `q=0` is
/// last, not excluded).
#[tokio::test]
async fn accept_quality_values() {
    let s = stack_with(&[]).await;
    let ctype = |accept: &'static str| {
        let s = &s;
        async move {
            let (st, h, _) = send(s.get("/csv_t?select=id").header("Accept", accept)).await;
            assert_eq!(st, 200, "{accept}");
            h["content-type"].to_str().expect("ascii").to_owned()
        }
    };
    let json_type = "application/json; charset=utf-8";
    let csv_type = "text/csv; charset=utf-8";
    // Listed first but weighed less: JSON wins (before, CSV did).
    assert_eq!(ctype("text/csv;q=0.5, application/json").await, json_type);
    assert_eq!(
        ctype("application/json;q=0.4, text/csv;q=0.9").await,
        csv_type
    );
    // Equal weights: the more specific, then the first.
    assert_eq!(ctype("*/*, text/csv").await, csv_type);
    assert_eq!(ctype("text/csv, application/json").await, csv_type);
    assert_eq!(
        ctype("application/json;q=0.5, application/vnd.pgrst.object+json;nulls=stripped;q=0.5")
            .await,
        "application/vnd.pgrst.object+json;nulls=stripped; charset=utf-8"
    );
    // q=0 only sorts last.
    assert_eq!(ctype("text/csv;q=0").await, csv_type);
    assert_eq!(
        ctype("text/csv;q=0, application/json;q=0.1").await,
        json_type
    );
    // Types the API does not produce are skipped, whatever their weight.
    assert_eq!(ctype("text/xml;q=1, text/csv;q=0.2").await, csv_type);
    let (st, v) = call(
        s.get("/csv_t")
            .header("Accept", "text/xml;q=0.9, image/png"),
    )
    .await;
    assert_eq!((st.as_u16(), &v["code"]), (406, &json!("PGRST107")));
}
