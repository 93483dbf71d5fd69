//! A budget of failed authentications per client IP.
//!
//! Every answer that refused a credential (401: a bearer, an API key, a widget key, a dev
//! login) or named an account that does not exist costs its client one unit of a per-minute
//! budget (`KATAVEN_AUTH_FAILURE_LIMIT_PER_MINUTE`). Once the budget is spent, requests from
//! that client to the authenticated and widget endpoints answer 429 `rate_limited` with
//! `limit: "auth"` before any credential is looked at, until the budget refills. So a client
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
use super::client_ip::{IpLimiter, PerKeyLimiter};
use crate::error::ApiError;

/// Clients remembered as blocked, at most (each entry is a few dozen bytes).
const MAX_BLOCKED: u64 = 100_000;

/// The marker [`ApiError`] puts on an answer that refused a credential or named an unknown
/// account.
#[derive(Debug, Clone, Copy)]
pub struct AuthFailure;

pub struct AuthFailures {
    budget: PerKeyLimiter<IpAddr>,
    /// `kataven_rate_limited_total{limit="auth"}`.
    refused: prometheus_client::metrics::counter::Counter,
    /// Clients whose budget is spent, with when it has refilled enough for one more try.
    blocked: moka::sync::Cache<IpAddr, Instant>,
}

impl AuthFailures {
    pub fn per_minute(n: u32, refused: prometheus_client::metrics::counter::Counter) -> Arc<Self> {
        Arc::new(Self {
            budget: PerKeyLimiter::per_minute(n),
            refused,
            blocked: moka::sync::Cache::builder()
                .max_capacity(MAX_BLOCKED)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// `Err(seconds to wait)` while `client` has no failure left to spend.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        match self.blocked.get(&client) {
            Some(until) if until > Instant::now() => {
                let wait = until - Instant::now();
                Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            _ => Ok(()),
        }
    }

    /// Charges one failure to `client`.
    pub fn failed(&self, client: IpAddr) {
        if let Err(wait_secs) = self.budget.check(&client) {
            self.blocked.insert(
                client,
                Instant::now() + Duration::from_secs(wait_secs.max(1)),
            );
        }
    }

    /// Forgets clients that have not failed lately, every minute until aborted.
    pub fn spawn_janitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                this.budget.forget_idle();
            }
        })
    }
}

/// Middleware for routes that check credentials: refuses a client whose budget is spent, and
/// charges the failures of the others. The budget and the limiter that knows client addresses
/// come from the request extensions (the router adds them).
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

    #[test]
    fn a_spent_budget_blocks_until_it_refills() {
        let failures = AuthFailures::per_minute(3, Default::default());
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(failures.check(client), Ok(()));
            failures.failed(client);
        }
        // The fourth failure finds the budget spent: blocked for the refill of one unit.
        failures.failed(client);
        let wait = failures.check(client).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert_eq!(failures.check(other), Ok(()));
    }
}
