//! Background tasks that never vanish silently.
//!
//! Every long-lived task a service spawns (control's change-feed listener
//! and its sweep of interrupted operations, the tenant-cache follower, the
//! worker's idle-pool closer, the functions code cache's feed follower) runs
//! under [`supervise`]: when it fails (returns an error or panics) the
//! failure is logged at `error`, counted in
//! `madbase_background_task_restarts_total{task}` and the task is started
//! again after a backoff (100 ms doubling to 30 s). A task that returns
//! `Ok(())` has finished its work and is not restarted.
//!
//! Per-connection driver tasks (hyper's, tokio-postgres') are not
//! supervised: they end with their connection, and the request that used
//! the connection sees the error. Nor are per-request tasks, or
//! [`crate::server::cancel_on_signal`]'s wait for SIGTERM/SIGINT, which ends
//! with the process (it cannot fail, and restarting it would be wrong
//! after it fired). `tests/spawns.rs` lists every direct spawn with its
//! reason and fails on a new one.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabels {
    task: &'static str,
}

/// Restarts by task, shared by the process (registered by every
/// [`crate::Metrics`]).
pub(crate) static RESTARTS: LazyLock<Family<TaskLabels, Counter>> = LazyLock::new(Family::default);

/// The longest pause between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Spawns `make()`'s task and keeps it running: an `Err` or a panic is
/// logged, counted and followed by a fresh `make()` after a backoff; `Ok`
/// ends supervision. Aborting the returned handle aborts the task. Needs a
/// Tokio runtime.
pub fn supervise<F, Fut>(task: &'static str, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Aborting the supervisor (dropping its future) aborts the run.
            let mut run = AbortOnDrop(tokio::spawn(make()));
            let failure = match (&mut run.0).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let text = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    format!("panicked: {text}")
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            };
            tracing::error!(task, error = %failure, backoff_seconds = backoff.as_secs_f64(), "background task failed; restarting");
            RESTARTS.get_or_create(&TaskLabels { task }).inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A task that panics, then fails, then finishes: run three times,
    /// restarted twice (counted), then left alone.
    #[tokio::test]
    async fn failures_are_counted_and_restarted_until_done() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let handle = supervise("test-task", move || {
            let runs = Arc::clone(&counted);
            async move {
                match runs.fetch_add(1, Ordering::SeqCst) {
                    0 => panic!("first run"),
                    1 => Err("second run".to_owned()),
                    _ => Ok(()),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("supervision ends once the task is done")
            .expect("join");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(
            RESTARTS
                .get_or_create(&TaskLabels { task: "test-task" })
                .get(),
            2
        );
        let text = crate::Metrics::new().encode_prometheus();
        assert!(
            text.contains(r#"madbase_background_task_restarts_total{task="test-task"} 2"#),
            "{text}"
        );
    }

    /// Aborting the supervisor aborts the task it runs.
    #[tokio::test]
    async fn aborting_the_supervisor_aborts_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let handle = supervise("abortable", move || {
            let tx = tx.clone();
            async move {
                // Holds the sender until aborted.
                let _tx = tx;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.abort();
        // Every sender gone: the task (and the factory) were dropped.
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the task ended");
    }
}
