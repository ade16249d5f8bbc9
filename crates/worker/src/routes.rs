//! The HTTP entry points of `/rest/v1`: `/{table}` (GET, HEAD, POST, PUT,
//! PATCH, DELETE, OPTIONS) and `/rpc/{function}` (GET, HEAD, POST, OPTIONS).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, Uri};

use crate::context::{context, lookup_table};
use crate::error::{Code, Error};
use crate::prefer::{Prefer, Reported};
use crate::read::read;
use crate::request::{csv_to_json, is_csv_body, parse_query, write_range};
use crate::response::{allow, with_applied};
use crate::schema::Table;
use crate::state::AppState;
use crate::write::{insert, put, update_or_delete};

/// `/rest/v1/{table}`
pub async fn table(
    State(st): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match table_inner(&st, &name, &method, &uri, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn table_inner(
    st: &AppState,
    name: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Error> {
    let write = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !write && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Err(Error::new(
            Code::UnsupportedMethod,
            format!("Unsupported HTTP method: {method}"),
        ));
    }
    let q = parse_query(uri, &|_| false)?;
    let mut ctx = context(st, method, uri, headers).await?;
    // Checked with the request, before the resource (PostgREST's getRanges).
    let range = match *method {
        Method::PUT | Method::PATCH | Method::DELETE => write_range(&q, *method == Method::PUT)?,
        _ => (0, None),
    };
    let table = lookup_table(st, &mut ctx, name).await?;
    if *method == Method::OPTIONS {
        return Ok(allow(allowed_methods(&table)));
    }
    // After the resource is known (PostgREST plans it first).
    ctx.prefer.check()?;
    // A CSV body becomes the JSON PostgREST makes of it.
    let csv;
    let body = if write && *method != Method::DELETE && is_csv_body(headers) {
        csv = Bytes::from(csv_to_json(body, *method == Method::PATCH)?);
        &csv
    } else {
        body
    };
    match *method {
        Method::GET | Method::HEAD => {
            read(st, &ctx, &table, &q, uri, headers, *method == Method::HEAD).await
        }
        Method::POST => insert(st, &ctx, &table, &q, body).await,
        Method::PUT => put(st, &ctx, &table, &q, body).await,
        _ => {
            let update = *method == Method::PATCH;
            update_or_delete(st, &ctx, &table, &q, body, update, range).await
        }
    }
}

/// OPTIONS on a table or view: the methods it takes (PostgREST's
/// `RelInfoPlan`): reads always, POST when insertable, PUT when also
/// updatable and it has a primary key, PATCH when updatable, DELETE when
/// deletable.
fn allowed_methods(t: &Table) -> &'static str {
    let put = t.insertable && t.updatable && !t.pk.is_empty();
    match (t.insertable, put, t.updatable, t.deletable) {
        (true, true, true, true) => "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE",
        (true, false, true, true) => "OPTIONS,GET,HEAD,POST,PATCH,DELETE",
        (true, true, true, false) => "OPTIONS,GET,HEAD,POST,PUT,PATCH",
        (true, false, true, false) => "OPTIONS,GET,HEAD,POST,PATCH",
        (true, _, false, true) => "OPTIONS,GET,HEAD,POST,DELETE",
        (true, _, false, false) => "OPTIONS,GET,HEAD,POST",
        (false, _, true, true) => "OPTIONS,GET,HEAD,PATCH,DELETE",
        (false, _, true, false) => "OPTIONS,GET,HEAD,PATCH",
        (false, _, false, true) => "OPTIONS,GET,HEAD,DELETE",
        (false, _, false, false) => "OPTIONS,GET,HEAD",
    }
}

/// `/rest/v1/rpc/{function}`
pub async fn rpc(
    State(st): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match crate::rpc::call(&st, &name, &method, &uri, &headers, &body).await {
        Ok(r) if headers.contains_key("prefer") && method != Method::OPTIONS => {
            let reported = Reported {
                max_affected: true,
                params: true,
                ..Reported::default()
            };
            with_applied(r, &Prefer::from_headers(&headers), reported)
        }
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}
