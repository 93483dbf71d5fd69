//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the system database answers.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(state.catalog.pool());
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: system database unavailable");
            Err(ApiError::unavailable("the system database is unavailable"))
        }
        Err(_) => Err(ApiError::unavailable(
            "the system database did not answer in time",
        )),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(state.pools.stats()),
    )
}
