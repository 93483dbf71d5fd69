//! The public widget endpoints (`/api/v1/widget/…`) and `/.well-known/jwks.json`.
//!
//! These are called cross-origin from customers' pages, so CORS is permissive by design (any
//! origin is echoed); the security boundary is the widget caller (`caller.rs`): the widget key
//! must be known and enabled, and the page's `Origin` (else `Referer`) must be on the key's
//! allowlist.

use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::caller::{CarriesClientKey, RefreshCall, WidgetCall};
use super::settings::WidgetSettings;
use super::store::{self, AgentPolicy, NewUserToken};
use crate::auth::keys::random_secret;
use crate::auth::widget_keys::WidgetKeyRecord;
use crate::auth::widget_session::{REFRESH_GRACE_SECS, SessionKind};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiKeyCaller;
use crate::json::Json;
use crate::limits::ClientLimit;
use crate::model::{check_required_text, check_text};
use crate::query::Query;
use crate::state::AppState;

/// How long a server-minted user token may wait to be exchanged.
pub const USER_TOKEN_TTL_SECS: i64 = 300;

/// What the widget needs to know of an agent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WidgetAgent {
    pub id: Uuid,
    pub name: String,
    pub greeting_message: String,
    /// The session kinds this agent accepts from the widget: `guest`, `user`.
    pub auth_modes: Vec<SessionKind>,
}

impl From<AgentPolicy> for WidgetAgent {
    fn from(agent: AgentPolicy) -> Self {
        let auth_modes = [SessionKind::Guest, SessionKind::User]
            .into_iter()
            .filter(|k| agent.allows(*k))
            .collect();
        Self {
            id: agent.id,
            name: agent.name,
            greeting_message: agent.greeting_message,
            auth_modes,
        }
    }
}

/// The agent a request is about: the key's pinned agent, else the requested one. A request for
/// another agent than the pinned one, or for an agent the widget does not offer, is refused.
async fn chosen_agent(
    conn: &mut PgConnection,
    key: &WidgetKeyRecord,
    requested: Option<Uuid>,
) -> ApiResult<Option<AgentPolicy>> {
    let id = match (key.agent_id, requested) {
        (Some(pinned), Some(asked)) if pinned != asked => {
            return Err(ApiError::WidgetNotAllowed(
                "this widget key is pinned to another agent",
            ));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Ok(None),
    };
    let agent = store::agent(conn, id)
        .await?
        .filter(AgentPolicy::offered)
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

impl CarriesClientKey for ConfigQuery {
    fn client_key(&self) -> &str {
        &self.client_key
    }
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
    WidgetCall {
        caller,
        input: Query(q),
    }: WidgetCall<Query<ConfigQuery>>,
) -> ApiResult<Json<WidgetConfig>> {
    let mut conn = caller.connect(&state).await?;
    let branding = store::settings(&mut conn).await?;
    let agent = chosen_agent(&mut conn, &caller.key, q.agent_id).await?;
    let agents = match agent {
        Some(_) => None,
        None => Some(store::offered_agents(&mut conn).await?),
    };
    let widget_agents = |agents: Vec<AgentPolicy>| agents.into_iter().map(Into::into).collect();
    Ok(Json(WidgetConfig {
        account: caller.account.slug,
        branding,
        agent: agent.map(Into::into),
        agents: agents.map(widget_agents),
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

impl CarriesClientKey for GuestRequest {
    fn client_key(&self) -> &str {
        &self.client_key
    }
}

/// A guest session, for agents that allow guests.
#[utoipa::path(post, path = "/api/v1/widget/auth/guest", tag = "widget", operation_id = "widget_guest", security(()),
    request_body = GuestRequest,
    responses((status = 200, description = "Guest session", body = SessionToken),
              (status = 401, description = "`invalid_client_key`", body = crate::error::ErrorBody),
              (status = 403, description = "`origin_not_allowed` or `widget_not_allowed`", body = crate::error::ErrorBody)))]
pub async fn guest(
    State(state): State<AppState>,
    WidgetCall {
        caller,
        input: Json(body),
    }: WidgetCall<Json<GuestRequest>>,
) -> ApiResult<Json<SessionToken>> {
    let mut conn = caller.connect(&state).await?;
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
    // A suspended account mints nothing.
    let ApiKeyCaller { slug: account, .. } = ApiKeyCaller::from_headers(&state, &headers).await?;
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
    let pending = NewUserToken {
        token_hash: &state.api_keys.hasher().hash(&token),
        account: account.as_str(),
        external_user_id: &body.external_user_id,
        display_name: body.display_name.as_deref(),
        email: body.email.as_deref(),
        agent_id: body.agent_id,
        expires_at: Utc::now() + Duration::seconds(USER_TOKEN_TTL_SECS),
    };
    let pool = state.catalog.pool();
    if !store::mint_user_token(pool, pending, MAX_PENDING_USER_TOKENS).await? {
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

impl CarriesClientKey for ExchangeRequest {
    fn client_key(&self) -> &str {
        &self.client_key
    }
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
    WidgetCall {
        caller,
        input: Json(body),
    }: WidgetCall<Json<ExchangeRequest>>,
) -> ApiResult<Json<SessionToken>> {
    let refused = || ApiError::Unauthenticated("the user token is unknown, used or expired");
    let hash = state.api_keys.hasher().hash(&body.user_token);
    let (pool, account) = (state.catalog.pool(), caller.account.slug.as_str());
    let pending = store::pending_user_token(pool, &hash, account).await?;
    let (external_user_id, agent_id) = pending.ok_or_else(refused)?;
    let mut conn = caller.connect(&state).await?;
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
    if !store::consume_user_token(pool, &hash, account).await? {
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
    RefreshCall { caller, claims }: RefreshCall,
) -> ApiResult<Json<SessionToken>> {
    let mut conn = caller.connect(&state).await?;
    let agent = chosen_agent(&mut conn, &caller.key, Some(claims.agent_id)).await?;
    drop(conn);
    if !agent.is_some_and(|a| a.allows(claims.kind)) {
        return Err(ApiError::WidgetNotAllowed(
            "the agent's widget policy changed",
        ));
    }
    // Last, so that a refused refresh does not use the token up: exactly one refresh of each
    // token wins, on any instance.
    let kept_until = claims.exp + REFRESH_GRACE_SECS as i64;
    if !store::first_refresh(state.catalog.pool(), claims.jti, kept_until).await? {
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
        caller.key.id,
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
