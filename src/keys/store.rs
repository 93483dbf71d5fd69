//! The SQL of the catalog's key tables (`api_keys`, `widget_keys`): listing, creating,
//! changing and removing an account's keys. Verification reads them through `auth::api_keys`
//! and `auth::widget_keys` (cached).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::api::{ApiKeyCreated, ApiKeyItem};
use super::widget::{WidgetKeyCreated, WidgetKeyItem};
use crate::audit::Action;
use crate::auth::api_keys::ApiKeyRecord;
use crate::auth::keys::KeyKind;
use crate::auth::widget_keys::{WidgetKeyRecord, WidgetKeyRow};
use crate::store::{StoreError, StoreResult};

/// The account's keys of `kind`, newest first, as `columns` of the kind's table.
pub async fn list<T>(
    pool: &PgPool,
    kind: KeyKind,
    account: &str,
    columns: &str,
) -> StoreResult<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(&format!(
        "SELECT {columns} FROM {} WHERE account = $1 ORDER BY created_at DESC, id DESC",
        kind.table()
    ))
    .bind(account)
    .fetch_all(pool)
    .await?)
}

/// The names of the account's API keys among `ids` (for the audit log's actors); a key that
/// no longer exists has none.
pub async fn api_key_names(
    pool: &PgPool,
    account: &str,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as("SELECT id, name FROM api_keys WHERE account = $1 AND id = ANY($2)")
        .bind(account)
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// Who created a key and with which hash.
pub struct Origin<'a> {
    pub account: &'a str,
    pub key_hash: &'a [u8],
    pub created_by: &'a str,
}

pub async fn insert_api_key(
    conn: &mut PgConnection,
    key: &ApiKeyCreated,
    origin: Origin<'_>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, account, name, key_hash, last8, expires_at, created_by, created_at, tagged)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)",
    )
    .bind(key.id)
    .bind(origin.account)
    .bind(&key.name)
    .bind(origin.key_hash)
    .bind(&key.last8)
    .bind(key.expires_at)
    .bind(origin.created_by)
    .bind(key.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn insert_widget_key(
    conn: &mut PgConnection,
    key: &WidgetKeyCreated,
    origin: Origin<'_>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO widget_keys (id, account, name, key_hash, last8, domain_allowlist, agent_id, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(key.id)
    .bind(origin.account)
    .bind(&key.name)
    .bind(origin.key_hash)
    .bind(&key.last8)
    .bind(&key.domain_allowlist)
    .bind(key.agent_id)
    .bind(origin.created_by)
    .bind(key.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `disabled_at` after a PATCH's `disabled` (`$n`): unchanged, set (kept if set) or cleared.
macro_rules! disabled_at {
    ($n:literal) => {
        concat!(
            "disabled_at = CASE WHEN $",
            $n,
            "::boolean IS NULL THEN disabled_at WHEN $",
            $n,
            " THEN COALESCE(disabled_at, now()) ELSE NULL END"
        )
    };
}

/// A changed key as listed, and its hash (which the caches know it by).
#[derive(sqlx::FromRow)]
struct Updated<T> {
    #[sqlx(flatten)]
    item: T,
    key_hash: Vec<u8>,
}

pub const API_KEY_COLUMNS: &str =
    "id, name, last8, expires_at, disabled_at IS NOT NULL AS disabled, last_used_at, created_at";

/// Renames, disables or enables an API key (`None`: unchanged).
pub async fn update_api_key(
    conn: &mut PgConnection,
    account: &str,
    id: Uuid,
    name: Option<&str>,
    disabled: Option<bool>,
) -> StoreResult<(ApiKeyItem, Vec<u8>)> {
    let updated: Option<Updated<ApiKeyItem>> = sqlx::query_as(&format!(
        "UPDATE api_keys SET name = COALESCE($3, name), {}
         WHERE account = $1 AND id = $2 RETURNING {API_KEY_COLUMNS}, key_hash",
        disabled_at!("4")
    ))
    .bind(account)
    .bind(id)
    .bind(name)
    .bind(disabled)
    .fetch_optional(&mut *conn)
    .await?;
    let updated = StoreError::found(updated, KeyKind::Api.noun())?;
    Ok((updated.item, updated.key_hash))
}

pub const WIDGET_KEY_COLUMNS: &str = "id, name, last8, domain_allowlist, agent_id, disabled_at IS NOT NULL AS disabled, \
                            disabled_at, last_used_at, created_at";

/// A change to a widget key (`None`: unchanged; `agent_id: Some(None)` unpins).
pub struct WidgetKeyChange<'a> {
    pub name: Option<&'a str>,
    pub domain_allowlist: Option<Vec<String>>,
    pub agent_id: Option<Option<Uuid>>,
    pub disabled: Option<bool>,
}

pub async fn update_widget_key(
    conn: &mut PgConnection,
    account: &str,
    id: Uuid,
    change: WidgetKeyChange<'_>,
) -> StoreResult<(WidgetKeyItem, Vec<u8>)> {
    let updated: Option<Updated<WidgetKeyItem>> = sqlx::query_as(&format!(
        "UPDATE widget_keys SET name = COALESCE($3, name),
             domain_allowlist = COALESCE($4, domain_allowlist),
             agent_id = CASE WHEN $5 THEN $6 ELSE agent_id END, {}
         WHERE account = $1 AND id = $2 RETURNING {WIDGET_KEY_COLUMNS}, key_hash",
        disabled_at!("7")
    ))
    .bind(account)
    .bind(id)
    .bind(change.name)
    .bind(change.domain_allowlist)
    .bind(change.agent_id.is_some())
    .bind(change.agent_id.flatten())
    .bind(change.disabled)
    .fetch_optional(&mut *conn)
    .await?;
    let updated = StoreError::found(updated, KeyKind::Widget.noun())?;
    Ok((updated.item, updated.key_hash))
}

/// What [`delete_or_disable`] did.
pub struct Removal {
    /// `delete` or `disable`, as recorded in the audit log.
    pub action: Action,
    pub key_hash: Vec<u8>,
}

/// Deletes a key of `account` that was never used, or disables a used one so that its record
/// stays. "Used" is `first_used_at`, which the first
/// verification on any instance records at once (in the same statement that reads the key), so
/// every instance agrees; the batched `last_used_at` may lag by seconds.
pub async fn delete_or_disable(
    conn: &mut PgConnection,
    kind: KeyKind,
    account: &str,
    id: Uuid,
) -> StoreResult<Removal> {
    let table = kind.table();
    let deleted: Option<Vec<u8>> = sqlx::query_scalar(&format!(
        "DELETE FROM {table} WHERE account = $1 AND id = $2 AND first_used_at IS NULL RETURNING key_hash"
    ))
    .bind(account)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(key_hash) = deleted {
        return Ok(Removal {
            action: Action::Delete,
            key_hash,
        });
    }
    let disabled: Option<Vec<u8>> = sqlx::query_scalar(&format!(
        "UPDATE {table} SET disabled_at = COALESCE(disabled_at, now())
         WHERE account = $1 AND id = $2 RETURNING key_hash"
    ))
    .bind(account)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let key_hash = StoreError::found(disabled, kind.noun())?;
    Ok(Removal {
        action: Action::Disable,
        key_hash,
    })
}

/// The catalog row of a key hash, for the cache; records the key's first use if it is usable.
pub async fn load_api_key(pool: &PgPool, hash: &[u8; 32]) -> sqlx::Result<Option<ApiKeyRecord>> {
    sqlx::query_as(
        "WITH first_use AS (
             UPDATE api_keys SET first_used_at = now()
             WHERE key_hash = $1 AND first_used_at IS NULL AND disabled_at IS NULL
               AND (expires_at IS NULL OR expires_at > now()))
         SELECT id, account, expires_at, disabled_at FROM api_keys WHERE key_hash = $1",
    )
    .bind(&hash[..])
    .fetch_optional(pool)
    .await
}

/// Records when keys of `kind` were last used (`ids[i]` at `times[i]`; a later use is kept).
pub async fn record_uses(
    pool: &PgPool,
    kind: KeyKind,
    ids: &[Uuid],
    times: &[DateTime<Utc>],
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE {} AS k SET last_used_at = GREATEST(k.last_used_at, u.at)
         FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
        kind.table()
    ))
    .bind(ids)
    .bind(times)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether any usable API key without a tag is left.
pub async fn untagged_keys_left(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE NOT tagged AND disabled_at IS NULL
                          AND (expires_at IS NULL OR expires_at > now()))",
    )
    .fetch_one(pool)
    .await
}

const WIDGET_KEY_RECORD: &str = "id, account, domain_allowlist, agent_id, disabled_at";

/// The key with this HMAC (the widget endpoints, through the catalog cache); records the
/// key's first use if it is enabled.
pub async fn load_widget_key(
    pool: &PgPool,
    hash: &[u8; 32],
) -> sqlx::Result<Option<WidgetKeyRecord>> {
    let row: Option<WidgetKeyRow> = sqlx::query_as(&format!(
        "WITH first_use AS (
             UPDATE widget_keys SET first_used_at = now()
             WHERE key_hash = $1 AND first_used_at IS NULL AND disabled_at IS NULL)
         SELECT {WIDGET_KEY_RECORD} FROM widget_keys WHERE key_hash = $1"
    ))
    .bind(&hash[..])
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// The key with this id (a session refresh names its key by id).
pub async fn load_widget_key_by_id(
    pool: &PgPool,
    id: Uuid,
) -> sqlx::Result<Option<WidgetKeyRecord>> {
    let row: Option<WidgetKeyRow> = sqlx::query_as(&format!(
        "SELECT {WIDGET_KEY_RECORD} FROM widget_keys WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}
