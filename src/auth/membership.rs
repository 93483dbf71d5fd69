//! Who may act in which account (pipeline steps 5–7), with short-lived caches.
//!
//! Account rows and member rows are cached for at most [`CACHE_TTL`]. Every change to the
//! `accounts` or `account_members` tables fires a trigger that `NOTIFY`s `kataven_catalog`; each
//! instance listens and drops the affected entries at once. If the listener connection is lost,
//! everything is flushed (notifications may have been missed) and the listener reconnects.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sqlx::postgres::PgListener;
use tokio::time::Instant;

use super::api_keys::{self, ApiKeyRecord};
use super::widget_keys::{self, WidgetKeyRecord};
use crate::tenancy::catalog::{Account, Catalog, Limits, Role};
use crate::tenancy::slug::AccountSlug;

pub const CACHE_TTL: Duration = Duration::from_secs(30);
pub const CATALOG_CHANNEL: &str = "kataven_catalog";
/// Past this many entries a cache is cleared rather than grown.
const MAX_ENTRIES: usize = 100_000;

/// A callback run when the listener hears of a change.
type Hook = Box<dyn Fn(&str) + Send + Sync>;

struct Cached<T> {
    value: T,
    at: Instant,
}

/// Cached catalog lookups for the request pipeline.
#[derive(Clone)]
pub struct CatalogCache {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    accounts: DashMap<String, Cached<Option<Account>>>,
    /// `(account, subject)` → the member row's role, if any.
    members: DashMap<(String, String), Cached<Option<Role>>>,
    /// The account's limits (overrides applied to the defaults).
    limits: DashMap<String, Cached<Limits>>,
    /// API keys by HMAC.
    api_keys: DashMap<[u8; 32], Cached<Option<ApiKeyRecord>>>,
    /// Widget keys by HMAC.
    widget_keys: DashMap<[u8; 32], Cached<Option<WidgetKeyRecord>>>,
    /// Called with the slug of an account deleted or moved (the pool map forgets its pool).
    on_placement_change: Box<dyn Fn(&str) + Send + Sync>,
    /// Called with the purpose of signing keys that changed (instances re-read them).
    on_signing_keys_change: parking_lot::RwLock<Option<Hook>>,
    listener_resets: prometheus_client::metrics::counter::Counter,
}

impl CatalogCache {
    /// `listener_resets` counts the times the listener lost its connection (and so flushed
    /// every cache).
    pub fn new(
        catalog: Catalog,
        listener_resets: prometheus_client::metrics::counter::Counter,
        on_placement_change: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                accounts: DashMap::new(),
                members: DashMap::new(),
                limits: DashMap::new(),
                api_keys: DashMap::new(),
                widget_keys: DashMap::new(),
                on_placement_change: Box::new(on_placement_change),
                on_signing_keys_change: parking_lot::RwLock::new(None),
                listener_resets,
            }),
        }
    }

    pub async fn account(&self, slug: &AccountSlug) -> sqlx::Result<Option<Account>> {
        if let Some(hit) = fresh(&self.inner.accounts, slug.as_str()) {
            return Ok(hit);
        }
        let value = self.inner.catalog.account(slug).await?;
        insert(&self.inner.accounts, slug.to_string(), value.clone());
        Ok(value)
    }

    pub async fn member_role(
        &self,
        slug: &AccountSlug,
        subject: &str,
    ) -> sqlx::Result<Option<Role>> {
        let key = (slug.to_string(), subject.to_owned());
        if let Some(hit) = fresh(&self.inner.members, &key) {
            return Ok(hit);
        }
        let value = self.inner.catalog.member_role(slug, subject).await?;
        insert(&self.inner.members, key, value);
        Ok(value)
    }

    pub async fn limits(&self, slug: &AccountSlug, defaults: &Limits) -> sqlx::Result<Limits> {
        if let Some(hit) = fresh(&self.inner.limits, slug.as_str()) {
            return Ok(hit);
        }
        let value = self.inner.catalog.limits(slug, defaults).await?;
        insert(&self.inner.limits, slug.to_string(), value);
        Ok(value)
    }

    /// Registers what to do when signing keys change on any instance.
    pub fn on_signing_keys_change(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self.inner.on_signing_keys_change.write() = Some(Box::new(f));
    }

    pub async fn api_key(&self, hash: &[u8; 32]) -> sqlx::Result<Option<ApiKeyRecord>> {
        if let Some(hit) = fresh(&self.inner.api_keys, hash) {
            return Ok(hit);
        }
        let value = api_keys::load(self.inner.catalog.pool(), hash).await?;
        insert(&self.inner.api_keys, *hash, value.clone());
        Ok(value)
    }

    pub async fn widget_key(&self, hash: &[u8; 32]) -> sqlx::Result<Option<WidgetKeyRecord>> {
        if let Some(hit) = fresh(&self.inner.widget_keys, hash) {
            return Ok(hit);
        }
        let value = widget_keys::load(self.inner.catalog.pool(), hash).await?;
        insert(&self.inner.widget_keys, *hash, value.clone());
        Ok(value)
    }

    /// Drops what a catalog change makes stale. `payload` is what the triggers `NOTIFY`; an
    /// instance calls this itself after its own changes so that they apply to its very next
    /// request, before the notification comes back.
    pub fn invalidate(&self, payload: &str) {
        match payload.split_once(':') {
            Some(("accounts", slug)) => {
                self.inner.accounts.remove(slug);
            }
            Some(("placement", slug)) => {
                self.inner.accounts.remove(slug);
                self.inner.members.retain(|(account, _), _| account != slug);
                (self.inner.on_placement_change)(slug);
            }
            Some(("limits", slug)) => {
                self.inner.limits.remove(slug);
            }
            Some(("apikey", hex)) => match decode_hash(hex) {
                Some(hash) => {
                    self.inner.api_keys.remove(&hash);
                }
                None => self.flush(),
            },
            Some(("widgetkey", hex)) => match decode_hash(hex) {
                Some(hash) => {
                    self.inner.widget_keys.remove(&hash);
                }
                None => self.flush(),
            },
            Some(("signingkeys", purpose)) => {
                if let Some(f) = self.inner.on_signing_keys_change.read().as_ref() {
                    f(purpose);
                }
            }
            Some(("members", slug)) => {
                self.inner.members.retain(|(account, _), _| account != slug);
            }
            _ => self.flush(),
        }
    }

    pub fn flush(&self) {
        self.inner.accounts.clear();
        self.inner.members.clear();
        self.inner.limits.clear();
        self.inner.api_keys.clear();
        self.inner.widget_keys.clear();
    }

    /// Listens for catalog changes until the task is aborted.
    pub fn spawn_listener(&self) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = cache.listen().await {
                    tracing::warn!(error = %e, "catalog listener failed; retrying");
                }
                cache.inner.listener_resets.inc();
                cache.flush();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn listen(&self) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(self.inner.catalog.pool()).await?;
        listener.listen(CATALOG_CHANNEL).await?;
        // Anything cached before LISTEN took effect may be stale.
        self.flush();
        loop {
            match listener.try_recv().await? {
                Some(notification) => self.invalidate(notification.payload()),
                None => {
                    // The connection was lost and will be re-established by the next call:
                    // notifications may have been missed meanwhile.
                    tracing::warn!("catalog listener reconnecting; caches flushed");
                    self.inner.listener_resets.inc();
                    self.flush();
                }
            }
        }
    }
}

fn decode_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

fn fresh<K, Q, V>(map: &DashMap<K, Cached<V>>, key: &Q) -> Option<V>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    let entry = map.get(key)?;
    (entry.at.elapsed() < CACHE_TTL).then(|| entry.value.clone())
}

fn insert<K: std::hash::Hash + Eq, V>(map: &DashMap<K, Cached<V>>, key: K, value: V) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(
        key,
        Cached {
            value,
            at: Instant::now(),
        },
    );
}
