//! Prometheus metrics, one registry per application instance (no global recorder, so several
//! instances in one process — the tests — keep their own numbers).
//!
//! Labels never carry the account: with thousands of tenants the series count would explode.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::auth::oidc::OidcCounters;
use crate::tenancy::pools::{PoolCounters, PoolStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub pool_counters: PoolCounters,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub oidc: OidcCounters,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub limiter_store_errors: Counter,
    pub listener_resets: Counter,
    pub cache_lookups: Family<crate::cache::LookupLabels, Counter>,
    pub readiness_probes: Counter,
    pools_open: Gauge,
    connections_open: Gauge,
    connections_in_use: Gauge,
    budget_available: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kataven");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        let pool_counters = PoolCounters::default();
        registry.register(
            "tenant_pool_cold_opens",
            "Tenant pools opened (first use or after idle close)",
            pool_counters.cold_opens.clone(),
        );
        registry.register(
            "tenant_connection_acquire_timeouts",
            "Requests answered 503 because no tenant connection was free in time",
            pool_counters.acquire_timeouts.clone(),
        );
        registry.register(
            "tenant_connection_evictions",
            "Idle tenant connections closed to make room in the connection budget",
            pool_counters.evictions.clone(),
        );
        registry.register(
            "tenant_connections_broken",
            "Broken tenant connections dropped (they failed the health check on return or before reuse)",
            pool_counters.broken.clone(),
        );
        registry.register(
            "tenant_connects",
            "Tenant connection attempts, by outcome (ok, refused, timeout, too_many_connections, …)",
            pool_counters.connects.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Authentication failures by reason",
            auth_failures.clone(),
        );
        let oidc = OidcCounters::default();
        registry.register(
            "jwks_fetches",
            "Fetches of an issuer's keys (JWKS)",
            oidc.jwks_fetches.clone(),
        );
        registry.register(
            "jwks_fetch_failures",
            "Failed key refreshes (the last good keys keep serving)",
            oidc.jwks_fetch_failures.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by tripped limit",
            rate_limited.clone(),
        );
        let limiter_store_errors = Counter::default();
        registry.register(
            "limiter_store_errors",
            "Rate-limit store (Redis) failures; the requests were let through",
            limiter_store_errors.clone(),
        );
        let listener_resets = Counter::default();
        registry.register(
            "catalog_listener_resets",
            "Times the catalog change listener lost its connection (every cache was flushed)",
            listener_resets.clone(),
        );
        let cache_lookups = Family::<crate::cache::LookupLabels, Counter>::default();
        registry.register(
            "catalog_cache_lookups",
            "Lookups in the catalog caches (accounts, members, limits, API and widget keys); a miss is a catalog query",
            cache_lookups.clone(),
        );
        let readiness_probes = Counter::default();
        registry.register(
            "readiness_probes",
            "Probes of the dependencies /readyz reports (at most about one a second)",
            readiness_probes.clone(),
        );
        let pools_open = Gauge::default();
        registry.register(
            "tenant_pools_open",
            "Tenant pools currently open",
            pools_open.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "tenant_connections_open",
            "Tenant database connections open (idle and in use)",
            connections_open.clone(),
        );
        let connections_in_use = Gauge::default();
        registry.register(
            "tenant_connections_in_use",
            "Tenant database connections checked out by requests",
            connections_in_use.clone(),
        );
        let budget_available = Gauge::default();
        registry.register(
            "tenant_connection_budget_available",
            "Connections that may still be opened within KATAVEN_DB_CONNECTION_BUDGET",
            budget_available.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            pool_counters,
            auth_failures,
            oidc,
            rate_limited,
            limiter_store_errors,
            listener_resets,
            cache_lookups,
            readiness_probes,
            pools_open,
            connections_open,
            connections_in_use,
            budget_available,
        }
    }

    /// Renders the Prometheus text format, with the pool gauges read at scrape time.
    pub fn render(&self, pools: PoolStats) -> String {
        self.pools_open.set(pools.pools as i64);
        self.connections_open.set(pools.connections_open as i64);
        self.connections_in_use.set(pools.connections_in_use as i64);
        self.budget_available.set(pools.budget_available as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .inc();
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts every request by matched route (never the raw path: ids would explode the series).
pub async fn middleware(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
