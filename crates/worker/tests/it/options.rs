//! OPTIONS as PostgREST 12 answers it (`Response.hs`: `RelInfoPlan`,
//! `RoutineInfoPlan`; its `OptionsSpec`): 200, no body, `Allow` naming the
//! methods the table, view or function takes.

use http::{HeaderMap, Method};
use serde_json::{Value, json};

use crate::helpers::*;

const EXTRA: &str = r#"
CREATE TABLE nokey (a int, b text);
CREATE VIEW item_names AS SELECT name, price FROM items;
CREATE VIEW item_counts AS SELECT count(*) AS n FROM items;
CREATE MATERIALIZED VIEW item_snapshot AS SELECT id, name FROM items;
CREATE VIEW trig_insert AS SELECT count(*) AS n FROM items;
CREATE FUNCTION trig_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER t_ins INSTEAD OF INSERT ON trig_insert FOR EACH ROW EXECUTE FUNCTION trig_noop();
CREATE VIEW trig_update_delete AS SELECT count(*) AS n FROM items;
CREATE TRIGGER t_upd INSTEAD OF UPDATE ON trig_update_delete FOR EACH ROW EXECUTE FUNCTION trig_noop();
CREATE TRIGGER t_del INSTEAD OF DELETE ON trig_update_delete FOR EACH ROW EXECUTE FUNCTION trig_noop();
"#;

async fn stack() -> Stack {
    let s = Stack::start().await;
    s.sql(EXTRA).await;
    s
}

async fn options(s: &Stack, path: &str) -> (u16, HeaderMap, Value) {
    let (st, h, v) = send(s.req(Method::OPTIONS, path)).await;
    (st.as_u16(), h, v)
}

async fn allow(s: &Stack, path: &str) -> String {
    let (st, h, v) = options(s, path).await;
    assert_eq!((st, &v), (200, &Value::Null), "{path}");
    assert_eq!(h.get("content-type"), None, "{path}");
    h.get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{path}: no Allow"))
        .to_owned()
}

/// Tables, views (auto-updatable, read-only, with INSTEAD OF triggers),
/// materialized views.
#[tokio::test]
async fn options_on_tables_and_views() {
    let s = stack().await;
    let full = "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE";
    assert_eq!(allow(&s, "/items").await, full);
    // PUT needs a primary key.
    assert_eq!(
        allow(&s, "/nokey").await,
        "OPTIONS,GET,HEAD,POST,PATCH,DELETE"
    );
    // An auto-updatable view without a key column.
    assert_eq!(
        allow(&s, "/item_names").await,
        "OPTIONS,GET,HEAD,POST,PATCH,DELETE"
    );
    // Read-only relations.
    assert_eq!(allow(&s, "/item_counts").await, "OPTIONS,GET,HEAD");
    assert_eq!(allow(&s, "/item_snapshot").await, "OPTIONS,GET,HEAD");
    // INSTEAD OF triggers make a view writable by those commands.
    assert_eq!(allow(&s, "/trig_insert").await, "OPTIONS,GET,HEAD,POST");
    assert_eq!(
        allow(&s, "/trig_update_delete").await,
        "OPTIONS,GET,HEAD,PATCH,DELETE"
    );
    // Not negotiated, not planned: any Accept, Prefer or query string.
    let (st, h, _) = send(
        s.req(Method::OPTIONS, "/items?select=nope&id=eq.x")
            .header("Accept", "image/png")
            .header("Prefer", "handling=strict, bogus"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), h.get("allow").map(|v| v.to_str().ok())),
        (200, Some(Some(full)))
    );
    assert_eq!(h.get("preference-applied"), None);
    // Same privileges as any request: a refused JWT is 401.
    let (st, _, _) = send(
        s.req(Method::OPTIONS, "/items")
            .header("Authorization", "Bearer not-a-jwt"),
    )
    .await;
    assert_eq!(st, 401);
}

/// An unknown table or view: 404.
#[tokio::test]
async fn options_on_an_unknown_table_is_404() {
    let s = stack().await;
    let (st, _, v) = options(&s, "/nope").await;
    assert_eq!(st, 404);
    assert_eq!(v["code"], "PGRST205");
    // A malformed query string is still PGRST100.
    let (st, _, v) = options(&s, "/items?id=zz.1").await;
    assert_eq!((st, &v["code"]), (400, &json!("PGRST100")));
}

/// Functions: volatile ones take POST only; stable and immutable ones GET
/// and HEAD too. The function is found by the query string's keys, which
/// cannot be arguments for OPTIONS (PostgREST 12): one with a required
/// parameter is PGRST202.
#[tokio::test]
async fn options_on_functions() {
    let s = stack().await;
    assert_eq!(allow(&s, "/rpc/touch").await, "OPTIONS,POST");
    assert_eq!(allow(&s, "/rpc/whoami").await, "OPTIONS,GET,HEAD,POST");
    assert_eq!(allow(&s, "/rpc/item_stats").await, "OPTIONS,GET,HEAD,POST");
    let (st, h, v) = options(&s, "/rpc/add").await;
    assert_eq!((st, &v["code"]), (404, &json!("PGRST202")));
    assert_eq!(h.get("allow"), None);
    let (st, _, v) = options(&s, "/rpc/add?a=1&b=2").await;
    assert_eq!((st, &v["code"]), (400, &json!("PGRST100")));
    let (st, _, v) = options(&s, "/rpc/nope").await;
    assert_eq!((st, &v["code"]), (404, &json!("PGRST202")));
    // Other methods are still PGRST101.
    assert_err(
        &call(s.req(Method::PUT, "/rpc/touch")).await,
        405,
        "PGRST101",
    );
}
