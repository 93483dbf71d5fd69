//! Public account discovery for the login page (no bearer).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::AccountDirectory;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_slug;
use crate::state::AppState;
use crate::tenancy::catalog::AccountStatus;

#[derive(Debug, Serialize)]
pub struct AccountEntry {
    pub account: String,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct Validation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub valid: bool,
}

/// `GET /api/accounts`: active accounts sorted by slug; 404 when the directory is off.
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

/// `GET /api/accounts/validate/{account}`: 200 for an active account, 404 `{ "valid": false }`
/// for an unknown (or suspended: not disclosed) one, 400/403 for a bad or reserved slug.
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
