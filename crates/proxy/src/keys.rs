//! API key checks: `apikey` or `Authorization: Bearer`, HS256 with the
//! tenant's secret. When both are sent, `Authorization` is the user's JWT and
//! `apikey` must still be a valid key of the tenant.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use madbase_tenancy::jwt::{self, JwtError};

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

/// Checks the request's key(s) against the tenant's secret (verified keys
/// are remembered, see [`jwt::VerifiedTokens`]).
pub(crate) fn check(
    verified: &jwt::VerifiedTokens,
    headers: &HeaderMap,
    tenant: &str,
    secret: &str,
) -> Result<(), KeyError> {
    let apikey = headers.get("apikey").map(|v| v.to_str().unwrap_or("\u{0}"));
    let bearer = headers
        .get(AUTHORIZATION)
        .map(|v| v.to_str().ok().and_then(jwt::bearer).unwrap_or("\u{0}"));
    if apikey.is_none() && bearer.is_none() {
        return Err(KeyError::Missing);
    }
    if let Some(key) = apikey {
        verified
            .verify(secret, tenant, key)
            .map_err(|e| KeyError::Invalid("apikey", e))?;
    }
    if let Some(token) = bearer {
        verified
            .verify(secret, tenant, token)
            .map_err(|e| KeyError::Invalid("Authorization bearer token", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use http::HeaderValue;
    use madbase_tenancy::jwt;

    use super::*;

    const SECRET: &str = "tenant-secret-tenant-secret-tenant-secret";

    fn key(secret: &str, ttl: Duration) -> HeaderMap {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let token = jwt::sign(
            secret.as_bytes(),
            &jwt::ApiKeyClaims {
                role: "anon".into(),
                iss: "madbase".into(),
                tenant: "acme".into(),
                iat,
                exp: iat + ttl.as_secs(),
            },
        );
        let mut h = HeaderMap::new();
        h.insert("apikey", HeaderValue::from_str(&token).expect("header"));
        h
    }

    #[test]
    fn verified_keys_are_reused_only_with_their_secret() {
        let v = jwt::VerifiedTokens::default();
        let h = key(SECRET, Duration::from_secs(600));
        assert_eq!(check(&v, &h, "acme", SECRET), Ok(()));
        assert_eq!(check(&v, &h, "acme", SECRET), Ok(()));
        assert_eq!(v.len(), 1);
        // Rotated secret: the cached entry does not count.
        let rotated = "another-secret-another-secret-another-secret";
        assert_eq!(
            check(&v, &h, "acme", rotated),
            Err(KeyError::Invalid("apikey", JwtError::BadSignature))
        );
        // Another tenant with the same secret: its own check (the ref claim).
        assert!(check(&v, &h, "other", SECRET).is_err());
        // Refused keys are not kept.
        assert_eq!(v.len(), 1);
        assert_eq!(
            check(&v, &HeaderMap::new(), "acme", SECRET),
            Err(KeyError::Missing)
        );
    }

    #[test]
    fn a_cached_key_expires() {
        let v = jwt::VerifiedTokens::default();
        let h = key(SECRET, Duration::from_secs(1));
        assert_eq!(check(&v, &h, "acme", SECRET), Ok(()));
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            check(&v, &h, "acme", SECRET),
            Err(KeyError::Invalid("apikey", JwtError::Expired))
        );
    }
}
