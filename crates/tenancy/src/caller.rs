//! Who is calling: the one way proxy, worker and functions turn a request
//! into "which tenant, which role, which claims", and the one table of what
//! each refusal answers.
//!
//! Each service is a [`Surface`]: it decides which headers carry the
//! caller's key and how a refusal is spelled on that service's wire (the
//! proxy's and the functions service's JSON error codes, the worker's
//! PostgREST-style codes). The rows of the table are the [`Failure`]s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, StatusCode};
use madbase_platform::ApiError;
use madbase_platform::secrets::ExposeSecret as _;
use madbase_platform::text::header_text;
use smallvec::SmallVec;

use crate::jwt::{self, JwtError, VerifiedClaims, VerifiedTokens};
use crate::tenants::{Invalidation, LookupError, TenantClient, TenantInfo};
use crate::{Role, TenantId};

/// The service a request reached: which headers carry its key, and how a
/// refusal is answered there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The proxy: `apikey` and/or `Authorization: Bearer`, each one sent
    /// must verify, at least one is required.
    Gateway,
    /// The worker (data API): `Authorization: Bearer`, else `apikey`; no
    /// token is the `anon` role. Codes as PostgREST spells them.
    DataApi,
    /// The functions service, for a function that verifies JWTs:
    /// `Authorization: Bearer` is required.
    Functions,
}

/// Why a caller was refused: the rows of [`Failure::answer`]'s table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request names no tenant.
    NoTenant,
    /// The tenant id is malformed or control does not know it.
    UnknownTenant,
    /// Control could not be asked and the tenant is not cached.
    ControlUnreachable,
    /// No key where one is required.
    MissingKey,
    /// A key or JWT that does not verify (signature, algorithm, role,
    /// another tenant's, malformed, not valid yet).
    InvalidKey,
    /// A key or JWT past its `exp`.
    ExpiredKey,
}

impl Failure {
    /// The table: the status and error code each failure answers on each
    /// surface. Nothing else in madbase writes these.
    pub const fn answer(self, surface: Surface) -> (StatusCode, &'static str) {
        use Failure as F;
        use Surface as S;
        match (self, surface) {
            (F::NoTenant, S::Gateway) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            (F::NoTenant, S::DataApi) => (StatusCode::BAD_REQUEST, "tenant_required"),
            (F::NoTenant, S::Functions) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            (F::UnknownTenant, S::Gateway) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            (F::UnknownTenant, S::DataApi) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            (F::UnknownTenant, S::Functions) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            (F::ControlUnreachable, S::Gateway) => {
                (StatusCode::SERVICE_UNAVAILABLE, "tenant_lookup_failed")
            }
            (F::ControlUnreachable, S::DataApi) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (F::ControlUnreachable, S::Functions) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            (F::MissingKey, S::Gateway) => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            // The data API never refuses a missing key (it is `anon`).
            (F::MissingKey, S::DataApi) => (StatusCode::UNAUTHORIZED, "PGRST301"),
            (F::MissingKey, S::Functions) => (StatusCode::UNAUTHORIZED, "missing_authorization"),
            (F::InvalidKey, S::Gateway) => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            (F::InvalidKey, S::DataApi) => (StatusCode::UNAUTHORIZED, "PGRST301"),
            (F::InvalidKey, S::Functions) => (StatusCode::UNAUTHORIZED, "invalid_jwt"),
            (F::ExpiredKey, S::Gateway) => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            (F::ExpiredKey, S::DataApi) => (StatusCode::UNAUTHORIZED, "PGRST301"),
            (F::ExpiredKey, S::Functions) => (StatusCode::UNAUTHORIZED, "invalid_jwt"),
        }
    }
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The `apikey` header.
    ApiKeyHeader,
    /// `Authorization: Bearer`.
    Bearer,
}

impl KeySource {
    fn name(self) -> &'static str {
        match self {
            KeySource::ApiKeyHeader => "apikey",
            KeySource::Bearer => "Authorization bearer token",
        }
    }
}

/// The `apikey` header (a `&str` name is parsed on every lookup).
const APIKEY: HeaderName = HeaderName::from_static("apikey");

/// A token a request presents, not verified yet. A header that is not
/// text, or an `Authorization` that is not `Bearer`, is the token `"\0"`,
/// which never verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'a> {
    /// The header it came from.
    pub source: KeySource,
    /// The token's text.
    pub token: &'a str,
}

impl<'a> ApiKey<'a> {
    /// The tokens `headers` present on `surface`, in the order they are
    /// checked; empty when there is none.
    pub fn from_headers(headers: &'a HeaderMap, surface: Surface) -> SmallVec<[ApiKey<'a>; 2]> {
        let text = |name: &HeaderName| headers.get(name).and_then(header_text);
        let key = |source, token| ApiKey { source, token };
        match surface {
            Surface::Gateway => {
                let apikey = headers
                    .get(&APIKEY)
                    .map(|v| header_text(v).unwrap_or("\u{0}"));
                let bearer = headers
                    .get(AUTHORIZATION)
                    .map(|v| header_text(v).and_then(jwt::bearer).unwrap_or("\u{0}"));
                apikey
                    .map(|t| key(KeySource::ApiKeyHeader, t))
                    .into_iter()
                    .chain(bearer.map(|t| key(KeySource::Bearer, t)))
                    .collect()
            }
            Surface::DataApi => text(&AUTHORIZATION)
                .and_then(jwt::bearer)
                .map(|t| key(KeySource::Bearer, t))
                .or_else(|| text(&APIKEY).map(|t| key(KeySource::ApiKeyHeader, t.trim())))
                .filter(|k| !k.token.is_empty())
                .into_iter()
                .collect(),
            Surface::Functions => text(&AUTHORIZATION)
                .and_then(jwt::bearer)
                .map(|t| key(KeySource::Bearer, t))
                .into_iter()
                .collect(),
        }
    }
}

/// Why a caller was refused, with what its message needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request names no tenant.
    NoTenant,
    /// This tenant id is malformed or unknown to control.
    UnknownTenant(String),
    /// Control could not be asked and the tenant is not cached.
    ControlUnreachable(String),
    /// No key where one is required.
    MissingKey,
    /// A key that does not verify, and why.
    InvalidKey {
        /// The header it came from.
        source: KeySource,
        /// Why it was refused.
        error: JwtError,
    },
}

impl Refusal {
    /// Its row of the table.
    pub fn failure(&self) -> Failure {
        match self {
            Refusal::NoTenant => Failure::NoTenant,
            Refusal::UnknownTenant(_) => Failure::UnknownTenant,
            Refusal::ControlUnreachable(_) => Failure::ControlUnreachable,
            Refusal::MissingKey => Failure::MissingKey,
            Refusal::InvalidKey {
                error: JwtError::Expired,
                ..
            } => Failure::ExpiredKey,
            Refusal::InvalidKey { .. } => Failure::InvalidKey,
        }
    }

    /// The status it answers on `surface`.
    pub fn status(&self, surface: Surface) -> StatusCode {
        self.failure().answer(surface).0
    }

    /// The error code it answers on `surface`.
    pub fn code(&self, surface: Surface) -> &'static str {
        self.failure().answer(surface).1
    }

    /// The message it answers on `surface` (never a secret: the reason a
    /// key was refused, not the key).
    pub fn message(&self, surface: Surface) -> String {
        match (self, surface) {
            (Refusal::NoTenant, Surface::DataApi) => {
                "the X-Madbase-Tenant header is missing".to_owned()
            }
            (Refusal::NoTenant, _) => "no tenant in this request".to_owned(),
            (Refusal::UnknownTenant(id), _) => format!("no tenant {id:?}"),
            (Refusal::ControlUnreachable(_), Surface::Gateway) => {
                "the control plane is unreachable and this tenant is not cached".to_owned()
            }
            (Refusal::ControlUnreachable(_), _) => "the control plane is unreachable".to_owned(),
            (Refusal::MissingKey, Surface::Functions) => "this function verifies JWTs: send \
                 Authorization: Bearer <the tenant's key or a user's JWT>"
                .to_owned(),
            (Refusal::MissingKey, _) => {
                "no API key: send the apikey header or Authorization: Bearer <key>".to_owned()
            }
            (Refusal::InvalidKey { source, error }, Surface::Gateway) => {
                format!("invalid {}: {error}", source.name())
            }
            (Refusal::InvalidKey { error, .. }, Surface::Functions) => {
                format!("invalid JWT in Authorization: {error}")
            }
            // PostgREST's wording.
            (Refusal::InvalidKey { error, .. }, Surface::DataApi) => match error {
                JwtError::Expired => "JWT expired".to_owned(),
                JwtError::BadSignature => "JWSError JWSInvalidSignature".to_owned(),
                other => format!("JWT invalid: {other}"),
            },
        }
    }

    /// The platform's JSON error body for it on `surface` (the proxy's and
    /// the functions service's; the worker writes PostgREST's body from
    /// [`Refusal::code`] and [`Refusal::message`]).
    pub fn api_error(&self, surface: Surface) -> ApiError {
        let (status, code) = self.failure().answer(surface);
        ApiError::new(status, code, self.message(surface))
    }
}

/// A tenant control knows, by a valid id.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// What control says about it.
    pub info: Arc<TenantInfo>,
}

/// Who is calling: the tenant, the role and the verified claims.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant the request is for.
    pub tenant: Tenant,
    /// The claims of the key or JWT that decides the role (the bearer
    /// token when both headers are sent); `{"role":"anon"}` for a request
    /// without one where that is allowed.
    pub claims: Arc<VerifiedClaims>,
}

impl Caller {
    /// The role the request runs as.
    pub fn role(&self) -> Role {
        self.claims.role
    }
}

/// The tenancy contract of one service: the cached tenant client and the
/// verified-key cache, shared by every request (clones share both).
#[derive(Debug, Clone)]
pub struct Tenancy {
    tenants: TenantClient,
    verified: Arc<VerifiedTokens>,
    anon: Arc<VerifiedClaims>,
    /// Set once the task dropping revoked keys runs.
    watching: Arc<AtomicBool>,
}

impl Tenancy {
    /// The contract over `tenants`.
    pub fn new(tenants: TenantClient) -> Self {
        Tenancy {
            tenants,
            verified: Arc::default(),
            anon: Arc::new(VerifiedClaims::anon()),
            watching: Arc::default(),
        }
    }

    /// Starts dropping verified keys as control's change feed announces
    /// changes (once per contract and its clones; needs a Tokio runtime,
    /// else waits for the next call): a rotated key or a deleted tenant's
    /// key is out of the cache as soon as the feed says so, not only
    /// refused by the secret check after the tenant reloads.
    fn watch_revocations(&self) {
        if self.watching.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self.watching.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let changes = Arc::new(tokio::sync::Mutex::new(self.tenants.subscribe()));
        let verified = Arc::downgrade(&self.verified);
        madbase_platform::tasks::supervise("verified-key-revocation", move || {
            let (changes, verified) = (changes.clone(), verified.clone());
            async move {
                let mut changes = changes.lock().await;
                loop {
                    let change = changes.recv().await;
                    let Some(verified) = verified.upgrade() else {
                        return Ok(());
                    };
                    match change {
                        Ok(Invalidation::Tenant(id)) => verified.forget_tenant(&id),
                        // Keys and secrets of the tenant are unchanged.
                        Ok(Invalidation::Functions(_)) => {}
                        Ok(Invalidation::All)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            verified.clear();
                        }
                        // The tenant client is gone.
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        });
    }

    /// The tenant client (for what else a service asks of it, e.g. a
    /// tenant's CORS origins or the change feed).
    pub fn tenants(&self) -> &TenantClient {
        &self.tenants
    }

    /// The verified-key cache.
    pub fn verified(&self) -> &VerifiedTokens {
        &self.verified
    }

    /// The tenant named `id`: refused when the id is malformed or unknown,
    /// or when control is unreachable and the tenant is not cached.
    pub async fn tenant(&self, id: &str) -> Result<Tenant, Refusal> {
        self.watch_revocations();
        let Some(valid) = TenantId::parse(id) else {
            return Err(Refusal::UnknownTenant(id.to_owned()));
        };
        self.lookup(valid).await
    }

    async fn lookup(&self, id: TenantId) -> Result<Tenant, Refusal> {
        match self.tenants.get(&id).await {
            Ok(Some(info)) => Ok(Tenant { id, info }),
            Ok(None) => Err(Refusal::UnknownTenant(id.to_string())),
            Err(LookupError(e)) => {
                tracing::warn!(error = %e, "tenant lookup failed");
                Err(Refusal::ControlUnreachable(e))
            }
        }
    }

    /// The caller of a request to `tenant` on `surface`. A key refused for
    /// its signature re-reads the tenant once: its keys may have been
    /// rotated since it was cached.
    pub async fn caller(
        &self,
        tenant: Tenant,
        headers: &HeaderMap,
        surface: Surface,
    ) -> Result<Caller, Refusal> {
        let keys = ApiKey::from_headers(headers, surface);
        match self.check(&tenant, &keys, surface) {
            Err(Refusal::InvalidKey {
                error: JwtError::BadSignature,
                ..
            }) => {
                self.tenants.invalidate(&tenant.id);
                let fresh = self.lookup(tenant.id).await?;
                let claims = self.check(&fresh, &keys, surface)?;
                Ok(Caller {
                    tenant: fresh,
                    claims,
                })
            }
            Err(e) => Err(e),
            Ok(claims) => Ok(Caller { tenant, claims }),
        }
    }

    /// [`Tenancy::tenant`], then [`Tenancy::caller`].
    pub async fn authenticate(
        &self,
        id: &str,
        headers: &HeaderMap,
        surface: Surface,
    ) -> Result<Caller, Refusal> {
        let tenant = self.tenant(id).await?;
        self.caller(tenant, headers, surface).await
    }

    /// Verifies `keys` with the tenant's secret (every one must verify);
    /// the claims of the last, which decides the role.
    fn check(
        &self,
        tenant: &Tenant,
        keys: &[ApiKey<'_>],
        surface: Surface,
    ) -> Result<Arc<VerifiedClaims>, Refusal> {
        check_keys(
            &self.verified,
            tenant.info.jwt_secret.expose_secret(),
            &tenant.id,
            keys,
        )
        .unwrap_or_else(|| match surface {
            Surface::DataApi => Ok(self.anon.clone()),
            Surface::Gateway | Surface::Functions => Err(Refusal::MissingKey),
        })
    }
}

/// Verifies every key in `keys` with `secret` for `tenant` (verified keys
/// are remembered in `verified`); `None` when there is no key.
pub fn check_keys(
    verified: &VerifiedTokens,
    secret: &str,
    tenant: &str,
    keys: &[ApiKey<'_>],
) -> Option<Result<Arc<VerifiedClaims>, Refusal>> {
    let mut last = None;
    for key in keys {
        match verified.verify(secret, tenant, key.token) {
            Ok(claims) => last = Some(claims),
            Err(error) => {
                return Some(Err(Refusal::InvalidKey {
                    source: key.source,
                    error,
                }));
            }
        }
    }
    last.map(Ok)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;

    const SECRET: &str = "tenant-secret-tenant-secret-tenant-secret";

    fn key(secret: &str, role: &str, ttl: Duration) -> String {
        let iat = jwt::now();
        jwt::sign(
            secret.as_bytes(),
            &jwt::ApiKeyClaims {
                role: role.into(),
                iss: "madbase".into(),
                tenant: "acme".into(),
                iat,
                exp: iat + ttl.as_secs(),
            },
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        h
    }

    fn gateway(
        v: &VerifiedTokens,
        h: &HeaderMap,
        tenant: &str,
        secret: &str,
    ) -> Result<Role, Refusal> {
        check_keys(
            v,
            secret,
            tenant,
            &ApiKey::from_headers(h, Surface::Gateway),
        )
        .unwrap_or(Err(Refusal::MissingKey))
        .map(|c| c.role)
    }

    #[test]
    fn verified_keys_are_reused_only_with_their_secret() {
        let v = VerifiedTokens::default();
        let h = headers(&[("apikey", &key(SECRET, "anon", Duration::from_secs(600)))]);
        assert_eq!(gateway(&v, &h, "acme", SECRET), Ok(Role::Anon));
        assert_eq!(gateway(&v, &h, "acme", SECRET), Ok(Role::Anon));
        assert_eq!(v.len(), 1);
        // Rotated secret: the cached entry does not count.
        let rotated = "another-secret-another-secret-another-secret";
        assert_eq!(
            gateway(&v, &h, "acme", rotated),
            Err(Refusal::InvalidKey {
                source: KeySource::ApiKeyHeader,
                error: JwtError::BadSignature
            })
        );
        // Another tenant with the same secret: its own check (the ref claim).
        assert!(gateway(&v, &h, "other", SECRET).is_err());
        // Refused keys are not kept.
        assert_eq!(v.len(), 1);
        assert_eq!(
            gateway(&v, &HeaderMap::new(), "acme", SECRET),
            Err(Refusal::MissingKey)
        );
    }

    #[test]
    fn a_cached_key_expires() {
        let v = VerifiedTokens::default();
        let h = headers(&[("apikey", &key(SECRET, "anon", Duration::from_secs(1)))]);
        assert_eq!(gateway(&v, &h, "acme", SECRET), Ok(Role::Anon));
        std::thread::sleep(Duration::from_millis(2100));
        let refused = gateway(&v, &h, "acme", SECRET).expect_err("expired");
        assert_eq!(refused.failure(), Failure::ExpiredKey);
        assert_eq!(refused.message(Surface::DataApi), "JWT expired");
        assert_eq!(
            refused.message(Surface::Gateway),
            "invalid apikey: the token has expired"
        );
    }

    #[test]
    fn each_surface_reads_its_headers() {
        let anon = key(SECRET, "anon", Duration::from_secs(600));
        let service = key(SECRET, "service_role", Duration::from_secs(600));
        let bearer = format!("Bearer {service}");
        let both = headers(&[("apikey", &anon), ("authorization", &bearer)]);
        let sources = |h: &HeaderMap, s| {
            ApiKey::from_headers(h, s)
                .iter()
                .map(|k| k.source)
                .collect::<Vec<_>>()
        };
        use KeySource::{ApiKeyHeader, Bearer};
        assert_eq!(sources(&both, Surface::Gateway), [ApiKeyHeader, Bearer]);
        assert_eq!(sources(&both, Surface::DataApi), [Bearer]);
        assert_eq!(sources(&both, Surface::Functions), [Bearer]);
        // The bearer token decides the role.
        assert_eq!(
            gateway(&VerifiedTokens::default(), &both, "acme", SECRET),
            Ok(Role::ServiceRole)
        );
        let only_key = headers(&[("apikey", &format!(" {anon} "))]);
        assert_eq!(sources(&only_key, Surface::DataApi), [ApiKeyHeader]);
        assert!(sources(&only_key, Surface::Functions).is_empty());
        // Not Bearer: the gateway refuses it, the others see no token.
        let basic = headers(&[("authorization", "Basic abc")]);
        assert_eq!(
            ApiKey::from_headers(&basic, Surface::Gateway).as_slice(),
            [ApiKey {
                source: Bearer,
                token: "\u{0}"
            }]
        );
        assert!(ApiKey::from_headers(&basic, Surface::DataApi).is_empty());
    }

    #[test]
    fn the_table_keeps_each_services_wire_codes() {
        use Failure as F;
        use Surface as S;
        let row = |f: Failure| [S::Gateway, S::DataApi, S::Functions].map(|s| f.answer(s));
        let (nf, bad, un) = (
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
        );
        let down = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            row(F::NoTenant),
            [
                (nf, "tenant_not_found"),
                (bad, "tenant_required"),
                (nf, "tenant_not_found")
            ]
        );
        assert_eq!(
            row(F::ControlUnreachable),
            [
                (down, "tenant_lookup_failed"),
                (down, "unavailable"),
                (down, "unavailable")
            ]
        );
        assert_eq!(
            row(F::InvalidKey),
            [
                (un, "invalid_api_key"),
                (un, "PGRST301"),
                (un, "invalid_jwt")
            ]
        );
        assert_eq!(row(F::ExpiredKey), row(F::InvalidKey));
        assert_eq!(row(F::MissingKey)[2], (un, "missing_authorization"));
    }
}
