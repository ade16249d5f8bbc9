//! Console sessions (in memory), CSRF tokens and the sign-in limiter.
//!
//! Sessions live in this process only: a restart of control signs every
//! operator out, and two control replicas do not share sessions (put a
//! sticky load balancer in front, or sign in again).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Absolute lifetime of a session, however active.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// At most this many sessions; the oldest is dropped beyond it.
const MAX_SESSIONS: usize = 1000;
/// Failed sign-ins from one address within [`FAILURE_WINDOW`] before
/// further attempts are refused outright.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A message shown once on the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
    flash: Option<Flash>,
}

/// The sessions of this process.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    map: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// `n` random bytes, hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the system random source works");
    hex::encode(bytes)
}

/// Equality that takes the same time wherever the inputs differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Sessions {
            idle,
            map: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session.
    pub fn create(&self) -> Session {
        let now = Instant::now();
        let session = Session {
            id: random_hex(32),
            csrf: random_hex(32),
            created: now,
            last_seen: now,
            flash: None,
        };
        let mut map = self.map();
        let idle = self.idle;
        map.retain(|_, s| !s.expired(now, idle));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .values()
                .min_by_key(|s| s.last_seen)
                .map(|s| s.id.clone())
        {
            map.remove(&oldest);
        }
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session `id`, its idle clock restarted, its flash taken.
    pub fn touch(&self, id: &str) -> Option<(Session, Option<Flash>)> {
        let now = Instant::now();
        let mut map = self.map();
        let s = map.get_mut(id)?;
        if s.expired(now, self.idle) {
            map.remove(id);
            return None;
        }
        s.last_seen = now;
        let flash = s.flash.take();
        Some((s.clone(), flash))
    }

    /// Shows `text` on the session's next page.
    pub fn flash(&self, id: &str, ok: bool, text: impl Into<String>) {
        if let Some(s) = self.map().get_mut(id) {
            s.flash = Some(Flash {
                ok,
                text: text.into(),
            });
        }
    }

    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` has failed too often recently.
    pub fn locked_out(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut f = self.failures();
        f.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        f.get(&ip).is_some_and(|(n, _)| *n >= MAX_FAILURES)
    }

    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut f = self.failures();
        let entry = f.entry(ip).or_insert((0, now));
        entry.0 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures().remove(&ip);
    }
}

impl Session {
    fn expired(&self, now: Instant, idle: Duration) -> bool {
        now.duration_since(self.last_seen) > idle || now.duration_since(self.created) > MAX_AGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle() {
        let sessions = Sessions::new(Duration::from_millis(0));
        let s = sessions.create();
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.touch(&s.id).is_none());
        let sessions = Sessions::new(Duration::from_secs(60));
        let s = sessions.create();
        sessions.flash(&s.id, true, "hi");
        let (_, flash) = sessions.touch(&s.id).expect("live");
        assert_eq!(flash.expect("flash").text, "hi");
        assert!(sessions.touch(&s.id).expect("live").1.is_none());
        sessions.remove(&s.id);
        assert!(sessions.touch(&s.id).is_none());
    }

    #[test]
    fn lockout_after_failures() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let ip: IpAddr = [127, 0, 0, 9].into();
        for _ in 0..MAX_FAILURES {
            assert!(!sessions.locked_out(ip));
            sessions.failed(ip);
        }
        assert!(sessions.locked_out(ip));
        sessions.succeeded(ip);
        assert!(!sessions.locked_out(ip));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd"));
    }
}
