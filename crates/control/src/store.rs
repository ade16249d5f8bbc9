//! The control database: compile-time checked queries (`sqlx::query!`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::provision::Names;

/// A tenant row, secrets still sealed.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub database_name: String,
    pub owner_role: String,
    pub authenticator_role: String,
    pub jwt_secret_enc: Vec<u8>,
    pub owner_password_enc: Vec<u8>,
    pub authenticator_password_enc: Vec<u8>,
    pub key_version: i32,
    /// The tenant's allowed browser origins; `None`: the platform's.
    pub cors_origins: Option<Vec<String>>,
}

/// Sealed secrets of a new tenant.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub jwt_secret: Vec<u8>,
    pub owner_password: Vec<u8>,
    pub authenticator_password: Vec<u8>,
}

/// Claims `id` for a create; `false` when it exists (or is being created).
pub async fn insert_creating(
    db: &PgPool,
    id: &str,
    names: &Names,
    sealed: &Sealed,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        r#"INSERT INTO tenants (id, database_name, owner_role, authenticator_role,
                                jwt_secret_enc, owner_password_enc, authenticator_password_enc)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (id) DO NOTHING
           RETURNING id"#,
        id,
        names.database,
        names.owner,
        names.authenticator,
        sealed.jwt_secret,
        sealed.owner_password,
        sealed.authenticator_password,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Marks a created tenant active; returns its creation time.
pub async fn activate(db: &PgPool, id: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    let row = sqlx::query!(
        "UPDATE tenants SET status = 'active', updated_at = now() WHERE id = $1 RETURNING created_at",
        id
    )
    .fetch_one(db)
    .await?;
    Ok(row.created_at)
}

/// Removes the row (after a failed create or a finished delete).
pub async fn remove(db: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM tenants WHERE id = $1", id)
        .execute(db)
        .await?;
    Ok(())
}

/// An active tenant.
pub async fn get(db: &PgPool, id: &str) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"SELECT id, created_at, database_name, owner_role, authenticator_role,
                  jwt_secret_enc, owner_password_enc, authenticator_password_enc, key_version,
                  cors_origins
           FROM tenants WHERE id = $1 AND status = 'active'"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Active tenants ordered by id, after `after`, at most `limit`.
pub async fn list(db: &PgPool, after: &str, limit: i64) -> Result<Vec<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"SELECT id, created_at, database_name, owner_role, authenticator_role,
                  jwt_secret_enc, owner_password_enc, authenticator_password_enc, key_version,
                  cors_origins
           FROM tenants WHERE status = 'active' AND id > $1
           ORDER BY id LIMIT $2"#,
        after,
        limit
    )
    .fetch_all(db)
    .await
}

/// Claims an active tenant for deletion.
pub async fn start_delete(db: &PgPool, id: &str) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"UPDATE tenants SET status = 'deleting', updated_at = now()
           WHERE id = $1 AND status = 'active'
           RETURNING id, created_at, database_name, owner_role, authenticator_role,
                     jwt_secret_enc, owner_password_enc, authenticator_password_enc, key_version,
                     cors_origins"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Puts a tenant back to active after a failed delete.
pub async fn abort_delete(db: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE tenants SET status = 'active' WHERE id = $1 AND status = 'deleting'",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Replaces the JWT secret; returns the new key version.
pub async fn rotate(
    db: &PgPool,
    id: &str,
    jwt_secret_enc: &[u8],
) -> Result<Option<i32>, sqlx::Error> {
    let row = sqlx::query!(
        r#"UPDATE tenants SET jwt_secret_enc = $2, key_version = key_version + 1, updated_at = now()
           WHERE id = $1 AND status = 'active' RETURNING key_version"#,
        id,
        jwt_secret_enc
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.key_version))
}

/// Sets (`None`: clears) an active tenant's allowed browser origins;
/// `None` when there is no such tenant, else what is stored now.
pub async fn set_cors_origins(
    db: &PgPool,
    id: &str,
    origins: Option<&[String]>,
) -> Result<Option<Option<Vec<String>>>, sqlx::Error> {
    let row = sqlx::query!(
        r#"UPDATE tenants SET cors_origins = $2, updated_at = now()
           WHERE id = $1 AND status = 'active' RETURNING cors_origins"#,
        id,
        origins as Option<&[String]>
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.cors_origins))
}

/// Number of active tenants.
pub async fn count(db: &PgPool) -> Result<i64, sqlx::Error> {
    let row = sqlx::query!(r#"SELECT count(*) AS "n!" FROM tenants WHERE status = 'active'"#)
        .fetch_one(db)
        .await?;
    Ok(row.n)
}

/// A control fact, e.g. the master-key check value.
pub async fn meta(db: &PgPool, key: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let row = sqlx::query!("SELECT value FROM control_meta WHERE key = $1", key)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| r.value))
}

/// Stores a control fact unless present; returns the stored value.
pub async fn init_meta(db: &PgPool, key: &str, value: &[u8]) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query!(
        "INSERT INTO control_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        key,
        value
    )
    .execute(db)
    .await?;
    Ok(meta(db, key).await?.unwrap_or_default())
}

/// A tenant a create or a delete left half done (its control process
/// stopped in the middle).
#[derive(Debug)]
pub struct Unfinished {
    pub id: String,
    pub status: String,
    pub database_name: String,
    pub owner_role: String,
    pub authenticator_role: String,
}

/// Tenants in `creating` or `deleting` whose last change is older than
/// `age_seconds`: no create or delete takes that long, so none is running.
pub async fn unfinished(db: &PgPool, age_seconds: f64) -> Result<Vec<Unfinished>, sqlx::Error> {
    sqlx::query_as!(
        Unfinished,
        r#"SELECT id, status, database_name, owner_role, authenticator_role
           FROM tenants
           WHERE status IN ('creating', 'deleting')
             AND updated_at < now() - make_interval(secs => $1)
           ORDER BY id"#,
        age_seconds
    )
    .fetch_all(db)
    .await
}

/// Removes a tenant row still in `status` (not one changed meanwhile).
pub async fn remove_unfinished(db: &PgPool, id: &str, status: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM tenants WHERE id = $1 AND status = $2",
        id,
        status
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
