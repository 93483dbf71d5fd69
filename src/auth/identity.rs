//! The trusted identity providers: the configured OIDC issuer (Zitadel) and, in dev mode, the
//! built-in dev issuer. Turns bearers into principals and serves `/api/user/org` lookups.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use openidconnect::core::{CoreClient, CoreGenderClaim};
use openidconnect::{AccessToken, AdditionalClaims, ClientId, UserInfoClaims, UserInfoError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::dev_issuer::DevIssuer;
use super::keys::{API_KEY_PREFIX, USER_TOKEN_PREFIX, WIDGET_KEY_PREFIX};
use super::oidc::{
    IdClaims, IssuerKeys, OrgRoles, token_digest, unverified_claims, unverified_issuer,
};
use super::principal::{AuthRejection, Principal};
use super::widget_session;

/// How long a userinfo answer is reused for the same token.
pub const USERINFO_TTL: Duration = Duration::from_secs(60);

pub struct Identity {
    /// Issuers whose ID tokens are accepted.
    issuers: Vec<Arc<IssuerKeys>>,
    /// The configured remote issuer (Zitadel), for userinfo.
    remote: Option<Arc<IssuerKeys>>,
    /// The dev issuer, when dev login is on.
    pub dev: Option<(Arc<DevIssuer>, Arc<IssuerKeys>)>,
    /// This service's own issuer (its public URL): the `iss` of widget session tokens.
    service_issuer: String,
    userinfo_cache: DashMap<[u8; 32], (Instant, UserInfo)>,
}

/// What `/api/user/org` needs from the issuer's userinfo endpoint.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub sub: String,
    pub email: Option<String>,
    pub org_id: Option<String>,
    pub org_name: Option<String>,
    pub org_primary_domain: Option<String>,
    pub roles: OrgRoles,
}

#[derive(Debug, thiserror::Error)]
pub enum UserInfoFailure {
    #[error("the token was refused")]
    Refused,
    /// A credential of this service, never handed to the identity provider.
    #[error("a credential of this service is not an identity provider's token")]
    LocalCredential,
    #[error("no identity provider is configured")]
    NotConfigured,
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
}

/// Zitadel's organisation and roles claims in a userinfo answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct ZitadelClaims {
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:id", default)]
    org_id: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:name", default)]
    org_name: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:primary_domain", default)]
    org_primary_domain: Option<String>,
    /// Every other claim; the roles claims are among them (see [`OrgRoles::from_claims`]).
    #[serde(flatten)]
    other: std::collections::HashMap<String, serde_json::Value>,
}

impl AdditionalClaims for ZitadelClaims {}

impl Identity {
    /// `service_issuer` is this service's public URL, the `iss` of the widget session tokens
    /// it signs.
    pub fn new(
        remote: Option<Arc<IssuerKeys>>,
        dev: Option<(Arc<DevIssuer>, Arc<IssuerKeys>)>,
        service_issuer: String,
    ) -> Self {
        let mut issuers: Vec<Arc<IssuerKeys>> = remote.iter().cloned().collect();
        issuers.extend(dev.as_ref().map(|(_, keys)| keys.clone()));
        Self {
            issuers,
            remote,
            dev,
            service_issuer,
            userinfo_cache: DashMap::new(),
        }
    }

    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    async fn verify_id_token(&self, token: &str) -> Result<IdClaims, AuthRejection> {
        // A token seen before is found by its digest, without decoding it to pick the issuer
        // (what every request with the same token would otherwise do again).
        let digest = token_digest(token);
        if let Some(claims) = self.issuers.iter().find_map(|i| i.verified(&digest)) {
            return Ok(claims);
        }
        let iss = unverified_issuer(token).ok_or(AuthRejection::new("malformed_token"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer() == iss)
            .ok_or(AuthRejection::new("wrong_issuer"))?;
        issuer.verify(token).await
    }

    /// Whether a bearer is a credential of this service rather than an identity provider's
    /// token: an API key (`sk_live_`), a widget key (`pk_live_`), a widget user token (`ut_`),
    /// prefixes in any case, or a widget session token (a JWT whose unverified `iss` is this
    /// service or whose audience is the widget's). Nothing is verified: this only keeps such
    /// bearers away from the identity provider.
    fn is_local_credential(&self, token: &str) -> bool {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Audience {
            One(String),
            Many(Vec<String>),
        }
        #[derive(Deserialize)]
        struct IssAud {
            iss: Option<String>,
            aud: Option<Audience>,
        }
        let prefixed = [API_KEY_PREFIX, WIDGET_KEY_PREFIX, USER_TOKEN_PREFIX]
            .iter()
            .any(|prefix| {
                token
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            });
        prefixed
            || unverified_claims::<IssAud>(token).is_some_and(|claims| {
                claims.iss.as_deref() == Some(self.service_issuer.as_str())
                    || match claims.aud {
                        Some(Audience::One(aud)) => aud == widget_session::AUDIENCE,
                        Some(Audience::Many(auds)) => {
                            auds.iter().any(|aud| aud == widget_session::AUDIENCE)
                        }
                        None => false,
                    }
            })
    }

    /// Userinfo for a bearer, through the issuer that can answer for it, cached per token hash.
    /// A credential of this service is refused before anything else: it never reaches the
    /// identity provider.
    pub async fn userinfo(&self, token: &str) -> Result<UserInfo, UserInfoFailure> {
        if self.is_local_credential(token) {
            return Err(UserInfoFailure::LocalCredential);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.userinfo_cache.get(&key) {
            if hit.0.elapsed() < USERINFO_TTL {
                return Ok(hit.1.clone());
            }
        }
        let info = self.fetch_userinfo(token).await?;
        if self.userinfo_cache.len() > 100_000 {
            self.userinfo_cache.clear();
        }
        self.userinfo_cache
            .insert(key, (Instant::now(), info.clone()));
        Ok(info)
    }

    async fn fetch_userinfo(&self, token: &str) -> Result<UserInfo, UserInfoFailure> {
        // The dev issuer's userinfo accepts its own ID tokens; ask it in process.
        if let Some((dev, keys)) = &self.dev {
            if unverified_issuer(token).as_deref() == Some(dev.issuer()) {
                let claims = keys
                    .verify(token)
                    .await
                    .map_err(|_| UserInfoFailure::Refused)?;
                return Ok(UserInfo {
                    sub: claims.sub,
                    email: claims.email,
                    org_id: None,
                    org_name: None,
                    org_primary_domain: None,
                    roles: OrgRoles::default(),
                });
            }
        }
        let remote = self.remote.as_ref().ok_or(UserInfoFailure::NotConfigured)?;
        let discovered = remote
            .discovered()
            .await
            .map_err(|e| UserInfoFailure::Unavailable(e.to_string()))?;
        let http = remote.http().ok_or(UserInfoFailure::NotConfigured)?;
        let client_id = remote
            .audiences()
            .first()
            .cloned()
            .unwrap_or_else(|| "kataven-hub".into());
        let client = CoreClient::from_provider_metadata(
            discovered.metadata.clone(),
            ClientId::new(client_id),
            None,
        );
        let request = client
            .user_info(AccessToken::new(token.to_owned()), None)
            .map_err(|_| UserInfoFailure::NotConfigured)?;
        let claims: UserInfoClaims<ZitadelClaims, CoreGenderClaim> =
            request.request_async(http).await.map_err(|e| match e {
                UserInfoError::Response(status, ..) if status.is_client_error() => {
                    UserInfoFailure::Refused
                }
                UserInfoError::ClaimsVerification(_) => UserInfoFailure::Refused,
                other => UserInfoFailure::Unavailable(other.to_string()),
            })?;
        let extra = claims.additional_claims();
        let roles = OrgRoles::from_claims(&extra.other, remote.project_id()).map_err(|e| {
            UserInfoFailure::Unavailable(format!("userinfo: unreadable roles claim: {e}"))
        })?;
        Ok(UserInfo {
            sub: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            org_id: extra.org_id.clone(),
            org_name: extra.org_name.clone(),
            org_primary_domain: extra.org_primary_domain.clone(),
            roles,
        })
    }
}

impl Identity {
    /// Step 4 of the pipeline: turns a bearer into a principal. Touches no tenant database.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, AuthRejection> {
        {
            if self.issuers.is_empty() {
                return Err(AuthRejection::new("no_identity_provider"));
            }
            let claims = self.verify_id_token(bearer).await?;
            Ok(Principal::User {
                roles: claims.roles,
                subject: claims.sub,
                email: claims.email,
                org_id: claims.org_id,
            })
        }
    }
}
