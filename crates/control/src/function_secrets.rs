//! Function secrets (`/v1/tenants/{id}/secrets`, admin token): what a
//! tenant's functions read with `Deno.env.get(name)`. Values are sealed
//! with the master key (the [`Sealer`](crate::crypto::Sealer) that seals the
//! tenants' own secrets) and never returned by the admin API; the functions
//! service gets them, opened, from the internal function endpoint.
//! Queries are runtime-checked (`sqlx::query` with binds).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use http::StatusCode;
use madbase_platform::ApiError;
use madbase_platform::extract::Json as JsonBody;
use madbase_platform::secrets::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row as _};

use crate::AppState;
use crate::functions::{db_error, require_tenant};

/// Longest secret name.
pub const MAX_NAME: usize = 128;
/// Largest secret value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most secrets per tenant.
pub const MAX_SECRETS: i64 = 200;

/// A secret as the admin API shows it: never its value.
#[derive(Debug, Serialize)]
pub struct SecretView {
    name: String,
    updated_at: DateTime<Utc>,
}

/// `PUT` bodies: `{"NAME": "value", …}` or `[{"name": …, "value": …}, …]`
/// (the shape of Supabase's secrets API). The values are `SecretString`s:
/// `Debug` shows the names only.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SecretsBody {
    Map(BTreeMap<String, SecretString>),
    List(Vec<NameValue>),
}

/// One secret of a list-shaped `PUT` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    name: String,
    value: SecretString,
}

/// `None` when `name` may name a secret, else the problem: `^[A-Z_][A-Z0-9_]*$`,
/// at most [`MAX_NAME`] characters, not starting with `SUPABASE_` (those are
/// the platform's).
pub fn invalid_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !(first_ok && rest_ok && name.len() <= MAX_NAME) {
        return Some(format!(
            "invalid secret name {name:?}: must match ^[A-Z_][A-Z0-9_]*$ (at most {MAX_NAME} characters)"
        ));
    }
    if name.starts_with("SUPABASE_") {
        return Some(format!(
            "invalid secret name {name:?}: names starting with SUPABASE_ are set by the platform"
        ));
    }
    None
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    match invalid_name(name) {
        Some(problem) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_secret_name",
            problem,
        )),
        None => Ok(()),
    }
}

/// `PUT /v1/tenants/{id}/secrets`: sets (creates or replaces) every secret
/// of the body in one transaction; answers the tenant's secret names.
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SecretsBody>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    let pairs: Vec<(String, SecretString)> = match body {
        SecretsBody::Map(map) => map.into_iter().collect(),
        SecretsBody::List(list) => list.into_iter().map(|nv| (nv.name, nv.value)).collect(),
    };
    if pairs.is_empty() {
        return Err(ApiError::bad_request("no secrets in the body"));
    }
    for (name, value) in &pairs {
        valid_name(name)?;
        if value.expose_secret().len() > MAX_VALUE {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "secret_too_large",
                format!("the value of {name:?} is larger than {MAX_VALUE} bytes"),
            ));
        }
    }
    require_tenant(&state, &id).await?;
    let sealed: Vec<(String, Vec<u8>)> = pairs
        .into_iter()
        .map(|(n, v)| {
            let s = state.sealer.seal(v.expose_secret().as_bytes());
            (n, s)
        })
        .collect();
    let count = store_secrets(&state.db, &id, &sealed)
        .await
        .map_err(|e| db_error("set secrets", &e))?;
    if count > MAX_SECRETS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_secrets",
            format!("a tenant may have at most {MAX_SECRETS} secrets"),
        ));
    }
    let names: Vec<&str> = sealed.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(tenant = %id, secrets = ?names, "function secrets set");
    list_views(&state.db, &id).await.map(Json)
}

/// Upserts `sealed` and returns the tenant's secret count afterwards; rolls
/// back (and returns the would-be count) when it exceeds [`MAX_SECRETS`].
async fn store_secrets(
    db: &PgPool,
    id: &str,
    sealed: &[(String, Vec<u8>)],
) -> Result<i64, sqlx::Error> {
    let mut tx = db.begin().await?;
    for (name, value) in sealed {
        sqlx::query(
            r#"INSERT INTO function_secrets (tenant_id, name, value_enc) VALUES ($1, $2, $3)
               ON CONFLICT (tenant_id, name)
               DO UPDATE SET value_enc = EXCLUDED.value_enc, updated_at = now()"#,
        )
        .bind(id)
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    }
    let count: i64 = sqlx::query("SELECT count(*) FROM function_secrets WHERE tenant_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if count > MAX_SECRETS {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(count)
}

async fn list_views(db: &PgPool, id: &str) -> Result<Vec<SecretView>, ApiError> {
    let rows = sqlx::query(
        "SELECT name, updated_at FROM function_secrets WHERE tenant_id = $1 ORDER BY name",
    )
    .bind(id)
    .fetch_all(db)
    .await
    .map_err(|e| db_error("list secrets", &e))?;
    rows.iter()
        .map(|r| {
            Ok(SecretView {
                name: r.try_get("name")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(|e| db_error("list secrets", &e))
}

/// `GET /v1/tenants/{id}/secrets`: names and `updated_at`, never values.
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    require_tenant(&state, &id).await?;
    list_views(&state.db, &id).await.map(Json)
}

/// `DELETE /v1/tenants/{id}/secrets/{name}`: 204, or 404 `secret_not_found`.
pub async fn delete_one(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    valid_name(&name)?;
    require_tenant(&state, &id).await?;
    let removed = remove(&state.db, &id, std::slice::from_ref(&name)).await?;
    if removed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "secret_not_found",
            format!("tenant {id:?} has no secret {name:?}"),
        ));
    }
    tracing::info!(tenant = %id, secret = %name, "function secret deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/tenants/{id}/secrets` with a JSON array of names (as
/// Supabase's API): removes those that exist; answers the names left.
pub async fn delete_many(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(names): JsonBody<Vec<String>>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    for name in &names {
        valid_name(name)?;
    }
    require_tenant(&state, &id).await?;
    remove(&state.db, &id, &names).await?;
    tracing::info!(tenant = %id, secrets = ?names, "function secrets deleted");
    list_views(&state.db, &id).await.map(Json)
}

async fn remove(db: &PgPool, id: &str, names: &[String]) -> Result<u64, ApiError> {
    sqlx::query("DELETE FROM function_secrets WHERE tenant_id = $1 AND name = ANY($2)")
        .bind(id)
        .bind(names)
        .execute(db)
        .await
        .map(|done| done.rows_affected())
        .map_err(|e| db_error("delete secrets", &e))
}

/// The tenant's secrets, opened: the functions' environment.
pub async fn opened(state: &AppState, id: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let rows = sqlx::query("SELECT name, value_enc FROM function_secrets WHERE tenant_id = $1")
        .bind(id)
        .fetch_all(&state.db)
        .await
        .map_err(|e| db_error("read secrets", &e))?;
    let mut env = BTreeMap::new();
    for row in rows {
        let name: String = row
            .try_get("name")
            .map_err(|e| db_error("read secrets", &e))?;
        let sealed: Vec<u8> = row
            .try_get("value_enc")
            .map_err(|e| db_error("read secrets", &e))?;
        let value = state
            .sealer
            .open_string(&sealed)
            .map_err(|e| ApiError::internal(&anyhow::Error::new(e)))?;
        env.insert(name, value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::{SecretsBody, invalid_name};
    use madbase_platform::secrets::ExposeSecret as _;

    #[test]
    fn bodies_never_show_their_values_in_debug() {
        for json in [
            r#"{"STRIPE_KEY": "sk_live_value_1"}"#,
            r#"[{"name": "STRIPE_KEY", "value": "sk_live_value_1"}]"#,
        ] {
            let body: SecretsBody = serde_json::from_str(json).expect("a body");
            let debug = format!("{body:?}");
            assert!(debug.contains("STRIPE_KEY"), "{debug}");
            assert!(!debug.contains("sk_live_value_1"), "{debug}");
            let value = match &body {
                SecretsBody::Map(map) => map["STRIPE_KEY"].expose_secret().to_owned(),
                SecretsBody::List(list) => list[0].value.expose_secret().to_owned(),
            };
            assert_eq!(value, "sk_live_value_1");
        }
        assert!(
            serde_json::from_str::<SecretsBody>(r#"[{"name": "A", "value": "v", "x": 1}]"#)
                .is_err()
        );
    }

    #[test]
    fn names() {
        for ok in [
            "A",
            "_X",
            "STRIPE_KEY",
            "A1_B2",
            "SUPABASE",
            &"A".repeat(128),
        ] {
            assert_eq!(invalid_name(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a",
            "1A",
            "A-B",
            "A B",
            "É",
            "SUPABASE_URL",
            "SUPABASE_ANYTHING",
            &"A".repeat(129),
        ] {
            assert!(invalid_name(bad).is_some(), "{bad}");
        }
    }
}
