//! Creates and deletes a stopped control process left half done.
//!
//! A create claims its id with a `creating` row before it provisions, and a
//! delete marks its row `deleting` before it drops; if control stops in
//! between (a crash, a kill), the row stays so: the id can neither be created
//! again (409) nor seen (404). Control finishes both kinds at start and then
//! every minute, once the row has not changed for [`STALE_AFTER`]:
//! - `creating`: nobody got the tenant's keys (a create returns them only once
//!   the tenant is active), so what it made is dropped and the id is free;
//! - `deleting`: the delete was asked for, so it is carried out.

use std::time::Duration;

use sqlx::PgPool;

use crate::provision::{self, Names};
use crate::store;

/// Longer than any create or delete takes.
const STALE_AFTER: Duration = Duration::from_secs(300);
/// How often a running control looks again.
const EVERY: Duration = Duration::from_secs(60);

/// Finishes every unfinished create or delete older than [`STALE_AFTER`].
/// One that fails is logged and left for the next round.
async fn finish(db: &PgPool, admin: &PgPool) -> anyhow::Result<()> {
    let rows = store::unfinished(db, STALE_AFTER.as_secs_f64()).await?;
    for row in rows {
        let names = Names {
            database: row.database_name,
            owner: row.owner_role,
            authenticator: row.authenticator_role,
        };
        if let Err(e) = provision::drop_all(admin, &names).await {
            tracing::error!(tenant = %row.id, status = %row.status, error = %e,
                "cannot finish an interrupted tenant operation; retrying later");
            continue;
        }
        if store::remove_unfinished(db, &row.id, &row.status).await? {
            let what = if row.status == "creating" {
                "an interrupted create was rolled back; the id is free again"
            } else {
                "an interrupted delete was finished"
            };
            tracing::warn!(tenant = %row.id, status = %row.status, "{what}");
        }
    }
    Ok(())
}

/// [`finish`] now and then every [`EVERY`], on a spawned task (start-up
/// does not wait for the tenant cluster).
pub fn start(db: PgPool, admin: PgPool) {
    madbase_platform::tasks::supervise("interrupted-operations", move || {
        let (db, admin) = (db.clone(), admin.clone());
        async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = finish(&db, &admin).await {
                    tracing::warn!(error = %e, "looking for interrupted tenant operations failed");
                }
            }
        }
    });
}
