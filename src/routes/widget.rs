//! The public widget endpoints (`/api/v1/widget/…`) and `/.well-known/jwks.json`.
//!
//! These are called cross-origin from customers' pages, so CORS is permissive by design (any
//! origin is echoed); the security boundary is in the handlers: the widget key must be known
//! and enabled, and the page's `Origin` (else `Referer`) must be on the key's allowlist.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::api_keys::KeyRejection;
use crate::auth::keys::{random_secret, widget_key_account};
use crate::auth::origin::{is_allowed, request_origin};
use crate::auth::widget_keys::WidgetKeyRecord;
use crate::auth::widget_session::{REFRESH_GRACE_SECS, SessionClaims, SessionKind};
use crate::error::{ApiError, ApiResult};
use crate::extract::ClientIp;
use crate::json::Json;
use crate::limits::ClientLimit;
use crate::model::agents::{AgentStatus, AuthMode, WidgetAuthMode};
use crate::model::{check_required_text, check_text};
use crate::query::Query;
use crate::routes::widget_settings::{WidgetSettings, load_settings};
use crate::state::AppState;
use crate::tenancy::catalog::{Account, AccountStatus};
use crate::tenancy::slug::AccountSlug;

/// How long a server-minted user token may wait to be exchanged.
pub const USER_TOKEN_TTL_SECS: i64 = 300;

/// A verified widget key, its account, and the origin it was used from.
struct Caller {
    key: WidgetKeyRecord,
    account: Account,
}

/// Checks a widget key, the request's origin, then the key's quota. The order matters: an
/// unknown key says nothing about origins, and nothing here opens the tenant database.
async fn check_key(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientIp,
    client_key: &str,
) -> ApiResult<Caller> {
    let account = widget_key_account(client_key).map_err(|_| ApiError::InvalidClientKey)?;
    let slug = AccountSlug::parse(account).map_err(|_| ApiError::InvalidClientKey)?;
    let key = state
        .cache
        .widget_key(&state.api_keys.hasher().hash(client_key))
        .await?
        .filter(|k| k.account == slug.as_str() && k.disabled_at.is_none())
        .ok_or(ApiError::InvalidClientKey)?;
    // Pages on other origins are refused before they can spend the key's quota.
    check_origin(headers, &key.domain_allowlist)?;
    charge_key(state, key.id, client)?;
    let account = active_account(state, &slug).await?;
    state.api_keys.touch_widget_key(key.id);
    Ok(Caller { key, account })
}

/// Charges a request to a widget key's quota, and first to this client's share of it, so that
/// one client (a script that sends an allowed `Origin`) cannot spend the quota of every
/// visitor of the site.
fn charge_key(state: &AppState, key: Uuid, ClientIp(client): ClientIp) -> ApiResult<()> {
    let refused = |retry_after_secs| {
        state.metrics.rate_limited(ClientLimit::ClientKey.name());
        ApiError::ClientRateLimited {
            limit: ClientLimit::ClientKey,
            retry_after_secs,
        }
    };
    if let Some(ip) = client {
        state
            .widget
            .key_ip_limiter
            .check(&(key, ip))
            .map_err(refused)?;
    }
    state.widget.key_limiter.check(&key).map_err(refused)
}

/// The request's origin (`Origin`, else the origin of `Referer`) must be on the allowlist.
fn check_origin(headers: &HeaderMap, allowlist: &[String]) -> ApiResult<()> {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = request_origin(header(header::ORIGIN), header(header::REFERER))
        .ok_or(ApiError::OriginNotAllowed)?;
    if is_allowed(allowlist, &origin) {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed)
    }
}

/// The widget key's account, which must exist and be active.
async fn active_account(state: &AppState, slug: &AccountSlug) -> ApiResult<Account> {
    let account = state
        .cache
        .account(slug)
        .await?
        .ok_or(ApiError::InvalidClientKey)?;
    if account.status == AccountStatus::Suspended {
        return Err(ApiError::AccountSuspended);
    }
    Ok(account)
}

/// What the widget needs to know of an agent.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct WidgetAgent {
    pub id: Uuid,
    pub name: String,
    pub greeting_message: String,
    #[serde(skip)]
    #[sqlx(default)]
    status: Option<AgentStatus>,
    #[serde(skip)]
    #[sqlx(default)]
    auth_mode: Option<AuthMode>,
    #[serde(skip)]
    #[sqlx(default)]
    widget_enabled: Option<bool>,
    #[serde(skip)]
    #[sqlx(default)]
    widget_auth_mode: Option<WidgetAuthMode>,
    /// The session kinds this agent accepts from the widget: `guest`, `user`.
    #[sqlx(skip)]
    pub auth_modes: Vec<SessionKind>,
}

impl WidgetAgent {
    /// Whether a `kind` session may talk to this agent (SPEC §5): the agent is active and
    /// widget-enabled, its widget mode allows the kind, and guests need a public agent.
    fn allows(&self, kind: SessionKind) -> bool {
        let offered = self.status == Some(AgentStatus::Active) && self.widget_enabled == Some(true);
        let mode = self.widget_auth_mode.unwrap_or_default();
        offered
            && match kind {
                SessionKind::Guest => {
                    matches!(mode, WidgetAuthMode::Guest | WidgetAuthMode::Both)
                        && self.auth_mode == Some(AuthMode::Public)
                }
                SessionKind::User => matches!(mode, WidgetAuthMode::User | WidgetAuthMode::Both),
            }
    }

    fn with_modes(mut self) -> Self {
        self.auth_modes = [SessionKind::Guest, SessionKind::User]
            .into_iter()
            .filter(|k| self.allows(*k))
            .collect();
        self
    }
}

const AGENT_COLUMNS: &str =
    "id, name, greeting_message, status, auth_mode, widget_enabled, widget_auth_mode";

async fn load_agent(conn: &mut PgConnection, id: Uuid) -> ApiResult<Option<WidgetAgent>> {
    Ok(sqlx::query_as::<_, WidgetAgent>(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .map(WidgetAgent::with_modes))
}

/// The agent a request is about: the key's pinned agent, else the requested one. A request for
/// another agent than the pinned one, or for an agent the widget does not offer, is refused.
async fn chosen_agent(
    conn: &mut PgConnection,
    key: &WidgetKeyRecord,
    requested: Option<Uuid>,
) -> ApiResult<Option<WidgetAgent>> {
    let id = match (key.agent_id, requested) {
        (Some(pinned), Some(asked)) if pinned != asked => {
            return Err(ApiError::WidgetNotAllowed(
                "this widget key is pinned to another agent",
            ));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Ok(None),
    };
    let agent = load_agent(conn, id)
        .await?
        .filter(|a| a.status == Some(AgentStatus::Active) && a.widget_enabled == Some(true))
        .ok_or(ApiError::WidgetNotAllowed(
            "this agent is not available in the widget",
        ))?;
    Ok(Some(agent))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// The widget key (`pk_live_…`).
    pub client_key: String,
    pub agent_id: Option<Uuid>,
}

/// The widget's configuration: branding, and the agent (pinned or requested) or the list of
/// agents the widget offers.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetConfig {
    pub account: String,
    pub branding: WidgetSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<WidgetAgent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<WidgetAgent>>,
}

#[utoipa::path(get, path = "/api/v1/widget/config", tag = "widget", operation_id = "widget_config", security(()),
    params(ConfigQuery),
    responses((status = 200, description = "Configuration", body = WidgetConfig),
              (status = 401, description = "`invalid_client_key`", body = crate::error::ErrorBody),
              (status = 403, description = "`origin_not_allowed` or `widget_not_allowed`", body = crate::error::ErrorBody)))]
pub async fn config(
    State(state): State<AppState>,
    client: ClientIp,
    headers: HeaderMap,
    Query(q): Query<ConfigQuery>,
) -> ApiResult<Json<WidgetConfig>> {
    let caller = check_key(&state, &headers, client, &q.client_key).await?;
    let mut conn = state.pools.acquire(&caller.account).await?;
    let branding = load_settings(&mut conn).await?;
    let agent = chosen_agent(&mut conn, &caller.key, q.agent_id).await?;
    let agents = match agent {
        Some(_) => None,
        None => Some(
            sqlx::query_as::<_, WidgetAgent>(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE status = 'active' AND widget_enabled
                 ORDER BY created_at DESC, id DESC"
            ))
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(WidgetAgent::with_modes)
            .collect(),
        ),
    };
    Ok(Json(WidgetConfig {
        account: caller.account.slug,
        branding,
        agent,
        agents,
    }))
}

/// A session token.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionToken {
    pub token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

fn session(
    state: &AppState,
    caller_account: &str,
    agent: Uuid,
    kind: SessionKind,
    sub: String,
    key: Uuid,
) -> ApiResult<Json<SessionToken>> {
    let (token, expires_in) = state
        .widget
        .sessions
        .mint(caller_account, agent, kind, sub, key)
        .map_err(ApiError::Internal)?;
    Ok(Json(SessionToken {
        token,
        token_type: "Bearer",
        expires_in,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct GuestRequest {
    pub client_key: String,
    /// Required unless the key is pinned to an agent.
    pub agent_id: Option<Uuid>,
}

/// A guest session, for agents that allow guests.
#[utoipa::path(post, path = "/api/v1/widget/auth/guest", tag = "widget", operation_id = "widget_guest", security(()),
    request_body = GuestRequest,
    responses((status = 200, description = "Guest session", body = SessionToken),
              (status = 401, description = "`invalid_client_key`", body = crate::error::ErrorBody),
              (status = 403, description = "`origin_not_allowed` or `widget_not_allowed`", body = crate::error::ErrorBody)))]
pub async fn guest(
    State(state): State<AppState>,
    client: ClientIp,
    headers: HeaderMap,
    Json(body): Json<GuestRequest>,
) -> ApiResult<Json<SessionToken>> {
    let caller = check_key(&state, &headers, client, &body.client_key).await?;
    let mut conn = state.pools.acquire(&caller.account).await?;
    let agent = chosen_agent(&mut conn, &caller.key, body.agent_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_field(
                "agent_id",
                "is required: this widget key is not pinned to an agent",
            )
        })?;
    if !agent.allows(SessionKind::Guest) {
        return Err(ApiError::WidgetNotAllowed(
            "this agent does not accept guests",
        ));
    }
    session(
        &state,
        &caller.account.slug,
        agent.id,
        SessionKind::Guest,
        format!("guest:{}", Uuid::now_v7()),
        caller.key.id,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UserTokenRequest {
    /// Your identifier of the signed-in user (1–255 characters).
    #[schema(min_length = 1, max_length = 255)]
    pub external_user_id: String,
    /// At most 200 characters.
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
    /// At most 254 characters.
    #[schema(max_length = 254)]
    pub email: Option<String>,
    pub agent_id: Option<Uuid>,
}

/// User tokens of one account waiting to be exchanged, at most (about: concurrent mints may
/// pass it by a few).
pub const MAX_PENDING_USER_TOKENS: i64 = 1_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct UserToken {
    /// Single use; hand it to the widget, which exchanges it within `expires_in` seconds.
    pub user_token: String,
    pub expires_in: i64,
}

/// Server to server (`Authorization: Bearer sk_live_…`): a single-use token for one of your
/// signed-in users, to be exchanged by the widget for a user session. Counts against the
/// account's request limits like any API request; at most 1,000 tokens per account may wait to
/// be exchanged.
#[utoipa::path(post, path = "/api/v1/widget/auth/user-token", tag = "widget", operation_id = "widget_user_token",
    security(("api_key" = [])), request_body = UserTokenRequest,
    responses((status = 200, description = "User token", body = UserToken),
              (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
              (status = 403, description = "`account_suspended`", body = crate::error::ErrorBody)))]
pub async fn user_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<UserTokenRequest>,
) -> ApiResult<Json<UserToken>> {
    let key = crate::extract::bearer(&headers)
        .ok()
        .flatten()
        .ok_or(ApiError::Unauthenticated("an sk_live_ API key is required"))?;
    let principal = state
        .api_keys
        .verify(key, &state.cache)
        .await
        .map_err(|e| match e {
            KeyRejection::Refused(r) => {
                state.metrics.auth_failure(r.reason);
                ApiError::Unauthenticated("an sk_live_ API key is required")
            }
            KeyRejection::Unavailable(e) => e.into(),
        })?;
    let account = principal
        .bound_account()
        .cloned()
        .ok_or(ApiError::Unauthenticated("an sk_live_ API key is required"))?;
    // A suspended account mints nothing.
    active_account(&state, &account).await?;
    check_required_text("external_user_id", &body.external_user_id, 255)?;
    check_text(
        "display_name",
        body.display_name.as_deref().unwrap_or(""),
        200,
    )?;
    check_text("email", body.email.as_deref().unwrap_or(""), 254)?;
    // Like any request of the account: its limits apply, and `0` stops the minting.
    let _admitted = crate::extract::admit(&state, &account).await?;
    let token = random_secret(crate::auth::keys::USER_TOKEN_PREFIX, 40);
    let minted = sqlx::query(
        "INSERT INTO widget_user_tokens (token_hash, account, external_user_id, display_name, email, agent_id, expires_at)
         SELECT $1, $2, $3, $4, $5, $6, $7
         WHERE (SELECT count(*) FROM widget_user_tokens
                WHERE account = $2 AND consumed_at IS NULL AND expires_at > now()) < $8",
    )
    .bind(&state.api_keys.hasher().hash(&token)[..])
    .bind(account.as_str())
    .bind(&body.external_user_id)
    .bind(&body.display_name)
    .bind(&body.email)
    .bind(body.agent_id)
    .bind(Utc::now() + Duration::seconds(USER_TOKEN_TTL_SECS))
    .bind(MAX_PENDING_USER_TOKENS)
    .execute(state.catalog.pool())
    .await?;
    if minted.rows_affected() != 1 {
        state.metrics.rate_limited(ClientLimit::UserTokens.name());
        return Err(ApiError::ClientRateLimited {
            limit: ClientLimit::UserTokens,
            retry_after_secs: USER_TOKEN_TTL_SECS as u64,
        });
    }
    Ok(Json(UserToken {
        user_token: token,
        expires_in: USER_TOKEN_TTL_SECS,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ExchangeRequest {
    pub client_key: String,
    pub user_token: String,
}

/// Exchanges a user token (once) for a user session, re-checking the key, the origin and the
/// agent's policy first.
#[utoipa::path(post, path = "/api/v1/widget/auth/exchange", tag = "widget", operation_id = "widget_exchange", security(()),
    request_body = ExchangeRequest,
    responses((status = 200, description = "User session", body = SessionToken),
              (status = 401, description = "`invalid_client_key`, or the user token is unknown, used, expired or of another account", body = crate::error::ErrorBody),
              (status = 403, description = "`origin_not_allowed` or `widget_not_allowed`", body = crate::error::ErrorBody)))]
pub async fn exchange(
    State(state): State<AppState>,
    client: ClientIp,
    headers: HeaderMap,
    Json(body): Json<ExchangeRequest>,
) -> ApiResult<Json<SessionToken>> {
    let caller = check_key(&state, &headers, client, &body.client_key).await?;
    let refused = || ApiError::Unauthenticated("the user token is unknown, used or expired");
    let hash = state.api_keys.hasher().hash(&body.user_token);
    let pending: Option<(String, Option<Uuid>)> = sqlx::query_as(
        "SELECT external_user_id, agent_id FROM widget_user_tokens
         WHERE token_hash = $1 AND account = $2 AND consumed_at IS NULL AND expires_at > now()",
    )
    .bind(&hash[..])
    .bind(&caller.account.slug)
    .fetch_optional(state.catalog.pool())
    .await?;
    let (external_user_id, agent_id) = pending.ok_or_else(refused)?;
    let mut conn = state.pools.acquire(&caller.account).await?;
    let agent = chosen_agent(&mut conn, &caller.key, agent_id)
        .await?
        .ok_or_else(|| {
            ApiError::WidgetNotAllowed("no agent: pin the widget key or name one in the user token")
        })?;
    if !agent.allows(SessionKind::User) {
        return Err(ApiError::WidgetNotAllowed(
            "this agent does not accept signed-in users",
        ));
    }
    // Consume it: exactly one exchange wins, on any instance.
    let consumed = sqlx::query(
        "UPDATE widget_user_tokens SET consumed_at = now()
         WHERE token_hash = $1 AND account = $2 AND consumed_at IS NULL AND expires_at > now()",
    )
    .bind(&hash[..])
    .bind(&caller.account.slug)
    .execute(state.catalog.pool())
    .await?;
    if consumed.rows_affected() != 1 {
        return Err(refused());
    }
    session(
        &state,
        &caller.account.slug,
        agent.id,
        SessionKind::User,
        format!("user:{external_user_id}"),
        caller.key.id,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub token: String,
}

/// A fresh session with the same identity, accepted up to 5 minutes after expiry; refused if
/// the widget key was disabled or the agent's policy no longer allows the session. Each session
/// token can be refreshed once (refresh the new one next time), and a refresh counts against
/// the widget key's quota.
#[utoipa::path(post, path = "/api/v1/widget/auth/refresh", tag = "widget", operation_id = "widget_refresh", security(()),
    request_body = RefreshRequest,
    responses((status = 200, description = "Fresh session", body = SessionToken),
              (status = 401, description = "Not a valid session token, or its widget key is disabled", body = crate::error::ErrorBody),
              (status = 403, description = "`origin_not_allowed` or `widget_not_allowed`", body = crate::error::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientIp,
    headers: HeaderMap,
    Json(body): Json<RefreshRequest>,
) -> ApiResult<Json<SessionToken>> {
    let claims: SessionClaims = state
        .widget
        .sessions
        .verify_for_refresh(&body.token)
        .await
        .ok_or(ApiError::Unauthenticated("not a valid widget session"))?;
    let key = crate::auth::widget_keys::load_by_id(state.catalog.pool(), claims.wk).await?;
    let key = key
        .filter(|k| k.disabled_at.is_none() && k.account == claims.acct)
        .ok_or(ApiError::InvalidClientKey)?;
    check_origin(&headers, &key.domain_allowlist)?;
    charge_key(&state, key.id, client)?;
    let slug = AccountSlug::parse(&claims.acct).map_err(|_| ApiError::InvalidClientKey)?;
    let account = active_account(&state, &slug).await?;
    let mut conn = state.pools.acquire(&account).await?;
    let agent = chosen_agent(&mut conn, &key, Some(claims.agent_id)).await?;
    drop(conn);
    if !agent.is_some_and(|a| a.allows(claims.kind)) {
        return Err(ApiError::WidgetNotAllowed(
            "the agent's widget policy changed",
        ));
    }
    // Last, so that a refused refresh does not use the token up: exactly one refresh of each
    // token wins, on any instance.
    let first = sqlx::query(
        "INSERT INTO widget_refreshes (jti, expires_at) VALUES ($1, to_timestamp($2))
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(claims.jti)
    .bind((claims.exp + REFRESH_GRACE_SECS as i64) as f64)
    .execute(state.catalog.pool())
    .await?;
    if first.rows_affected() != 1 {
        return Err(ApiError::Unauthenticated(
            "this session was refreshed already; refresh the newest token",
        ));
    }
    session(
        &state,
        &claims.acct,
        claims.agent_id,
        claims.kind,
        claims.sub,
        key.id,
    )
}

/// The public keys of widget session tokens (for the voice gateway and other verifiers).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "widget", operation_id = "widget_jwks", security(()),
    responses((status = 200, description = "JWK set", body = std::collections::HashMap<String, serde_json::Value>)))]
pub async fn jwks(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    // Another instance may have rotated the key: re-read the keys at most once a minute.
    state
        .widget
        .sessions
        .keys()
        .reload_if_older(std::time::Duration::from_secs(60))
        .await;
    let jwks = state.widget.sessions.keys().jwks();
    Ok(Json(
        serde_json::to_value(jwks).map_err(|e| ApiError::Internal(e.into()))?,
    ))
}
