//! The application state shared by every request.

use std::ops::Deref;
use std::sync::Arc;

use crate::auth::Identity;
use crate::auth::api_keys::ApiKeys;
use crate::auth::keys::KeyHasher;
use crate::auth::membership::CatalogCache;
use crate::config::Config;
use crate::limits::client_ip::IpLimiter;
use crate::limits::{Limiter, Store};
use crate::metrics::Metrics;
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
    pub api_keys: Arc<ApiKeys>,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        provisioner: Provisioner,
        identity: Arc<Identity>,
        metrics: Arc<Metrics>,
        limiter: Arc<Limiter>,
        ip_limiter: Arc<IpLimiter>,
        hasher: KeyHasher,
    ) -> Self {
        let pools = TenantPools::new(
            provisioner.clone(),
            PoolSettings {
                pool_max: config.tenant_pool_max.max(1) as usize,
                budget: config.db_connection_budget.max(1) as usize,
                acquire_timeout: config.db_acquire_timeout(),
                idle_timeout: config.tenant_idle_timeout(),
            },
            metrics.pool_counters.clone(),
        );
        let forget = pools.clone();
        let cache = CatalogCache::new(provisioner.catalog().clone(), move |slug| {
            forget.forget(slug)
        });
        let api_keys = Arc::new(ApiKeys::new(hasher, provisioner.catalog().pool().clone()));
        Self(Arc::new(AppInner {
            api_keys,
            catalog: provisioner.catalog().clone(),
            cache,
            provisioner,
            pools,
            metrics,
            identity,
            limiter,
            ip_limiter,
            config,
        }))
    }

    /// Starts the background tasks: the pool reaper, the catalog listener and the key
    /// refreshers. Abort the handles to stop them.
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![self.pools.spawn_reaper(), self.cache.spawn_listener()];
        tasks.extend(self.identity.issuers().iter().map(|i| i.spawn_refresher()));
        tasks.push(self.ip_limiter.spawn_janitor());
        tasks.push(self.api_keys.spawn_flusher());
        if let Store::Memory(memory) = self.limiter.store() {
            tasks.push(memory.spawn_flusher());
        }
        tasks
    }

    /// Saves what must survive a restart (the in-process daily request counts).
    pub async fn flush(&self) {
        self.api_keys.flush_last_used().await;
        if let Store::Memory(memory) = self.limiter.store() {
            memory.flush().await;
        }
    }
}
