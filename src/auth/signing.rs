//! ES256 keys the service signs tokens with, kept in the system database so that every
//! instance signs and verifies with the same keys and tokens survive restarts.

use std::sync::Arc;

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// One signing key: its id, the private key, and its public JWK.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    pub public_jwk: Value,
}

/// What a set of signing keys signs: the `purpose` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Purpose {
    /// The dev issuer's ID tokens (dev mode only).
    DevIssuer,
    /// Widget session tokens.
    WidgetSession,
}

/// The keys of one purpose: the newest signs, all non-retired ones are published.
pub struct SigningKeys {
    pool: PgPool,
    purpose: Purpose,
    keys: RwLock<Vec<Arc<SigningKey>>>,
    loaded_at: parking_lot::Mutex<std::time::Instant>,
}

impl SigningKeys {
    /// Loads the purpose's keys, creating the first one if there is none. Instances starting
    /// together serialise on an advisory lock so that only one key is created.
    pub async fn load_or_create(pool: PgPool, purpose: Purpose) -> anyhow::Result<Arc<Self>> {
        let this = Arc::new(Self {
            pool,
            purpose,
            keys: RwLock::new(Vec::new()),
            loaded_at: parking_lot::Mutex::new(std::time::Instant::now()),
        });
        let mut tx = this.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kataven:signing_keys:' || $1))")
            .bind(<&str>::from(purpose))
            .execute(&mut *tx)
            .await?;
        let existing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM signing_keys WHERE purpose = $1 AND retired_at IS NULL",
        )
        .bind(<&str>::from(purpose))
        .fetch_one(&mut *tx)
        .await?;
        if existing == 0 {
            insert_new_key(&mut tx, purpose).await?;
        }
        tx.commit().await?;
        this.reload().await?;
        Ok(this)
    }

    /// Re-reads the keys from the database.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let rows: Vec<(String, String, Value)> = sqlx::query_as(
            "SELECT kid, private_pem, public_jwk FROM signing_keys
             WHERE purpose = $1 AND retired_at IS NULL ORDER BY created_at DESC",
        )
        .bind(<&str>::from(self.purpose))
        .fetch_all(&self.pool)
        .await?;
        let keys = rows
            .into_iter()
            .map(|(kid, pem, public_jwk)| {
                let encoding =
                    EncodingKey::from_ec_pem(pem.as_bytes()).context("stored signing key")?;
                Ok(Arc::new(SigningKey {
                    kid,
                    encoding,
                    public_jwk,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        *self.keys.write() = keys;
        *self.loaded_at.lock() = std::time::Instant::now();
        Ok(())
    }

    /// Re-reads the keys if they were read longer than `age` ago (another instance may have
    /// rotated them). Failures keep the keys in memory.
    pub async fn reload_if_older(&self, age: std::time::Duration) {
        {
            let mut loaded_at = self.loaded_at.lock();
            if loaded_at.elapsed() < age {
                return;
            }
            // Claim this reload so that concurrent callers do not all go to the database.
            *loaded_at = std::time::Instant::now();
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, purpose = <&str>::from(self.purpose), "could not re-read signing keys");
        }
    }

    /// Creates a new signing key when the newest is older than `max_age`, and retires keys
    /// older than twice that (tokens they signed have long expired). Safe to run on several
    /// instances at once (advisory lock). Returns whether a key was created.
    pub async fn rotate_if_older(&self, max_age: chrono::Duration) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kataven:signing_keys:' || $1))")
            .bind(<&str>::from(self.purpose))
            .execute(&mut *tx)
            .await?;
        let newest: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT max(created_at) FROM signing_keys WHERE purpose = $1 AND retired_at IS NULL",
        )
        .bind(<&str>::from(self.purpose))
        .fetch_one(&mut *tx)
        .await?;
        let rotate = newest.is_none_or(|at| at < chrono::Utc::now() - max_age);
        if rotate {
            insert_new_key(&mut tx, self.purpose).await?;
            sqlx::query(
                "UPDATE signing_keys SET retired_at = now()
                 WHERE purpose = $1 AND retired_at IS NULL AND created_at < now() - $2::interval",
            )
            .bind(<&str>::from(self.purpose))
            .bind(format!("{} seconds", (max_age * 2).num_seconds()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.reload().await?;
        Ok(rotate)
    }

    /// The public key of `kid`, to verify tokens this service signed.
    pub fn decoding_key(&self, kid: &str) -> Option<jsonwebtoken::DecodingKey> {
        let keys = self.keys.read();
        let key = keys.iter().find(|k| k.kid == kid)?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk.clone()).ok()?;
        jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()
    }

    /// Signs `claims` with the newest key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let key = self
            .keys
            .read()
            .first()
            .cloned()
            .context("no signing key")?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// The public keys, as a JWK set.
    pub fn jwks(&self) -> JwkSet {
        let keys = self
            .keys
            .read()
            .iter()
            .filter_map(|k| serde_json::from_value(k.public_jwk.clone()).ok())
            .collect();
        JwkSet { keys }
    }
}

async fn insert_new_key(tx: &mut sqlx::PgConnection, purpose: Purpose) -> anyhow::Result<()> {
    let purpose: &str = purpose.into();
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the key")?;
    let kid = format!("{purpose}-{}", uuid::Uuid::now_v7().simple());
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string())?;
    jwk["kid"] = Value::String(kid.clone());
    jwk["alg"] = Value::String("ES256".into());
    jwk["use"] = Value::String("sig".into());
    sqlx::query(
        "INSERT INTO signing_keys (kid, purpose, algorithm, private_pem, public_jwk)
         VALUES ($1, $2, 'ES256', $3, $4)",
    )
    .bind(&kid)
    .bind(purpose)
    .bind(pem.as_str())
    .bind(&jwk)
    .execute(tx)
    .await?;
    Ok(())
}
