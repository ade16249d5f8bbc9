//! The function deploy API (`/v1/tenants/{id}/functions…`, admin token):
//! sources are compiled at deploy and stored in the control database.
//! Queries are runtime-checked (`sqlx::query` with binds).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use http::StatusCode;
use madbase_platform::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::{PgPool, Row as _};

use crate::AppState;
use crate::store;

/// Largest accepted source, in bytes.
pub const MAX_SOURCE: usize = 1 << 20;

/// Versions kept per function.
pub const KEEP_VERSIONS: i32 = 10;

/// A function's metadata (its current version).
#[derive(Debug, Serialize)]
pub struct FunctionView {
    name: String,
    version: i32,
    size: i32,
    sha256: String,
    verify_jwt: bool,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// `?verify_jwt=false` on deploy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    verify_jwt: Option<bool>,
}

/// `None` when `name` is a valid function name, else the problem.
pub fn invalid_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 63 {
        None
    } else {
        Some(format!(
            "invalid function name {name:?}: must match ^[a-z][a-z0-9_-]{{0,62}}$"
        ))
    }
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    match invalid_name(name) {
        Some(problem) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_function_name",
            problem,
        )),
        None => Ok(()),
    }
}

/// A failure of control's database for the function and secret stores, as
/// the client sees it: out of disk space (507) or unable to write (503)
/// said as such, anything else "unavailable"; the cause is logged.
pub(crate) fn db_error(op: &str, e: &sqlx::Error) -> ApiError {
    tracing::error!(op, error = %e, "control database error");
    let sqlstate = e.as_database_error().and_then(|d| d.code());
    match sqlstate.as_deref() {
        Some("53100") => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("{op}: the control database is out of disk space; nothing was changed"),
        ),
        Some("58030") => ApiError::unavailable(format!(
            "{op}: the control database cannot write to its disk; nothing was changed"
        )),
        _ => ApiError::unavailable(format!("{op}: the control database is unavailable")),
    }
}

fn function_not_found(id: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "function_not_found",
        format!("tenant {id:?} has no function {name:?}"),
    )
}

/// 404 unless `id` is an active tenant.
pub(crate) async fn require_tenant(state: &AppState, id: &str) -> Result<(), ApiError> {
    match store::get(&state.db, id)
        .await
        .map_err(|e| db_error("get tenant", &e))?
    {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            format!("no tenant {id:?}"),
        )),
    }
}

/// `PUT /v1/tenants/{id}/functions/{name}[?verify_jwt=false]`, body: the
/// module source (any content type; UTF-8). 201 on the first deploy, 200
/// after; identical source and `verify_jwt` make no new version.
pub async fn deploy(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    valid_name(&name)?;
    let bytes = read_source(body).await?;
    let source = String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_function_source",
            "the function source is not UTF-8",
        )
    })?;
    if source.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_function_source",
            "the function source is empty",
        ));
    }
    require_tenant(&state, &id).await?;
    let check_name = name.clone();
    let check_source = source.clone();
    let checked =
        tokio::task::spawn_blocking(move || madbase_js::check_module(&check_name, &check_source))
            .await
            .map_err(|e| ApiError::internal(&anyhow::Error::new(e)))?;
    if let Err(e) = checked {
        let mut details = match (e.line, e.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}"),
            (Some(l), None) => format!("line {l}"),
            _ => "position unknown".to_owned(),
        };
        details = format!("{details}: {}", e.message);
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "function_syntax_error",
            format!("the function does not compile: {}", e.message),
        )
        .details(details));
    }
    let verify_jwt = query.verify_jwt.unwrap_or(true);
    let sha256 = hex::encode(Sha256::digest(source.as_bytes()));
    let (view, created) = store_version(&state.db, &id, &name, &source, &sha256, verify_jwt)
        .await
        .map_err(|e| db_error("deploy function", &e))?;
    tracing::info!(tenant = %id, function = %name, version = view.version, "function deployed");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

async fn read_source(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_SOURCE).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(c) = cause {
            too_large |= c.is::<http_body_util::LengthLimitError>();
            cause = c.source();
        }
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "function_too_large",
                format!("the function source is larger than {MAX_SOURCE} bytes"),
            )
        } else {
            ApiError::bad_request(format!("reading the body: {e}"))
        }
    })
}

/// Stores a deploy; `true` when the function is new.
async fn store_version(
    db: &PgPool,
    id: &str,
    name: &str,
    source: &str,
    sha256: &str,
    verify_jwt: bool,
) -> Result<(FunctionView, bool), sqlx::Error> {
    let mut tx = db.begin().await?;
    let current = sqlx::query(
        r#"SELECT f.version, f.updated_at, v.sha256, v.size, v.verify_jwt
           FROM functions f JOIN function_versions v USING (tenant_id, name, version)
           WHERE f.tenant_id = $1 AND f.name = $2
           FOR UPDATE OF f"#,
    )
    .bind(id)
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = current {
        let same_sha: String = row.try_get("sha256")?;
        let same_jwt: bool = row.try_get("verify_jwt")?;
        if same_sha == sha256 && same_jwt == verify_jwt {
            tx.commit().await?;
            return Ok((
                FunctionView {
                    name: name.to_owned(),
                    version: row.try_get("version")?,
                    size: row.try_get("size")?,
                    sha256: same_sha,
                    verify_jwt: same_jwt,
                    updated_at: row.try_get("updated_at")?,
                    source: None,
                },
                false,
            ));
        }
    }
    let row = sqlx::query(
        r#"INSERT INTO functions (tenant_id, name, version) VALUES ($1, $2, 1)
           ON CONFLICT (tenant_id, name)
           DO UPDATE SET version = functions.version + 1, updated_at = now()
           RETURNING version, updated_at, (xmax = 0) AS inserted"#,
    )
    .bind(id)
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let version: i32 = row.try_get("version")?;
    let updated_at: DateTime<Utc> = row.try_get("updated_at")?;
    let inserted: bool = row.try_get("inserted")?;
    let size = i32::try_from(source.len()).unwrap_or(i32::MAX);
    sqlx::query(
        r#"INSERT INTO function_versions (tenant_id, name, version, source, sha256, size, verify_jwt)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
    )
    .bind(id)
    .bind(name)
    .bind(version)
    .bind(source)
    .bind(sha256)
    .bind(size)
    .bind(verify_jwt)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM function_versions WHERE tenant_id = $1 AND name = $2 AND version <= $3",
    )
    .bind(id)
    .bind(name)
    .bind(version - KEEP_VERSIONS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        FunctionView {
            name: name.to_owned(),
            version,
            size,
            sha256: sha256.to_owned(),
            verify_jwt,
            updated_at,
            source: None,
        },
        inserted,
    ))
}

fn view_from(row: &sqlx::postgres::PgRow, with_source: bool) -> Result<FunctionView, sqlx::Error> {
    Ok(FunctionView {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        verify_jwt: row.try_get("verify_jwt")?,
        updated_at: row.try_get("updated_at")?,
        source: if with_source {
            Some(row.try_get("source")?)
        } else {
            None
        },
    })
}

/// `GET /v1/tenants/{id}/functions`: the tenant's functions by name.
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<FunctionView>>, ApiError> {
    require_tenant(&state, &id).await?;
    let rows = sqlx::query(
        r#"SELECT f.name, f.version, f.updated_at, v.sha256, v.size, v.verify_jwt
           FROM functions f JOIN function_versions v USING (tenant_id, name, version)
           WHERE f.tenant_id = $1 ORDER BY f.name"#,
    )
    .bind(&id)
    .fetch_all(&state.db)
    .await
    .map_err(|e| db_error("list functions", &e))?;
    let views = rows
        .iter()
        .map(|r| view_from(r, false))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| db_error("list functions", &e))?;
    Ok(Json(views))
}

/// `GET /v1/tenants/{id}/functions/{name}`: metadata and source.
pub async fn get(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<FunctionView>, ApiError> {
    valid_name(&name)?;
    require_tenant(&state, &id).await?;
    let row = sqlx::query(
        r#"SELECT f.name, f.version, f.updated_at, v.sha256, v.size, v.verify_jwt, v.source
           FROM functions f JOIN function_versions v USING (tenant_id, name, version)
           WHERE f.tenant_id = $1 AND f.name = $2"#,
    )
    .bind(&id)
    .bind(&name)
    .fetch_optional(&state.db)
    .await
    .map_err(|e| db_error("get function", &e))?
    .ok_or_else(|| function_not_found(&id, &name))?;
    let view = view_from(&row, true).map_err(|e| db_error("get function", &e))?;
    Ok(Json(view))
}

/// `DELETE /v1/tenants/{id}/functions/{name}`: the function and its versions.
pub async fn delete(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    valid_name(&name)?;
    require_tenant(&state, &id).await?;
    let done = sqlx::query("DELETE FROM functions WHERE tenant_id = $1 AND name = $2")
        .bind(&id)
        .bind(&name)
        .execute(&state.db)
        .await
        .map_err(|e| db_error("delete function", &e))?;
    if done.rows_affected() == 0 {
        return Err(function_not_found(&id, &name));
    }
    tracing::info!(tenant = %id, function = %name, "function deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// What the functions service needs to run a function
/// (`GET /internal/v1/tenants/{id}/functions/{name}`, internal token).
#[derive(Debug, Serialize)]
pub struct InternalFunction {
    name: String,
    version: i32,
    sha256: String,
    verify_jwt: bool,
    source: String,
    /// The tenant's function secrets, opened.
    env: std::collections::BTreeMap<String, String>,
    /// The tenant's overrides of the functions service's limits.
    limits: crate::function_limits::FunctionLimits,
}

/// `GET /internal/v1/tenants/{id}/functions/{name}`: the current version's
/// source and metadata, with the tenant's secrets as `env` and its limit
/// overrides as `limits`; 404
/// `function_not_found` (or `tenant_not_found`) when absent.
pub async fn internal_get(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<InternalFunction>, ApiError> {
    if invalid_name(&name).is_some() {
        return Err(function_not_found(&id, &name));
    }
    require_tenant(&state, &id).await?;
    let row = sqlx::query(
        r#"SELECT f.name, f.version, v.sha256, v.verify_jwt, v.source
           FROM functions f JOIN function_versions v USING (tenant_id, name, version)
           WHERE f.tenant_id = $1 AND f.name = $2"#,
    )
    .bind(&id)
    .bind(&name)
    .fetch_optional(&state.db)
    .await
    .map_err(|e| db_error("get function", &e))?
    .ok_or_else(|| function_not_found(&id, &name))?;
    let get = |e: sqlx::Error| db_error("get function", &e);
    let env = crate::function_secrets::opened(&state, &id).await?;
    let limits = crate::function_limits::load(&state.db, &id)
        .await
        .map_err(|e| db_error("get function limits", &e))?;
    Ok(Json(InternalFunction {
        name: row.try_get("name").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
        sha256: row.try_get("sha256").map_err(get)?,
        verify_jwt: row.try_get("verify_jwt").map_err(get)?,
        source: row.try_get("source").map_err(get)?,
        env,
        limits,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "hello", "hello-world_2", &"a".repeat(63)] {
            assert_eq!(invalid_name(ok), None, "{ok}");
        }
        for bad in ["", "1a", "-a", "Hello", "a.b", "a/b", "é", &"a".repeat(64)] {
            assert!(invalid_name(bad).is_some(), "{bad}");
        }
    }
}
