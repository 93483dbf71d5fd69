//! `GET /api/user/org`: who the bearer is (asked of the issuer's userinfo endpoint) and which
//! accounts it may act in. Public: no `X-Account-ID`, and the bearer is whatever the userinfo
//! endpoint accepts (with Zitadel, the opaque access token of the login flow) — except this
//! service's own credentials, which are refused without being sent there.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::identity::UserInfoFailure;
use crate::error::{ApiError, ApiResult};
use crate::extract::bearer;
use crate::json::Json;
use crate::state::AppState;
use crate::tenancy::catalog::Role;

#[derive(Debug, Serialize, ToSchema)]
pub struct UserOrg {
    pub sub: String,
    pub email: Option<String>,
    pub org: Option<Org>,
    pub accounts: Vec<AccountRole>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Org {
    pub id: String,
    pub name: Option<String>,
    pub primary_domain: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountRole {
    pub account: String,
    pub name: String,
    pub role: Role,
}

/// Who the bearer is, asked of the identity provider's userinfo endpoint, and the accounts it
/// may act in. The bearer is whatever that endpoint accepts (with Zitadel: the access token).
#[utoipa::path(get, path = "/api/user/org", tag = "public", security(("bearer" = [])),
    responses((status = 200, description = "The user and its accounts", body = UserOrg),
              (status = 401, description = "The identity provider refused the bearer, or the bearer is a credential of this service (an API key, a widget key or token), which is never sent to it", body = crate::error::ErrorBody),
              (status = 503, description = "The identity provider is unavailable", body = crate::error::ErrorBody)))]
pub async fn user_org(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<UserOrg>> {
    let unauthenticated = || ApiError::Unauthenticated("a valid bearer token is required");
    let token = bearer(&headers).ok().flatten().ok_or_else(|| {
        state.metrics.auth_failure("missing_bearer");
        unauthenticated()
    })?;
    let info = state.identity.userinfo(token).await.map_err(|e| match e {
        UserInfoFailure::Refused | UserInfoFailure::NotConfigured => {
            state.metrics.auth_failure("userinfo_refused");
            unauthenticated()
        }
        // Never sent to the issuer (API keys, widget keys and tokens).
        UserInfoFailure::LocalCredential => {
            state.metrics.auth_failure("local_credential");
            unauthenticated()
        }
        UserInfoFailure::Unavailable(cause) => {
            tracing::warn!(%cause, "userinfo unavailable");
            ApiError::unavailable("the identity provider is unavailable")
        }
    })?;

    // Member rows, then accounts reached through the organisation and roles claims.
    let mut accounts: BTreeMap<String, AccountRole> = BTreeMap::new();
    for (slug, name, role) in state.catalog.accounts_of_subject(&info.sub).await? {
        accounts.insert(
            slug.clone(),
            AccountRole {
                account: slug,
                name,
                role,
            },
        );
    }
    let mut orgs: Vec<String> = info.roles.orgs().into_iter().map(str::to_owned).collect();
    orgs.extend(info.org_id.clone());
    for (slug, name, org) in state.catalog.accounts_of_orgs(&orgs).await? {
        let role = if info.roles.has("admin", &org) {
            Role::Admin
        } else {
            Role::Member
        };
        let entry = accounts.entry(slug.clone()).or_insert(AccountRole {
            account: slug,
            name,
            role,
        });
        entry.role = entry.role.max(role);
    }
    Ok(Json(UserOrg {
        sub: info.sub,
        email: info.email,
        org: info.org_id.map(|id| Org {
            id,
            name: info.org_name,
            primary_domain: info.org_primary_domain,
        }),
        accounts: accounts.into_values().collect(),
    }))
}
