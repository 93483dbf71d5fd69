//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorDetail};
use crate::readiness::Checks;
use crate::state::AppState;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Up", body = std::collections::HashMap<String, serde_json::Value>, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `/readyz` when ready: every dependency's state.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ready", "checks": {"system_database": "up"}}))]
pub struct Ready {
    /// `ready`, or `degraded` when Redis (shared rate-limit counters, which fail open) is down.
    pub status: &'static str,
    pub checks: Checks,
}

/// `/readyz` when not ready: the error, and which dependency is down.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "unavailable", "message": "not ready: the system database is down", "request_id": "0194f3a2-7c1e-7d2a-9b1e-6f0a3c2d1e4f"}, "checks": {"system_database": "down"}}))]
pub struct NotReady {
    pub error: ErrorDetail,
    pub checks: Checks,
}

/// Readiness: the system database answers.
///
/// Also reports Redis when configured. Answered from a probe that runs once per second, so a
/// call costs no query.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "Ready (or degraded: Redis down, limits fail open)", body = Ready),
              (status = 503, description = "The system database is unavailable", body = NotReady,
               headers(("Retry-After" = u64, description = "Seconds to wait")))))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let checks = state.readiness.checks().await;
    if checks.ready() {
        let status = if checks.degraded() {
            "degraded"
        } else {
            "ready"
        };
        return Json(Ready { status, checks }).into_response();
    }
    let error = ApiError::unavailable("not ready: the system database is down");
    let body = NotReady {
        error: ErrorDetail {
            code: error.code().to_owned(),
            message: error.to_string(),
            request_id: crate::request_id::current(),
            field: None,
            limit: None,
        },
        checks,
    };
    (
        error.status(),
        [(
            RETRY_AFTER,
            crate::error::UNAVAILABLE_RETRY_AFTER_SECS.to_string(),
        )],
        Json(body),
    )
        .into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(state.pools.stats()),
    )
}
