//! The connections of one tenant: a semaphore bounds them, idle ones are
//! reused as they are (no ping when taken, none when given back: sqlx's
//! `Pool` pings every connection it takes back, one more round trip per
//! request), a connection that failed is dropped, idle ones expire.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bounded set of connections to one database.
#[derive(Debug)]
pub struct Conns {
    options: PgConnectOptions,
    idle: Mutex<Vec<(PgConnection, Instant)>>,
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
    conn: Option<PgConnection>,
    _permit: OwnedSemaphorePermit,
}

impl Conns {
    pub fn new(options: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Arc<Self> {
        Arc::new(Conns {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            open: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            acquire_timeout,
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(PgConnection, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection within the acquire timeout, else `PoolTimedOut`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, sqlx::Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let reused = self.idle().pop();
        let conn = match reused {
            Some((c, _)) => c,
            None => {
                let c = tokio::time::timeout_at(deadline, self.options.connect())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??;
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
        let expired: Vec<PgConnection> = {
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
        let all: Vec<PgConnection> = self.idle().drain(..).map(|(c, _)| c).collect();
        self.close_all(all);
    }

    fn close_all(&self, conns: Vec<PgConnection>) {
        if conns.is_empty() {
            return;
        }
        self.open
            .fetch_sub(u32::try_from(conns.len()).unwrap_or(0), Ordering::Relaxed);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for c in conns {
                    let _ = c.close().await;
                }
            });
        }
    }
}

impl Lease {
    /// The connection (always there until the lease is consumed).
    pub fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Gives the connection back for reuse.
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
            self.conns.open.fetch_sub(1, Ordering::Relaxed);
            drop(c);
        }
    }
}
