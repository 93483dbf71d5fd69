//! The baseline of `bench/run.sh`: a bare axum + sqlx server that answers
//! `GET /agents/{id}` from one tenant database with the hub's own query and serialisation
//! (`agents::store::load`), through an ordinary sqlx `PgPool` — everything the hub does
//! for that request except its pipeline (authentication, tenancy, limits, metrics, logs).
//!
//! `BARE_DATABASE_URL` (the tenant database), `BARE_LISTEN`, `BARE_POOL` (default 16).

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use kataven_hub::agents::model::Agent;
use kataven_hub::error::ApiResult;
use kataven_hub::json::Json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

async fn agent(State(pool): State<PgPool>, Path(id): Path<uuid::Uuid>) -> ApiResult<Json<Agent>> {
    let mut conn = pool.acquire().await?;
    Ok(Json(kataven_hub::agents::store::load(&mut conn, id).await?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("BARE_DATABASE_URL")?;
    let listen = std::env::var("BARE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let size: u32 = std::env::var("BARE_POOL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .connect(&url)
        .await?;
    let app = Router::new()
        .route("/agents/{id}", get(agent))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
