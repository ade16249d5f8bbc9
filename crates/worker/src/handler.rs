//! The `/rest/v1` handlers: tenant and JWT, content negotiation, planning,
//! one transaction per request, and the response built from what Postgres
//! returned (the JSON body is Postgres' text, sent as is).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use madbase_platform::jwt::{self, JwtError};
use madbase_platform::telemetry;
use madbase_platform::tenants::TenantInfo;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};

use crate::AppState;
use crate::conns::{Conn, DbError};
use crate::error::{Code, Error};
use crate::pool::TenantDb;
use crate::prefer::{Prefer, Reported, Resolution, Return};
use crate::query::{self, Query, SelectItem};
use crate::schema::{Function, Schema, Table};
use crate::sql::plan::{self, Planner, Shape, Source};
use crate::sql::{self, Arg, Sql};

const JSON: &str = "application/json; charset=utf-8";
const OBJECT: &str = "application/vnd.pgrst.object+json; charset=utf-8";

/// Who is asking, and the request facts Postgres sees.
struct Ctx {
    db: Arc<TenantDb>,
    schema: Arc<Schema>,
    settings: Arc<Settings>,
    db_schema: String,
    singular: bool,
    media: Media,
    prefer: Prefer,
}

impl Ctx {
    fn anon(&self) -> bool {
        self.settings.role == "anon"
    }
}

/// What the transaction sets with `set_config` before its statement, shared
/// with the transaction's task (and its retry) without copying.
#[derive(Debug)]
struct Settings {
    role: String,
    claims: Arc<jwt::VerifiedClaims>,
    method: String,
    path: String,
    headers: String,
    /// `Prefer: timezone=` (a zone Postgres knows), set for the transaction.
    timezone: Option<String>,
}

/// `request.headers`: a JSON object of the headers whose values are visible
/// ASCII, a repeated name's last value (a `HeaderMap` yields a name's values
/// one after another).
fn headers_json(headers: &HeaderMap) -> String {
    let mut out = String::with_capacity(64 * headers.len() + 2);
    out.push('{');
    let mut iter = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .peekable();
    let mut first = true;
    while let Some((name, value)) = iter.next() {
        if iter.peek().is_some_and(|(next, _)| *next == name) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, name);
        out.push(':');
        push_json_str(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string, copied as is when nothing in it needs
/// escaping.
fn push_json_str(out: &mut String, s: &str) {
    if telemetry::needs_json_escape(s) {
        // A string always serialises.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The response's media type, from `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Media {
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
    fn content_type(self) -> &'static str {
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

    fn singular(self) -> bool {
        matches!(self, Media::Object | Media::ObjectStripped)
    }
}

/// `Accept`: the first media type the data API produces (JSON arrays, one
/// object with `vnd.pgrst.object`, `nulls=stripped` variants, CSV); else 406.
fn media(headers: &HeaderMap) -> Result<Media, Error> {
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

/// The tenant named by `X-Madbase-Tenant` and the verified claims.
async fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<TenantInfo>, Arc<jwt::VerifiedClaims>), Error> {
    let Some(id) = header(headers, "x-madbase-tenant").map(str::trim) else {
        return Err(Error::new(
            Code::TenantRequired,
            "the X-Madbase-Tenant header is missing",
        )
        .hint("Send requests through the proxy, or set X-Madbase-Tenant."));
    };
    let valid_id = (3..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    tracing::Span::current().record("tenant", id);
    let not_found = || Error::new(Code::TenantNotFound, format!("no tenant {id:?}"));
    if !valid_id {
        return Err(not_found());
    }
    let tenant = lookup(st, id).await?.ok_or_else(not_found)?;
    let token = header(headers, "authorization")
        .and_then(jwt::bearer)
        .or_else(|| header(headers, "apikey").map(str::trim))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Ok((tenant, st.anon_claims.clone()));
    };
    match st.verified.verify(&tenant.jwt_secret, id, token) {
        Ok(claims) => Ok((tenant, claims)),
        Err(JwtError::BadSignature) => {
            // The keys may have been rotated: look again once.
            st.tenants.invalidate(id);
            let fresh = lookup(st, id).await?.ok_or_else(not_found)?;
            let claims = st
                .verified
                .verify(&fresh.jwt_secret, id, token)
                .map_err(|e| Error::new(Code::Jwt, jwt_message(&e)))?;
            Ok((fresh, claims))
        }
        Err(e) => Err(Error::new(Code::Jwt, jwt_message(&e))),
    }
}

/// The tenant through the platform's cached client.
async fn lookup(st: &AppState, id: &str) -> Result<Option<Arc<TenantInfo>>, Error> {
    st.tenants.get(id).await.map_err(|e| {
        tracing::warn!(error = %e, "tenant lookup failed");
        Error::new(Code::ControlUnavailable, "the control plane is unreachable")
    })
}

fn jwt_message(e: &JwtError) -> String {
    match e {
        JwtError::Expired => "JWT expired".to_owned(),
        JwtError::BadSignature => "JWSError JWSInvalidSignature".to_owned(),
        other => format!("JWT invalid: {other}"),
    }
}

async fn context(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Ctx, Error> {
    let (tenant, claims) = authenticate(st, headers).await?;
    let role = claims
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("anon")
        .to_owned();
    let profile_header = if matches!(*method, Method::GET | Method::HEAD) {
        "accept-profile"
    } else {
        "content-profile"
    };
    let db_schema = match header(headers, profile_header) {
        None => st.schemas[0].clone(),
        Some(p) if st.schemas.iter().any(|s| s == p.trim()) => p.trim().to_owned(),
        Some(_) => {
            return Err(Error::new(
                Code::SchemaNotExposed,
                format!(
                    "The schema must be one of the following: {}",
                    st.schemas.join(", ")
                ),
            ));
        }
    };
    let media = media(headers)?;
    let singular = media.singular();
    let mut prefer = Prefer::from_headers(headers);
    let db = st.pools.get(&tenant);
    let schema = load_schema(st, &db, role == "anon").await?;
    if prefer.timezone.is_some() {
        prefer.resolve_timezone(|tz| schema.timezones.contains(tz));
    }
    Ok(Ctx {
        db,
        schema,
        settings: Arc::new(Settings {
            role,
            claims,
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            headers: headers_json(headers),
            timezone: prefer.timezone.clone(),
        }),
        db_schema,
        singular,
        media,
        prefer,
    })
}

/// What the statement returned.
#[derive(Debug)]
struct Outcome {
    total: Option<i64>,
    page: i64,
    body: Bytes,
    /// Rows an upsert inserted (the statement's optional fourth column).
    inserted: Option<i64>,
    /// The planner's row estimate of the count (`count=planned|estimated`).
    planned: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `(total, page_total, body)` row.
    Rows,
    /// Rows affected only.
    Affected,
}

/// Runs `sql` in one transaction as the request's role; retried once on a
/// broken connection.
async fn execute(
    st: &AppState,
    ctx: &Ctx,
    sql: Sql,
    explain: Option<Sql>,
    read_only: bool,
    kind: Kind,
    checks: Checks,
) -> Result<Outcome, Error> {
    let start = Instant::now();
    // The transaction runs in its own task: a client that goes away cannot
    // cancel it half-way and leave a connection mid-transaction. The task is
    // not instrumented with the request span (that would enter and leave
    // the span on each of its many polls); its few log lines enter it.
    let job = Arc::new(TxJob {
        span: tracing::Span::current(),
        conns: ctx.db.conns.clone(),
        anon: ctx.anon(),
        settings: ctx.settings.clone(),
        timeout: st.statement_timeout_ms.clone(),
        sql,
        explain,
        read_only,
        kind,
        checks,
        // A read-only transaction changes nothing: its COMMIT stays pipelined.
        rollback: ctx.prefer.rollback() && !read_only,
    });
    let mut attempt = 0;
    let result = loop {
        let j = job.clone();
        // Boxed: the transaction's future is large, and spawning moves a
        // future several times on its way into the task.
        let r = tokio::spawn(Box::pin(async move { run_tx(&j).await }))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("transaction task failed: {e}"))));
        match r {
            Err(e) if attempt == 0 && e.is_broken_connection() => {
                tracing::info!(error = %e, "broken database connection; retrying once");
                attempt += 1;
            }
            other => break other,
        }
    };
    st.pools
        .query_duration
        .observe(start.elapsed().as_secs_f64());
    if let Err(e) = &result
        && matches!(e.sqlstate(), Some("42P01" | "42703" | "42883"))
    {
        ctx.db.stale_after_miss();
    }
    result
}

/// Everything one transaction needs, owned by its task.
struct TxJob {
    /// The request span, for the task's log lines.
    span: tracing::Span,
    conns: Arc<crate::conns::Conns>,
    anon: bool,
    settings: Arc<Settings>,
    timeout: Arc<str>,
    sql: Sql,
    /// `EXPLAIN` of the count (`count=planned|estimated`), run after `sql`.
    explain: Option<Sql>,
    read_only: bool,
    kind: Kind,
    checks: Checks,
    /// `Prefer: tx=rollback`: end with ROLLBACK instead of COMMIT.
    rollback: bool,
}

/// What the statement's row count must satisfy before the transaction
/// commits (else it is rolled back and the request fails).
#[derive(Debug, Clone, Copy, Default)]
struct Checks {
    /// Exactly one row (`Accept: application/vnd.pgrst.object+json`): PGRST116.
    single: bool,
    /// At most this many (`Prefer: handling=strict, max-affected=n`): PGRST124.
    max_affected: Option<i64>,
}

impl Checks {
    fn single(single: bool) -> Self {
        Checks {
            single,
            max_affected: None,
        }
    }

    fn check(&self, o: Outcome) -> Result<Outcome, Error> {
        if self.single && o.page != 1 {
            return Err(not_single(o.page));
        }
        if let Some(n) = self.max_affected
            && o.page > n
        {
            return Err(Error::new(
                Code::MaxAffected,
                "Query result exceeds max-affected preference constraint",
            )
            .details(format!("The query affects {} rows", o.page)));
        }
        Ok(o)
    }
}

async fn run_tx(job: &TxJob) -> Result<Outcome, Error> {
    let anon = job.anon;
    let db = |source: DbError| Error::Db { source, anon };
    let mut lease = job.conns.acquire().await.map_err(db)?;
    let result = run_on(job, lease.conn().map_err(db)?).await;
    match &result {
        // A broken connection, or one whose COMMIT outcome is unknown, is closed.
        Err(e) if e.is_broken_connection() => drop(lease),
        Err(Error::Api(a)) if a.code == Code::Connection => drop(lease),
        // Otherwise it is reused: every path below ends the transaction.
        _ => lease.release(),
    }
    result
}

/// What the data statement gave back.
enum Got {
    Row(tokio_postgres::Row),
    Affected(u64),
}

/// One request's transaction, pipelined: `BEGIN`, `set_config` and the
/// statement (prepared on this connection earlier) are sent together, and
/// for a read `COMMIT` too, so a read costs one round trip. A statement not
/// yet prepared on the connection is prepared first inside the transaction,
/// as the request's role (one more round trip, once). A write's `COMMIT` goes
/// out only after its statement succeeded (and, for a singular write, after
/// its row count was checked): if the connection breaks before that, nothing
/// was committed and the request may be retried; if it breaks during
/// `COMMIT`, the outcome is unknown and reported so.
///
/// A failed message aborts the transaction, so the messages after it fail
/// too and the pipelined `COMMIT` ends it as a rollback. `BEGIN` on a pooled
/// connection (always outside a transaction) fails only when the connection
/// does, and then every message fails with it.
async fn run_on(job: &TxJob, conn: &mut Conn) -> Result<Outcome, Error> {
    let anon = job.anon;
    let pg = |e: tokio_postgres::Error| Error::Db {
        source: DbError::Postgres(e),
        anon,
    };
    let sql = &job.sql;
    job.span
        .in_scope(|| tracing::debug!(sql = %sql.text(), "query"));
    let params: Vec<&(dyn ToSql + Sync)> = sql.args().iter().map(Arg::as_sql).collect();
    let set = &*job.settings;
    let timeout: &str = &job.timeout;
    let settings: [&(dyn ToSql + Sync); 6] = [
        &set.role,
        &set.claims.json,
        &set.method,
        &set.path,
        &set.headers,
        &timeout,
    ];
    let begin = if job.read_only {
        conn.begin_read_only.clone()
    } else {
        conn.begin.clone()
    };
    let types: Vec<Type> = sql.args().iter().map(Arg::pg_type).collect();
    let cached = conn.cached(sql.text(), &types);
    // A statement new to this connection is prepared inside the transaction,
    // so BEGIN and set_config have gone out already.
    let in_transaction = cached.is_none();
    let statement = match cached {
        Some(s) => s,
        None => {
            let c = &conn.client;
            let (b, s, z, p) = tokio::join!(
                c.execute(&begin, &[]),
                c.execute(&conn.set_config, &settings),
                Box::pin(set_timezone(c, set)),
                c.prepare_typed(sql.text(), &types),
            );
            match b.and(s).and(z).and(p) {
                Ok(p) => {
                    conn.keep(sql.text(), p.clone());
                    p
                }
                Err(e) => return Err(rollback(job, conn, pg(e)).await),
            }
        }
    };
    let c = &conn.client;
    let begin_f = || async {
        if in_transaction {
            return Ok(0);
        }
        c.execute(&begin, &[]).await
    };
    let set_f = || async {
        if in_transaction {
            return Ok(0);
        }
        c.execute(&conn.set_config, &settings).await
    };
    let statement_f = || async {
        match job.kind {
            Kind::Rows => c.query_one(&statement, &params).await.map(Got::Row),
            Kind::Affected => c.execute(&statement, &params).await.map(Got::Affected),
        }
    };
    // A read's COMMIT goes with it; a write's waits (see above).
    let commit_f = || async {
        if !job.read_only {
            return None;
        }
        Some(c.execute(&conn.commit, &[]).await)
    };
    let (b, s, z, r, explained, end) = if job.explain.is_none() && set.timezone.is_none() {
        // The common case: four messages, nothing else to poll.
        let (b, s, r, end) = tokio::join!(begin_f(), set_f(), statement_f(), commit_f());
        (b, s, Ok(0), r, None, end)
    } else {
        // The rare arms are boxed so that they do not enlarge every
        // transaction's future.
        tokio::join!(
            begin_f(),
            set_f(),
            Box::pin(async {
                if in_transaction {
                    return Ok(0);
                }
                set_timezone(c, set).await
            }),
            statement_f(),
            Box::pin(async {
                let e = job.explain.as_ref()?;
                let params: Vec<(&(dyn ToSql + Sync), Type)> =
                    e.args().iter().map(|a| (a.as_sql(), a.pg_type())).collect();
                Some(c.query_typed(e.text(), &params).await)
            }),
            commit_f(),
        )
    };
    // The first failure is the cause; the ones after it follow from it.
    let got = b.and(s).and(z).and(r);
    let planned = match explained {
        None => Ok(None),
        Some(rows) => rows.map(|rows| plan_rows(&rows)),
    };
    let got = got.and_then(|g| planned.map(|p| (g, p)));
    let single = |o: Outcome| job.checks.check(o);
    if let Some(committed) = end {
        let got = got.map_err(pg)?;
        committed.map_err(pg)?;
        return outcome(got).map_err(pg).and_then(single);
    }
    let checked = got.and_then(outcome).map_err(pg).and_then(single);
    let out = match checked {
        Ok(o) => o,
        Err(e) if e.is_broken_connection() => return Err(e),
        Err(e) => return Err(rollback(job, conn, e).await),
    };
    if job.rollback {
        // `Prefer: tx=rollback`: deferred constraints are checked first (a
        // violation fails the request as it would have on COMMIT), then
        // everything is undone.
        return match c.batch_execute(sql::SET_CONSTRAINTS_IMMEDIATE).await {
            Ok(()) => match c.execute(&conn.rollback, &[]).await {
                Ok(_) => Ok(out),
                Err(e) => Err(pg(e)),
            },
            Err(e) if e.as_db_error().is_some() => Err(rollback(job, conn, pg(e)).await),
            Err(e) => Err(pg(e)),
        };
    }
    match c.execute(&conn.commit, &[]).await {
        Ok(_) => Ok(out),
        // The server refused the commit (e.g. a deferred constraint): rolled back.
        Err(e) if e.as_db_error().is_some() => Err(pg(e)),
        Err(e) => {
            // The write may or may not be committed: never retried.
            job.span
                .in_scope(|| tracing::warn!(error = %e, "COMMIT failed"));
            Err(Error::new(
                Code::Connection,
                "The connection was lost during COMMIT; the write may or may not have been applied.",
            ))
        }
    }
}

/// `Prefer: timezone=`: the zone for this transaction (sent after the other
/// settings, before the statement; nothing when there is none).
async fn set_timezone(
    c: &tokio_postgres::Client,
    set: &Settings,
) -> Result<u64, tokio_postgres::Error> {
    match &set.timezone {
        None => Ok(0),
        // Unprepared, in one message batch, so it stays in pipeline order.
        Some(tz) => c
            .query_typed(sql::SET_TIMEZONE, &[(tz, Type::TEXT)])
            .await
            .map(|_| 1),
    }
}

/// Ends a failed transaction and returns its error; if the ROLLBACK itself
/// fails, that error is returned instead (it is a broken connection, which
/// the caller then closes) and the first one is logged.
async fn rollback(job: &TxJob, conn: &Conn, cause: Error) -> Error {
    match conn.client.execute(&conn.rollback, &[]).await {
        Ok(_) => cause,
        Err(e) => {
            job.span.in_scope(|| {
                tracing::warn!(error = %cause, "ROLLBACK failed after an error");
            });
            Error::Db {
                source: DbError::Postgres(e),
                anon: job.anon,
            }
        }
    }
}

/// The estimated rows of the top plan node of `EXPLAIN (FORMAT JSON)`.
fn plan_rows(rows: &[tokio_postgres::Row]) -> Option<i64> {
    let raw = rows.first()?.try_get::<_, Raw<'_>>(0).ok()?;
    let v: Value = serde_json::from_slice(raw.0).ok()?;
    let n = &v[0]["Plan"]["Plan Rows"];
    #[allow(clippy::cast_possible_truncation)]
    n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))
}

/// Any column's bytes as sent (EXPLAIN's `json`: its text).
struct Raw<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// The statement's result as an [`Outcome`]: `(total, page_total, body)` for
/// rows, the row count for the rest; with the planned count when there is one.
fn outcome((got, planned): (Got, Option<i64>)) -> Result<Outcome, tokio_postgres::Error> {
    let mut o = outcome_of(got)?;
    o.planned = planned;
    Ok(o)
}

fn outcome_of(got: Got) -> Result<Outcome, tokio_postgres::Error> {
    Ok(match got {
        Got::Row(row) => Outcome {
            total: row.try_get::<_, Option<i64>>(0)?,
            page: row.try_get::<_, i64>(1)?,
            body: Bytes::copy_from_slice(row.try_get::<_, Text<'_>>(2)?.0),
            inserted: if row.len() > 3 {
                row.try_get::<_, Option<i64>>(3)?
            } else {
                None
            },
            planned: None,
        },
        Got::Affected(n) => Outcome {
            total: None,
            page: i64::try_from(n).unwrap_or(i64::MAX),
            body: Bytes::new(),
            inserted: None,
            planned: None,
        },
    })
}

/// A `text` column's bytes as Postgres sent them, borrowed from the row:
/// the response body is copied once, and not checked for UTF-8 again
/// (the connection's client encoding is UTF-8, so Postgres has converted
/// and validated it).
struct Text<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for Text<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Text(raw))
    }

    /// The types `String` reads (text and its kin, sent as UTF-8 text).
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <String as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

fn not_single(n: i64) -> Error {
    Error::new(
        Code::NotSingular,
        "JSON object requested, multiple (or no) rows returned",
    )
    .details(format!("The result contains {n} rows"))
}

fn parse_query(uri: &Uri, is_arg: &dyn Fn(&str) -> bool) -> Result<Query, Error> {
    query::parse(uri.query().unwrap_or(""), is_arg).map_err(Error::query)
}

/// The top-level rows asked for, as (offset, limit): the `Range` header
/// (GET only, `first-last` or `first-`; anything else is ignored, as
/// PostgREST does) intersected with `limit`/`offset`. An empty result other
/// than `limit=0` is PostgREST's 416 PGRST103.
fn top_range(
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

fn content_range(offset: i64, page: i64, total: Option<i64>) -> String {
    let total = total.map_or_else(|| "*".to_owned(), |t| t.to_string());
    if page > 0 {
        format!("{}-{}/{total}", offset, offset.saturating_add(page - 1))
    } else {
        format!("*/{total}")
    }
}

fn respond(
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

/// The tenant's schema cache ((re)loaded when missing or stale).
async fn load_schema(st: &AppState, db: &TenantDb, anon: bool) -> Result<Arc<Schema>, Error> {
    db.schema(&st.pools)
        .await
        .map_err(|source| Error::Db { source, anon })
}

impl Ctx {
    /// Reloads the schema cache (after a miss).
    async fn reload_schema(&mut self, st: &AppState) -> Result<(), Error> {
        self.schema = load_schema(st, &self.db, self.anon()).await?;
        Ok(())
    }
}

async fn lookup_table(st: &AppState, ctx: &mut Ctx, name: &str) -> Result<Arc<Table>, Error> {
    if let Some(t) = ctx.schema.table(&ctx.db_schema, name) {
        return Ok(t.clone());
    }
    // Perhaps created since the cache was loaded.
    if ctx.db.stale_after_miss() {
        ctx.reload_schema(st).await?;
    }
    Planner::new(&ctx.schema, &ctx.db_schema).table(name)
}

async fn table_inner(
    st: &AppState,
    name: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Error> {
    if !matches!(
        *method,
        Method::GET | Method::HEAD | Method::POST | Method::PATCH | Method::DELETE
    ) {
        return Err(Error::new(
            Code::UnsupportedMethod,
            format!("Unsupported HTTP method: {method}"),
        ));
    }
    let q = parse_query(uri, &|_| false)?;
    let mut ctx = context(st, method, uri, headers).await?;
    let table = lookup_table(st, &mut ctx, name).await?;
    // After the resource is known (PostgREST plans it first).
    ctx.prefer.check()?;
    match *method {
        Method::GET | Method::HEAD => {
            read(st, &ctx, &table, &q, headers, *method == Method::HEAD).await
        }
        Method::POST => insert(st, &ctx, &table, &q, body).await,
        _ => update_or_delete(st, &ctx, &table, &q, body, *method == Method::PATCH).await,
    }
}

async fn read(
    st: &AppState,
    ctx: &Ctx,
    table: &Arc<Table>,
    q: &Query,
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
    let resp = read_response(ctx, rng.0, out, head);
    Ok(with_applied(resp, &ctx.prefer, Reported::default()))
}

/// The response of a read: 200, or with a count 206 when the page is not
/// everything and 416 when the offset is beyond the end (PostgREST's rules).
fn read_response(ctx: &Ctx, offset: i64, out: Outcome, head: bool) -> Response {
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

/// Parses a write body: the objects' keys (checked) and the JSON text.
fn body_columns(
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
    let applied = ctx.prefer.applied(w.reported);
    let finish = |mut resp: Response| {
        if let Some(v) = applied {
            resp.headers_mut()
                .insert(HeaderName::from_static("preference-applied"), v);
        }
        Ok(resp)
    };
    if !representation && !location {
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

/// `Location: /table?pk=eq.value` of a single inserted row (`return=headers-only`).
fn location_of(table: &Table, body: &[u8]) -> Option<String> {
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

async fn insert(
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

async fn update_or_delete(
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
            let mut resp = respond(status, JSON, Some("*/*".to_owned()), body);
            if let Some(v) = ctx.prefer.applied(reported) {
                resp.headers_mut()
                    .insert(HeaderName::from_static("preference-applied"), v);
            }
            return Ok(resp);
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

/// The media type of an rpc body (`Content-Type`): JSON arguments unless
/// it is a form, `text/plain`, `text/xml` or `application/octet-stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMedia {
    Json,
    /// `application/x-www-form-urlencoded` arguments.
    Form,
    Text,
    Xml,
    Bytes,
}

fn body_media(headers: &HeaderMap) -> BodyMedia {
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

/// `/rest/v1/rpc/{function}`
pub async fn rpc(
    State(st): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match rpc_inner(&st, &name, &method, &uri, &headers, &body).await {
        Ok(r) if headers.contains_key("prefer") => {
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

/// Adds `Preference-Applied` (when anything is to be reported).
fn with_applied(mut resp: Response, prefer: &Prefer, r: Reported) -> Response {
    if let Some(v) = prefer.applied(r) {
        resp.headers_mut()
            .insert(HeaderName::from_static("preference-applied"), v);
    }
    resp
}

async fn rpc_inner(
    st: &AppState,
    name: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Error> {
    let post = match *method {
        Method::POST => true,
        Method::GET | Method::HEAD => false,
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
    let out = execute(st, &ctx, sql, None, read_only, Kind::Rows, checks).await?;
    Ok(respond(
        StatusCode::OK,
        JSON,
        Some(content_range(0, out.page, None)),
        (!head).then_some(out.body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_json_keeps_the_last_value_and_escapes() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.test"));
        h.append("x-many", HeaderValue::from_static("first"));
        h.append("x-many", HeaderValue::from_static("last"));
        h.insert("x-quote", HeaderValue::from_static(r#"a "b" \c"#));
        h.insert("x-tab", HeaderValue::from_static("a\tb"));
        h.insert(
            "x-binary",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque bytes are a header value"),
        );
        let json = headers_json(&h);
        let v: Value = serde_json::from_str(&json).expect(&json);
        assert_eq!(
            v,
            serde_json::json!({
                "host": "example.test",
                "x-many": "last",
                "x-quote": r#"a "b" \c"#,
                "x-tab": "a\tb",
            })
        );
        assert_eq!(headers_json(&HeaderMap::new()), "{}");
    }
}
