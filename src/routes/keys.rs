//! What managing API keys (`api_keys.rs`) and widget keys (`widget_keys.rs`) have in common:
//! addressing a key by id, listing, and what follows every change — the caches of every
//! instance drop the key, and the account's audit log records the change (after the catalog
//! commit, so a failure to audit never turns a change that happened into an error).

use axum::http::StatusCode;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::audit::{self, Action, Resource};
use crate::auth::keys::{KeyKind, delete_or_disable};
use crate::error::{ApiError, ApiResult};
use crate::extract::Tenant;
use crate::state::AppState;

impl KeyKind {
    fn audit_resource(self) -> Resource {
        match self {
            Self::Api => Resource::ApiKey,
            Self::Widget => Resource::WidgetKey,
        }
    }

    /// The 404 of an id that names no key of this kind in the account.
    pub fn not_found(self) -> ApiError {
        ApiError::not_found(match self {
            Self::Api => "no such API key",
            Self::Widget => "no such widget key",
        })
    }

    /// The key id in a path; anything else names no key (404).
    pub fn parse_id(self, raw: &str) -> ApiResult<Uuid> {
        Uuid::parse_str(raw).map_err(|_| self.not_found())
    }
}

/// The account's keys of `kind`, newest first, as `columns` of the kind's table.
pub async fn list<T>(
    state: &AppState,
    kind: KeyKind,
    tenant: &Tenant,
    columns: &str,
) -> ApiResult<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(&format!(
        "SELECT {columns} FROM {} WHERE account = $1 ORDER BY created_at DESC, id DESC",
        kind.table()
    ))
    .bind(tenant.slug.as_str())
    .fetch_all(state.catalog.pool())
    .await?)
}

/// What a key change is: its kind, what was done, to which key, and (when the key existed
/// before) its hash, which the caches know it by.
pub struct KeyChange<'a> {
    pub kind: KeyKind,
    pub action: Action,
    pub id: Uuid,
    pub key_hash: Option<&'a [u8]>,
}

/// After a committed change to a key: every instance's caches drop it (this one at once), and
/// the change is audited, on `conn` when the handler holds a tenant connection.
pub async fn changed(
    state: &AppState,
    tenant: &Tenant,
    conn: Option<&mut PgConnection>,
    change: KeyChange<'_>,
) {
    let KeyChange {
        kind,
        action,
        id,
        key_hash,
    } = change;
    if let Some(hash) = key_hash {
        state.cache.invalidate(&kind.invalidation(hash));
    }
    let (resource, id) = (kind.audit_resource(), id.to_string());
    match conn {
        Some(conn) => audit::record_committed(conn, &tenant.principal, action, resource, &id).await,
        None => audit::record_catalog_change(state, tenant, action, resource, &id).await,
    }
}

/// `DELETE`: a key never used is deleted; a key that ever authenticated, on any instance, is
/// disabled so that its record stays. Either way it stops working at once everywhere.
pub async fn remove(
    state: &AppState,
    tenant: &Tenant,
    kind: KeyKind,
    raw_id: &str,
) -> ApiResult<StatusCode> {
    let id = kind.parse_id(raw_id)?;
    // Not for the decision (`first_used_at` is), but so that the kept record shows this
    // instance's latest use.
    state.api_keys.flush_last_used().await;
    let removal = delete_or_disable(state.catalog.pool(), kind, tenant.slug.as_str(), id)
        .await?
        .ok_or_else(|| kind.not_found())?;
    let change = KeyChange {
        kind,
        action: removal.action,
        id,
        key_hash: Some(&removal.key_hash),
    };
    changed(state, tenant, None, change).await;
    Ok(StatusCode::NO_CONTENT)
}
