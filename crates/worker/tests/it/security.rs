//! Tenants, JWTs, roles, RLS and what Postgres sees of the request.

use base64::Engine as _;
use http::Method;
use madbase_tenancy::jwt;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn tenants_tokens_roles_and_rls() {
    let s = Stack::start().await;
    let url = format!("{}/rest/v1/items", s.worker_url);

    // The tenant header.
    assert_err(&call(s.http.get(&url)).await, 400, "tenant_required");
    assert_err(
        &call(
            s.http
                .get(&url)
                .header("X-Madbase-Tenant", "no-such-tenant"),
        )
        .await,
        404,
        "tenant_not_found",
    );
    assert_err(
        &call(s.http.get(&url).header("X-Madbase-Tenant", "../../x")).await,
        404,
        "tenant_not_found",
    );
    // No token at all: anon.
    let (st, v) = call(
        s.http
            .get(format!("{}/rest/v1/rpc/whoami", s.worker_url))
            .header("X-Madbase-Tenant", &s.tenant),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["role"], "anon");

    // Bad JWTs: wrong secret, expired, alg none, malformed, other tenant, bad role.
    let now = jwt::now();
    let wrong = jwt::sign(
        b"another-secret-another-secret-another",
        &json!({"role": "service_role", "exp": now + 60}),
    );
    let expired = jwt::sign(
        s.tenant_secret.as_bytes(),
        &json!({"role": "authenticated", "sub": ALICE, "exp": now - 10}),
    );
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(r#"{"role":"service_role"}"#)
    );
    let other = jwt::sign(
        s.tenant_secret.as_bytes(),
        &json!({"role": "anon", "ref": "another-tenant", "exp": now + 60}),
    );
    let postgres = jwt::sign(
        s.tenant_secret.as_bytes(),
        &json!({"role": "postgres", "exp": now + 60}),
    );
    for bad in [
        wrong.as_str(),
        expired.as_str(),
        none.as_str(),
        "not.a.jwt",
        "garbage",
        other.as_str(),
        postgres.as_str(),
    ] {
        assert_err(
            &call(s.get("/items").bearer_auth(bad)).await,
            401,
            "PGRST301",
        );
        assert_err(
            &call(
                s.http
                    .get(&url)
                    .header("X-Madbase-Tenant", &s.tenant)
                    .header("apikey", bad),
            )
            .await,
            401,
            "PGRST301",
        );
    }

    // Role, claims and request facts reach Postgres; GET is read-only.
    let alice = s.user_token(ALICE);
    let (_, v) = call(
        s.get("/rpc/whoami")
            .bearer_auth(&alice)
            .header("x-probe", "42"),
    )
    .await;
    assert_eq!(v["role"], "authenticated");
    assert_eq!(v["uid"], ALICE);
    assert_eq!(v["claims"]["sub"], ALICE);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/rest/v1/rpc/whoami");
    assert_eq!(v["header"], "42");
    assert_eq!(v["read_only"], "on");
    assert_eq!(v["timeout"], "10s");
    let (_, v) = call(
        s.req(Method::POST, "/rpc/whoami")
            .bearer_auth(&s.service_key),
    )
    .await;
    assert_eq!(
        (v["role"].clone(), v["method"].clone()),
        (json!("service_role"), json!("POST"))
    );

    // RLS: anon sees public rows, alice public + her own, service_role all.
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|r| r["id"].as_i64().expect("id"))
            .collect()
    };
    let (_, v) = call(s.get("/posts?select=id&order=id")).await;
    assert_eq!(ids(&v), [1, 3]);
    let (_, v) = call(s.get("/posts?select=id&order=id").bearer_auth(&alice)).await;
    assert_eq!(ids(&v), [1, 2, 3]);
    let (_, v) = call(
        s.get("/posts?select=id&order=id")
            .bearer_auth(s.user_token(BOB)),
    )
    .await;
    assert_eq!(ids(&v), [1, 3, 4]);
    let (_, v) = call(s.service(Method::GET, "/posts?select=id&order=id")).await;
    assert_eq!(ids(&v), [1, 2, 3, 4]);
    // Privileges: 401 for anon, 403 for a user.
    assert_err(&call(s.get("/secrets")).await, 401, "42501");
    assert_err(
        &call(s.get("/secrets").bearer_auth(&alice)).await,
        403,
        "42501",
    );

    // Key rotation: the old keys stop working, the new ones work at once
    // (a signature failure refreshes the cached tenant).
    let (_, before) = call(s.get("/items?id=eq.1")).await;
    assert_eq!(before[0]["id"], 1);
    let new_anon = &madbase_testkit::tenant::rotate_keys(&s.http, &s.control_url, &s.tenant).await;
    let (st, v) = call(
        s.http
            .get(format!("{url}?id=eq.1"))
            .header("X-Madbase-Tenant", &s.tenant)
            .header("apikey", new_anon),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_err(&call(s.get("/items?id=eq.1")).await, 401, "PGRST301");
}
