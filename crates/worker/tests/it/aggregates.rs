//! PostgREST 12 conformance: API → Aggregate Functions (`count()`,
//! `sum()`, `avg()`, `max()`, `min()` in `select`, grouped by the other
//! selected columns, with aliases and casts, on embedded resources), off
//! unless `MADBASE_DB_AGGREGATES_ENABLED=true` (PostgREST's
//! `db-aggregates-enabled`).

use serde_json::{Value, json};

use crate::embedding::films_stack;
use crate::helpers::*;

async fn ok(s: &Stack, path: &str) -> Value {
    let (st, v) = call(s.get(path)).await;
    assert_eq!(st, 200, "{path}: {v}");
    v
}

#[tokio::test]
async fn aggregate_functions() {
    let s = films_stack(&[("MADBASE_DB_AGGREGATES_ENABLED", "true")]).await;
    assert_eq!(ok(&s, "/films?select=count()").await, json!([{"count": 5}]));
    // Grouped by the other selected columns.
    assert_eq!(
        ok(&s, "/films?select=director_id,count()&order=director_id").await,
        json!([{"director_id": 1, "count": 3}, {"director_id": 2, "count": 2}])
    );
    assert_eq!(
        ok(&s, "/films?select=year.min(),year.max(),rating.sum()").await,
        json!([{"min": 2000, "max": 2021, "sum": 41.8}])
    );
    // Aliases, a cast of the result, a cast of the input, filters.
    assert_eq!(
        ok(
            &s,
            "/films?select=total:year.sum()::text,n:id.count(),rating::int.avg()::int&director_id=eq.2"
        )
        .await,
        json!([{"total": "4037", "n": 2, "avg": 8}])
    );
    // Grouped by a cast, renamed column.
    assert_eq!(
        ok(&s, "/films?select=lang:language::text,count()").await,
        json!([{"lang": "en", "count": 5}])
    );
    // On embedded resources: aggregated per parent row.
    assert_eq!(
        ok(
            &s,
            "/directors?select=last_name,films(count(),year.max())&order=id"
        )
        .await,
        json!([
            {"last_name": "Nolan", "films": [{"count": 3, "max": 2014}]},
            {"last_name": "Villeneuve", "films": [{"count": 2, "max": 2021}]},
        ])
    );
    // Grouped by a to-one embedding.
    assert_eq!(
        ok(
            &s,
            "/films?select=directors(last_name),count()&director_id=eq.2"
        )
        .await,
        json!([{"directors": {"last_name": "Villeneuve"}, "count": 2}])
    );
    // Grouped by a spread's columns.
    assert_eq!(
        ok(
            &s,
            "/films?select=rating.sum(),...directors(last_name)&director_id=eq.2"
        )
        .await,
        json!([{"sum": 15.9, "last_name": "Villeneuve"}])
    );
    // Aggregates inside a spread are hoisted to the parent (grouped by its columns).
    assert_eq!(
        ok(
            &s,
            "/films?select=language,...directors(n:id.count(),first_name.max(),last_name.min()::text)"
        )
        .await,
        json!([{"language": "en", "n": 5, "max": "Denis", "min": "Nolan"}])
    );
    assert_eq!(
        ok(
            &s,
            "/technical_specs?select=...films(year.max(),...directors(count()))"
        )
        .await,
        json!([{"max": 2021, "count": 2}])
    );
    // An empty result still counts.
    assert_eq!(
        ok(&s, "/films?select=count()&year=gt.3000").await,
        json!([{"count": 0}])
    );
    // Unknown columns are PostgREST's 42703.
    assert_err(&call(s.get("/films?select=nope.sum()")).await, 400, "42703");
}

#[tokio::test]
async fn disabled_by_default() {
    let s = films_stack(&[]).await;
    for q in [
        "select=count()",
        "select=year.sum()",
        "select=title,directors(id.count())",
    ] {
        let got = call(s.get(&format!("/films?{q}"))).await;
        assert_eq!(got.0, 400, "{q}: {}", got.1);
        assert_eq!(
            got.1,
            json!({
                "code": "PGRST123",
                "message": "Use of aggregate functions is not allowed",
                "details": null,
                "hint": null,
            }),
            "{q}"
        );
    }
}
