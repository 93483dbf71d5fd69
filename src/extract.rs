//! Extractors that implement the request pipeline (SPEC §3) in front of protected handlers.
//!
//! `Tenant` runs steps 1–7 in order; `TenantDb` adds a connection to the tenant database and is
//! the only way a handler reaches one — after the caller has been authorized.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

use std::sync::Arc;

use crate::audit::{Actor, Origin};
use crate::auth::Principal;
use crate::auth::api_keys::KeyRejection;
use crate::auth::keys::{API_KEY_PREFIX, api_key_named_account};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{Door, Pending, Store};
use crate::limits::Admission;
use crate::state::AppState;
use crate::store::{CatalogWrite, StoreError, TenantWrite};
use crate::tenancy::catalog::{Account, AccountStatus, Role};
use crate::tenancy::pools::TenantConn;
use crate::tenancy::slug::SYSTEM_DATABASE;
use crate::tenancy::slug::{AccountSlug, SlugError};

pub static X_ACCOUNT_ID: HeaderName = HeaderName::from_static("x-account-id");

/// An authorized caller in an active account (pipeline steps 1–7 passed).
#[derive(Debug, Clone)]
pub struct Tenant {
    pub account: Account,
    pub slug: AccountSlug,
    pub principal: Principal,
    pub role: Role,
    /// The request's place within the account's limits (its in-flight slot is held until the
    /// handler returns).
    pub admitted: Admitted,
    /// Where the request came from, for the audit rows of its changes.
    pub origin: Origin,
}

impl Tenant {
    /// The caller as the audit log records it.
    pub fn actor(&self) -> Actor<'_> {
        Actor::of(&self.principal, &self.origin)
    }
}

/// An admitted request (pipeline step 9 passed).
#[derive(Clone)]
pub struct Admitted {
    _admission: Arc<Admission>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admitted")
    }
}

/// Steps 1–7 passed; limits not applied yet.
struct Authorized {
    account: Account,
    slug: AccountSlug,
    principal: Principal,
    role: Role,
}

/// Step 9: the account's limits. A request refused here consumed nothing; an admitted one
/// holds its in-flight slot until the admission is dropped.
pub async fn admit(state: &AppState, slug: &AccountSlug) -> Result<Admission, ApiError> {
    let limits = state
        .cache
        .limits(slug, &state.config.default_limits())
        .await?;
    state
        .limiter
        .admit(slug.as_str(), &limits)
        .await
        .map_err(|refusal| {
            state.metrics.rate_limited(refusal.dimension.name());
            ApiError::RateLimited(Box::new(refusal))
        })
}

/// The client as the per-client limits count it: the socket's peer, or what trusted proxies
/// report (`KATAVEN_TRUSTED_PROXIES`); an IPv6 client by its network
/// (`KATAVEN_IPV6_PREFIX_LEN`). `None` for requests without connection information.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Self::of(parts, state))
    }
}

impl ClientIp {
    /// The client of a request, from its head.
    pub fn of(parts: &Parts, state: &AppState) -> Self {
        Self(
            state
                .ip_limiter
                .client_ip(&parts.extensions, &parts.headers),
        )
    }
}

impl Authorized {
    /// Step 9: the account's limits. A request refused here consumed nothing.
    async fn admit(self, parts: &mut Parts, state: &AppState) -> Result<Tenant, ApiError> {
        let admission = admit(state, &self.slug).await?;
        if let Some(slot) = parts.extensions.get::<RateLimitHeaders>() {
            let mut headers = HeaderMap::new();
            crate::limits::admitted_headers(&admission, &mut headers);
            *slot.0.lock() = Some(headers);
        }
        Ok(Tenant {
            account: self.account,
            slug: self.slug,
            principal: self.principal,
            role: self.role,
            admitted: Admitted {
                _admission: Arc::new(admission),
            },
            origin: Origin::of(parts, state),
        })
    }
}

/// Where the extractor leaves the `RateLimit` headers of an admitted request for
/// [`rate_limit_headers`] to add to the response.
#[derive(Clone, Default)]
pub struct RateLimitHeaders(Arc<parking_lot::Mutex<Option<HeaderMap>>>);

/// Adds the `RateLimit-Policy` and `RateLimit` headers of admitted requests to their responses.
pub async fn rate_limit_headers(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let slot = RateLimitHeaders::default();
    req.extensions_mut().insert(slot.clone());
    let mut response = next.run(req).await;
    if let Some(headers) = slot.0.lock().take() {
        for (name, value) in headers.iter() {
            response
                .headers_mut()
                .entry(name)
                .or_insert_with(|| value.clone());
        }
    }
    response
}

/// [`Tenant`] plus a connection to its database, returned to the pool when dropped.
pub struct TenantDb {
    pub tenant: Tenant,
    pub conn: TenantConn,
    /// The request's `Idempotency-Key`, for the door of its write.
    keyed: Option<(Arc<Pending>, AppState)>,
}

impl TenantDb {
    /// A connection for a caller whose pipeline has passed (never before: no pool is opened
    /// for a caller who may be refused).
    async fn open(mut tenant: Tenant, parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        // A write waits out the cut-over of a move, then goes to where the account is now.
        if !parts.method.is_safe() && tenant.account.writes_paused() {
            tenant.account = crate::fleet::moves::writable(state, &tenant.slug).await?;
        }
        let conn = state.pools.acquire(&tenant.account).await?;
        let keyed = Pending::of(&parts.extensions).map(|pending| (pending, state.clone()));
        Ok(TenantDb {
            tenant,
            conn,
            keyed,
        })
    }

    /// Begins a change to the tenant database: the one door for writes (see [`TenantWrite`]).
    /// With an `Idempotency-Key`, the door may answer for the handler (a replay, 409, 422).
    pub async fn write(&mut self) -> ApiResult<TenantWrite<'_>> {
        let door = self.keyed.as_ref().map(|(pending, state)| Door {
            pending: pending.clone(),
            store: Store::Tenant(state.clone(), self.tenant.account.clone()),
            owner: self.tenant.principal.created_by(),
        });
        TenantWrite::begin(&mut self.conn, self.tenant.actor(), door).await
    }

    /// Begins a change to the catalog on behalf of this caller (keys, members; see
    /// [`CatalogWrite`]). The key of an idempotent request is the caller's in this account.
    pub async fn catalog_write(&self, state: &AppState) -> ApiResult<CatalogWrite> {
        let door = self.keyed.as_ref().map(|(pending, _)| Door {
            pending: pending.clone(),
            store: Store::Catalog(state.clone()),
            owner: format!(
                "{} {}",
                self.tenant.slug,
                self.tenant.principal.created_by()
            ),
        });
        CatalogWrite::begin(state.catalog.pool(), door).await
    }
}

/// The UUID in the path's `{id}`: what typed path ids (`AgentId`, `ApiKeyId`, …) are made of.
/// Ids are UUIDs; any other text names nothing, so it is a 404 like an unknown UUID ("no such
/// `what`"). Run after the caller's extractor, so that an unauthorized caller learns nothing.
pub async fn path_id(parts: &mut Parts, what: &'static str) -> Result<uuid::Uuid, ApiError> {
    RawPathParams::from_request_parts(parts, &())
        .await
        .ok()
        .and_then(|params| {
            let (_, raw) = params.iter().find(|(name, _)| *name == "id")?;
            uuid::Uuid::parse_str(raw).ok()
        })
        .ok_or_else(|| StoreError::NotFound { what }.into())
}

/// The bearer token of the `Authorization` header. `Err` when the header is present but is not
/// a bearer, so that step 4 refuses it rather than treating it as absent.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?;
    let (scheme, token) = value.split_once(' ').ok_or(())?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(());
    }
    Ok(Some(token))
}

pub fn parse_slug(raw: &str) -> Result<AccountSlug, ApiError> {
    AccountSlug::parse(raw).map_err(|e| match e {
        SlugError::Invalid => ApiError::InvalidAccount(format!("invalid account: {e}")),
        SlugError::Reserved => ApiError::ReservedAccount,
    })
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Authorized::from_request_parts(parts, state)
            .await?
            .admit(parts, state)
            .await
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = bearer(&parts.headers);
        let is_api_key = matches!(bearer, Ok(Some(t)) if t.starts_with(API_KEY_PREFIX));

        // Steps 1–3: the account header, unless an API key carries the account.
        let requested = match parts.headers.get(&X_ACCOUNT_ID) {
            None if is_api_key => None,
            None => return Err(ApiError::MissingAccountHeader),
            Some(value) => {
                let raw = value
                    .to_str()
                    .map_err(|_| ApiError::InvalidAccount("invalid account: not ASCII".into()))?;
                Some(parse_slug(raw)?)
            }
        };
        // Step 3 also covers the account named inside an API key, well-formed or not: a key
        // naming the system database is refused as reserved before it is verified.
        if let Ok(Some(token)) = bearer
            && api_key_named_account(token) == Some(SYSTEM_DATABASE)
        {
            return Err(ApiError::ReservedAccount);
        }

        // Step 4: a valid bearer.
        let token = match bearer {
            Ok(Some(token)) => token,
            Ok(None) => return Err(unauthenticated(state, "missing_bearer")),
            Err(()) => return Err(unauthenticated(state, "malformed_authorization")),
        };
        let principal = if is_api_key {
            api_key_principal(state, token, BEARER_REQUIRED).await?
        } else {
            state
                .identity
                .authenticate(token)
                .await
                .map_err(|rejection| unauthenticated(state, rejection.reason))?
        };

        let slug = match (requested, principal.bound_account()) {
            (Some(slug), _) => slug,
            (None, Some(bound)) => bound.clone(),
            // An API key always names its account; a user token was required to send the header.
            (None, None) => return Err(ApiError::MissingAccountHeader),
        };

        // Steps 5–6: the account exists and is active.
        let account = unsuspended_account(state, &slug)
            .await?
            .ok_or_else(|| ApiError::UnknownAccount(slug.to_string()))?;

        // Step 7: the principal may act in this account.
        let role = authorize(state, &principal, &account, &slug).await?;

        let span = tracing::Span::current();
        span.record("account", slug.as_str());
        span.record("principal_kind", principal.kind());
        span.record("principal_id", principal.id());
        Ok(Authorized {
            account,
            slug,
            principal,
            role,
        })
    }
}

impl FromRequestParts<AppState> for TenantDb {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tenant = Tenant::from_request_parts(parts, state).await?;
        TenantDb::open(tenant, parts, state).await
    }
}

/// What a refused bearer is told by the account pipeline.
const BEARER_REQUIRED: &str = "a valid bearer token is required";

/// What a refused caller of a server-to-server endpoint that takes only API keys is told.
const API_KEY_REQUIRED: &str = "an sk_live_ API key is required";

fn unauthenticated(state: &AppState, reason: &'static str) -> ApiError {
    refused(state, reason, BEARER_REQUIRED)
}

/// A refused bearer: counted under its reason, answered with `message`.
fn refused(state: &AppState, reason: &'static str, message: &'static str) -> ApiError {
    state.metrics.auth_failure(reason);
    tracing::debug!(reason, "bearer refused");
    ApiError::Unauthenticated(message)
}

/// Step 4 for an `sk_live_` bearer: the key's principal. A refused key is counted under its
/// reason and answered with `message`; a catalog that cannot be asked answers 503.
async fn api_key_principal(
    state: &AppState,
    token: &str,
    message: &'static str,
) -> Result<Principal, ApiError> {
    state
        .api_keys
        .verify(token, &state.cache)
        .await
        .map_err(|e| match e {
            KeyRejection::Refused(rejection) => refused(state, rejection.reason, message),
            KeyRejection::Unavailable(e) => e.into(),
        })
}

/// Steps 5–6: the account (`None` when there is none, which each caller answers in its own
/// way), refused with 403 `account_suspended` when it is suspended.
pub(crate) async fn unsuspended_account(
    state: &AppState,
    slug: &AccountSlug,
) -> Result<Option<Account>, ApiError> {
    let account = state.cache.account(slug).await?;
    if account
        .as_ref()
        .is_some_and(|a| a.status == AccountStatus::Suspended)
    {
        return Err(ApiError::AccountSuspended);
    }
    Ok(account)
}

/// A server-to-server caller authenticated by an `sk_live_` key alone (`Authorization: Bearer
/// sk_live_…`; user tokens are refused and `X-Account-ID` is not read), in an existing account
/// that is not suspended. The account's limits are not applied yet (see [`admit`]).
///
/// Built by a function rather than an extractor so that the endpoint parses and checks its
/// body first, as it always has: a malformed body answers 400 before a missing key's 401.
#[derive(Debug, Clone)]
pub struct ApiKeyCaller {
    pub account: Account,
    pub slug: AccountSlug,
}

impl ApiKeyCaller {
    /// The same key verification as step 4 of [`Tenant`] (metrics included); every refusal of
    /// the key answers 401 with [`API_KEY_REQUIRED`], an unknown account 401
    /// `invalid_client_key` and a suspended one 403 `account_suspended`.
    pub async fn from_headers(state: &AppState, headers: &HeaderMap) -> Result<Self, ApiError> {
        let key = bearer(headers)
            .ok()
            .flatten()
            .ok_or(ApiError::Unauthenticated(API_KEY_REQUIRED))?;
        let principal = api_key_principal(state, key, API_KEY_REQUIRED).await?;
        let slug = principal
            .bound_account()
            .cloned()
            .ok_or(ApiError::Unauthenticated(API_KEY_REQUIRED))?;
        let account = unsuspended_account(state, &slug)
            .await?
            .ok_or(ApiError::InvalidClientKey)?;
        Ok(Self { account, slug })
    }
}

/// Step 7: may this principal act in this account, and with which role?
///
/// A user may act when the catalog has a member row for them, or when the account has an OIDC
/// organisation and the token's organisation is it or its roles claim grants any role from it.
/// The user is an admin when the member row says so or the roles claim grants `admin` from the
/// account's organisation. An API key acts in its own account, never as admin.
async fn authorize(
    state: &AppState,
    principal: &Principal,
    account: &Account,
    slug: &AccountSlug,
) -> Result<Role, ApiError> {
    match principal {
        Principal::ApiKey { account: bound, .. } if bound == slug => Ok(Role::Member),
        Principal::ApiKey { .. } => Err(ApiError::AccountMismatch),
        Principal::User {
            subject,
            org_id,
            roles,
            ..
        } => {
            let row = state.cache.member_role(slug, subject).await?;
            let from_claims = account.oidc_org_id.as_deref().and_then(|org| {
                if roles.has("admin", org) {
                    Some(Role::Admin)
                } else if org_id.as_deref() == Some(org) || roles.any_in(org) {
                    Some(Role::Member)
                } else {
                    None
                }
            });
            row.max(from_claims)
                .ok_or(ApiError::Forbidden("you are not a member of this account"))
        }
    }
}

pub static X_ADMIN: HeaderName = HeaderName::from_static("x-admin");

/// `X-Admin: true` (case-insensitive): the explicit elevation of step 8.
fn is_elevated(headers: &HeaderMap) -> bool {
    headers
        .get(&X_ADMIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// An admin acting with explicit elevation (pipeline step 8): an admin principal **and** the
/// header `X-Admin: true`. The header alone grants nothing; neither does the role alone. With a
/// connection to the account's database, opened once the caller is authorized.
pub struct Admin(pub TenantDb);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let authorized = Authorized::from_request_parts(parts, state).await?;
        Ok(Admin(authorized.elevated(parts, state).await?))
    }
}

impl Authorized {
    /// Step 8 and on: an admin acting with `X-Admin: true` (else 403 `admin_required`),
    /// admitted, with a connection.
    async fn elevated(self, parts: &mut Parts, state: &AppState) -> Result<TenantDb, ApiError> {
        if !is_elevated(&parts.headers) || self.role != Role::Admin {
            return Err(ApiError::AdminRequired);
        }
        let tenant = self.admit(parts, state).await?;
        TenantDb::open(tenant, parts, state).await
    }
}

/// The manager of an account's API keys: a user (never an API key: a leaked key must not mint
/// others, 403 `api_key_not_allowed`) who is an admin acting with `X-Admin: true`. With a
/// connection to the account's database.
pub struct KeyManager(pub TenantDb);

impl FromRequestParts<AppState> for KeyManager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let authorized = Authorized::from_request_parts(parts, state).await?;
        if matches!(authorized.principal, Principal::ApiKey { .. }) {
            return Err(ApiError::ApiKeyNotAllowed);
        }
        Ok(KeyManager(authorized.elevated(parts, state).await?))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn with_authorization(value: HeaderValue) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        headers
    }

    /// `bearer` in any case.
    fn scheme() -> impl Strategy<Value = String> {
        "[bB][eE][aA][rR][eE][rR]"
    }

    /// A token of the `token68` alphabet (JWTs, `sk_live_` keys).
    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~+/-]{1,200}=*"
    }

    /// Any bytes a header value can hold (no control characters but tab), and mostly ASCII.
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "[ -~\t]{0,80}".prop_map(|s| s.into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..80),
            (scheme(), "[ \t]{0,3}", "[ -~\t]{0,40}")
                .prop_map(|(s, sep, rest)| { format!("{s}{sep}{rest}").into_bytes() }),
        ]
        .prop_filter_map("a valid header value", |bytes| {
            HeaderValue::from_bytes(&bytes).ok()
        })
    }

    #[test]
    fn no_header_is_no_bearer() {
        assert_eq!(bearer(&HeaderMap::new()), Ok(None));
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(4096))]

        /// `Bearer <token>` in any case of the scheme, with spaces around the token, gives the
        /// token.
        #[test]
        fn a_bearer_gives_its_token(
            scheme in scheme(),
            token in token(),
            before in " {0,3}",
            after in "[ \t]{0,3}",
        ) {
            let value = HeaderValue::from_str(&format!("{scheme} {before}{token}{after}")).unwrap();
            let headers = with_authorization(value);
            prop_assert_eq!(bearer(&headers), Ok(Some(token.as_str())));
        }

        /// Any header value: never a panic; a token only from `Bearer <token>`, and then
        /// exactly the trimmed rest; any other present value is refused, never taken as absent.
        #[test]
        fn any_value_is_a_bearer_or_refused(value in header_value()) {
            let headers = with_authorization(value.clone());
            match bearer(&headers) {
                Ok(Some(token)) => {
                    let text = value.to_str().unwrap();
                    prop_assert!(text[..6].eq_ignore_ascii_case("bearer"));
                    prop_assert_eq!(&text[6..7], " ");
                    prop_assert_eq!(text[7..].trim(), token);
                    prop_assert!(!token.is_empty());
                    prop_assert!(!token.starts_with([' ', '\t']) && !token.ends_with([' ', '\t']));
                }
                Ok(None) => prop_assert!(false, "a present header is never absent"),
                Err(()) => {
                    let usable = value.to_str().ok().and_then(|t| t.split_once(' ')).is_some_and(
                        |(s, rest)| s.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty(),
                    );
                    prop_assert!(!usable, "{:?} refused", value);
                }
            }
        }

        /// Another scheme is refused whatever follows.
        #[test]
        fn another_scheme_is_refused(
            scheme in "[A-Za-z]{1,12}".prop_filter("not bearer", |s| !s.eq_ignore_ascii_case("bearer")),
            token in token(),
        ) {
            let value = HeaderValue::from_str(&format!("{scheme} {token}")).unwrap();
            let headers = with_authorization(value);
            prop_assert_eq!(bearer(&headers), Err(()));
        }
    }
}
