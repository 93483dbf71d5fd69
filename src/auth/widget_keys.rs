//! `pk_live_` widget keys: public identifiers of an account's embedded widget, guarded by a
//! per-key origin allowlist. Their catalog SQL is in `keys::store`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::origin::{Entry, parse_allowlist};

/// What the widget endpoints need of a key's catalog row, its allowlist parsed.
#[derive(Debug, Clone)]
pub struct WidgetKeyRecord {
    pub id: Uuid,
    pub account: String,
    /// The stored `domain_allowlist`, parsed once when the key is loaded. Entries that do not
    /// parse (stored before validation tightened, say) are left out: they never match.
    pub allowlist: Vec<Entry>,
    pub agent_id: Option<Uuid>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The row as stored (read by `keys::store`).
#[derive(sqlx::FromRow)]
pub(crate) struct WidgetKeyRow {
    id: Uuid,
    account: String,
    domain_allowlist: Vec<String>,
    agent_id: Option<Uuid>,
    disabled_at: Option<DateTime<Utc>>,
}

impl From<WidgetKeyRow> for WidgetKeyRecord {
    fn from(row: WidgetKeyRow) -> Self {
        let (allowlist, refused) = parse_allowlist(&row.domain_allowlist);
        if let Some(first) = refused.first() {
            tracing::warn!(
                key = %row.id,
                refused = refused.len(),
                first = %first,
                "widget key allowlist entries that do not parse are ignored"
            );
        }
        Self {
            id: row.id,
            account: row.account,
            allowlist,
            agent_id: row.agent_id,
            disabled_at: row.disabled_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::origin::{is_allowed, request_origin};

    /// The record a row with these stored entries loads as.
    fn loaded(stored: &[&str]) -> WidgetKeyRecord {
        WidgetKeyRecord::from(WidgetKeyRow {
            id: Uuid::nil(),
            account: "acme".to_owned(),
            domain_allowlist: stored.iter().map(|entry| (*entry).to_owned()).collect(),
            agent_id: None,
            disabled_at: None,
        })
    }

    #[test]
    fn allowlist_is_parsed_when_the_row_is_read() {
        let key = loaded(&["*.com", "HTTPS://Acme.COM.:443/", "shop.example:8443"]);
        // Parsed in order, normalised; the unparsable `*.com` is dropped.
        assert_eq!(
            key.allowlist,
            [
                Entry::parse("https://acme.com").unwrap(),
                Entry::parse("shop.example:8443").unwrap()
            ]
        );
        let allowed = |header: &str| {
            let origin = request_origin(Some(header), None).expect("a usable origin");
            is_allowed(&key.allowlist, &origin)
        };
        assert!(allowed("https://acme.com"));
        assert!(allowed("http://shop.example:8443"));
        assert!(!allowed("http://acme.com"));
        assert!(!allowed("https://shop.example"));
        // The dropped entry never matches, not even as a suffix.
        assert!(!allowed("https://www.com"));
        assert!(!allowed("https://acme.com:8443"));
    }

    #[test]
    fn a_key_with_only_unparsable_entries_allows_nothing() {
        let key = loaded(&["*", "https://acme.com/app", "acme.com "]);
        assert!(key.allowlist.is_empty());
        let origin = request_origin(Some("https://acme.com"), None).unwrap();
        assert!(!is_allowed(&key.allowlist, &origin));
    }
}
