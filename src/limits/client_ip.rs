//! The client's IP address, and per-IP limits on public endpoints.
//!
//! The address is the socket's peer, unless the peer is a trusted proxy
//! (`KATAVEN_TRUSTED_PROXIES`): then `X-Forwarded-For` is read from the right, skipping trusted
//! proxies, and the first untrusted address is the client. A client cannot forge its address by
//! sending `X-Forwarded-For` itself: only the entries appended by trusted proxies count.
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports for an IPv4
//! peer) are IPv4 addresses throughout.
//!
//! A client is limited under a key: its IPv4 address, or the network of its IPv6 address
//! (`KATAVEN_IPV6_PREFIX_LEN`, a /64 by default), since one IPv6 client usually holds a whole
//! /64 and could otherwise rotate through its addresses. Limiters hold at most [`MAX_KEYS`] keys.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use parking_lot::{Mutex, RwLock};

use super::ClientLimit;
use crate::error::ApiError;
use crate::log_throttle::Throttle;

/// The most keys (clients, widget keys) a [`PerKeyLimiter`] holds. A key costs about 50 bytes
/// (measured: 100,000 IP keys add 5 MB to the resident set, 100,000 widget keys 3 MB), so a
/// limiter stays under about 5 MB (see `docs/limits.md`).
pub const MAX_KEYS: usize = 100_000;

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

    /// Whether `ip` (canonical: an IPv4-mapped address is IPv4) is a trusted proxy.
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that came from `peer`, in canonical form (an
    /// IPv4-mapped IPv6 address as IPv4).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}

/// The key a client address is limited under: an IPv4 address (IPv4-mapped ones included) as
/// it is, an IPv6 address by its network of `ipv6_prefix_len` bits (other bits zero).
pub fn limit_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// A quota per key (client IP, widget key), refilled evenly, with bursts up to the quota.
///
/// Governor keeps every key it has seen until told to forget the idle ones, so the keys are
/// capped: once up to `max_keys` may be held, the idle ones are forgotten at once (not at the
/// next janitor run), and if more than half the cap is still in use after that (a flood of
/// distinct clients, each within its refill time), every key is forgotten. Memory stays
/// bounded, and the O(keys) clean-up runs at most once per `max_keys / 2` checks.
pub struct PerKeyLimiter<K: std::hash::Hash + Eq + Clone> {
    quota: Quota,
    limiter: RwLock<DefaultKeyedRateLimiter<K>>,
    max_keys: usize,
    /// At least the number of keys held: the keys left by the last clean-up plus every check
    /// since (each may have added one).
    held_at_most: AtomicUsize,
    cleaning: Mutex<()>,
}

/// At most one warning a minute that a limiter forgot every key.
static FORGOT_ALL: Throttle = Throttle::new(60);

impl<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static> PerKeyLimiter<K> {
    pub fn per_minute(n: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"));
        Self {
            quota,
            limiter: RwLock::new(RateLimiter::keyed(quota)),
            max_keys: MAX_KEYS,
            held_at_most: AtomicUsize::new(0),
            cleaning: Mutex::new(()),
        }
    }

    /// The same limiter holding at most `max_keys` keys (at least 2).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(2);
        self
    }

    /// `Err(seconds to wait)` when `key` is over its quota.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        if self.held_at_most.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.make_room();
        }
        self.limiter.read().check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.limiter.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets idle keys, those back at their full quota (governor keeps every key until told
    /// to).
    pub fn forget_idle(&self) {
        let _cleaning = self.cleaning.lock();
        // Checks from now on count from zero; the keys left are added back below.
        self.held_at_most.store(0, Ordering::Relaxed);
        let limiter = self.limiter.read();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let held = limiter.len();
        drop(limiter);
        self.held_at_most.fetch_add(held, Ordering::Relaxed);
    }

    /// The cap may be reached: forget the idle keys, or every key if most are in use.
    fn make_room(&self) {
        // One thread cleans; the others go on (each adds at most one key meanwhile).
        let Some(_cleaning) = self.cleaning.try_lock() else {
            return;
        };
        if self.held_at_most.load(Ordering::Relaxed) < self.max_keys {
            return; // cleaned since
        }
        // Counting starts again from the key of the check that found the cap; the keys left
        // are added below.
        self.held_at_most.store(1, Ordering::Relaxed);
        let limiter = self.limiter.read();
        limiter.retain_recent();
        let held = limiter.len();
        drop(limiter);
        if held <= self.max_keys / 2 {
            self.held_at_most.fetch_add(held, Ordering::Relaxed);
            return;
        }
        // Most keys are in use (distinct clients, each within its refill time): forget them
        // all rather than grow, or scan a full map again a few checks later.
        let forgotten =
            std::mem::replace(&mut *self.limiter.write(), RateLimiter::keyed(self.quota));
        drop(forgotten);
        if let Some(suppressed) = FORGOT_ALL.admit() {
            tracing::warn!(
                keys = held,
                suppressed,
                "rate limiter full of active keys; forgot them all"
            );
        }
    }
}

/// Per-IP limits for public endpoints.
pub struct IpLimiter {
    limiter: PerKeyLimiter<IpAddr>,
    proxies: TrustedProxies,
    ipv6_prefix_len: u8,
    pub refused: prometheus_client::metrics::counter::Counter,
}

impl IpLimiter {
    pub fn new(
        per_minute: u32,
        proxies: TrustedProxies,
        ipv6_prefix_len: u8,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter: PerKeyLimiter::per_minute(per_minute),
            proxies,
            ipv6_prefix_len,
            refused,
        })
    }

    /// The client of a request as every per-client limit counts it: its address (behind
    /// trusted proxies), an IPv6 one by its network ([`limit_key`]). `None` without connection
    /// information.
    pub fn client_of<B>(&self, req: &axum::http::Request<B>) -> Option<IpAddr> {
        self.client_ip(req.extensions(), req.headers())
    }

    /// [`Self::client_of`], from a request's parts.
    pub fn client_ip(
        &self,
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
    ) -> Option<IpAddr> {
        let client = self.client_address(extensions, headers)?;
        Some(limit_key(client, self.ipv6_prefix_len))
    }

    /// The client's whole address (behind trusted proxies), as the audit log records it.
    /// `None` without connection information.
    pub fn client_address(
        &self,
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
    ) -> Option<IpAddr> {
        let peer = extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        Some(self.proxies.client_ip(peer, headers))
    }

    /// `Err(seconds to wait)` when the client is over its quota (counted under its
    /// [`limit_key`]).
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.limiter.check(&limit_key(ip, self.ipv6_prefix_len))
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ip_limiter(per_minute: u32, ipv6_prefix_len: u8) -> Arc<IpLimiter> {
        IpLimiter::new(
            per_minute,
            TrustedProxies::default(),
            ipv6_prefix_len,
            Default::default(),
        )
    }

    #[test]
    fn ipv6_clients_share_the_quota_of_their_network() {
        let limiter = ip_limiter(2, 64);
        // Two addresses in one /64: one quota of 2.
        assert!(limiter.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(
            limiter
                .check(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"))
                .is_ok()
        );
        assert!(limiter.check(ip("2001:db8:1:2:abcd::9")).is_err());
        // Another /64 (even next door): a quota of its own.
        assert!(limiter.check(ip("2001:db8:1:3::1")).is_ok());
        assert!(limiter.check(ip("2001:db8:1:3::2")).is_ok());
        assert!(limiter.check(ip("2001:db8:1:3::3")).is_err());
        assert!(limiter.check(ip("2001:db9:1:2::1")).is_ok());
    }

    #[test]
    fn the_ipv6_prefix_is_configurable() {
        // /128: every address counts alone.
        let limiter = ip_limiter(1, 128);
        assert!(limiter.check(ip("2001:db8::1")).is_ok());
        assert!(limiter.check(ip("2001:db8::2")).is_ok());
        assert!(limiter.check(ip("2001:db8::1")).is_err());
        // /48: a whole site shares one quota.
        let limiter = ip_limiter(1, 48);
        assert!(limiter.check(ip("2001:db8:7::1")).is_ok());
        assert!(limiter.check(ip("2001:db8:7:ffff::1")).is_err());
        assert!(limiter.check(ip("2001:db8:8::1")).is_ok());
        assert_eq!(limit_key(ip("2001:db8:7:6:5:4:3:2"), 32), ip("2001:db8::"));
        assert_eq!(
            limit_key(ip("2001:db8:7:6:5:4:3:2"), 128),
            ip("2001:db8:7:6:5:4:3:2")
        );
    }

    #[test]
    fn ipv4_clients_count_per_address_mapped_or_not() {
        let limiter = ip_limiter(1, 64);
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        // The same client through a dual-stack socket: the same quota.
        assert!(limiter.check(ip("::ffff:192.0.2.1")).is_err());
        // Its neighbours, although in the same IPv6 /64 once mapped: quotas of their own.
        assert!(limiter.check(ip("::ffff:192.0.2.2")).is_ok());
        assert!(limiter.check(ip("192.0.2.3")).is_ok());
        assert_eq!(limit_key(ip("::ffff:192.0.2.9"), 64), ip("192.0.2.9"));
        assert_eq!(limit_key(ip("192.0.2.9"), 32), ip("192.0.2.9"));
    }

    #[test]
    fn ipv4_mapped_proxies_and_clients_are_ipv4() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        // A dual-stack socket reports an IPv4 proxy as ::ffff:10.1.2.3: still trusted.
        assert_eq!(
            proxies.client_ip(ip("::ffff:10.1.2.3"), &headers("::ffff:198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            proxies.client_ip(ip("::ffff:203.0.113.9"), &headers("1.2.3.4")),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_flood_of_unique_keys_stays_under_the_cap() {
        // One request a minute: no key becomes idle during the test, the worst case.
        let limiter = PerKeyLimiter::<u32>::per_minute(1).max_keys(1_000);
        let mut most = 0;
        for key in 0..20_000 {
            assert!(limiter.check(&key).is_ok());
            most = most.max(limiter.len());
        }
        assert!(most <= 1_000, "held {most} keys");
        // A fast quota: idle keys are forgotten first, so the active ones are kept.
        let limiter = PerKeyLimiter::<u32>::per_minute(60_000_000).max_keys(1_000);
        for key in 0..20_000 {
            assert!(limiter.check(&key).is_ok());
            assert!(limiter.len() <= 1_000);
        }
    }

    #[test]
    fn clients_are_remembered_below_the_cap() {
        let limiter = PerKeyLimiter::<u32>::per_minute(1).max_keys(1_000);
        assert!(limiter.check(&0).is_ok());
        assert!(limiter.check(&0).is_err());
        for key in 1..500 {
            assert!(limiter.check(&key).is_ok());
        }
        // Fewer keys than half the cap: the refused client is still refused.
        assert!(limiter.check(&0).is_err());
        limiter.forget_idle();
        assert!(limiter.check(&0).is_err());
        assert_eq!(limiter.len(), 500);
    }

    mod properties {
        use std::net::Ipv4Addr;

        use axum::http::HeaderValue;
        use proptest::prelude::*;

        use super::*;

        const TRUSTED_POOL: &[&str] = &[
            "10.0.0.0/8",
            "192.168.1.1",
            "172.16.0.0/12",
            "2001:db8::/32",
            "::1",
            "100.64.0.0/10",
        ];

        fn proxies() -> impl Strategy<Value = Vec<String>> {
            proptest::sample::subsequence(TRUSTED_POOL, 0..=TRUSTED_POOL.len())
                .prop_map(|nets| nets.into_iter().map(str::to_owned).collect())
        }

        /// Addresses inside and outside the trusted pool, some IPv4-mapped.
        fn address() -> impl Strategy<Value = IpAddr> {
            let plain = prop_oneof![
                any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
                any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
                any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n >> 8)))),
                any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0xac10_0000 | (n >> 12)))),
                any::<u16>()
                    .prop_map(|n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))),
                Just(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))),
                Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ];
            (plain, any::<bool>()).prop_map(|(ip, mapped)| match ip {
                IpAddr::V4(v4) if mapped => IpAddr::V6(v4.to_ipv6_mapped()),
                ip => ip,
            })
        }

        /// One `X-Forwarded-For` entry: mostly addresses, some with ports, some garbage.
        fn entry() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => (address(), " {0,2}", " {0,2}").prop_map(|(ip, a, b)| format!("{a}{ip}{b}")),
                1 => (address(), any::<u16>()).prop_map(|(ip, port)| match ip {
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                }),
                1 => Just("unknown".to_owned()),
                1 => "[ -+--~]{0,20}",
            ]
        }

        fn header_line() -> impl Strategy<Value = Vec<String>> {
            proptest::collection::vec(entry(), 0..5)
        }

        fn headers_of(lines: &[Vec<String>]) -> HeaderMap {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(
                    "x-forwarded-for",
                    HeaderValue::from_str(&line.join(",")).unwrap(),
                );
            }
            headers
        }

        /// The addresses a header holds, canonical.
        fn addresses_in(lines: &[Vec<String>]) -> Vec<IpAddr> {
            lines
                .iter()
                .flatten()
                .filter_map(|e| e.trim().parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .collect()
        }

        proptest! {
            #![proptest_config(crate::proptest_config::config(4096))]

            /// The client is the peer, or an untrusted address from the header; never a
            /// trusted proxy from the header, never anything the header does not hold.
            #[test]
            fn the_client_is_the_peer_or_an_untrusted_forwarded_address(
                nets in proxies(),
                peer in address(),
                lines in proptest::collection::vec(header_line(), 0..3),
            ) {
                let proxies = TrustedProxies::parse(&nets).unwrap();
                let client = proxies.client_ip(peer, &headers_of(&lines));
                prop_assert!(!matches!(client, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()));
                if client != peer.to_canonical() {
                    prop_assert!(proxies.trusts(peer.to_canonical()));
                    prop_assert!(!proxies.trusts(client));
                    prop_assert!(addresses_in(&lines).contains(&client));
                }
            }

            /// From an untrusted peer, whatever the client sends, the client is the peer.
            #[test]
            fn an_untrusted_peer_cannot_forward(
                (proxies, peer) in (proxies(), address())
                    .prop_map(|(nets, peer)| (TrustedProxies::parse(&nets).unwrap(), peer))
                    .prop_filter("an untrusted peer", |(proxies, peer)| {
                        !proxies.trusts(peer.to_canonical())
                    }),
                lines in proptest::collection::vec(header_line(), 0..3),
            ) {
                prop_assert_eq!(proxies.client_ip(peer, &headers_of(&lines)), peer.to_canonical());
            }

            /// Through trusted proxies, entries a client prepends (on the left, or in an earlier
            /// header line) never change the answer once a proxy appended an untrusted address.
            #[test]
            fn a_client_sent_prefix_changes_nothing(
                nets in proxies().prop_map(|mut nets| {
                    nets.push("10.0.0.0/8".to_owned());
                    nets
                }),
                peer in (any::<u32>(), any::<bool>()).prop_map(|(n, mapped)| {
                    let v4 = Ipv4Addr::from(0x0a00_0000 | (n >> 8));
                    if mapped { IpAddr::V6(v4.to_ipv6_mapped()) } else { IpAddr::V4(v4) }
                }),
                client in (any::<u32>(), any::<u128>(), 0..3u8)
                    .prop_map(|(v4, v6, kind)| match kind {
                        0 => IpAddr::V4(Ipv4Addr::from(v4)),
                        1 => IpAddr::V6(Ipv4Addr::from(v4).to_ipv6_mapped()),
                        _ => IpAddr::V6(Ipv6Addr::from(v6)),
                    })
                    .prop_filter("outside every net of the pool", |ip| {
                    let pool: Vec<String> = TRUSTED_POOL.iter().map(|n| n.to_string()).collect();
                    !TrustedProxies::parse(&pool).unwrap().trusts(ip.to_canonical())
                }),
                hops in proptest::collection::vec(address(), 0..3),
                forged in header_line(),
                forged_line in header_line(),
            ) {
                let proxies = TrustedProxies::parse(&nets).unwrap();
                prop_assert!(proxies.trusts(peer.to_canonical()));
                // What the proxies appended: the client, then each trusted hop.
                let appended: Vec<String> = std::iter::once(client)
                    .chain(hops.into_iter().filter(|hop| proxies.trusts(hop.to_canonical())))
                    .map(|ip| ip.to_string())
                    .collect();
                let honest = proxies.client_ip(peer, &headers_of(std::slice::from_ref(&appended)));
                prop_assert_eq!(honest, client.to_canonical());
                let prefixed: Vec<String> = forged.into_iter().chain(appended.clone()).collect();
                prop_assert_eq!(proxies.client_ip(peer, &headers_of(&[prefixed])), honest);
                prop_assert_eq!(
                    proxies.client_ip(peer, &headers_of(&[forged_line, appended])),
                    honest
                );
            }
        }
    }
}
