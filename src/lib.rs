//! Kataven Hub API: the multi-tenant management backend of a voice/chat AI-agent platform.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; the tests embed the same pieces.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod export;
pub mod extract;
pub mod fleet;
pub mod housekeeping;
pub mod idempotency;
pub mod json;
pub mod keys;
pub mod knowledge;
pub mod limits;
pub mod log_throttle;
pub mod metrics;
pub mod model;
#[cfg(test)]
mod proptest_config;
pub mod query;
pub mod readiness;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod widget;

pub use routes::app;
pub use state::AppState;
