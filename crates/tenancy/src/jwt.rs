//! HS256 JSON Web Tokens: the platform's admin and internal tokens (signed
//! with `JWT_SECRET`) and tenants' API keys (signed with the tenant's secret).
//!
//! Only HS256 is accepted: `alg: none` and every other algorithm fail, as do
//! expired tokens and tokens not yet valid (`exp`/`nbf`, no leeway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Role;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The `exp` claim is in the past.
    #[error("the token has expired")]
    Expired,
    /// The `nbf` claim is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The HMAC does not verify with the secret.
    #[error("the token's signature does not match")]
    BadSignature,
    /// The header names an algorithm other than HS256.
    #[error("only HS256 tokens are accepted")]
    BadAlgorithm,
    /// The token or its claims cannot be decoded; the text says why.
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

/// Claims of platform tokens (`role: admin` or `internal`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlatformClaims {
    /// `admin` or `internal`.
    pub role: String,
    /// The issuer, `madbase`.
    pub iss: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs `claims` with HS256.
pub fn sign(secret: &[u8], claims: &impl Serialize) -> String {
    // HMAC signing of a serialisable value cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Verifies an HS256 token and returns its claims.
pub fn verify<T: DeserializeOwned>(secret: &[u8], token: &str) -> Result<T, JwtError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    match jsonwebtoken::decode::<T>(token, &DecodingKey::from_secret(secret), &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => JwtError::BadAlgorithm,
            _ => JwtError::Malformed(e.to_string()),
        }),
    }
}

/// A platform token with `role` valid for `ttl`.
pub fn platform_token(secret: &str, role: &str, ttl: Duration) -> String {
    let iat = now();
    sign(
        secret.as_bytes(),
        &PlatformClaims {
            role: role.to_owned(),
            iss: "madbase".to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
        },
    )
}

/// Verifies a platform token and checks its role.
pub fn verify_platform(secret: &str, token: &str, role: &str) -> Result<PlatformClaims, JwtError> {
    let claims: PlatformClaims = verify(secret.as_bytes(), token)?;
    if claims.role != role {
        return Err(JwtError::Malformed(format!(
            "role {:?} is not {role:?}",
            claims.role
        )));
    }
    Ok(claims)
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_refusals() {
        let token = platform_token(SECRET, "admin", Duration::from_secs(60));
        assert_eq!(
            verify_platform(SECRET, &token, "admin")
                .expect("valid")
                .role,
            "admin"
        );
        assert!(matches!(
            verify_platform(SECRET, &token, "internal"),
            Err(JwtError::Malformed(_))
        ));
        assert_eq!(
            verify_platform("another-secret-another-secret-xx", &token, "admin"),
            Err(JwtError::BadSignature)
        );
        let expired = sign(
            SECRET.as_bytes(),
            &PlatformClaims {
                role: "admin".into(),
                iss: "madbase".into(),
                iat: 1,
                exp: now() - 1,
            },
        );
        assert_eq!(
            verify_platform(SECRET, &expired, "admin"),
            Err(JwtError::Expired)
        );
        // alg: none, with no signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(
                r#"{{"role":"admin","iss":"madbase","iat":1,"exp":{}}}"#,
                now() + 60
            ))
        );
        assert!(verify_platform(SECRET, &none, "admin").is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &PlatformClaims {
                role: "admin".into(),
                iss: "madbase".into(),
                iat: 1,
                exp: now() + 60,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        assert_eq!(
            verify_platform(SECRET, &hs512, "admin"),
            Err(JwtError::BadAlgorithm)
        );
        assert!(matches!(
            verify_platform(SECRET, "garbage", "admin"),
            Err(JwtError::Malformed(_))
        ));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn tenant_token_with_unreadable_exp_or_nbf_is_refused() {
        for claims in [
            serde_json::json!({"role": "anon", "exp": "never"}),
            serde_json::json!({"role": "anon", "nbf": [1]}),
            serde_json::json!({"role": "anon", "exp": null}),
        ] {
            let token = sign(SECRET.as_bytes(), &claims);
            assert!(
                matches!(
                    verify_tenant_token(SECRET, "t", &token),
                    Err(JwtError::Malformed(_))
                ),
                "{claims}"
            );
        }
        let ok = sign(
            SECRET.as_bytes(),
            &serde_json::json!({"role": "anon", "exp": now() + 60}),
        );
        assert!(verify_tenant_token(SECRET, "t", &ok).is_ok());
    }
}

/// Roles a tenant token may carry (the names of [`Role::ALL`]).
pub const API_ROLES: [&str; 3] = [
    Role::Anon.as_str(),
    Role::Authenticated.as_str(),
    Role::ServiceRole.as_str(),
];

/// A tenant API key (`anon` / `service_role`, issued by control).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyClaims {
    /// `anon` or `service_role`.
    pub role: String,
    /// The issuer, `madbase`.
    pub iss: String,
    /// The tenant id the key belongs to (the `ref` claim).
    #[serde(rename = "ref")]
    pub tenant: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
}

/// Ten years: API keys are long-lived; rotation revokes them.
pub const API_KEY_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Issues a tenant API key for `role`.
pub fn api_key(tenant_secret: &str, tenant: &str, role: &str) -> String {
    let iat = now();
    sign(
        tenant_secret.as_bytes(),
        &ApiKeyClaims {
            role: role.to_owned(),
            iss: "madbase".to_owned(),
            tenant: tenant.to_owned(),
            iat,
            exp: iat + API_KEY_TTL.as_secs(),
        },
    )
}

/// Verifies a tenant token (API key or user JWT) with the tenant's secret:
/// HS256, `exp`/`nbf`, a `role` among [`API_ROLES`], and `ref`, when
/// present, naming this tenant. Returns all claims.
pub fn verify_tenant_token(
    tenant_secret: &str,
    tenant: &str,
    token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let claims: serde_json::Map<String, serde_json::Value> =
        verify(tenant_secret.as_bytes(), token)?;
    match claims.get("role").and_then(|r| r.as_str()) {
        Some(role) if API_ROLES.contains(&role) => {}
        Some(role) => return Err(JwtError::Malformed(format!("role {role:?} is not allowed"))),
        None => return Err(JwtError::Malformed("the token has no role".to_owned())),
    }
    // The JWT library skips an `exp`/`nbf` it cannot read as a number:
    // such a token would never expire. Refuse it, as PostgREST does.
    for claim in ["exp", "nbf"] {
        if claims.get(claim).is_some_and(|v| !v.is_number()) {
            return Err(JwtError::Malformed(format!(
                "the {claim} claim is not a number"
            )));
        }
    }
    if let Some(r) = claims.get("ref")
        && r.as_str() != Some(tenant)
    {
        return Err(JwtError::Malformed(
            "the token belongs to another tenant".to_owned(),
        ));
    }
    Ok(claims)
}

/// Claims of a verified tenant token.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Verified claims with their JSON text (what the worker hands Postgres as
/// `request.jwt.claims`), serialised once per token, not per request, and
/// the role they name.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedClaims {
    /// Every claim of the token.
    pub claims: Claims,
    /// `claims` as JSON text.
    pub json: String,
    /// The `role` claim ([`verify_tenant_token`] refuses any other).
    pub role: Role,
}

impl VerifiedClaims {
    /// `claims` (already verified) with their JSON text; a missing or
    /// unknown `role` counts as `anon`.
    pub fn new(claims: Claims) -> Self {
        // A map of JSON values always serialises.
        let json = serde_json::to_string(&claims).unwrap_or_default();
        let role = claims
            .get("role")
            .and_then(serde_json::Value::as_str)
            .and_then(Role::parse)
            .unwrap_or(Role::Anon);
        Self { claims, json, role }
    }

    /// The claims of a request without a token: `{"role":"anon"}`.
    pub fn anon() -> Self {
        Self::new(
            [(
                "role".to_owned(),
                serde_json::Value::from(Role::Anon.as_str()),
            )]
            .into_iter()
            .collect(),
        )
    }
}

impl std::ops::Deref for VerifiedClaims {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

/// Tenant tokens already verified, keyed by the token's text, so that a
/// client sending the same key or JWT again costs a lookup instead of a
/// signature check (HMAC-SHA256) and two JSON decodes. An entry is only
/// used for the same tenant, with the very secret that verified it, and
/// while its `nbf`/`exp` still hold (no leeway, as in [`verify`]); refused
/// tokens are never kept; the cache starts over at [`VerifiedTokens::MAX`].
/// [`crate::Tenancy`] drops a tenant's entries when control's change feed
/// announces a change to it ([`VerifiedTokens::forget_tenant`]), and all of
/// them after a gap in the feed.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    /// By token: a hit is a lookup by `&str`, no allocation per request.
    entries: Mutex<HashMap<String, Verified>>,
}

#[derive(Debug)]
struct Verified {
    tenant: String,
    secret: String,
    nbf: Option<u64>,
    exp: Option<u64>,
    claims: Arc<VerifiedClaims>,
}

impl VerifiedTokens {
    /// Entries kept before the cache starts over.
    pub const MAX: usize = 10_000;

    /// [`verify_tenant_token`], remembered.
    pub fn verify(
        &self,
        tenant_secret: &str,
        tenant: &str,
        token: &str,
    ) -> Result<Arc<VerifiedClaims>, JwtError> {
        let t = now();
        if let Some(v) = self.lock().get(token)
            && v.tenant == tenant
            && v.secret == tenant_secret
            && v.nbf.is_none_or(|nbf| nbf <= t)
            && v.exp.is_none_or(|exp| t <= exp)
        {
            return Ok(v.claims.clone());
        }
        let claims = verify_tenant_token(tenant_secret, tenant, token)?;
        let time = |name: &str| claims.get(name).and_then(serde_json::Value::as_f64);
        let entry = Verified {
            tenant: tenant.to_owned(),
            secret: tenant_secret.to_owned(),
            // Rounded towards "not valid": nbf up, exp down.
            nbf: time("nbf").map(|t| t.ceil() as u64),
            exp: time("exp").map(|t| t.floor() as u64),
            claims: Arc::new(VerifiedClaims::new(claims)),
        };
        let claims = entry.claims.clone();
        let mut entries = self.lock();
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(token.to_owned(), entry);
        Ok(claims)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops every token verified for `tenant` (its keys were rotated, it
    /// was deleted, or its settings changed: control's change feed).
    pub fn forget_tenant(&self, tenant: &str) {
        self.lock().retain(|_, v| v.tenant != tenant);
    }

    /// Drops every entry (the change feed may have missed changes).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// True when no verified token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Verified>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
