//! Retention: audit log entries older than `KATAVEN_AUDIT_RETENTION_DAYS` are deleted by the
//! hourly sweep (`housekeeping`), and never answered by the readable log meanwhile (it filters
//! on the same cutoff).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::store;
use crate::config::Config;

/// Rows deleted by one statement.
const BATCH: i64 = 1000;

/// The oldest time an entry may have and be kept.
pub fn cutoff(config: &Config) -> DateTime<Utc> {
    Utc::now() - config.audit_retention()
}

/// Deletes the expired entries of one account's database, in batches so that no statement
/// runs long; answers how many.
pub async fn delete_expired(conn: &mut PgConnection, config: &Config) -> sqlx::Result<u64> {
    let before = cutoff(config);
    let mut deleted = 0;
    loop {
        let n = store::delete_older(conn, before, BATCH).await?;
        deleted += n;
        if n < BATCH as u64 {
            return Ok(deleted);
        }
    }
}
