//! Per-tenant overrides of the functions service's limits
//! (`/v1/tenants/{id}/function-limits`, admin token).
//!
//! `PUT` replaces the tenant's overrides with the body's: `cpu_ms`,
//! `wall_seconds`, `memory_mb`, `max_concurrent`, each optional; a field
//! left out or `null` is the platform's default (the functions service's
//! `MADBASE_FUNCTIONS_CPU_MS`, `_WALL_SECONDS`, `_MEMORY_MB`,
//! `_TENANT_CONCURRENCY`). `GET` shows them, `DELETE` drops them all. The
//! functions service gets them with each function from the internal
//! function endpoint; a change is announced on the tenant change feed, so
//! the next invocation runs with it. Queries are runtime-checked.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use madbase_platform::ApiError;
use madbase_platform::extract::Json as JsonBody;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row as _};

use crate::AppState;
use crate::functions::{db_error, require_tenant};

/// A tenant's overrides; `None`: the platform's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionLimits {
    /// CPU time per invocation, in milliseconds (1 to 3,600,000).
    #[serde(default)]
    pub cpu_ms: Option<i64>,
    /// Wall time per invocation, in seconds (1 to 86,400).
    #[serde(default)]
    pub wall_seconds: Option<i64>,
    /// Memory per function runtime, in MiB (1 to 65,536).
    #[serde(default)]
    pub memory_mb: Option<i64>,
    /// Concurrent invocations of the tenant (1 to 100,000).
    #[serde(default)]
    pub max_concurrent: Option<i64>,
}

/// Each field's name and allowed range (as the table's CHECKs).
const RANGES: [(&str, i64, i64); 4] = [
    ("cpu_ms", 1, 3_600_000),
    ("wall_seconds", 1, 86_400),
    ("memory_mb", 1, 65_536),
    ("max_concurrent", 1, 100_000),
];

impl FunctionLimits {
    fn fields(&self) -> [Option<i64>; 4] {
        [
            self.cpu_ms,
            self.wall_seconds,
            self.memory_mb,
            self.max_concurrent,
        ]
    }

    /// `None` when every field is in its range, else the problem.
    pub fn invalid(&self) -> Option<String> {
        RANGES
            .iter()
            .zip(self.fields())
            .find_map(|(&(name, lo, hi), value)| {
                value
                    .filter(|v| !(lo..=hi).contains(v))
                    .map(|v| format!("{name} must be between {lo} and {hi} (or null for the platform's default), not {v}"))
            })
    }
}

/// The tenant's overrides (all `None` without a row).
pub async fn load(db: &PgPool, id: &str) -> Result<FunctionLimits, sqlx::Error> {
    let row = sqlx::query(
        "SELECT cpu_ms, wall_seconds, memory_mb, max_concurrent FROM function_limits WHERE tenant_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(FunctionLimits::default());
    };
    Ok(FunctionLimits {
        cpu_ms: row.try_get("cpu_ms")?,
        wall_seconds: row.try_get("wall_seconds")?,
        memory_mb: row.try_get("memory_mb")?,
        max_concurrent: row.try_get("max_concurrent")?,
    })
}

/// `GET /v1/tenants/{id}/function-limits`
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FunctionLimits>, ApiError> {
    require_tenant(&state, &id).await?;
    load(&state.db, &id)
        .await
        .map(Json)
        .map_err(|e| db_error("get function limits", &e))
}

/// `PUT /v1/tenants/{id}/function-limits`: replaces the overrides; answers
/// them. 400 `invalid_function_limits` for a value out of range.
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(limits): JsonBody<FunctionLimits>,
) -> Result<Json<FunctionLimits>, ApiError> {
    if let Some(problem) = limits.invalid() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_function_limits",
            problem,
        ));
    }
    require_tenant(&state, &id).await?;
    sqlx::query(
        r#"INSERT INTO function_limits (tenant_id, cpu_ms, wall_seconds, memory_mb, max_concurrent)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id) DO UPDATE SET cpu_ms = EXCLUDED.cpu_ms,
             wall_seconds = EXCLUDED.wall_seconds, memory_mb = EXCLUDED.memory_mb,
             max_concurrent = EXCLUDED.max_concurrent, updated_at = now()"#,
    )
    .bind(&id)
    .bind(limits.cpu_ms)
    .bind(limits.wall_seconds)
    .bind(limits.memory_mb)
    .bind(limits.max_concurrent)
    .execute(&state.db)
    .await
    .map_err(|e| db_error("set function limits", &e))?;
    tracing::info!(tenant = %id, ?limits, "function limits set");
    Ok(Json(limits))
}

/// `DELETE /v1/tenants/{id}/function-limits`: back to the platform's
/// defaults; 204.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_tenant(&state, &id).await?;
    sqlx::query("DELETE FROM function_limits WHERE tenant_id = $1")
        .bind(&id)
        .execute(&state.db)
        .await
        .map_err(|e| db_error("delete function limits", &e))?;
    tracing::info!(tenant = %id, "function limits reset to the defaults");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let ok = FunctionLimits {
            cpu_ms: Some(1),
            wall_seconds: Some(86_400),
            memory_mb: None,
            max_concurrent: Some(3),
        };
        assert_eq!(ok.invalid(), None);
        assert_eq!(FunctionLimits::default().invalid(), None);
        let bad = FunctionLimits {
            memory_mb: Some(0),
            ..ok
        };
        assert!(bad.invalid().expect("invalid").starts_with("memory_mb"));
        let bad = FunctionLimits {
            cpu_ms: Some(3_600_001),
            ..ok
        };
        assert!(bad.invalid().expect("invalid").starts_with("cpu_ms"));
        let parsed: Result<FunctionLimits, _> = serde_json::from_str(r#"{"cpu": 5}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
        let parsed: FunctionLimits =
            serde_json::from_str(r#"{"cpu_ms": 5, "memory_mb": null}"#).expect("valid");
        assert_eq!(parsed.cpu_ms, Some(5));
        assert_eq!(parsed.memory_mb, None);
    }
}
