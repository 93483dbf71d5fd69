//! The built-in dev OIDC issuer (`/dev/oidc`) and its users, for `kataven-hub dev` and
//! `KATAVEN_DEV_LOGIN=true`. Its ID tokens are checked by the same validator as Zitadel's.
//! Never enabled, and never trusted, in production mode.

use std::sync::Arc;

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::signing::{Purpose, SigningKeys};
use crate::tenancy::catalog::Role;
use crate::tenancy::slug::AccountSlug;

pub const DEV_AUDIENCE: &str = "kataven-dev";
pub const TOKEN_TTL_SECS: i64 = 3600;
pub const PATH: &str = "/dev/oidc";

pub struct DevIssuer {
    issuer: String,
    pool: PgPool,
    pub keys: Arc<SigningKeys>,
}

#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    aud: [&'a str; 1],
    sub: &'a str,
    email: &'a str,
    iat: i64,
    exp: i64,
}

/// A dev user found by email and password.
pub struct DevUser {
    pub subject: String,
    pub email: String,
}

impl DevIssuer {
    pub async fn new(pool: PgPool, public_url: &str) -> anyhow::Result<Arc<Self>> {
        let keys = SigningKeys::load_or_create(pool.clone(), Purpose::DevIssuer).await?;
        Ok(Arc::new(Self {
            issuer: format!("{}{PATH}", public_url.trim_end_matches('/')),
            pool,
            keys,
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// An ID token for a dev user.
    pub fn mint(&self, user: &DevUser) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        self.keys.sign(&IdTokenClaims {
            iss: &self.issuer,
            aud: [DEV_AUDIENCE],
            sub: &user.subject,
            email: &user.email,
            iat: now,
            exp: now + TOKEN_TTL_SECS,
        })
    }

    pub fn discovery(&self) -> Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "userinfo_endpoint": format!("{i}/userinfo"),
            "jwks_uri": format!("{i}/keys"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["openid", "email"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "email"],
        })
    }

    /// Checks an email and password of `account`'s dev users. The hash is verified on a
    /// blocking thread (argon2 is deliberately slow), also for unknown emails so that timing
    /// does not tell which emails exist.
    pub async fn check_password(
        &self,
        account: &AccountSlug,
        email: &str,
        password: &str,
    ) -> anyhow::Result<Option<DevUser>> {
        let email = email.trim().to_lowercase();
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT subject, password_hash FROM dev_users WHERE account = $1 AND email = $2",
        )
        .bind(account.as_str())
        .bind(&email)
        .fetch_optional(&self.pool)
        .await?;
        let (subject, hash) = match row {
            Some((s, h)) => (Some(s), h),
            None => (None, String::new()),
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let hash = if hash.is_empty() { dummy_hash() } else { &hash };
            PasswordHash::new(hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(match (ok, subject) {
            (true, Some(subject)) => Some(DevUser { subject, email }),
            _ => None,
        })
    }
}

/// Verified against when the email is unknown, so that both paths cost the same.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        Argon2::default()
            .hash_password(b"no such user", &SaltString::generate(&mut OsRng))
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Creates (or updates the password of) a dev user and makes it a member of the account with
/// `role`. Returns its subject.
pub async fn upsert_dev_user(
    pool: &PgPool,
    account: &AccountSlug,
    email: &str,
    password: &str,
    role: Role,
) -> anyhow::Result<String> {
    let email = email.trim().to_lowercase();
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
    })
    .await??;
    let mut tx = pool.begin().await?;
    let subject: String = sqlx::query_scalar(
        "INSERT INTO dev_users (account, email, subject, password_hash) VALUES ($1, $2, $3, $4)
         ON CONFLICT (account, email) DO UPDATE SET password_hash = EXCLUDED.password_hash
         RETURNING subject",
    )
    .bind(account.as_str())
    .bind(&email)
    .bind(format!("dev-{}", uuid::Uuid::now_v7()))
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await
    .context("saving the dev user")?;
    sqlx::query(
        "INSERT INTO account_members (account, subject, role) VALUES ($1, $2, $3)
         ON CONFLICT (account, subject) DO UPDATE SET role = EXCLUDED.role",
    )
    .bind(account.as_str())
    .bind(&subject)
    .bind(role)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(subject)
}
