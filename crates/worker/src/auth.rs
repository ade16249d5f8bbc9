//! Who is asking: the tenant named by `X-Madbase-Tenant` (set by the
//! proxy) and the caller's verified claims, through the tenancy contract
//! (`madbase_tenancy::Tenancy`, the data API's surface: `Authorization:
//! Bearer`, else `apikey`; none is `anon`). A bad signature re-reads the
//! tenant once, so rotated keys work at once.

use http::HeaderMap;
use madbase_tenancy::{Caller, Failure, Refusal, Surface};

use crate::error::{Code, Error};
use crate::request::header;
use crate::state::AppState;

/// The tenant named by `X-Madbase-Tenant` and the caller's claims.
pub(crate) async fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Caller, Error> {
    let Some(id) = header(headers, "x-madbase-tenant").map(str::trim) else {
        return Err(refused(&Refusal::NoTenant));
    };
    tracing::Span::current().record("tenant", id);
    st.tenancy
        .authenticate(id, headers, Surface::DataApi)
        .await
        .map_err(|r| refused(&r))
}

/// A refusal as the worker's error (its code and status from the tenancy
/// table, see [`Code`]).
fn refused(r: &Refusal) -> Error {
    let code = match r.failure() {
        Failure::NoTenant => Code::TenantRequired,
        Failure::UnknownTenant => Code::TenantNotFound,
        Failure::ControlUnreachable => Code::ControlUnavailable,
        Failure::MissingKey | Failure::InvalidKey | Failure::ExpiredKey => Code::Jwt,
    };
    let e = Error::new(code, r.message(Surface::DataApi));
    if code == Code::TenantRequired {
        e.hint("Send requests through the proxy, or set X-Madbase-Tenant.")
    } else {
        e
    }
}
