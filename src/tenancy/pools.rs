//! Tenant connection pools: a lazily populated map with one small pool per tenant.
//!
//! * A pool is created once per tenant, even under concurrent first requests: the map holds a
//!   `OnceCell` per tenant and every request awaits the same initialisation (single-flight).
//!   Opening a pool of a tenant whose schema is behind migrates it first, once.
//! * Every open tenant connection holds a permit of one instance-wide semaphore sized by
//!   `KATAVEN_DB_CONNECTION_BUDGET`, so the instance never has more connections open than the
//!   budget. A permit is returned only after its connection is closed. When the budget is spent,
//!   a request closes the least recently used idle connection of another tenant, or waits until
//!   its deadline and then answers 503 `unavailable`.
//! * A reaper closes connections idle for longer than the idle timeout and drops pools that
//!   have no connection left.
//! * No map guard is ever held across an `.await`: entries are `Arc`s cloned out of the map.
//!
//! sqlx's `PgPool` cannot be used per tenant here because it offers no way to account for a
//! connection's whole lifetime against a shared budget; this pool does just that and no more.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{Notify, OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::catalog::Account;
use super::provision::Provisioner;
use crate::error::ApiError;

/// An idle connection older than this is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(10);
/// Closing a connection (the `Terminate` message) gives up after this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After `Terminate`, the server's backend still holds its slot until its process has exited;
/// the budget permit is kept this much longer so that the server never counts more of our
/// connections than the budget.
const BACKEND_EXIT_GRACE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections per tenant pool.
    pub pool_max: usize,
    /// Connections across all tenant pools.
    pub budget: usize,
    /// How long a request waits for a connection before 503.
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
}

/// Counters the pool map reports into `/metrics`.
#[derive(Clone, Default)]
pub struct PoolCounters {
    /// Pools opened (cold starts), including re-opens after an idle pool was dropped.
    pub cold_opens: Counter,
    /// Requests that answered 503 because no connection could be had in time.
    pub acquire_timeouts: Counter,
    /// Idle connections closed to make room in the budget for another tenant.
    pub evictions: Counter,
}

/// A point-in-time view of the pool map, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub pools: usize,
    pub connections_open: usize,
    pub connections_in_use: usize,
    pub budget_available: usize,
}

#[derive(Clone)]
pub struct TenantPools {
    inner: Arc<Inner>,
}

struct Inner {
    map: DashMap<String, Arc<OnceCell<Arc<TenantPool>>>>,
    budget: Arc<Semaphore>,
    settings: PoolSettings,
    provisioner: Provisioner,
    counters: PoolCounters,
    budget_state: Arc<BudgetState>,
}

/// Shared by the map and every pool: who waits for the budget and what is on its way back.
#[derive(Default)]
struct BudgetState {
    /// Requests waiting for a budget permit, and connections being closed whose permits are
    /// about to return: a waiter evicts an idle connection only while the first outnumbers
    /// the second, so one waiter costs at most one eviction.
    waiters: AtomicUsize,
    closing: AtomicUsize,
    /// Signalled when a connection turns idle while requests wait for the budget.
    idle_returned: Notify,
}

struct TenantPool {
    options: PgConnectOptions,
    budget_state: Arc<BudgetState>,
    slots: Arc<Semaphore>,
    /// Idle connections, oldest first; the newest is reused first (it is the warmest).
    idle: Mutex<Vec<IdleConn>>,
    open: AtomicUsize,
    in_use: AtomicUsize,
    last_used: Mutex<Instant>,
    /// Set when the pool leaves the map; its connections are closed on return.
    retired: AtomicBool,
}

struct IdleConn {
    conn: PgConnection,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

enum AcquireError {
    /// The pool was dropped from the map meanwhile; look it up again.
    Retired,
    Api(ApiError),
}

impl From<ApiError> for AcquireError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl TenantPools {
    pub fn new(provisioner: Provisioner, settings: PoolSettings, counters: PoolCounters) -> Self {
        Self {
            inner: Arc::new(Inner {
                map: DashMap::new(),
                budget: Arc::new(Semaphore::new(settings.budget)),
                settings,
                provisioner,
                counters,
                budget_state: Arc::default(),
            }),
        }
    }

    /// A connection to the account's tenant database. Call only after the caller is authorized.
    pub async fn acquire(&self, account: &Account) -> Result<TenantConn, ApiError> {
        let deadline = Instant::now() + self.inner.settings.acquire_timeout;
        loop {
            let pool = self.pool_for(account).await?;
            match pool.acquire(&self.inner, deadline).await {
                Ok(conn) => return Ok(conn),
                Err(AcquireError::Retired) => continue,
                Err(AcquireError::Api(e)) => {
                    if matches!(e, ApiError::Unavailable { .. }) {
                        self.inner.counters.acquire_timeouts.inc();
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn pool_for(&self, account: &Account) -> Result<Arc<TenantPool>, ApiError> {
        // Clone the cell out so the map's shard lock is released before any await.
        let cell = self
            .inner
            .map
            .entry(account.slug.clone())
            .or_default()
            .value()
            .clone();
        cell.get_or_try_init(|| self.open_pool(account))
            .await
            .cloned()
    }

    async fn open_pool(&self, account: &Account) -> Result<Arc<TenantPool>, ApiError> {
        let inner = &self.inner;
        let options = inner
            .provisioner
            .tenant_options(account)
            .map_err(ApiError::Internal)?;
        let pool = Arc::new(TenantPool {
            options,
            budget_state: inner.budget_state.clone(),
            slots: Arc::new(Semaphore::new(inner.settings.pool_max)),
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            retired: AtomicBool::new(false),
        });
        if account.schema_version < inner.provisioner.latest_tenant_version() {
            let deadline = Instant::now() + inner.settings.acquire_timeout;
            let mut conn = match pool.acquire(inner, deadline).await {
                Ok(conn) => conn,
                Err(AcquireError::Api(e)) => return Err(e),
                Err(AcquireError::Retired) => unreachable!("a new pool is not in the map yet"),
            };
            tracing::info!(account = %account.slug, from = account.schema_version, "migrating tenant on first use");
            inner
                .provisioner
                .migrate_tenant_on(&mut conn, &account.slug)
                .await
                .map_err(|e| {
                    tracing::error!(account = %account.slug, error = ?e, "tenant migration failed");
                    ApiError::unavailable("the account's database is being upgraded")
                })?;
        }
        inner.counters.cold_opens.inc();
        Ok(pool)
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            pools: 0,
            connections_open: 0,
            connections_in_use: 0,
            budget_available: self.inner.budget.available_permits(),
        };
        for entry in self.inner.map.iter() {
            if let Some(pool) = entry.value().get() {
                stats.pools += 1;
                stats.connections_open += pool.open.load(Ordering::Relaxed);
                stats.connections_in_use += pool.in_use.load(Ordering::Relaxed);
            }
        }
        stats
    }

    /// Drops a tenant's pool (its account changed: deleted, moved, suspended). Idle connections
    /// close now, connections in use when they are returned; the next request opens a new pool.
    pub fn forget(&self, slug: &str) {
        if let Some((_, cell)) = self.inner.map.remove(slug) {
            if let Some(pool) = cell.get() {
                pool.retired.store(true, Ordering::Release);
                let idle: Vec<IdleConn> = std::mem::take(&mut *pool.idle.lock());
                for conn in idle {
                    pool.close(conn);
                }
            }
        }
    }

    /// Closes idle connections past the idle timeout and drops pools left without connections.
    pub fn reap_idle(&self) {
        let idle_timeout = self.inner.settings.idle_timeout;
        let now = Instant::now();
        for entry in self.inner.map.iter() {
            if let Some(pool) = entry.value().get() {
                let expired: Vec<IdleConn> = {
                    let mut idle = pool.idle.lock();
                    let keep_from = idle
                        .iter()
                        .position(|c| now.duration_since(c.since) < idle_timeout)
                        .unwrap_or(idle.len());
                    idle.drain(..keep_from).collect()
                };
                for conn in expired {
                    pool.close(conn);
                }
            }
        }
        self.inner.map.retain(|_, cell| match cell.get() {
            // A cell whose initialisation failed or is under way is kept: a request owns it.
            None => true,
            Some(pool) => {
                let unused = pool.open.load(Ordering::Acquire) == 0
                    && pool.in_use.load(Ordering::Acquire) == 0
                    && now.duration_since(*pool.last_used.lock()) >= idle_timeout;
                if unused {
                    pool.retired.store(true, Ordering::Release);
                }
                !unused
            }
        });
    }

    /// Runs [`Self::reap_idle`] periodically until the returned task is aborted.
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let pools = self.clone();
        let period = (self.inner.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(15));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pools.reap_idle();
            }
        })
    }

    /// Closes every idle connection and forgets every pool (shutdown). Connections still in use
    /// are closed when they are returned.
    pub async fn close_all(&self) {
        let pools: Vec<Arc<TenantPool>> = self
            .inner
            .map
            .iter()
            .filter_map(|e| e.value().get().cloned())
            .collect();
        self.inner.map.clear();
        let mut closing = Vec::new();
        for pool in pools {
            pool.retired.store(true, Ordering::Release);
            let idle: Vec<IdleConn> = std::mem::take(&mut *pool.idle.lock());
            for c in idle {
                pool.open.fetch_sub(1, Ordering::AcqRel);
                closing.push(async move {
                    let _ = timeout(CLOSE_TIMEOUT, c.conn.close()).await;
                    drop(c.permit);
                });
            }
        }
        futures::future::join_all(closing).await;
    }

    /// Starts closing the least recently used idle connection of any pool but `except`.
    /// Returns whether one was found.
    fn evict_one_idle(&self, except: &TenantPool) -> bool {
        let victim = self
            .inner
            .map
            .iter()
            .filter_map(|e| e.value().get().cloned())
            .filter(|p| !std::ptr::eq(Arc::as_ptr(p), except) && !p.idle.lock().is_empty())
            .min_by_key(|p| *p.last_used.lock());
        let Some(pool) = victim else { return false };
        let conn = {
            let mut idle = pool.idle.lock();
            if idle.is_empty() {
                return false;
            }
            idle.remove(0)
        };
        pool.close(conn);
        self.inner.counters.evictions.inc();
        true
    }
}

impl Inner {
    /// A budget permit for one new connection. When the budget is spent, idle connections of
    /// other tenants are closed to make room (at most one per waiting request); otherwise the
    /// request waits for a permit, or for a connection to turn idle, until its deadline.
    async fn budget_permit(
        self: &Inner,
        pools: &TenantPools,
        requester: &TenantPool,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.budget.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let shared = &self.budget_state;
        shared.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = scopeguard(|| {
            shared.waiters.fetch_sub(1, Ordering::AcqRel);
        });
        loop {
            let notified = shared.idle_returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.closing.load(Ordering::Acquire) < shared.waiters.load(Ordering::Acquire) {
                pools.evict_one_idle(requester);
            }
            tokio::select! {
                biased;
                permit = self.budget.clone().acquire_owned() => {
                    return permit.map_err(|_| ApiError::unavailable("the service is shutting down"));
                }
                _ = &mut notified => continue,
                _ = sleep_until(deadline) => {
                    return Err(ApiError::unavailable("all database connections are busy; retry shortly"));
                }
            }
        }
    }
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl TenantPool {
    async fn acquire(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        deadline: Instant,
    ) -> Result<TenantConn, AcquireError> {
        let slot = match timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                return Err(ApiError::unavailable(
                    "all of this account's database connections are busy; retry shortly",
                )
                .into());
            }
        };
        if self.retired.load(Ordering::Acquire) {
            return Err(AcquireError::Retired);
        }
        *self.last_used.lock() = Instant::now();

        loop {
            let candidate = self.idle.lock().pop();
            let Some(mut idle) = candidate else { break };
            if idle.since.elapsed() >= PING_IDLE_AFTER && idle.conn.ping().await.is_err() {
                // The server closed it (restart, idle kill): forget it and try the next one.
                self.open.fetch_sub(1, Ordering::AcqRel);
                drop(idle);
                continue;
            }
            self.in_use.fetch_add(1, Ordering::AcqRel);
            return Ok(TenantConn {
                conn: Some(idle.conn),
                permit: Some(idle.permit),
                _slot: slot,
                pool: self.clone(),
            });
        }

        let pools = TenantPools {
            inner: inner.clone(),
        };
        let permit = inner.budget_permit(&pools, self, deadline).await?;
        let conn = match timeout_at(deadline, self.options.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to tenant database");
                return Err(ApiError::unavailable("the account's database is unavailable").into());
            }
            Err(_) => {
                return Err(
                    ApiError::unavailable("the account's database did not answer in time").into(),
                );
            }
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        self.in_use.fetch_add(1, Ordering::AcqRel);
        Ok(TenantConn {
            conn: Some(conn),
            permit: Some(permit),
            _slot: slot,
            pool: self.clone(),
        })
    }

    /// Closes a connection in the background; its budget permit is released once it is closed.
    fn close(&self, idle: IdleConn) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let shared = self.budget_state.clone();
        shared.closing.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let _ = timeout(CLOSE_TIMEOUT, idle.conn.close()).await;
            tokio::time::sleep(BACKEND_EXIT_GRACE).await;
            drop(idle.permit);
            shared.closing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn release(&self, conn: PgConnection, permit: OwnedSemaphorePermit) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        let idle = IdleConn {
            conn,
            permit,
            since: Instant::now(),
        };
        if self.retired.load(Ordering::Acquire) {
            self.close(idle);
        } else {
            self.idle.lock().push(idle);
            if self.budget_state.waiters.load(Ordering::Acquire) > 0 {
                self.budget_state.idle_returned.notify_waiters();
            }
        }
    }
}

/// A tenant connection checked out for one request; returned to its pool when dropped.
pub struct TenantConn {
    conn: Option<PgConnection>,
    permit: Option<OwnedSemaphorePermit>,
    _slot: OwnedSemaphorePermit,
    pool: Arc<TenantPool>,
}

impl Deref for TenantConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for TenantConn {
    fn drop(&mut self) {
        if let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) {
            self.pool.release(conn, permit);
        }
    }
}
