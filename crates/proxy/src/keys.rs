//! API key checks: `apikey` or `Authorization: Bearer`, HS256 with the
//! tenant's secret. When both are sent, `Authorization` is the user's JWT and
//! `apikey` must still be a valid key of the tenant.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Keys already verified, so that a client sending the same key again costs
/// a lookup instead of a signature check and two JSON decodes. An entry is
/// only used with the very secret that verified it and while its `exp`/`nbf`
/// still hold; refused keys are never kept.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

#[derive(Debug)]
struct Entry {
    secret: String,
    nbf: Option<u64>,
    exp: Option<u64>,
}

/// Entries kept before the cache starts over.
const VERIFIED_MAX: usize = 10_000;

impl Verified {
    /// Checks the request's key(s) against the tenant's secret.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        tenant: &str,
        secret: &str,
    ) -> Result<(), KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_at(headers, tenant, secret, now)
    }

    fn check_at(
        &self,
        headers: &HeaderMap,
        tenant: &str,
        secret: &str,
        now: u64,
    ) -> Result<(), KeyError> {
        let apikey = headers.get("apikey").map(|v| v.to_str().unwrap_or("\u{0}"));
        let bearer = headers
            .get(AUTHORIZATION)
            .map(|v| v.to_str().ok().and_then(jwt::bearer).unwrap_or("\u{0}"));
        if apikey.is_none() && bearer.is_none() {
            return Err(KeyError::Missing);
        }
        if let Some(key) = apikey {
            self.verify(tenant, secret, key, now)
                .map_err(|e| KeyError::Invalid("apikey", e))?;
        }
        if let Some(token) = bearer {
            self.verify(tenant, secret, token, now)
                .map_err(|e| KeyError::Invalid("Authorization bearer token", e))?;
        }
        Ok(())
    }

    fn verify(&self, tenant: &str, secret: &str, token: &str, now: u64) -> Result<(), JwtError> {
        let key = (tenant.to_owned(), token.to_owned());
        {
            let entries = self.lock();
            if let Some(e) = entries.get(&key)
                && e.secret == secret
                && e.nbf.is_none_or(|nbf| nbf <= now)
                && e.exp.is_none_or(|exp| now <= exp)
            {
                return Ok(());
            }
        }
        let claims = jwt::verify_tenant_token(secret, tenant, token)?;
        let time = |name: &str| claims.get(name).and_then(|v| v.as_f64());
        let entry = Entry {
            secret: secret.to_owned(),
            // Rounded towards "not valid": nbf up, exp down.
            nbf: time("nbf").map(|t| t.ceil() as u64),
            exp: time("exp").map(|t| t.floor() as u64),
        };
        let mut entries = self.lock();
        if entries.len() >= VERIFIED_MAX {
            entries.clear();
        }
        entries.insert(key, entry);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use madbase_platform::jwt;

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
        let v = Verified::default();
        let h = key(SECRET, Duration::from_secs(600));
        assert_eq!(v.check(&h, "acme", SECRET), Ok(()));
        assert_eq!(v.check(&h, "acme", SECRET), Ok(()));
        assert_eq!(v.lock().len(), 1);
        // Rotated secret: the cached entry does not count.
        let rotated = "another-secret-another-secret-another-secret";
        assert_eq!(
            v.check(&h, "acme", rotated),
            Err(KeyError::Invalid("apikey", JwtError::BadSignature))
        );
        // Another tenant with the same secret: its own check (the ref claim).
        assert!(v.check(&h, "other", SECRET).is_err());
        // Refused keys are not kept.
        assert_eq!(v.lock().len(), 1);
        assert_eq!(
            v.check(&HeaderMap::new(), "acme", SECRET),
            Err(KeyError::Missing)
        );
    }

    #[test]
    fn a_cached_key_expires() {
        let v = Verified::default();
        let h = key(SECRET, Duration::from_secs(1));
        assert_eq!(v.check(&h, "acme", SECRET), Ok(()));
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            v.check(&h, "acme", SECRET),
            Err(KeyError::Invalid("apikey", JwtError::Expired))
        );
    }
}
