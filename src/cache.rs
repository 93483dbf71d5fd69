//! Bounded caches of catalog rows for the request path, whose fills lose against
//! invalidations.
//!
//! * **Bounded, with frequency-aware admission** ([`moka`], TinyLFU): a flood of unique keys
//!   (forged API keys, random account names) cannot grow memory past the capacity, and cannot
//!   push out the entries that are used: once the cache is full, a new entry is admitted only
//!   in place of one used less often than it, and junk seen once loses to any key seen twice.
//! * **Short-lived**: an entry is served for at most the time to live.
//! * **Fills lose against invalidations**: a request that missed reads the row and then
//!   inserts it. If an invalidation of the cache arrives in between (a key revoked after the
//!   read), the value is returned to that one request — it was true when read — but not kept,
//!   so the next request reads again. Each cache has a generation, raised by every
//!   invalidation; a fill compares it after inserting, and an invalidation removes after
//!   raising it, so whichever comes last removes the stale entry.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The catalog caches, as the `cache` label of `kataven_catalog_cache_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheName {
    Accounts,
    Members,
    Limits,
    ApiKeys,
    WidgetKeys,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    Hit,
    /// Read from the database.
    Miss,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LookupLabels {
    pub cache: CacheName,
    pub result: Lookup,
}

impl EncodeLabelValue for CacheName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                Self::Accounts => "accounts",
                Self::Members => "members",
                Self::Limits => "limits",
                Self::ApiKeys => "api_keys",
                Self::WidgetKeys => "widget_keys",
            },
        )
    }
}

impl EncodeLabelValue for Lookup {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                Self::Hit => "hit",
                Self::Miss => "miss",
            },
        )
    }
}

pub struct Cache<K, V> {
    entries: moka::sync::Cache<K, V>,
    generation: AtomicU64,
    hits: Counter,
    misses: Counter,
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            generation: AtomicU64::new(0),
            hits: Counter::default(),
            misses: Counter::default(),
        }
    }

    /// Counts this cache's lookups in `family` under `name`.
    pub fn counted(mut self, family: &Family<LookupLabels, Counter>, name: CacheName) -> Self {
        let counter = |result| {
            family
                .get_or_create(&LookupLabels {
                    cache: name,
                    result,
                })
                .clone()
        };
        self.hits = counter(Lookup::Hit);
        self.misses = counter(Lookup::Miss);
        self
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key)
    }

    /// The cached value, or the one `load` reads (kept unless an invalidation came meanwhile).
    pub async fn get_or_load<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E>
    where
        K: Clone,
    {
        if let Some(hit) = self.entries.get(&key) {
            self.hits.inc();
            return Ok(hit);
        }
        self.misses.inc();
        let before = self.generation.load(Ordering::SeqCst);
        let value = load.await?;
        self.entries.insert(key.clone(), value.clone());
        if self.generation.load(Ordering::SeqCst) != before {
            // Invalidated while it was being read: the value may be stale.
            self.entries.invalidate(&key);
        }
        Ok(value)
    }

    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
    }

    /// Drops every entry for which `stale` holds.
    pub fn invalidate_if(&self, stale: impl Fn(&K, &V) -> bool + Send + Sync + 'static) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.entries.invalidate_entries_if(stale).is_err() {
            // Cannot happen (closures are enabled above); fall back to the safe answer.
            self.entries.invalidate_all();
        }
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Entries held (approximate; for metrics and tests).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// A revocation that arrives while a fill is reading: the fill's request gets what it read,
    /// but the cache does not keep it.
    #[tokio::test]
    async fn a_fill_loses_against_an_invalidation_that_arrives_while_it_reads() {
        let cache: Cache<&str, &str> = Cache::new(100, Duration::from_secs(30));
        let (read_started, started) = oneshot::channel();
        let (finish_read, finish) = oneshot::channel::<()>();
        let fill = cache.get_or_load("key", async {
            read_started.send(()).unwrap();
            finish.await.unwrap();
            Ok::<_, ()>("active")
        });
        let revoke = async {
            started.await.unwrap();
            cache.invalidate("key");
            finish_read.send(()).unwrap();
        };
        let (filled, ()) = tokio::join!(fill, revoke);
        assert_eq!(filled, Ok("active"));
        assert_eq!(cache.get("key"), None, "the stale value was kept");

        // Without an invalidation in between, the value is kept.
        let again = cache.get_or_load("key", async { Ok::<_, ()>("revoked") });
        assert_eq!(again.await, Ok("revoked"));
        assert_eq!(cache.get("key"), Some("revoked"));
    }

    #[tokio::test]
    async fn an_invalidation_by_predicate_and_a_clear_also_win() {
        let cache: Cache<(String, u32), u32> = Cache::new(100, Duration::from_secs(30));
        for (key, stale_by) in [
            ((String::from("a"), 1), "predicate"),
            ((String::from("a"), 2), "clear"),
        ] {
            let (read_started, started) = oneshot::channel();
            let (finish_read, finish) = oneshot::channel::<()>();
            let fill = cache.get_or_load(key.clone(), async {
                read_started.send(()).unwrap();
                finish.await.unwrap();
                Ok::<_, ()>(7)
            });
            let revoke = async {
                started.await.unwrap();
                if stale_by == "predicate" {
                    cache.invalidate_if(|(account, _), _| account == "a");
                } else {
                    cache.clear();
                }
                finish_read.send(()).unwrap();
            };
            let (filled, ()) = tokio::join!(fill, revoke);
            assert_eq!(filled, Ok(7));
            assert_eq!(
                cache.get(&key),
                None,
                "kept after an invalidation by {stale_by}"
            );
        }
    }

    /// Junk seen once does not push out an entry that is used.
    #[test]
    fn a_flood_of_unique_keys_keeps_the_entries_in_use() {
        let cache: Cache<String, u32> = Cache::new(1_000, Duration::from_secs(30));
        let hot: Vec<String> = (0..100).map(|i| format!("hot-{i}")).collect();
        for key in &hot {
            cache.entries.insert(key.clone(), 1);
        }
        for round in 0..100_000u32 {
            if round % 100 == 0 {
                for key in &hot {
                    assert!(cache.get(key.as_str()).is_some() || round == 0);
                }
            }
            cache.entries.insert(format!("junk-{round}"), 0);
        }
        cache.entries.run_pending_tasks();
        let kept = hot
            .iter()
            .filter(|k| cache.get(k.as_str()).is_some())
            .count();
        assert!(cache.len() <= 1_000, "{} entries", cache.len());
        assert_eq!(kept, hot.len(), "used entries were evicted by junk");
    }
}
