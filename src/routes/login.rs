//! Dev-only: the dev OIDC issuer under `/dev/oidc` and `POST /api/login`. Mounted only when dev
//! login is on; otherwise these paths answer 404 like any unknown route.

use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::dev_issuer::TOKEN_TTL_SECS;
use crate::error::{ApiError, ApiResult};
use crate::extract::{bearer, parse_slug};
use crate::json::Json;
use crate::state::AppState;
use crate::tenancy::catalog::AccountStatus;

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub account: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub account: String,
}

fn dev(state: &AppState) -> ApiResult<&crate::auth::dev_issuer::DevIssuer> {
    state
        .identity
        .dev
        .as_ref()
        .map(|(dev, _)| dev.as_ref())
        .ok_or_else(|| ApiError::not_found("no such route"))
}

/// Dev only (`kataven-hub dev`, `KATAVEN_DEV_LOGIN=true`; 404 otherwise): a dev user's email
/// and password → an ID token of the built-in dev issuer.
#[utoipa::path(post, path = "/api/login", tag = "dev", security(()), request_body = LoginRequest,
    responses((status = 200, description = "Logged in", body = LoginResponse),
              (status = 401, description = "Wrong account, email or password", body = crate::error::ErrorBody),
              (status = 404, description = "Dev login is off", body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let dev = dev(&state)?;
    let slug = parse_slug(&body.account)?;
    let refused = || ApiError::Unauthenticated("invalid account, email or password");
    let account = state.cache.account(&slug).await?.ok_or_else(refused)?;
    let user = dev
        .check_password(&slug, &body.email, &body.password)
        .await
        .map_err(ApiError::Internal)?
        .ok_or_else(refused)?;
    if account.status == AccountStatus::Suspended {
        return Err(ApiError::AccountSuspended);
    }
    let token = dev.mint(&user).map_err(ApiError::Internal)?;
    Ok(Json(LoginResponse {
        token,
        token_type: "Bearer",
        expires_in: TOKEN_TTL_SECS,
        account: slug.to_string(),
    }))
}

/// Dev only: the dev issuer's OpenID Connect discovery document.
#[utoipa::path(get, operation_id = "dev_discovery", path = "/dev/oidc/.well-known/openid-configuration", tag = "dev", security(()),
    responses((status = 200, description = "Discovery document", body = std::collections::HashMap<String, serde_json::Value>)))]
pub async fn discovery(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(dev(&state)?.discovery()))
}

/// Dev only: the dev issuer's public keys (JWKS).
#[utoipa::path(get, operation_id = "dev_keys", path = "/dev/oidc/keys", tag = "dev", security(()),
    responses((status = 200, description = "JWK set", body = std::collections::HashMap<String, serde_json::Value>)))]
pub async fn keys(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let jwks = dev(&state)?.keys.jwks();
    Ok(Json(
        serde_json::to_value(jwks).map_err(|e| ApiError::Internal(e.into()))?,
    ))
}

/// Dev only: the dev issuer's userinfo; accepts its own ID tokens.
#[utoipa::path(get, operation_id = "dev_userinfo", path = "/dev/oidc/userinfo", tag = "dev", security(("bearer" = [])),
    responses((status = 200, description = "The user", body = std::collections::HashMap<String, serde_json::Value>),
              (status = 401, description = "Not a valid dev token", body = crate::error::ErrorBody)))]
pub async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let (_, verifier) = state
        .identity
        .dev
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no such route"))?;
    let token = bearer(&headers)
        .ok()
        .flatten()
        .ok_or(ApiError::Unauthenticated(
            "a valid bearer token is required",
        ))?;
    let claims = verifier
        .verify(token)
        .await
        .map_err(|_| ApiError::Unauthenticated("a valid bearer token is required"))?;
    Ok(Json(json!({ "sub": claims.sub, "email": claims.email })))
}
