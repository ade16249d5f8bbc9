//! Recent invocations, kept in memory for the operator console:
//! `GET /internal/v1/tenants/{id}/functions/{name}/invocations` (an
//! internal platform token) answers the last [`PER_FUNCTION`] invocations
//! of a deployed function seen by this process, newest first: time,
//! status, outcome, duration, version, cold start, CPU time, the error's
//! message and the `console.*` lines (at most [`MAX_LINES`] lines of
//! [`MAX_LINE`] characters each).
//!
//! Bounded: at most [`MAX_FUNCTIONS`] functions are tracked (the one
//! invoked least recently is forgotten first). Nothing is persisted: the
//! record starts empty when the process starts, and each functions process
//! has its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use madbase_js::protocol::LogLine;
use madbase_platform::ApiError;
use madbase_platform::secrets::{ExposeSecret, SecretString};
use madbase_tenancy::jwt;
use serde::Serialize;

/// Invocations kept per function.
pub const PER_FUNCTION: usize = 50;
/// Functions tracked.
pub const MAX_FUNCTIONS: usize = 1000;
/// Console lines kept per invocation.
pub const MAX_LINES: usize = 20;
/// Characters kept per console line (and of an error message).
pub const MAX_LINE: usize = 500;

/// One invocation as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Invocation {
    /// When it started, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The platform request id of the call.
    pub request_id: String,
    /// The function's version (unknown when it was refused before it ran).
    pub version: Option<i64>,
    /// The HTTP status answered.
    pub status: u16,
    /// `madbase_function_invocations_total`'s outcome label.
    pub outcome: &'static str,
    /// Wall time from arrival to the answer, in milliseconds.
    pub duration_ms: f64,
    /// Whether the worker compiled the function (unknown when no worker ran it).
    pub cold: Option<bool>,
    /// CPU time the worker spent, in milliseconds (unknown when no worker ran it).
    pub cpu_ms: Option<f64>,
    /// The error's message (an exception's, a limit's).
    pub error: Option<String>,
    /// The function's `console.*` lines, at most [`MAX_LINES`], each cut to [`MAX_LINE`] characters.
    pub console: Vec<Line>,
    /// Console lines beyond [`MAX_LINES`], not kept.
    pub console_omitted: usize,
}

/// One `console.*` line of an invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text, cut to [`MAX_LINE`] characters.
    pub message: String,
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_LINE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl Invocation {
    /// An invocation that started `elapsed` ago.
    pub fn new(
        request_id: String,
        version: Option<i64>,
        status: u16,
        outcome: &'static str,
        elapsed: Duration,
    ) -> Self {
        let now = SystemTime::now();
        let at = now.checked_sub(elapsed).unwrap_or(now);
        Invocation {
            at_ms: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            request_id,
            version,
            status,
            outcome,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            cold: None,
            cpu_ms: None,
            error: None,
            console: Vec::new(),
            console_omitted: 0,
        }
    }

    /// Keeps the first [`MAX_LINES`] of `lines` (each cut to [`MAX_LINE`]) and counts the rest.
    pub fn with_console(mut self, lines: &[LogLine]) -> Self {
        self.console = lines
            .iter()
            .take(MAX_LINES)
            .map(|l| Line {
                level: l.level.clone(),
                message: truncate(&l.message),
            })
            .collect();
        self.console_omitted = lines.len().saturating_sub(MAX_LINES);
        self
    }

    /// Records `message` (cut to [`MAX_LINE`]) as the error; an empty one is ignored.
    pub fn with_error(mut self, message: &str) -> Self {
        if !message.is_empty() {
            self.error = Some(truncate(message));
        }
        self
    }
}

#[derive(Debug, Default)]
struct Recent {
    /// Newest last.
    calls: VecDeque<Invocation>,
    /// Insertion counter of the newest call (for eviction).
    seq: u64,
}

/// (tenant, function)
type Key = (String, String);

/// The record of every tracked function.
#[derive(Debug, Default)]
pub struct History {
    /// The last insertion counter, and each function's recent calls.
    inner: Mutex<(u64, HashMap<Key, Recent>)>,
}

impl History {
    /// Adds `call` to the function's recent calls, dropping its oldest past [`PER_FUNCTION`] and the least recently called function past [`MAX_FUNCTIONS`].
    pub fn record(&self, tenant: &str, function: &str, call: Invocation) {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seq, map) = &mut *guard;
        *seq += 1;
        let key = (tenant.to_owned(), function.to_owned());
        if !map.contains_key(&key) && map.len() >= MAX_FUNCTIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, r)| r.seq)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let recent = map.entry(key).or_default();
        recent.seq = *seq;
        while recent.calls.len() >= PER_FUNCTION {
            recent.calls.pop_front();
        }
        recent.calls.push_back(call);
    }

    /// Newest first.
    pub fn recent(&self, tenant: &str, function: &str) -> Vec<Invocation> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .get(&(tenant.to_owned(), function.to_owned()))
            .map(|r| r.calls.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// How many functions are tracked.
    pub fn functions(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .len()
    }
}

/// State of the internal route.
#[derive(Debug, Clone)]
pub(crate) struct Internal {
    pub history: Arc<History>,
    pub jwt_secret: SecretString,
}

#[derive(Debug, Serialize)]
pub(crate) struct Answer {
    invocations: Vec<Invocation>,
}

/// `GET /internal/v1/tenants/{id}/functions/{name}/invocations`
pub(crate) async fn invocations(
    State(s): State<Internal>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Answer>, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(jwt::bearer)
        .ok_or_else(|| ApiError::unauthorized("an internal token is required"))?;
    jwt::verify_platform(s.jwt_secret.expose_secret(), token, "internal")
        .map_err(|e| ApiError::unauthorized(format!("invalid internal token: {e}")))?;
    Ok(Json(Answer {
        invocations: s.history.recent(&tenant, &name),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: u16) -> Invocation {
        Invocation::new(
            "req".to_owned(),
            Some(1),
            status,
            "ok",
            Duration::from_millis(3),
        )
    }

    #[test]
    fn bounded_per_function_per_line_and_in_functions() {
        let h = History::default();
        for i in 0..(PER_FUNCTION + 5) {
            h.record("acme", "f", call(200 + u16::try_from(i).expect("small")));
        }
        let recent = h.recent("acme", "f");
        assert_eq!(recent.len(), PER_FUNCTION);
        assert_eq!(
            recent[0].status,
            200 + PER_FUNCTION as u16 + 4,
            "newest first"
        );
        assert!(h.recent("acme", "g").is_empty());
        assert!(h.recent("other", "f").is_empty());

        let lines: Vec<LogLine> = (0..MAX_LINES + 3)
            .map(|i| LogLine {
                level: "info".to_owned(),
                message: format!("{i}{}", "é".repeat(MAX_LINE)),
            })
            .collect();
        let c = call(200).with_console(&lines).with_error("");
        assert_eq!(c.console.len(), MAX_LINES);
        assert_eq!(c.console_omitted, 3);
        assert_eq!(c.console[0].message.chars().count(), MAX_LINE + 1);
        assert!(c.console[0].message.ends_with('…'));
        assert_eq!(c.error, None);

        for i in 0..MAX_FUNCTIONS {
            h.record("t", &format!("f{i}"), call(200));
        }
        assert_eq!(h.functions(), MAX_FUNCTIONS);
        assert!(
            h.recent("acme", "f").is_empty(),
            "the least recently invoked is forgotten"
        );
        h.record("t", "f0", call(201));
        h.record("t", "new", call(200));
        assert_eq!(h.recent("t", "f0").len(), 2);
        assert!(h.recent("t", "f1").is_empty());
    }
}
