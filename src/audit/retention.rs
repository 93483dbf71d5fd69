//! Retention: audit log entries older than `KATAVEN_AUDIT_RETENTION_DAYS` are deleted.
//!
//! Every hour, each instance sweeps the accounts whose tenant pools it has open — the accounts
//! in use — one account at a time on one connection of its pool (within the connection budget,
//! like any request), deleting in batches so that no statement runs long. It never opens a pool
//! for the sweep, so the pass is bounded by the instance's open pools, however many accounts
//! there are. An account unused for longer keeps its old rows until it is used again; the
//! readable log never answers them meanwhile (it filters on the same cutoff).

use chrono::{DateTime, Utc};

use super::store;
use crate::config::Config;
use crate::state::AppState;
use crate::tenancy::catalog::Account;
use crate::tenancy::slug::AccountSlug;

/// Rows deleted by one statement.
const BATCH: i64 = 1000;

/// How often an instance sweeps.
const PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// The oldest time an entry may have and be kept.
pub fn cutoff(config: &Config) -> DateTime<Utc> {
    Utc::now() - config.audit_retention()
}

/// Deletes the expired entries of one account; answers how many.
pub async fn sweep_account(state: &AppState, account: &Account) -> anyhow::Result<u64> {
    let mut conn = state.pools.acquire(account).await?;
    let before = cutoff(&state.config);
    let mut deleted = 0;
    loop {
        let n = store::delete_older(&mut conn, before, BATCH).await?;
        deleted += n;
        if n < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// One pass over the accounts whose pools are open; answers how many entries it deleted. A
/// failing account is logged and skipped.
pub async fn sweep(state: &AppState) -> u64 {
    let mut deleted = 0;
    for slug in state.pools.open_accounts() {
        let Ok(slug) = AccountSlug::parse(&slug) else {
            continue;
        };
        let account = match state.cache.account(&slug).await {
            Ok(Some(account)) => account,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "audit retention: the catalog could not be read");
                return deleted;
            }
        };
        match sweep_account(state, &account).await {
            Ok(n) => deleted += n,
            Err(e) => {
                tracing::warn!(account = %slug, error = %e, "audit retention sweep failed");
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "audit retention: old entries deleted");
    }
    deleted
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
