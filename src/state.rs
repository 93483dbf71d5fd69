//! The application state shared by every request.

use std::ops::Deref;
use std::sync::Arc;

use crate::auth::Identity;
use crate::auth::api_keys::ApiKeys;
use crate::auth::keys::KeyHasher;
use crate::auth::membership::CatalogCache;
use crate::auth::widget_session::WidgetSessions;
use crate::config::Config;
use crate::limits::auth_failures::AuthFailures;
use crate::limits::client_ip::IpLimiter;
use crate::limits::client_ip::PerKeyLimiter;
use crate::limits::{Limiter, Store};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::tenancy::catalog::Catalog;
use crate::tenancy::pools::{PoolSettings, TenantPools};
use crate::tenancy::provision::Provisioner;

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub config: Config,
    pub catalog: Catalog,
    /// Cached account and member lookups for the request pipeline.
    pub cache: CatalogCache,
    pub provisioner: Provisioner,
    pub pools: TenantPools,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    pub limiter: Arc<Limiter>,
    pub ip_limiter: Arc<IpLimiter>,
    pub auth_failures: Arc<AuthFailures>,
    pub api_keys: Arc<ApiKeys>,
    pub widget: WidgetState,
    pub readiness: Readiness,
}

/// The services [`AppState::new`] wires together (built by `server::build_state`).
pub struct Services {
    pub identity: Arc<Identity>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub ip_limiter: Arc<IpLimiter>,
    pub auth_failures: Arc<AuthFailures>,
    pub hasher: KeyHasher,
    pub widget: WidgetState,
}

/// What the public widget endpoints need besides the rest.
pub struct WidgetState {
    pub sessions: WidgetSessions,
    pub key_limiter: PerKeyLimiter<uuid::Uuid>,
    /// Each client IP's share of a widget key's quota.
    pub key_ip_limiter: PerKeyLimiter<(uuid::Uuid, std::net::IpAddr)>,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Config, provisioner: Provisioner, services: Services) -> Self {
        let Services {
            identity,
            metrics,
            limiter,
            ip_limiter,
            auth_failures,
            hasher,
            widget,
        } = services;
        let pools = TenantPools::new(
            provisioner.clone(),
            PoolSettings {
                pool_max: config.tenant_pool_max.max(1) as usize,
                budget: config.db_connection_budget.max(1) as usize,
                acquire_timeout: config.db_acquire_timeout(),
                idle_timeout: config.tenant_idle_timeout(),
                statement_timeout: config.db_statement_timeout(),
            },
            metrics.pool_counters.clone(),
        );
        let forget = pools.clone();
        let cache = CatalogCache::new(provisioner.catalog().clone(), &metrics, move |slug| {
            forget.forget(slug)
        });
        // The listener's connection broke: the server may have restarted under the tenant
        // connections too, so each idle one is checked before its next use.
        let suspect = pools.clone();
        cache.on_listener_reset(move || suspect.suspect_idle_connections());
        // Another instance rotated the widget session keys: re-read them.
        let session_keys = widget.sessions.keys_handle();
        cache.on_signing_keys_change(move |purpose| {
            if purpose == crate::auth::signing::Purpose::WidgetSession {
                let keys = session_keys.clone();
                tokio::spawn(async move {
                    // Re-reads the keys, and creates one if none is left (the only key was
                    // retired): sessions keep being signed. Instances serialise on the
                    // rotation's advisory lock, so only one creates it.
                    let rotation =
                        chrono::Duration::days(crate::auth::widget_session::ROTATION_DAYS);
                    if let Err(e) = keys.rotate_if_older(rotation).await {
                        tracing::warn!(error = %e, "could not re-read widget signing keys");
                    }
                });
            }
        });
        let api_keys = Arc::new(ApiKeys::new(hasher, provisioner.catalog().pool().clone()));
        let readiness = Readiness::new(
            provisioner.catalog().pool().clone(),
            provisioner.system_options().clone(),
            limiter.clone(),
            metrics.readiness_probes.clone(),
        );
        Self(Arc::new(AppInner {
            readiness,
            api_keys,
            widget,
            catalog: provisioner.catalog().clone(),
            cache,
            provisioner,
            pools,
            metrics,
            identity,
            limiter,
            ip_limiter,
            auth_failures,
            config,
        }))
    }

    /// Starts the background tasks: the pool reaper, the catalog listener, the key
    /// refreshers, the readiness prober, the flushers and the audit retention sweep. Abort the handles to stop them.
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![self.pools.spawn_reaper(), self.cache.spawn_listener()];
        tasks.extend(self.identity.issuers().iter().map(|i| i.spawn_refresher()));
        tasks.push(self.ip_limiter.spawn_janitor());
        tasks.push(self.readiness.spawn_prober());
        tasks.push(self.api_keys.spawn_flusher());
        if let Store::Memory(memory) = self.limiter.store() {
            tasks.push(memory.spawn_flusher());
        }
        tasks.push(self.spawn_widget_maintenance());
        tasks.push(crate::housekeeping::spawn(self));
        tasks
    }

    /// Hourly: forget idle widget-key quotas, rotate the session signing key when due, delete
    /// user tokens that expired a day ago and the refresh records of expired sessions.
    fn spawn_widget_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                state.widget.key_limiter.forget_idle();
                state.widget.key_ip_limiter.forget_idle();
                let rotation = chrono::Duration::days(crate::auth::widget_session::ROTATION_DAYS);
                if let Err(e) = state.widget.sessions.keys().rotate_if_older(rotation).await {
                    tracing::warn!(error = %e, "widget signing key rotation failed");
                }
                crate::widget::store::purge(state.catalog.pool()).await;
            }
        })
    }

    /// Saves what must survive a restart (the in-process daily request counts).
    pub async fn flush(&self) {
        self.api_keys.flush_last_used().await;
        if let Store::Memory(memory) = self.limiter.store() {
            memory.flush().await;
        }
    }
}
