//! Tenant connection pools: a lazily populated map with one small pool per tenant.
//!
//! * A pool is created once per tenant, even under concurrent first requests: the map holds a
//!   `OnceCell` per tenant and every request awaits the same initialisation (single-flight).
//!   Opening a pool of a tenant whose schema is behind migrates it first, once.
//! * The connection budget (`KATAVEN_DB_CONNECTION_BUDGET`) applies per database server: every
//!   open tenant connection holds a permit of its server's semaphore ([`ServerSlot`]), so the
//!   instance never has more connections open to a server than the budget. A permit is
//!   returned only after its connection is closed. When a server's budget is spent, a request
//!   closes the least recently used idle connection of another tenant on that server, or waits
//!   until its deadline and then answers 503 `unavailable`. Per server because what the budget
//!   protects is each server's `max_connections`: accounts on one saturated server never wait
//!   for, nor evict, anything on another, and everything that coordinates the budget (waiters,
//!   closing connections, the reserve, borrowing beyond a pool's share) is per server too.
//! * A reaper closes connections idle for longer than the idle timeout and drops pools that
//!   have no connection left.
//! * No map guard is ever held across an `.await`: entries are `Arc`s cloned out of the map.
//! * The map is keyed by the account *and* its placement (server, database). When an account
//!   moves (`placement:` notification) its pools are dropped; for a minute after, a pool about
//!   to open checks the placement against the catalog, so that a request still holding the
//!   account's row from before the move answers 503 `account_moving` instead of opening a pool
//!   to the old database.
//!
//! Health (see `docs/tenancy.md`, "When the database fails"):
//!
//! * A returned connection is checked before it is idle again (a `Sync` round trip, as sqlx's
//!   own pool does, in the background after the response): one that fails the check — I/O
//!   error, terminated by the server, still inside a transaction after a cancelled request — is
//!   dropped and its budget permit released; it never reaches the idle list.
//! * An idle connection is checked before it is handed out when it has been idle for a while,
//!   or when a broken connection (or the loss of the catalog listener's connection) was seen
//!   anywhere since it was last checked: so after a database restart no request gets a
//!   connection from before the restart.
//! * New connections pass the [`Gate`]s of their server and of their database: while one is
//!   failing, attempts are single-flight with backoff, and a missing tenant database answers
//!   503 `account_unavailable`.
//! * Every wait is bounded by the request's acquire deadline; every tenant connection carries
//!   a server-side `statement_timeout`.
//!
//! sqlx's `PgPool` cannot be used per tenant here because it offers no way to account for a
//! connection's whole lifetime against a shared budget, nor to close another tenant's idle
//! connection to make room; a pool crate such as deadpool has the same gap (and checks
//! returned objects only when they are next handed out). This pool does just that and no more.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{Notify, OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::catalog::Account;
use super::gate::{ConnectOutcome, Gate, Scope};
use super::pool_error::PoolError;
use super::provision::Provisioner;
use crate::fleet::Endpoint;

/// An idle connection idle for this long is checked before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);
/// A connection attempt that timed out counts as a failure of the server only if it had at
/// least this long (a request that reached its deadline while connecting says nothing).
const MIN_TIMEOUT_EVIDENCE: Duration = Duration::from_millis(500);
/// Closing a connection (the `Terminate` message) gives up after this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After `Terminate`, the server's backend still holds its slot until its process has exited;
/// the budget permit is kept this much longer so that the server never counts more of our
/// connections than the budget.
const BACKEND_EXIT_GRACE: Duration = Duration::from_millis(50);
/// How long after an account's placement changed a new pool checks it against the catalog:
/// longer than a notification takes, and than the catalog cache keeps a row.
const MOVED_RECHECK: Duration = Duration::from_secs(60);
/// The part of the budget kept free (one in this many permits, at least one): see
/// [`Inner::keep_reserve`].
const RESERVE_DIVISOR: usize = 10;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections per tenant pool.
    pub pool_max: usize,
    /// Connections to one database server, across the tenant pools on it.
    pub budget: usize,
    /// How long a request waits for a connection before 503.
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Server-side `statement_timeout` of every tenant connection (`None`: the server's own).
    pub statement_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectLabels {
    pub outcome: ConnectOutcome,
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
    /// Broken connections dropped (they failed their health check).
    pub broken: Counter,
    /// Connection attempts, by outcome.
    pub connects: Family<ConnectLabels, Counter>,
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
    /// Keyed by [`pool_key`]: the account *and* where its database is, so that a request
    /// still holding the account's row from before a move never reaches the new placement's
    /// pool with the old one's connections, nor the reverse.
    map: DashMap<String, Arc<OnceCell<Arc<TenantPool>>>>,
    /// Accounts whose pools were dropped because their placement changed, and when: for a
    /// while a pool about to open for one of them checks its placement against the catalog
    /// first (see [`TenantPools::open_pool`]).
    moved: DashMap<String, Instant>,
    /// One slot per database server (see [`Inner::server_of`]), shared by the pools of its
    /// tenants. Slots are never removed: there are only as many as servers in use.
    servers: DashMap<String, Arc<ServerSlot>>,
    settings: PoolSettings,
    provisioner: Provisioner,
    shared: Arc<Shared>,
}

/// A database server as the pool map sees it: the gate of its connection attempts, and its
/// connection budget with what coordinates it. Pools on other servers never touch it.
struct ServerSlot {
    gate: Gate,
    /// A permit per connection open to this server.
    budget: Arc<Semaphore>,
    /// The budget's size (see [`Inner::keep_reserve`]).
    budget_size: usize,
    /// Requests waiting for a permit of this budget, and connections to this server being
    /// closed whose permits are about to return: a waiter evicts an idle connection only while
    /// the first outnumbers the second, so one waiter costs at most one eviction.
    waiters: AtomicUsize,
    closing: AtomicUsize,
    /// Signalled when a connection to this server turns idle while requests wait for its
    /// budget.
    idle_returned: Notify,
}

/// Shared by the map and every pool, whatever their server.
struct Shared {
    /// Raised whenever a broken connection is seen (or the catalog listener lost its
    /// connection): idle connections checked before the current value are checked again
    /// before they are handed out.
    suspicion: AtomicU64,
    /// How long the health check of a returned connection may take.
    check_timeout: Duration,
    counters: PoolCounters,
}

impl Shared {
    fn suspicion(&self) -> u64 {
        self.suspicion.load(Ordering::Acquire)
    }

    fn raise_suspicion(&self) {
        self.suspicion.fetch_add(1, Ordering::AcqRel);
    }
}

struct TenantPool {
    slug: String,
    options: PgConnectOptions,
    shared: Arc<Shared>,
    /// The server the tenant's database is on: its gate and its budget.
    server: Arc<ServerSlot>,
    database_gate: Gate,
    /// Connections this pool may always have (`KATAVEN_TENANT_POOL_MAX`); beyond it only
    /// while its server's budget has headroom.
    share: usize,
    /// Signalled when one of this pool's connections turns idle.
    returned: Notify,
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
    /// [`Shared::suspicion`] when the connection was last known to be healthy.
    checked_at: u64,
}

enum AcquireError {
    /// The pool was dropped from the map meanwhile; look it up again.
    Retired,
    Failed(PoolError),
}

impl From<PoolError> for AcquireError {
    fn from(e: PoolError) -> Self {
        Self::Failed(e)
    }
}

impl TenantPools {
    pub fn new(provisioner: Provisioner, settings: PoolSettings, counters: PoolCounters) -> Self {
        let shared = Arc::new(Shared {
            suspicion: AtomicU64::new(0),
            check_timeout: settings.acquire_timeout,
            counters,
        });
        let inner = Inner {
            map: DashMap::new(),
            moved: DashMap::new(),
            servers: DashMap::new(),
            settings,
            provisioner,
            shared,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Makes server `id` known before any of its accounts is used, so that the budget gauge
    /// shows its budget from the start (the instance does this for the system database's).
    pub async fn know_server(&self, id: &str) -> anyhow::Result<()> {
        let endpoint = self.inner.provisioner.servers().get(id).await?;
        let (key, budget) = self.inner.server_of(&endpoint);
        self.inner.slot_for(key, budget);
        Ok(())
    }

    /// Every idle connection is checked before its next use: something (the catalog
    /// listener's connection, say) suggests that the database server went away.
    pub fn suspect_idle_connections(&self) {
        self.inner.shared.raise_suspicion();
    }

    /// A connection to the account's tenant database. Call only after the caller is authorized.
    pub async fn acquire(&self, account: &Account) -> Result<TenantConn, PoolError> {
        let deadline = Instant::now() + self.inner.settings.acquire_timeout;
        loop {
            let pool = self.pool_for(account).await?;
            match pool.acquire(&self.inner, deadline).await {
                Ok(conn) => return Ok(conn),
                Err(AcquireError::Retired) => continue,
                Err(AcquireError::Failed(e)) => {
                    if !matches!(
                        e,
                        PoolError::DatabaseDown { .. } | PoolError::Internal(_) | PoolError::Moved
                    ) {
                        self.inner.shared.counters.acquire_timeouts.inc();
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn pool_for(&self, account: &Account) -> Result<Arc<TenantPool>, PoolError> {
        let key = pool_key(account);
        // Clone the cell out so the map's shard lock is released before any await.
        let cell = self
            .inner
            .map
            .entry(key.clone())
            .or_default()
            .value()
            .clone();
        let opened = cell
            .get_or_try_init(|| self.open_pool(account))
            .await
            .cloned();
        if let Err(PoolError::Moved) = opened {
            // No pool will ever open under the old placement's key.
            self.inner.map.remove_if(&key, |_, c| Arc::ptr_eq(c, &cell));
        }
        let pool = opened?;
        // Forgotten while it opened (the account moved meanwhile): the pool is no longer in
        // the map, so nothing would ever close its connections; they close when returned.
        let current = self
            .inner
            .map
            .get(&key)
            .is_some_and(|c| Arc::ptr_eq(c.value(), &cell));
        if !current {
            pool.retired.store(true, Ordering::Release);
        }
        Ok(pool)
    }

    async fn open_pool(&self, account: &Account) -> Result<Arc<TenantPool>, PoolError> {
        let inner = &self.inner;
        // Shortly after the account's placement changed, a request may still hold its row
        // from before (read before the notification arrived): it must not open a pool to the
        // old database, where writes meet the fence and reads find old data.
        let recently_moved = inner
            .moved
            .get(&account.slug)
            .is_some_and(|at| at.elapsed() < MOVED_RECHECK);
        if recently_moved {
            let now = super::catalog::account(inner.provisioner.catalog().pool(), &account.slug)
                .await
                .map_err(|e| PoolError::of_catalog(e.into()))?;
            let same = now.is_some_and(|now| {
                now.server == account.server && now.database_name == account.database_name
            });
            if !same {
                return Err(PoolError::Moved);
            }
        }
        let endpoint = inner
            .provisioner
            .servers()
            .get(&account.server)
            .await
            .map_err(PoolError::of_catalog)?;
        let mut options = endpoint.database(&account.database_name);
        if let Some(limit) = inner.settings.statement_timeout {
            options = options.options([("statement_timeout", format!("{}ms", limit.as_millis()))]);
        }
        let (key, budget) = inner.server_of(&endpoint);
        let server = inner.slot_for(key, budget);
        let pool = Arc::new(TenantPool {
            slug: account.slug.clone(),
            options,
            shared: inner.shared.clone(),
            database_gate: Gate::new(Scope::Database, account.slug.clone()),
            server,
            share: inner.settings.pool_max,
            returned: Notify::new(),
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
                Err(AcquireError::Failed(e)) => return Err(e),
                Err(AcquireError::Retired) => unreachable!("a new pool is not in the map yet"),
            };
            tracing::info!(account = %account.slug, from = account.schema_version, "migrating tenant on first use");
            inner
                .provisioner
                .migrate_tenant_on(&mut conn, &account.slug)
                .await
                .map_err(|e| {
                    tracing::error!(account = %account.slug, error = ?e, "tenant migration failed");
                    PoolError::Upgrading
                })?;
        }
        inner.shared.counters.cold_opens.inc();
        Ok(pool)
    }

    /// `budget_available` is the sum over the servers in use.
    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            pools: 0,
            connections_open: 0,
            connections_in_use: 0,
            budget_available: self
                .inner
                .servers
                .iter()
                .map(|s| s.value().budget.available_permits())
                .sum(),
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

    /// The accounts whose pools are open now (what background work that should not open pools
    /// of its own may visit).
    pub fn open_accounts(&self) -> Vec<String> {
        let mut slugs: Vec<String> = self
            .inner
            .map
            .iter()
            .filter_map(|e| e.value().get().map(|pool| pool.slug.clone()))
            .collect();
        slugs.sort_unstable();
        slugs.dedup();
        slugs
    }

    /// Drops a tenant's pools (its account changed: deleted, moved, suspended). Idle
    /// connections close now, connections in use when they are returned; the next request
    /// opens a new pool. A pool still opening is dropped too (see [`Self::pool_for`]).
    pub fn forget(&self, slug: &str) {
        self.inner.moved.insert(slug.to_owned(), Instant::now());
        let mut forgotten = Vec::new();
        self.inner.map.retain(|key, cell| {
            let of_slug = slug_of_key(key) == slug;
            if of_slug {
                forgotten.push(cell.clone());
            }
            !of_slug
        });
        for cell in forgotten {
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
        self.inner
            .moved
            .retain(|_, at| now.duration_since(*at) < MOVED_RECHECK);
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

    /// Starts closing an idle connection of any pool but `except` on the same server (only
    /// that frees a permit of its budget): of a pool beyond its share if there is one, else of
    /// the pool used least recently. Returns whether one was found.
    fn evict_one_idle(&self, except: &TenantPool) -> bool {
        let victim = self
            .inner
            .map
            .iter()
            .filter_map(|e| e.value().get().cloned())
            .filter(|p| {
                Arc::ptr_eq(&p.server, &except.server)
                    && !std::ptr::eq(Arc::as_ptr(p), except)
                    && !p.idle.lock().is_empty()
            })
            .min_by_key(|p| {
                (
                    p.open.load(Ordering::Acquire) <= p.share,
                    *p.last_used.lock(),
                )
            });
        let Some(pool) = victim else { return false };
        let conn = {
            let mut idle = pool.idle.lock();
            if idle.is_empty() {
                return false;
            }
            idle.remove(0)
        };
        pool.close(conn);
        self.inner.shared.counters.evictions.inc();
        true
    }
}

impl Inner {
    /// The server a tenant's connections count against, and that server's budget: its id in
    /// the catalog's `servers`, and its `connection_budget` or else `KATAVEN_DB_CONNECTION_BUDGET`.
    /// The one place that decides both.
    fn server_of(&self, endpoint: &Endpoint) -> (String, usize) {
        let budget = endpoint.connection_budget.unwrap_or(self.settings.budget);
        (endpoint.id.clone(), budget)
    }

    /// The slot of server `key`, created with a budget of `budget` connections on first use
    /// (an existing slot keeps its own).
    fn slot_for(&self, key: String, budget: usize) -> Arc<ServerSlot> {
        self.servers
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(ServerSlot {
                    gate: Gate::new(Scope::Server, key),
                    budget: Arc::new(Semaphore::new(budget)),
                    budget_size: budget,
                    waiters: AtomicUsize::new(0),
                    closing: AtomicUsize::new(0),
                    idle_returned: Notify::new(),
                })
            })
            .clone()
    }

    /// A permit of the requester's server's budget for one new connection. When that budget is
    /// spent, idle connections of other tenants on the same server are closed to make room (at
    /// most one per waiting request); otherwise the request waits for a permit, or for a
    /// connection to that server to turn idle, until its deadline.
    async fn budget_permit(
        self: &Inner,
        pools: &TenantPools,
        requester: &TenantPool,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, PoolError> {
        let server = &requester.server;
        if let Ok(permit) = server.budget.clone().try_acquire_owned() {
            self.keep_reserve(pools, requester);
            return Ok(permit);
        }
        server.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = scopeguard(|| {
            server.waiters.fetch_sub(1, Ordering::AcqRel);
        });
        loop {
            let notified = server.idle_returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if server.closing.load(Ordering::Acquire) < server.waiters.load(Ordering::Acquire) {
                pools.evict_one_idle(requester);
            }
            tokio::select! {
                biased;
                permit = server.budget.clone().acquire_owned() => {
                    let permit = permit
                        .map_err(|_| PoolError::ShuttingDown)?;
                    self.keep_reserve(pools, requester);
                    return Ok(permit);
                }
                _ = &mut notified => continue,
                _ = sleep_until(deadline) => {
                    return Err(PoolError::BudgetSpent);
                }
            }
        }
    }
}

impl Inner {
    /// Keeps a tenth of each server's budget free for accounts that need a new connection: when
    /// a permit taken leaves less than that free (counting connections already closing), the
    /// least recently used idle connections of other accounts on the same server start closing.
    /// Without the reserve, once idle connections fill the budget, every account's first
    /// request waits for one of them to close and for its backend to exit
    /// ([`BACKEND_EXIT_GRACE`]): 50 ms and more, where a new connection takes a few. Idle
    /// connections only are closed; busy ones keep working.
    fn keep_reserve(&self, pools: &TenantPools, requester: &TenantPool) {
        let server = &requester.server;
        let reserve = (server.budget_size / RESERVE_DIVISOR).max(1);
        let free = server.budget.available_permits() + server.closing.load(Ordering::Acquire);
        for _ in free..reserve {
            if !pools.evict_one_idle(requester) {
                break;
            }
        }
    }
}

/// The pool map's key of an account: its slug, server and database (`\0` cannot occur in them).
fn pool_key(account: &Account) -> String {
    format!(
        "{}\0{}\0{}",
        account.slug, account.server, account.database_name
    )
}

/// The slug in a [`pool_key`].
fn slug_of_key(key: &str) -> &str {
    key.split('\0').next().unwrap_or_default()
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

/// An idle connection taken out of its pool to be checked. If the request is cancelled while
/// the check is under way, the connection (out of step, its answer unread) is closed and its
/// place in the pool given back.
struct Checking<'a> {
    pool: &'a TenantPool,
    idle: Option<IdleConn>,
}

impl Checking<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.idle.as_mut().expect("a connection under check").conn
    }

    fn done(mut self) -> IdleConn {
        self.idle.take().expect("a connection under check")
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        if let Some(idle) = self.idle.take() {
            self.pool.close_in_background(idle.conn, idle.permit, false);
        }
    }
}

/// A connection counted in its pool's `open` before it exists ([`TenantPool::reserve`]). The
/// count is given back when the place is dropped — the connection could not be opened, or the
/// request was cancelled while it waited for the budget or connected (a client gone, a time
/// limit) — unless the connection was opened and [`Place::taken`].
struct Place<'a>(&'a TenantPool);

impl<'a> Place<'a> {
    /// Counts a connection about to be opened beyond any limit.
    fn count(pool: &'a TenantPool) -> Self {
        pool.open.fetch_add(1, Ordering::AcqRel);
        Self(pool)
    }

    fn taken<T>(self, opened: T) -> T {
        std::mem::forget(self);
        opened
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantPool {
    async fn acquire(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        deadline: Instant,
    ) -> Result<TenantConn, AcquireError> {
        if self.retired.load(Ordering::Acquire) {
            return Err(AcquireError::Retired);
        }
        *self.last_used.lock() = Instant::now();
        let share = inner.settings.pool_max;
        loop {
            // Registered before looking, so that a connection returned meanwhile wakes us.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();

            if let Some(conn) = self.take_idle(deadline).await? {
                return Ok(self.checked_out(conn));
            }
            // Within the pool's share: a new connection, waiting for the budget if need be.
            if let Some(place) = self.reserve(|open| open < share) {
                let opened = self.connect(inner, deadline).await?;
                return Ok(self.checked_out(place.taken(opened)));
            }
            // Beyond it: only while the server's budget has headroom nobody else is waiting for.
            if self.server.waiters.load(Ordering::Acquire) == 0 {
                if let Ok(permit) = self.server.budget.clone().try_acquire_owned() {
                    let place = Place::count(self);
                    let opened = self.connect_with(permit, deadline).await?;
                    return Ok(self.checked_out(place.taken(opened)));
                }
            }
            // Otherwise wait for one of this pool's connections to come back.
            tokio::select! {
                _ = &mut returned => {}
                _ = sleep_until(deadline) => {
                    return Err(PoolError::AccountBusy.into());
                }
            }
        }
    }

    /// Counts a connection about to be opened if `allowed(open)`.
    fn reserve(&self, allowed: impl Fn(usize) -> bool) -> Option<Place<'_>> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                allowed(open).then_some(open + 1)
            })
            .is_ok()
            // Built only on success: a `Place` dropped gives a count back.
            .then(|| Place(self))
    }

    fn checked_out(
        self: &Arc<Self>,
        (conn, permit): (PgConnection, OwnedSemaphorePermit),
    ) -> TenantConn {
        self.in_use.fetch_add(1, Ordering::AcqRel);
        TenantConn {
            conn: Some(conn),
            permit: Some(permit),
            pool: self.clone(),
        }
    }

    /// The newest idle connection, checked first if it may have gone stale; `None` when there
    /// is no idle connection left.
    async fn take_idle(
        &self,
        deadline: Instant,
    ) -> Result<Option<(PgConnection, OwnedSemaphorePermit)>, PoolError> {
        loop {
            let candidate = self.idle.lock().pop();
            let Some(idle) = candidate else {
                return Ok(None);
            };
            let suspect = idle.since.elapsed() >= PING_IDLE_AFTER
                || idle.checked_at != self.shared.suspicion();
            let idle = if suspect {
                let mut checking = Checking {
                    pool: self,
                    idle: Some(idle),
                };
                let checked = timeout_at(deadline, checking.conn().ping()).await;
                let idle = checking.done();
                match checked {
                    Ok(Ok(())) => idle,
                    Ok(Err(e)) => {
                        // Closed by the server (restart, terminated backend): drop it and try
                        // the next one.
                        tracing::debug!(account = %self.slug, error = %e, "idle tenant connection broken");
                        self.discard(idle.conn, idle.permit);
                        continue;
                    }
                    Err(_) => {
                        self.discard(idle.conn, idle.permit);
                        return Err(PoolError::NoAnswer);
                    }
                }
            } else {
                idle
            };
            return Ok(Some((idle.conn, idle.permit)));
        }
    }

    /// A new connection, with its budget permit (waiting for one, or making room, if need be).
    async fn connect(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        deadline: Instant,
    ) -> Result<(PgConnection, OwnedSemaphorePermit), PoolError> {
        let pools = TenantPools {
            inner: inner.clone(),
        };
        let permit = inner.budget_permit(&pools, self, deadline).await?;
        self.connect_with(permit, deadline).await
    }

    /// A new connection under `permit`: through the server's and the database's gates, before
    /// `deadline`.
    async fn connect_with(
        &self,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<(PgConnection, OwnedSemaphorePermit), PoolError> {
        let server = self.server.gate.pass(deadline).await?;
        let database = self.database_gate.pass(deadline).await?;
        let started = Instant::now();
        let result = timeout_at(deadline, self.options.connect()).await;
        let outcome = match &result {
            Ok(r) => ConnectOutcome::of(&r.as_ref().map(|_| ())),
            // Only a real wait says something about the server; a request that ran out of
            // time while connecting does not.
            Err(_) if started.elapsed() >= MIN_TIMEOUT_EVIDENCE => ConnectOutcome::Timeout,
            Err(_) => {
                return Err(PoolError::NoAnswer);
            }
        };
        self.shared
            .counters
            .connects
            .get_or_create(&ConnectLabels { outcome })
            .inc();
        match outcome.scope() {
            Scope::Server => {
                self.server.gate.record(server, outcome);
                drop(database);
            }
            Scope::Database => {
                self.server.gate.record(server, ConnectOutcome::Ok);
                self.database_gate.record(database, outcome);
            }
        }
        match result {
            Ok(Ok(conn)) => Ok((conn, permit)),
            Ok(Err(e)) => {
                tracing::debug!(account = %self.slug, error = %e, "cannot connect to tenant database");
                Err(match outcome.scope() {
                    Scope::Database => PoolError::DatabaseDown {
                        retry_after_secs: crate::error::UNAVAILABLE_RETRY_AFTER_SECS,
                    },
                    Scope::Server => PoolError::ServerRefused,
                })
            }
            Err(_) => Err(PoolError::NoAnswer),
        }
    }

    /// Closes a healthy connection in the background; its budget permit is released once it
    /// is closed.
    fn close(&self, idle: IdleConn) {
        self.close_in_background(idle.conn, idle.permit, true);
    }

    /// Drops a broken connection (no goodbye to a server that is not listening) and makes every
    /// idle connection suspect.
    fn discard(&self, conn: PgConnection, permit: OwnedSemaphorePermit) {
        self.shared.counters.broken.inc();
        self.shared.raise_suspicion();
        self.close_in_background(conn, permit, false);
    }

    fn close_in_background(
        &self,
        conn: PgConnection,
        permit: OwnedSemaphorePermit,
        graceful: bool,
    ) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let server = self.server.clone();
        server.closing.fetch_add(1, Ordering::AcqRel);
        let closing = async move {
            if graceful {
                let _ = timeout(CLOSE_TIMEOUT, conn.close()).await;
            } else {
                drop(conn);
            }
            tokio::time::sleep(BACKEND_EXIT_GRACE).await;
            drop(permit);
            server.closing.fetch_sub(1, Ordering::AcqRel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(closing);
            }
            // No runtime left (process exit): the socket closes with the process.
            Err(_) => {
                self.server.closing.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Takes back a connection after use: it is checked (and a transaction a cancelled request
    /// left behind is rolled back) in the background, and turns idle only if healthy. A
    /// connection beyond the pool's share is closed instead while others wait for its server's
    /// budget.
    fn release(self: &Arc<Self>, conn: PgConnection, permit: OwnedSemaphorePermit) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.retired.load(Ordering::Acquire) {
            self.close_in_background(conn, permit, true);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        let pool = self.clone();
        runtime.spawn(async move {
            let mut conn = conn;
            // The check drains whatever a cancelled or failed request left (unread rows, the
            // queued ROLLBACK of a dropped transaction, the answer of a server that is going
            // away) and waits for the server to be ready. A connection whose last exchange
            // completed has nothing pending and costs no round trip: `flush` reads only what
            // is owed (sqlx's `wait_until_ready`; its own pool pings instead, a round trip per
            // request). `flush` is hidden from sqlx's documentation: the pinned version is
            // checked by the fault and pool tests.
            let checked = timeout(pool.shared.check_timeout, Connection::flush(&mut conn)).await;
            let healthy = matches!(checked, Ok(Ok(()))) && !conn.is_in_transaction();
            let contended = pool.server.waiters.load(Ordering::Acquire) > 0;
            if !healthy {
                tracing::debug!(account = %pool.slug, "returned tenant connection broken; dropped");
                pool.discard(conn, permit);
            } else if pool.retired.load(Ordering::Acquire)
                || (contended && pool.open.load(Ordering::Acquire) > pool.share)
            {
                // Beyond its share while others on its server wait: the permit goes to them.
                pool.close_in_background(conn, permit, true);
            } else {
                pool.idle.lock().push(IdleConn {
                    conn,
                    permit,
                    since: Instant::now(),
                    checked_at: pool.shared.suspicion(),
                });
                pool.returned.notify_one();
                if contended {
                    pool.server.idle_returned.notify_waiters();
                }
            }
        });
    }
}

/// A tenant connection checked out for one request; returned to its pool when dropped.
pub struct TenantConn {
    conn: Option<PgConnection>,
    permit: Option<OwnedSemaphorePermit>,
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
