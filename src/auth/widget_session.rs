//! Widget session tokens: ES256 JWTs signed by this service (keys in the system database,
//! rotated), verifiable by other services through `/.well-known/jwks.json`.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::signing::SigningKeys;

pub const AUDIENCE: &str = "kataven-widget";
/// Session lifetime.
pub const TTL_SECS: i64 = 15 * 60;
/// A session may be refreshed up to this long after it expired.
pub const REFRESH_GRACE_SECS: u64 = 5 * 60;
/// A new signing key every this many days; older keys are retired after twice that.
pub const ROTATION_DAYS: i64 = 30;

/// Who a widget session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Guest,
    User,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    /// `guest:<uuid>` or `user:<external id>`.
    pub sub: String,
    pub acct: String,
    pub agent_id: Uuid,
    pub kind: SessionKind,
    pub exp: i64,
    pub iat: i64,
    pub jti: Uuid,
    /// The widget key the session was opened with (refresh re-checks it).
    pub wk: Uuid,
}

pub struct WidgetSessions {
    keys: Arc<SigningKeys>,
    issuer: String,
}

impl WidgetSessions {
    pub fn new(keys: Arc<SigningKeys>, issuer: String) -> Self {
        Self { keys, issuer }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    pub fn keys_handle(&self) -> Arc<SigningKeys> {
        self.keys.clone()
    }

    /// A new session token; returns it and its lifetime in seconds.
    pub fn mint(
        &self,
        acct: &str,
        agent_id: Uuid,
        kind: SessionKind,
        sub: String,
        wk: Uuid,
    ) -> anyhow::Result<(String, i64)> {
        let now = chrono::Utc::now().timestamp();
        let claims = SessionClaims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.to_owned(),
            sub,
            acct: acct.to_owned(),
            agent_id,
            kind,
            exp: now + TTL_SECS,
            iat: now,
            jti: Uuid::now_v7(),
            wk,
        };
        Ok((self.keys.sign(&claims)?, TTL_SECS))
    }

    /// Verifies a session token for refresh: our signature, issuer and audience; expired up
    /// to [`REFRESH_GRACE_SECS`] ago is accepted.
    /// A key id this instance does not know yet (another instance rotated and the notification
    /// is still on its way) makes it re-read the keys, at most once a second.
    pub async fn verify_for_refresh(&self, token: &str) -> Option<SessionClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::ES256 {
            return None;
        }
        let kid = header.kid.as_deref()?;
        let key = match self.keys.decoding_key(kid) {
            Some(key) => key,
            None => {
                self.keys
                    .reload_if_older(std::time::Duration::from_secs(1))
                    .await;
                self.keys.decoding_key(kid)?
            }
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = REFRESH_GRACE_SECS;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<SessionClaims>(token, &key, &validation)
            .ok()
            .map(|d| d.claims)
    }
}
