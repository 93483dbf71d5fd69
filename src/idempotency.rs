//! `Idempotency-Key` on the management API's writes (the IETF httpapi draft "The
//! Idempotency-Key HTTP Header Field", with Stripe's semantics). See docs/idempotency.md.
//!
//! How a write with a key runs:
//! 1. [`middleware`] (around the management routes) checks the header — 1–255 visible ASCII
//!    characters, else 400 `invalid_idempotency_key` — reads the body (within the body limit)
//!    and fingerprints the request: SHA-256 of the method, the path relative to the version
//!    prefix (so `/api/v1/…`, `/api/…`, `/v1/…` and `/hub-api/…` agree), the query and the body.
//!    It leaves a [`Pending`] in the request's extensions.
//! 2. The write's door (`TenantDb::write` for the tenant database, `TenantDb::catalog_write` for
//!    the catalog) calls [`Pending::enter`] first in its transaction: a transaction-scoped
//!    advisory lock on (owner, key) — held by another transaction: 409 `idempotency_key_in_use`
//!    — then the stored answer of (owner, key): the same fingerprint is replayed
//!    ([`ApiError::Replayed`]), another one is 422 `idempotency_key_reused`.
//! 3. The door's commit stores the answer in the same transaction as the change
//!    ([`Entered::record`]): both commit or neither does, so a retry after a crash at any point
//!    either runs the write (nothing was committed) or replays it (everything was).
//! 4. After the handler, [`middleware`] stores a 4xx answer that the handler gave after entering
//!    the door (a 404, 409 or 422 found inside the transaction, which was rolled back), in a
//!    transaction of its own. 5xx, 429, 401 and 403 answers are never stored; nor are answers
//!    given before the door (a malformed body, a refused caller): a retry runs again.
//!
//! The owner is the caller (`user:<sub>`, `api_key:<id>`); in the catalog, which every account
//! shares, it is prefixed with the account. Both stores have the same `idempotency_keys` table,
//! swept of expired rows hourly (`KATAVEN_IDEMPOTENCY_TTL_HOURS`, default 24).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::catalog::Account;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The response headers stored with an answer and replayed (the rest belongs to the request
/// that carries the replay: its request id, rate-limit headers).
const STORED_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::LOCATION];

/// The class of the two-key advisory locks taken on (owner, key): "KI".
const LOCK_CLASS: i32 = 0x4b49;

/// The methods that take a key: the writes.
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The key of a header value: 1–[`MAX_KEY_LEN`] visible ASCII characters (`!` to `~`).
pub fn parse_key(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| (b'!'..=b'~').contains(b));
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !visible {
        return None;
    }
    value.to_str().ok()
}

/// A keyed write on its way: the key, the request's fingerprint, and how far it got.
pub struct Pending {
    key: String,
    fingerprint: [u8; 32],
    phase: parking_lot::Mutex<Phase>,
}

enum Phase {
    /// The door has not been reached.
    Waiting,
    /// A door was entered: the answer belongs in `store` under `owner`.
    Entered { store: Store, owner: String },
    /// The answer is stored, or was replayed.
    Settled,
}

/// Where a keyed write's answer is stored: the account's database or the catalog.
#[derive(Clone)]
pub enum Store {
    Tenant(AppState, Account),
    Catalog(AppState),
}

impl Store {
    /// A connection to the store, for an answer stored after the handler.
    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut PgConnection) -> sqlx::Result<T>,
    ) -> anyhow::Result<T> {
        match self {
            Store::Tenant(state, account) => {
                let mut conn = state.pools.acquire(account).await?;
                Ok(f(&mut conn).await?)
            }
            Store::Catalog(state) => {
                let mut conn = state.catalog.pool().acquire().await?;
                Ok(f(&mut conn).await?)
            }
        }
    }

    fn ttl_secs(&self) -> f64 {
        let (Store::Tenant(state, _) | Store::Catalog(state)) = self;
        state.config.idempotency_ttl().as_secs_f64()
    }
}

/// A stored answer.
#[derive(sqlx::FromRow)]
struct StoredRow {
    fingerprint: Vec<u8>,
    status: i16,
    headers: sqlx::types::Json<Vec<(String, String)>>,
    body: Vec<u8>,
}

/// A stored answer to give again (see [`ApiError::Replayed`]).
#[derive(Debug)]
pub struct Replay {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl IntoResponse for Replay {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name),
                HeaderValue::try_from(value.as_str()),
            ) {
                headers.insert(name, value);
            }
        }
        headers.insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
        response
    }
}

impl Pending {
    /// The keyed write of this request, if it has one.
    pub fn of(extensions: &axum::http::Extensions) -> Option<Arc<Pending>> {
        extensions.get::<Arc<Pending>>().cloned()
    }
}

/// Where a keyed write enters: its key, the store its change (and so its answer) goes to, and
/// the caller who owns the key there.
pub struct Door {
    pub pending: Arc<Pending>,
    pub store: Store,
    pub owner: String,
}

impl Door {
    /// The first step of a write's transaction (`conn`): answers the stored answer (as
    /// [`ApiError::Replayed`]), 409 `idempotency_key_in_use` or 422 `idempotency_key_reused`,
    /// or lets the write run, holding the key until the transaction ends.
    pub async fn enter(self, conn: &mut PgConnection) -> ApiResult<Entered> {
        let Door {
            pending,
            store,
            owner,
        } = self;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(lock_key(&owner, &pending.key))
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Err(ApiError::IdempotencyKeyInUse);
        }
        let stored: Option<StoredRow> = sqlx::query_as(
            "SELECT fingerprint, status, headers, body FROM idempotency_keys
             WHERE owner = $1 AND key = $2 AND expires_at > now()",
        )
        .bind(&owner)
        .bind(&pending.key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = stored {
            if row.fingerprint != pending.fingerprint {
                return Err(ApiError::IdempotencyKeyReused);
            }
            *pending.phase.lock() = Phase::Settled;
            let status = StatusCode::from_u16(row.status as u16)
                .map_err(|e| ApiError::Internal(e.into()))?;
            return Err(ApiError::Replayed(Box::new(Replay {
                status,
                headers: row.headers.0,
                body: row.body,
            })));
        }
        let ttl_secs = store.ttl_secs();
        *pending.phase.lock() = Phase::Entered {
            store,
            owner: owner.clone(),
        };
        Ok(Entered {
            pending,
            owner,
            ttl_secs,
        })
    }
}

/// A keyed write that may run: [`Entered::record`] stores its answer in its transaction.
pub struct Entered {
    pending: Arc<Pending>,
    owner: String,
    ttl_secs: f64,
}

impl Entered {
    /// Stores `answer` (or `stored`, the answer without what must not be kept, such as a new
    /// key's secret) on the write's transaction, and gives `answer` back. The caller commits.
    pub async fn record(
        self,
        conn: &mut PgConnection,
        answer: Response,
        stored: Option<Response>,
    ) -> ApiResult<Response> {
        let (answer, bytes) = buffered(answer).await?;
        let stored_bytes = match stored {
            Some(stored) => buffered(stored).await?.1,
            None => bytes,
        };
        store_answer(
            conn,
            &self.owner,
            &self.pending,
            answer.status(),
            answer.headers(),
            &stored_bytes,
            self.ttl_secs,
        )
        .await?;
        *self.pending.phase.lock() = Phase::Settled;
        Ok(answer)
    }
}

/// The answer with its body read (so that it can be both stored and sent), and the body.
async fn buffered(answer: Response) -> ApiResult<(Response, Bytes)> {
    let (parts, body) = answer.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading an answer: {e}")))?;
    Ok((
        Response::from_parts(parts, Body::from(bytes.clone())),
        bytes,
    ))
}

/// Inserts the answer of (owner, key), replacing an expired one (the caller holds the key's
/// advisory lock, so no live one exists).
async fn store_answer(
    conn: &mut PgConnection,
    owner: &str,
    pending: &Pending,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    ttl_secs: f64,
) -> sqlx::Result<()> {
    let headers: Vec<(String, String)> = STORED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    sqlx::query(
        "INSERT INTO idempotency_keys (owner, key, fingerprint, status, headers, body, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
         ON CONFLICT (owner, key) DO UPDATE SET
             fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
             headers = EXCLUDED.headers, body = EXCLUDED.body,
             created_at = now(), expires_at = EXCLUDED.expires_at
         WHERE idempotency_keys.expires_at <= now()",
    )
    .bind(owner)
    .bind(&pending.key)
    .bind(&pending.fingerprint[..])
    .bind(status.as_u16() as i16)
    .bind(sqlx::types::Json(headers))
    .bind(body)
    .bind(ttl_secs)
    .execute(conn)
    .await?;
    Ok(())
}

/// The second half of the advisory lock's key: 32 bits of SHA-256 of (owner, key). A collision
/// only makes one of two simultaneous writes answer 409.
fn lock_key(owner: &str, key: &str) -> i32 {
    let digest = Sha256::new()
        .chain_update(owner.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Whether an answer is kept for replays: not a server error, a refusal of the caller (401,
/// 403) or a rate limit (429), which a retry should meet afresh.
pub fn is_stored(status: StatusCode) -> bool {
    !(status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        ))
}

/// SHA-256 of what makes two requests the same: method, path, query and body.
fn fingerprint(method: &Method, uri: &axum::http::Uri, body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(method.as_str().as_bytes())
        .chain_update([0])
        .chain_update(uri.path().as_bytes())
        .chain_update([0])
        .chain_update(uri.query().unwrap_or("").as_bytes())
        .chain_update([0])
        .chain_update(body)
        .finalize()
        .into()
}

/// Around the management routes (mounted under each version prefix, so the path it sees is
/// the same for every alias): takes the `Idempotency-Key` of a write (see the module's docs).
pub async fn middleware(req: Request, next: Next) -> Response {
    if !is_write(req.method()) {
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(req).await;
    };
    let Some(key) = parse_key(value).map(str::to_owned) else {
        return ApiError::InvalidIdempotencyKey.into_response();
    };
    if req.headers().get_all(&IDEMPOTENCY_KEY).iter().count() > 1 {
        return ApiError::InvalidIdempotencyKey.into_response();
    }
    let (parts, body) = req.into_parts();
    // Through the `Bytes` extractor, so that the body limit and its answer are the usual ones.
    let head = Request::from_parts(parts.clone(), body);
    let bytes = match Bytes::from_request(head, &()).await {
        Ok(bytes) => bytes,
        Err(rejection) => return crate::json::bytes_error(rejection).into_response(),
    };
    let pending = Arc::new(Pending {
        fingerprint: fingerprint(&parts.method, &parts.uri, &bytes),
        key,
        phase: parking_lot::Mutex::new(Phase::Waiting),
    });
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(pending.clone());
    let response = next.run(req).await;
    settle(&pending, response).await
}

/// After the handler: stores a 4xx answer given after the door was entered (its transaction
/// was rolled back, so nothing else holds it), in a transaction of its own.
async fn settle(pending: &Pending, response: Response) -> Response {
    let phase = std::mem::replace(&mut *pending.phase.lock(), Phase::Settled);
    let Phase::Entered { store, owner } = phase else {
        if matches!(phase, Phase::Waiting) && response.status().is_success() {
            tracing::error!("a write answered without passing its door: its answer is not kept");
        }
        return response;
    };
    if !is_stored(response.status()) {
        return response;
    }
    let (response, bytes) = match buffered(response).await {
        Ok(buffered) => buffered,
        Err(e) => return e.into_response(),
    };
    let ttl_secs = store.ttl_secs();
    let (status, headers) = (response.status(), response.headers().clone());
    let stored = store
        .run(async |conn: &mut PgConnection| {
            let mut tx = sqlx::Connection::begin(conn).await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(LOCK_CLASS)
                .bind(lock_key(&owner, &pending.key))
                .execute(&mut *tx)
                .await?;
            store_answer(&mut tx, &owner, pending, status, &headers, &bytes, ttl_secs).await?;
            tx.commit().await
        })
        .await;
    if let Err(e) = stored {
        // The answer stands; a retry runs the request again.
        tracing::warn!(error = %e, "idempotency: an error answer could not be kept");
    }
    response
}

/// Deletes expired answers, at most `batch` at a time; answers how many.
pub async fn delete_expired(conn: &mut PgConnection, batch: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))",
    )
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        let ok = |s: &str| parse_key(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("a"));
        assert!(ok("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(ok(&"k".repeat(255)));
        assert!(ok("\"quoted\""));
        assert!(!ok(""));
        assert!(!ok(&"k".repeat(256)));
        assert!(!ok("with space"));
        assert!(!ok("tab\there"));
        assert!(parse_key(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
    }

    #[test]
    fn stored_answers_exclude_server_errors_refusals_and_limits() {
        for status in [200, 201, 204, 400, 404, 409, 422] {
            assert!(is_stored(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [401, 403, 429, 500, 503] {
            assert!(
                !is_stored(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[test]
    fn fingerprints_tell_method_path_query_and_body_apart() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().unwrap();
        let base = fingerprint(&Method::POST, &uri("/agents"), b"{}");
        assert_eq!(base, fingerprint(&Method::POST, &uri("/agents"), b"{}"));
        assert_ne!(base, fingerprint(&Method::PATCH, &uri("/agents"), b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, &uri("/agents/x"), b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, &uri("/agents?a=1"), b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, &uri("/agents"), b"{ }"));
        // The separators keep a path's end from being read as the query's start.
        assert_ne!(
            fingerprint(&Method::POST, &uri("/a?b"), b""),
            fingerprint(&Method::POST, &uri("/ab"), b"")
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(4096))]

        /// Any header value: a key exactly when it is 1–255 bytes of `!`..`~`, and then the
        /// whole value.
        #[test]
        fn any_value_is_a_key_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let valid = !bytes.is_empty()
                && bytes.len() <= MAX_KEY_LEN
                && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
            match parse_key(&value) {
                Some(key) => {
                    prop_assert!(valid);
                    prop_assert_eq!(key.as_bytes(), &bytes[..]);
                }
                None => prop_assert!(!valid),
            }
        }
    }
}
