//! OIDC ID-token validation: issuer discovery, a JWKS cache and local signature checks.
//!
//! * Discovery (`openidconnect`) runs once and finds `jwks_uri` and `userinfo_endpoint`.
//! * Keys live in an immutable snapshot swapped on refresh; the request path only reads it.
//! * Refresh happens periodically, and when a token names an unknown `kid` — with at most one
//!   fetch in flight (requests await the same shared future) and at most one per cooldown, so
//!   junk `kid`s cannot flood the issuer. No lock is held across the fetch.
//! * A failed refresh keeps the last good key set.
//! * Verified tokens are remembered in the key set that verified them, so a swap forgets them
//!   all, including verifications still in flight when the keys changed.
//! * Verification (`jsonwebtoken`) pins the algorithm to the key's own, requires `exp`, `sub`,
//!   `iss` and `aud`, checks `iss` exactly and `aud` against the configured list, honours `nbf`
//!   and `iat`, with 60 s leeway. `alg: none`, HMAC algorithms, unknown `kid`s and a key/alg
//!   family mismatch are refused.
//! * Only ID tokens issued to one of our clients: an `azp` must be a configured audience, and
//!   access tokens (`typ: at+jwt`, or an access token's claims) are refused.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use dashmap::DashMap;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use openidconnect::core::CoreProviderMetadata;
use openidconnect::{IssuerUrl, reqwest};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::principal::AuthRejection;

/// Verified tokens remembered per issuer, at most.
const MAX_VERIFIED: usize = 50_000;

/// Leeway for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What we take from a verified ID token (Zitadel's names for organisation and roles).
#[derive(Debug, Clone)]
pub struct IdClaims {
    pub sub: String,
    pub email: Option<String>,
    pub iat: Option<i64>,
    /// Bounds how long a verification is reused.
    pub exp: i64,
    /// The user's organisation.
    pub org_id: Option<String>,
    /// What the roles claim that counts for this issuer grants (see [`roles_claim`]).
    pub roles: OrgRoles,
}

/// A token's claims as decoded, before the checks that make them [`IdClaims`].
#[derive(Deserialize)]
struct TokenClaims {
    /// Required; a missing `sub` is caught by the required-claims check, an empty one after.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    /// Required (checked by the validation).
    #[serde(default)]
    exp: i64,
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:id", default)]
    org_id: Option<String>,
    /// The client the token was issued to; when present, one of the configured audiences.
    #[serde(default)]
    azp: Option<String>,
    /// Claims of an access token (RFC 9068; Zitadel's JWT access tokens), read only for
    /// whether they are present: see [`TokenClaims::is_access_token`].
    #[serde(default)]
    client_id: Option<IgnoredAny>,
    #[serde(default)]
    jti: Option<IgnoredAny>,
    #[serde(default)]
    scope: Option<IgnoredAny>,
    /// Every other claim; the roles claims are among them.
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

impl TokenClaims {
    /// Whether these are the claims of an access token rather than an ID token: a `scope`
    /// (an ID token has none), or `client_id` or `jti` without `azp`. An RFC 9068 access token
    /// must carry `client_id` and `jti`; Zitadel's JWT access tokens carry `jti` and no `azp`,
    /// while its ID tokens always name their client in `azp` (and carry `client_id` too).
    fn is_access_token(&self) -> bool {
        self.scope.is_some()
            || (self.azp.is_none() && (self.client_id.is_some() || self.jti.is_some()))
    }
}

/// Whether a JWT header's `typ` says "access token" (RFC 9068: `at+jwt`, also written with
/// the `application/` prefix; media types compare without case).
fn is_access_token_typ(typ: &str) -> bool {
    let typ = typ.trim();
    let typ = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    typ.eq_ignore_ascii_case("at+jwt")
}

/// The name of the roles claim that counts. With a configured Zitadel project
/// (`KATAVEN_OIDC_PROJECT_ID`), only that project's own claim
/// `urn:zitadel:iam:org:project:<id>:roles`: the project-less
/// `urn:zitadel:iam:org:project:roles` does not say which project its roles are of. Without
/// one, the project-less claim.
pub fn roles_claim(project: Option<&str>) -> String {
    match project {
        Some(project) => format!("urn:zitadel:iam:org:project:{project}:roles"),
        None => "urn:zitadel:iam:org:project:roles".to_owned(),
    }
}

/// Which roles the roles claim grants in which organisations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgRoles(pub HashMap<String, HashSet<String>>);

impl OrgRoles {
    /// What the roles claim that counts ([`roles_claim`]) among `claims` grants; any other
    /// roles claim grants nothing. Its shape is `{ "<role>": { "<orgId>": "<domain>" } }`;
    /// `Err` when it has another.
    pub fn from_claims(
        claims: &HashMap<String, serde_json::Value>,
        project: Option<&str>,
    ) -> Result<Self, serde_json::Error> {
        let claim = match claims.get(&roles_claim(project)) {
            None | Some(serde_json::Value::Null) => return Ok(Self::default()),
            Some(claim) => claim,
        };
        let claim = HashMap::<String, HashMap<String, serde_json::Value>>::deserialize(claim)?;
        Ok(Self(
            claim
                .into_iter()
                .map(|(role, orgs)| (role, orgs.into_keys().collect()))
                .collect(),
        ))
    }

    /// Whether any role is granted from `org`.
    pub fn any_in(&self, org: &str) -> bool {
        self.0.values().any(|orgs| orgs.contains(org))
    }

    pub fn has(&self, role: &str, org: &str) -> bool {
        self.0.get(role).is_some_and(|orgs| orgs.contains(org))
    }

    /// Every organisation some role is granted from.
    pub fn orgs(&self) -> HashSet<&str> {
        self.0.values().flatten().map(String::as_str).collect()
    }
}

#[derive(Clone)]
struct VerifyKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// One key set as fetched, and the tokens verified with it.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, VerifyKey>,
    /// Tokens verified with these keys: SHA-256 of the token → its claims. It belongs to this
    /// set, so replacing the set forgets them all, and a verification that finishes after the
    /// set was replaced remembers its token here, where no lookup comes any more. An entry is
    /// never used past the token's `exp` (+ leeway), so a reused verification means exactly
    /// what a new one would.
    verified: DashMap<[u8; 32], Arc<IdClaims>>,
}

impl KeySet {
    /// Remembers a token verified with this set.
    fn remember(&self, digest: [u8; 32], claims: &IdClaims) {
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(digest, Arc::new(claims.clone()));
    }
}

/// Where keys come from.
enum Source {
    /// A remote issuer: discovery, then its `jwks_uri`.
    Remote {
        http: reqwest::Client,
        discovered: RwLock<Option<Arc<Discovered>>>,
    },
    /// Keys handed over in process (the built-in dev issuer, benchmarks).
    Local(Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<JwkSet>> + Send + Sync>),
}

pub struct Discovered {
    pub jwks_uri: String,
    pub userinfo_endpoint: Option<String>,
    pub metadata: CoreProviderMetadata,
    eddsa_advertised: bool,
}

/// Counters reported in `/metrics`.
#[derive(Clone, Default)]
pub struct OidcCounters {
    pub jwks_fetches: Counter,
    pub jwks_fetch_failures: Counter,
}

#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub refresh_interval: Duration,
    pub refresh_cooldown: Duration,
    /// The Zitadel project whose roles claim counts (see [`roles_claim`]).
    pub project_id: Option<String>,
}

/// One trusted issuer and its cached keys.
pub struct IssuerKeys {
    settings: IssuerSettings,
    source: Source,
    /// The current key set, with the tokens verified with it.
    keys: RwLock<Arc<KeySet>>,
    last_attempt: Mutex<Option<Instant>>,
    inflight: Mutex<Option<Shared<BoxFuture<'static, ()>>>>,
    counters: OidcCounters,
    /// Unit tests: pauses the next verification between its signature check and remembering
    /// it, so that a key swap can be placed exactly there.
    #[cfg(test)]
    pause_before_remember: Mutex<Option<Arc<tests::Pause>>>,
}

/// Checks that an issuer URL is `https://`, or `http://` on a loopback host.
pub fn check_issuer_url(issuer: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(issuer).with_context(|| format!("issuer `{issuer}` is not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                bail!(
                    "issuer `{issuer}`: http:// is only accepted on a loopback host; use https://"
                )
            }
        }
        other => bail!("issuer `{issuer}`: unsupported scheme `{other}`"),
    }
}

impl IssuerKeys {
    /// A remote issuer found by discovery. Nothing is fetched until [`Self::refresh_now`] or
    /// the first token.
    pub fn remote(settings: IssuerSettings, counters: OidcCounters) -> anyhow::Result<Arc<Self>> {
        check_issuer_url(&settings.issuer)?;
        let http = reqwest::Client::builder()
            // Never follow redirects: discovery must answer at the issuer itself.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Arc::new(Self::new(
            settings,
            Source::Remote {
                http,
                discovered: RwLock::new(None),
            },
            counters,
        )))
    }

    /// An issuer whose keys are supplied in process.
    pub fn local(
        settings: IssuerSettings,
        counters: OidcCounters,
        keys: impl Fn() -> BoxFuture<'static, anyhow::Result<JwkSet>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self::new(settings, Source::Local(Box::new(keys)), counters))
    }

    fn new(settings: IssuerSettings, source: Source, counters: OidcCounters) -> Self {
        if !super::crypto::install() {
            tracing::warn!(
                "another jsonwebtoken crypto provider is installed: tokens are verified without ring"
            );
        }
        Self {
            settings,
            source,
            keys: RwLock::new(Arc::default()),
            last_attempt: Mutex::new(None),
            inflight: Mutex::new(None),
            counters,
            #[cfg(test)]
            pause_before_remember: Mutex::new(None),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    pub fn audiences(&self) -> &[String] {
        &self.settings.audiences
    }

    /// The Zitadel project whose roles claim counts, if one is configured.
    pub fn project_id(&self) -> Option<&str> {
        self.settings.project_id.as_deref()
    }

    /// The HTTP client of a remote issuer.
    pub fn http(&self) -> Option<&reqwest::Client> {
        match &self.source {
            Source::Remote { http, .. } => Some(http),
            Source::Local(_) => None,
        }
    }

    /// The discovery result of a remote issuer. Until discovery has succeeded once, it is asked
    /// for through the key refresh — at most one in flight, at most one per cooldown — so that a
    /// flood of callers while the issuer is down costs the issuer at most one discovery per
    /// cooldown; inside the cooldown this fails at once.
    pub async fn discovered(self: &Arc<Self>) -> anyhow::Result<Arc<Discovered>> {
        let Source::Remote { discovered, .. } = &self.source else {
            bail!("a local issuer has no discovery document");
        };
        if let Some(d) = discovered.read().clone() {
            return Ok(d);
        }
        if let Some(refresh) = self.refresh(true) {
            let _ = tokio::time::timeout(FETCH_TIMEOUT, refresh).await;
        }
        let known = discovered.read().clone();
        known.ok_or_else(|| {
            anyhow!(
                "OIDC discovery of {} has not succeeded (tried at most once per {:?})",
                self.settings.issuer,
                self.settings.refresh_cooldown
            )
        })
    }

    /// Discovery itself (one request for the document, one for its JWKS); only the key
    /// refresh calls this.
    async fn discover(&self) -> anyhow::Result<()> {
        let Source::Remote { http, discovered } = &self.source else {
            bail!("a local issuer has no discovery document");
        };
        let issuer_url = IssuerUrl::new(self.settings.issuer.clone()).context("issuer URL")?;
        // `discover_async` checks that the document's `issuer` equals ours and fetches the JWKS.
        let metadata = CoreProviderMetadata::discover_async(issuer_url, http)
            .await
            .map_err(|e| {
                // The cause (refused, timed out, a 503) is in the error's sources.
                let mut cause = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    cause = format!("{cause}: {s}");
                    source = s.source();
                }
                anyhow!("OIDC discovery of {} failed: {cause}", self.settings.issuer)
            })?;
        self.counters.jwks_fetches.inc();
        let eddsa_advertised = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .any(|a| {
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s == "EdDSA"))
                    == Some(true)
            });
        let d = Arc::new(Discovered {
            jwks_uri: metadata.jwks_uri().url().to_string(),
            userinfo_endpoint: metadata.userinfo_endpoint().map(|u| u.url().to_string()),
            eddsa_advertised,
            metadata,
        });
        // Use the key set discovery already fetched.
        let jwks: JwkSet = serde_json::from_value(serde_json::to_value(d.metadata.jwks())?)?;
        self.install(&jwks, eddsa_advertised);
        *discovered.write() = Some(d);
        Ok(())
    }

    async fn fetch(&self) -> anyhow::Result<()> {
        match &self.source {
            Source::Local(keys) => {
                let jwks = keys().await?;
                self.install(&jwks, true);
                Ok(())
            }
            Source::Remote { http, discovered } => {
                let known = discovered.read().clone();
                let Some(d) = known else {
                    // First contact: discovery fetches the keys too.
                    return self.discover().await;
                };
                self.counters.jwks_fetches.inc();
                let response = http
                    .get(&d.jwks_uri)
                    .header("accept", "application/json")
                    .send()
                    .await
                    .context("fetching the JWKS")?;
                if !response.status().is_success() {
                    bail!("JWKS answered {}", response.status());
                }
                let body = response.bytes().await.context("reading the JWKS")?;
                let jwks: JwkSet = serde_json::from_slice(&body).context("parsing the JWKS")?;
                self.install(&jwks, d.eddsa_advertised);
                Ok(())
            }
        }
    }

    /// Replaces the key set with the usable keys of `jwks`.
    fn install(&self, jwks: &JwkSet, eddsa_allowed: bool) {
        let keys = jwks
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let alg = key_algorithm(jwk, eddsa_allowed)?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, VerifyKey { key, alg }))
            })
            .collect();
        *self.keys.write() = Arc::new(KeySet {
            keys,
            verified: DashMap::new(),
        });
    }

    /// Starts a refresh unless one is in flight (then joins it) or, when `respect_cooldown`,
    /// one was attempted within the cooldown (then returns `None`).
    fn refresh(self: &Arc<Self>, respect_cooldown: bool) -> Option<Shared<BoxFuture<'static, ()>>> {
        let mut inflight = self.inflight.lock();
        if let Some(running) = &*inflight {
            return Some(running.clone());
        }
        {
            let mut last = self.last_attempt.lock();
            if respect_cooldown
                && last.is_some_and(|t| t.elapsed() < self.settings.refresh_cooldown)
            {
                return None;
            }
            *last = Some(Instant::now());
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = this.fetch().await {
                this.counters.jwks_fetch_failures.inc();
                tracing::warn!(issuer = %this.settings.issuer, error = %e, "key refresh failed; keeping the last good keys");
            }
            *this.inflight.lock() = None;
        });
        let shared = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        *inflight = Some(shared.clone());
        Some(shared)
    }

    /// Discovery and the key set fetched now, past the cache and the cooldown, with the
    /// error if either fails (`doctor`): the number of keys this service can verify with.
    pub async fn probe(&self) -> anyhow::Result<usize> {
        self.discover().await?;
        Ok(self.keys.read().keys.len())
    }

    /// Fetches keys now (start-up, periodic refresh), ignoring the cooldown.
    pub async fn refresh_now(self: &Arc<Self>) {
        if let Some(f) = self.refresh(false) {
            f.await;
        }
    }

    /// Refreshes the keys every `refresh_interval` until the task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.refresh_now().await;
                tokio::time::sleep(this.settings.refresh_interval).await;
            }
        })
    }

    /// The current key set.
    fn snapshot(&self) -> Arc<KeySet> {
        self.keys.read().clone()
    }

    /// Verifies an ID token of this issuer. A token already verified with the current keys is
    /// not verified again (signature checks cost ~0.2 ms) until it expires.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<IdClaims, AuthRejection> {
        let digest = token_digest(token);
        if let Some(claims) = self.verified(&digest) {
            return Ok(claims);
        }
        let (claims, set) = self.verify_in_snapshot(token).await?;
        #[cfg(test)]
        {
            let pause = self.pause_before_remember.lock().take();
            if let Some(pause) = pause {
                pause.reached.notify_one();
                pause.resume.notified().await;
            }
        }
        // Into the cache of the set that verified it: if that set was replaced meanwhile, the
        // token is remembered where nobody looks any more.
        set.remember(digest, &claims);
        Ok(claims)
    }

    /// The claims of the token with SHA-256 `digest` if this issuer verified it with its current
    /// keys and it has not expired.
    pub fn verified(&self, digest: &[u8; 32]) -> Option<IdClaims> {
        let claims = self.snapshot().verified.get(digest)?.clone();
        (chrono::Utc::now().timestamp() <= claims.exp + LEEWAY_SECS as i64)
            .then(|| IdClaims::clone(&claims))
    }

    /// A full verification, without the verified-token cache.
    pub async fn verify_uncached(self: &Arc<Self>, token: &str) -> Result<IdClaims, AuthRejection> {
        self.verify_in_snapshot(token)
            .await
            .map(|(claims, _)| claims)
    }

    /// A full verification; also returns the key set whose key verified the token.
    async fn verify_in_snapshot(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<(IdClaims, Arc<KeySet>), AuthRejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthRejection::new("malformed_token"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(AuthRejection::new("disallowed_alg"));
        }
        // An access token is not an ID token, however valid its signature (RFC 9068 §4).
        if header.typ.as_deref().is_some_and(is_access_token_typ) {
            return Err(AuthRejection::new("access_token"));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or(AuthRejection::new("missing_kid"))?;
        let mut set = self.snapshot();
        if !set.keys.contains_key(kid) {
            if let Some(refresh) = self.refresh(true) {
                let _ = tokio::time::timeout(FETCH_TIMEOUT, refresh).await;
            }
            set = self.snapshot();
        }
        let key = set.keys.get(kid).ok_or(AuthRejection::new("unknown_kid"))?;
        let claims = self.verify_with(token, header.alg, key)?;
        Ok((claims, set))
    }

    fn verify_with(
        &self,
        token: &str,
        alg: Algorithm,
        key: &VerifyKey,
    ) -> Result<IdClaims, AuthRejection> {
        if key.alg != alg {
            return Err(AuthRejection::new("alg_mismatch"));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<TokenClaims>(token, &key.key, &validation).map_err(|e| {
                AuthRejection::new(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not_yet_valid",
                    ErrorKind::InvalidIssuer => "wrong_issuer",
                    ErrorKind::InvalidAudience => "wrong_audience",
                    ErrorKind::InvalidSignature => "bad_signature",
                    ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                    ErrorKind::InvalidAlgorithm => "alg_mismatch",
                    _ => "invalid_token",
                })
            })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthRejection::new("empty_sub"));
        }
        let now = chrono::Utc::now().timestamp();
        if claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS as i64) {
            return Err(AuthRejection::new("not_yet_valid"));
        }
        if claims.is_access_token() {
            return Err(AuthRejection::new("access_token"));
        }
        // Issued to a client that is not one of ours (OIDC Core 3.1.3.7).
        if claims
            .azp
            .as_ref()
            .is_some_and(|azp| !self.settings.audiences.contains(azp))
        {
            return Err(AuthRejection::new("azp_mismatch"));
        }
        let roles = OrgRoles::from_claims(&claims.other, self.project_id())
            .map_err(|_| AuthRejection::new("invalid_token"))?;
        Ok(IdClaims {
            sub: claims.sub,
            email: claims.email,
            iat: claims.iat,
            exp: claims.exp,
            org_id: claims.org_id,
            roles,
        })
    }
}

/// The algorithm a JWK may verify, or `None` when we do not accept it: RS256 for RSA keys,
/// ES256 for P-256 keys, EdDSA for Ed25519 keys (only if the issuer advertises EdDSA). A key
/// whose own `alg` says otherwise is skipped.
fn key_algorithm(jwk: &Jwk, eddsa_allowed: bool) -> Option<Algorithm> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p)
            if p.curve == EllipticCurve::Ed25519 && eddsa_allowed =>
        {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(family),
        Some(KeyAlgorithm::RS256) if family == Algorithm::RS256 => Some(family),
        Some(KeyAlgorithm::ES256) if family == Algorithm::ES256 => Some(family),
        Some(KeyAlgorithm::EdDSA) if family == Algorithm::EdDSA => Some(family),
        Some(_) => None,
    }
}

/// What the verified-token caches are keyed by.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The `iss` claim of a token, read without verification, to pick the issuer whose keys must
/// then verify it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    unverified_claims::<Iss>(token).map(|i| i.iss)
}

/// Claims of a JWT's payload, read without any verification (to route or refuse a token,
/// never to trust it).
pub fn unverified_claims<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use parking_lot::Mutex;
    use serde_json::{Value, json};
    use tokio::sync::Notify;

    use super::{IssuerKeys, IssuerSettings, OidcCounters, check_issuer_url};

    /// A verification paused between its signature check and remembering it.
    #[derive(Default)]
    pub(super) struct Pause {
        /// Notified when the verification reaches the pause.
        pub reached: Notify,
        /// Notify to let it go on.
        pub resume: Notify,
    }

    const ISSUER: &str = "https://issuer.test";

    fn ec_key(kid: &str) -> (EncodingKey, Jwk) {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
        jwk["kid"] = kid.into();
        jwk["alg"] = "ES256".into();
        (
            EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            serde_json::from_value(jwk).unwrap(),
        )
    }

    fn claims() -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": ISSUER, "aud": ["hub"], "sub": "user-1", "iat": now, "exp": now + 600 })
    }

    fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
        let header = Header {
            kid: Some(kid.into()),
            ..Header::new(Algorithm::ES256)
        };
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    /// A local issuer publishing whatever `published` holds; no refresh within the test
    /// except the ones it asks for.
    fn issuer(published: Arc<Mutex<JwkSet>>) -> Arc<IssuerKeys> {
        IssuerKeys::local(
            IssuerSettings {
                issuer: ISSUER.into(),
                audiences: vec!["hub".into()],
                refresh_interval: Duration::from_secs(3600),
                refresh_cooldown: Duration::from_secs(3600),
                project_id: None,
            },
            OidcCounters::default(),
            move || {
                let set = published.lock().clone();
                Box::pin(async move { Ok(set) })
            },
        )
    }

    #[tokio::test]
    async fn a_remembered_token_of_a_withdrawn_key_is_refused_after_the_swap() {
        let (k1, jwk1) = ec_key("k1");
        let (_, jwk2) = ec_key("k2");
        let published = Arc::new(Mutex::new(JwkSet { keys: vec![jwk1] }));
        let issuer = issuer(published.clone());
        issuer.refresh_now().await;
        let token = sign(&k1, "k1", &claims());
        assert!(issuer.verify(&token).await.is_ok());
        assert!(issuer.verify(&token).await.is_ok(), "remembered");

        *published.lock() = JwkSet { keys: vec![jwk2] };
        issuer.refresh_now().await;
        assert_eq!(
            issuer.verify(&token).await.unwrap_err().reason,
            "unknown_kid"
        );
    }

    /// The race of issue 10 (4b): a verification that checked the signature with the old key
    /// set must not remember the token in the cache of the new one.
    #[tokio::test]
    async fn a_verification_in_flight_across_a_key_swap_is_not_remembered() {
        let (k1, jwk1) = ec_key("k1");
        let (_, jwk2) = ec_key("k2");
        let published = Arc::new(Mutex::new(JwkSet { keys: vec![jwk1] }));
        let issuer = issuer(published.clone());
        issuer.refresh_now().await;
        let token = sign(&k1, "k1", &claims());

        let pause = Arc::new(Pause::default());
        *issuer.pause_before_remember.lock() = Some(pause.clone());
        let in_flight = tokio::spawn({
            let issuer = issuer.clone();
            let token = token.clone();
            async move { issuer.verify(&token).await }
        });
        // The signature checked out with k1; before the verification remembers it, the issuer
        // withdraws k1 and the key set is swapped.
        pause.reached.notified().await;
        *published.lock() = JwkSet { keys: vec![jwk2] };
        issuer.refresh_now().await;
        pause.resume.notify_one();
        assert!(
            in_flight.await.unwrap().is_ok(),
            "verified against the keys of its time"
        );

        // The next use of the token meets the new key set, which does not know k1.
        assert_eq!(
            issuer
                .verify(&token)
                .await
                .map(|c| c.sub)
                .unwrap_err()
                .reason,
            "unknown_kid"
        );
    }

    #[test]
    fn only_the_roles_claim_of_the_configured_project_counts() {
        use std::collections::HashMap;

        use super::OrgRoles;

        let claims: HashMap<String, Value> = serde_json::from_value(json!({
            "urn:zitadel:iam:org:project:roles": { "admin": { "org-1": "a" } },
            "urn:zitadel:iam:org:project:p-1:roles": { "viewer": { "org-1": "a" } },
            "urn:zitadel:iam:org:project:p-2:roles": { "admin": { "org-2": "b" } },
            "urn:zitadel:iam:org:project:p-3:roles": "not an object",
        }))
        .unwrap();
        let roles = OrgRoles::from_claims(&claims, None).unwrap();
        assert!(roles.has("admin", "org-1") && !roles.has("viewer", "org-1"));
        let roles = OrgRoles::from_claims(&claims, Some("p-1")).unwrap();
        assert!(roles.has("viewer", "org-1") && !roles.has("admin", "org-1"));
        assert_eq!(roles.orgs().into_iter().collect::<Vec<_>>(), ["org-1"]);
        assert_eq!(
            OrgRoles::from_claims(&claims, Some("p-9")).unwrap(),
            OrgRoles::default()
        );
        assert!(OrgRoles::from_claims(&claims, Some("p-3")).is_err());
    }

    #[test]
    fn access_token_types() {
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            assert!(super::is_access_token_typ(typ), "{typ}");
        }
        for typ in [
            "JWT",
            "jwt",
            "application/jwt",
            "at+jwt2",
            "application/",
            "",
            "ät+jwt",
        ] {
            assert!(!super::is_access_token_typ(typ), "{typ}");
        }
    }

    #[test]
    fn http_issuers_only_on_loopback() {
        for ok in [
            "https://acme.zitadel.cloud",
            "http://127.0.0.1:8080",
            "http://localhost:9000/dev/oidc",
            "http://[::1]:8080",
            "http://127.9.9.9",
        ] {
            assert!(check_issuer_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://acme.zitadel.cloud",
            "http://10.0.0.1",
            "http://localhost.evil.com",
            "http://0.0.0.0:8080",
            "ftp://issuer",
            "not a url",
        ] {
            assert!(check_issuer_url(bad).is_err(), "{bad}");
        }
    }
}
