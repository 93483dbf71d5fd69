//! The widget caller: the widget pipeline (SPEC §5) as extractors, run once for every widget
//! endpoint — [`WidgetCall`] for requests that carry a `pk_live_` key, [`RefreshCall`] for
//! refreshes, whose session names the key.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;

use super::routes::RefreshRequest;
use crate::auth::keys::widget_key_account;
use crate::auth::origin::{RequestOrigin, is_allowed, request_origin};
use crate::auth::widget_keys::WidgetKeyRecord;
use crate::auth::widget_session::SessionClaims;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ClientIp, unsuspended_account};
use crate::json::Json;
use crate::limits::ClientLimit;
use crate::query::Query;
use crate::state::AppState;
use crate::tenancy::catalog::Account;
use crate::tenancy::pools::TenantConn;
use crate::tenancy::slug::AccountSlug;

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
                crate::keys::store::load_widget_key_by_id(state.catalog.pool(), claims.wk).await?
            }
        };
        let key = key
            .filter(|k| k.account == slug.as_str() && k.disabled_at.is_none())
            .ok_or(ApiError::InvalidClientKey)?;
        // Step 2.
        let origin = head.origin.ok_or(ApiError::OriginNotAllowed)?;
        if !is_allowed(&key.allowlist, &origin) {
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
    pub async fn connect(&self, state: &AppState) -> ApiResult<TenantConn> {
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
