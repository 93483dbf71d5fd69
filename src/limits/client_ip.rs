//! The client's IP address, and per-IP limits on public endpoints.
//!
//! The address is the socket's peer, unless the peer is a trusted proxy
//! (`KATAVEN_TRUSTED_PROXIES`): then `X-Forwarded-For` is read from the right, skipping trusted
//! proxies, and the first untrusted address is the client. A client cannot forge its address by
//! sending `X-Forwarded-For` itself: only the entries appended by trusted proxies count.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use super::ClientLimit;
use crate::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "KATAVEN_TRUSTED_PROXIES: `{e}` is not a CIDR or an IP address"
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that came from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}

/// A quota per key (client IP, widget key), refilled evenly, with bursts up to the quota.
pub struct PerKeyLimiter<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static> PerKeyLimiter<K> {
    pub fn per_minute(n: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"));
        Self {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its quota.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Forgets idle keys (governor keeps every key until told to).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Per-IP limits for public endpoints.
pub struct IpLimiter {
    limiter: PerKeyLimiter<IpAddr>,
    proxies: TrustedProxies,
    pub refused: prometheus_client::metrics::counter::Counter,
}

impl IpLimiter {
    pub fn new(
        per_minute: u32,
        proxies: TrustedProxies,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter: PerKeyLimiter::per_minute(per_minute),
            proxies,
            refused,
        })
    }

    /// The client address of a request (`None` without connection information).
    pub fn client_of<B>(&self, req: &axum::http::Request<B>) -> Option<IpAddr> {
        self.client_ip(req.extensions(), req.headers())
    }

    /// The client address of a request, from its parts.
    pub fn client_ip(
        &self,
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
    ) -> Option<IpAddr> {
        let peer = extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        Some(self.proxies.client_ip(peer, headers))
    }

    /// `Err(seconds to wait)` when the client is over its quota.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.limiter.check(&ip)
    }

    /// Forgets idle clients every minute until aborted.
    pub fn spawn_janitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                this.limiter.forget_idle();
            }
        })
    }
}

/// Middleware for public routes: 429 `rate_limited` (`limit: "ip"`) over the per-IP quota.
/// The limiter comes from the request extensions (the router adds it).
pub async fn limit_public(req: Request, next: Next) -> Response {
    let Some(limiter) = req.extensions().get::<Arc<IpLimiter>>().cloned() else {
        return next.run(req).await;
    };
    if let Some(ip) = limiter.client_of(&req) {
        if let Err(retry_after_secs) = limiter.check(ip) {
            limiter.refused.inc();
            return ApiError::ClientRateLimited {
                limit: ClientLimit::Ip,
                retry_after_secs,
            }
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not from a proxy: the socket address, whatever the header says.
        assert_eq!(
            proxies.client_ip(ip("203.0.113.9"), &headers("1.2.3.4")),
            ip("203.0.113.9")
        );
        // From a proxy: the rightmost untrusted entry (a client-sent entry on the left is ignored).
        assert_eq!(
            proxies.client_ip(ip("10.1.2.3"), &headers("6.6.6.6, 198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            proxies.client_ip(
                ip("10.1.2.3"),
                &headers("198.51.100.7, 192.168.1.1, 10.9.9.9")
            ),
            ip("198.51.100.7")
        );
        // Nothing usable: the proxy itself.
        assert_eq!(
            proxies.client_ip(ip("10.1.2.3"), &headers("garbage")),
            ip("10.1.2.3")
        );
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
        assert!(TrustedProxies::parse(&[]).unwrap().0.is_empty());
    }
}
