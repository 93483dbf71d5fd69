//! The account slug: the only way to get one is [`AccountSlug::parse`].
//!
//! A slug names a tenant *and* its PostgreSQL database, so the rules are strict:
//! `^[a-z0-9][a-z0-9_-]{0,62}$` (at most 63 bytes, PostgreSQL's identifier limit)
//! and never the system database's name.

use std::fmt;

/// The system database. It is never a tenant.
pub const SYSTEM_DATABASE: &str = "kataven-admin";

/// Names an account may not take because a database of that name is not a tenant.
/// Collisions with other existing non-tenant databases are checked at provisioning time.
pub const NAMES_NOT_FOR_ACCOUNTS: &[&str] =
    &[SYSTEM_DATABASE, "postgres", "template0", "template1"];

const MAX_LEN: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("account must match ^[a-z0-9][a-z0-9_-]{{0,62}}$")]
    Invalid,
    #[error("account `kataven-admin` is reserved")]
    Reserved,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AccountSlug(String);

impl AccountSlug {
    /// Parses a slug from untrusted input: the syntax first, then the reserved name.
    pub fn parse(input: &str) -> Result<Self, SlugError> {
        if !is_valid_syntax(input) {
            return Err(SlugError::Invalid);
        }
        if input == SYSTEM_DATABASE {
            return Err(SlugError::Reserved);
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid_syntax(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.len() <= MAX_LEN
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

impl fmt::Display for AccountSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for AccountSlug {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for AccountSlug {
    type Err = SlugError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_table() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
        let cases: &[(&str, Result<(), SlugError>)] = &[
            ("acme", Ok(())),
            ("a", Ok(())),
            ("0", Ok(())),
            ("acme_corp-2", Ok(())),
            ("9lives", Ok(())),
            (&long63, Ok(())),
            (&long64, Err(SlugError::Invalid)),
            ("", Err(SlugError::Invalid)),
            ("Acme", Err(SlugError::Invalid)),
            ("ACME", Err(SlugError::Invalid)),
            ("-acme", Err(SlugError::Invalid)),
            ("_acme", Err(SlugError::Invalid)),
            ("acme corp", Err(SlugError::Invalid)),
            ("acme.com", Err(SlugError::Invalid)),
            ("acmé", Err(SlugError::Invalid)),
            ("аcme", Err(SlugError::Invalid)), // Cyrillic а
            ("acme\0", Err(SlugError::Invalid)),
            ("acme/x", Err(SlugError::Invalid)),
            (" acme", Err(SlugError::Invalid)),
            ("kataven-admin", Err(SlugError::Reserved)),
            // Valid syntax; refused at provisioning because such databases are not tenants.
            ("postgres", Ok(())),
            ("template1", Ok(())),
        ];
        for (input, want) in cases {
            assert_eq!(
                AccountSlug::parse(input).map(|_| ()),
                *want,
                "input {input:?}"
            );
        }
    }

    use proptest::prelude::*;

    /// The documented rule, written out independently: `^[a-z0-9][a-z0-9_-]{0,62}$`.
    fn follows_the_rule(s: &str) -> bool {
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().count() <= 63
            && s.chars().all(allowed)
    }

    /// Mostly near-slugs (the interesting border), some arbitrary Unicode.
    fn candidates() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_-]{0,70}",
            "[a-zA-Z0-9_. /-]{0,66}",
            "[a-z0-9][a-z0-9_-]{60,64}",
            Just("kataven-admin".to_owned()),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(4096))]

        /// Any string parses exactly when it follows the rule and is not the system database,
        /// and a parsed slug is the input, unchanged.
        #[test]
        fn any_string_is_a_slug_exactly_by_the_rule(input in candidates()) {
            match AccountSlug::parse(&input) {
                Ok(slug) => {
                    prop_assert!(follows_the_rule(&input) && input != SYSTEM_DATABASE);
                    prop_assert_eq!(slug.as_str(), input.as_str());
                    prop_assert_eq!(slug.to_string(), input.clone());
                    prop_assert_eq!(input.parse::<AccountSlug>(), Ok(slug));
                }
                Err(SlugError::Reserved) => prop_assert_eq!(input.as_str(), SYSTEM_DATABASE),
                Err(SlugError::Invalid) => prop_assert!(!follows_the_rule(&input)),
            }
        }

        /// Replacing one character of a valid slug with one outside the rule's set refuses it.
        #[test]
        fn one_foreign_character_spoils_a_slug(
            slug in "[a-z0-9][a-z0-9_-]{0,62}",
            at in any::<prop::sample::Index>(),
            c in any::<char>().prop_filter("outside the set", |c| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
            }),
        ) {
            let mut chars: Vec<char> = slug.chars().collect();
            let i = at.index(chars.len());
            chars[i] = c;
            let spoiled: String = chars.into_iter().collect();
            prop_assert_eq!(AccountSlug::parse(&spoiled), Err(SlugError::Invalid));
        }
    }
}
