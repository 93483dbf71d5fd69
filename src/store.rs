//! What every store shares: its error type, and the doors for changes.
//!
//! A store (`agents::store`, `knowledge::store`, …) owns its tables' SQL and answers in
//! [`StoreError`], a domain error that knows nothing of HTTP; `error.rs` maps it to an answer in
//! one place. A tenant write goes through [`TenantWrite`]: it begins the transaction, and
//! [`TenantWrite::commit`] records the audit row from typed values, keeps the answer of a write
//! made with an `Idempotency-Key` and commits, so no change is committed without its audit row
//! and its kept answer, and nothing can fail after the commit. A change to the catalog (keys,
//! members) goes through [`CatalogWrite`] the same way (its audit row follows the commit, in the
//! account's database; see `keys::changed`).

use std::fmt;
use std::ops::{Deref, DerefMut};

use axum::response::{IntoResponse, Response};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::audit::{self, Action, Actor, Change, Resource};
use crate::error::ApiResult;
use crate::idempotency::Entered;

/// What a store can answer besides its rows.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing matches; `what` completes "no such …" (`agent`, `playbook on this agent`).
    #[error("no such {what}")]
    NotFound { what: &'static str },
    /// A unique name is taken.
    #[error("a {what} named `{name}` already exists")]
    Conflict { what: &'static str, name: String },
    /// Built-in entries are part of the platform and cannot be deleted.
    #[error("built-in entries cannot be deleted")]
    BuiltIn,
    /// A field of the request names something that does not exist.
    #[error("{field}: {message}")]
    Dangling {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// `Ok(row)`, or [`StoreError::NotFound`] when the lookup found nothing.
    pub fn found<T>(row: Option<T>, what: &'static str) -> StoreResult<T> {
        row.ok_or(Self::NotFound { what })
    }

    /// Maps a unique violation to [`StoreError::Conflict`], anything else to
    /// [`StoreError::Database`].
    pub fn conflict_on_unique(what: &'static str, name: &str) -> impl FnOnce(sqlx::Error) -> Self {
        let name = name.to_owned();
        move |e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict { what, name },
            _ => Self::Database(e),
        }
    }
}

/// A change to a tenant database in progress: a transaction on the caller's connection that
/// commits only together with its audit row (and the kept answer of a write with an
/// `Idempotency-Key`). Derefs to the connection, for the stores. Begun by `TenantDb::write`.
pub struct TenantWrite<'a> {
    tx: Transaction<'a, Postgres>,
    actor: Actor<'a>,
    fields: Vec<&'static str>,
    idempotency: Option<Entered>,
}

impl<'a> TenantWrite<'a> {
    /// `idempotency`: the request's key, entered as the transaction's first step.
    pub async fn begin(
        conn: &'a mut PgConnection,
        actor: Actor<'a>,
        idempotency: Option<crate::idempotency::Door>,
    ) -> ApiResult<Self> {
        let mut tx = conn.begin().await?;
        let idempotency = match idempotency {
            Some(door) => Some(door.enter(&mut tx).await?),
            None => None,
        };
        Ok(Self {
            tx,
            actor,
            fields: Vec::new(),
            idempotency,
        })
    }

    /// Names the fields an update sets, for its audit row (names only, never values).
    pub fn set_fields(&mut self, fields: Vec<&'static str>) {
        self.fields = fields;
    }

    /// Records who did `action` to `resource` (`id`), keeps `answer` for retries with the
    /// request's `Idempotency-Key`, then commits: the last fallible step of a write. Answers
    /// `answer`.
    pub async fn commit(
        self,
        action: Action,
        resource: Resource,
        id: impl fmt::Display,
        answer: impl IntoResponse,
    ) -> ApiResult<Response> {
        self.finish(
            action,
            resource,
            Some(&id.to_string()),
            answer.into_response(),
        )
        .await
    }

    /// [`TenantWrite::commit`] for a resource that is one per account (no id).
    pub async fn commit_unnamed(
        self,
        action: Action,
        resource: Resource,
        answer: impl IntoResponse,
    ) -> ApiResult<Response> {
        self.finish(action, resource, None, answer.into_response())
            .await
    }

    async fn finish(
        mut self,
        action: Action,
        resource: Resource,
        resource_id: Option<&str>,
        answer: Response,
    ) -> ApiResult<Response> {
        let change = Change {
            action,
            resource,
            resource_id,
            fields: &self.fields,
        };
        audit::record(&mut self.tx, &self.actor, &change).await?;
        let answer = match self.idempotency.take() {
            Some(entered) => entered.record(&mut self.tx, answer, None).await?,
            None => answer,
        };
        self.tx.commit().await?;
        Ok(answer)
    }
}

/// A change to the catalog in progress: a transaction that commits together with the kept
/// answer of a write made with an `Idempotency-Key`. Derefs to the connection, for the stores.
/// Begun by `TenantDb::catalog_write`; what follows the commit (caches, the audit row) is the
/// caller's (`keys::changed`).
pub struct CatalogWrite {
    tx: Transaction<'static, Postgres>,
    idempotency: Option<Entered>,
}

impl CatalogWrite {
    pub async fn begin(
        pool: &PgPool,
        idempotency: Option<crate::idempotency::Door>,
    ) -> ApiResult<Self> {
        let mut tx = pool.begin().await?;
        let idempotency = match idempotency {
            Some(door) => Some(door.enter(&mut tx).await?),
            None => None,
        };
        Ok(Self { tx, idempotency })
    }

    /// Keeps `answer` for retries with the request's key, then commits. Answers `answer`.
    pub async fn commit(self, answer: impl IntoResponse) -> ApiResult<Response> {
        self.finish(answer.into_response(), None).await
    }

    /// [`CatalogWrite::commit`] for an answer that carries a secret shown once: retries are
    /// answered `kept` (the answer without the secret) instead.
    pub async fn commit_keeping(
        self,
        answer: impl IntoResponse,
        kept: impl IntoResponse,
    ) -> ApiResult<Response> {
        self.finish(answer.into_response(), Some(kept.into_response()))
            .await
    }

    async fn finish(mut self, answer: Response, kept: Option<Response>) -> ApiResult<Response> {
        let answer = match self.idempotency.take() {
            Some(entered) => entered.record(&mut self.tx, answer, kept).await?,
            None => answer,
        };
        self.tx.commit().await?;
        Ok(answer)
    }
}

impl Deref for CatalogWrite {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for CatalogWrite {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl Deref for TenantWrite<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantWrite<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
