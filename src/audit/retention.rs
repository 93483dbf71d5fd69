//! Retention: audit log entries older than `KATAVEN_AUDIT_RETENTION_DAYS` are deleted by the
//! hourly sweep (`housekeeping`), and never answered by the readable log meanwhile (it filters
//! on the same cutoff).

use chrono::{DateTime, Utc};

use crate::config::Config;

/// The oldest time an entry may have and be kept.
pub fn cutoff(config: &Config) -> DateTime<Utc> {
    Utc::now() - config.audit_retention()
}
