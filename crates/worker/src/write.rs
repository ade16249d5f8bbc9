//! Writes (POST, PATCH, DELETE): the body checked against the table, the
//! statement from [`crate::sql::write`], and the response per `Prefer:
//! return` (the written rows through the read planner for
//! `representation`, `Location` for `headers-only`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use http::{HeaderValue, StatusCode};
use serde_json::Value;

use crate::context::Ctx;
use crate::error::{Code, Error};
use crate::prefer::{Reported, Resolution, Return};
use crate::query::{Query, SelectItem};
use crate::read::plan_response;
use crate::response::{JSON, Media, content_range, location_of, respond, with_applied};
use crate::schema::Table;
use crate::sql::plan::{self, Planner, Shape, Source};
use crate::sql::{self, Sql};
use crate::state::AppState;
use crate::tx::{Checks, Kind, Outcome, execute};

/// Parses a write body: the objects' keys (checked) and the JSON text.
pub(crate) fn body_columns(
    table: &Table,
    q: &Query,
    body: &Bytes,
    allow_array: bool,
) -> Result<(Vec<String>, bool, usize), Error> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::new(Code::InvalidBody, "Empty or invalid json"));
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::new(Code::InvalidBody, format!("Empty or invalid json: {e}")))?
    };
    let (objects, is_array): (Vec<&serde_json::Map<String, Value>>, bool) = match &v {
        Value::Object(o) => (vec![o], false),
        Value::Array(items) if allow_array => (
            items
                .iter()
                .map(|i| {
                    i.as_object().ok_or_else(|| {
                        Error::new(Code::InvalidBody, "All items of the array must be objects")
                    })
                })
                .collect::<Result<_, _>>()?,
            true,
        ),
        _ => {
            return Err(Error::new(
                Code::InvalidBody,
                "The body must be a JSON object or an array of objects",
            ));
        }
    };
    let cols: Vec<String> = match &q.columns {
        Some(c) => c.clone(),
        None => match objects.first() {
            None => Vec::new(),
            Some(first) => {
                let keys: Vec<String> = first.keys().cloned().collect();
                if objects
                    .iter()
                    .any(|o| o.len() != keys.len() || !keys.iter().all(|k| o.contains_key(k)))
                {
                    return Err(Error::new(Code::InvalidBody, "All object keys must match"));
                }
                keys
            }
        },
    };
    for c in &cols {
        if table.column(c).is_none() {
            return Err(Error::new(
                Code::ColumnNotFound,
                format!(
                    "Could not find the '{c}' column of '{}' in the schema cache",
                    table.name
                ),
            ));
        }
    }
    Ok((cols, is_array, objects.len()))
}

/// How a write responds.
#[derive(Debug, Clone, Copy)]
struct Write {
    /// POST (201 / `Content-Range: */n`) rather than PATCH/DELETE.
    created: bool,
    /// DELETE (`Content-Range: */n`, as PostgREST).
    delete: bool,
    /// An upsert with `resolution=merge-duplicates`: the statement counts
    /// the rows it inserted in `pgrst.inserted` (201 when some were, else 200).
    merge: bool,
    checks: Checks,
    reported: Reported,
}

/// Written rows: the response per `Prefer: return`.
async fn write_and_respond(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    stmt: Sql,
    w: Write,
) -> Result<Response, Error> {
    let representation = ctx.prefer.representation();
    let location = w.created && ctx.prefer.ret == Some(Return::HeadersOnly) && !table.pk.is_empty();
    let status_of = |out: &Outcome| {
        if !w.created {
            if representation {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
        } else if w.merge && out.inserted.unwrap_or(0) <= 0 {
            // PostgREST: a merge that inserted nothing answers 200.
            StatusCode::OK
        } else {
            StatusCode::CREATED
        }
    };
    let crange_of = |out: &Outcome| {
        let total = ctx.prefer.counts().then_some(out.page);
        if w.created || w.delete {
            match total {
                None => "*/*".to_owned(),
                Some(t) => format!("*/{t}"),
            }
        } else {
            content_range(0, out.page, total)
        }
    };
    let finish = |resp: Response| Ok(with_applied(resp, &ctx.prefer, w.reported));
    if !representation && !location {
        if let Some(plan) = &ctx.plan {
            let sql = if w.merge {
                sql::write::count_merged(stmt)
            } else {
                stmt
            };
            return plan_response(st, ctx, plan, sql, false).await;
        }
        let out = if w.merge {
            let sql = sql::write::count_merged(stmt);
            execute(st, ctx, sql, None, false, Kind::Rows, w.checks).await?
        } else {
            execute(st, ctx, stmt, None, false, Kind::Affected, w.checks).await?
        };
        return finish(respond(status_of(&out), JSON, Some(crange_of(&out)), None));
    }
    // Representation: the written rows through the select (embeds included).
    let cte = sql::write::returning_all(stmt);
    let select = if location {
        Some(table.pk.iter().map(|c| SelectItem::column(c)).collect())
    } else {
        q.select.clone()
    };
    let returned = Query {
        select,
        conds: q
            .conds
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .cloned()
            .collect(),
        orders: q.orders.clone(),
        limits: q
            .limits
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .cloned()
            .collect(),
        offsets: q
            .offsets
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .cloned()
            .collect(),
        ..Query::default()
    };
    let shape = Shape {
        count: false,
        singular: ctx.singular,
        strip_nulls: matches!(ctx.media, Media::ArrayStripped | Media::ObjectStripped),
        csv: ctx.media == Media::Csv,
        no_body: false,
        inserted: w.merge,
        count_cap: None,
        explain: false,
    };
    let mut planner = Planner::new(&ctx.schema, &ctx.db_schema).with_aggregates(st.aggregates);
    let sql = planner.read(
        Source::Written(table.clone()),
        &cte,
        &returned,
        shape,
        None,
        (0, None),
    )?;
    if let Some(plan) = &ctx.plan {
        return plan_response(st, ctx, plan, sql, false).await;
    }
    let out = execute(st, ctx, sql, None, false, Kind::Rows, w.checks).await?;
    let status = status_of(&out);
    if location {
        let mut resp = respond(status, JSON, Some(crange_of(&out)), None);
        if let Some(loc) = location_of(table, &out.body)
            && let Ok(v) = HeaderValue::from_str(&loc)
        {
            resp.headers_mut().insert(http::header::LOCATION, v);
        }
        return finish(resp);
    }
    let ctype = ctx.media.content_type();
    let crange = crange_of(&out);
    finish(respond(status, ctype, Some(crange), Some(out.body)))
}

pub(crate) async fn insert(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Error> {
    let (cols, is_array, n) = body_columns(table, q, body, true)?;
    let resolution = ctx.prefer.resolution;
    // The conflict target: on_conflict, else the primary key (none: a plain insert).
    let target: &[String] = q.on_conflict.as_deref().unwrap_or(&table.pk);
    let checked = resolution.is_some() || q.on_conflict.is_some();
    for c in target.iter().filter(|_| checked) {
        if table.column(c).is_none() {
            return Err(Error::new(
                Code::UndefinedColumn,
                format!("column {}.{c} does not exist", table.name),
            ));
        }
    }
    let merge = resolution == Some(Resolution::MergeDuplicates);
    let rows = sql::write::Rows {
        body,
        cols: &cols,
        is_array,
        len: n,
        missing_default: ctx.prefer.missing_default(),
    };
    let sql = sql::write::insert(table, rows, resolution, target);
    let w = Write {
        created: true,
        delete: false,
        merge,
        checks: Checks::single(ctx.singular),
        reported: Reported {
            params: false,
            resolution: !table.pk.is_empty() || q.on_conflict.is_some(),
            missing: true,
            ret: true,
            max_affected: false,
        },
    };
    write_and_respond(st, ctx, table, q, sql, w).await
}

pub(crate) async fn update_or_delete(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    body: &Bytes,
    update: bool,
) -> Result<Response, Error> {
    let mut planner = Planner::new(&ctx.schema, &ctx.db_schema).with_aggregates(st.aggregates);
    let reported = Reported {
        params: false,
        resolution: false,
        missing: update,
        ret: true,
        max_affected: true,
    };
    let mut sql = if update {
        let (cols, _, _) = body_columns(table, q, body, false)?;
        if cols.is_empty() {
            // Nothing to change.
            let status = if ctx.prefer.representation() {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            };
            let body = (status == StatusCode::OK).then(|| Bytes::from_static(b"[]"));
            let resp = respond(status, JSON, Some("*/*".to_owned()), body);
            return Ok(with_applied(resp, &ctx.prefer, reported));
        }
        let rows = sql::write::Rows {
            body,
            cols: &cols,
            is_array: false,
            len: 1,
            missing_default: ctx.prefer.missing_default(),
        };
        sql::write::update(table, rows)
    } else {
        sql::write::delete(table)
    };
    plan::write_conditions(&mut planner, table, q, &mut sql)?;
    let w = Write {
        created: false,
        delete: !update,
        merge: false,
        checks: Checks {
            single: ctx.singular,
            max_affected: ctx.prefer.max_affected(),
        },
        reported,
    };
    write_and_respond(st, ctx, table, q, sql, w).await
}
