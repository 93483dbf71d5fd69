//! Readiness: the system database, and Redis when configured, probed at most once per second.
//!
//! `/readyz` answers the last probe's result; a probe runs in the background every second and,
//! when the last result is older than a few periods (the background task is not running, or
//! this is the first call), inline — one at a time, however many callers wait. So a flood of
//! `/readyz` costs the databases nothing, and readiness returns by itself once a dependency
//! answers again.
//!
//! The system database decides readiness (503 when it is down). Redis only holds the shared
//! rate-limit counters, which fail open, so a Redis outage leaves the instance ready and is
//! reported as `degraded`.
//!
//! While the system database is down, each probe also tries one connection of its own, so that
//! the log names the cause (refused, full, starting up, no answer) once when the outage begins
//! — the pool itself only says that it timed out — and says when it ends.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::time::{Instant, timeout};

use crate::limits::{Limiter, Store};
use crate::tenancy::gate::{ConnectOutcome, Gate, Scope};

/// How often the dependencies are probed.
pub const PROBE_PERIOD: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A result older than this is not trusted: the next caller probes inline.
const STALE_AFTER: Duration = Duration::from_secs(3);

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Up,
    Down,
}

/// What each dependency answered to the last probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub system_database: Check,
    /// Present when Redis is configured (`KATAVEN_REDIS_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Check>,
}

impl Checks {
    /// Ready when the system database is up.
    pub fn ready(&self) -> bool {
        self.system_database == Check::Up
    }

    pub fn degraded(&self) -> bool {
        self.redis == Some(Check::Down)
    }
}

#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// For the diagnosis of an outage: a connection of the probe's own.
    system: PgConnectOptions,
    /// Logs the system database's outages (one line when one begins, one when it ends).
    outages: Gate,
    limiter: Arc<Limiter>,
    /// `kataven_readiness_probes_total`.
    probes: prometheus_client::metrics::counter::Counter,
    last: RwLock<Option<(Checks, Instant)>>,
    /// One probe at a time.
    probing: tokio::sync::Mutex<()>,
}

impl Readiness {
    pub fn new(
        pool: PgPool,
        system: PgConnectOptions,
        limiter: Arc<Limiter>,
        probes: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let label = format!(
            "system database {}:{}",
            system.get_host(),
            system.get_port()
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                system,
                outages: Gate::new(Scope::Server, label),
                limiter,
                probes,
                last: RwLock::new(None),
                probing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The last probe's result, probing first if it is missing or stale.
    pub async fn checks(&self) -> Checks {
        if let Some(checks) = self.fresh() {
            return checks;
        }
        let _probing = self.inner.probing.lock().await;
        // Someone else may have probed while this caller waited.
        if let Some(checks) = self.fresh() {
            return checks;
        }
        self.probe().await
    }

    fn fresh(&self) -> Option<Checks> {
        let last = self.inner.last.read();
        let (checks, at) = last.as_ref()?;
        (at.elapsed() < STALE_AFTER).then_some(*checks)
    }

    async fn probe(&self) -> Checks {
        self.inner.probes.inc();
        let database = async {
            let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.inner.pool);
            match timeout(PROBE_TIMEOUT, query).await {
                Ok(Ok(_)) => {
                    if self.inner.outages.is_failing() {
                        self.inner.outages.observe(ConnectOutcome::Ok);
                    }
                    Check::Up
                }
                _ => {
                    self.diagnose().await;
                    Check::Down
                }
            }
        };
        let redis = async {
            match self.inner.limiter.store() {
                Store::Memory(_) => None,
                Store::Redis(redis) => Some(match timeout(PROBE_TIMEOUT, redis.ping()).await {
                    Ok(Ok(())) => Check::Up,
                    _ => Check::Down,
                }),
            }
        };
        let (system_database, redis) = tokio::join!(database, redis);
        let checks = Checks {
            system_database,
            redis,
        };
        let previous = self
            .inner
            .last
            .write()
            .replace((checks, Instant::now()))
            .map(|(c, _)| c);
        if previous != Some(checks) {
            if checks.ready() && !checks.degraded() {
                tracing::info!(?checks, "readiness: every dependency is up");
            } else {
                tracing::warn!(?checks, "readiness: a dependency is down");
            }
        }
        checks
    }

    /// Why the system database does not answer: one connection attempt of the probe's own,
    /// whose outcome the outage log names.
    async fn diagnose(&self) {
        let attempt = timeout(PROBE_TIMEOUT, self.inner.system.connect()).await;
        let outcome = match &attempt {
            Ok(result) => ConnectOutcome::of(&result.as_ref().map(|_| ())),
            Err(_) => ConnectOutcome::Timeout,
        };
        if let Ok(Ok(conn)) = attempt {
            conn.close().await.ok();
        }
        // A database that accepts connections but does not answer the pool's query in time
        // (overloaded) is not an outage of the server.
        if outcome != ConnectOutcome::Ok {
            self.inner.outages.observe(outcome);
        }
    }

    /// Probes every [`PROBE_PERIOD`] until the task is aborted.
    pub fn spawn_prober(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _probing = this.inner.probing.lock().await;
                this.probe().await;
            }
        })
    }
}
