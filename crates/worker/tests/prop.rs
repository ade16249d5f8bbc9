//! Property tests of the worker's request grammar (issue 24): the query
//! string (select, filters, logic trees, order, limits, on_conflict,
//! columns) and the Prefer header never panic on any input, and
//! well-formed input built from the grammar always parses. Case counts
//! come from `PROPTEST_CASES` (small by default in CI; `cargo xtask soak`
//! runs many).

use http::{HeaderMap, HeaderValue};
use madbase_worker::prefer::{Prefer, Reported};
use madbase_worker::query;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces the grammar is made of, so random strings hit its branches.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("select=".to_owned()),
        Just("&".to_owned()),
        Just("=".to_owned()),
        Just(",".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(".".to_owned()),
        Just(":".to_owned()),
        Just("::".to_owned()),
        Just("->".to_owned()),
        Just("->>".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just("!inner".to_owned()),
        Just("...".to_owned()),
        Just("*".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("%".to_owned()),
        Just("%00".to_owned()),
        Just("%FF".to_owned()),
        Just("+".to_owned()),
        Just("or=(".to_owned()),
        Just("and(".to_owned()),
        Just("not.".to_owned()),
        Just("eq.".to_owned()),
        Just("in.(".to_owned()),
        Just("like(any).".to_owned()),
        Just("fts(english).".to_owned()),
        Just("is.null".to_owned()),
        Just("order=".to_owned()),
        Just(".desc.nullslast".to_owned()),
        Just("limit=".to_owned()),
        Just("offset=".to_owned()),
        Just("on_conflict=".to_owned()),
        Just("columns=".to_owned()),
        Just("count()".to_owned()),
        Just(".sum()".to_owned()),
        "[a-z_]{1,8}",
        "-?[0-9]{1,20}",
        any::<char>().prop_map(String::from),
    ]
}

fn grammar_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 0..40).prop_map(|t| t.concat())
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,10}"
}

/// A well-formed filter: `col=op.value`.
fn filter() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        Just("eq"),
        Just("neq"),
        Just("gt"),
        Just("gte"),
        Just("lt"),
        Just("lte"),
        Just("like"),
        Just("ilike"),
        Just("is"),
    ];
    (ident(), any::<bool>(), op, "[a-zA-Z0-9]{1,12}").prop_map(|(c, not, op, v)| {
        let v = if op == "is" { "null".to_owned() } else { v };
        // `c_` keeps clear of the reserved keys (select, order, or, and, ...).
        format!("c_{c}={}{op}.{v}", if not { "not." } else { "" })
    })
}

/// A well-formed select: columns, aliases, casts, JSON paths, embeds.
fn select() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        ident(),
        (ident(), ident()).prop_map(|(a, c)| format!("{a}:{c}")),
        (ident(), ident()).prop_map(|(c, k)| format!("{c}->>{k}")),
        ident().prop_map(|c| format!("{c}::text")),
        Just("*".to_owned()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        (ident(), prop::collection::vec(inner, 1..4))
            .prop_map(|(rel, items)| format!("{rel}({})", items.join(",")))
    })
    .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_query_string_never_panics(raw in grammar_soup()) {
        let _ = query::parse(&raw, &|k: &str| k.len().is_multiple_of(2));
        let _ = query::parse_select(&raw);
        let _ = query::parse_order(&raw);
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(raw in any::<Vec<u8>>()) {
        let raw = String::from_utf8_lossy(&raw);
        let _ = query::parse(&raw, &|_: &str| true);
        let _ = query::parse_select(&raw);
        let _ = query::parse_order(&raw);
        if let Ok(field) = query::parse_field(&raw) {
            let _ = query::parse_filter(field, &raw, true);
        }
    }

    #[test]
    fn prop_deep_nesting_is_refused_not_overflowed(depth in 0usize..20_000, or in any::<bool>()) {
        let tree = if or {
            format!("or=({}a.eq.1{})", "or(".repeat(depth), ")".repeat(depth))
        } else {
            format!("select={}a{}", "r(".repeat(depth), ")".repeat(depth))
        };
        let parsed = query::parse(&tree, &|_: &str| false);
        if depth > query::MAX_NESTING as usize {
            prop_assert!(parsed.is_err());
        }
    }

    #[test]
    fn prop_well_formed_queries_parse(
        sel in select(),
        filters in prop::collection::vec(filter(), 0..5),
        order in prop::collection::vec((ident(), any::<bool>()), 0..3),
        limit in 0i64..1_000_000,
    ) {
        let mut parts = vec![format!("select={sel}")];
        parts.extend(filters);
        if !order.is_empty() {
            let terms: Vec<String> = order
                .iter()
                .map(|(c, d)| format!("{c}.{}", if *d { "desc" } else { "asc" }))
                .collect();
            parts.push(format!("order={}", terms.join(",")));
        }
        parts.push(format!("limit={limit}"));
        let raw = parts.join("&");
        let q = query::parse(&raw, &|_: &str| false);
        prop_assert!(q.is_ok(), "{raw}: {:?}", q.err().map(|e| e.details));
    }

    #[test]
    fn prop_prefer_never_panics(values in prop::collection::vec(
        prop_oneof![
            "[ -~]{0,60}",
            Just("return=representation, count=exact".to_owned()),
            Just("tx=rollback;handling=strict".to_owned()),
            Just("max-affected=99999999999999999999".to_owned()),
            Just("timezone=".to_owned()),
            Just("params=single-object,,,;;==".to_owned()),
        ],
        0..4,
    )) {
        let mut headers = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.append("prefer", v);
            }
        }
        let mut p = Prefer::from_headers(&headers);
        let _ = p.check();
        let _ = p.count_plan(Some(1000));
        let _ = p.max_affected();
        p.resolve_timezone(|z| z == "UTC");
        let all = Reported {
            params: true,
            resolution: true,
            missing: true,
            ret: true,
            max_affected: true,
        };
        let _ = p.applied(all);
    }
}
