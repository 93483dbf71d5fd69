//! One error type for every HTTP answer that is not a success.
//!
//! Each variant has a stable machine `code`; the body is
//! `{ "error": { "code", "message", "request_id" } }`. Internal causes are logged
//! with the request id and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::limits::ClientLimit;
use crate::limits::auth_failures::AuthFailure;
use crate::request_id;

/// Seconds a client should wait before retrying after a 503.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// `ErrorKind` (derived) has one field-less variant per variant of this type, and
/// `ErrorKind::iter()` lists them all: the status and the code are defined on the kind, so every
/// code the service can answer is enumerable, and a new variant cannot be added without one
/// (the tests compare that list with the README's error table).
#[derive(Debug, thiserror::Error, strum::EnumDiscriminants)]
#[strum_discriminants(name(ErrorKind), derive(strum::EnumIter))]
pub enum ApiError {
    #[error("X-Account-ID header is required")]
    MissingAccountHeader,
    #[error("{0}")]
    InvalidAccount(String),
    /// A well-formed slug that names no account (400 `invalid_account`).
    #[error("unknown account `{0}`")]
    UnknownAccount(String),
    #[error("account `kataven-admin` is reserved")]
    ReservedAccount,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("account is suspended")]
    AccountSuspended,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("X-Account-ID does not match the API key's account")]
    AccountMismatch,
    #[error("this endpoint needs an admin of the account and the header `X-Admin: true`")]
    AdminRequired,
    #[error("API keys cannot manage API keys; sign in as an admin")]
    ApiKeyNotAllowed,
    #[error("{0}")]
    NotFound(String),
    /// The body is malformed or a field is missing, mistyped or out of range; `field` names it.
    #[error("{message}")]
    InvalidBody {
        message: String,
        field: Option<String>,
    },
    /// A query parameter is malformed or out of range.
    #[error("{message}")]
    InvalidQuery {
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    PayloadTooLarge { message: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Over an account cap (pipeline step 9).
    #[error("rate_limited: {} ({}) exceeded", .0.dimension.label(), .0.cap)]
    RateLimited(Box<crate::limits::Refusal>),
    /// Over a limit of public endpoints per client (see [`ClientLimit`]).
    #[error("rate_limited: {}", .limit.describe())]
    ClientRateLimited {
        limit: ClientLimit,
        retry_after_secs: u64,
    },
    /// A widget key that is malformed, unknown or disabled.
    #[error("unknown or disabled widget key")]
    InvalidClientKey,
    /// The page's origin is not on the widget key's allowlist.
    #[error("this origin may not use this widget key")]
    OriginNotAllowed,
    /// The agent's widget policy refuses this.
    #[error("{0}")]
    WidgetNotAllowed(&'static str),
    /// A dependency (database, pool budget) cannot serve right now; retry later.
    #[error("{message}")]
    Unavailable {
        message: &'static str,
        retry_after_secs: u64,
    },
    /// The account's own database is missing or refuses connections although its catalog row
    /// exists: an operator has to act; other accounts are unaffected.
    #[error("this account's database is unavailable; retry later")]
    AccountUnavailable { retry_after_secs: u64 },
    /// The account's database is being moved to another server and its writes are paused for
    /// the cut-over (`docs/fleet.md`); retry in a moment.
    #[error("this account is moving to another database server; retry in a moment")]
    AccountMoving,
    /// An `Idempotency-Key` header that is not 1–255 visible ASCII characters, or more than one.
    #[error("Idempotency-Key must be one value of 1–255 visible ASCII characters")]
    InvalidIdempotencyKey,
    /// The key was used before, by this caller, for another request.
    #[error("this Idempotency-Key was used for another request; use a new key for a new request")]
    IdempotencyKeyReused,
    /// A request with the same key is still running.
    #[error("a request with this Idempotency-Key is still running; retry after it finishes")]
    IdempotencyKeyInUse,
    /// Not an error: the stored answer of an earlier request with the same `Idempotency-Key`,
    /// given again (see `idempotency`). Raised by a write's door, so that the handler stops
    /// there; never listed among the error codes.
    #[error("replayed")]
    #[strum_discriminants(strum(disabled))]
    Replayed(Box<crate::idempotency::Replay>),
    /// Something we did not expect. The cause is logged, the client sees a generic message.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Every error answer: `{ "error": { "code", "message", "request_id", "field"? } }`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_account", "message": "unknown account `acme`", "request_id": "0194f3a2-7c1e-7d2a-9b1e-6f0a3c2d1e4f"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable machine code: `missing_account_header`, `invalid_account`, `reserved_account`,
    /// `unauthenticated`, `account_suspended`, `forbidden`, `account_mismatch`,
    /// `admin_required`, `api_key_not_allowed`, `invalid_client_key`, `origin_not_allowed`,
    /// `widget_not_allowed`, `not_found`, `invalid_body`, `invalid_query`, `conflict`, `rate_limited`,
    /// `payload_too_large`, `method_not_allowed`, `invalid_idempotency_key`,
    /// `idempotency_key_reused`, `idempotency_key_in_use`, `unavailable`, `account_unavailable`,
    /// `account_moving`, `internal`.
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The offending field of an `invalid_body` or `invalid_query` error, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The tripped limit of a `rate_limited` error: `minute`, `hour`, `day`, `concurrent`
    /// (account caps), `ip` (public endpoints), `client_key` (a widget key's quota), `auth`
    /// (failed authentications from this address) or `user_tokens` (pending user tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

impl From<crate::tenancy::pool_error::PoolError> for ApiError {
    fn from(e: crate::tenancy::pool_error::PoolError) -> Self {
        use crate::tenancy::pool_error::PoolError;
        match e {
            PoolError::DatabaseDown { retry_after_secs } => {
                Self::AccountUnavailable { retry_after_secs }
            }
            PoolError::Internal(e) => Self::Internal(e),
            PoolError::Moved => Self::AccountMoving,
            other => Self::unavailable(other.message()),
        }
    }
}

impl ApiError {
    pub fn unavailable(message: &'static str) -> Self {
        Self::Unavailable {
            message,
            retry_after_secs: UNAVAILABLE_RETRY_AFTER_SECS,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    /// An `invalid_body` error about `field`.
    pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::InvalidBody {
            message: format!("invalid body: `{field}` {problem}"),
            field: Some(field.to_owned()),
        }
    }

    /// 400 `invalid_query`: query parameter `field` is malformed or out of range.
    pub fn invalid_param(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::InvalidQuery {
            message: format!("`{field}` {problem}"),
            field: Some(field.to_owned()),
        }
    }

    /// The kind of this error (what decides its status and code).
    pub fn kind(&self) -> ErrorKind {
        self.into()
    }

    pub fn status(&self) -> StatusCode {
        self.kind().status()
    }

    pub fn code(&self) -> &'static str {
        self.kind().code()
    }
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::MissingAccountHeader
            | Self::InvalidAccount
            | Self::UnknownAccount
            | Self::AccountMismatch
            | Self::InvalidBody
            | Self::InvalidQuery
            | Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::ReservedAccount
            | Self::AccountSuspended
            | Self::Forbidden
            | Self::AdminRequired
            | Self::ApiKeyNotAllowed => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::RateLimited | Self::ClientRateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidClientKey => StatusCode::UNAUTHORIZED,
            Self::OriginNotAllowed | Self::WidgetNotAllowed => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict | Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Replayed => StatusCode::OK,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable | Self::AccountUnavailable | Self::AccountMoving => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine code (`error.code`).
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingAccountHeader => "missing_account_header",
            Self::InvalidAccount | Self::UnknownAccount => "invalid_account",
            Self::ReservedAccount => "reserved_account",
            Self::Unauthenticated => "unauthenticated",
            Self::AccountSuspended => "account_suspended",
            Self::Forbidden => "forbidden",
            Self::AccountMismatch => "account_mismatch",
            Self::AdminRequired => "admin_required",
            Self::ApiKeyNotAllowed => "api_key_not_allowed",
            Self::NotFound => "not_found",
            Self::InvalidBody => "invalid_body",
            Self::InvalidQuery => "invalid_query",
            Self::Conflict => "conflict",
            Self::RateLimited | Self::ClientRateLimited => "rate_limited",
            Self::InvalidClientKey => "invalid_client_key",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::WidgetNotAllowed => "widget_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "unavailable",
            Self::AccountUnavailable => "account_unavailable",
            Self::AccountMoving => "account_moving",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
            Self::Replayed => "replayed",
            Self::Internal => "internal",
        }
    }

    /// Every code the service can answer with, each once, in declaration order.
    pub fn all_codes() -> Vec<&'static str> {
        use strum::IntoEnumIterator;
        let mut codes: Vec<&'static str> = Vec::new();
        for kind in Self::iter() {
            if !codes.contains(&kind.code()) {
                codes.push(kind.code());
            }
        }
        codes
    }
}

/// The HTTP answer to a store's domain error: the one place stores meet HTTP.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } => Self::Conflict(e.to_string()),
            StoreError::BuiltIn => Self::Forbidden("built-in entries cannot be deleted"),
            StoreError::Dangling { field, message } => Self::invalid_field(field, message),
            StoreError::Database(e) => e.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            // 57014 query_canceled: the statement ran into `statement_timeout`.
            if db.code().as_deref() == Some("57014") {
                return Self::unavailable("the database took too long to answer");
            }
            // The fence of a database whose account moved to another server.
            if db.code().as_deref() == Some(crate::fleet::moves::FENCE_SQLSTATE) {
                return Self::AccountMoving;
            }
        }
        if is_unavailable(&err) {
            // One line per burst, not one per request, while a database is down.
            static LOG: crate::log_throttle::Throttle = crate::log_throttle::Throttle::new(10);
            if let Some(suppressed) = LOG.admit() {
                tracing::warn!(error = %err, suppressed, "database unavailable");
            }
            return Self::unavailable("the database is temporarily unavailable");
        }
        // 22021 character_not_in_repertoire (U+0000 in text), 22P05 untranslatable_character
        // (U+0000 in jsonb): input the database cannot store, e.g. from a path segment.
        if let sqlx::Error::Database(db) = &err {
            if matches!(db.code().as_deref(), Some("22021" | "22P05")) {
                return Self::InvalidBody {
                    message: "invalid input: text must not contain U+0000".into(),
                    field: None,
                };
            }
        }
        Self::Internal(err.into())
    }
}

/// Errors that mean "the database cannot serve now" rather than "the query is wrong".
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        // A protocol error means the stream is out of step (a connection cut mid-message).
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // Class 08: connection exception, 53: insufficient resources,
            // 57P0x: admin/crash shutdown, cannot connect now.
            db.code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P"))
        }
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Replayed(replay) = self {
            return replay.into_response();
        }
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = ?cause, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                request_id: request_id::current(),
                field: match &self {
                    Self::InvalidBody { field, .. } | Self::InvalidQuery { field, .. } => {
                        field.clone()
                    }
                    _ => None,
                },
                limit: match &self {
                    Self::RateLimited(r) => Some(r.dimension.name().to_owned()),
                    Self::ClientRateLimited { limit, .. } => Some(limit.name().to_owned()),
                    _ => None,
                },
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            self,
            Self::Unauthenticated(_) | Self::InvalidClientKey | Self::UnknownAccount(_)
        ) {
            // Charged to the client's budget of failed authentications.
            response.extensions_mut().insert(AuthFailure);
        }
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable {
                retry_after_secs, ..
            }
            | Self::AccountUnavailable { retry_after_secs }
            | Self::ClientRateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
            }
            Self::RateLimited(r) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_secs));
                headers.insert("ratelimit-policy", crate::limits::policy_header(&r.limits));
                headers.insert(
                    "ratelimit",
                    crate::limits::ratelimit_header(r.dimension, 0, r.retry_after_secs),
                );
            }
            Self::IdempotencyKeyInUse | Self::AccountMoving => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
