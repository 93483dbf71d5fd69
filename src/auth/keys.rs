//! Key formats and hashing shared by API keys (`sk_live_`) and widget keys (`pk_live_`).
//!
//! * `sk_live_<account>_<body>`: `<body>` is 32 random base62 characters followed by a
//!   6-character base62 CRC32 of everything before it, so that a mistyped key is refused
//!   without touching any database. Of the 32, the last 8 are a **tag**: a MAC of the rest of
//!   the key under the pepper. Anyone can compute a CRC32, nobody without the pepper a tag, so
//!   a made-up key is refused without a database query too (see `docs/keys.md`). Keys made
//!   before tags existed have 32 random characters and are told apart by the catalog's
//!   `tagged` column.
//! * `pk_live_<account>_<32 random base62>`: a public identifier, not a credential.
//!
//! The account is everything between the prefix and the **last** `_` (slugs may contain `_`;
//! bodies never do). Keys are stored as HMAC-SHA256(pepper, key).

use hmac::{Hmac, Mac};

use crate::auth::membership::CatalogChange;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

pub const API_KEY_PREFIX: &str = "sk_live_";
pub const WIDGET_KEY_PREFIX: &str = "pk_live_";
/// Single-use widget user tokens (`POST /api/v1/widget/auth/user-token`).
pub const USER_TOKEN_PREFIX: &str = "ut_";
const RANDOM_LEN: usize = 32;
/// The server-keyed tag at the end of an API key's random part.
const TAG_LEN: usize = 8;
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..62)] as char)
        .collect()
}

/// `n` in base62, left-padded with `0` to `width` characters.
fn base62(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).expect("ASCII")
}

fn checksum(text: &str) -> String {
    base62(u64::from(crc32fast::hash(text.as_bytes())), CHECKSUM_LEN)
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A new widget key for `account`.
pub fn new_widget_key(account: &str) -> String {
    format!("{WIDGET_KEY_PREFIX}{account}_{}", random_base62(RANDOM_LEN))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not a key of this kind")]
    Malformed,
    #[error("the key's checksum does not match")]
    BadChecksum,
}

/// The account an `sk_live_` key names, and its body: what lies between the prefix and the
/// last `_`, and after it. Nothing is checked yet (see [`api_key_account`]).
fn api_key_parts(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(API_KEY_PREFIX)?.rsplit_once('_')
}

/// The account an `sk_live_` key names, whether or not the key is well-formed (pipeline step 3
/// refuses a key naming a reserved account before the key is verified).
pub fn api_key_named_account(key: &str) -> Option<&str> {
    api_key_parts(key).map(|(account, _)| account)
}

/// The account of a well-formed API key, checksum verified. The account is not yet checked
/// against the slug rules (the caller parses it into an `AccountSlug`).
pub fn api_key_account(key: &str) -> Result<&str, KeyFormatError> {
    let (account, body) = api_key_parts(key).ok_or(KeyFormatError::Malformed)?;
    if account.is_empty() || body.len() != RANDOM_LEN + CHECKSUM_LEN || !is_base62(body) {
        return Err(KeyFormatError::Malformed);
    }
    let head = &key[..key.len() - CHECKSUM_LEN];
    if checksum(head) != body[RANDOM_LEN..] {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(account)
}

/// The account of a well-formed widget key.
pub fn widget_key_account(key: &str) -> Result<&str, KeyFormatError> {
    let rest = key
        .strip_prefix(WIDGET_KEY_PREFIX)
        .ok_or(KeyFormatError::Malformed)?;
    let (account, body) = rest.rsplit_once('_').ok_or(KeyFormatError::Malformed)?;
    if account.is_empty() || body.len() != RANDOM_LEN || !is_base62(body) {
        return Err(KeyFormatError::Malformed);
    }
    Ok(account)
}

/// The last 8 characters, shown in lists to recognise a key.
pub fn last8(key: &str) -> String {
    // Characters, not bytes: a byte offset could fall inside a multi-byte character.
    let start = key.char_indices().rev().nth(7).map_or(0, |(at, _)| at);
    key[start..].to_owned()
}

/// HMAC-SHA256 with the configured pepper: what the catalog stores instead of keys and tokens.
#[derive(Clone)]
pub struct KeyHasher {
    pepper: SecretString,
}

impl KeyHasher {
    pub fn new(pepper: SecretString) -> Self {
        Self { pepper }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.pepper.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length")
    }

    pub fn hash(&self, key: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A new API key for `account`, tagged (see the module documentation).
    pub fn new_api_key(&self, account: &str) -> String {
        let head = format!(
            "{API_KEY_PREFIX}{account}_{}",
            random_base62(RANDOM_LEN - TAG_LEN)
        );
        let tagged = format!("{head}{}", self.tag(&head));
        let sum = checksum(&tagged);
        tagged + &sum
    }

    /// The tag of everything in a key before it (domain-separated from [`Self::hash`]: keys
    /// never contain a NUL byte).
    fn tag(&self, head: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"kataven api key tag\0");
        mac.update(head.as_bytes());
        let digest = mac.finalize().into_bytes();
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        base62(n % 62u64.pow(TAG_LEN as u32), TAG_LEN)
    }

    /// Whether a well-formed API key (see [`api_key_account`]) carries this server's tag.
    pub fn is_tagged(&self, key: &str) -> bool {
        let Some(tag_start) = key.len().checked_sub(CHECKSUM_LEN + TAG_LEN) else {
            return false;
        };
        let (Some(head), Some(tag)) = (
            key.get(..tag_start),
            key.get(tag_start..tag_start + TAG_LEN),
        ) else {
            return false;
        };
        // Constant time: the comparison says nothing about how much of a guess was right.
        self.tag(head)
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher([REDACTED])")
    }
}

/// Which kind of key a catalog operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Api,
    Widget,
}

impl KeyKind {
    /// What a key of this kind is called in messages ("no such API key").
    pub fn noun(self) -> &'static str {
        match self {
            Self::Api => "API key",
            Self::Widget => "widget key",
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Self::Api => "api_keys",
            Self::Widget => "widget_keys",
        }
    }

    /// The catalog change that makes a key of this kind stale in the caches (a stored hash
    /// that is not one drops everything, as the trigger's notification of it would).
    pub fn invalidation(self, hash: &[u8]) -> CatalogChange {
        let Ok(hash) = <[u8; 32]>::try_from(hash) else {
            return CatalogChange::Unknown;
        };
        match self {
            Self::Api => CatalogChange::ApiKey(hash),
            Self::Widget => CatalogChange::WidgetKey(hash),
        }
    }
}

/// A new opaque secret of `len` base62 characters (user tokens).
pub fn random_secret(prefix: &str, len: usize) -> String {
    format!("{prefix}{}", random_base62(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> KeyHasher {
        KeyHasher::new(SecretString::from("pepper".to_owned()))
    }

    fn new_api_key(account: &str) -> String {
        hasher().new_api_key(account)
    }

    #[test]
    fn api_keys_round_trip_and_carry_their_account() {
        for account in ["acme", "acme_corp", "a_b_c-d", "0"] {
            let key = new_api_key(account);
            assert_eq!(key.len(), API_KEY_PREFIX.len() + account.len() + 1 + 38);
            assert_eq!(api_key_account(&key), Ok(account), "{key}");
            assert!(hasher().is_tagged(&key));
        }
    }

    /// A key with a valid checksum but made without the pepper (anyone can compute a CRC32)
    /// is told apart offline; so is a key made under another pepper.
    #[test]
    fn made_up_keys_lack_the_tag() {
        let head = format!("{API_KEY_PREFIX}acme_{}", random_base62(RANDOM_LEN));
        let forged = format!("{head}{}", checksum(&head));
        assert_eq!(api_key_account(&forged), Ok("acme"));
        assert!(!hasher().is_tagged(&forged));
        let other = KeyHasher::new(SecretString::from("other".to_owned())).new_api_key("acme");
        assert!(!hasher().is_tagged(&other));
        assert!(!hasher().is_tagged("sk_live_"));
        assert!(!hasher().is_tagged(""));
    }

    #[test]
    fn a_wrong_checksum_or_shape_is_refused() {
        let key = new_api_key("acme");
        // Change one character of the random part: the checksum no longer matches.
        let mut bytes = key.clone().into_bytes();
        let i = API_KEY_PREFIX.len() + "acme_".len() + 3;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(api_key_account(&tampered), Err(KeyFormatError::BadChecksum));
        for bad in [
            "",
            "sk_live_",
            "sk_live_acme",
            "sk_live_acme_short",
            "sk_test_acme_0123456789abcdef0123456789abcdef012345",
            &key[..key.len() - 1],
            &format!("{key}x"),
            &key.replace("sk_live_", "pk_live_"),
            &format!("sk_live__{}", &key[API_KEY_PREFIX.len() + 5..]),
        ] {
            assert!(api_key_account(bad).is_err(), "{bad}");
        }
        // Non-base62 bytes in the body.
        let odd = format!("{}!{}", &key[..key.len() - 10], &key[key.len() - 9..]);
        assert!(api_key_account(&odd).is_err());
    }

    #[test]
    fn widget_keys_carry_their_account() {
        let key = new_widget_key("shop_eu");
        assert_eq!(widget_key_account(&key), Ok("shop_eu"));
        assert_eq!(last8(&key).len(), 8);
        assert!(widget_key_account("pk_live_acme_tooshort").is_err());
        assert!(widget_key_account(&new_api_key("acme")).is_err());
    }

    #[test]
    fn base62_is_fixed_width() {
        assert_eq!(base62(0, 6), "000000");
        assert_eq!(base62(61, 2), "0z");
        assert_eq!(base62(u64::from(u32::MAX), 6).len(), 6);
    }

    #[test]
    fn hashes_depend_on_the_pepper() {
        let a = KeyHasher::new(SecretString::from("one".to_owned()));
        let b = KeyHasher::new(SecretString::from("two".to_owned()));
        assert_eq!(a.hash("k"), a.hash("k"));
        assert_ne!(a.hash("k"), b.hash("k"));
        assert_eq!(format!("{a:?}"), "KeyHasher([REDACTED])");
    }

    #[test]
    fn last8_takes_characters_not_bytes() {
        assert_eq!(last8("sk_live_acme_0123456789"), "23456789");
        assert_eq!(last8("short"), "short");
        // Multi-byte characters: eight characters, never a cut through one.
        assert_eq!(last8("€€€€€€€€€"), "€€€€€€€€");
        assert_eq!(last8("a€€€"), "a€€€");
    }

    use proptest::prelude::*;

    /// A valid account slug (the key formats take any; the pipeline parses the slug later).
    fn account() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9_-]{0,62}"
    }

    /// Mostly characters a key may hold, so that a change keeps its shape, and any other.
    fn replacement() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => proptest::char::ranges(vec!['0'..='9', 'A'..='Z', 'a'..='z'].into()),
            1 => Just('_'),
            1 => Just('-'),
            1 => any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(2048))]

        /// Every key made for an account parses back to that account, as its own kind only.
        #[test]
        fn new_keys_parse_back_to_their_account(account in account()) {
            let key = new_api_key(&account);
            prop_assert_eq!(api_key_account(&key), Ok(account.as_str()));
            prop_assert!(widget_key_account(&key).is_err());
            let widget = new_widget_key(&account);
            prop_assert_eq!(widget_key_account(&widget), Ok(account.as_str()));
            prop_assert!(api_key_account(&widget).is_err());
            prop_assert_eq!(last8(&key).len(), 8);
        }

        /// Any change of one character of a valid API key (prefix, account, separator, random
        /// part or checksum) is refused.
        #[test]
        fn any_single_character_change_is_refused(
            account in account(),
            at in any::<prop::sample::Index>(),
            c in replacement(),
        ) {
            let key = new_api_key(&account);
            let mut chars: Vec<char> = key.chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != c);
            chars[i] = c;
            let changed: String = chars.into_iter().collect();
            prop_assert!(api_key_account(&changed).is_err(), "{} accepted", changed);
        }

        /// Arbitrary strings, with or without a key prefix, never panic.
        #[test]
        fn arbitrary_strings_never_panic(text in any::<String>(), tail in "[a-zA-Z0-9_]{0,80}") {
            for candidate in [
                text.clone(),
                format!("{API_KEY_PREFIX}{text}"),
                format!("{WIDGET_KEY_PREFIX}{text}"),
                format!("{API_KEY_PREFIX}{tail}"),
                format!("{WIDGET_KEY_PREFIX}{tail}"),
            ] {
                if let Ok(account) = api_key_account(&candidate) {
                    prop_assert!(candidate.starts_with(API_KEY_PREFIX) && !account.is_empty());
                }
                if let Ok(account) = widget_key_account(&candidate) {
                    prop_assert!(candidate.starts_with(WIDGET_KEY_PREFIX) && !account.is_empty());
                }
                prop_assert!(last8(&candidate).chars().count() <= 8);
            }
        }
    }
}
