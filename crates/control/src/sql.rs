//! `POST /v1/tenants/{id}/sql`: SQL run as the tenant's owner role on its own
//! connection (never `SET ROLE` from a superuser, which `RESET ROLE` would undo).
//!
//! Without parameters the text is a script sent with the simple query
//! protocol: Postgres runs all its statements in one implicit transaction
//! (all or nothing) and the last statement's rows are returned. With
//! parameters it is one statement with bound values.
//!
//! The answer is a JSON array of row objects; with `"columns": true` in
//! the request it is `{"columns": [...], "rows": [...]}`, the columns in
//! the statement's order (an object's keys are not).

use std::time::Duration;

use futures_util::TryStreamExt as _;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgRow, PgValueRef};
use sqlx::{
    Column as _, Connection as _, Executor as _, PgConnection, Row as _, TypeInfo as _,
    ValueRef as _,
};

/// Limits of one SQL request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The session's `statement_timeout`.
    pub statement_timeout: Duration,
    /// More rows than this fail with [`SqlError::TooManyRows`].
    pub max_rows: usize,
    /// A larger JSON result fails with [`SqlError::TooLarge`].
    pub max_bytes: usize,
}

/// What went wrong, mapped to a status by the API.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Connecting as the owner role failed.
    #[error("{0}")]
    Connect(sqlx::Error),
    /// Postgres refused or failed the statement.
    #[error("{0}")]
    Query(sqlx::Error),
    /// The result has more rows than [`Limits::max_rows`].
    #[error("the result has more than {0} rows; add a LIMIT")]
    TooManyRows(usize),
    /// The result is larger than [`Limits::max_bytes`].
    #[error("the result is larger than {0} bytes; select fewer columns or rows")]
    TooLarge(usize),
    /// A column of a parameterised statement has a type the row decoder does not handle.
    #[error(
        "column {column:?} has type {ty}, which cannot be returned with parameters; cast it (e.g. ::text)"
    )]
    Unsupported {
        /// The column's name.
        column: String,
        /// The column's Postgres type name.
        ty: String,
    },
}

/// A result: the column names in the statement's order (JSON objects'
/// keys are sorted; a result without rows has no columns here) and the
/// rows as objects.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// The column names, in the statement's order.
    pub columns: Vec<String>,
    /// One JSON object per row.
    pub rows: Vec<Value>,
}

/// Runs `query` as the owner (connection options `owner`) and returns the rows.
pub async fn run(
    owner: &PgConnectOptions,
    query: &str,
    params: Option<&[Value]>,
    limits: Limits,
) -> Result<Vec<Value>, SqlError> {
    run_with_columns(owner, query, params, limits)
        .await
        .map(|r| r.rows)
}

/// [`run`], with the result's column names in order.
pub async fn run_with_columns(
    owner: &PgConnectOptions,
    query: &str,
    params: Option<&[Value]>,
    limits: Limits,
) -> Result<Rows, SqlError> {
    let mut conn = PgConnection::connect_with(owner)
        .await
        .map_err(SqlError::Connect)?;
    let result = run_on(&mut conn, query, params, limits).await;
    let _ = conn.close().await;
    result
}

fn column_names(row: &PgRow) -> Vec<String> {
    row.columns().iter().map(|c| c.name().to_owned()).collect()
}

async fn run_on(
    conn: &mut PgConnection,
    query: &str,
    params: Option<&[Value]>,
    limits: Limits,
) -> Result<Rows, SqlError> {
    let ms = limits.statement_timeout.as_millis().max(1);
    conn.execute(format!("SET statement_timeout = {ms}").as_str())
        .await
        .map_err(SqlError::Query)?;
    let mut budget = Budget {
        limits,
        rows: 0,
        bytes: 0,
    };
    match params {
        None => {
            // Simple protocol: text values, every statement of the script.
            let mut last = Rows::default();
            let mut current = Rows::default();
            let mut stream = sqlx::raw_sql(query).fetch_many(&mut *conn);
            while let Some(item) = stream.try_next().await.map_err(SqlError::Query)? {
                match item {
                    sqlx::Either::Left(_done) => {
                        last = std::mem::take(&mut current);
                        budget.rows = 0;
                        budget.bytes = 0;
                    }
                    sqlx::Either::Right(row) => {
                        if current.rows.is_empty() {
                            current.columns = column_names(&row);
                        }
                        current
                            .rows
                            .push(budget.take(row_to_json(&row, Format::Text)?)?)
                    }
                }
            }
            Ok(if current.rows.is_empty() {
                last
            } else {
                current
            })
        }
        Some(params) => {
            let mut q = sqlx::query(query);
            for p in params {
                q = match p {
                    Value::Null => q.bind(None::<String>),
                    Value::Bool(b) => q.bind(*b),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => q.bind(i),
                        None => q.bind(n.as_f64().unwrap_or(f64::NAN)),
                    },
                    Value::String(s) => q.bind(s.clone()),
                    other => q.bind(sqlx::types::Json(other.clone())),
                };
            }
            let mut out = Rows::default();
            let mut rows = q.fetch(&mut *conn);
            while let Some(row) = rows.try_next().await.map_err(SqlError::Query)? {
                if out.rows.is_empty() {
                    out.columns = column_names(&row);
                }
                out.rows
                    .push(budget.take(row_to_json(&row, Format::Binary)?)?);
            }
            Ok(out)
        }
    }
}

struct Budget {
    limits: Limits,
    rows: usize,
    bytes: usize,
}

impl Budget {
    fn take(&mut self, row: Value) -> Result<Value, SqlError> {
        self.rows += 1;
        if self.rows > self.limits.max_rows {
            return Err(SqlError::TooManyRows(self.limits.max_rows));
        }
        self.bytes += row.to_string().len();
        if self.bytes > self.limits.max_bytes {
            return Err(SqlError::TooLarge(self.limits.max_bytes));
        }
        Ok(row)
    }
}

#[derive(Clone, Copy)]
enum Format {
    Text,
    Binary,
}

fn row_to_json(row: &PgRow, format: Format) -> Result<Value, SqlError> {
    let mut obj = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(SqlError::Query)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match format {
                Format::Text => text_value(raw),
                Format::Binary => {
                    binary_value(row, i, col.type_info().name()).ok_or_else(|| {
                        SqlError::Unsupported {
                            column: col.name().to_owned(),
                            ty: col.type_info().name().to_owned(),
                        }
                    })?
                }
            }
        };
        obj.insert(col.name().to_owned(), value);
    }
    Ok(Value::Object(obj))
}

/// A text-format value as JSON: numbers, booleans and JSON as such, the rest as strings.
fn text_value(raw: PgValueRef<'_>) -> Value {
    let ty = raw.type_info().name().to_owned();
    let Ok(text) = raw.as_str() else {
        return Value::Null;
    };
    match ty.as_str() {
        "BOOL" => Value::Bool(text == "t"),
        "INT2" | "INT4" | "INT8" | "OID" | "FLOAT4" | "FLOAT8" | "NUMERIC" => {
            serde_json::from_str::<serde_json::Number>(text)
                .map_or_else(|_| Value::from(text), Value::Number)
        }
        "JSON" | "JSONB" => serde_json::from_str(text).unwrap_or_else(|_| Value::from(text)),
        _ => Value::from(text),
    }
}

fn binary_value(row: &PgRow, i: usize, ty: &str) -> Option<Value> {
    Some(match ty {
        "BOOL" => Value::from(row.try_get::<bool, _>(i).ok()?),
        "INT2" => Value::from(row.try_get::<i16, _>(i).ok()?),
        "INT4" => Value::from(row.try_get::<i32, _>(i).ok()?),
        "INT8" => Value::from(row.try_get::<i64, _>(i).ok()?),
        "FLOAT4" => Value::from(row.try_get::<f32, _>(i).ok()?),
        "FLOAT8" => Value::from(row.try_get::<f64, _>(i).ok()?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
            Value::from(row.try_get::<String, _>(i).ok()?)
        }
        "JSON" | "JSONB" => row.try_get::<Value, _>(i).ok()?,
        "UUID" => Value::from(row.try_get::<uuid::Uuid, _>(i).ok()?.to_string()),
        "TIMESTAMPTZ" => Value::from(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .ok()?
                .to_rfc3339(),
        ),
        "TIMESTAMP" => Value::from(row.try_get::<chrono::NaiveDateTime, _>(i).ok()?.to_string()),
        "DATE" => Value::from(row.try_get::<chrono::NaiveDate, _>(i).ok()?.to_string()),
        _ => return None,
    })
}
