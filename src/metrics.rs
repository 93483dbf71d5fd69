//! Prometheus metrics, one registry per application instance (no global recorder, so several
//! instances in one process — the tests — keep their own numbers).
//!
//! Labels never carry the account: with thousands of tenants the series count would explode.
//! Nor do they carry anything a client chose: every label value comes from a fixed set (the
//! label types below can hold nothing else), so that a stranger sending random methods, paths
//! or headers cannot grow the registry.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Extensions, Method};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::auth::oidc::OidcCounters;
use crate::tenancy::pools::{PoolCounters, PoolStats};

/// A label type whose values are a fixed set of names plus `other`, for anything else.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant,)*
            Other,
        }

        impl $name {
            /// Every value, `Other` last.
            pub const ALL: &[Self] = &[$(Self::$variant,)* Self::Other];

            /// The label value.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)*
                    Self::Other => "other",
                }
            }

            /// The value called `name`; `Other` for a name outside the set.
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($value => Self::$variant,)*
                    _ => Self::Other,
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
                fmt::Write::write_str(encoder, self.name())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

label_values! {
    /// The `method` label (and log field): the standard methods, `other` for any other token
    /// (methods are case-sensitive: `get` is `other`).
    MethodLabel {
        Get => "GET",
        Head => "HEAD",
        Post => "POST",
        Put => "PUT",
        Patch => "PATCH",
        Delete => "DELETE",
        Options => "OPTIONS",
        Trace => "TRACE",
        Connect => "CONNECT",
    }
}

impl MethodLabel {
    pub fn of(method: &Method) -> Self {
        Self::from_name(method.as_str())
    }
}

label_values! {
    /// The `limit` label of `kataven_rate_limited_total`: the tripped limit.
    LimitLabel {
        Minute => "minute",
        Hour => "hour",
        Day => "day",
        Concurrent => "concurrent",
        Ip => "ip",
        ClientKey => "client_key",
        Auth => "auth",
        UserTokens => "user_tokens",
    }
}

label_values! {
    /// The `reason` label of `kataven_auth_failures_total` (every reason is listed in
    /// `docs/auth.md`).
    AuthFailureReason {
        MissingBearer => "missing_bearer",
        MalformedAuthorization => "malformed_authorization",
        MalformedApiKey => "malformed_api_key",
        BadChecksum => "bad_checksum",
        UnknownApiKey => "unknown_api_key",
        DisabledApiKey => "disabled_api_key",
        ExpiredApiKey => "expired_api_key",
        NoIdentityProvider => "no_identity_provider",
        MalformedToken => "malformed_token",
        WrongIssuer => "wrong_issuer",
        DisallowedAlg => "disallowed_alg",
        MissingKid => "missing_kid",
        UnknownKid => "unknown_kid",
        AlgMismatch => "alg_mismatch",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        WrongAudience => "wrong_audience",
        BadSignature => "bad_signature",
        MissingClaim => "missing_claim",
        InvalidToken => "invalid_token",
        EmptySub => "empty_sub",
        ForgedApiKey => "forged_api_key",
        AccessToken => "access_token",
        AzpMismatch => "azp_mismatch",
        LocalCredential => "local_credential",
        UserinfoRefused => "userinfo_refused",
    }
}

/// The `route` label (and log field): the matched route template
/// (`/api/v1/agents/{id}`), or `unmatched`. Only a [`MatchedPath`] makes one, so its values
/// are the router's templates, never a raw path. It shares the router's own string.
#[derive(Clone, Debug, Default)]
pub struct RouteLabel(Option<MatchedPath>);

impl RouteLabel {
    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl std::hash::Hash for RouteLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// Where the router leaves the matched route for the request envelope around it (the span,
/// the log line and the metrics are made before routing and finished after it). Put into the
/// request by [`crate::routes`]' `trace`, filled by [`LabelRoute`].
#[derive(Clone, Default)]
pub struct MatchedRoute(Arc<OnceLock<MatchedPath>>);

impl MatchedRoute {
    pub fn label(&self) -> RouteLabel {
        RouteLabel(self.0.get().cloned())
    }

    /// Whether the router has matched a route for the request.
    pub fn is_matched(&self) -> bool {
        self.0.get().is_some()
    }

    /// The request's slot (an empty one for a request that came without).
    pub fn of(extensions: &Extensions) -> Self {
        extensions.get::<Self>().cloned().unwrap_or_default()
    }
}

/// Wraps each route: records the route it matched in the request's span (`route`) and in its
/// [`MatchedRoute`]. The rest of the envelope wraps the router once, outside the routing,
/// because a layer on the router is cloned, with everything under it, for every request.
#[derive(Clone)]
pub struct LabelRoute<S>(pub S);

impl<S> tower::Service<Request> for LabelRoute<S>
where
    S: tower::Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(path) = req.extensions().get::<MatchedPath>() {
            tracing::Span::current().record("route", path.as_str());
            if let Some(slot) = req.extensions().get::<MatchedRoute>() {
                let _ = slot.0.set(path.clone());
            }
        }
        self.0.call(req)
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

impl fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: MethodLabel,
    pub route: RouteLabel,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: MethodLabel,
    pub route: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: LimitLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: AuthFailureReason,
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

    /// Counts a 429 by the tripped limit's name (`minute`, …, `ip`, `client_key`; any other
    /// name counts as `other`).
    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited_counter(LimitLabel::from_name(limit))
            .inc();
    }

    /// The counter of 429s for one limit.
    pub fn rate_limited_counter(&self, limit: LimitLabel) -> Counter {
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .clone()
    }

    /// Counts a refused bearer by reason (a name outside [`AuthFailureReason`] counts as
    /// `other`).
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: AuthFailureReason::from_name(reason),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts every request by method label and matched route (never the raw method or path: a
/// client could explode the series).
pub async fn middleware(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = MethodLabel::of(req.method());
    let matched = MatchedRoute::of(req.extensions());
    let response = next.run(req).await;
    let route = matched.label();
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_ones_are_other() {
        for (method, label) in [
            ("GET", "GET"),
            ("HEAD", "HEAD"),
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("PATCH", "PATCH"),
            ("DELETE", "DELETE"),
            ("OPTIONS", "OPTIONS"),
            ("TRACE", "TRACE"),
            ("CONNECT", "CONNECT"),
            ("get", "other"),
            ("QUERY", "other"),
            ("PROPFIND", "other"),
            ("other", "other"),
        ] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(MethodLabel::of(&method).name(), label, "{method}");
        }
        let long = Method::from_bytes("X".repeat(8192).as_bytes()).unwrap();
        assert_eq!(MethodLabel::of(&long), MethodLabel::Other);
    }

    #[test]
    fn every_limit_name_has_its_label() {
        use crate::limits::Dimension;
        for dimension in [
            Dimension::Minute,
            Dimension::Hour,
            Dimension::Day,
            Dimension::Concurrent,
        ] {
            let label = LimitLabel::from_name(dimension.name());
            assert_ne!(label, LimitLabel::Other, "{dimension:?}");
            assert_eq!(label.name(), dimension.name());
        }
        assert_eq!(LimitLabel::from_name("ip"), LimitLabel::Ip);
        assert_eq!(LimitLabel::from_name("client_key"), LimitLabel::ClientKey);
        assert_eq!(LimitLabel::from_name("anything"), LimitLabel::Other);
    }

    /// The reasons are the ones `docs/auth.md` lists, no more, no fewer.
    #[test]
    fn auth_failure_reasons_are_the_documented_ones() {
        let doc = include_str!("../docs/auth.md");
        let table = doc
            .split("## Auth failure reasons")
            .nth(1)
            .expect("the reasons section")
            .split("\n## ")
            .next()
            .unwrap();
        let documented: std::collections::BTreeSet<&str> = table
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
            .collect();
        let labels: std::collections::BTreeSet<&str> = AuthFailureReason::ALL
            .iter()
            .filter(|r| **r != AuthFailureReason::Other)
            .map(|r| r.name())
            .collect();
        assert_eq!(documented, labels);
        for reason in AuthFailureReason::ALL {
            assert_eq!(AuthFailureReason::from_name(reason.name()), *reason);
        }
        assert_eq!(
            AuthFailureReason::from_name("made_up"),
            AuthFailureReason::Other
        );
    }

    #[test]
    fn label_values_render_as_their_names() {
        let metrics = Metrics::new();
        metrics.rate_limited("client_key");
        metrics.rate_limited(&"x".repeat(1000));
        metrics.auth_failure("bad_checksum");
        metrics.auth_failure(&"y".repeat(1000));
        let text = metrics.render(PoolStats {
            pools: 0,
            connections_open: 0,
            connections_in_use: 0,
            budget_available: 0,
        });
        assert!(text.contains(r#"kataven_rate_limited_total{limit="client_key"} 1"#));
        assert!(text.contains(r#"kataven_rate_limited_total{limit="other"} 1"#));
        assert!(text.contains(r#"kataven_auth_failures_total{reason="bad_checksum"} 1"#));
        assert!(text.contains(r#"kataven_auth_failures_total{reason="other"} 1"#));
        assert!(!text.contains("xxxx") && !text.contains("yyyy"));
    }
}
