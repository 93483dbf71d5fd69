//! In-process counters: exact for one instance. Daily counts are added to the system
//! database every few seconds (and at shutdown) and read back when an account is first seen on
//! a day, so that they survive restarts.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use sqlx::PgPool;

use super::{Admission, Dimension, Refusal, Usage, seconds_to_reset, window_start};
use crate::tenancy::catalog::Limits;

/// How often daily counts are written to the system database.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    /// `(window start, count)` for minute, hour, day.
    windows: [(u64, u64); 3],
    in_flight: u32,
    /// The day whose stored count has been added to `windows[2]`.
    day_loaded: Option<u64>,
    /// When reading the stored count last failed (it is retried after [`FLUSH_INTERVAL`]).
    load_failed_at: Option<std::time::Instant>,
    /// Requests counted today and not yet written to the database.
    unflushed: u64,
}

#[derive(Clone)]
pub struct MemoryStore {
    accounts: Arc<DashMap<String, Arc<Mutex<Counters>>>>,
    pool: Option<PgPool>,
    /// Counts whose write failed, by account and day: retried by the next flush.
    unsaved: Arc<Mutex<std::collections::HashMap<(String, u64), u64>>>,
}

/// Frees the in-flight slot when the request ends.
struct Slot(Arc<Mutex<Counters>>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.0.lock();
        c.in_flight = c.in_flight.saturating_sub(1);
    }
}

fn day_of(window_start_secs: u64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(window_start_secs as i64, 0)
        .unwrap_or_default()
        .date_naive()
}

impl MemoryStore {
    /// Without a pool, daily counts are not persisted (benchmarks).
    pub fn new(pool: Option<PgPool>) -> Self {
        Self {
            accounts: Arc::new(DashMap::new()),
            pool,
            unsaved: Arc::default(),
        }
    }

    fn counters(&self, account: &str) -> Arc<Mutex<Counters>> {
        if let Some(c) = self.accounts.get(account) {
            return c.clone();
        }
        self.accounts.entry(account.to_owned()).or_default().clone()
    }

    pub async fn admit(
        &self,
        account: &str,
        limits: &Limits,
        now: u64,
    ) -> Result<Admission, Refusal> {
        let counters = self.counters(account);
        let day = window_start(Dimension::Day, now);
        let needs_load = self.pool.is_some() && {
            let c = counters.lock();
            c.day_loaded != Some(day)
                && c.load_failed_at
                    .is_none_or(|at| at.elapsed() >= FLUSH_INTERVAL)
        };
        if needs_load {
            // Read today's stored count without holding the lock across the query.
            let stored = self.stored_today(account, day).await;
            let mut c = counters.lock();
            match stored {
                Some(stored) if c.day_loaded != Some(day) => {
                    if c.windows[2].0 != day {
                        c.windows[2] = (day, 0);
                    }
                    c.windows[2].1 += stored;
                    c.day_loaded = Some(day);
                    c.load_failed_at = None;
                }
                Some(_) => {}
                // Counted from what this instance saw; read again later.
                None => c.load_failed_at = Some(std::time::Instant::now()),
            }
        }

        let mut c = counters.lock();
        for (i, dim) in Dimension::WINDOWS.iter().enumerate() {
            let start = window_start(*dim, now);
            if c.windows[i].0 != start {
                c.windows[i] = (start, 0);
            }
        }
        let refuse = |dimension: Dimension| Refusal {
            dimension,
            cap: dimension.cap(limits),
            retry_after_secs: seconds_to_reset(dimension, now),
            limits: *limits,
            now,
        };
        for (i, dim) in Dimension::WINDOWS.iter().enumerate() {
            if c.windows[i].1 >= dim.cap(limits) as u64 {
                return Err(refuse(*dim));
            }
        }
        if c.in_flight >= limits.concurrent {
            return Err(refuse(Dimension::Concurrent));
        }
        for w in c.windows.iter_mut() {
            w.1 += 1;
        }
        c.in_flight += 1;
        c.unflushed += 1;
        let usage = Usage {
            minute: c.windows[0].1,
            hour: c.windows[1].1,
            day: c.windows[2].1,
        };
        drop(c);
        Ok(Admission::new(
            Some(usage),
            *limits,
            now,
            Some(Box::new(Slot(counters))),
        ))
    }

    /// Today's stored count (`None` when it could not be read).
    async fn stored_today(&self, account: &str, day: u64) -> Option<u64> {
        let Some(pool) = &self.pool else {
            return Some(0);
        };
        let stored: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT requests FROM usage_daily WHERE account = $1 AND day = $2")
                .bind(account)
                .bind(day_of(day))
                .fetch_optional(pool)
                .await;
        match stored {
            Ok(n) => Some(n.unwrap_or(0).max(0) as u64),
            Err(e) => {
                tracing::warn!(error = %e, "could not read today's request count; retrying later");
                None
            }
        }
    }

    /// Adds the unflushed daily counts to the database. A count that cannot be written is
    /// kept, with its day, for the next flush; then the answer is `false`.
    pub async fn flush(&self) -> bool {
        let Some(pool) = &self.pool else { return true };
        let mut pending: Vec<(String, u64, u64)> = std::mem::take(&mut *self.unsaved.lock())
            .into_iter()
            .map(|((account, day), delta)| (account, day, delta))
            .collect();
        pending.extend(self.accounts.iter().filter_map(|e| {
            let mut c = e.value().lock();
            if c.unflushed == 0 {
                return None;
            }
            let delta = std::mem::take(&mut c.unflushed);
            Some((e.key().clone(), c.windows[2].0, delta))
        }));
        let mut failed = false;
        for (account, day, delta) in pending {
            if failed {
                // The database is failing: keep the rest for the next flush.
                self.keep_unsaved(account, day, delta);
                continue;
            }
            let written = sqlx::query(
                "INSERT INTO usage_daily (account, day, requests) VALUES ($1, $2, $3)
                 ON CONFLICT (account, day) DO UPDATE SET requests = usage_daily.requests + EXCLUDED.requests",
            )
            .bind(&account)
            .bind(day_of(day))
            .bind(delta as i64)
            .execute(pool)
            .await;
            match written {
                Ok(_) => {}
                // The account was deleted meanwhile: nothing to keep.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not save request counts; retrying later");
                    failed = true;
                    self.keep_unsaved(account, day, delta);
                }
            }
        }
        !failed
    }

    fn keep_unsaved(&self, account: String, day: u64, delta: u64) {
        *self.unsaved.lock().entry((account, day)).or_default() += delta;
    }

    /// Flushes every [`FLUSH_INTERVAL`] until aborted.
    pub fn spawn_flusher(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                store.flush().await;
            }
        })
    }
}
