//! `/api/v1/widget-keys`: the account's `pk_live_` widget keys, with their origin allowlists
//! and optional agent pin. Any principal of the account may manage them.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::agents;
use crate::audit::Action;
use crate::auth::keys::{KeyKind, last8, new_widget_key};
use crate::auth::origin::Entry;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Tenant, TenantDb};
use crate::json::Json;
use crate::keys::store::{self, Origin, WIDGET_KEY_COLUMNS, WidgetKeyChange};
use crate::keys::{self, KeyChange, WidgetKeyId, created_answer, shown_once};
use crate::model::{PatchFields, check_required_text, non_null, nullable, patch};
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
    /// The key, shown this once; `null` when this answer is an idempotent replay
    /// (`Idempotent-Replayed: true`), which never shows it again.
    #[schema(value_type = Option<String>)]
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

patch!(WidgetKeyPatch {
    name,
    domain_allowlist,
    agent_id,
    disabled
});

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

/// A pin must name an agent of the account.
async fn check_agent(conn: &mut PgConnection, agent: Option<Uuid>) -> ApiResult<()> {
    if let Some(id) = agent {
        if !agents::store::exists(conn, id).await? {
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
    let pool = state.catalog.pool();
    let account = tenant.slug.as_str();
    Ok(Json(
        store::list(pool, KeyKind::Widget, account, WIDGET_KEY_COLUMNS).await?,
    ))
}

/// Create a widget key. The key is in this answer only.
#[utoipa::path(post, path = "/widget-keys", tag = "widget", operation_id = "create_widget_key", request_body = WidgetKeyCreate,
    responses((status = 201, description = "Created; `key` is shown this once", body = WidgetKeyCreated)))]
pub async fn create(
    State(state): State<AppState>,
    mut db: TenantDb,
    Json(body): Json<WidgetKeyCreate>,
) -> ApiResult<Response> {
    check_required_text("name", &body.name, 200)?;
    let allowlist = normalize_allowlist(&body.domain_allowlist)?;
    check_agent(&mut db.conn, body.agent_id).await?;
    let account = db.tenant.slug.as_str();
    let key = new_widget_key(account);
    let created = WidgetKeyCreated {
        id: Uuid::now_v7(),
        name: body.name.trim().to_owned(),
        last8: last8(&key),
        domain_allowlist: allowlist,
        agent_id: body.agent_id,
        created_at: Utc::now(),
        key,
    };
    let origin = Origin {
        account,
        key_hash: &state.api_keys.hasher().hash(&created.key),
        created_by: &db.tenant.principal.created_by(),
    };
    let mut write = db.catalog_write(&state).await?;
    store::insert_widget_key(&mut write, &created, origin).await?;
    let id = created.id;
    let answer = write
        .commit_keeping(created_answer(&created), shown_once(&created))
        .await?;
    let change = KeyChange {
        kind: KeyKind::Widget,
        action: Action::Create,
        id,
        key_hash: None,
        fields: &[],
    };
    keys::changed(&state, &mut db, change).await;
    Ok(answer)
}

/// Change a widget key: name, allowlist, agent pin, or disable it.
#[utoipa::path(patch, path = "/widget-keys/{id}", tag = "widget", operation_id = "update_widget_key", request_body = WidgetKeyPatch,
    params(("id" = Uuid, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = WidgetKeyItem)))]
pub async fn patch(
    State(state): State<AppState>,
    mut db: TenantDb,
    WidgetKeyId(id): WidgetKeyId,
    Json(body): Json<WidgetKeyPatch>,
) -> ApiResult<Response> {
    if let Some(name) = &body.name {
        check_required_text("name", name, 200)?;
    }
    let allowlist = body
        .domain_allowlist
        .as_deref()
        .map(normalize_allowlist)
        .transpose()?;
    if let Some(agent) = body.agent_id {
        check_agent(&mut db.conn, agent).await?;
    }
    let fields = body.fields();
    let change = WidgetKeyChange {
        name: body.name.as_deref().map(str::trim),
        domain_allowlist: allowlist,
        agent_id: body.agent_id,
        disabled: body.disabled,
    };
    let mut write = db.catalog_write(&state).await?;
    let account = db.tenant.slug.as_str();
    let (item, key_hash) = store::update_widget_key(&mut write, account, id, change).await?;
    let answer = write.commit(Json(item)).await?;
    let change = KeyChange {
        kind: KeyKind::Widget,
        action: Action::Update,
        id,
        key_hash: Some(&key_hash),
        fields: &fields,
    };
    keys::changed(&state, &mut db, change).await;
    Ok(answer)
}

/// Delete a widget key: hard-deleted if never used, otherwise disabled.
#[utoipa::path(delete, path = "/widget-keys/{id}", tag = "widget", operation_id = "delete_widget_key",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses((status = 204, description = "Deleted (or disabled, if it was ever used)")))]
pub async fn delete(
    State(state): State<AppState>,
    mut db: TenantDb,
    WidgetKeyId(id): WidgetKeyId,
) -> ApiResult<Response> {
    keys::remove(&state, &mut db, KeyKind::Widget, id).await
}
