//! Property tests of key extraction (issue 24): the bearer parser and the
//! tenant token check never panic on any input, and refuse everything not
//! signed with the tenant's secret.

use madbase_tenancy::jwt;
use proptest::prelude::*;

const SECRET: &str = "prop-secret-prop-secret-prop-secret!";

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

/// Token-shaped strings: base64url-ish segments and dots.
fn tokenish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof!["[A-Za-z0-9_-]{0,40}", Just(".".to_owned()), any::<String>()],
        0..8,
    )
    .prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_bearer_never_panics(v in any::<String>()) {
        if let Some(t) = jwt::bearer(&v) {
            prop_assert!(v.contains(t));
        }
    }

    #[test]
    fn prop_unsigned_tokens_are_refused(t in tokenish()) {
        prop_assert!(jwt::verify_tenant_token(SECRET, "t", &t).is_err());
        let cache = jwt::VerifiedTokens::default();
        prop_assert!(cache.verify(SECRET, "t", &t).is_err());
    }

    #[test]
    fn prop_claims_of_any_shape_never_panic(claims in prop::collection::btree_map(
        prop_oneof![Just("role".to_owned()), Just("exp".to_owned()), Just("nbf".to_owned()), Just("ref".to_owned()), "[a-z]{1,5}"],
        prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z_]{0,15}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            Just(serde_json::json!(["service_role"])),
        ],
        0..6,
    )) {
        let token = jwt::sign(SECRET.as_bytes(), &claims);
        if let Ok(ok) = jwt::verify_tenant_token(SECRET, "t", &token) {
            // Accepted only with an API role and numeric time claims.
            prop_assert!(ok.get("role").and_then(|r| r.as_str()).is_some_and(|r| jwt::API_ROLES.contains(&r)));
            for c in ["exp", "nbf"] {
                prop_assert!(ok.get(c).is_none_or(serde_json::Value::is_number));
            }
        }
    }
}
