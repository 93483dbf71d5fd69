//! An account's keys: API keys (`api.rs`, `/api/v1/api-keys`) and widget keys (`widget.rs`,
//! `/api/v1/widget-keys`), their catalog SQL (`store.rs`), and what managing both has in
//! common: typed key ids, and what follows every change — the caches of every instance drop the
//! key, and the account's audit log records the change (after the catalog commit, so a failure
//! to audit never turns a change that happened into an error).

pub mod api;
pub mod store;
pub mod widget;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use serde::Serialize;
use uuid::Uuid;

use crate::audit::{self, Action, Change, Resource};
use crate::auth::keys::KeyKind;
use crate::error::{ApiError, ApiResult};
use crate::extract::{TenantDb, path_id};
use crate::json::Json;
use crate::state::AppState;

/// The answer to a key's creation: 201 with the key (its plaintext `key` included).
pub fn created_answer<T: Serialize>(created: &T) -> (StatusCode, Json<&T>) {
    (StatusCode::CREATED, Json(created))
}

/// The answer a retry of a key's creation with the same `Idempotency-Key` gets instead: the
/// same, with `key` null. A key is shown once: its plaintext is never stored, not even for a
/// replay (see docs/idempotency.md).
pub fn shown_once<T: Serialize>(created: &T) -> (StatusCode, Json<serde_json::Value>) {
    let mut kept = serde_json::to_value(created).unwrap_or_default();
    if let Some(key) = kept.get_mut("key") {
        *key = serde_json::Value::Null;
    }
    (StatusCode::CREATED, Json(kept))
}

impl KeyKind {
    fn audit_resource(self) -> Resource {
        match self {
            Self::Api => Resource::ApiKey,
            Self::Widget => Resource::WidgetKey,
        }
    }
}

/// The API key named by the path's `{id}` (anything but a UUID: 404 "no such API key").
#[derive(Debug, Clone, Copy)]
pub struct ApiKeyId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for ApiKeyId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        path_id(parts, KeyKind::Api.noun()).await.map(Self)
    }
}

/// The widget key named by the path's `{id}` (anything but a UUID: 404 "no such widget key").
#[derive(Debug, Clone, Copy)]
pub struct WidgetKeyId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for WidgetKeyId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        path_id(parts, KeyKind::Widget.noun()).await.map(Self)
    }
}

/// What a key change is: its kind, what was done, to which key, (when the key existed
/// before) its hash, which the caches know it by, and for an update the fields it set.
pub struct KeyChange<'a> {
    pub kind: KeyKind,
    pub action: Action,
    pub id: Uuid,
    pub key_hash: Option<&'a [u8]>,
    pub fields: &'a [&'static str],
}

/// After a committed change to a key: every instance's caches drop it (this one at once), and
/// the change is audited on the caller's tenant connection.
pub async fn changed(state: &AppState, db: &mut TenantDb, change: KeyChange<'_>) {
    let KeyChange {
        kind,
        action,
        id,
        key_hash,
        fields,
    } = change;
    if let Some(hash) = key_hash {
        state.cache.invalidate(&kind.invalidation(hash));
    }
    let id = id.to_string();
    let change = Change {
        fields,
        ..Change::of(action, kind.audit_resource(), &id)
    };
    audit::record_committed(&mut db.conn, &db.tenant.actor(), &change).await;
}

/// `DELETE`: a key never used is deleted; a key that ever authenticated, on any instance, is
/// disabled so that its record stays. Either way it stops working at once everywhere.
pub async fn remove(
    state: &AppState,
    db: &mut TenantDb,
    kind: KeyKind,
    id: Uuid,
) -> ApiResult<Response> {
    // Not for the decision (`first_used_at` is), but so that the kept record shows this
    // instance's latest use.
    state.api_keys.flush_last_used().await;
    let mut write = db.catalog_write(state).await?;
    let account = db.tenant.slug.as_str();
    let removal = store::delete_or_disable(&mut write, kind, account, id).await?;
    let answer = write.commit(StatusCode::NO_CONTENT).await?;
    let change = KeyChange {
        kind,
        action: removal.action,
        id,
        key_hash: Some(&removal.key_hash),
        fields: &[],
    };
    changed(state, db, change).await;
    Ok(answer)
}
