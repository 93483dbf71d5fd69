//! Widget-key origin allowlists (SPEC §5, "Allowlist matching").
//!
//! A widget key carries a `domain_allowlist`: a list of raw entries, validated with
//! [`Entry::parse`] when the key is created or updated and stored in its normalised form (the
//! entry's `Display`). When the key is loaded (into the catalog cache, or by id for a refresh)
//! its stored entries are parsed once, with [`parse_allowlist`]; on every public widget request
//! the handler derives the calling page's origin with [`request_origin`] and asks [`is_allowed`]
//! of those parsed entries. This module is pure: no I/O, no configuration, no clock.
//!
//! # Entries
//!
//! | entry                     | matches                                                     |
//! |---------------------------|-------------------------------------------------------------|
//! | `acme.com`                | host `acme.com`, `http` or `https`, any port                |
//! | `acme.com:8443`           | host `acme.com`, `http` or `https`, port 8443 only          |
//! | `*.acme.com`              | `a.acme.com`, `a.b.acme.com`, …, any port; never `acme.com` |
//! | `localhost:*`             | host `localhost`, any port (`:*` works on any host entry)   |
//! | `https://acme.com`        | exactly the origin `https://acme.com:443`                   |
//! | `http://localhost:3000`   | exactly the origin `http://localhost:3000`                  |
//! | `https://*.acme.com`      | any subdomain of `acme.com`, `https` only, port 443 only    |
//! | `127.0.0.1`, `[::1]:3000` | IP hosts are exact hosts like any other (no wildcards)      |
//!
//! Hosts compare exactly, label by label, after normalisation: case-insensitive, a single
//! trailing dot ignored (`acme.com.` is `acme.com`), internationalised names compared in their
//! ASCII (punycode, IDNA/UTS 46) form (`bücher.example` is `xn--bcher-kva.example`), IP addresses
//! in their canonical form (`[0:0:0:0:0:0:0:1]` is `[::1]`). There is no suffix matching:
//! `acme.com` never matches `evilacme.com` or `acme.com.evil.net`, and `*.acme.com` never matches
//! `evilacme.com`.
//!
//! An entry with a scheme names one exact origin: its port defaults to the scheme's (`https` 443,
//! `http` 80) and may not be `*`. An entry without a scheme matches `http` and `https` alike.
//!
//! [`Entry::parse`] refuses, with an [`EntryError`] naming the entry:
//! - empty entries, whitespace or control characters, entries longer than 1024 bytes;
//! - schemes other than `http`/`https` (`file://`, `chrome-extension://`, …);
//! - userinfo (`user@acme.com`), paths, queries and fragments (`https://acme.com/app`). A lone
//!   trailing `/` (`https://acme.com/`, as copied from an address bar) is tolerated: it is the
//!   root, not a path;
//! - wildcards anywhere but a leading `*.` (`*`, `*acme.com`, `a.*.com`, `*.*.acme.com`), and
//!   wildcards over an IP address;
//! - wildcards over a single label (`*.com`, `*.localhost`, bare `*.`): too broad. Multi-label
//!   public suffixes (`*.co.uk`) cannot be recognised without a public-suffix list and are
//!   accepted;
//! - invalid ports (`0`, `65536`, `+80`, empty) and invalid hosts (empty labels, percent-encoding,
//!   characters the URL standard forbids, a bare IPv6 address without brackets, a label over 63
//!   or a name over 253 bytes).
//!
//! [`Entry`] implements `Display` with a canonical form (`HTTPS://Acme.COM.:443` displays as
//! `https://acme.com`) that parses back to an equal entry, should a caller want to store
//! normalised entries.
//!
//! # The request origin
//!
//! [`request_origin`] takes the raw `Origin` and `Referer` header values:
//! - `Origin` present: it must be a serialised `http`/`https` origin (`scheme://host[:port]`,
//!   a trailing `/` tolerated); anything else (a path, userinfo, whitespace, a list of origins,
//!   garbage) gives `None`.
//! - **`Origin: null` gives `None` and does not fall back to `Referer`.** Browsers send `null` for
//!   opaque origins (sandboxed iframes, `file:` pages, some redirects and privacy modes): the
//!   browser deliberately withholds the origin, so the request is refused rather than trusting
//!   a `Referer` the same browser may still send. Likewise a present but unusable `Origin` never
//!   falls back.
//! - `Origin` absent: the origin (`scheme://host:port`) of an absolute `http`/`https` `Referer`;
//!   its path, query and fragment are dropped.
//! - Neither usable: `None`, which the handler answers with 403 `origin_not_allowed`.
//!
//! Only `http` and `https` origins are usable; `file:`, `data:`, `chrome-extension:` and the like
//! give `None`.
//!
//! These headers are set by browsers, and the allowlist stops other sites from embedding a key in
//! a browser; a non-browser client can send any header it likes. The allowlist is the security
//! boundary for the public widget endpoints only in that sense (SPEC §5).
//!
//! # Matching
//!
//! [`is_allowed`] takes parsed entries: an empty allowlist allows nothing. [`parse_allowlist`]
//! turns the stored entries into them, setting aside those that do not parse (stored before
//! validation tightened, say): they never match, while the others still do. A hand-built
//! [`RequestOrigin`] has its host normalised the same way as entries before comparison (a missing
//! port means the scheme's default); one whose host cannot be normalised, or whose port is 0, is
//! not allowed.

use std::fmt;
use std::str::FromStr;

use url::Url;

/// Longest raw entry accepted, in bytes. A punycode host is at most 253 bytes; a Unicode
/// spelling of it can be longer in UTF-8, hence the slack.
const MAX_ENTRY_LEN: usize = 1024;
/// Longest normalised (ASCII) domain name, without the trailing dot.
const MAX_DOMAIN_LEN: usize = 253;
/// Longest label of a domain name.
const MAX_LABEL_LEN: usize = 63;
/// How much of an over-long entry an error message repeats.
const ERROR_EXCERPT_LEN: usize = 64;

/// A web scheme an origin or an entry may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The scheme's name, lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port an origin of this scheme has when none is given.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`, in any case.
    fn parse(raw: &str) -> Option<Self> {
        if raw.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if raw.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of an entry: one exact host, or every subdomain of a domain.
///
/// Only [`Entry::parse`] builds one, so the name is always normalised (lower case, ASCII,
/// no trailing dot; IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The exact host, or for a wildcard the domain below which subdomains match.
    name: String,
    /// `*.name`: strict subdomains of `name`, at any depth.
    subdomains: bool,
}

impl HostPattern {
    /// The normalised host, or for `*.acme.com` the domain `acme.com`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        self.subdomains
    }

    /// Whether the normalised `host` matches.
    fn matches(&self, host: &str) -> bool {
        if !self.subdomains {
            return host == self.name;
        }
        // `x.acme.com` for `*.acme.com`: at least one more label, joined by a dot, so that
        // `evilacme.com` and `acme.com` itself stay out.
        host.len() > self.name.len() + 1
            && host.ends_with(self.name.as_str())
            && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// The ports a host-only entry accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortPattern {
    /// No port given, or `:*`.
    Any,
    /// `:8443`.
    Exact(u16),
}

/// A parsed allowlist entry. See the [module documentation](self) for the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    /// No scheme (`acme.com`, `*.acme.com`, `localhost:*`, `acme.com:8443`): `http` or `https`.
    Host {
        host: HostPattern,
        port: PortPattern,
    },
    /// With a scheme (`https://acme.com`, `http://localhost:3000`): exactly that scheme and port
    /// (the scheme's default port when none was written).
    Origin {
        scheme: Scheme,
        host: HostPattern,
        port: u16,
    },
}

impl Entry {
    /// Parses and validates one raw allowlist entry.
    pub fn parse(raw: &str) -> Result<Entry, EntryError> {
        let entry = || raw.to_owned();
        if raw.is_empty() {
            return Err(EntryError::Empty);
        }
        if raw.len() > MAX_ENTRY_LEN {
            return Err(EntryError::TooLong {
                excerpt: raw.chars().take(ERROR_EXCERPT_LEN).collect(),
                len: raw.len(),
            });
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EntryError::InvalidCharacter { entry: entry() });
        }

        let (scheme, rest) = match raw.split_once("://") {
            Some((scheme, rest)) => match Scheme::parse(scheme) {
                Some(parsed) => (Some(parsed), rest),
                None => {
                    return Err(EntryError::UnsupportedScheme {
                        entry: entry(),
                        scheme: scheme.to_owned(),
                    });
                }
            },
            None => (None, raw),
        };
        if rest.contains('@') {
            return Err(EntryError::UserInfo { entry: entry() });
        }
        // A lone trailing slash is the root path, as copied from an address bar.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '\\']) {
            return Err(EntryError::Path { entry: entry() });
        }

        let (host, port) = split_host_port(rest).map_err(|reason| EntryError::InvalidHost {
            entry: entry(),
            reason: reason.to_owned(),
        })?;
        let port = match port {
            None => None,
            Some("*") => Some(PortPattern::Any),
            Some(port) => match parse_port(port) {
                Some(port) => Some(PortPattern::Exact(port)),
                None => {
                    return Err(EntryError::InvalidPort {
                        entry: entry(),
                        port: port.to_owned(),
                    });
                }
            },
        };
        let host = parse_host_pattern(host, raw)?;

        Ok(match scheme {
            Some(scheme) => Entry::Origin {
                scheme,
                host,
                port: match port {
                    None => scheme.default_port(),
                    Some(PortPattern::Exact(port)) => port,
                    Some(PortPattern::Any) => {
                        return Err(EntryError::PortWildcardWithScheme { entry: entry() });
                    }
                },
            },
            None => Entry::Host {
                host,
                port: port.unwrap_or(PortPattern::Any),
            },
        })
    }

    /// The entry's host pattern.
    pub fn host(&self) -> &HostPattern {
        match self {
            Self::Host { host, .. } | Self::Origin { host, .. } => host,
        }
    }

    /// Whether this entry allows `origin`. An origin that cannot be normalised never matches.
    pub fn matches(&self, origin: &RequestOrigin) -> bool {
        NormalOrigin::of(origin).is_some_and(|origin| self.matches_normal(&origin))
    }

    fn matches_normal(&self, origin: &NormalOrigin) -> bool {
        match self {
            Self::Host { host, port } => {
                host.matches(&origin.host)
                    && match port {
                        PortPattern::Any => true,
                        PortPattern::Exact(port) => *port == origin.port,
                    }
            }
            Self::Origin { scheme, host, port } => {
                *scheme == origin.scheme && *port == origin.port && host.matches(&origin.host)
            }
        }
    }
}

impl FromStr for Entry {
    type Err = EntryError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

/// The canonical spelling; it parses back to an equal entry.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { host, port } => {
                write!(f, "{host}")?;
                match port {
                    PortPattern::Any => Ok(()),
                    PortPattern::Exact(port) => write!(f, ":{port}"),
                }
            }
            Self::Origin { scheme, host, port } => {
                write!(f, "{scheme}://{host}")?;
                if *port == scheme.default_port() {
                    Ok(())
                } else {
                    write!(f, ":{port}")
                }
            }
        }
    }
}

/// Why an allowlist entry was refused. Every message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("allowlist entry is empty")]
    Empty,
    #[error("allowlist entry {excerpt:?}… is too long ({len} bytes, at most {MAX_ENTRY_LEN})")]
    TooLong { excerpt: String, len: usize },
    #[error("allowlist entry {entry:?} contains whitespace or a control character")]
    InvalidCharacter { entry: String },
    #[error("allowlist entry {entry:?}: scheme {scheme:?} is not supported (only http and https)")]
    UnsupportedScheme { entry: String, scheme: String },
    #[error("allowlist entry {entry:?} must not contain a user name or password")]
    UserInfo { entry: String },
    #[error(
        "allowlist entry {entry:?} must be a host or an origin, without path, query or fragment"
    )]
    Path { entry: String },
    #[error(
        "allowlist entry {entry:?}: invalid port {port:?} (expected 1-65535, or `*` without a \
         scheme)"
    )]
    InvalidPort { entry: String, port: String },
    #[error(
        "allowlist entry {entry:?}: an entry with a scheme names one exact origin and cannot use \
         port `*` (write the host without a scheme, e.g. `localhost:*`)"
    )]
    PortWildcardWithScheme { entry: String },
    #[error("allowlist entry {entry:?}: invalid host ({reason})")]
    InvalidHost { entry: String, reason: String },
    #[error(
        "allowlist entry {entry:?}: a wildcard is only allowed as a leading `*.` followed by a \
         domain name (e.g. `*.acme.com`)"
    )]
    InvalidWildcard { entry: String },
    #[error(
        "allowlist entry {entry:?}: wildcard is too broad; `*.` must be followed by a domain of at \
         least two labels (e.g. `*.acme.com`)"
    )]
    WildcardTooBroad { entry: String },
}

impl EntryError {
    /// The refused entry as written (a prefix of it if it was too long; empty for an empty one).
    pub fn entry(&self) -> &str {
        match self {
            Self::Empty => "",
            Self::TooLong { excerpt, .. } => excerpt,
            Self::InvalidCharacter { entry }
            | Self::UnsupportedScheme { entry, .. }
            | Self::UserInfo { entry }
            | Self::Path { entry }
            | Self::InvalidPort { entry, .. }
            | Self::PortWildcardWithScheme { entry }
            | Self::InvalidHost { entry, .. }
            | Self::InvalidWildcard { entry }
            | Self::WildcardTooBroad { entry } => entry,
        }
    }
}

/// The origin of a widget request, from [`request_origin`].
///
/// Values built by [`request_origin`] are normalised: `host` is lower case ASCII (punycode)
/// without a trailing dot (IPv4 dotted, IPv6 in brackets: `[::1]`), and `port` is always `Some`
/// (the explicit port, else the scheme's default). Hand-built values have their host normalised
/// again when matched; a `None` port means the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestOrigin {
    pub scheme: Scheme,
    pub host: String,
    pub port: Option<u16>,
}

/// `scheme://host[:port]`, the port omitted when it is the scheme's default: the form browsers
/// send in `Origin`. For logs.
impl fmt::Display for RequestOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) if port != self.scheme.default_port() => write!(f, ":{port}"),
            _ => Ok(()),
        }
    }
}

/// The request's origin: from the `Origin` header, else the origin of `Referer`; `None` if
/// neither is usable.
///
/// Takes the raw header values. A present `Origin` decides alone: `Origin: null` (an opaque
/// origin) or an unusable value gives `None` without looking at `Referer`. See the
/// [module documentation](self).
pub fn request_origin(origin: Option<&str>, referer: Option<&str>) -> Option<RequestOrigin> {
    match origin {
        Some(origin) => parse_origin_header(origin),
        None => referer.and_then(parse_referer),
    }
}

/// Parses a key's stored allowlist, once, when the key is loaded: the entries that parse, in
/// order, and the errors of those that do not (they could never match, so they are left out).
pub fn parse_allowlist<S: AsRef<str>>(stored: &[S]) -> (Vec<Entry>, Vec<EntryError>) {
    let (mut entries, mut refused) = (Vec::new(), Vec::new());
    for raw in stored {
        match Entry::parse(raw.as_ref()) {
            Ok(entry) => entries.push(entry),
            Err(error) => refused.push(error),
        }
    }
    (entries, refused)
}

/// Whether `origin` is allowed by `allowlist` (parsed with [`parse_allowlist`]). An empty
/// allowlist allows nothing.
pub fn is_allowed(allowlist: &[Entry], origin: &RequestOrigin) -> bool {
    let Some(origin) = NormalOrigin::of(origin) else {
        return false;
    };
    allowlist.iter().any(|entry| entry.matches_normal(&origin))
}

/// An origin ready for comparison.
struct NormalOrigin {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl NormalOrigin {
    fn of(origin: &RequestOrigin) -> Option<Self> {
        let scheme = origin.scheme;
        let host = match normalize_host(&origin.host) {
            Ok(NormalHost::Domain(host) | NormalHost::Ip(host)) => host,
            Err(_) => return None,
        };
        let port = origin.port.unwrap_or(scheme.default_port());
        (port != 0).then_some(Self { scheme, host, port })
    }
}

/// A serialised origin (`scheme://host[:port]`) from the `Origin` header.
fn parse_origin_header(value: &str) -> Option<RequestOrigin> {
    let value = trim_ows(value);
    // `null` is the serialisation of an opaque origin: present, but withheld on purpose.
    if value.eq_ignore_ascii_case("null") || has_invalid_chars(value) {
        return None;
    }
    let (scheme, rest) = value.split_once("://")?;
    Scheme::parse(scheme)?;
    // An origin has no userinfo, path, query or fragment; a lone trailing slash is tolerated.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['@', '/', '?', '#', '\\']) {
        return None;
    }
    origin_of_url(&Url::parse(value).ok()?)
}

/// The origin of an absolute `http`/`https` URL in the `Referer` header.
fn parse_referer(value: &str) -> Option<RequestOrigin> {
    let value = trim_ows(value);
    if has_invalid_chars(value) {
        return None;
    }
    origin_of_url(&Url::parse(value).ok()?)
}

fn origin_of_url(url: &Url) -> Option<RequestOrigin> {
    let scheme = Scheme::parse(url.scheme())?;
    let host = match normalize_host(url.host_str()?) {
        Ok(NormalHost::Domain(host) | NormalHost::Ip(host)) => host,
        Err(_) => return None,
    };
    let port = url.port_or_known_default()?;
    (port != 0).then_some(RequestOrigin {
        scheme,
        host,
        port: Some(port),
    })
}

/// Optional whitespace around a header value (RFC 9110 §5.5).
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// The URL parser silently drops tabs and newlines inside a URL; such a header is not a
/// well-formed origin or URL, so refuse it rather than guess.
fn has_invalid_chars(value: &str) -> bool {
    value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `1`–`65535`, ASCII digits only (no sign).
fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok().filter(|port| *port != 0)
}

/// Splits `host[:port]` (`[v6]` or `[v6]:port` for IPv6).
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), &'static str> {
    if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or("unterminated IPv6 address, missing `]`")?;
        let (host, after) = authority.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("unexpected characters after the IPv6 address"),
            },
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((_, port)) if port.contains(':') => {
            Err("IPv6 addresses must be written in brackets, e.g. `[::1]`")
        }
        Some((host, port)) => Ok((host, Some(port))),
    }
}

/// The host part of an entry, with at most a leading `*.`.
fn parse_host_pattern(host: &str, raw: &str) -> Result<HostPattern, EntryError> {
    let entry = || raw.to_owned();
    let (name, subdomains) = match host.strip_prefix("*.") {
        Some(domain) => (domain, true),
        None => (host, false),
    };
    if name.contains('*') {
        return Err(EntryError::InvalidWildcard { entry: entry() });
    }
    if subdomains && matches!(name, "" | ".") {
        return Err(EntryError::WildcardTooBroad { entry: entry() });
    }
    let name = match normalize_host(name) {
        Ok(NormalHost::Domain(name)) => {
            if subdomains && !name.contains('.') {
                return Err(EntryError::WildcardTooBroad { entry: entry() });
            }
            name
        }
        Ok(NormalHost::Ip(name)) => {
            if subdomains {
                return Err(EntryError::InvalidWildcard { entry: entry() });
            }
            name
        }
        // A wildcard character smuggled in through IDNA mapping (`＊.acme.com`).
        Err(HostError::Wildcard) => return Err(EntryError::InvalidWildcard { entry: entry() }),
        Err(HostError::Invalid(reason)) => {
            return Err(EntryError::InvalidHost {
                entry: entry(),
                reason,
            });
        }
    };
    Ok(HostPattern { name, subdomains })
}

/// A host in comparable form.
enum NormalHost {
    /// Lower case ASCII (punycode), no trailing dot.
    Domain(String),
    /// Dotted IPv4, or compressed IPv6 in brackets.
    Ip(String),
}

enum HostError {
    /// The name contains `*` after normalisation.
    Wildcard,
    Invalid(String),
}

/// Normalises a host the way the WHATWG URL parser does (IDNA/UTS 46 to ASCII lower case,
/// IPv4 and IPv6 to canonical form), then drops one trailing dot and checks the DNS shape.
/// Shared by entries and origins so both sides compare the same spelling.
fn normalize_host(raw: &str) -> Result<NormalHost, HostError> {
    let invalid = |reason: &str| Err(HostError::Invalid(reason.to_owned()));
    if raw.is_empty() {
        return invalid("empty host");
    }
    if raw.contains('%') {
        return invalid("percent-encoding is not allowed");
    }
    match url::Host::parse(raw) {
        Err(error) => Err(HostError::Invalid(error.to_string())),
        Ok(url::Host::Ipv4(address)) => Ok(NormalHost::Ip(address.to_string())),
        Ok(url::Host::Ipv6(address)) => Ok(NormalHost::Ip(format!("[{address}]"))),
        Ok(url::Host::Domain(domain)) => {
            let name = domain.strip_suffix('.').unwrap_or(&domain);
            if name.contains('*') {
                return Err(HostError::Wildcard);
            }
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return invalid("empty label");
            }
            if name.split('.').any(|label| label.len() > MAX_LABEL_LEN) {
                return invalid("a label is longer than 63 bytes");
            }
            if name.len() > MAX_DOMAIN_LEN {
                return invalid("name is longer than 253 bytes");
            }
            Ok(NormalHost::Domain(name.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(value: &str) -> RequestOrigin {
        request_origin(Some(value), None)
            .unwrap_or_else(|| panic!("{value:?} should be a usable origin"))
    }

    /// The allowlist a key with these stored entries is loaded with.
    fn list(entries: &[&str]) -> Vec<Entry> {
        parse_allowlist(entries).0
    }

    /// (allowlist, Origin header, allowed?)
    const MATCHES: &[(&[&str], &str, bool)] = &[
        // Exact hosts: any scheme, any port.
        (&["acme.com"], "https://acme.com", true),
        (&["acme.com"], "http://acme.com", true),
        (&["acme.com"], "https://acme.com:8443", true),
        (&["acme.com"], "http://acme.com:3000", true),
        (&["acme.com"], "https://www.acme.com", false),
        (&["acme.com"], "https://acme.org", false),
        (&["www.acme.com"], "https://www.acme.com", true),
        (&["www.acme.com"], "https://acme.com", false),
        // No suffix or prefix tricks.
        (&["acme.com"], "https://evilacme.com", false),
        (&["acme.com"], "https://acme.com.evil.net", false),
        (&["acme.com"], "https://acme.co", false),
        (&["acme.com"], "https://acme.comm", false),
        (&["*.acme.com"], "https://evilacme.com", false),
        (&["*.acme.com"], "https://a.evilacme.com", false),
        (&["*.acme.com"], "https://acme.com.evil.net", false),
        (&["*.acme.com"], "https://a.acme.com.evil.net", false),
        // Wildcards: subdomains at any depth, never the apex.
        (&["*.acme.com"], "https://a.acme.com", true),
        (&["*.acme.com"], "http://a.acme.com:8080", true),
        (&["*.acme.com"], "https://a.b.acme.com", true),
        (&["*.acme.com"], "https://x.y.z.acme.com", true),
        (&["*.acme.com"], "https://acme.com", false),
        (&["*.acme.com"], "https://acme.com.", false),
        (&["*.a.acme.com"], "https://b.a.acme.com", true),
        (&["*.a.acme.com"], "https://b.acme.com", false),
        (&["*.a.acme.com"], "https://a.acme.com", false),
        (&["acme.com", "*.acme.com"], "https://acme.com", true),
        (&["acme.com", "*.acme.com"], "https://a.acme.com", true),
        // localhost.
        (&["localhost:*"], "http://localhost", true),
        (&["localhost:*"], "http://localhost:3000", true),
        (&["localhost:*"], "http://localhost:5173", true),
        (&["localhost:*"], "https://localhost:8443", true),
        (&["localhost:*"], "http://localhost:65535", true),
        (&["localhost:*"], "http://localhost.evil.com", false),
        (&["localhost:*"], "http://localhost.evil.com:3000", false),
        (&["localhost:*"], "http://evil-localhost:3000", false),
        (&["localhost:*"], "http://a.localhost:3000", false),
        (&["localhost:*"], "http://127.0.0.1:3000", false),
        (&["localhost:*"], "http://[::1]:3000", false),
        (&["localhost"], "http://localhost:4000", true),
        (&["localhost:3000"], "http://localhost:3000", true),
        (&["localhost:3000"], "http://localhost:3001", false),
        // Scheme-qualified entries: exactly that origin.
        (&["https://acme.com"], "https://acme.com", true),
        (&["https://acme.com"], "https://acme.com:443", true),
        (&["https://acme.com"], "http://acme.com", false),
        (&["https://acme.com"], "http://acme.com:443", false),
        (&["https://acme.com"], "https://acme.com:8443", false),
        (&["https://acme.com"], "https://www.acme.com", false),
        (&["https://acme.com:443"], "https://acme.com", true),
        (&["http://acme.com"], "http://acme.com:80", true),
        (&["http://acme.com"], "https://acme.com", false),
        (&["http://acme.com"], "http://acme.com:8080", false),
        (&["http://localhost:3000"], "http://localhost:3000", true),
        (&["http://localhost:3000"], "http://localhost:3001", false),
        (&["http://localhost:3000"], "https://localhost:3000", false),
        (&["http://localhost:3000"], "http://localhost", false),
        (&["https://acme.com:8443"], "https://acme.com:8443", true),
        (&["https://acme.com:8443"], "https://acme.com", false),
        (&["https://acme.com/"], "https://acme.com", true),
        (&["https://*.acme.com"], "https://a.acme.com", true),
        (&["https://*.acme.com"], "https://a.b.acme.com", true),
        (&["https://*.acme.com"], "http://a.acme.com", false),
        (&["https://*.acme.com"], "https://a.acme.com:8443", false),
        (&["https://*.acme.com"], "https://acme.com", false),
        // Host with a port: that port, any scheme.
        (&["acme.com:8443"], "https://acme.com:8443", true),
        (&["acme.com:8443"], "http://acme.com:8443", true),
        (&["acme.com:8443"], "https://acme.com", false),
        (&["acme.com:8443"], "https://acme.com:8444", false),
        (&["acme.com:443"], "https://acme.com", true),
        (&["acme.com:443"], "http://acme.com", false),
        (&["*.acme.com:8443"], "https://a.acme.com:8443", true),
        (&["*.acme.com:8443"], "https://a.acme.com", false),
        // Case-insensitive hosts and schemes.
        (&["ACME.com"], "https://acme.com", true),
        (&["acme.com"], "https://ACME.COM", true),
        (&["*.AcMe.CoM"], "https://WWW.acme.com", true),
        (&["HTTPS://ACME.COM"], "https://acme.com", true),
        (&["https://acme.com"], "HTTPS://Acme.Com", true),
        (&["LOCALHOST:*"], "http://LocalHost:3000", true),
        // A trailing dot on either side.
        (&["acme.com."], "https://acme.com", true),
        (&["acme.com"], "https://acme.com.", true),
        (&["acme.com."], "https://acme.com.:8443", true),
        (&["*.acme.com."], "https://a.acme.com", true),
        (&["*.acme.com"], "https://a.acme.com.", true),
        (&["https://acme.com."], "https://acme.com.", true),
        (&["localhost.:*"], "http://localhost:3000", true),
        // IDNA: Unicode and punycode spellings are the same host.
        (&["bücher.example"], "https://xn--bcher-kva.example", true),
        (&["xn--bcher-kva.example"], "https://bücher.example", true),
        (&["BÜCHER.example"], "https://xn--bcher-kva.example", true),
        (
            &["*.bücher.example"],
            "https://shop.xn--bcher-kva.example",
            true,
        ),
        (
            &["https://bücher.example"],
            "https://xn--bcher-kva.example",
            true,
        ),
        (&["bücher.example"], "https://bucher.example", false),
        (
            &["bücher.example"],
            "https://xn--bcher-kva.example.evil.net",
            false,
        ),
        // IP addresses are exact hosts.
        (&["127.0.0.1"], "http://127.0.0.1", true),
        (&["127.0.0.1"], "http://127.0.0.1:8080", true),
        (&["127.0.0.1:*"], "http://127.0.0.1:8080", true),
        (&["127.0.0.1:8080"], "http://127.0.0.1:8081", false),
        (&["127.0.0.1"], "http://127.0.0.2", false),
        (&["127.0.0.1"], "http://localhost", false),
        (&["127.0.0.1"], "http://127.0.0.1.evil.net", false),
        (&["http://127.0.0.1:8080"], "http://127.0.0.1:8080", true),
        (&["10.0.0.1"], "http://10.0.0.1", true),
        (&["10.0.0.1"], "http://110.0.0.1", false),
        (&["[::1]"], "http://[::1]", true),
        (&["[::1]"], "http://[::1]:3000", true),
        (&["[::1]:3000"], "http://[::1]:3000", true),
        (&["[::1]:3000"], "http://[::1]:3001", false),
        (&["http://[::1]:3000"], "http://[::1]:3000", true),
        (&["http://[::1]:3000"], "https://[::1]:3000", false),
        (&["[0:0:0:0:0:0:0:1]"], "http://[::1]", true),
        (&["[::1]"], "http://[0:0:0:0:0:0:0:1]:3000", true),
        (&["[::1]"], "http://[::2]", false),
        (&["[::1]"], "http://127.0.0.1", false),
        (&["[2001:db8::1]"], "https://[2001:DB8::1]", true),
        // Invalid entries never match, but do not spoil the valid ones.
        (&["*"], "https://acme.com", false),
        (&["*.com"], "https://acme.com", false),
        (&["https://acme.com/app"], "https://acme.com", false),
        (&["acme.com "], "https://acme.com", false),
        (&["*", "acme.com"], "https://acme.com", true),
        (
            &["", "https://acme.com/app", "acme.com"],
            "https://acme.com",
            true,
        ),
        // Empty allowlist.
        (&[], "https://acme.com", false),
        (&[], "http://localhost:3000", false),
    ];

    #[test]
    fn allowlist_matching_table() {
        let mut failures = Vec::new();
        for (entries, header, expected) in MATCHES {
            let allowed = is_allowed(&list(entries), &origin(header));
            if allowed != *expected {
                failures.push(format!(
                    "{entries:?} vs Origin {header:?}: got {allowed}, expected {expected}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn entry_matches_agrees_with_is_allowed() {
        for (entries, header, expected) in MATCHES {
            // Single valid entries only; `is_allowed` over several is the table above.
            let [entry] = entries else { continue };
            let Ok(parsed) = Entry::parse(entry) else {
                continue;
            };
            assert_eq!(
                parsed.matches(&origin(header)),
                *expected,
                "{entry:?} vs {header:?}"
            );
        }
    }

    fn ro(scheme: Scheme, host: &str, port: u16) -> Option<RequestOrigin> {
        Some(RequestOrigin {
            scheme,
            host: host.to_owned(),
            port: Some(port),
        })
    }

    #[test]
    fn request_origin_table() {
        // (Origin, Referer, expected)
        let cases: &[(Option<&str>, Option<&str>, Option<RequestOrigin>)] = &[
            // Origin header.
            (
                Some("https://acme.com"),
                None,
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                Some("http://acme.com"),
                None,
                ro(Scheme::Http, "acme.com", 80),
            ),
            (
                Some("https://acme.com:443"),
                None,
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                Some("https://acme.com:8443"),
                None,
                ro(Scheme::Https, "acme.com", 8443),
            ),
            (
                Some("HTTPS://WWW.Acme.COM"),
                None,
                ro(Scheme::Https, "www.acme.com", 443),
            ),
            (
                Some("https://acme.com."),
                None,
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                Some("https://acme.com/"),
                None,
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                Some(" https://acme.com\t"),
                None,
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                Some("https://bücher.example"),
                None,
                ro(Scheme::Https, "xn--bcher-kva.example", 443),
            ),
            (
                Some("http://127.0.0.1:3000"),
                None,
                ro(Scheme::Http, "127.0.0.1", 3000),
            ),
            (
                Some("http://[::1]:3000"),
                None,
                ro(Scheme::Http, "[::1]", 3000),
            ),
            (Some("http://[0:0::1]"), None, ro(Scheme::Http, "[::1]", 80)),
            (
                Some("http://localhost:5173"),
                None,
                ro(Scheme::Http, "localhost", 5173),
            ),
            // The Origin header wins over Referer.
            (
                Some("https://acme.com"),
                Some("https://other.example/page"),
                ro(Scheme::Https, "acme.com", 443),
            ),
            // Opaque origin: refused, no fallback to Referer.
            (Some("null"), None, None),
            (Some("null"), Some("https://acme.com/page"), None),
            (Some("NULL"), Some("https://acme.com/page"), None),
            // Present but unusable Origin: refused, no fallback either.
            (Some(""), Some("https://acme.com/"), None),
            (Some("garbage"), Some("https://acme.com/"), None),
            (Some("acme.com"), None, None),
            (Some("https://"), None, None),
            (Some("https://acme.com/path"), None, None),
            (Some("https://acme.com?x=1"), None, None),
            (Some("https://acme.com#x"), None, None),
            (Some("https://user@acme.com"), None, None),
            (Some("https://acme.com:99999"), None, None),
            (Some("https://acme.com:0"), None, None),
            (Some("https://ac me.com"), None, None),
            (Some("https://ac\tme.com"), None, None),
            (Some("https://a.com https://b.com"), None, None),
            (Some("https://a..com"), None, None),
            (Some("https:acme.com"), None, None),
            (Some("https://*.acme.com"), None, None),
            (Some("file://"), None, None),
            (Some("file:///etc/passwd"), None, None),
            (Some("chrome-extension://abcdefghijklmnop"), None, None),
            (Some("moz-extension://1234"), None, None),
            (Some("data:text/html,hi"), None, None),
            (Some("ftp://acme.com"), None, None),
            // Referer fallback, only when Origin is absent.
            (
                None,
                Some("https://acme.com/page?x=1#frag"),
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                None,
                Some("https://acme.com:8443/a/b?q=2"),
                ro(Scheme::Https, "acme.com", 8443),
            ),
            (
                None,
                Some("http://Shop.Acme.com/"),
                ro(Scheme::Http, "shop.acme.com", 80),
            ),
            (
                None,
                Some("https://acme.com"),
                ro(Scheme::Https, "acme.com", 443),
            ),
            (
                None,
                Some("http://localhost:3000/app/index.html"),
                ro(Scheme::Http, "localhost", 3000),
            ),
            (
                None,
                Some("http://[::1]:8080/x"),
                ro(Scheme::Http, "[::1]", 8080),
            ),
            (
                None,
                Some("https://user:pw@acme.com/x"),
                ro(Scheme::Https, "acme.com", 443),
            ),
            (None, Some("/relative/path"), None),
            (None, Some("acme.com/page"), None),
            (None, Some("file:///home/me/index.html"), None),
            (None, Some("chrome-extension://abc/page.html"), None),
            (None, Some("about:blank"), None),
            (None, Some("null"), None),
            (None, Some(""), None),
            (None, Some("https://ac\nme.com/"), None),
            // Neither header.
            (None, None, None),
        ];
        for (origin, referer, expected) in cases {
            assert_eq!(
                &request_origin(*origin, *referer),
                expected,
                "Origin {origin:?}, Referer {referer:?}"
            );
        }
    }

    #[test]
    fn referer_fallback_is_matched_like_an_origin() {
        let allowlist = list(&["https://acme.com"]);
        let from_referer = request_origin(None, Some("https://acme.com/checkout?step=2#top"))
            .expect("usable referer");
        assert!(is_allowed(&allowlist, &from_referer));
        let other = request_origin(None, Some("https://evilacme.com/acme.com")).unwrap();
        assert!(!is_allowed(&allowlist, &other));
    }

    #[test]
    fn parse_allowlist_keeps_valid_entries_and_reports_the_rest() {
        let stored = [
            "*.com",
            "Acme.COM",
            "https://acme.com/app",
            "*.shop.example",
        ];
        let (entries, errors) = parse_allowlist(&stored);
        assert_eq!(
            entries,
            [
                Entry::parse("acme.com").unwrap(),
                Entry::parse("*.shop.example").unwrap()
            ]
        );
        let refused: Vec<_> = errors.iter().map(EntryError::entry).collect();
        assert_eq!(refused, ["*.com", "https://acme.com/app"]);
    }

    #[test]
    fn hand_built_origins_are_normalised() {
        let allowlist = list(&["https://bücher.example", "acme.com:8443", "[::1]"]);
        let cases = [
            (Scheme::Https, "XN--BCHER-KVA.EXAMPLE.", None, true),
            (Scheme::Https, "bücher.example", Some(443), true),
            (Scheme::Https, "bücher.example", Some(444), false),
            (Scheme::Http, "bücher.example", None, false),
            (Scheme::Https, "ACME.com", Some(8443), true),
            (Scheme::Https, "acme.com", None, false),
            (Scheme::Http, "[0::1]", None, true),
            (Scheme::Https, "", Some(8443), false),
            (Scheme::Https, "acme.com", Some(0), false),
            (Scheme::Https, "*.acme.com", Some(8443), false),
            (Scheme::Https, "acme.com/x", Some(8443), false),
        ];
        for (scheme, host, port, expected) in cases {
            let origin = RequestOrigin {
                scheme,
                host: host.to_owned(),
                port,
            };
            assert_eq!(is_allowed(&allowlist, &origin), expected, "{origin:?}");
        }
    }

    #[test]
    fn valid_entries_parse_to_canonical_form() {
        let cases = [
            ("acme.com", "acme.com"),
            ("ACME.COM.", "acme.com"),
            ("*.acme.com", "*.acme.com"),
            ("*.Acme.Com.", "*.acme.com"),
            ("localhost:*", "localhost"),
            ("localhost", "localhost"),
            ("acme.com:8443", "acme.com:8443"),
            ("acme.com:08443", "acme.com:8443"),
            ("https://acme.com", "https://acme.com"),
            ("HTTPS://Acme.COM.:443", "https://acme.com"),
            ("https://acme.com/", "https://acme.com"),
            ("http://acme.com:80", "http://acme.com"),
            ("http://acme.com:443", "http://acme.com:443"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("https://*.acme.com", "https://*.acme.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("*.bücher.example", "*.xn--bcher-kva.example"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:*", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[0:0:0:0:0:0:0:1]:3000", "[::1]:3000"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("*.co.uk", "*.co.uk"),
            ("intranet", "intranet"),
        ];
        for (raw, canonical) in cases {
            let entry = Entry::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(entry.to_string(), canonical, "{raw:?}");
            assert_eq!(
                Entry::parse(canonical).as_ref(),
                Ok(&entry),
                "{raw:?} round trip"
            );
            assert_eq!(raw.parse::<Entry>().as_ref(), Ok(&entry));
        }
    }

    #[test]
    fn entry_structure() {
        assert_eq!(
            Entry::parse("*.acme.com:8443").unwrap(),
            Entry::Host {
                host: HostPattern {
                    name: "acme.com".into(),
                    subdomains: true
                },
                port: PortPattern::Exact(8443),
            }
        );
        let entry = Entry::parse("https://acme.com").unwrap();
        assert!(matches!(
            entry,
            Entry::Origin {
                scheme: Scheme::Https,
                port: 443,
                ..
            }
        ));
        assert_eq!(entry.host().name(), "acme.com");
        assert!(!entry.host().is_wildcard());
        assert!(Entry::parse("*.acme.com").unwrap().host().is_wildcard());
    }

    #[test]
    fn invalid_entries_are_refused() {
        use EntryError as E;
        type Check = fn(&EntryError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            (" acme.com", |e| matches!(e, E::InvalidCharacter { .. })),
            ("acme.com ", |e| matches!(e, E::InvalidCharacter { .. })),
            ("ac me.com", |e| matches!(e, E::InvalidCharacter { .. })),
            ("acme.com\n", |e| matches!(e, E::InvalidCharacter { .. })),
            ("acme\u{0}.com", |e| matches!(e, E::InvalidCharacter { .. })),
            ("acme.com\u{a0}", |e| {
                matches!(e, E::InvalidCharacter { .. })
            }),
            (
                "ftp://acme.com",
                |e| matches!(e, E::UnsupportedScheme { scheme, .. } if scheme == "ftp"),
            ),
            ("file:///index.html", |e| {
                matches!(e, E::UnsupportedScheme { .. })
            }),
            ("chrome-extension://abc", |e| {
                matches!(e, E::UnsupportedScheme { .. })
            }),
            ("ws://acme.com", |e| {
                matches!(e, E::UnsupportedScheme { .. })
            }),
            ("://acme.com", |e| matches!(e, E::UnsupportedScheme { .. })),
            ("https://user@acme.com", |e| matches!(e, E::UserInfo { .. })),
            ("user:pw@acme.com", |e| matches!(e, E::UserInfo { .. })),
            ("https://acme.com/path", |e| matches!(e, E::Path { .. })),
            ("https://acme.com//", |e| matches!(e, E::Path { .. })),
            ("acme.com/path", |e| matches!(e, E::Path { .. })),
            ("https://acme.com?x=1", |e| matches!(e, E::Path { .. })),
            ("https://acme.com/?x=1", |e| matches!(e, E::Path { .. })),
            ("acme.com#frag", |e| matches!(e, E::Path { .. })),
            ("acme.com\\x", |e| matches!(e, E::Path { .. })),
            ("data:text/html,hi", |e| matches!(e, E::Path { .. })),
            ("acme.com:", |e| matches!(e, E::InvalidPort { .. })),
            ("acme.com:0", |e| matches!(e, E::InvalidPort { .. })),
            ("acme.com:65536", |e| matches!(e, E::InvalidPort { .. })),
            ("acme.com:100000", |e| matches!(e, E::InvalidPort { .. })),
            ("acme.com:+80", |e| matches!(e, E::InvalidPort { .. })),
            ("acme.com:-1", |e| matches!(e, E::InvalidPort { .. })),
            (
                "acme.com:http",
                |e| matches!(e, E::InvalidPort { port, .. } if port == "http"),
            ),
            ("acme.com:8*", |e| matches!(e, E::InvalidPort { .. })),
            ("https://acme.com:abc", |e| {
                matches!(e, E::InvalidPort { .. })
            }),
            ("mailto:someone", |e| matches!(e, E::InvalidPort { .. })),
            ("http://localhost:*", |e| {
                matches!(e, E::PortWildcardWithScheme { .. })
            }),
            ("*", |e| matches!(e, E::InvalidWildcard { .. })),
            ("*:*", |e| matches!(e, E::InvalidWildcard { .. })),
            ("*acme.com", |e| matches!(e, E::InvalidWildcard { .. })),
            ("a.*.com", |e| matches!(e, E::InvalidWildcard { .. })),
            ("acme.*", |e| matches!(e, E::InvalidWildcard { .. })),
            ("*.*.acme.com", |e| matches!(e, E::InvalidWildcard { .. })),
            ("**.acme.com", |e| matches!(e, E::InvalidWildcard { .. })),
            ("a*.acme.com", |e| matches!(e, E::InvalidWildcard { .. })),
            ("https://*", |e| matches!(e, E::InvalidWildcard { .. })),
            ("*.127.0.0.1", |e| matches!(e, E::InvalidWildcard { .. })),
            ("*.[::1]", |e| matches!(e, E::InvalidHost { .. })),
            ("\u{ff0a}.acme.com", |e| {
                matches!(e, E::InvalidWildcard { .. })
            }),
            ("*.", |e| matches!(e, E::WildcardTooBroad { .. })),
            ("*..", |e| matches!(e, E::WildcardTooBroad { .. })),
            ("*.com", |e| matches!(e, E::WildcardTooBroad { .. })),
            ("*.com.", |e| matches!(e, E::WildcardTooBroad { .. })),
            ("*.localhost", |e| matches!(e, E::WildcardTooBroad { .. })),
            ("https://*.com", |e| matches!(e, E::WildcardTooBroad { .. })),
            (".", |e| matches!(e, E::InvalidHost { .. })),
            (".acme.com", |e| matches!(e, E::InvalidHost { .. })),
            ("acme..com", |e| matches!(e, E::InvalidHost { .. })),
            ("acme.com..", |e| matches!(e, E::InvalidHost { .. })),
            ("https://", |e| matches!(e, E::InvalidHost { .. })),
            (":8080", |e| matches!(e, E::InvalidHost { .. })),
            ("acme%2ecom", |e| matches!(e, E::InvalidHost { .. })),
            ("ac<me.com", |e| matches!(e, E::InvalidHost { .. })),
            ("::1", |e| matches!(e, E::InvalidHost { .. })),
            ("[::1", |e| matches!(e, E::InvalidHost { .. })),
            ("[::1]x", |e| matches!(e, E::InvalidHost { .. })),
            ("[nope]", |e| matches!(e, E::InvalidHost { .. })),
            ("999.1.1.1", |e| matches!(e, E::InvalidHost { .. })),
            ("xn--zz--.example", |e| matches!(e, E::InvalidHost { .. })),
        ];
        for (raw, check) in cases {
            match Entry::parse(raw) {
                Ok(entry) => panic!("{raw:?} should be refused, parsed as {entry:?}"),
                Err(error) => {
                    assert!(check(&error), "{raw:?}: unexpected error {error:?}");
                    assert_eq!(error.entry(), *raw);
                    let message = error.to_string();
                    if !raw.is_empty() {
                        assert!(
                            message.contains(&format!("{raw:?}")),
                            "{raw:?}: message {message:?} should name the entry"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn over_long_entries_are_refused_with_an_excerpt() {
        let long_host = format!("{}.com", "a.".repeat(600));
        let error = Entry::parse(&long_host).unwrap_err();
        assert!(
            matches!(error, EntryError::TooLong { len: 1204, .. }),
            "{error:?}"
        );
        assert_eq!(error.entry().chars().count(), ERROR_EXCERPT_LEN);
        assert!(error.to_string().len() < 200);

        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            Entry::parse(&long_label),
            Err(EntryError::InvalidHost { .. })
        ));
        assert!(Entry::parse(&format!("{}.com", "a".repeat(63))).is_ok());

        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(long_name.len() > MAX_DOMAIN_LEN);
        assert!(matches!(
            Entry::parse(&long_name),
            Err(EntryError::InvalidHost { .. })
        ));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            Entry::parse("*.com").unwrap_err().to_string(),
            "allowlist entry \"*.com\": wildcard is too broad; `*.` must be followed by a domain \
             of at least two labels (e.g. `*.acme.com`)"
        );
        assert_eq!(
            Entry::parse("https://acme.com/path")
                .unwrap_err()
                .to_string(),
            "allowlist entry \"https://acme.com/path\" must be a host or an origin, without path, \
             query or fragment"
        );
        assert_eq!(
            Entry::parse("").unwrap_err().to_string(),
            "allowlist entry is empty"
        );
    }

    #[test]
    fn request_origin_display() {
        assert_eq!(
            origin("https://acme.com:443").to_string(),
            "https://acme.com"
        );
        assert_eq!(
            origin("http://localhost:3000").to_string(),
            "http://localhost:3000"
        );
        assert_eq!(origin("http://[::1]:8080").to_string(), "http://[::1]:8080");
    }

    /// Property tests: entries and origins built from parts, checked against the documented
    /// rule written out independently (a model), and arbitrary text thrown at the parsers.
    mod properties {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::prelude::*;

        use super::*;

        /// A host as the rule sees it: lower-case labels, or an address.
        #[derive(Debug, Clone, PartialEq)]
        enum Host {
            Domain(Vec<String>),
            V4(Ipv4Addr),
            V6(Ipv6Addr),
        }

        /// A host and one way of writing it.
        #[derive(Debug, Clone)]
        struct Spelled {
            host: Host,
            text: String,
        }

        const LABELS: &[&str] = &[
            "acme",
            "com",
            "www",
            "shop",
            "a",
            "b",
            "evilacme",
            "net",
            "localhost",
            "x-y",
            "co",
        ];

        /// Upper-cases the ASCII letters picked by the bits of `mask`.
        fn mangle_case(text: &str, mask: u64) -> String {
            text.chars()
                .enumerate()
                .map(|(i, c)| {
                    if mask >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        }

        fn host() -> impl Strategy<Value = Spelled> {
            let domain = (
                proptest::collection::vec(proptest::sample::select(LABELS), 1..4),
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(|(labels, mask, trailing_dot)| {
                    let name = labels.join(".");
                    let mut text = mangle_case(&name, mask);
                    if trailing_dot {
                        text.push('.');
                    }
                    Spelled {
                        host: Host::Domain(labels.iter().map(|l| l.to_string()).collect()),
                        text,
                    }
                });
            let v4 = proptest::sample::select(vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(192, 0, 2, 1),
            ])
            .prop_map(|ip| Spelled {
                host: Host::V4(ip),
                text: ip.to_string(),
            });
            let v6 = (
                proptest::sample::select(vec![
                    Ipv6Addr::LOCALHOST,
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xab),
                ]),
                any::<bool>(),
                any::<u64>(),
            )
                .prop_map(|(ip, expanded, mask)| {
                    let text = if expanded {
                        let s = ip.segments();
                        format!(
                            "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
                            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
                        )
                    } else {
                        ip.to_string()
                    };
                    Spelled {
                        host: Host::V6(ip),
                        text: format!("[{}]", mangle_case(&text, mask)),
                    }
                });
            prop_oneof![6 => domain, 1 => v4, 1 => v6]
        }

        fn scheme() -> impl Strategy<Value = (Scheme, String)> {
            (
                proptest::sample::select(vec![Scheme::Http, Scheme::Https]),
                any::<u64>(),
            )
                .prop_map(|(scheme, mask)| (scheme, mangle_case(scheme.as_str(), mask)))
        }

        #[derive(Debug, Clone, Copy)]
        enum Port {
            None,
            Star,
            Number(u16),
        }

        fn port() -> impl Strategy<Value = Port> {
            prop_oneof![
                3 => Just(Port::None),
                1 => Just(Port::Star),
                2 => proptest::sample::select(vec![80u16, 443, 3000, 8443]).prop_map(Port::Number),
                1 => any::<u16>().prop_map(Port::Number),
            ]
        }

        /// An entry built from parts, and how it is written.
        #[derive(Debug, Clone)]
        struct ModelEntry {
            scheme: Option<Scheme>,
            wildcard: bool,
            host: Host,
            port: Port,
            raw: String,
        }

        fn entry() -> impl Strategy<Value = ModelEntry> {
            (
                proptest::option::of(scheme()),
                proptest::bool::weighted(0.3),
                host(),
                port(),
                any::<bool>(),
            )
                .prop_map(|(scheme, wildcard, host, port, slash)| {
                    let mut raw = String::new();
                    if let Some((_, spelled)) = &scheme {
                        raw.push_str(spelled);
                        raw.push_str("://");
                    }
                    if wildcard {
                        raw.push_str("*.");
                    }
                    raw.push_str(&host.text);
                    match port {
                        Port::None => {}
                        Port::Star => raw.push_str(":*"),
                        Port::Number(n) => raw.push_str(&format!(":{n}")),
                    }
                    if slash {
                        raw.push('/');
                    }
                    ModelEntry {
                        scheme: scheme.map(|(s, _)| s),
                        wildcard,
                        host: host.host,
                        port,
                        raw,
                    }
                })
        }

        impl ModelEntry {
            /// Whether the documented grammar accepts the entry.
            fn is_valid(&self) -> bool {
                let wildcard_ok = !self.wildcard
                    || matches!(&self.host, Host::Domain(labels) if labels.len() >= 2);
                let port_ok = match self.port {
                    Port::Number(0) => false,
                    Port::Star => self.scheme.is_none(),
                    _ => true,
                };
                wildcard_ok && port_ok
            }

            /// Whether the documented rule lets `origin` through this (valid) entry.
            fn allows(&self, origin: &ModelOrigin) -> bool {
                let host = match (&self.host, &origin.host) {
                    (Host::Domain(name), Host::Domain(theirs)) if self.wildcard => {
                        theirs.len() > name.len() && theirs.ends_with(name)
                    }
                    (ours, theirs) => !self.wildcard && ours == theirs,
                };
                let origin_port = origin.port.unwrap_or(origin.scheme.default_port());
                match self.scheme {
                    None => {
                        host && match self.port {
                            Port::Number(n) => n == origin_port,
                            _ => true,
                        }
                    }
                    Some(scheme) => {
                        let port = match self.port {
                            Port::Number(n) => n,
                            _ => scheme.default_port(),
                        };
                        host && scheme == origin.scheme && port == origin_port
                    }
                }
            }
        }

        /// An origin built from parts, and its `Origin` header.
        #[derive(Debug, Clone)]
        struct ModelOrigin {
            scheme: Scheme,
            host: Host,
            port: Option<u16>,
            header: String,
        }

        fn origin() -> impl Strategy<Value = ModelOrigin> {
            (
                scheme(),
                host(),
                prop_oneof![
                    2 => Just(None),
                    2 => proptest::sample::select(vec![80u16, 443, 3000, 8443]).prop_map(Some),
                    1 => (1u16..).prop_map(Some),
                ],
            )
                .prop_map(|((scheme, spelled_scheme), host, port)| {
                    let mut header = format!("{spelled_scheme}://{}", host.text);
                    if let Some(port) = port {
                        header.push_str(&format!(":{port}"));
                    }
                    ModelOrigin {
                        scheme,
                        host: host.host,
                        port,
                        header,
                    }
                })
        }

        /// `host` written with the ASCII letters picked by `mask` in upper case.
        fn spell(host: &Host, mask: u64) -> String {
            match host {
                Host::Domain(labels) => mangle_case(&labels.join("."), mask),
                Host::V4(ip) => ip.to_string(),
                Host::V6(ip) => format!("[{ip}]"),
            }
        }

        /// A valid entry and an origin, the origin often on the entry's host or below it (so
        /// that both answers occur often).
        fn entry_and_origin() -> impl Strategy<Value = (ModelEntry, ModelOrigin)> {
            (
                entry().prop_filter("a valid entry", ModelEntry::is_valid),
                origin(),
                0..3u8,
                proptest::sample::select(LABELS),
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(|(entry, mut origin, relation, label, mask, entry_port)| {
                    let host = match (relation, &entry.host) {
                        (1, host) => Some(host.clone()),
                        (2, Host::Domain(labels)) => Some(Host::Domain(
                            std::iter::once(label.to_owned())
                                .chain(labels.iter().cloned())
                                .collect(),
                        )),
                        _ => None,
                    };
                    if let Some(host) = host {
                        if let (true, Port::Number(n @ 1..)) = (entry_port, entry.port) {
                            origin.port = Some(n);
                        }
                        origin.header = format!(
                            "{}://{}{}",
                            origin.scheme.as_str(),
                            spell(&host, mask),
                            origin.port.map(|p| format!(":{p}")).unwrap_or_default()
                        );
                        origin.host = host;
                    }
                    (entry, origin)
                })
        }

        /// An `Origin` header built from parts with one character inserted, replaced or removed.
        fn near_origin() -> impl Strategy<Value = String> {
            (
                origin(),
                any::<prop::sample::Index>(),
                any::<char>(),
                0..3u8,
            )
                .prop_map(|(origin, at, c, edit)| {
                    let mut chars: Vec<char> = origin.header.chars().collect();
                    let i = at.index(chars.len());
                    match edit {
                        0 => chars.insert(i, c),
                        1 => chars[i] = c,
                        _ => {
                            chars.remove(i);
                        }
                    }
                    chars.into_iter().collect()
                })
        }

        proptest! {
            #![proptest_config(crate::proptest_config::config(4096))]

            /// An entry parses exactly when the grammar accepts it, and its `Display` parses
            /// back to the same entry.
            #[test]
            fn built_entries_parse_by_the_grammar_and_round_trip(entry in entry()) {
                match Entry::parse(&entry.raw) {
                    Ok(parsed) => {
                        prop_assert!(entry.is_valid(), "{:?} accepted", entry.raw);
                        let shown = parsed.to_string();
                        prop_assert_eq!(Entry::parse(&shown), Ok(parsed), "{}", shown);
                    }
                    Err(e) => prop_assert!(!entry.is_valid(), "{:?} refused: {}", entry.raw, e),
                }
            }

            /// A generated origin is allowed by an entry exactly when the documented rule says
            /// so, whether matched through the allowlist it is loaded into or the entry alone.
            #[test]
            fn origins_match_entries_by_the_documented_rule(
                (entry, origin) in entry_and_origin(),
            ) {
                let parsed = Entry::parse(&entry.raw).unwrap();
                let request = request_origin(Some(&origin.header), None);
                prop_assert!(request.is_some(), "{:?} unusable", origin.header);
                let request = request.unwrap();
                let expected = entry.allows(&origin);
                prop_assert_eq!(
                    is_allowed(&parse_allowlist(&[&entry.raw]).0, &request),
                    expected,
                    "{} vs {}", entry.raw, origin.header
                );
                prop_assert_eq!(parsed.matches(&request), expected);
                // The canonical entry, as stored, allows the same origins.
                prop_assert_eq!(
                    is_allowed(&parse_allowlist(&[parsed.to_string()]).0, &request),
                    expected
                );
                // And a hand-built origin with the raw host is normalised to the same answer.
                let hand_built = RequestOrigin {
                    scheme: origin.scheme,
                    host: origin.header.split("://").nth(1).unwrap().rsplit_once(':')
                        .filter(|(_, port)| origin.port.is_some() && !port.contains(']'))
                        .map_or(origin.header.split("://").nth(1).unwrap(), |(host, _)| host)
                        .to_owned(),
                    port: origin.port,
                };
                prop_assert_eq!(parsed.matches(&hand_built), expected, "{:?}", hand_built);
            }

            /// Arbitrary text never panics any parser; what parses, round-trips.
            #[test]
            fn arbitrary_text_never_panics(
                text in prop_oneof![
                    any::<String>(),
                    r"[a-zA-Z0-9.:/*@?#\\\[\]%_-]{0,40}",
                    r"(https?|HTTP|ftp)://[a-zA-Z0-9.:/*@\[\]%-]{0,30}",
                    near_origin(),
                    entry().prop_map(|e| e.raw),
                ],
            ) {
                if let Ok(entry) = Entry::parse(&text) {
                    prop_assert_eq!(Entry::parse(&entry.to_string()), Ok(entry));
                }
                for (origin, referer) in [(Some(text.as_str()), None), (None, Some(text.as_str()))] {
                    if let Some(found) = request_origin(origin, referer) {
                        prop_assert!(found.port.is_some_and(|p| p != 0));
                        // What was found serialises to an Origin header that gives it back.
                        prop_assert_eq!(
                            request_origin(Some(&found.to_string()), None),
                            Some(found.clone())
                        );
                        prop_assert!(!is_allowed(&[], &found));
                        let _ = is_allowed(&parse_allowlist(&[&text]).0, &found);
                    }
                }
            }
        }
    }
}
