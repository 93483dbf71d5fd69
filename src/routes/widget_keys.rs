//! `/api/v1/widget-keys`: the account's `pk_live_` widget keys, with their origin allowlists
//! and optional agent pin. Any principal of the account may manage them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::Action;
use crate::auth::keys::{KeyKind, last8, new_widget_key};
use crate::auth::origin::Entry;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Tenant, TenantDb};
use crate::json::Json;
use crate::model::{check_required_text, non_null, nullable};
use crate::routes::keys::{self, KeyChange};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct WidgetKeyCreate {
    #[schema(example = "Marketing site")]
    pub name: String,
    /// Where the widget may run: `acme.com`, `*.acme.com`, `localhost:*`, `https://acme.com`.
    /// An empty list blocks the key.
    #[schema(example = json!(["acme.com", "*.acme.com"]))]
    pub domain_allowlist: Vec<String>,
    /// Pins the key to one agent.
    pub agent_id: Option<Uuid>,
}

/// A new widget key; `key` is shown this once (lists show `last8`).
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetKeyCreated {
    pub id: Uuid,
    pub name: String,
    pub key: String,
    pub last8: String,
    pub domain_allowlist: Vec<String>,
    pub agent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct WidgetKeyItem {
    pub id: Uuid,
    pub name: String,
    pub last8: String,
    pub domain_allowlist: Vec<String>,
    pub agent_id: Option<Uuid>,
    pub disabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WidgetKeyPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub domain_allowlist: Option<Vec<String>>,
    /// `null` unpins the key.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub agent_id: Option<Option<Uuid>>,
    /// `true` sets `disabled_at`; `false` clears it.
    #[serde(default, deserialize_with = "non_null")]
    pub disabled: Option<bool>,
}

const ITEM_COLUMNS: &str = "id, name, last8, domain_allowlist, agent_id, disabled_at IS NOT NULL AS disabled, \
                            disabled_at, last_used_at, created_at";

/// Validates entries and stores them in their normal spelling.
fn normalize_allowlist(entries: &[String]) -> ApiResult<Vec<String>> {
    if entries.len() > 100 {
        return Err(ApiError::invalid_field(
            "domain_allowlist",
            "may hold at most 100 entries",
        ));
    }
    entries
        .iter()
        .map(|raw| {
            Entry::parse(raw)
                .map(|entry| entry.to_string())
                .map_err(|e| ApiError::invalid_field("domain_allowlist", e))
        })
        .collect()
}

async fn check_agent(conn: &mut PgConnection, agent: Option<Uuid>) -> ApiResult<()> {
    if let Some(id) = agent {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)")
            .bind(id)
            .fetch_one(conn)
            .await?;
        if !exists {
            return Err(ApiError::invalid_field(
                "agent_id",
                "names no agent of this account",
            ));
        }
    }
    Ok(())
}

/// The account's widget keys (without the keys themselves).
#[utoipa::path(get, path = "/widget-keys", tag = "widget", operation_id = "list_widget_keys",
    responses((status = 200, description = "Widget keys, newest first", body = Vec<WidgetKeyItem>)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
) -> ApiResult<Json<Vec<WidgetKeyItem>>> {
    Ok(Json(
        keys::list(&state, KeyKind::Widget, &tenant, ITEM_COLUMNS).await?,
    ))
}

/// Create a widget key. The key is in this answer only.
#[utoipa::path(post, path = "/widget-keys", tag = "widget", operation_id = "create_widget_key", request_body = WidgetKeyCreate,
    responses((status = 201, description = "Created; `key` is shown this once", body = WidgetKeyCreated)))]
pub async fn create(
    State(state): State<AppState>,
    TenantDb { tenant, mut conn }: TenantDb,
    Json(body): Json<WidgetKeyCreate>,
) -> ApiResult<(StatusCode, Json<WidgetKeyCreated>)> {
    check_required_text("name", &body.name, 200)?;
    let allowlist = normalize_allowlist(&body.domain_allowlist)?;
    check_agent(&mut conn, body.agent_id).await?;
    let key = new_widget_key(tenant.slug.as_str());
    let now = Utc::now();
    let created = WidgetKeyCreated {
        id: Uuid::now_v7(),
        name: body.name.trim().to_owned(),
        last8: last8(&key),
        domain_allowlist: allowlist,
        agent_id: body.agent_id,
        created_at: now,
        key,
    };
    sqlx::query(
        "INSERT INTO widget_keys (id, account, name, key_hash, last8, domain_allowlist, agent_id, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(created.id)
    .bind(tenant.slug.as_str())
    .bind(&created.name)
    .bind(&state.api_keys.hasher().hash(&created.key)[..])
    .bind(&created.last8)
    .bind(&created.domain_allowlist)
    .bind(created.agent_id)
    .bind(format!("{}:{}", tenant.principal.kind(), tenant.principal.id()))
    .bind(now)
    .execute(state.catalog.pool())
    .await?;
    let change = KeyChange {
        kind: KeyKind::Widget,
        action: Action::Create,
        id: created.id,
        key_hash: None,
    };
    keys::changed(&state, &tenant, Some(&mut conn), change).await;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Change a widget key: name, allowlist, agent pin, or disable it.
#[utoipa::path(patch, path = "/widget-keys/{id}", tag = "widget", operation_id = "update_widget_key", request_body = WidgetKeyPatch,
    params(("id" = Uuid, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = WidgetKeyItem)))]
pub async fn patch(
    State(state): State<AppState>,
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<WidgetKeyPatch>,
) -> ApiResult<Json<WidgetKeyItem>> {
    let id = KeyKind::Widget.parse_id(&id)?;
    if let Some(name) = &body.name {
        check_required_text("name", name, 200)?;
    }
    let allowlist = body
        .domain_allowlist
        .as_deref()
        .map(normalize_allowlist)
        .transpose()?;
    if let Some(agent) = body.agent_id {
        check_agent(&mut conn, agent).await?;
    }
    #[derive(sqlx::FromRow)]
    struct Updated {
        #[sqlx(flatten)]
        item: WidgetKeyItem,
        key_hash: Vec<u8>,
    }
    let updated: Updated = sqlx::query_as(&format!(
        "UPDATE widget_keys SET name = COALESCE($3, name),
             domain_allowlist = COALESCE($4, domain_allowlist),
             agent_id = CASE WHEN $5 THEN $6 ELSE agent_id END,
             disabled_at = CASE WHEN $7::boolean IS NULL THEN disabled_at
                                WHEN $7 THEN COALESCE(disabled_at, now()) ELSE NULL END
         WHERE account = $1 AND id = $2 RETURNING {ITEM_COLUMNS}, key_hash"
    ))
    .bind(tenant.slug.as_str())
    .bind(id)
    .bind(body.name.as_deref().map(str::trim))
    .bind(allowlist)
    .bind(body.agent_id.is_some())
    .bind(body.agent_id.flatten())
    .bind(body.disabled)
    .fetch_optional(state.catalog.pool())
    .await?
    .ok_or_else(|| KeyKind::Widget.not_found())?;
    let change = KeyChange {
        kind: KeyKind::Widget,
        action: Action::Update,
        id,
        key_hash: Some(&updated.key_hash),
    };
    keys::changed(&state, &tenant, Some(&mut conn), change).await;
    Ok(Json(updated.item))
}

/// Delete a widget key: hard-deleted if never used, otherwise disabled.
#[utoipa::path(delete, path = "/widget-keys/{id}", tag = "widget", operation_id = "delete_widget_key",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses((status = 204, description = "Deleted (or disabled, if it was ever used)")))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    keys::remove(&state, &tenant, KeyKind::Widget, &id).await
}
