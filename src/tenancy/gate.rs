//! Connection attempts against a database that is failing.
//!
//! A [`Gate`] stands in front of the connection attempts to one database server, or to one
//! tenant database. While the last attempt succeeded the gate is open and attempts run freely.
//! After a failure it holds an *outage*: at most one attempt runs at a time, attempts are spaced
//! by a backoff, and requests that need a new connection meanwhile either wait for the next
//! attempt (when it is due soon) or answer 503 at once. So a server that is down, full
//! (`too_many_connections`) or starting up sees a bounded trickle of attempts rather than one per
//! request, and the log gets one line when the outage begins and one when it ends, never one
//! per request (a database that flaps — outages moments apart — gets one line a minute, plus
//! one for an outage that lasts more than a second).
//!
//! Two scopes, because the causes differ in how long they last and in what the client is told:
//!
//! * **server** (refused, timed out, full, starting or shutting down, authentication): retried
//!   every 50 ms, doubling up to 250 ms, so the first request after the server is back succeeds
//!   within that; the client sees 503 `unavailable`.
//! * **database** (the tenant database does not exist or refuses connections although the
//!   catalog row exists): an operator has to act; retried after 1 s, doubling up to 30 s; the
//!   client sees 503 `account_unavailable` with the time to the next attempt as `Retry-After`.

use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use super::pool_error::PoolError;

/// An outage that begins within this long of the last one logged is logged only if it lasts.
const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// An outage is logged once it has lasted this long, even while the database flaps.
const LASTING: Duration = Duration::from_secs(1);
/// A request waits for the next attempt of a failing gate if it is due within this long.
const WAIT_FOR_ATTEMPT_MAX: Duration = Duration::from_millis(250);

/// What a connection attempt came to. Also the `outcome` label of
/// `kataven_tenant_connects_total`, so the set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectOutcome {
    Ok,
    /// Nothing listens (the server is stopped or restarting).
    Refused,
    /// No answer in time (a frozen server or a network partition).
    Timeout,
    /// `53300 too_many_connections`: the server's `max_connections` is reached.
    TooManyConnections,
    /// `57P03 cannot_connect_now` and other shutdown codes: starting up, shutting down, in
    /// recovery.
    NotAccepting,
    /// `28xxx`: the server refused our credentials.
    AuthenticationFailed,
    /// `3D000 invalid_catalog_name`: the tenant database does not exist.
    DatabaseMissing,
    /// `55000`: the tenant database does not accept connections (`ALLOW_CONNECTIONS false`).
    DatabaseClosed,
    /// Anything else (I/O, TLS, protocol).
    Other,
}

/// Whether a failure belongs to the server or to one database on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Server,
    Database,
}

impl ConnectOutcome {
    pub fn of(result: &Result<(), &sqlx::Error>) -> Self {
        let Err(err) = result else { return Self::Ok };
        match err {
            sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Self::Refused
            }
            sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => Self::Timeout,
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("53300") => Self::TooManyConnections,
                Some("3D000") => Self::DatabaseMissing,
                Some("55000") => Self::DatabaseClosed,
                Some(code) if code.starts_with("57P") => Self::NotAccepting,
                Some(code) if code.starts_with("28") => Self::AuthenticationFailed,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::TooManyConnections => "too_many_connections",
            Self::NotAccepting => "not_accepting",
            Self::AuthenticationFailed => "authentication_failed",
            Self::DatabaseMissing => "database_missing",
            Self::DatabaseClosed => "database_closed",
            Self::Other => "other",
        }
    }

    pub fn scope(self) -> Scope {
        match self {
            Self::DatabaseMissing | Self::DatabaseClosed => Scope::Database,
            _ => Scope::Server,
        }
    }

    /// What happened, in words (logs, `doctor`).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Ok => "connected",
            Self::Refused => "connection refused",
            Self::Timeout => "no answer in time",
            Self::TooManyConnections => "too many connections (max_connections reached)",
            Self::NotAccepting => {
                "not accepting connections (starting up, shutting down or in recovery)"
            }
            Self::AuthenticationFailed => "authentication failed",
            Self::DatabaseMissing => "the database does not exist although its catalog row does",
            Self::DatabaseClosed => "the database does not accept connections",
            Self::Other => "connection failed",
        }
    }
}

impl EncodeLabelValue for ConnectOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.name())
    }
}

struct Outage {
    cause: ConnectOutcome,
    since: Instant,
    /// Failed attempts since the outage began.
    failures: u32,
    next_attempt: Instant,
    /// An attempt of the outage is under way.
    attempting: bool,
    /// The outage (with its current cause) has been logged.
    logged: bool,
}

/// See the module documentation.
pub struct Gate {
    scope: Scope,
    /// What the log lines name: `host:port` or the account.
    label: String,
    outage: Mutex<Option<Outage>>,
    /// When an outage was last logged.
    last_logged: Mutex<Option<Instant>>,
    /// Signalled when an attempt of an outage ends.
    attempt_ended: Notify,
}

/// A permission to attempt a connection, returned by [`Gate::pass`]. Report its result with
/// [`Gate::record`]; dropping it unreported (a cancelled request) lets another request try.
pub struct Attempt<'a> {
    gate: &'a Gate,
    /// This attempt is the one of an outage (not a free attempt of an open gate).
    probe: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe {
            if let Some(outage) = self.gate.outage.lock().as_mut() {
                outage.attempting = false;
            }
            self.gate.attempt_ended.notify_waiters();
        }
    }
}

impl Gate {
    pub fn new(scope: Scope, label: impl Into<String>) -> Self {
        Self {
            scope,
            label: label.into(),
            outage: Mutex::new(None),
            last_logged: Mutex::new(None),
            attempt_ended: Notify::new(),
        }
    }

    /// Whether the gate currently holds an outage.
    pub fn is_failing(&self) -> bool {
        self.outage.lock().is_some()
    }

    fn backoff(&self, failures: u32) -> Duration {
        let (first, max) = match self.scope {
            Scope::Server => (Duration::from_millis(50), WAIT_FOR_ATTEMPT_MAX),
            Scope::Database => (Duration::from_secs(1), Duration::from_secs(30)),
        };
        first
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(max)
    }

    /// The answer to a request refused by the gate.
    fn refusal(&self, outage: &Outage) -> PoolError {
        match self.scope {
            Scope::Server => PoolError::ServerDown,
            Scope::Database => {
                let wait = outage
                    .next_attempt
                    .saturating_duration_since(Instant::now());
                PoolError::DatabaseDown {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
        }
    }

    /// Waits until this request may attempt a connection: at once while the gate is open;
    /// during an outage, when the next attempt is due and no other is under way. A request that
    /// would wait past `deadline`, or longer than [`WAIT_FOR_ATTEMPT_MAX`] for the next attempt,
    /// or that saw an attempt fail while it waited, is refused.
    pub async fn pass(&self, deadline: Instant) -> Result<Attempt<'_>, PoolError> {
        let mut failures_seen = None;
        loop {
            let ended = self.attempt_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let wake = {
                let mut state = self.outage.lock();
                let Some(outage) = state.as_mut() else {
                    return Ok(Attempt {
                        gate: self,
                        probe: false,
                    });
                };
                let now = Instant::now();
                if failures_seen.is_some_and(|seen| seen != outage.failures) || now >= deadline {
                    return Err(self.refusal(outage));
                }
                if !outage.attempting && now >= outage.next_attempt {
                    outage.attempting = true;
                    return Ok(Attempt {
                        gate: self,
                        probe: true,
                    });
                }
                failures_seen = Some(outage.failures);
                if outage.attempting {
                    deadline
                } else if outage.next_attempt - now <= WAIT_FOR_ATTEMPT_MAX
                    && outage.next_attempt <= deadline
                {
                    outage.next_attempt
                } else {
                    return Err(self.refusal(outage));
                }
            };
            tokio::select! {
                _ = &mut ended => {}
                _ = sleep_until(wake) => {}
            }
        }
    }

    /// Records the outcome of a connection attempt made outside the gate (a health probe):
    /// the same log lines, one when an outage begins and one when it ends.
    pub fn observe(&self, outcome: ConnectOutcome) {
        self.record(
            Attempt {
                gate: self,
                probe: false,
            },
            outcome,
        );
    }

    /// Records the outcome of an attempt that [`Self::pass`] allowed. Only the first failure of
    /// an outage and its end are logged.
    pub fn record(&self, attempt: Attempt<'_>, outcome: ConnectOutcome) {
        let now = Instant::now();
        {
            let mut state = self.outage.lock();
            if outcome == ConnectOutcome::Ok {
                if let Some(outage) = state.take() {
                    let down_ms = now.duration_since(outage.since).as_millis() as u64;
                    if outage.logged {
                        tracing::info!(
                            scope = ?self.scope,
                            database = %self.label,
                            down_ms,
                            failed_attempts = outage.failures,
                            "database reachable again"
                        );
                    } else {
                        tracing::debug!(scope = ?self.scope, database = %self.label, down_ms, "database reachable again");
                    }
                }
            } else {
                let outage = state.get_or_insert_with(|| Outage {
                    cause: outcome,
                    since: now,
                    failures: 0,
                    next_attempt: now,
                    attempting: false,
                    logged: false,
                });
                outage.failures += 1;
                outage.next_attempt = now + self.backoff(outage.failures);
                if outage.cause != outcome {
                    outage.cause = outcome;
                    outage.logged = false;
                }
                // A flapping database (outages a moment apart) is logged once a minute, and
                // again only for an outage that lasts.
                let mut last = self.last_logged.lock();
                let quiet = last.is_none_or(|at| now.duration_since(at) >= FLAP_WINDOW);
                if !outage.logged && (quiet || now.duration_since(outage.since) >= LASTING) {
                    outage.logged = true;
                    *last = Some(now);
                    tracing::warn!(
                        scope = ?self.scope,
                        database = %self.label,
                        cause = outcome.describe(),
                        down_ms = now.duration_since(outage.since).as_millis() as u64,
                        "database unavailable; requests needing a new connection answer 503 until it recovers"
                    );
                }
            }
        }
        // Dropping the attempt ends it: waiters re-check the state.
        drop(attempt);
        self.attempt_ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(kind))
    }

    #[test]
    fn outcomes_are_classified() {
        let refused = io(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(ConnectOutcome::of(&Err(&refused)), ConnectOutcome::Refused);
        let reset = io(std::io::ErrorKind::ConnectionReset);
        assert_eq!(ConnectOutcome::of(&Err(&reset)), ConnectOutcome::Other);
        assert_eq!(ConnectOutcome::of(&Ok(())), ConnectOutcome::Ok);
        assert_eq!(ConnectOutcome::DatabaseMissing.scope(), Scope::Database);
        assert_eq!(ConnectOutcome::TooManyConnections.scope(), Scope::Server);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_allows_one_attempt_at_a_time_with_backoff() {
        let gate = Gate::new(Scope::Server, "db:5432");
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = gate.pass(deadline).await.unwrap();
        assert!(!first.probe);
        gate.record(first, ConnectOutcome::Refused);
        assert!(gate.is_failing());

        // The next attempt is due in 50 ms: a request waits for it and becomes the probe.
        let started = Instant::now();
        let probe = gate.pass(deadline).await.unwrap();
        assert!(probe.probe);
        assert_eq!(started.elapsed(), Duration::from_millis(50));

        // While the probe runs, another request waits for its result and is refused when it
        // fails, without an attempt of its own.
        let waiter = async { gate.pass(deadline).await.map(|_| ()) };
        let prober = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            gate.record(probe, ConnectOutcome::Refused);
        };
        let (waited, ()) = tokio::join!(waiter, prober);
        assert!(matches!(waited, Err(PoolError::ServerDown)));

        // A success ends the outage: everyone passes freely again.
        let probe = gate.pass(deadline).await.unwrap();
        gate.record(probe, ConnectOutcome::Ok);
        assert!(!gate.is_failing());
        assert!(!gate.pass(deadline).await.unwrap().probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_database_is_refused_at_once_until_its_next_attempt() {
        let gate = Gate::new(Scope::Database, "acme");
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = gate.pass(deadline).await.unwrap();
        gate.record(first, ConnectOutcome::DatabaseMissing);
        let started = Instant::now();
        match gate.pass(deadline).await {
            Err(PoolError::DatabaseDown { retry_after_secs }) => {
                assert_eq!(retry_after_secs, 1)
            }
            other => panic!("expected account_unavailable, got {:?}", other.err()),
        }
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Backoff doubles: 1 s, 2 s, 4 s … up to 30 s.
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = gate.pass(deadline).await.unwrap();
        gate.record(probe, ConnectOutcome::DatabaseMissing);
        match gate.pass(deadline).await {
            Err(PoolError::DatabaseDown { retry_after_secs }) => {
                assert_eq!(retry_after_secs, 2)
            }
            other => panic!("expected account_unavailable, got {:?}", other.err()),
        }
        assert_eq!(gate.backoff(30), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_another_request_try() {
        let gate = Gate::new(Scope::Server, "db:5432");
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = gate.pass(deadline).await.unwrap();
        gate.record(first, ConnectOutcome::Timeout);
        tokio::time::advance(Duration::from_millis(50)).await;
        let probe = gate.pass(deadline).await.unwrap();
        assert!(probe.probe);
        drop(probe);
        assert!(gate.pass(deadline).await.unwrap().probe);
    }
}
