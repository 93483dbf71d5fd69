//! `sk_live_` API keys: verification on the hot path (their catalog SQL is in `keys::store`).
//!
//! Verification: the format, checksum and tag are checked first (no database access for a
//! mistyped or made-up key), then the HMAC of the key is looked up in the catalog cache (one
//! catalog query on a miss, which also records the key's first use; revocations evict it on
//! every instance through `NOTIFY`). `last_used_at` is written in batches, never per request.
//!
//! Keys made before tags existed (untagged) are still looked up while any usable one exists;
//! whether one does is read at start and every minute.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use sqlx::PgPool;
use uuid::Uuid;

use super::keys::{KeyFormatError, KeyHasher, KeyKind, api_key_account};
use super::membership::CatalogCache;
use super::principal::{AuthRejection, Principal};
use crate::keys::store;
use crate::tenancy::slug::AccountSlug;

/// What verification needs of a key's catalog row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub account: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Why a key was not accepted.
#[derive(Debug)]
pub enum KeyRejection {
    /// 401, with a reason label for metrics.
    Refused(AuthRejection),
    /// The catalog could not be asked (503).
    Unavailable(sqlx::Error),
}

impl From<&'static str> for KeyRejection {
    fn from(reason: &'static str) -> Self {
        Self::Refused(AuthRejection::new(reason))
    }
}

pub struct ApiKeys {
    hasher: KeyHasher,
    pool: PgPool,
    /// Whether usable untagged (pre-tag) keys may exist: until the catalog says otherwise.
    untagged_keys: AtomicBool,
    /// API keys used since the last flush, with the time of their last use.
    touched: DashMap<Uuid, DateTime<Utc>>,
    /// Widget keys used since the last flush.
    touched_widget: DashMap<Uuid, DateTime<Utc>>,
}

impl ApiKeys {
    pub fn new(hasher: KeyHasher, pool: PgPool) -> Self {
        Self {
            hasher,
            pool,
            untagged_keys: AtomicBool::new(true),
            touched: DashMap::new(),
            touched_widget: DashMap::new(),
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// Step 4 for `sk_live_` bearers.
    pub async fn verify(&self, key: &str, cache: &CatalogCache) -> Result<Principal, KeyRejection> {
        let account = api_key_account(key).map_err(|e| match e {
            KeyFormatError::Malformed => "malformed_api_key",
            KeyFormatError::BadChecksum => "bad_checksum",
        })?;
        let account = AccountSlug::parse(account).map_err(|_| "malformed_api_key")?;
        if !self.hasher.is_tagged(key) && !self.untagged_keys.load(Ordering::Relaxed) {
            return Err("forged_api_key".into());
        }
        let hash = self.hasher.hash(key);
        let record = cache
            .api_key(&hash)
            .await
            .map_err(KeyRejection::Unavailable)?
            .ok_or("unknown_api_key")?;
        if record.account != account.as_str() {
            return Err("unknown_api_key".into());
        }
        if record.disabled_at.is_some() {
            return Err("disabled_api_key".into());
        }
        if record.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err("expired_api_key".into());
        }
        self.touched.insert(record.id, Utc::now());
        Ok(Principal::ApiKey {
            account,
            key_id: record.id.to_string(),
        })
    }

    /// Notes a widget key's use (written with the next flush).
    pub fn touch_widget_key(&self, id: Uuid) {
        self.touched_widget.insert(id, Utc::now());
    }

    /// Writes the pending `last_used_at` times of API keys and widget keys; `false` when some
    /// could not be written (they are kept for the next flush).
    pub async fn flush_last_used(&self) -> bool {
        let keys = self.flush_table(&self.touched, KeyKind::Api).await;
        let widget_keys = self
            .flush_table(&self.touched_widget, KeyKind::Widget)
            .await;
        keys && widget_keys
    }

    /// One statement per table for all pending uses.
    async fn flush_table(&self, touched: &DashMap<Uuid, DateTime<Utc>>, table: KeyKind) -> bool {
        let pending: Vec<(Uuid, DateTime<Utc>)> =
            touched.iter().map(|e| (*e.key(), *e.value())).collect();
        if pending.is_empty() {
            return true;
        }
        for (id, at) in &pending {
            touched.remove_if(id, |_, v| v == at);
        }
        let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = pending.into_iter().unzip();
        let written = store::record_uses(&self.pool, table, &ids, &times).await;
        if let Err(e) = written {
            tracing::warn!(error = %e, table = table.table(), "could not record key use; retrying later");
            for (id, at) in ids.into_iter().zip(times) {
                touched.entry(id).or_insert(at);
            }
            return false;
        }
        true
    }

    /// Reads whether any usable untagged key is left (they are looked up until none is).
    pub async fn check_untagged_keys(&self) {
        let left = store::untagged_keys_left(&self.pool).await;
        match left {
            Ok(left) => self.untagged_keys.store(left, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "could not check for untagged API keys"),
        }
    }

    /// Flushes every few seconds, and checks for untagged keys every minute, until aborted.
    pub fn spawn_flusher(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for round in 0u64.. {
                tick.tick().await;
                if round % 12 == 0 {
                    this.check_untagged_keys().await;
                }
                this.flush_last_used().await;
            }
        })
    }
}
