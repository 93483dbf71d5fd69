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

use std::time::Duration;

use anyhow::bail;

use crate::auth::Identity;
use crate::auth::dev_issuer::{DEV_AUDIENCE, DevIssuer};
use crate::auth::keys::KeyHasher;
use crate::auth::oidc::{IssuerKeys, IssuerSettings};
use crate::auth::signing::SigningKeys;
use crate::auth::widget_session::{self, WidgetSessions};
use crate::config::Config;
use crate::limits::auth_failures::AuthFailures;
use crate::limits::client_ip::{IpLimiter, PerKeyLimiter, TrustedProxies};
use crate::limits::memory::MemoryStore;
use crate::limits::redis::RedisStore;
use crate::limits::{Limiter, Store};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::state::{Services, WidgetState};
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
    let pool = provision::prepare_system_database_with(
        &system,
        &provision::SystemPool {
            acquire_timeout: config.db_acquire_timeout(),
            statement_timeout: config.db_statement_timeout(),
            ..provision::SystemPool::default()
        },
    )
    .await?;
    Ok(Provisioner::new(
        Catalog::new(pool),
        system,
        Arc::new(provision::tenant_migrator()),
    )
    .with_credentials(config.system_password(), config.server_secrets_dir.clone()))
}

/// The identity providers of this configuration: the OIDC issuer if configured, and the dev
/// issuer (at `<public_url>/dev/oidc`) if dev login is on. With neither, every bearer is refused.
pub async fn identity(
    config: &Config,
    catalog: &Catalog,
    public_url: &str,
    metrics: &Metrics,
) -> anyhow::Result<Arc<Identity>> {
    let refresh_interval = Duration::from_secs(config.jwks_refresh_secs);
    let refresh_cooldown = Duration::from_secs(config.jwks_refresh_cooldown_secs);
    let remote = match &config.oidc_issuer {
        Some(issuer) => {
            if config.oidc_audiences.is_empty() {
                bail!("KATAVEN_OIDC_AUDIENCES is required with KATAVEN_OIDC_ISSUER");
            }
            Some(IssuerKeys::remote(
                IssuerSettings {
                    issuer: issuer.trim_end_matches('/').to_owned(),
                    audiences: config.oidc_audiences.clone(),
                    refresh_interval,
                    refresh_cooldown,
                    project_id: config
                        .oidc_project_id
                        .as_deref()
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned),
                },
                metrics.oidc.clone(),
            )?)
        }
        None => None,
    };
    let dev = if config.dev_login.unwrap_or(false) {
        let dev = DevIssuer::new(catalog.pool().clone(), public_url).await?;
        let keys = dev.keys.clone();
        let verifier = IssuerKeys::local(
            IssuerSettings {
                issuer: dev.issuer().to_owned(),
                audiences: vec![DEV_AUDIENCE.to_owned()],
                refresh_interval,
                refresh_cooldown,
                // Dev tokens carry no roles.
                project_id: None,
            },
            metrics.oidc.clone(),
            move || {
                let keys = keys.clone();
                Box::pin(async move {
                    keys.reload().await?;
                    Ok(keys.jwks())
                })
            },
        );
        Some((dev, verifier))
    } else {
        None
    };
    if remote.is_none() && dev.is_none() {
        tracing::warn!(
            "no identity provider configured (KATAVEN_OIDC_ISSUER): ID tokens are refused (401), only API keys authenticate"
        );
    }
    Ok(Arc::new(Identity::new(remote, dev, public_url.to_owned())))
}

/// Builds the application state for a bound listener (the public URL defaults to its address).
pub async fn build_state(
    mut config: Config,
    provisioner: Provisioner,
    addr: SocketAddr,
) -> anyhow::Result<AppState> {
    match &config.public_url {
        None => config.public_url = Some(format!("http://{addr}")),
        // The `iss` of every widget session token and the dev issuer's URL: refuse a typo at
        // start-up rather than mint tokens nobody can verify.
        Some(public) => {
            url::Url::parse(public)
                .with_context(|| format!("KATAVEN_PUBLIC_URL `{public}` is not a URL"))?;
        }
    }
    let metrics = Arc::new(Metrics::new());
    let identity = identity(
        &config,
        provisioner.catalog(),
        &config.public_url(),
        &metrics,
    )
    .await?;
    let store = match &config.redis_url {
        Some(url) => {
            let stale_after = config.request_timeout() * 2;
            Store::Redis(Box::new(RedisStore::new(url.expose_secret(), stale_after)?))
        }
        None => Store::Memory(MemoryStore::new(Some(provisioner.catalog().pool().clone()))),
    };
    let limiter = Limiter::new(store, metrics.limiter_store_errors.clone());
    let proxies = TrustedProxies::parse(&config.trusted_proxies)?;
    let refused = metrics.rate_limited_counter(crate::metrics::LimitLabel::Ip);
    let ip_limiter = IpLimiter::new(
        config.public_limit_per_minute,
        proxies,
        config.ipv6_prefix_len,
        refused,
    );
    let auth_failures = AuthFailures::per_minute(
        config.auth_failure_limit_per_minute,
        metrics.rate_limited_counter(crate::metrics::LimitLabel::Auth),
    );
    let pepper = config
        .key_pepper
        .clone()
        .context("KATAVEN_KEY_PEPPER is required (the secret of API and widget key hashes)")?;
    let hasher = KeyHasher::new(pepper);
    let session_keys = SigningKeys::load_or_create(
        provisioner.catalog().pool().clone(),
        crate::auth::signing::Purpose::WidgetSession,
    )
    .await?;
    session_keys
        .rotate_if_older(chrono::Duration::days(widget_session::ROTATION_DAYS))
        .await?;
    let widget = WidgetState {
        sessions: WidgetSessions::new(session_keys, config.public_url()),
        key_limiter: PerKeyLimiter::per_minute(config.widget_key_limit_per_minute),
        key_ip_limiter: PerKeyLimiter::per_minute(config.widget_key_ip_limit_per_minute),
    };
    let services = Services {
        identity,
        metrics,
        limiter,
        ip_limiter,
        auth_failures,
        hasher,
        widget,
    };
    let state = AppState::new(config, provisioner, services);
    // The system database's server is known from the start (its budget in the gauge).
    if let Err(e) = state.pools.know_server(crate::fleet::MAIN_SERVER).await {
        tracing::warn!(error = %e, "the system database's server is not in the catalog");
    }
    Ok(state)
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
    let background = state.spawn_background();
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
    for task in background {
        task.abort();
    }
    state.flush().await;
    state.pools.close_all().await;
    state.catalog.pool().close().await;
    tracing::info!("stopped");
    result
}
