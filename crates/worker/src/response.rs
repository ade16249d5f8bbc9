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

/// `Accept: application/vnd.pgrst.plan[+json|+text]`: the `EXPLAIN` of the
/// request's statement instead of its result (when `MADBASE_DB_PLAN_ENABLED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `+json` (`FORMAT JSON`), else `FORMAT TEXT`.
    pub(crate) json: bool,
    /// The media type the explained statement produces (`for=`, default JSON).
    pub(crate) media: Media,
    /// `options=` (`|`-separated), in PostgREST's order.
    pub(crate) options: PlanOptions,
}

/// `options=analyze|verbose|settings|buffers|wal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PlanOptions {
    pub(crate) analyze: bool,
    pub(crate) verbose: bool,
    pub(crate) settings: bool,
    pub(crate) buffers: bool,
    pub(crate) wal: bool,
}

impl PlanOptions {
    /// The options set, as PostgREST names them, in its order.
    pub(crate) fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (self.analyze, "analyze"),
            (self.verbose, "verbose"),
            (self.settings, "settings"),
            (self.buffers, "buffers"),
            (self.wal, "wal"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }
}

impl Media {
    /// The media type's name, as PostgREST writes it in a plan's `for=`.
    fn mime(self) -> &'static str {
        match self {
            Media::Array => "application/json",
            Media::ArrayStripped => "application/vnd.pgrst.array+json;nulls=stripped",
            Media::Object => "application/vnd.pgrst.object+json",
            Media::ObjectStripped => "application/vnd.pgrst.object+json;nulls=stripped",
            Media::Csv => "text/csv",
        }
    }
}

impl Plan {
    /// `application/vnd.pgrst.plan+json; for="application/json"; options=analyze; charset=utf-8`,
    /// as PostgREST answers.
    pub(crate) fn content_type(&self) -> String {
        let mut s = format!(
            "application/vnd.pgrst.plan+{}; for=\"{}\"",
            if self.json { "json" } else { "text" },
            self.media.mime()
        );
        let mut options = self.options.names().peekable();
        if options.peek().is_some() {
            s.push_str("; options=");
            s.push_str(&options.collect::<Vec<_>>().join("|"));
        }
        s.push_str("; charset=utf-8");
        s
    }
}

/// One media range of `Accept`, as a [`Media`] the data API produces.
fn media_of(m: &str, params: &[&str]) -> Option<Media> {
    let is = |s: &str| m.eq_ignore_ascii_case(s);
    let stripped = params
        .iter()
        .any(|p| p.trim().eq_ignore_ascii_case("nulls=stripped"));
    if is("application/vnd.pgrst.object+json") || is("application/vnd.pgrst.object") {
        return Some(if stripped {
            Media::ObjectStripped
        } else {
            Media::Object
        });
    }
    if is("application/vnd.pgrst.array+json") || is("application/vnd.pgrst.array") {
        return Some(if stripped {
            Media::ArrayStripped
        } else {
            Media::Array
        });
    }
    if is("text/csv") {
        return Some(Media::Csv);
    }
    if m.is_empty() || is("*/*") || is("application/*") || is("application/json") {
        return Some(Media::Array);
    }
    None
}

/// The parameters of a media range (`;`-separated; a quoted value may hold
/// `;`), names lowercased, quotes removed.
fn media_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(';') {
        rest = &rest[i + 1..];
        let (name, after) = match rest.find('=') {
            Some(eq) => (&rest[..eq], &rest[eq + 1..]),
            None => break,
        };
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        out.push((name.trim().to_ascii_lowercase(), value.to_owned()));
        rest = next;
    }
    out
}

/// A plan media type (`application/vnd.pgrst.plan`, `+text`, `+json`) with
/// its `for=` and `options=`; `None` for any other media type, and for a
/// plan `for` a media type the data API does not produce.
fn plan_of(item: &str) -> Option<Result<Plan, ()>> {
    let m = item.split(';').next().unwrap_or("").trim();
    let json = if m.eq_ignore_ascii_case("application/vnd.pgrst.plan+json") {
        true
    } else if m.eq_ignore_ascii_case("application/vnd.pgrst.plan")
        || m.eq_ignore_ascii_case("application/vnd.pgrst.plan+text")
    {
        false
    } else {
        return None;
    };
    let params = media_params(item);
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let media = match get("for") {
        None => Media::Array,
        Some(f) => {
            let mut parts = f.split(';');
            let fm = parts.next().unwrap_or("").trim();
            let rest: Vec<&str> = parts.collect();
            match media_of(fm, &rest) {
                Some(m) if !fm.is_empty() => m,
                _ => return Some(Err(())),
            }
        }
    };
    let mut options = PlanOptions::default();
    for o in get("options").unwrap_or("").split('|') {
        match o.trim() {
            "analyze" => options.analyze = true,
            "verbose" => options.verbose = true,
            "settings" => options.settings = true,
            "buffers" => options.buffers = true,
            "wal" => options.wal = true,
            _ => {}
        }
    }
    Some(Ok(Plan {
        json,
        media,
        options,
    }))
}

/// `Accept`: of its media ranges in PostgREST's order (see
/// [`accept_order`]), the first the data API produces (JSON arrays, one
/// object with `vnd.pgrst.object`, `nulls=stripped` variants, CSV, and with
/// `plans` the `vnd.pgrst.plan` types); else 406.
pub(crate) fn media(headers: &HeaderMap, plans: bool) -> Result<(Media, Option<Plan>), Error> {
    let Some(accept) = header(headers, "accept") else {
        return Ok((Media::Array, None));
    };
    for item in accept_order(accept) {
        let item = item.as_str();
        if let Some(plan) = plan_of(item) {
            match plan {
                Ok(p) if plans => return Ok((p.media, Some(p))),
                _ => continue,
            }
        }
        let mut parts = item.split(';');
        let m = parts.next().unwrap_or("").trim();
        let params: Vec<&str> = parts.collect();
        if let Some(media) = media_of(m, &params) {
            return Ok((media, None));
        }
    }
    Err(Error::new(
        Code::NotAcceptable,
        format!("None of these media types are available: {accept}"),
    ))
}

/// The media ranges of `Accept` as PostgREST 12 weighs them (wai-extra's
/// `parseHttpAccept`): spaces removed, each range cut at `;q=` (its
/// parameters after `q` dropped with it), then sorted by quality, highest
/// first (no `q`, or one that is not a number: 1), then by specificity (its
/// `;`s minus its `*`s), ties in the header's order. `q=0` does not
/// exclude a type: it comes last.
fn accept_order(accept: &str) -> Vec<String> {
    // One range without parameters or spaces (`*/*`, `application/json`):
    // nothing to weigh.
    if !accept.bytes().any(|b| matches!(b, b',' | b';' | b' ')) {
        return vec![accept.to_owned()];
    }
    let mut items: Vec<(String, f64, i64)> = split_accept(accept)
        .map(|item| {
            let mut m: String = item.chars().filter(|c| *c != ' ').collect();
            let q = match m.find(";q=") {
                Some(at) => {
                    let q = quality(&m[at + 3..]);
                    m.truncate(at);
                    q
                }
                None => 1.0,
            };
            let count = |c: char| i64::try_from(m.matches(c).count()).unwrap_or(i64::MAX);
            let specificity = count(';') - count('*');
            (m, q, specificity)
        })
        .collect();
    // Stable: equal weights keep the header's order.
    items.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.2.cmp(&a.2))
    });
    items.into_iter().map(|(m, _, _)| m).collect()
}

/// A `q` value: the number it starts with (Haskell's `reads` of a
/// `Double`), else 1.
fn quality(s: &str) -> f64 {
    let s = s.split(';').next().unwrap_or("");
    let b = s.as_bytes();
    let digits = |from: usize| {
        b.get(from..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut end = usize::from(b.first() == Some(&b'-'));
    let int = digits(end);
    if int == 0 {
        return 1.0;
    }
    end += int;
    if b.get(end) == Some(&b'.') && digits(end + 1) > 0 {
        end += 1 + digits(end + 1);
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(end + 1), Some(b'-' | b'+')));
        let exp = digits(end + 1 + sign);
        if exp > 0 {
            end += 1 + sign + exp;
        }
    }
    s[..end].parse().unwrap_or(1.0)
}

/// The media ranges of `Accept` (split at commas outside quotes: a plan's
/// `for="…"` is quoted).
fn split_accept(accept: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in accept.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&accept[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&accept[start..]);
    items.into_iter()
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

/// OPTIONS: 200, `Allow: <methods>`, no body (PostgREST's `respondInfo`;
/// its `Access-Control-Allow-Origin: *` is left to the proxy, which answers
/// CORS for the data API).
pub(crate) fn allow(methods: &'static str) -> Response {
    let mut resp = Response::new(Body::empty());
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(methods));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Result<(Media, Option<Plan>), Error> {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_str(v).expect("ascii"));
        media(&h, true)
    }

    #[test]
    fn accept_is_sorted_by_quality_then_specificity() {
        assert_eq!(
            accept_order("text/csv;q=0.5, application/json"),
            ["application/json", "text/csv"]
        );
        // Equal weights keep their order; a missing q is 1.
        assert_eq!(
            accept_order("text/csv, application/json"),
            ["text/csv", "application/json"]
        );
        // More specific first at equal q: parameters count up, stars down.
        assert_eq!(
            accept_order(
                "*/*, application/*, text/csv, application/vnd.pgrst.object+json;nulls=stripped"
            ),
            [
                "application/vnd.pgrst.object+json;nulls=stripped",
                "text/csv",
                "application/*",
                "*/*"
            ]
        );
        // Spaces go; `;q=` and what follows it are cut.
        assert_eq!(
            accept_order(
                "application/vnd.pgrst.object+json ; q=0.2; nulls=stripped, text/csv; q=0.3"
            ),
            ["text/csv", "application/vnd.pgrst.object+json"]
        );
        // q=0 comes last but stays (wai-extra does not drop it).
        assert_eq!(
            accept_order("text/csv;q=0, application/json;q=0.001"),
            ["application/json", "text/csv"]
        );
    }

    #[test]
    fn quality_reads_the_leading_number() {
        assert_eq!(quality("0.5"), 0.5);
        assert_eq!(quality("1"), 1.0);
        assert_eq!(quality("0"), 0.0);
        assert_eq!(quality("0.25;x=y"), 0.25);
        assert_eq!(quality("0.7abc"), 0.7);
        assert_eq!(quality("1."), 1.0);
        assert_eq!(quality("5e-1"), 0.5);
        assert_eq!(quality("-1"), -1.0);
        assert_eq!(quality(".5"), 1.0);
        assert_eq!(quality("x"), 1.0);
        assert_eq!(quality(""), 1.0);
    }

    #[test]
    fn negotiation_weighs_q_values() {
        let got = |v: &str| accept(v).map(|(m, p)| (m, p.is_some())).ok();
        assert_eq!(
            got("text/csv;q=0.5, application/json"),
            Some((Media::Array, false))
        );
        assert_eq!(
            got("application/json;q=0.1, text/csv"),
            Some((Media::Csv, false))
        );
        // The best type the API does not produce is skipped.
        assert_eq!(
            got("text/xml, application/vnd.pgrst.object+json;q=0.9, text/csv;q=0.8"),
            Some((Media::Object, false))
        );
        // Only q=0 types: still served.
        assert_eq!(got("text/csv;q=0"), Some((Media::Csv, false)));
        assert_eq!(
            got("application/vnd.pgrst.plan+json;q=0.9, text/csv;q=0.1"),
            Some((Media::Array, true))
        );
        let e = accept("text/xml;q=1, image/png;q=0.5").expect_err("406");
        assert_eq!(e.code(), Some(Code::NotAcceptable));
    }
}
