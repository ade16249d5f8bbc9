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
    // `limit=0` asks for no rows whatever the offset or `Range` (PostgREST's
    // limit-zero range), never a 416.
    if limit == Some(0) {
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

/// The rows a PUT, PATCH or DELETE is limited to, as (offset, limit);
/// `(0, None)`: all of them. As PostgREST's `getRanges`: an empty range is
/// 416 PGRST103, `limit`/`offset` (at any level) on PATCH/DELETE without an
/// `order` PGRST109, and any top-level `limit`, or an `offset` other than 0,
/// on PUT PGRST114. `Range` is not read.
pub(crate) fn write_range(q: &Query, put: bool) -> Result<(i64, Option<i64>), Error> {
    let range = top_range(&HeaderMap::new(), q, false)?;
    if !put && (!q.limits.is_empty() || !q.offsets.is_empty()) && q.orders.is_empty() {
        return Err(Error::limit_without_order());
    }
    if put && range != (0, None) {
        return Err(Error::new(
            Code::PutLimit,
            "limit/offset querystring parameters are not allowed for PUT",
        ));
    }
    Ok(range)
}

/// `Content-Location` of a table read, as PostgREST 12 writes it
/// (`Response.hs`, its `qsCanonical`): `/table`, then, when there is a query
/// string, `?` and its decoded pairs sorted by name (ties in their order), a
/// repeated name once with its values joined by `,`, every byte but ASCII
/// letters, digits and `-_.~` percent-encoded (`%2C` for a `,` in a value).
pub(crate) fn content_location(table: &str, uri: &Uri) -> String {
    let query = uri.query().unwrap_or("");
    let mut out = String::with_capacity(table.len() + query.len() * 2 + 2);
    out.push('/');
    out.push_str(table);
    let mut pairs: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
    if pairs.is_empty() {
        return out;
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    out.push('?');
    let mut last: Option<&str> = None;
    for (k, v) in &pairs {
        if last == Some(&**k) {
            out.push(',');
        } else {
            if last.is_some() {
                out.push('&');
            }
            encode_canonical(&mut out, k);
            out.push('=');
            last = Some(k);
        }
        encode_canonical(&mut out, v);
    }
    out
}

/// Percent-encodes all but ASCII letters, digits and `-_.~` (uppercase hex).
fn encode_canonical(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
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

/// `Content-Type: text/csv` on a table write.
pub(crate) fn is_csv_body(headers: &HeaderMap) -> bool {
    header(headers, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("text/csv")
    })
}

/// A CSV body (RFC 4180: the first record names the columns, fields may be
/// quoted with `"` and `""` inside, records end with LF or CRLF) as the
/// JSON array of objects PostgREST 12 makes of it: every field a string
/// (Postgres casts it to the column's type), except the unquoted or quoted
/// text `NULL`, which is `null`; an empty field is the empty string. A
/// record whose field count differs from the header's, or broken quoting,
/// is 400 PGRST102. For `single` (PATCH), the first record as one object
/// (`{}` when there is none).
pub(crate) fn csv_to_json(body: &[u8], single: bool) -> Result<Vec<u8>, Error> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::new(Code::InvalidBody, "parse error: the CSV is not UTF-8"))?;
    let mut records = parse_csv(text)?.into_iter();
    let header = records.next().unwrap_or_default();
    let mut rows = Vec::new();
    for r in records {
        if r.len() != header.len() {
            return Err(Error::new(
                Code::InvalidBody,
                "All lines must have same number of fields",
            ));
        }
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(r)
            .map(|(k, v)| {
                let v = if v == "NULL" {
                    serde_json::Value::Null
                } else {
                    serde_json::Value::String(v)
                };
                (k.clone(), v)
            })
            .collect();
        rows.push(serde_json::Value::Object(obj));
    }
    let v = if single {
        rows.into_iter()
            .next()
            .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()))
    } else {
        serde_json::Value::Array(rows)
    };
    serde_json::to_vec(&v).map_err(|e| Error::Internal(e.to_string()))
}

/// The records of a CSV text (a final line break is optional; blank
/// trailing lines are ignored).
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, Error> {
    let bad = |m: &str| Error::new(Code::InvalidBody, format!("parse error: {m}"));
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    // Whether the current record has any content yet (a field or a comma).
    let mut started = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if field.is_empty() => {
                started = true;
                loop {
                    match chars.next() {
                        None => return Err(bad("unterminated quoted field")),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(ch) => field.push(ch),
                    }
                }
                match chars.peek() {
                    None | Some(',' | '\n' | '\r') => {}
                    Some(_) => return Err(bad("characters after a closing quote")),
                }
            }
            '"' => return Err(bad("a quote inside an unquoted field")),
            ',' => {
                started = true;
                record.push(std::mem::take(&mut field));
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                if started || !field.is_empty() {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                started = false;
            }
            ch => {
                started = true;
                field.push(ch);
            }
        }
    }
    if started || !field.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod csv_tests {
    use super::*;

    fn json(body: &str, single: bool) -> serde_json::Value {
        serde_json::from_slice(&csv_to_json(body.as_bytes(), single).expect(body)).expect(body)
    }

    #[test]
    fn csv_bodies_are_json_objects_of_strings() {
        assert_eq!(
            json(
                "id,name,note\r\n1,\"a, \"\"b\"\"\",NULL\n2,,\"NULL\"\n",
                false
            ),
            serde_json::json!([
                {"id": "1", "name": "a, \"b\"", "note": null},
                {"id": "2", "name": "", "note": null},
            ])
        );
        assert_eq!(json("id,name", false), serde_json::json!([]));
        assert_eq!(json("name\nx", true), serde_json::json!({"name": "x"}));
        assert_eq!(json("name\n", true), serde_json::json!({}));
        assert_eq!(
            json("a,b\n\"multi\nline\",2", false),
            serde_json::json!([{"a": "multi\nline", "b": "2"}])
        );
    }

    #[test]
    fn malformed_csv_is_pgrst102() {
        for body in ["a,b\n1", "a,b\n1,2,3", "a\n\"open", "a\nx\"y", "a\n\"x\"y"] {
            let e = csv_to_json(body.as_bytes(), false).expect_err(body);
            assert!(
                matches!(&e, Error::Api(a) if a.code == Code::InvalidBody),
                "{body}: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(q: &str) -> String {
        let uri: Uri = format!("/rest/v1/t{q}").parse().expect("uri");
        content_location("items", &uri)
    }

    #[test]
    fn content_location_is_the_canonical_query() {
        assert_eq!(location(""), "/items");
        assert_eq!(location("?"), "/items");
        // Sorted by name (PostgREST's spec: `/no_pk?b=eq.1&a=eq.1`).
        assert_eq!(location("?b=eq.1&a=eq.1"), "/items?a=eq.1&b=eq.1");
        // Repeated names once, values joined by `,`; a bare key gets `=`.
        assert_eq!(
            location("?id=gt.1&select=id,name&id=lt.5&d"),
            "/items?d=&id=gt.1,lt.5&select=id%2Cname"
        );
        // Decoded, then encoded again: `+` is a space, UTF-8 bytes, parentheses.
        assert_eq!(
            location("?name=eq.a+b&or=(id.eq.1,name.eq.%C3%A9)"),
            "/items?name=eq.a%20b&or=%28id.eq.1%2Cname.eq.%C3%A9%29"
        );
    }

    fn range(q: &str, put: bool) -> Result<(i64, Option<i64>), Option<Code>> {
        let q = query::parse(q, &|_| false).expect("query");
        write_range(&q, put).map_err(|e| e.code())
    }

    #[test]
    fn write_ranges_as_postgrest() {
        assert_eq!(range("id=eq.1", false), Ok((0, None)));
        assert_eq!(range("order=id&limit=2&offset=1", false), Ok((1, Some(2))));
        // An order anywhere satisfies the check (PostgREST's `qsOrder`).
        assert_eq!(range("limit=2", false), Err(Some(Code::LimitWithoutOrder)));
        assert_eq!(range("offset=0", false), Err(Some(Code::LimitWithoutOrder)));
        assert_eq!(
            range("c.limit=1", false),
            Err(Some(Code::LimitWithoutOrder))
        );
        assert_eq!(range("order=id&offset=0", false), Ok((0, None)));
        // A negative limit is the empty range's 416, before anything else.
        assert_eq!(
            range("limit=-1", false),
            Err(Some(Code::RangeNotSatisfiable))
        );
        assert_eq!(range("order=id&limit=0", false), Ok((0, Some(0))));
        // PUT: any top-level limit, or an offset other than 0.
        assert_eq!(range("id=eq.1", true), Ok((0, None)));
        assert_eq!(range("id=eq.1&offset=0", true), Ok((0, None)));
        assert_eq!(range("id=eq.1&limit=1", true), Err(Some(Code::PutLimit)));
        assert_eq!(range("id=eq.1&limit=0", true), Err(Some(Code::PutLimit)));
        assert_eq!(range("id=eq.1&offset=1", true), Err(Some(Code::PutLimit)));
        assert_eq!(range("id=eq.1&c.limit=1", true), Ok((0, None)));
    }
}
