//! Who is asking: the tenant named by `X-Madbase-Tenant` (set by the
//! proxy) and the JWT's verified claims (`Authorization: Bearer`, else
//! `apikey`; none is `anon`), checked with the tenant's secret. A bad
//! signature re-reads the tenant once, so rotated keys work at once.

use std::sync::Arc;

use http::HeaderMap;
use madbase_tenancy::TenantInfo;
use madbase_tenancy::jwt::{self, JwtError};

use crate::error::{Code, Error};
use crate::request::header;
use crate::state::AppState;

/// The tenant named by `X-Madbase-Tenant` and the verified claims.
pub(crate) async fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<TenantInfo>, Arc<jwt::VerifiedClaims>), Error> {
    let Some(id) = header(headers, "x-madbase-tenant").map(str::trim) else {
        return Err(Error::new(
            Code::TenantRequired,
            "the X-Madbase-Tenant header is missing",
        )
        .hint("Send requests through the proxy, or set X-Madbase-Tenant."));
    };
    let valid_id = (3..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    tracing::Span::current().record("tenant", id);
    let not_found = || Error::new(Code::TenantNotFound, format!("no tenant {id:?}"));
    if !valid_id {
        return Err(not_found());
    }
    let tenant = lookup(st, id).await?.ok_or_else(not_found)?;
    let token = header(headers, "authorization")
        .and_then(jwt::bearer)
        .or_else(|| header(headers, "apikey").map(str::trim))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Ok((tenant, st.anon_claims.clone()));
    };
    match st.verified.verify(&tenant.jwt_secret, id, token) {
        Ok(claims) => Ok((tenant, claims)),
        Err(JwtError::BadSignature) => {
            // The keys may have been rotated: look again once.
            st.tenants.invalidate(id);
            let fresh = lookup(st, id).await?.ok_or_else(not_found)?;
            let claims = st
                .verified
                .verify(&fresh.jwt_secret, id, token)
                .map_err(|e| Error::new(Code::Jwt, jwt_message(&e)))?;
            Ok((fresh, claims))
        }
        Err(e) => Err(Error::new(Code::Jwt, jwt_message(&e))),
    }
}

/// The tenant through the platform's cached client.
async fn lookup(st: &AppState, id: &str) -> Result<Option<Arc<TenantInfo>>, Error> {
    st.tenants.get(id).await.map_err(|e| {
        tracing::warn!(error = %e, "tenant lookup failed");
        Error::new(Code::ControlUnavailable, "the control plane is unreachable")
    })
}

fn jwt_message(e: &JwtError) -> String {
    match e {
        JwtError::Expired => "JWT expired".to_owned(),
        JwtError::BadSignature => "JWSError JWSInvalidSignature".to_owned(),
        other => format!("JWT invalid: {other}"),
    }
}
