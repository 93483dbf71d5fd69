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

const COLUMNS: &str = "id, account, domain_allowlist, agent_id, disabled_at";

/// The key with this HMAC (the widget endpoints, through the catalog cache); records the
/// key's first use if it is enabled.
pub async fn load(pool: &PgPool, hash: &[u8; 32]) -> sqlx::Result<Option<WidgetKeyRecord>> {
    sqlx::query_as(&format!(
        "WITH first_use AS (
             UPDATE widget_keys SET first_used_at = now()
             WHERE key_hash = $1 AND first_used_at IS NULL AND disabled_at IS NULL)
         SELECT {COLUMNS} FROM widget_keys WHERE key_hash = $1"
    ))
    .bind(&hash[..])
    .fetch_optional(pool)
    .await
}

/// The key with this id (a session refresh names its key by id).
pub async fn load_by_id(pool: &PgPool, id: uuid::Uuid) -> sqlx::Result<Option<WidgetKeyRecord>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM widget_keys WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}
