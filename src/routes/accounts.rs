//! Public account discovery for the login page (no bearer).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::AccountDirectory;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_slug;
use crate::state::AppState;
use crate::tenancy::catalog::AccountStatus;

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountEntry {
    pub account: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Validation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub valid: bool,
}

/// Active accounts, sorted by slug, for the login page. 404 when the operator turned the
/// directory off (`KATAVEN_ACCOUNT_DIRECTORY=off`).
#[utoipa::path(get, operation_id = "list_accounts", path = "/api/accounts", tag = "public", security(()),
    responses((status = 200, description = "Active accounts", body = Vec<AccountEntry>),
              (status = 404, description = "The directory is off", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<AccountEntry>>> {
    if state.config.account_directory == AccountDirectory::Off {
        return Err(ApiError::not_found("the account directory is not public"));
    }
    let accounts = state.catalog.active_accounts().await?;
    Ok(Json(
        accounts
            .into_iter()
            .map(|a| AccountEntry {
                account: a.slug,
                name: a.display_name,
            })
            .collect(),
    ))
}

/// Whether an account exists and is active (suspended accounts are not disclosed: 404).
#[utoipa::path(get, operation_id = "validate_account", path = "/api/accounts/validate/{account}", tag = "public", security(()),
    params(("account" = String, Path, description = "The account slug")),
    responses((status = 200, description = "An active account", body = Validation,
               example = json!({"account": "acme", "name": "Acme Corp", "valid": true})),
              (status = 400, description = "Not a valid slug (`invalid_account`)", body = crate::error::ErrorBody),
              (status = 403, description = "The reserved system account (`reserved_account`)", body = crate::error::ErrorBody),
              (status = 404, description = "No such active account", body = Validation,
               example = json!({"valid": false}))))]
pub async fn validate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let slug = parse_slug(&raw)?;
    let found = state
        .catalog
        .account(&slug)
        .await?
        .filter(|a| a.status == AccountStatus::Active);
    Ok(match found {
        Some(a) => Json(Validation {
            account: Some(a.slug),
            name: Some(a.display_name),
            valid: true,
        })
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(Validation {
                account: None,
                name: None,
                valid: false,
            }),
        )
            .into_response(),
    })
}
