//! A budget of failed authentications per client IP.
//!
//! Every answer that refused a credential (401: a bearer, an API key, a widget key, a dev
//! login) or named an account that does not exist costs its client one unit of a per-minute
//! budget (`KATAVEN_AUTH_FAILURE_LIMIT_PER_MINUTE`). Once the budget is spent, requests from
//! that client to the endpoints that check credentials or account names (the management API,
//! account discovery, the widget endpoints, dev login) answer 429 `rate_limited` with
//! `limit: "auth"` before any credential is looked at, until the budget refills. Health, metrics,
//! the API document and reference, the session JWKS and the console pages check nothing and are
//! never refused: the layer is on the routers that check, not around the whole service. So a client
//! trying forged keys, guessed passwords or random account names costs the catalog at most that
//! many queries a minute, whatever it sends.
//!
//! Handlers do not call this: [`crate::error::ApiError`] marks such answers with
//! [`AuthFailure`], and the [`budget`] middleware charges them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::ClientLimit;
use super::client_ip::IpLimiter;
use crate::error::ApiError;

/// Clients remembered, at most (each entry is a few dozen bytes); the least used go first.
const MAX_CLIENTS: u64 = 100_000;

/// The marker [`ApiError`] puts on an answer that refused a credential or named an unknown
/// account.
#[derive(Debug, Clone, Copy)]
pub struct AuthFailure;

/// A client's budget: a token bucket that refills evenly. Failures may take it below zero (the
/// requests a client had in flight when its budget ran out), and then the client waits longer:
/// whatever it sends at once, its failures over any time `t` stay within the budget, plus what
/// refilled in `t`, plus what it had in flight once.
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct AuthFailures {
    per_minute: f64,
    clients: moka::sync::Cache<IpAddr, Arc<parking_lot::Mutex<Bucket>>>,
    /// `kataven_rate_limited_total{limit="auth"}`.
    refused: prometheus_client::metrics::counter::Counter,
}

impl AuthFailures {
    pub fn per_minute(n: u32, refused: prometheus_client::metrics::counter::Counter) -> Arc<Self> {
        let per_minute = f64::from(n.max(1));
        Arc::new(Self {
            per_minute,
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                // A full bucket is the same as none: forget clients idle that long.
                .time_to_idle(Duration::from_secs(60))
                .build(),
            refused,
        })
    }

    fn refill(&self, bucket: &mut Bucket) {
        let now = Instant::now();
        let earned = (now - bucket.at).as_secs_f64() * self.per_minute / 60.0;
        bucket.tokens = (bucket.tokens + earned).min(self.per_minute);
        bucket.at = now;
    }

    /// `Err(seconds to wait)` while `client` has no failure left to spend.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        let Some(bucket) = self.clients.get(&client) else {
            return Ok(());
        };
        let mut bucket = bucket.lock();
        self.refill(&mut bucket);
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) * 60.0 / self.per_minute;
        Err(wait.ceil().max(1.0) as u64)
    }

    /// Charges one failure to `client`.
    pub fn failed(&self, client: IpAddr) {
        let bucket = self.clients.get_with(client, || {
            Arc::new(parking_lot::Mutex::new(Bucket {
                tokens: self.per_minute,
                at: Instant::now(),
            }))
        });
        let mut bucket = bucket.lock();
        self.refill(&mut bucket);
        bucket.tokens -= 1.0;
    }
}

/// Middleware for routes that check credentials: refuses a client whose budget is spent, and
/// charges the failures of the others. The budget and the limiter that knows client addresses
/// come from the request extensions (the router adds them).
/// Layered on each router whose routes check credentials (an embedder's own such routes too).
pub async fn budget(req: Request, next: Next) -> Response {
    let failures = req.extensions().get::<Arc<AuthFailures>>().cloned();
    let client = req
        .extensions()
        .get::<Arc<IpLimiter>>()
        .and_then(|limiter| limiter.client_of(&req));
    let (Some(failures), Some(client)) = (failures, client) else {
        return next.run(req).await;
    };
    if let Err(retry_after_secs) = failures.check(client) {
        failures.refused.inc();
        return ApiError::ClientRateLimited {
            limit: ClientLimit::Auth,
            retry_after_secs,
        }
        .into_response();
    }
    let response = next.run(req).await;
    if response.extensions().get::<AuthFailure>().is_some() {
        failures.failed(client);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_blocks_until_it_refills() {
        let failures = AuthFailures::per_minute(3, Default::default());
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(failures.check(client), Ok(()));
            failures.failed(client);
        }
        // Spent: blocked until one unit has refilled (20 s at 3 a minute).
        assert_eq!(failures.check(client), Err(20));
        assert_eq!(failures.check(other), Ok(()));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(failures.check(client), Ok(()));
    }

    /// Requests in flight when the budget ran out put it in debt: the client then waits for
    /// the debt too, so a burst does not earn it more failures over time.
    #[tokio::test(start_paused = true)]
    async fn failures_in_flight_put_the_budget_in_debt() {
        let failures = AuthFailures::per_minute(6, Default::default());
        let client: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..6 + 10 {
            failures.failed(client);
        }
        // 10 in debt plus one to spend: 11 units at 6 a minute.
        assert_eq!(failures.check(client), Err(110));
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(failures.check(client).is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(failures.check(client), Ok(()));
    }
}
