//! One request's context: who asks (see [`crate::auth`]), the exposed
//! schema it names (`Accept-Profile`/`Content-Profile`), the response's
//! media type, its preferences, the tenant's pool and schema cache, and the
//! settings its transaction sets.

use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use madbase_platform::telemetry;
use madbase_tenancy::jwt;

use crate::auth::authenticate;
use crate::error::{Code, Error};
use crate::pool::TenantDb;
use crate::prefer::Prefer;
use crate::request::header;
use crate::response::{Media, Plan, media};
use crate::schema::{Schema, Table};
use crate::sql::plan::Planner;
use crate::state::AppState;

/// Who is asking, and the request facts Postgres sees.
pub(crate) struct Ctx {
    pub(crate) db: Arc<TenantDb>,
    pub(crate) schema: Arc<Schema>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) db_schema: String,
    pub(crate) singular: bool,
    pub(crate) media: Media,
    /// `Accept: application/vnd.pgrst.plan…`: answer the statement's `EXPLAIN`.
    pub(crate) plan: Option<Plan>,
    pub(crate) prefer: Prefer,
}

impl Ctx {
    pub(crate) fn anon(&self) -> bool {
        self.settings.role == "anon"
    }
}

/// What the transaction sets with `set_config` before its statement, shared
/// with the transaction's task (and its retry) without copying.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The role's name (`madbase_tenancy::Role`).
    pub(crate) role: &'static str,
    pub(crate) claims: Arc<jwt::VerifiedClaims>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: String,
    /// `Prefer: timezone=` (a zone Postgres knows), set for the transaction.
    pub(crate) timezone: Option<String>,
}

/// `request.headers`: a JSON object of the headers whose values are visible
/// ASCII, a repeated name's last value (a `HeaderMap` yields a name's values
/// one after another).
fn headers_json(headers: &HeaderMap) -> String {
    let mut out = String::with_capacity(64 * headers.len() + 2);
    out.push('{');
    let mut iter = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .peekable();
    let mut first = true;
    while let Some((name, value)) = iter.next() {
        if iter.peek().is_some_and(|(next, _)| *next == name) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, name);
        out.push(':');
        push_json_str(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string, copied as is when nothing in it needs
/// escaping.
fn push_json_str(out: &mut String, s: &str) {
    if telemetry::needs_json_escape(s) {
        // A string always serialises.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

pub(crate) async fn context(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Ctx, Error> {
    let caller = authenticate(st, headers).await?;
    let role = caller.role().as_str();
    let profile_header = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        "accept-profile"
    } else {
        "content-profile"
    };
    let db_schema = match header(headers, profile_header) {
        None => st.schemas[0].clone(),
        Some(p) if st.schemas.iter().any(|s| s == p.trim()) => p.trim().to_owned(),
        Some(_) => {
            return Err(Error::new(
                Code::SchemaNotExposed,
                format!(
                    "The schema must be one of the following: {}",
                    st.schemas.join(", ")
                ),
            ));
        }
    };
    // OPTIONS answers no body: `Accept` is not negotiated (PostgREST).
    let (media, plan) = if *method == Method::OPTIONS {
        (Media::Array, None)
    } else {
        media(headers, st.plans)?
    };
    let singular = media.singular();
    let mut prefer = Prefer::from_headers(headers);
    let db = st.pools.get(&caller.tenant.info);
    let schema = load_schema(st, &db, role == "anon").await?;
    if prefer.timezone.is_some() {
        prefer.resolve_timezone(|tz| schema.timezones.contains(tz));
    }
    Ok(Ctx {
        db,
        schema,
        settings: Arc::new(Settings {
            role,
            claims: caller.claims,
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            headers: headers_json(headers),
            timezone: prefer.timezone.clone(),
        }),
        db_schema,
        singular,
        media,
        plan,
        prefer,
    })
}

/// The tenant's schema cache ((re)loaded when missing or stale).
async fn load_schema(st: &AppState, db: &TenantDb, anon: bool) -> Result<Arc<Schema>, Error> {
    db.schema(&st.pools)
        .await
        .map_err(|source| Error::Db { source, anon })
}

impl Ctx {
    /// Reloads the schema cache (after a miss).
    pub(crate) async fn reload_schema(&mut self, st: &AppState) -> Result<(), Error> {
        self.schema = load_schema(st, &self.db, self.anon()).await?;
        Ok(())
    }
}

pub(crate) async fn lookup_table(
    st: &AppState,
    ctx: &mut Ctx,
    name: &str,
) -> Result<Arc<Table>, Error> {
    if let Some(t) = ctx.schema.table(&ctx.db_schema, name) {
        return Ok(t.clone());
    }
    // Perhaps created since the cache was loaded.
    if ctx.db.stale_after_miss() {
        ctx.reload_schema(st).await?;
    }
    Planner::new(&ctx.schema, &ctx.db_schema).table(name)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::Value;

    use super::*;

    #[test]
    fn headers_json_keeps_the_last_value_and_escapes() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.test"));
        h.append("x-many", HeaderValue::from_static("first"));
        h.append("x-many", HeaderValue::from_static("last"));
        h.insert("x-quote", HeaderValue::from_static(r#"a "b" \c"#));
        h.insert("x-tab", HeaderValue::from_static("a\tb"));
        h.insert(
            "x-binary",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque bytes are a header value"),
        );
        let json = headers_json(&h);
        let v: Value = serde_json::from_str(&json).expect(&json);
        assert_eq!(
            v,
            serde_json::json!({
                "host": "example.test",
                "x-many": "last",
                "x-quote": r#"a "b" \c"#,
                "x-tab": "a\tb",
            })
        );
        assert_eq!(headers_json(&HeaderMap::new()), "{}");
    }
}
