//! rpc (`/rpc/{function}`): the function picked by its arguments (or
//! the whole body, by its media type), the call from [`crate::sql::rpc`],
//! and its result as rows, one value, or nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;

use crate::context::{Ctx, context};
use crate::error::{Code, Error};
use crate::read::{plan_response, read_response};
use crate::request::{BodyMedia, body_media, parse_query, top_range};
use crate::response::{JSON, Media, allow, content_range, respond};
use crate::schema::Function;
use crate::sql;
use crate::sql::plan::{self, Planner, Shape, Source};
use crate::state::AppState;
use crate::tx::{Checks, Kind, execute};

pub(crate) async fn call(
    st: &AppState,
    name: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Error> {
    let post = match *method {
        Method::POST => true,
        Method::GET | Method::HEAD | Method::OPTIONS => false,
        _ => {
            return Err(Error::new(
                Code::RpcMethod,
                format!("Cannot use the {method} method on RPC"),
            ));
        }
    };
    let mut ctx = context(st, method, uri, headers).await?;
    let mut candidates = ctx.schema.functions(&ctx.db_schema, name).to_vec();
    if candidates.is_empty() && ctx.db.stale_after_miss() {
        ctx.reload_schema(st).await?;
        candidates = ctx.schema.functions(&ctx.db_schema, name).to_vec();
    }
    if *method == Method::OPTIONS {
        return options(&ctx, name, uri);
    }
    let q = parse_query(uri, &|_| !post)?;
    // A function taking the whole body as one json/jsonb argument:
    // `Prefer: params=single-object` (any name) or, as a fallback when no
    // function matches the body's keys, one unnamed parameter (PostgREST).
    let single_object = post && ctx.prefer.single_object();
    // The body's media type: JSON arguments, or the raw body for a function
    // of one unnamed text / xml / bytea parameter (PostgREST's findProc).
    let media = if post {
        body_media(headers)
    } else {
        BodyMedia::Json
    };
    let raw_media = matches!(media, BodyMedia::Text | BodyMedia::Xml | BodyMedia::Bytes);
    let raw_types: &[&str] = match media {
        _ if single_object => &["json", "jsonb"],
        BodyMedia::Json => &["json", "jsonb"],
        BodyMedia::Form => &[],
        BodyMedia::Text => &["text"],
        BodyMedia::Xml => &["xml"],
        BodyMedia::Bytes => &["bytea"],
    };
    let raw_fns: Vec<&Arc<Function>> = if post {
        candidates
            .iter()
            .filter(|f| {
                f.args.len() == 1
                    && raw_types.contains(&f.args[0].ty.as_str())
                    && (single_object || f.args[0].name.is_empty())
            })
            .collect()
    } else {
        Vec::new()
    };
    let raw_fn = raw_fns.first().map(|f| Arc::clone(f));
    // Argument names and values.
    // `application/x-www-form-urlencoded`: the pairs are the arguments
    // (as JSON strings, read as each parameter's type), as PostgREST.
    let form_json = if post && !single_object && media == BodyMedia::Form {
        let mut o = serde_json::Map::new();
        for (k, v) in form_urlencoded::parse(body) {
            o.insert(k.into_owned(), Value::String(v.into_owned()));
        }
        Some(Value::Object(o))
    } else {
        None
    };
    let body_obj = if let Some(Value::Object(o)) = &form_json {
        Some(o.clone())
    } else if post && !single_object && !raw_media {
        if body.iter().all(u8::is_ascii_whitespace) {
            Some(serde_json::Map::new())
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(o)) => Some(o),
                Ok(_) if raw_fn.is_some() => None,
                Ok(_) => {
                    return Err(Error::new(
                        Code::InvalidBody,
                        "The function arguments must be a JSON object",
                    ));
                }
                Err(e) => {
                    return Err(Error::new(
                        Code::InvalidBody,
                        format!("Empty or invalid json: {e}"),
                    ));
                }
            }
        }
    } else {
        Some(serde_json::Map::new())
    };
    let given: Vec<String> = if post {
        body_obj.iter().flat_map(|o| o.keys().cloned()).collect()
    } else {
        q.args.iter().map(|(k, _)| k.clone()).collect()
    };
    // PGRST202 when only a one-parameter function could take the body.
    let no_single = || {
        let what = match media {
            _ if single_object => "a single json/jsonb parameter",
            BodyMedia::Text => "a single unnamed text parameter",
            BodyMedia::Xml => "a single unnamed xml parameter",
            BodyMedia::Bytes => "a single unnamed bytea parameter",
            BodyMedia::Json | BodyMedia::Form => "a single json/jsonb parameter",
        };
        Error::new(Code::FunctionNotFound,
            format!(
                "Could not find the function {}.{name} in the schema cache",
                ctx.db_schema
            ),
        )
        .details(format!(
            "Searched for the function {}.{name} with {what}, but no matches were found in the schema cache.",
            ctx.db_schema
        ))
    };
    let picked = if single_object || body_obj.is_none() {
        None
    } else {
        match plan::pick_function(&ctx.schema, &ctx.db_schema, name, &given, post, raw_media) {
            Ok(f) => Some(f),
            Err(_) if raw_fn.is_some() => None,
            Err(e) if e.code() == Some(Code::FunctionNotFound) && raw_media => {
                return Err(no_single());
            }
            Err(e) => return Err(e),
        }
    };
    let (f, raw) = match (picked, raw_fn) {
        (Some(f), _) => (f, false),
        // Several functions could take the body: PGRST203.
        (None, Some(_)) if raw_fns.len() > 1 => {
            return Err(plan::ambiguous_functions(&raw_fns));
        }
        (None, Some(f)) => (f, true),
        (None, None) => return Err(no_single()),
    };
    ctx.prefer.check()?;
    let read_only = !post || f.volatility != "v";
    let from = if raw {
        sql::rpc::call_raw(&f, body)
    } else if post {
        sql::rpc::call_json(&f, &given, || match &form_json {
            Some(v) => v.to_string(),
            None => String::from_utf8_lossy(body).into_owned(),
        })
    } else {
        sql::rpc::call_query(&f, &given, &q.args)
    };
    let head = *method == Method::HEAD;
    let checks = Checks {
        single: ctx.singular,
        max_affected: ctx.prefer.max_affected(),
        ..Checks::default()
    };
    if let Some(columns) = f.columns.clone() {
        let (count, count_cap, explain) = ctx.prefer.count_plan(st.max_rows);
        let shape = Shape {
            count,
            singular: ctx.singular || !f.returns_set,
            strip_nulls: matches!(ctx.media, Media::ArrayStripped | Media::ObjectStripped),
            csv: ctx.media == Media::Csv,
            no_body: head,
            inserted: false,
            count_cap,
            explain,
        };
        let mut planner = Planner::new(&ctx.schema, &ctx.db_schema).with_aggregates(st.aggregates);
        let rng = top_range(headers, &q, *method == Method::GET)?;
        let (sql, explain) = planner.read_counted(
            Source::Call {
                columns,
                name: f.name.clone(),
                origin: f.ret_table.clone(),
            },
            &from,
            &q,
            shape,
            if f.returns_set { st.max_rows } else { None },
            rng,
        )?;
        if let Some(plan) = &ctx.plan {
            return plan_response(st, &ctx, plan, sql, read_only).await;
        }
        let mut out = execute(st, &ctx, sql, explain, read_only, Kind::Rows, checks).await?;
        out.total = ctx.prefer.settle_count(out.total, out.planned, st.max_rows);
        if !f.returns_set && !ctx.singular {
            let body = if out.body.is_empty() {
                Bytes::from_static(b"null")
            } else {
                out.body
            };
            // One row, as PostgREST counts a function returning one value.
            return Ok(respond(
                StatusCode::OK,
                JSON,
                Some("0-0/*".to_owned()),
                (!head).then_some(body),
            ));
        }
        return Ok(read_response(&ctx, rng.0, out, head));
    }
    // Scalar results.
    if f.returns_void {
        let sql = sql::rpc::select_void(from);
        if let Some(plan) = &ctx.plan {
            return plan_response(st, &ctx, plan, sql, read_only).await;
        }
        let _ = execute(
            st,
            &ctx,
            sql,
            None,
            read_only,
            Kind::Affected,
            Checks::default(),
        )
        .await?;
        return Ok(respond(
            StatusCode::NO_CONTENT,
            JSON,
            Some("0-0/*".to_owned()),
            None,
        ));
    }
    let sql = if f.returns_set {
        sql::rpc::select_scalars(from)
    } else {
        sql::rpc::select_scalar(from)
    };
    let checks = Checks {
        single: false,
        ..checks
    };
    if let Some(plan) = &ctx.plan {
        return plan_response(st, &ctx, plan, sql, read_only).await;
    }
    let out = execute(st, &ctx, sql, None, read_only, Kind::Rows, checks).await?;
    Ok(respond(
        StatusCode::OK,
        JSON,
        Some(content_range(0, out.page, None)),
        (!head).then_some(out.body),
    ))
}

/// OPTIONS: the methods the function takes (PostgREST's `RoutineInfoPlan`):
/// `OPTIONS,POST` for a volatile one, else also GET and HEAD. The function
/// is found as PostgREST 12 finds it for OPTIONS: by the query string's
/// keys, which cannot be arguments there (a plain `a=1` is PGRST100), so a
/// function with a required parameter is PGRST202.
fn options(ctx: &Ctx, name: &str, uri: &Uri) -> Result<Response, Error> {
    parse_query(uri, &|_| false)?;
    let f = plan::pick_function(&ctx.schema, &ctx.db_schema, name, &[], false, false)?;
    Ok(allow(if f.volatility == "v" {
        "OPTIONS,POST"
    } else {
        "OPTIONS,GET,HEAD,POST"
    }))
}
