//! The public widget endpoints (`/api/v1/widget/…`) and `/.well-known/jwks.json`.
//!
//! These are called cross-origin from customers' pages, so CORS is permissive by design (any
//! origin is echoed); the security boundary is in the handlers: the widget key must be known
//! and enabled, and the page's `Origin` (else `Referer`) must be on the key's allowlist.

use axum::extract::{FromRequest, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::agents::model::{AgentStatus, AuthMode, WidgetAuthMode};
use crate::auth::keys::{random_secret, widget_key_account};
use crate::auth::origin::{RequestOrigin, is_allowed, request_origin};
use crate::auth::widget_keys::WidgetKeyRecord;
use crate::auth::widget_session::{REFRESH_GRACE_SECS, SessionClaims, SessionKind};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiKeyCaller, ClientIp, unsuspended_account};
use crate::json::Json;
use crate::limits::ClientLimit;
use crate::model::{check_required_text, check_text};
use crate::query::Query;
use crate::routes::widget_settings::{WidgetSettings, load_settings};
use crate::state::AppState;
use crate::tenancy::catalog::Account;
use crate::tenancy::pools::TenantConn;
use crate::tenancy::slug::AccountSlug;

/// How long a server-minted user token may wait to be exchanged.
pub const USER_TOKEN_TTL_SECS: i64 = 300;

/// A widget key in good standing and its account: the widget pipeline (SPEC §5) passed, in
/// this order, each step refusing before the next runs:
///
/// 1. the key is known, enabled and of the account it names (401 `invalid_client_key`; an
///    unknown key says nothing about origins);
/// 2. the page's origin is on the key's allowlist (403 `origin_not_allowed`), before it can
///    spend the key's quota;
/// 3. the key's quota, and first this client's share of it (429 `rate_limited`);
/// 4. the account exists (401 `invalid_client_key`) and is not suspended (403
///    `account_suspended`);
/// 5. the key's use is noted for `last_used_at`.
///
/// Nothing here opens the tenant database: [`WidgetCaller::connect`] does, afterwards.
pub struct WidgetCaller {
    pub key: WidgetKeyRecord,
    pub account: Account,
}

/// How a widget request names its key: a `pk_live_` key, or the claims of a session token
/// (opened with a key, which a refresh re-checks).
#[derive(Clone, Copy)]
enum KeyName<'a> {
    ClientKey(&'a str),
    Session(&'a SessionClaims),
}

/// What the widget pipeline needs of a request's head, taken before its body is read.
struct Head {
    client: ClientIp,
    origin: Option<RequestOrigin>,
}

impl Head {
    fn of(parts: &Parts, state: &AppState) -> Self {
        let header =
            |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            client: ClientIp::of(parts, state),
            origin: request_origin(header(header::ORIGIN), header(header::REFERER)),
        }
    }
}

impl WidgetCaller {
    /// Runs the widget pipeline for the key `name` names.
    async fn check(state: &AppState, head: Head, name: KeyName<'_>) -> ApiResult<Self> {
        // Step 1: a client key's format and account are checked before any lookup.
        let account = match name {
            KeyName::ClientKey(client_key) => {
                widget_key_account(client_key).map_err(|_| ApiError::InvalidClientKey)?
            }
            KeyName::Session(claims) => &claims.acct,
        };
        let slug = AccountSlug::parse(account).map_err(|_| ApiError::InvalidClientKey)?;
        let key = match name {
            KeyName::ClientKey(client_key) => {
                let hash = state.api_keys.hasher().hash(client_key);
                state.cache.widget_key(&hash).await?
            }
            KeyName::Session(claims) => {
                crate::auth::widget_keys::load_by_id(state.catalog.pool(), claims.wk).await?
            }
        };
        let key = key
            .filter(|k| k.account == slug.as_str() && k.disabled_at.is_none())
            .ok_or(ApiError::InvalidClientKey)?;
        // Step 2.
        let origin = head.origin.ok_or(ApiError::OriginNotAllowed)?;
        if !is_allowed(&key.domain_allowlist, &origin) {
            return Err(ApiError::OriginNotAllowed);
        }
        // Step 3.
        charge_key(state, key.id, head.client)?;
        // Step 4.
        let account = unsuspended_account(state, &slug)
            .await?
            .ok_or(ApiError::InvalidClientKey)?;
        // Step 5.
        state.api_keys.touch_widget_key(key.id);
        Ok(Self { key, account })
    }

    /// A connection to the key's account database: the only way the widget endpoints reach
    /// one, after the pipeline passed.
    async fn connect(&self, state: &AppState) -> ApiResult<TenantConn> {
        Ok(state.pools.acquire(&self.account).await?)
    }
}

/// Inputs (a query or a body) that carry a widget key as `client_key`.
pub trait CarriesClientKey {
    fn client_key(&self) -> &str;
}

impl<T: CarriesClientKey> CarriesClientKey for Json<T> {
    fn client_key(&self) -> &str {
        self.0.client_key()
    }
}

impl<T: CarriesClientKey> CarriesClientKey for Query<T> {
    fn client_key(&self) -> &str {
        self.0.client_key()
    }
}

/// A widget request made with the `pk_live_` key its input carries: the input `E` (`Json<…>`
/// or `Query<…>`) and the [`WidgetCaller`] of the key.
///
/// One extractor over the whole request rather than a caller extractor next to a body
/// extractor: the key is in the body, which can be read only once, so the body is parsed here,
/// once, and handed to the handler with the caller. The input is parsed first, as the handlers
/// always did: a malformed request answers 400 before any check of the key.
pub struct WidgetCall<E> {
    pub caller: WidgetCaller,
    pub input: E,
}

/// Reads a widget request: its head, then its input `E`.
async fn read<E, M>(req: Request, state: &AppState) -> ApiResult<(Head, E)>
where
    E: FromRequest<AppState, M, Rejection = ApiError>,
{
    let (parts, body) = req.into_parts();
    let head = Head::of(&parts, state);
    let input = E::from_request(Request::from_parts(parts, body), state).await?;
    Ok((head, input))
}

impl<E, M> FromRequest<AppState, M> for WidgetCall<E>
where
    E: FromRequest<AppState, M, Rejection = ApiError> + CarriesClientKey + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let (head, input) = read::<E, M>(req, state).await?;
        let name = KeyName::ClientKey(input.client_key());
        let caller = WidgetCaller::check(state, head, name).await?;
        Ok(Self { caller, input })
    }
}

/// A refresh (`{ token }`): the session token's verified claims and the [`WidgetCaller`] of
/// the key the session was opened with, through the same pipeline as [`WidgetCall`] (the key
/// is named by the claims instead of a `client_key`). Parsed the same way: body first.
pub struct RefreshCall {
    pub caller: WidgetCaller,
    pub claims: SessionClaims,
}

impl FromRequest<AppState> for RefreshCall {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let (head, Json(body)) = read::<Json<RefreshRequest>, _>(req, state).await?;
        let claims = state
            .widget
            .sessions
            .verify_for_refresh(&body.token)
            .await
            .ok_or(ApiError::Unauthenticated("not a valid widget session"))?;
        let caller = WidgetCaller::check(state, head, KeyName::Session(&claims)).await?;
        Ok(Self { caller, claims })
    }
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
    let pending: Option<(String, Option<Uuid>)> = sqlx::query_as(
        "SELECT external_user_id, agent_id FROM widget_user_tokens
         WHERE token_hash = $1 AND account = $2 AND consumed_at IS NULL AND expires_at > now()",
    )
    .bind(&hash[..])
    .bind(&caller.account.slug)
    .fetch_optional(state.catalog.pool())
    .await?;
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
