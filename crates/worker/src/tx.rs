//! One request's transaction, run in its own task on the tenant's pool as
//! the request's role: `BEGIN [READ ONLY]`, `set_config`, the statement
//! (and the `EXPLAIN` of a planned count), `COMMIT` or `ROLLBACK`, pipelined;
//! retried once on a broken connection. What it returns is an [`Outcome`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};

use crate::conns::{Conn, DbError};
use crate::context::{Ctx, Settings};
use crate::error::{Code, Error};
use crate::sql::{self, Arg, Sql};
use crate::state::AppState;

/// What the statement returned.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) total: Option<i64>,
    pub(crate) page: i64,
    pub(crate) body: Bytes,
    /// Rows an upsert inserted (the statement's optional fourth column).
    pub(crate) inserted: Option<i64>,
    /// The planner's row estimate of the count (`count=planned|estimated`).
    pub(crate) planned: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `(total, page_total, body)` row.
    Rows,
    /// Rows affected only.
    Affected,
    /// An `EXPLAIN`'s rows, one line each (its body).
    Plan,
}

/// Runs `sql` in one transaction as the request's role; retried once on a
/// broken connection.
pub(crate) async fn execute(
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
pub(crate) struct Checks {
    /// Exactly one row (`Accept: application/vnd.pgrst.object+json`): PGRST116.
    pub(crate) single: bool,
    /// At most this many (`Prefer: handling=strict, max-affected=n`): PGRST124.
    pub(crate) max_affected: Option<i64>,
    /// At most this many (a limited PATCH or DELETE's `limit`): PGRST110.
    pub(crate) max_changes: Option<i64>,
    /// Exactly one (PUT: the body's key is the URL's): PGRST115.
    pub(crate) put: bool,
}

impl Checks {
    pub(crate) fn single(single: bool) -> Self {
        Checks {
            single,
            ..Checks::default()
        }
    }

    /// Anything to check before the transaction may commit.
    fn any(&self) -> bool {
        self.single || self.put || self.max_affected.is_some() || self.max_changes.is_some()
    }

    /// In PostgREST's order (`Query.hs`: `failNotSingular`,
    /// `failExceedsMaxAffectedPref`, `failsChangesOffLimits`, `failPut`).
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
        if let Some(n) = self.max_changes
            && o.page > n
        {
            return Err(Error::new(
                Code::ChangesOffLimits,
                "The maximum number of rows allowed to change was surpassed",
            )
            .details(format!(
                "Results contain {} rows changed but the maximum number allowed is {n}",
                o.page
            )));
        }
        if self.put && o.page != 1 {
            return Err(Error::put_matching_pk());
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
        Err(Error::Api(a)) if a.code == Code::ClientError => drop(lease),
        // Otherwise it is reused: every path below ends the transaction.
        _ => lease.release(),
    }
    result
}

/// What the data statement gave back.
enum Got {
    Row(tokio_postgres::Row),
    Affected(u64),
    Plan(Vec<tokio_postgres::Row>),
}

/// One request's transaction, pipelined: `BEGIN`, `set_config` and the
/// statement (prepared on this connection earlier) are sent together, and
/// for a read `COMMIT` too, so a read costs one round trip. A statement not
/// yet prepared on the connection is prepared first inside the transaction,
/// as the request's role (one more round trip, once). A write's `COMMIT`
/// goes with its statement too, unless something must be checked first (a
/// singular write's row count, `max-affected`, `tx=rollback`): then it goes
/// out only after the statement succeeded and passed. A write whose
/// connection broke is retried only when it cannot have been committed: the
/// connection was closed before anything was sent, or its `COMMIT` was held
/// back and `BEGIN` never answered. Otherwise the outcome is unknown and
/// reported so (503 `PGRST001`, never retried).
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
    // Closed already (the server ended the session while it was idle):
    // every message below fails without being sent.
    let closed_before = c.is_closed();
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
            Kind::Plan => c.query(&statement, &params).await.map(Got::Plan),
        }
    };
    // A read's COMMIT goes with it, and so does a write's that has nothing
    // to check first; the others' wait (see above).
    let pipelined_commit = job.read_only || !(job.rollback || job.checks.any());
    let commit_f = || async {
        if !pipelined_commit {
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
    // A write may have been committed when its connection broke after
    // BEGIN answered, or at any point once its COMMIT went out with it
    // (the server may have run all four before the answers were lost);
    // only a connection already closed before anything was sent is safe
    // to retry.
    let maybe_sent = !closed_before && (b.is_ok() || pipelined_commit);
    // The first failure is the cause; the ones after it follow from it.
    let got = b.and(s).and(z).and(r);
    let planned = match explained {
        None => Ok(None),
        Some(rows) => rows.map(|rows| plan_rows(&rows)),
    };
    let got = got.and_then(|g| planned.map(|p| (g, p)));
    let single = |o: Outcome| job.checks.check(o);
    if let Some(committed) = end {
        if !job.read_only
            && maybe_sent
            && (got.as_ref().err().is_some_and(crate::conns::broken)
                || committed.as_ref().err().is_some_and(crate::conns::broken))
        {
            return Err(commit_lost(job, committed.err().or(got.err())));
        }
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
        Err(e) => Err(commit_lost(job, Some(e))),
    }
}

/// The connection broke while a write's COMMIT was (or may have been) on
/// its way: the write may or may not be committed, so it is never retried.
fn commit_lost(job: &TxJob, e: Option<tokio_postgres::Error>) -> Error {
    job.span.in_scope(|| {
        tracing::warn!(error = ?e.as_ref().map(ToString::to_string), "COMMIT failed");
    });
    Error::new(
        Code::ClientError,
        "The connection was lost during COMMIT; the write may or may not have been applied.",
    )
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
        Got::Plan(rows) => {
            // Each row a line, each followed by a newline (as PostgREST).
            let mut body = Vec::new();
            for row in &rows {
                body.extend_from_slice(row.try_get::<_, Raw<'_>>(0)?.0);
                body.push(b'\n');
            }
            Outcome {
                total: None,
                page: i64::try_from(rows.len()).unwrap_or(i64::MAX),
                body: Bytes::from(body),
                inserted: None,
                planned: None,
            }
        }
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
