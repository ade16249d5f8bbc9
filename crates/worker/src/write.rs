//! Writes (POST, PUT, PATCH, DELETE): the body checked against the table,
//! the statement from [`crate::sql::write`], and the response per `Prefer:
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
use crate::query::{Cond, Op, Query, SelectItem};
use crate::read::plan_response;
use crate::response::{JSON, Media, content_range, location_of, respond, with_applied};
use crate::schema::{Column, Table};
use crate::sql::plan::{self, Planner, Shape, Source};
use crate::sql::{self, Sql};
use crate::state::AppState;
use crate::tx::{Checks, Kind, Outcome, execute};

/// Parses a write body: the objects' keys (checked) and the JSON text.
pub(crate) fn body_columns(
    table: &Table,
    columns: Option<&[String]>,
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
    let cols: Vec<String> = match columns {
        Some(c) => c.to_vec(),
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
    /// PUT: 204, or with `return=representation` 201 when the row was
    /// inserted (`pgrst.inserted`) and 200 when it was updated; no
    /// `Content-Range` (PostgREST's `MutationSingleUpsert` response).
    put: bool,
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
        if w.put {
            match (representation, out.inserted.unwrap_or(0) > 0) {
                (false, _) => StatusCode::NO_CONTENT,
                (true, true) => StatusCode::CREATED,
                (true, false) => StatusCode::OK,
            }
        } else if !w.created {
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
        if w.put {
            None
        } else if w.created || w.delete {
            Some(match total {
                None => "*/*".to_owned(),
                Some(t) => format!("*/{t}"),
            })
        } else {
            Some(content_range(0, out.page, total))
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
        return finish(respond(status_of(&out), JSON, crange_of(&out), None));
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
        inserted: w.merge || w.put,
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
        let mut resp = respond(status, JSON, crange_of(&out), None);
        if let Some(loc) = location_of(table, &out.body)
            && let Ok(v) = HeaderValue::from_str(&loc)
        {
            resp.headers_mut().insert(http::header::LOCATION, v);
        }
        return finish(resp);
    }
    let ctype = ctx.media.content_type();
    let crange = crange_of(&out);
    finish(respond(status, ctype, crange, Some(out.body)))
}

pub(crate) async fn insert(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Error> {
    let (cols, is_array, n) = body_columns(table, q.columns.as_deref(), body, true)?;
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
        put: false,
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

/// PATCH (`update`) or DELETE; `range` = (offset, limit) of a limited
/// one (`(0, None)`: every filtered row), see [`crate::request::write_range`].
pub(crate) async fn update_or_delete(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    body: &Bytes,
    update: bool,
    range: (i64, Option<i64>),
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
        let (cols, _, _) = body_columns(table, q.columns.as_deref(), body, false)?;
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
    let limited = range != (0, None);
    if limited {
        plan::limited_write_conditions(&mut planner, table, q, &mut sql, update, range)?;
    } else {
        plan::write_conditions(&mut planner, table, q, &mut sql)?;
    }
    let w = Write {
        created: false,
        delete: !update,
        merge: false,
        put: false,
        checks: Checks {
            single: ctx.singular,
            max_affected: ctx.prefer.max_affected(),
            // Order columns that are not unique write more rows than the
            // limit: PGRST110, nothing changed (PostgREST).
            max_changes: range.1.filter(|_| limited),
            put: false,
        },
        reported,
    };
    write_and_respond(st, ctx, table, q, sql, w).await
}

/// PUT: one row inserted or replaced by its primary key. The filters must
/// be `eq` on all and only the primary key's columns (else 405 PGRST105, also
/// for a table without one); the body (an object, or an array: its rows
/// with the URL's key are written) must hold the key with the URL's
/// values, else 400 PGRST115 and nothing is written. `columns=`,
/// `on_conflict=` and `missing=default` do not apply, as in PostgREST.
pub(crate) async fn put(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Error> {
    let key = put_key(table, q)?;
    let (cols, is_array, n) = body_columns(table, None, body, true)?;
    if n == 0 || !table.pk.iter().all(|k| cols.contains(k)) {
        // No row could carry the URL's key.
        return Err(Error::put_matching_pk());
    }
    let rows = sql::write::Rows {
        body,
        cols: &cols,
        is_array,
        len: n,
        missing_default: false,
    };
    let sql = sql::write::put(table, rows, &key);
    let w = Write {
        created: false,
        delete: false,
        merge: false,
        put: true,
        checks: Checks {
            put: true,
            ..Checks::default()
        },
        reported: Reported {
            ret: true,
            ..Reported::default()
        },
    };
    write_and_respond(st, ctx, table, q, sql, w).await
}

/// The primary key's columns with their values in the URL: the filters
/// must be exactly one plain `eq` per key column (repeating one is
/// allowed; it then needs both values), no other filter, no `or`/`and`,
/// nothing on an embedded resource (PostgREST's `MutationSingleUpsert`
/// plan: `qsFilterFields` equal to the key's columns, all `eq`).
fn put_key<'t>(table: &'t Table, q: &'t Query) -> Result<Vec<(&'t Column, &'t str)>, Error> {
    let invalid = || {
        Error::new(
            Code::PutFilters,
            "Filters must include all and only primary key columns with 'eq' operators",
        )
    };
    let mut key = Vec::with_capacity(q.conds.len());
    for (path, cond) in &q.conds {
        let Cond::Filter(f) = cond else {
            return Err(invalid());
        };
        let Op::Cmp("=", value) = &f.op else {
            return Err(invalid());
        };
        if !path.is_empty() || f.negate || !f.field.json.is_empty() {
            return Err(invalid());
        }
        let column = table
            .pk
            .contains(&f.field.name)
            .then(|| table.column(&f.field.name))
            .flatten()
            .ok_or_else(invalid)?;
        key.push((column, value.as_str()));
    }
    if table.pk.is_empty()
        || !table
            .pk
            .iter()
            .all(|k| key.iter().any(|(c, _)| &c.name == k))
    {
        return Err(invalid());
    }
    Ok(key)
}
