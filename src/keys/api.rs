//! `/api/v1/api-keys`: the account's `sk_live_` keys. Listing is open to every principal of
//! the account; creating, changing and deleting needs an admin user with `X-Admin: true`
//! (an API key gets 403 `api_key_not_allowed`).

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::Action;
use crate::auth::keys::{KeyKind, last8};
use crate::error::ApiResult;
use crate::extract::{KeyManager, Tenant};
use crate::json::Json;
use crate::keys::store::{self, API_KEY_COLUMNS, Origin};
use crate::keys::{self, ApiKeyId, KeyChange, created_answer, shown_once};
use crate::model::{PatchFields, check_required_text, non_null, patch};
use crate::state::AppState;
use crate::store::StoreResult;

/// How long a new key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
pub enum Expiry {
    #[serde(rename = "never")]
    Never,
    #[serde(rename = "30d")]
    Days30,
    #[default]
    #[serde(rename = "90d")]
    Days90,
    #[serde(rename = "1y")]
    Year,
}

impl std::str::FromStr for Expiry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Self::Never),
            "30d" => Ok(Self::Days30),
            "90d" => Ok(Self::Days90),
            "1y" => Ok(Self::Year),
            other => Err(format!("`{other}`: expected never, 30d, 90d or 1y")),
        }
    }
}

impl Expiry {
    pub fn expires_at(self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Never => None,
            Self::Days30 => Some(from + Duration::days(30)),
            Self::Days90 => Some(from + Duration::days(90)),
            Self::Year => Some(from + Duration::days(365)),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ApiKeyCreate {
    #[schema(example = "CI deploys")]
    pub name: String,
    /// `never`, `30d`, `90d` (default) or `1y`.
    #[serde(default)]
    pub expiry: Expiry,
}

/// A new key. `key` is the plaintext: shown this once, never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: Uuid,
    pub name: String,
    /// The plaintext key, shown this once; `null` when this answer is an idempotent replay
    /// (`Idempotent-Replayed: true`), which never shows it again.
    #[schema(value_type = Option<String>)]
    pub key: String,
    pub last8: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApiKeyItem {
    pub id: Uuid,
    pub name: String,
    pub last8: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled: bool,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ApiKeyPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    /// `true` disables the key at once on every instance; `false` enables it again.
    #[serde(default, deserialize_with = "non_null")]
    pub disabled: Option<bool>,
}

patch!(ApiKeyPatch { name, disabled });

/// Creates a key for `account`; returns the record and the plaintext. Shared with the
/// `api-keys create` command.
pub async fn create_key(
    conn: &mut sqlx::PgConnection,
    hasher: &crate::auth::keys::KeyHasher,
    account: &str,
    name: &str,
    expiry: Expiry,
    created_by: &str,
) -> StoreResult<ApiKeyCreated> {
    let key = hasher.new_api_key(account);
    let now = Utc::now();
    let created = ApiKeyCreated {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        last8: last8(&key),
        expires_at: expiry.expires_at(now),
        created_at: now,
        key,
    };
    let origin = Origin {
        account,
        key_hash: &hasher.hash(&created.key),
        created_by,
    };
    store::insert_api_key(conn, &created, origin).await?;
    Ok(created)
}

/// The account's API keys (without the keys themselves).
#[utoipa::path(get, path = "/api-keys", tag = "api-keys", operation_id = "list_api_keys",
    responses((status = 200, description = "API keys, newest first", body = Vec<ApiKeyItem>)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
) -> ApiResult<Json<Vec<ApiKeyItem>>> {
    let pool = state.catalog.pool();
    let account = tenant.slug.as_str();
    Ok(Json(
        store::list(pool, KeyKind::Api, account, API_KEY_COLUMNS).await?,
    ))
}

/// Admin only (users): create a key. The plaintext is in this answer only.
#[utoipa::path(post, security(("bearer" = [], "account" = [], "admin" = [])), path = "/api-keys", tag = "api-keys", operation_id = "create_api_key", request_body = ApiKeyCreate,
    responses((status = 201, description = "Created; `key` is shown this once", body = ApiKeyCreated)))]
pub async fn create(
    State(state): State<AppState>,
    KeyManager(mut db): KeyManager,
    Json(body): Json<ApiKeyCreate>,
) -> ApiResult<Response> {
    check_required_text("name", &body.name, 200)?;
    let created_by = db.tenant.principal.created_by();
    let mut write = db.catalog_write(&state).await?;
    let created = create_key(
        &mut write,
        state.api_keys.hasher(),
        db.tenant.slug.as_str(),
        body.name.trim(),
        body.expiry,
        &created_by,
    )
    .await?;
    let id = created.id;
    let answer = write
        .commit_keeping(created_answer(&created), shown_once(&created))
        .await?;
    let change = KeyChange {
        kind: KeyKind::Api,
        action: Action::Create,
        id,
        key_hash: None,
        fields: &[],
    };
    keys::changed(&state, &mut db, change).await;
    Ok(answer)
}

/// Admin only (users): rename, disable or enable a key.
#[utoipa::path(patch, security(("bearer" = [], "account" = [], "admin" = [])), path = "/api-keys/{id}", tag = "api-keys", operation_id = "update_api_key", request_body = ApiKeyPatch,
    params(("id" = Uuid, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = ApiKeyItem)))]
pub async fn patch(
    State(state): State<AppState>,
    KeyManager(mut db): KeyManager,
    ApiKeyId(id): ApiKeyId,
    Json(body): Json<ApiKeyPatch>,
) -> ApiResult<Response> {
    if let Some(name) = &body.name {
        check_required_text("name", name, 200)?;
    }
    let fields = body.fields();
    let name = body.name.as_deref().map(str::trim);
    let mut write = db.catalog_write(&state).await?;
    let account = db.tenant.slug.as_str();
    let (item, key_hash) =
        store::update_api_key(&mut write, account, id, name, body.disabled).await?;
    let answer = write.commit(Json(item)).await?;
    let change = KeyChange {
        kind: KeyKind::Api,
        action: Action::Update,
        id,
        key_hash: Some(&key_hash),
        fields: &fields,
    };
    keys::changed(&state, &mut db, change).await;
    Ok(answer)
}

/// Admin only (users): delete a key. A key never used is deleted; a key that ever
/// authenticated, on any instance, is disabled, so that its history stays. Either way it stops
/// working at once on every instance.
#[utoipa::path(delete, security(("bearer" = [], "account" = [], "admin" = [])), path = "/api-keys/{id}", tag = "api-keys", operation_id = "delete_api_key",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses((status = 204, description = "Deleted (or disabled, if it was ever used)")))]
pub async fn delete(
    State(state): State<AppState>,
    KeyManager(mut db): KeyManager,
    ApiKeyId(id): ApiKeyId,
) -> ApiResult<Response> {
    keys::remove(&state, &mut db, KeyKind::Api, id).await
}
