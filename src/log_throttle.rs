//! At most one log line per period for a condition that can repeat on every request (a
//! database that is down), with the number of lines left out meanwhile.
//!
//! Thirty lines rather than a crate: what is needed is a `static` per call site that the
//! `tracing` macros stay in charge of, which the rate-limiting layers on crates.io (filters
//! over the whole subscriber) do not offer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Throttle {
    period_secs: u64,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(period_secs: u64) -> Self {
        Self {
            period_secs,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(self.period_secs)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn one_line_per_period_with_the_count_left_out() {
        let throttle = Throttle::new(3600);
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        *throttle.last.lock().unwrap() = None;
        assert_eq!(throttle.admit(), Some(2));
    }
}
