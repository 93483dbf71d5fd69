//! The application state shared by every request.

use std::ops::Deref;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::tenancy::catalog::Catalog;
use crate::tenancy::pools::{PoolSettings, TenantPools};
use crate::tenancy::provision::Provisioner;

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub config: Config,
    pub catalog: Catalog,
    pub provisioner: Provisioner,
    pub pools: TenantPools,
    pub metrics: Arc<Metrics>,
    pub authenticator: Arc<dyn Authenticator>,
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
        authenticator: Arc<dyn Authenticator>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
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
        Self(Arc::new(AppInner {
            catalog: provisioner.catalog().clone(),
            provisioner,
            pools,
            metrics,
            authenticator,
            config,
        }))
    }
}
