//! API key checks: `apikey` or `Authorization: Bearer`, HS256 with the
//! tenant's secret. When both are sent, `Authorization` is the user's JWT and
//! `apikey` must still be a valid key of the tenant.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use madbase_platform::jwt::{self, JwtError};

/// Why a request's key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyError {
    Missing,
    Invalid(&'static str, JwtError),
}

impl KeyError {
    pub(crate) fn message(&self) -> String {
        match self {
            KeyError::Missing => {
                "no API key: send the apikey header or Authorization: Bearer <key>".to_owned()
            }
            KeyError::Invalid(which, e) => format!("invalid {which}: {e}"),
        }
    }

    /// A signature mismatch may mean the keys were rotated since the tenant
    /// was cached.
    pub(crate) fn maybe_stale_secret(&self) -> bool {
        matches!(self, KeyError::Invalid(_, JwtError::BadSignature))
    }
}

/// Checks the request's key(s) against the tenant's secret.
pub(crate) fn check(headers: &HeaderMap, tenant: &str, secret: &str) -> Result<(), KeyError> {
    let apikey = headers.get("apikey").map(|v| v.to_str().unwrap_or("\u{0}"));
    let bearer = headers
        .get(AUTHORIZATION)
        .map(|v| v.to_str().ok().and_then(jwt::bearer).unwrap_or("\u{0}"));
    if apikey.is_none() && bearer.is_none() {
        return Err(KeyError::Missing);
    }
    if let Some(key) = apikey {
        jwt::verify_tenant_token(secret, tenant, key)
            .map_err(|e| KeyError::Invalid("apikey", e))?;
    }
    if let Some(token) = bearer {
        jwt::verify_tenant_token(secret, tenant, token)
            .map_err(|e| KeyError::Invalid("Authorization bearer token", e))?;
    }
    Ok(())
}
