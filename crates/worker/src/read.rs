//! Reads of a table or view (GET, HEAD), and the response of any read
//! (rpc results too): 200, 206 or 416 by PostgREST's rules.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LOCATION, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};

use crate::context::Ctx;
use crate::error::{Code, Error};
use crate::prefer::Reported;
use crate::query::Query;
use crate::request::{content_location, top_range};
use crate::response::{Media, Plan, content_range, respond, with_applied};
use crate::schema::Table;
use crate::sql::Sql;
use crate::sql::plan::{Planner, Shape, Source};
use crate::state::AppState;
use crate::tx::{Checks, Kind, Outcome, execute};

pub(crate) async fn read(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
    uri: &Uri,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, Error> {
    let rng = top_range(headers, q, !head)?;
    let (count, count_cap, explain) = ctx.prefer.count_plan(st.max_rows);
    let shape = Shape {
        count,
        singular: ctx.singular,
        strip_nulls: matches!(ctx.media, Media::ArrayStripped | Media::ObjectStripped),
        csv: ctx.media == Media::Csv,
        no_body: head,
        inserted: false,
        count_cap,
        explain,
    };
    let mut planner = Planner::new(&ctx.schema, &ctx.db_schema).with_aggregates(st.aggregates);
    let (sql, explain) = planner.read_counted(
        Source::Table(table.clone()),
        &Sql::default(),
        q,
        shape,
        st.max_rows,
        rng,
    )?;
    if let Some(plan) = &ctx.plan {
        return plan_response(st, ctx, plan, sql, true).await;
    }
    let mut out = execute(
        st,
        ctx,
        sql,
        explain,
        true,
        Kind::Rows,
        Checks::single(ctx.singular),
    )
    .await?;
    out.total = ctx.prefer.settle_count(out.total, out.planned, st.max_rows);
    let mut resp = read_response(ctx, rng.0, out, head);
    // PostgREST's canonical location of a table read (also on a 416).
    if let Ok(v) = HeaderValue::from_bytes(content_location(&table.name, uri).as_bytes()) {
        resp.headers_mut().insert(CONTENT_LOCATION, v);
    }
    Ok(with_applied(resp, &ctx.prefer, Reported::default()))
}

/// `Accept: application/vnd.pgrst.plan…`: 200 with the `EXPLAIN` of the
/// statement the request would run (its count's `EXPLAIN` left out), in a
/// transaction like the statement's.
pub(crate) async fn plan_response(
    st: &AppState,
    ctx: &Ctx,
    plan: &Plan,
    sql: Sql,
    read_only: bool,
) -> Result<Response, Error> {
    let sql = crate::sql::explain(sql, plan.json, plan.options);
    let out = execute(st, ctx, sql, None, read_only, Kind::Plan, Checks::default()).await?;
    Ok(respond(
        StatusCode::OK,
        &plan.content_type(),
        None,
        Some(out.body),
    ))
}

/// The response of a read: 200, or with a count 206 when the page is not
/// everything and 416 when the offset is beyond the end (PostgREST's rules).
pub(crate) fn read_response(ctx: &Ctx, offset: i64, out: Outcome, head: bool) -> Response {
    let mut status = StatusCode::OK;
    let crange = content_range(offset, out.page, out.total);
    if let Some(total) = out.total {
        if offset > total {
            let mut resp = Error::new(Code::RangeNotSatisfiable, "Requested range not satisfiable")
                .details(format!(
                    "An offset of {offset} was requested, but there are only {total} rows."
                ))
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&crange) {
                resp.headers_mut()
                    .insert(HeaderName::from_static("content-range"), v);
            }
            return resp;
        }
        if out.page < total {
            status = StatusCode::PARTIAL_CONTENT;
        }
    }
    let ctype = ctx.media.content_type();
    respond(status, ctype, Some(crange), (!head).then_some(out.body))
}
