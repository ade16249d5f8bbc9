//! The connections of one tenant (tokio-postgres clients): a semaphore bounds
//! them, idle ones are reused as they are (no ping when taken or given
//! back), a connection that failed is dropped, idle ones expire.
//!
//! Each connection keeps its prepared statements: the fixed transaction
//! statements (`BEGIN`, the `set_config` call, `COMMIT`, `ROLLBACK`) made
//! when it opens, and a bounded cache of the data statements, so that a
//! request's whole transaction goes out as one pipelined batch (see
//! `tx::run_on`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

use madbase_platform::secrets::{ExposeSecret as _, SecretString};

use crate::sql;

/// Data statements kept prepared per connection.
const STATEMENT_CACHE: usize = 256;

/// Why no connection (or no result) could be had.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be opened (server down, restarting, refusing
    /// connections to the database): 503 PGRST000, not the SQLSTATE's
    /// status (`55000`, `57P03` would read as a client error).
    #[error("connecting: {}", pg_message(.0))]
    Connect(tokio_postgres::Error),
    #[error("timed out acquiring a connection")]
    PoolTimedOut,
    #[error("the pool is closed")]
    PoolClosed,
    #[error("unexpected result: {0}")]
    Decode(String),
}

/// tokio-postgres prints "db error: ERROR: …"; keep the server's message.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl DbError {
    /// The server's error, when it sent one.
    pub fn db(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            DbError::Postgres(e) => e.as_db_error(),
            _ => None,
        }
    }

    /// The SQLSTATE, when the server sent an error.
    pub fn sqlstate(&self) -> Option<&str> {
        self.db().map(|d| d.code().code())
    }

    /// The connection is gone (I/O error, closed, or the server said so).
    pub fn is_broken_connection(&self) -> bool {
        match self {
            DbError::Postgres(e) => broken(e),
            _ => false,
        }
    }
}

/// The connection `e` came from is gone (I/O error, closed, or the server
/// said so).
pub fn broken(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.as_db_error().is_some_and(|d| {
            let c = d.code().code();
            c.starts_with("08") || c == "57P01" || c == "57P02"
        })
}

/// Where and as whom connections are made.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// Read only where a connection is made.
    pub password: SecretString,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Target {
    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .password(self.password.expose_secret())
            .application_name("madbase-worker");
        c
    }
}

/// One open connection with its prepared statements.
pub struct Conn {
    pub client: Client,
    pub begin: Statement,
    pub begin_read_only: Statement,
    pub set_config: Statement,
    pub commit: Statement,
    pub rollback: Statement,
    statements: HashMap<String, Statement>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("statements", &self.statements.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects and prepares the transaction statements (one pipelined
    /// round trip after the handshake).
    pub async fn open(target: &Target) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = target.config().connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        let (begin, begin_read_only, set_config, commit, rollback) = tokio::try_join!(
            client.prepare(sql::BEGIN),
            client.prepare(sql::BEGIN_READ_ONLY),
            client.prepare_typed(sql::SET_CONFIG, &[Type::TEXT; 6]),
            client.prepare(sql::COMMIT),
            client.prepare(sql::ROLLBACK),
        )?;
        Ok(Conn {
            client,
            begin,
            begin_read_only,
            set_config,
            commit,
            rollback,
            statements: HashMap::new(),
        })
    }

    /// A prepared data statement from the cache, if prepared with `types`.
    pub fn cached(&self, sql: &str, types: &[Type]) -> Option<Statement> {
        self.statements
            .get(sql)
            .filter(|s| s.params() == types)
            .cloned()
    }

    /// Keeps a prepared data statement; the cache is emptied when full.
    pub fn keep(&mut self, sql: &str, statement: Statement) {
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement);
    }
}

/// A bounded set of connections to one database.
#[derive(Debug)]
pub struct Conns {
    target: Target,
    idle: Mutex<Vec<(Conn, Instant)>>,
    permits: Arc<Semaphore>,
    open: AtomicU32,
    closed: AtomicBool,
    acquire_timeout: Duration,
}

/// A connection taken from [`Conns`]; [`Lease::release`] gives it back,
/// dropping the lease closes it (after an error).
#[derive(Debug)]
pub struct Lease {
    conns: Arc<Conns>,
    conn: Option<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Conns {
    pub fn new(target: Target, max: u32, acquire_timeout: Duration) -> Arc<Self> {
        Arc::new(Conns {
            target,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            open: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            acquire_timeout,
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection within the acquire timeout, else `PoolTimedOut`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, DbError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DbError::PoolClosed);
        }
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| DbError::PoolTimedOut)?
            .map_err(|_| DbError::PoolClosed)?;
        let reused = loop {
            let Some((c, _)) = self.idle().pop() else {
                break None;
            };
            // A connection the server closed while idle is known without a
            // round trip.
            if !c.client.is_closed() {
                break Some(c);
            }
            self.open.fetch_sub(1, Ordering::Relaxed);
        };
        let conn = match reused {
            Some(c) => c,
            None => {
                let c = tokio::time::timeout_at(deadline, Conn::open(&self.target))
                    .await
                    .map_err(|_| DbError::PoolTimedOut)?
                    .map_err(DbError::Connect)?;
                self.open.fetch_add(1, Ordering::Relaxed);
                c
            }
        };
        Ok(Lease {
            conns: self.clone(),
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Connections open (idle and in use) and idle.
    pub fn sizes(&self) -> (u32, u32) {
        let idle = u32::try_from(self.idle().len()).unwrap_or(u32::MAX);
        (self.open.load(Ordering::Relaxed).max(idle), idle)
    }

    /// Closes the connections idle for longer than `max_idle`.
    pub fn expire(&self, max_idle: Duration) {
        let expired: Vec<Conn> = {
            let mut idle = self.idle();
            let (old, keep): (Vec<_>, Vec<_>) = idle
                .drain(..)
                .partition(|(_, since)| since.elapsed() >= max_idle);
            *idle = keep;
            old.into_iter().map(|(c, _)| c).collect()
        };
        self.close_all(expired);
    }

    /// Stops handing out connections and closes the idle ones; leased ones
    /// are closed when given back.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        let all: Vec<Conn> = self.idle().drain(..).map(|(c, _)| c).collect();
        self.close_all(all);
    }

    /// Dropping a client ends its connection (Terminate is sent).
    fn close_all(&self, conns: Vec<Conn>) {
        self.open
            .fetch_sub(u32::try_from(conns.len()).unwrap_or(0), Ordering::Relaxed);
        drop(conns);
    }
}

impl Lease {
    /// The connection (always there until the lease is consumed).
    pub fn conn(&mut self) -> Result<&mut Conn, DbError> {
        self.conn.as_mut().ok_or(DbError::PoolClosed)
    }

    /// Gives the connection back for reuse (it must be outside any
    /// transaction).
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            if self.conns.closed.load(Ordering::Acquire) {
                self.conns.close_all(vec![c]);
            } else {
                self.conns.idle().push((c, Instant::now()));
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not released: the connection failed or its state is unknown.
        if let Some(c) = self.conn.take() {
            self.conns.close_all(vec![c]);
        }
    }
}
