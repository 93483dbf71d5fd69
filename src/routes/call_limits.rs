//! `GET /api/v1/call-limits`: the account's limits, read-only.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::extract::Tenant;
use crate::json::Json;
use crate::state::AppState;

/// The account's limits: its catalog overrides, else the configured defaults. `0` blocks.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallLimits {
    /// Requests (and calls) per minute.
    pub calls_per_minute: u32,
    /// Requests (and calls) in flight at once.
    pub concurrent_max: u32,
    /// Requests (and calls) per day.
    pub daily_calls_max: u32,
    /// Call minutes per day.
    pub daily_minutes_max: u32,
}

#[utoipa::path(get, operation_id = "get_call_limits", path = "/call-limits", tag = "limits",
    responses((status = 200, description = "The account's limits", body = CallLimits)))]
pub async fn get(State(state): State<AppState>, tenant: Tenant) -> ApiResult<Json<CallLimits>> {
    let limits = state
        .catalog
        .limits(&tenant.slug, &state.config.default_limits())
        .await?;
    Ok(Json(CallLimits {
        calls_per_minute: limits.per_minute,
        concurrent_max: limits.concurrent,
        daily_calls_max: limits.per_day,
        daily_minutes_max: limits.daily_minutes,
    }))
}
