//! What a request's headers and query string say, besides `Prefer`
//! ([`crate::prefer`]) and `Accept` ([`crate::response`]): the query
//! (parsed by [`crate::query`]), the rows asked for (`Range`, `limit`,
//! `offset`) and an rpc body's media type.

use http::{HeaderMap, Uri};

use crate::error::{Code, Error};
use crate::query::{self, Query};

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn parse_query(uri: &Uri, is_arg: &dyn Fn(&str) -> bool) -> Result<Query, Error> {
    query::parse(uri.query().unwrap_or(""), is_arg).map_err(Error::query)
}

/// The top-level rows asked for, as (offset, limit): the `Range` header
/// (GET only, `first-last` or `first-`; anything else is ignored, as
/// PostgREST does) intersected with `limit`/`offset`. An empty result other
/// than `limit=0` is PostgREST's 416 PGRST103.
pub(crate) fn top_range(
    headers: &HeaderMap,
    q: &Query,
    use_header: bool,
) -> Result<(i64, Option<i64>), Error> {
    let top =
        |v: &[(Vec<String>, i64)]| v.iter().rev().find(|(p, _)| p.is_empty()).map(|(_, n)| *n);
    let (limit, offset) = (top(&q.limits), top(&q.offsets).unwrap_or(0));
    let header = if use_header {
        header(headers, "range").and_then(parse_range)
    } else {
        None
    };
    if header.is_none() && limit.is_none_or(|l| l > 0) {
        // The common case: nothing to intersect.
        return Ok((offset, limit));
    }
    let offset = i128::from(offset);
    let upper_q = limit.map(|l| offset + i128::from(l) - 1);
    if limit == Some(0) && offset == 0 {
        return Ok((0, Some(0)));
    }
    let (lower_h, upper_h) = header.unwrap_or((0, None));
    let lower = offset.max(lower_h);
    let upper = match (upper_q, upper_h) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(u) = upper
        && u < lower
    {
        let details = if upper_h.is_some_and(|u| u < lower_h) {
            "The lower boundary must be lower than or equal to the upper boundary in the Range header."
        } else {
            "Limit should be greater than or equal to zero."
        };
        return Err(
            Error::new(Code::RangeNotSatisfiable, "Requested range not satisfiable")
                .details(details),
        );
    }
    let clamp = |n: i128| i64::try_from(n).unwrap_or(i64::MAX);
    Ok((clamp(lower), upper.map(|u| clamp(u - lower + 1))))
}

/// `Range: first-last` / `first-` (digits only) as (first, last).
fn parse_range(v: &str) -> Option<(i128, Option<i128>)> {
    let (a, b) = v.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return None;
    }
    let num = |s: &str| s.parse::<i128>().unwrap_or(i128::from(i64::MAX));
    Some((num(a), (!b.is_empty()).then(|| num(b))))
}

/// The media type of an rpc body (`Content-Type`): JSON arguments unless
/// it is a form, `text/plain`, `text/xml` or `application/octet-stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyMedia {
    Json,
    /// `application/x-www-form-urlencoded` arguments.
    Form,
    Text,
    Xml,
    Bytes,
}

pub(crate) fn body_media(headers: &HeaderMap) -> BodyMedia {
    let Some(ct) = header(headers, "content-type") else {
        return BodyMedia::Json;
    };
    let m = ct.split(';').next().unwrap_or("").trim();
    if m.eq_ignore_ascii_case("text/plain") {
        BodyMedia::Text
    } else if m.eq_ignore_ascii_case("text/xml") {
        BodyMedia::Xml
    } else if m.eq_ignore_ascii_case("application/octet-stream") {
        BodyMedia::Bytes
    } else if m.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyMedia::Form
    } else {
        BodyMedia::Json
    }
}
