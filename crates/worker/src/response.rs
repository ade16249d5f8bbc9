//! Responses: the media type negotiated from `Accept`, `Content-Range`,
//! `Preference-Applied`, `Location`, and the response built around the
//! body Postgres returned (sent as is).

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::{Code, Error};
use crate::prefer::{Prefer, Reported};
use crate::request::header;
use crate::schema::Table;

pub(crate) const JSON: &str = "application/json; charset=utf-8";

const OBJECT: &str = "application/vnd.pgrst.object+json; charset=utf-8";

/// The response's media type, from `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Media {
    #[default]
    Array,
    /// `application/vnd.pgrst.array+json;nulls=stripped`
    ArrayStripped,
    /// `application/vnd.pgrst.object+json`
    Object,
    /// `application/vnd.pgrst.object+json;nulls=stripped`
    ObjectStripped,
    /// `text/csv`
    Csv,
}

impl Media {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Media::Array => JSON,
            Media::ArrayStripped => {
                "application/vnd.pgrst.array+json;nulls=stripped; charset=utf-8"
            }
            Media::Object => OBJECT,
            Media::ObjectStripped => {
                "application/vnd.pgrst.object+json;nulls=stripped; charset=utf-8"
            }
            Media::Csv => "text/csv; charset=utf-8",
        }
    }

    pub(crate) fn singular(self) -> bool {
        matches!(self, Media::Object | Media::ObjectStripped)
    }
}

/// `Accept`: the first media type the data API produces (JSON arrays, one
/// object with `vnd.pgrst.object`, `nulls=stripped` variants, CSV); else 406.
pub(crate) fn media(headers: &HeaderMap) -> Result<Media, Error> {
    let Some(accept) = header(headers, "accept") else {
        return Ok(Media::Array);
    };
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let m = parts.next().unwrap_or("").trim();
        let is = |s: &str| m.eq_ignore_ascii_case(s);
        let mut stripped = || parts.any(|p| p.trim().eq_ignore_ascii_case("nulls=stripped"));
        if is("application/vnd.pgrst.object+json") || is("application/vnd.pgrst.object") {
            return Ok(if stripped() {
                Media::ObjectStripped
            } else {
                Media::Object
            });
        }
        if is("application/vnd.pgrst.array+json") || is("application/vnd.pgrst.array") {
            return Ok(if stripped() {
                Media::ArrayStripped
            } else {
                Media::Array
            });
        }
        if is("text/csv") {
            return Ok(Media::Csv);
        }
        if m.is_empty() || is("*/*") || is("application/*") || is("application/json") {
            return Ok(Media::Array);
        }
    }
    Err(Error::new(
        Code::NotAcceptable,
        format!("None of these media types are available: {accept}"),
    ))
}

pub(crate) fn content_range(offset: i64, page: i64, total: Option<i64>) -> String {
    let total = total.map_or_else(|| "*".to_owned(), |t| t.to_string());
    if page > 0 {
        format!("{}-{}/{total}", offset, offset.saturating_add(page - 1))
    } else {
        format!("*/{total}")
    }
}

pub(crate) fn respond(
    status: StatusCode,
    ctype: &str,
    crange: Option<String>,
    body: Option<Bytes>,
) -> Response {
    let mut resp = match body {
        Some(b) => Response::new(Body::from(b)),
        None => Response::new(Body::empty()),
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if body_is_json(status) {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(ctype).unwrap_or(HeaderValue::from_static(JSON)),
        );
    }
    if let Some(cr) = crange
        && let Ok(v) = HeaderValue::from_str(&cr)
    {
        h.insert(HeaderName::from_static("content-range"), v);
    }
    resp
}

fn body_is_json(status: StatusCode) -> bool {
    status != StatusCode::NO_CONTENT
}

/// `Location: /table?pk=eq.value` of a single inserted row (`return=headers-only`).
pub(crate) fn location_of(table: &Table, body: &[u8]) -> Option<String> {
    let row = match serde_json::from_slice::<Value>(body).ok()? {
        Value::Array(mut rows) if rows.len() == 1 => rows.pop()?,
        obj @ Value::Object(_) => obj,
        _ => return None,
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    for c in &table.pk {
        let v = match row.get(c)? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        q.append_pair(c, &format!("eq.{v}"));
    }
    Some(format!("/{}?{}", table.name, q.finish()))
}

/// Adds `Preference-Applied` (when anything is to be reported).
pub(crate) fn with_applied(mut resp: Response, prefer: &Prefer, r: Reported) -> Response {
    if let Some(v) = prefer.applied(r) {
        resp.headers_mut()
            .insert(HeaderName::from_static("preference-applied"), v);
    }
    resp
}
