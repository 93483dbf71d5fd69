//! Building the application from configuration, serving it, and shutting down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, NoIdentityProvider};
use crate::config::Config;
use crate::state::AppState;
use crate::tenancy::catalog::Catalog;
use crate::tenancy::provision::{self, Provisioner};

/// Connection options of the system database from `KATAVEN_DATABASE_URL`.
pub fn system_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let url = config.database_url.as_ref().context(
        "KATAVEN_DATABASE_URL is required (or use `kataven-hub dev` for an embedded database)",
    )?;
    // The URL's own text may hold a password: never put it in the error.
    PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| anyhow::anyhow!("KATAVEN_DATABASE_URL is not a valid PostgreSQL URL"))
        .map(|o| o.application_name("kataven-hub"))
}

/// Connects to (creating and migrating if needed) the system database and builds a provisioner.
pub async fn provisioner(config: &Config) -> anyhow::Result<Provisioner> {
    let system = system_options(config)?;
    let pool = provision::prepare_system_database(&system).await?;
    Ok(Provisioner::new(
        Catalog::new(pool),
        system,
        Arc::new(provision::tenant_migrator()),
    ))
}

/// The authenticator for this configuration. Until an identity provider is configured every
/// bearer is refused.
pub fn authenticator(_config: &Config) -> Arc<dyn Authenticator> {
    Arc::new(NoIdentityProvider)
}

/// Completes when SIGTERM or SIGINT (Ctrl-C) arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serves `router` until `shutdown` completes, then stops accepting, lets in-flight requests
/// finish for at most `shutdown_timeout`, and closes the tenant pools and the system pool.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reaper = state.pools.spawn_reaper();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stopped.cancelled().await });
    let mut server = tokio::spawn(async move { server.await });

    let result = tokio::select! {
        r = &mut server => Some(r),
        _ = shutdown => None,
    };
    let result = match result {
        Some(r) => r.context("server task")?.context("server"),
        None => {
            tracing::info!("shutting down: finishing in-flight requests");
            stop.cancel();
            match tokio::time::timeout(state.config.shutdown_timeout(), &mut server).await {
                Ok(r) => r.context("server task")?.context("server"),
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish in time; closing them");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    reaper.abort();
    state.pools.close_all().await;
    state.catalog.pool().close().await;
    tracing::info!("stopped");
    result
}
