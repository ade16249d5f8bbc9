//! The admin API (`/v1/tenants…`, admin token) and the internal API
//! (`/internal/v1/tenants/{id}`, internal token).

use std::str::FromStr as _;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::StatusCode;
use madbase_platform::ApiError;
use madbase_platform::extract::Json as JsonBody;
use madbase_platform::secrets::ExposeSecret as _;
use madbase_tenancy::TenantInfo;
use madbase_tenancy::jwt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;

use crate::provision::{self, Names, Plan};
use crate::sql::{self, SqlError};
use crate::store::{self, Sealed, TenantRow};
use crate::{AppState, crypto};

/// Requires `Authorization: Bearer <platform token with role>`.
pub async fn require_role(
    State((state, role)): State<(AppState, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(jwt::bearer);
    let Some(token) = token else {
        return ApiError::unauthorized("missing Authorization: Bearer token").into_response();
    };
    match jwt::verify_platform(state.jwt_secret.expose_secret(), token, role) {
        Ok(_) => next.run(req).await,
        Err(e) => ApiError::unauthorized(format!("invalid {role} token: {e}")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    id: String,
}

#[derive(Debug, Serialize)]
pub struct Created {
    id: String,
    created_at: DateTime<Utc>,
    anon_key: String,
    service_role_key: String,
    db_url: String,
    rest_url: String,
}

#[derive(Debug, Serialize)]
pub struct TenantView {
    id: String,
    created_at: DateTime<Utc>,
    database: String,
    key_version: i32,
    rest_url: String,
}

fn view(state: &AppState, row: &TenantRow) -> TenantView {
    TenantView {
        id: row.id.clone(),
        created_at: row.created_at,
        database: row.database_name.clone(),
        key_version: row.key_version,
        rest_url: state.rest_url(&row.id),
    }
}

fn db_error(op: &str, e: &sqlx::Error) -> ApiError {
    tracing::error!(op, error = %e, "control database error");
    ApiError::unavailable(format!("{op}: the control database is unavailable"))
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    match provision::invalid_id(id) {
        Some(problem) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
            problem,
        )),
        None => Ok(()),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "tenant_not_found",
        format!("no tenant {id:?}"),
    )
}

/// `POST /v1/tenants`
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let id = body.id;
    valid_id(&id)?;
    let result = create_inner(&state, &id).await;
    state.metrics.operation("create", result.is_ok());
    tracing::Span::current().record("tenant", id.as_str());
    result.map(|c| (StatusCode::CREATED, Json(c)))
}

async fn create_inner(state: &AppState, id: &str) -> Result<Created, ApiError> {
    let names = Names::for_tenant(id);
    let jwt_secret = crypto::random_secret();
    let owner_password = crypto::random_secret();
    let authenticator_password = crypto::random_secret();
    let sealed = Sealed {
        jwt_secret: state.sealer.seal(jwt_secret.as_bytes()),
        owner_password: state.sealer.seal(owner_password.as_bytes()),
        authenticator_password: state.sealer.seal(authenticator_password.as_bytes()),
    };
    if !store::insert_creating(&state.db, id, &names, &sealed)
        .await
        .map_err(|e| db_error("create tenant", &e))?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_exists",
            format!("tenant {id:?} already exists"),
        ));
    }
    let plan = Plan {
        names: &names,
        owner_password: &owner_password,
        authenticator_password: &authenticator_password,
    };
    let mut done = provision::Progress::default();
    if let Err(e) = provision::create(&state.admin, &state.cluster, &plan, &mut done).await {
        tracing::error!(tenant = id, error = %e, "provisioning failed; rolling back");
        let cleanup = provision::undo(&state.admin, &names, done).await;

        if let Err(ce) = &cleanup {
            tracing::error!(tenant = id, error = %ce, "rollback of a failed create failed");
        }
        // Free the id only when nothing was left behind, so a retry starts clean.
        if cleanup.is_ok() {
            let _ = store::remove(&state.db, id).await;
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provisioning_failed",
            format!("creating tenant {id:?} failed and was rolled back; retry the request"),
        )
        .details(e.to_string()));
    }
    let created_at = store::activate(&state.db, id)
        .await
        .map_err(|e| db_error("create tenant", &e))?;
    state.metrics.refresh_tenants(&state.db).await;
    tracing::info!(tenant = id, "tenant created");
    Ok(Created {
        id: id.to_owned(),
        created_at,
        anon_key: jwt::api_key(&jwt_secret, id, "anon"),
        service_role_key: jwt::api_key(&jwt_secret, id, "service_role"),
        db_url: state.connection_url(&names.owner, &owner_password, &names.database),
        rest_url: state.rest_url(id),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/tenants?limit=&after=`
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "limit must be an integer from 1 to 1000",
                ));
            }
        },
    };
    let after = q.after.unwrap_or_default();
    let rows = store::list(&state.db, &after, limit)
        .await
        .map_err(|e| db_error("list tenants", &e))?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let tenants: Vec<TenantView> = rows.iter().map(|r| view(&state, r)).collect();
    Ok(Json(
        serde_json::json!({ "tenants": tenants, "next_after": next }),
    ))
}

/// `GET /v1/tenants/{id}`
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let row = store::get(&state.db, &id)
        .await
        .map_err(|e| db_error("get tenant", &e))?;
    row.map(|r| Json(view(&state, &r)))
        .ok_or_else(|| not_found(&id))
}

/// `DELETE /v1/tenants/{id}`
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = store::start_delete(&state.db, &id)
        .await
        .map_err(|e| db_error("delete tenant", &e))?;
    let Some(row) = row else {
        return Err(not_found(&id));
    };
    let names = Names {
        database: row.database_name,
        owner: row.owner_role,
        authenticator: row.authenticator_role,
    };
    if let Err(e) = provision::drop_all(&state.admin, &names).await {
        state.metrics.operation("delete", false);
        let _ = store::abort_delete(&state.db, &id).await;
        tracing::error!(tenant = %id, error = %e, "delete failed");
        return Err(ApiError::unavailable(format!(
            "deleting tenant {id:?} failed; retry the request"
        ))
        .details(e.to_string()));
    }
    store::remove(&state.db, &id)
        .await
        .map_err(|e| db_error("delete tenant", &e))?;
    state.metrics.operation("delete", true);
    state.metrics.refresh_tenants(&state.db).await;
    tracing::info!(tenant = %id, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/tenants/{id}/keys/rotate`
pub async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let secret = crypto::random_secret();
    let version = store::rotate(&state.db, &id, &state.sealer.seal(secret.as_bytes()))
        .await
        .map_err(|e| db_error("rotate keys", &e))?;
    state.metrics.operation("rotate", version.is_some());
    let Some(version) = version else {
        return Err(not_found(&id));
    };
    tracing::info!(tenant = %id, key_version = version, "keys rotated");
    Ok(Json(serde_json::json!({
        "id": id,
        "key_version": version,
        "anon_key": jwt::api_key(&secret, &id, "anon"),
        "service_role_key": jwt::api_key(&secret, &id, "service_role"),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlBody {
    query: String,
    params: Option<Vec<Value>>,
    /// `true`: answer `{"columns": [...], "rows": [...]}` (the columns in
    /// the statement's order) instead of the array of rows.
    #[serde(default)]
    columns: bool,
}

/// `POST /v1/tenants/{id}/sql`
pub async fn run_sql(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SqlBody>,
) -> Result<Json<Value>, ApiError> {
    if body.query.trim().is_empty() {
        return Err(ApiError::bad_request("query is empty"));
    }
    let row = store::get(&state.db, &id)
        .await
        .map_err(|e| db_error("run sql", &e))?;
    let Some(row) = row else {
        return Err(not_found(&id));
    };
    let password = state.open(&row.owner_password_enc)?;
    let options = state
        .cluster
        .clone()
        .username(&row.owner_role)
        .password(&password)
        .database(&row.database_name);
    match sql::run_with_columns(
        &options,
        &body.query,
        body.params.as_deref(),
        state.sql_limits,
    )
    .await
    {
        Ok(r) if body.columns => Ok(Json(serde_json::json!({
            "columns": r.columns,
            "rows": r.rows,
        }))),
        Ok(r) => Ok(Json(Value::Array(r.rows))),
        Err(SqlError::Query(e)) => Err(query_error(&e)),
        Err(SqlError::Connect(e)) => {
            tracing::error!(tenant = %id, error = %e, "cannot connect as the tenant owner");
            Err(ApiError::unavailable(
                "cannot connect to the tenant database",
            ))
        }
        Err(e @ (SqlError::TooManyRows(_) | SqlError::TooLarge(_))) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "result_too_large",
            e.to_string(),
        )),
        Err(e @ SqlError::Unsupported { .. }) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// A Postgres error as a 400 with its SQLSTATE (timeouts included).
fn query_error(e: &sqlx::Error) -> ApiError {
    match e.as_database_error() {
        Some(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            let mut err = ApiError::new(
                StatusCode::BAD_REQUEST,
                db.code()
                    .map_or_else(|| "sql_error".to_owned(), |c| c.into_owned()),
                db.message().to_owned(),
            );
            if let Some(pg) = pg {
                if let Some(d) = pg.detail() {
                    err = err.details(d);
                }
                if let Some(h) = pg.hint() {
                    err = err.hint(h);
                }
            }
            err
        }
        None => ApiError::unavailable(format!("the query failed: {e}")),
    }
}

/// `GET /internal/v1/tenants/{id}`
pub async fn internal_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    let row = store::get(&state.db, &id)
        .await
        .map_err(|e| db_error("lookup tenant", &e))?;
    let Some(row) = row else {
        return Err(not_found(&id));
    };
    Ok(Json(TenantInfo {
        jwt_secret: state.open(&row.jwt_secret_enc)?.into(),
        authenticator_password: state.open(&row.authenticator_password_enc)?.into(),
        key_version: row.key_version,
        db_host: state.cluster_host(),
        db_port: state.cluster.get_port(),
        authenticator_user: row.authenticator_role,
        database: row.database_name,
        cors_origins: row.cors_origins,
        id: row.id,
    }))
}

/// A tenant's settings.
#[derive(Debug, Serialize)]
pub struct Settings {
    id: String,
    /// The browser origins the proxy allows for the tenant's data API
    /// (`["*"]`: any); `null`: the platform's `MADBASE_CORS_ORIGINS`.
    cors_origins: Option<Vec<String>>,
}

/// A change of settings: a field left out keeps its value, `null` resets
/// it to the platform's default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, deserialize_with = "present")]
    cors_origins: Option<Option<Vec<String>>>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `GET /v1/tenants/{id}/settings`
pub async fn settings(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Settings>, ApiError> {
    let row = store::get(&state.db, &id)
        .await
        .map_err(|e| db_error("get settings", &e))?;
    let row = row.ok_or_else(|| not_found(&id))?;
    Ok(Json(Settings {
        id: row.id,
        cors_origins: row.cors_origins,
    }))
}

/// `PATCH /v1/tenants/{id}/settings` `{"cors_origins": [...] | null}`.
/// Services see the change when their cached copy of the tenant expires
/// (`MADBASE_TENANT_CACHE_SECONDS` at the proxy).
pub async fn patch_settings(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SettingsPatch>,
) -> Result<Json<Settings>, ApiError> {
    let Some(origins) = body.cors_origins else {
        return settings(State(state), Path(id)).await;
    };
    let origins = origins
        .map(|list| {
            madbase_tenancy::normalize_cors_origins(&list).map_err(|problem| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_cors_origins", problem)
            })
        })
        .transpose()?;
    let stored = store::set_cors_origins(&state.db, &id, origins.as_deref())
        .await
        .map_err(|e| db_error("update settings", &e))?;
    state.metrics.operation("settings", stored.is_some());
    let cors_origins = stored.ok_or_else(|| not_found(&id))?;
    tracing::info!(tenant = %id, ?cors_origins, "tenant settings changed");
    Ok(Json(Settings { id, cors_origins }))
}

impl AppState {
    fn open(&self, sealed: &[u8]) -> Result<String, ApiError> {
        self.sealer
            .open_string(sealed)
            .map_err(|e| ApiError::internal(&anyhow::Error::new(e)))
    }

    /// The tenant cluster's host, or its unix socket directory when it is
    /// reached through one (`?host=/path` in `DEFAULT_TENANT_DB_URL`).
    fn cluster_host(&self) -> String {
        match self.cluster.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => self.cluster.get_host().to_owned(),
        }
    }

    fn rest_url(&self, id: &str) -> String {
        format!("{}/t/{id}/rest/v1", self.public_url)
    }

    /// `postgres://user:password@host:port/db` on the tenant cluster.
    fn connection_url(&self, user: &str, password: &str, db: &str) -> String {
        let host = self.cluster_host();
        let host = host.as_str();
        let host = if host.starts_with('/') {
            "localhost".to_owned()
        } else if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let url = format!(
            "postgres://{user}:{password}@{host}:{}/{db}",
            self.cluster.get_port()
        );
        let socket = self.cluster_host();
        if socket.starts_with('/') {
            format!("{url}?host={socket}")
        } else {
            url
        }
    }
}

/// Options for the tenant cluster from `DEFAULT_TENANT_DB_URL`.
pub fn cluster_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    PgConnectOptions::from_str(url).map(|o| o.application_name("madbase-control"))
}
