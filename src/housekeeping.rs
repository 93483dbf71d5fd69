//! The hourly sweep: audit log entries past retention (`audit::retention`) and expired
//! `Idempotency-Key` answers (`idempotency`), in the account databases and the catalog; and
//! the old databases of account moves past their grace period (`fleet::moves`).
//!
//! Each instance sweeps the accounts whose tenant pools it has open — the accounts in use —
//! one account at a time on one connection of its pool (within the connection budget, like any
//! request), deleting in batches so that no statement runs long. It never opens a pool for the
//! sweep, so the pass is bounded by the instance's open pools, however many accounts there are.
//! An account unused for longer keeps its old rows until it is used again; neither the readable
//! log nor a replay ever answers them meanwhile (both filter on the same cutoff).

use sqlx::PgConnection;

use crate::state::AppState;
use crate::tenancy::catalog::Account;
use crate::tenancy::slug::AccountSlug;

/// How often an instance sweeps.
const PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// Rows deleted by one statement.
const BATCH: i64 = 1000;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub audit_entries: u64,
    pub idempotency_keys: u64,
    /// Moves finished: their old databases dropped.
    pub moves_finished: u64,
}

/// What a sweep deletes.
enum Expired {
    /// Audit log entries older than the retention's cutoff.
    AuditEntries(chrono::DateTime<chrono::Utc>),
    /// Idempotency answers past their expiry.
    IdempotencyKeys,
}

impl Expired {
    /// Deletes at most `batch` rows; answers how many.
    async fn delete_batch(&self, conn: &mut PgConnection, batch: i64) -> sqlx::Result<u64> {
        match self {
            Self::AuditEntries(before) => {
                crate::audit::store::delete_older(conn, *before, batch).await
            }
            Self::IdempotencyKeys => crate::idempotency::delete_expired(conn, batch).await,
        }
    }

    /// Deletes all of them from one database, [`BATCH`] rows a statement so that no statement
    /// runs long; answers how many.
    async fn delete(self, conn: &mut PgConnection) -> sqlx::Result<u64> {
        let mut deleted = 0;
        loop {
            let n = self.delete_batch(conn, BATCH).await?;
            deleted += n;
            if n < BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

/// Sweeps one account's database.
pub async fn sweep_account(state: &AppState, account: &Account) -> anyhow::Result<Swept> {
    let mut conn = state.pools.acquire(account).await?;
    let cutoff = crate::audit::retention::cutoff(&state.config);
    Ok(Swept {
        audit_entries: Expired::AuditEntries(cutoff).delete(&mut conn).await?,
        idempotency_keys: Expired::IdempotencyKeys.delete(&mut conn).await?,
        moves_finished: 0,
    })
}

/// One pass over the catalog and the accounts whose pools are open. A failing account is
/// logged and skipped.
pub async fn sweep(state: &AppState) -> Swept {
    let mut swept = Swept::default();
    match state.catalog.pool().acquire().await {
        Ok(mut conn) => match Expired::IdempotencyKeys.delete(&mut conn).await {
            Ok(n) => swept.idempotency_keys += n,
            Err(e) => tracing::warn!(error = %e, "housekeeping: the catalog sweep failed"),
        },
        Err(e) => tracing::warn!(error = %e, "housekeeping: the catalog could not be reached"),
    }
    let grace = std::time::Duration::from_secs(u64::from(state.config.move_grace_hours) * 3600);
    match crate::fleet::moves::finish_expired(&state.provisioner, grace).await {
        Ok(n) => swept.moves_finished += n as u64,
        Err(e) => tracing::warn!(error = %e, "housekeeping: finishing moves failed"),
    }
    for slug in state.pools.open_accounts() {
        let Ok(slug) = AccountSlug::parse(&slug) else {
            continue;
        };
        let account = match state.cache.account(&slug).await {
            Ok(Some(account)) => account,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "housekeeping: the catalog could not be read");
                return swept;
            }
        };
        match sweep_account(state, &account).await {
            Ok(n) => {
                swept.audit_entries += n.audit_entries;
                swept.idempotency_keys += n.idempotency_keys;
            }
            Err(e) => {
                tracing::warn!(account = %slug, error = %e, "housekeeping sweep failed");
            }
        }
    }
    if swept != Swept::default() {
        tracing::info!(
            audit_entries = swept.audit_entries,
            idempotency_keys = swept.idempotency_keys,
            moves_finished = swept.moves_finished,
            "housekeeping: expired rows deleted"
        );
    }
    swept
}

/// Runs [`sweep`] every hour until the returned task is aborted.
pub fn spawn(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sweep(&state).await;
        }
    })
}
