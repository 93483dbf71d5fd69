//! `pk_live_` widget keys: public identifiers of an account's embedded widget, guarded by a
//! per-key origin allowlist.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// What the widget endpoints need of a key's catalog row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WidgetKeyRecord {
    pub id: Uuid,
    pub account: String,
    pub domain_allowlist: Vec<String>,
    pub agent_id: Option<Uuid>,
    pub disabled_at: Option<DateTime<Utc>>,
}

pub async fn load(pool: &PgPool, hash: &[u8; 32]) -> sqlx::Result<Option<WidgetKeyRecord>> {
    sqlx::query_as(
        "SELECT id, account, domain_allowlist, agent_id, disabled_at FROM widget_keys WHERE key_hash = $1",
    )
    .bind(&hash[..])
    .fetch_optional(pool)
    .await
}
