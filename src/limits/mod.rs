//! Per-account request limits (pipeline step 9): per minute, per hour, per day and in flight.
//!
//! **Windows are fixed and aligned to UTC**: the minute window starts at second :00, the hour
//! at :00:00, the day at 00:00:00 UTC. With a cap of N, requests 1..N of a window pass and
//! request N+1 is the first refused, until the window ends (`Retry-After` says when). A refused
//! request consumes nothing. A cap of `0` refuses every request in that dimension.
//!
//! Counters live in process ([`memory`]) or, with `KATAVEN_REDIS_URL`, in Redis ([`redis`]),
//! shared by every instance with one round trip per request. If Redis fails, requests pass
//! (fail open) and the failure is logged and counted.

pub mod auth_failures;
pub mod client_ip;
pub mod memory;
pub mod redis;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;

use crate::tenancy::catalog::Limits;

/// A limited dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Minute,
    Hour,
    Day,
    Concurrent,
}

impl Dimension {
    pub const WINDOWS: [Dimension; 3] = [Dimension::Minute, Dimension::Hour, Dimension::Day];

    /// `minute|hour|day|concurrent`, as in the error's `limit` field and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Concurrent => "concurrent",
        }
    }

    /// `per-minute`, … as in the error message.
    pub fn label(self) -> &'static str {
        match self {
            Self::Minute => "per-minute",
            Self::Hour => "per-hour",
            Self::Day => "per-day",
            Self::Concurrent => "concurrent",
        }
    }

    /// The window length in seconds (`None` for concurrency).
    pub fn window_secs(self) -> Option<u64> {
        match self {
            Self::Minute => Some(60),
            Self::Hour => Some(3600),
            Self::Day => Some(86_400),
            Self::Concurrent => None,
        }
    }

    pub fn cap(self, limits: &Limits) -> u32 {
        match self {
            Self::Minute => limits.per_minute,
            Self::Hour => limits.per_hour,
            Self::Day => limits.per_day,
            Self::Concurrent => limits.concurrent,
        }
    }
}

/// The start of the window of `dim` that contains `now` (UTC seconds).
pub fn window_start(dim: Dimension, now: u64) -> u64 {
    let len = dim.window_secs().unwrap_or(1);
    now - now % len
}

/// A limit per client of the public and widget endpoints: the `limit` of its 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    /// Requests per client IP on public endpoints.
    Ip,
    /// Requests per widget key, and per client IP within a widget key.
    ClientKey,
    /// Failed authentications per client IP ([`auth_failures`]).
    Auth,
    /// Unexchanged user tokens per account.
    UserTokens,
}

impl ClientLimit {
    /// As in the error's `limit` field and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::ClientKey => "client_key",
            Self::Auth => "auth",
            Self::UserTokens => "user_tokens",
        }
    }

    /// As in the error's message.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Ip => "too many requests from this address",
            Self::ClientKey => "too many requests for this widget key",
            Self::Auth => "too many failed authentications from this address",
            Self::UserTokens => "too many user tokens waiting to be exchanged",
        }
    }
}

/// Seconds until the window of `dim` containing `now` ends (at least 1).
pub fn seconds_to_reset(dim: Dimension, now: u64) -> u64 {
    match dim.window_secs() {
        Some(len) => (window_start(dim, now) + len - now).max(1),
        None => 1,
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counts in the current windows after an admitted request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub minute: u64,
    pub hour: u64,
    pub day: u64,
}

/// A request refused by a cap.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub dimension: Dimension,
    pub cap: u32,
    pub retry_after_secs: u64,
    pub limits: Limits,
    pub now: u64,
}

/// An admitted request: holds its in-flight slot until dropped.
pub struct Admission {
    pub usage: Option<Usage>,
    pub limits: Limits,
    pub now: u64,
    _slot: Option<Box<dyn Send + Sync>>,
}

impl Admission {
    pub fn new(
        usage: Option<Usage>,
        limits: Limits,
        now: u64,
        slot: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            usage,
            limits,
            now,
            _slot: slot,
        }
    }
}

/// Where the counters live.
pub enum Store {
    Memory(memory::MemoryStore),
    Redis(Box<redis::RedisStore>),
}

pub struct Limiter {
    store: Store,
    /// Redis failures (requests let through).
    pub store_errors: Counter,
}

impl Limiter {
    pub fn new(store: Store, store_errors: Counter) -> Arc<Self> {
        Arc::new(Self {
            store,
            store_errors,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Admits a request of `account` under `limits`, or says which cap refuses it.
    pub async fn admit(&self, account: &str, limits: &Limits) -> Result<Admission, Refusal> {
        let now = now_secs();
        match &self.store {
            Store::Memory(m) => m.admit(account, limits, now).await,
            Store::Redis(r) => match r.admit(account, limits, now).await {
                Ok(decision) => decision,
                Err(e) => {
                    self.store_errors.inc();
                    tracing::warn!(error = %e, "rate-limit store unavailable; letting the request through");
                    Ok(Admission::new(None, *limits, now, None))
                }
            },
        }
    }
}

/// `RateLimit-Policy` (IETF httpapi draft syntax) listing every dimension. Written into one
/// buffer that becomes the header's bytes (it is on every admitted request's answer).
pub fn policy_header(limits: &Limits) -> HeaderValue {
    let mut all = String::with_capacity(96);
    for (i, dim) in [
        Dimension::Minute,
        Dimension::Hour,
        Dimension::Day,
        Dimension::Concurrent,
    ]
    .into_iter()
    .enumerate()
    {
        let separator = if i == 0 { "" } else { ", " };
        let _ = write!(all, "{separator}\"{}\";q={}", dim.name(), dim.cap(limits));
        if let Some(w) = dim.window_secs() {
            let _ = write!(all, ";w={w}");
        }
    }
    header_value(all)
}

/// `RateLimit` for one dimension: remaining quota `r` and seconds to reset `t`.
pub fn ratelimit_header(dim: Dimension, remaining: u64, reset: u64) -> HeaderValue {
    header_value(format!("\"{}\";r={remaining};t={reset}", dim.name()))
}

/// A header value made of `text`'s own buffer (not copied).
fn header_value(text: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(axum::body::Bytes::from(text)).expect("ASCII")
}

/// The headers of an admitted request: the policy and the window closest to its cap.
pub fn admitted_headers(a: &Admission, headers: &mut HeaderMap) {
    headers.insert("ratelimit-policy", policy_header(&a.limits));
    if let Some(usage) = a.usage {
        let remaining =
            |dim: Dimension, used: u64| (dim.cap(&a.limits) as u64).saturating_sub(used);
        let tightest = [
            (
                Dimension::Minute,
                remaining(Dimension::Minute, usage.minute),
            ),
            (Dimension::Hour, remaining(Dimension::Hour, usage.hour)),
            (Dimension::Day, remaining(Dimension::Day, usage.day)),
        ]
        .into_iter()
        .min_by_key(|(_, r)| *r)
        .expect("three windows");
        headers.insert(
            "ratelimit",
            ratelimit_header(tightest.0, tightest.1, seconds_to_reset(tightest.0, a.now)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_utc() {
        // 2026-11-27T12:34:56Z
        let t = 1_795_782_896;
        assert_eq!(window_start(Dimension::Minute, t) % 60, 0);
        assert_eq!(seconds_to_reset(Dimension::Minute, t), 4);
        assert_eq!(seconds_to_reset(Dimension::Hour, t), 25 * 60 + 4);
        assert_eq!(seconds_to_reset(Dimension::Day, t), 11 * 3600 + 25 * 60 + 4);
        assert_eq!(seconds_to_reset(Dimension::Minute, t - 56), 60);
    }

    #[test]
    fn headers_use_the_draft_syntax() {
        let limits = Limits {
            per_minute: 60,
            per_hour: 1000,
            per_day: 10_000,
            concurrent: 20,
            daily_minutes: 0,
        };
        assert_eq!(
            policy_header(&limits),
            r#""minute";q=60;w=60, "hour";q=1000;w=3600, "day";q=10000;w=86400, "concurrent";q=20"#
        );
        assert_eq!(
            ratelimit_header(Dimension::Minute, 0, 12),
            r#""minute";r=0;t=12"#
        );
    }
}
