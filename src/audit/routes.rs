//! `GET /api/v1/audit-log`: the account's audit log, newest first, for admins (`X-Admin: true`).
//!
//! Pages are keyset pages on `(at, id)`: the cursor is the position of a page's last entry, so
//! entries written while a client walks the pages (they are newer than every page it has read)
//! never shift the entries it has not read yet — no duplicates, no gaps.

use std::collections::HashMap;

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store::{self, After, Filter, Row};
use super::{Action, ActorKind, Resource, retention};
use crate::error::{ApiError, ApiResult};
use crate::extract::Admin;
use crate::json::Json;
use crate::keys::store::api_key_names;
use crate::query::Query;
use crate::state::AppState;

/// The filters and the page: `actor`, `action`, `resource_type`, `resource_id`, `since`
/// (inclusive), `until` (exclusive), `cursor` (the previous page's `next_cursor`), `limit`
/// (1–200, default 50). An empty text filter filters nothing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Who acted: a user's OIDC subject or an API key's id.
    pub actor: Option<String>,
    #[param(inline)]
    pub action: Option<Action>,
    /// The kind of resource changed.
    #[param(inline)]
    pub resource_type: Option<Resource>,
    pub resource_id: Option<String>,
    /// Entries at or after this time (RFC 3339, e.g. `2026-12-01T00:00:00Z`).
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page (opaque).
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 200, default = 50)]
    pub limit: Option<i64>,
}

impl AuditQuery {
    pub const DEFAULT_LIMIT: i64 = 50;
    pub const MAX_LIMIT: i64 = 200;

    fn limit(&self) -> ApiResult<i64> {
        let limit = self.limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_param(
                "limit",
                format_args!("must be between 1 and {}", Self::MAX_LIMIT),
            ));
        }
        Ok(limit)
    }

    fn after(&self) -> ApiResult<Option<After>> {
        self.cursor
            .as_deref()
            .map(|c| {
                decode_cursor(c)
                    .ok_or_else(|| ApiError::invalid_param("cursor", "is not a cursor of this log"))
            })
            .transpose()
    }

    fn filter(&self, retained_since: DateTime<Utc>) -> Filter<'_> {
        Filter {
            actor: non_empty(&self.actor),
            action: self.action,
            resource: self.resource_type,
            resource_id: non_empty(&self.resource_id),
            since: self.since,
            until: self.until,
            retained_since: Some(retained_since),
        }
    }
}

fn non_empty(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|t| !t.is_empty())
}

/// The position of an entry, as an opaque cursor: base64url of its time (microseconds since
/// the epoch, big-endian) and its id.
fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&at.timestamp_micros().to_be_bytes());
    bytes[8..].copy_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(cursor: &str) -> Option<After> {
    let bytes: [u8; 24] = URL_SAFE_NO_PAD.decode(cursor).ok()?.try_into().ok()?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    Some(After {
        at: DateTime::from_timestamp_micros(micros)?,
        id: Uuid::from_slice(&bytes[8..]).ok()?,
    })
}

/// Who made a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditActor {
    #[schema(value_type = ActorKind)]
    pub kind: String,
    /// A user's OIDC subject, an API key's id, or an operator's login name.
    pub id: String,
    /// For a user or an operator: the id again (the subject is all the service knows of a
    /// user). For an API key: its current name, `null` if the key no longer exists.
    pub name: Option<String>,
}

/// One change to the account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: AuditActor,
    #[schema(value_type = Action)]
    pub action: String,
    #[schema(value_type = Resource)]
    pub resource_type: String,
    /// The resource's id (`<agent id>/<tool name>` and the like for links; the subject for a
    /// member; `null` for what is one per account).
    pub resource_id: Option<String>,
    /// The `X-Request-Id` of the request that made the change (`null` from the command line).
    pub request_id: Option<String>,
    /// The client's address (behind trusted proxies).
    pub ip: Option<String>,
    /// The client's `User-Agent`, at most 256 characters.
    pub user_agent: Option<String>,
    /// For an update: the names of the fields it set (never their values). Empty otherwise.
    pub changed_fields: Vec<String>,
}

/// A page of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass it as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Admin only: the account's audit log, newest first, filtered and paged by cursor.
#[utoipa::path(get, security(("bearer" = [], "account" = [], "admin" = [])), operation_id = "list_audit_log", path = "/audit-log", tag = "audit-log",
    params(AuditQuery),
    responses((status = 200, description = "A page of entries, newest first", body = AuditPage)))]
pub async fn list(
    State(state): State<AppState>,
    Admin(mut db): Admin,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = q.limit()?;
    let after = q.after()?;
    let filter = q.filter(retention::cutoff(&state.config));
    let mut rows = store::page(&mut db.conn, &filter, after, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.at, r.id))
    } else {
        None
    };
    let names = key_names(&state, db.tenant.slug.as_str(), &rows).await?;
    let items = rows.into_iter().map(|r| entry(r, &names)).collect();
    Ok(Json(AuditPage { items, next_cursor }))
}

/// The names of the API keys that acted in `rows`.
async fn key_names(
    state: &AppState,
    account: &str,
    rows: &[Row],
) -> ApiResult<HashMap<String, String>> {
    let ids: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.principal_kind.parse() == Ok(ActorKind::ApiKey))
        .filter_map(|r| Uuid::parse_str(&r.principal_id).ok())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let names = api_key_names(state.catalog.pool(), account, &ids).await?;
    Ok(names
        .into_iter()
        .map(|(id, name)| (id.to_string(), name))
        .collect())
}

fn entry(r: Row, key_names: &HashMap<String, String>) -> AuditEntry {
    let name = match r.principal_kind.parse() {
        Ok(ActorKind::User | ActorKind::Operator) => Some(r.principal_id.clone()),
        Ok(ActorKind::ApiKey) => key_names.get(&r.principal_id).cloned(),
        Ok(ActorKind::Widget) | Err(_) => None,
    };
    AuditEntry {
        id: r.id,
        at: r.at,
        actor: AuditActor {
            kind: r.principal_kind,
            id: r.principal_id,
            name,
        },
        action: r.action,
        resource_type: r.resource,
        resource_id: r.resource_id,
        request_id: r.request_id,
        ip: r.ip,
        user_agent: r.user_agent,
        changed_fields: r.fields,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::proptest_config::config(1024))]

        /// A cursor gives back the position it was made of.
        #[test]
        fn a_cursor_round_trips(micros in -62_000_000_000_000_000i64..200_000_000_000_000_000, id in any::<u128>()) {
            let at = DateTime::from_timestamp_micros(micros).unwrap();
            let id = Uuid::from_u128(id);
            prop_assert_eq!(decode_cursor(&encode_cursor(at, id)), Some(After { at, id }));
        }

        /// Any other text is no cursor, and never a panic.
        #[test]
        fn any_text_is_a_cursor_only_by_its_length(text in "\\PC{0,40}") {
            if decode_cursor(&text).is_some() {
                prop_assert_eq!(text.len(), 32);
            }
        }
    }
}
