//! Tenants made through a running control plane's admin API.

use std::time::Duration;

use madbase_platform::secrets::ExposeSecret as _;
use madbase_tenancy::jwt;
use serde_json::{Value, json};

use crate::service::{JWT_SECRET, unique_id};

/// A platform token with `role` (`admin`, `internal`) signed with [`JWT_SECRET`].
pub fn platform_token(role: &str) -> String {
    jwt::platform_token(JWT_SECRET, role, Duration::from_secs(600))
}

/// A tenant as control created it.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// The tenant's `anon` API key.
    pub anon_key: String,
    /// The tenant's `service_role` API key.
    pub service_key: String,
    /// The tenant's JWT secret (from control's internal API).
    pub jwt_secret: String,
}

/// Rotates tenant `id`'s keys through control at `control_url` (admin
/// token); asserts it succeeded and returns the new anon key.
pub async fn rotate_keys(http: &reqwest::Client, control_url: &str, id: &str) -> String {
    let resp = http
        .post(format!("{control_url}/v1/tenants/{id}/keys/rotate"))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("rotate");
    let status = resp.status();
    let body: Value = resp.json().await.expect("rotate json");
    assert_eq!(status, 200, "rotating {id}: {body}");
    body["anon_key"].as_str().expect("anon_key").to_owned()
}

impl Tenant {
    /// Creates a tenant `<prefix>-<unique>` through control at `control_url`.
    pub async fn create(http: &reqwest::Client, control_url: &str, prefix: &str) -> Tenant {
        let id = unique_id(prefix);
        let resp = http
            .post(format!("{control_url}/v1/tenants"))
            .bearer_auth(platform_token("admin"))
            .json(&json!({ "id": id }))
            .send()
            .await
            .expect("create tenant");
        assert_eq!(resp.status(), 201, "creating tenant {id}");
        let created: Value = resp.json().await.expect("json");
        let info: madbase_tenancy::TenantInfo = madbase_tenancy::internal_get(
            http,
            control_url,
            &JWT_SECRET.into(),
            &format!("tenants/{id}"),
        )
        .await
        .expect("internal lookup")
        .expect("the tenant just created");
        let text = |v: &Value, field: &str| v[field].as_str().expect(field).to_owned();
        Tenant {
            anon_key: text(&created, "anon_key"),
            service_key: text(&created, "service_role_key"),
            jwt_secret: info.jwt_secret.expose_secret().to_owned(),
            id,
        }
    }

    /// Runs SQL as the tenant's owner through control; asserts it succeeded.
    pub async fn sql(&self, http: &reqwest::Client, control_url: &str, query: &str) -> Value {
        let resp = http
            .post(format!("{control_url}/v1/tenants/{}/sql", self.id))
            .bearer_auth(platform_token("admin"))
            .json(&json!({ "query": query }))
            .send()
            .await
            .expect("sql");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Keys that every check of this tenant's keys must refuse, each with
    /// its case: not a JWT, unsigned (`alg: none`), another algorithm,
    /// expired, not yet valid, a role that is not an API role, signed with
    /// another secret.
    pub fn bad_keys(&self) -> Vec<(&'static str, String)> {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let unsigned = |alg: &str, signature: &str| {
            format!(
                "{}.{}.{signature}",
                b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
                b64(r#"{"role":"service_role"}"#)
            )
        };
        let signed = |claims: Value| jwt::sign(self.jwt_secret.as_bytes(), &claims);
        let now = jwt::now();
        vec![
            ("garbage", "garbage".to_owned()),
            ("malformed", "not.a.jwt".to_owned()),
            ("alg none", unsigned("none", "")),
            ("HS512", unsigned("HS512", "c2ln")),
            ("expired", signed(json!({"role": "anon", "exp": now - 5}))),
            (
                "not yet valid",
                signed(json!({"role": "anon", "nbf": now + 600})),
            ),
            ("role postgres", signed(json!({"role": "postgres"}))),
            (
                "wrong secret",
                jwt::sign(
                    b"not-the-tenant-secret-not-the-tenant-secret",
                    &json!({"role": "service_role"}),
                ),
            ),
        ]
    }

    /// A user JWT (role `authenticated`, subject `sub`, valid ten minutes)
    /// signed with the tenant's secret.
    pub fn user_token(&self, sub: &str) -> String {
        let now = jwt::now();
        jwt::sign(
            self.jwt_secret.as_bytes(),
            &json!({ "sub": sub, "role": "authenticated", "iat": now, "exp": now + 600 }),
        )
    }
}
