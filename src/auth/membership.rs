//! Who may act in which account (pipeline steps 5–7), with short-lived caches.
//!
//! Account rows and member rows are cached for at most [`CACHE_TTL`]. Every change to the
//! `accounts` or `account_members` tables fires a trigger that `NOTIFY`s `kataven_catalog`; each
//! instance listens and drops the affected entries at once. If the listener connection is lost,
//! everything is flushed (notifications may have been missed) and the listener reconnects.
//!
//! The caches are bounded and keep what is used under a flood of unique keys, and a fill that
//! read a row before an invalidation arrived is not kept (see [`crate::cache`]). Rows that do
//! not exist (an unknown account, a forged key) are cached too, as `None`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::api_keys::ApiKeyRecord;
use super::signing::Purpose;
use super::widget_keys::WidgetKeyRecord;
use crate::cache::{Cache, CacheName};
use crate::tenancy::catalog::{Account, Catalog, Limits, Role};
use crate::tenancy::slug::AccountSlug;

pub const CACHE_TTL: Duration = Duration::from_secs(30);
const LISTENER_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const LISTENER_BACKOFF_MAX: Duration = Duration::from_secs(1);
pub const CATALOG_CHANNEL: &str = "kataven_catalog";
/// Entries per cache, at most.
const MAX_ENTRIES: u64 = 100_000;

/// Run when the listener hears that a purpose's signing keys changed.
type SigningKeysHook = Box<dyn Fn(Purpose) + Send + Sync>;

/// Cached catalog lookups for the request pipeline.
#[derive(Clone)]
pub struct CatalogCache {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    accounts: Cache<String, Option<Account>>,
    /// `(account, subject)` → the member row's role, if any.
    members: Cache<(String, String), Option<Role>>,
    /// The account's limits (overrides applied to the defaults).
    limits: Cache<String, Limits>,
    /// API keys by HMAC.
    api_keys: Cache<[u8; 32], Option<ApiKeyRecord>>,
    /// Widget keys by HMAC.
    widget_keys: Cache<[u8; 32], Option<WidgetKeyRecord>>,
    /// Called with the slug of an account deleted or moved (the pool map forgets its pool).
    on_placement_change: Box<dyn Fn(&str) + Send + Sync>,
    /// Called with the purpose of signing keys that changed (instances re-read them).
    on_signing_keys_change: parking_lot::RwLock<Option<SigningKeysHook>>,
    /// Called when the listener lost its connection (the database may have restarted).
    on_listener_reset: parking_lot::RwLock<Option<Box<dyn Fn() + Send + Sync>>>,
    listener_resets: prometheus_client::metrics::counter::Counter,
}

impl CatalogCache {
    /// The metrics count the caches' lookups and the times the listener lost its connection
    /// (and so flushed every cache).
    pub fn new(
        catalog: Catalog,
        metrics: &crate::metrics::Metrics,
        on_placement_change: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        fn cache<K, V>(metrics: &crate::metrics::Metrics, name: CacheName) -> Cache<K, V>
        where
            K: std::hash::Hash + Eq + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            Cache::new(MAX_ENTRIES, CACHE_TTL).counted(&metrics.cache_lookups, name)
        }
        Self {
            inner: Arc::new(Inner {
                catalog,
                accounts: cache(metrics, CacheName::Accounts),
                members: cache(metrics, CacheName::Members),
                limits: cache(metrics, CacheName::Limits),
                api_keys: cache(metrics, CacheName::ApiKeys),
                widget_keys: cache(metrics, CacheName::WidgetKeys),
                on_placement_change: Box::new(on_placement_change),
                on_signing_keys_change: parking_lot::RwLock::new(None),
                on_listener_reset: parking_lot::RwLock::new(None),
                listener_resets: metrics.listener_resets.clone(),
            }),
        }
    }

    pub async fn account(&self, slug: &AccountSlug) -> sqlx::Result<Option<Account>> {
        self.inner
            .accounts
            .get_or_load(slug.to_string(), self.inner.catalog.account(slug))
            .await
    }

    pub async fn member_role(
        &self,
        slug: &AccountSlug,
        subject: &str,
    ) -> sqlx::Result<Option<Role>> {
        self.inner
            .members
            .get_or_load(
                (slug.to_string(), subject.to_owned()),
                self.inner.catalog.member_role(slug, subject),
            )
            .await
    }

    pub async fn limits(&self, slug: &AccountSlug, defaults: &Limits) -> sqlx::Result<Limits> {
        self.inner
            .limits
            .get_or_load(slug.to_string(), self.inner.catalog.limits(slug, defaults))
            .await
    }

    /// Registers what to do when signing keys change on any instance.
    pub fn on_signing_keys_change(&self, f: impl Fn(Purpose) + Send + Sync + 'static) {
        *self.inner.on_signing_keys_change.write() = Some(Box::new(f));
    }

    /// Registers what to do when the listener loses its connection (besides flushing).
    pub fn on_listener_reset(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.inner.on_listener_reset.write() = Some(Box::new(f));
    }

    /// The listener lost its connection: notifications may have been missed, and the server
    /// may have restarted under every other connection too.
    fn listener_reset(&self, was_listening: bool) {
        if was_listening {
            self.inner.listener_resets.inc();
        }
        self.flush();
        if let Some(f) = self.inner.on_listener_reset.read().as_ref() {
            f();
        }
    }

    pub async fn api_key(&self, hash: &[u8; 32]) -> sqlx::Result<Option<ApiKeyRecord>> {
        self.inner
            .api_keys
            .get_or_load(
                *hash,
                crate::keys::store::load_api_key(self.inner.catalog.pool(), hash),
            )
            .await
    }

    pub async fn widget_key(&self, hash: &[u8; 32]) -> sqlx::Result<Option<WidgetKeyRecord>> {
        self.inner
            .widget_keys
            .get_or_load(
                *hash,
                crate::keys::store::load_widget_key(self.inner.catalog.pool(), hash),
            )
            .await
    }

    /// Drops what a catalog change makes stale. The listener applies what the triggers
    /// `NOTIFY`; an instance also applies its own changes at once, so that they hold for its
    /// very next request, before the notification comes back.
    pub fn invalidate(&self, change: &CatalogChange) {
        match change {
            CatalogChange::Account(slug) => self.inner.accounts.invalidate(slug.as_str()),
            CatalogChange::Placement(slug) => {
                self.inner.accounts.invalidate(slug.as_str());
                self.forget_members_of(slug);
                (self.inner.on_placement_change)(slug);
            }
            CatalogChange::Limits(slug) => self.inner.limits.invalidate(slug.as_str()),
            CatalogChange::ApiKey(hash) => self.inner.api_keys.invalidate(hash),
            CatalogChange::WidgetKey(hash) => self.inner.widget_keys.invalidate(hash),
            CatalogChange::SigningKeys(purpose) => {
                if let Some(f) = self.inner.on_signing_keys_change.read().as_ref() {
                    f(*purpose);
                }
            }
            CatalogChange::Members(slug) => self.forget_members_of(slug),
            CatalogChange::Unknown => self.flush(),
        }
    }

    fn forget_members_of(&self, slug: &str) {
        let slug = slug.to_owned();
        self.inner
            .members
            .invalidate_if(move |(account, _), _| *account == slug);
    }

    pub fn flush(&self) {
        self.inner.accounts.clear();
        self.inner.members.clear();
        self.inner.limits.clear();
        self.inner.api_keys.clear();
        self.inner.widget_keys.clear();
    }

    /// Listens for catalog changes until the task is aborted. After a lost connection it
    /// reconnects with a backoff of 100 ms doubling up to 1 s, and logs once per outage.
    pub fn spawn_listener(&self) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut backoff = LISTENER_BACKOFF_FIRST;
            let mut failing = false;
            loop {
                let mut listening = false;
                let result = cache.listen(&mut listening).await;
                cache.listener_reset(listening);
                if listening {
                    backoff = LISTENER_BACKOFF_FIRST;
                    failing = false;
                }
                if let Err(e) = result {
                    if !failing {
                        tracing::warn!(error = %e, "catalog listener lost its connection; caches flushed, reconnecting");
                    }
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTENER_BACKOFF_MAX);
            }
        })
    }

    /// Listens until the connection fails; `listening` tells whether LISTEN took effect.
    async fn listen(&self, listening: &mut bool) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(self.inner.catalog.pool()).await?;
        listener.listen(CATALOG_CHANNEL).await?;
        *listening = true;
        // Anything cached before LISTEN took effect may be stale.
        self.flush();
        tracing::debug!("catalog listener listening");
        loop {
            match listener.try_recv().await? {
                Some(notification) => {
                    self.invalidate(&CatalogChange::parse(notification.payload()))
                }
                // The connection was lost: start again with a new one (the next `try_recv`
                // would reconnect without telling).
                None => {
                    return Err(sqlx::Error::Io(std::io::Error::from(
                        std::io::ErrorKind::ConnectionAborted,
                    )));
                }
            }
        }
    }
}

fn decode_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// A change in the catalog that makes cached rows stale: what the catalog's triggers `NOTIFY`
/// on `kataven_catalog` as `<kind>:<subject>` (see the system migrations), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// `accounts:<slug>`: the account's row (status, name, limits override).
    Account(String),
    /// `placement:<slug>`: the account's database moved, or was created or deleted.
    Placement(String),
    /// `limits:<slug>`: the account's call limits.
    Limits(String),
    /// `members:<slug>`: the account's members.
    Members(String),
    /// `apikey:<hex hash>`: one API key.
    ApiKey([u8; 32]),
    /// `widgetkey:<hex hash>`: one widget key.
    WidgetKey([u8; 32]),
    /// `signingkeys:<purpose>`: the signing keys of one purpose.
    SigningKeys(Purpose),
    /// Anything else (a payload this version does not know, a malformed hash): every cached
    /// row is dropped.
    Unknown,
}

impl CatalogChange {
    pub fn parse(payload: &str) -> Self {
        let owned = |s: &str| s.to_owned();
        match payload.split_once(':') {
            Some(("accounts", slug)) => Self::Account(owned(slug)),
            Some(("placement", slug)) => Self::Placement(owned(slug)),
            Some(("limits", slug)) => Self::Limits(owned(slug)),
            Some(("members", slug)) => Self::Members(owned(slug)),
            Some(("apikey", hex)) => decode_hash(hex).map_or(Self::Unknown, Self::ApiKey),
            Some(("widgetkey", hex)) => decode_hash(hex).map_or(Self::Unknown, Self::WidgetKey),
            Some(("signingkeys", purpose)) => {
                purpose.parse().map_or(Self::Unknown, Self::SigningKeys)
            }
            _ => Self::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CatalogChange;
    use super::Purpose;

    #[test]
    fn notifications_parse_into_changes() {
        let hash = [7u8; 32];
        let hex = hex::encode(hash);
        let cases = [
            ("accounts:acme", CatalogChange::Account("acme".into())),
            ("placement:acme", CatalogChange::Placement("acme".into())),
            ("limits:acme", CatalogChange::Limits("acme".into())),
            ("members:acme", CatalogChange::Members("acme".into())),
            (&*format!("apikey:{hex}"), CatalogChange::ApiKey(hash)),
            (&*format!("widgetkey:{hex}"), CatalogChange::WidgetKey(hash)),
            (
                "signingkeys:widget_session",
                CatalogChange::SigningKeys(Purpose::WidgetSession),
            ),
            (
                "signingkeys:dev_issuer",
                CatalogChange::SigningKeys(Purpose::DevIssuer),
            ),
            ("signingkeys:other", CatalogChange::Unknown),
            // What this version cannot read drops everything.
            ("apikey:not-hex", CatalogChange::Unknown),
            ("apikey:0707", CatalogChange::Unknown),
            ("tables:acme", CatalogChange::Unknown),
            ("", CatalogChange::Unknown),
        ];
        for (payload, change) in cases {
            assert_eq!(CatalogChange::parse(payload), change, "{payload}");
        }
    }
}
