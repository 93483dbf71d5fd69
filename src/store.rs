//! What every store shares: its error type, and the one door for a change to a tenant database.
//!
//! A store (`agents::store`, `knowledge::store`, …) owns its tables' SQL and answers in
//! [`StoreError`], a domain error that knows nothing of HTTP; `error.rs` maps it to an answer in
//! one place. A tenant write goes through [`TenantWrite`]: it begins the transaction, and
//! [`TenantWrite::commit`] records the audit row from typed values and commits, so no change is
//! committed without its audit row and nothing can fail after the commit.

use std::fmt;
use std::ops::{Deref, DerefMut};

use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::audit::{self, Action, Actor, Change, Resource};

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
/// commits only together with its audit row. Derefs to the connection, for the stores.
pub struct TenantWrite<'a> {
    tx: Transaction<'a, Postgres>,
    actor: Actor<'a>,
    fields: Vec<&'static str>,
}

impl<'a> TenantWrite<'a> {
    pub async fn begin(conn: &'a mut PgConnection, actor: Actor<'a>) -> sqlx::Result<Self> {
        Ok(Self {
            tx: conn.begin().await?,
            actor,
            fields: Vec::new(),
        })
    }

    /// Names the fields an update sets, for its audit row (names only, never values).
    pub fn set_fields(&mut self, fields: Vec<&'static str>) {
        self.fields = fields;
    }

    /// Records who did `action` to `resource` (`id`), then commits: the last fallible step of
    /// a write.
    pub async fn commit(
        self,
        action: Action,
        resource: Resource,
        id: impl fmt::Display,
    ) -> sqlx::Result<()> {
        self.finish(action, resource, Some(&id.to_string())).await
    }

    /// [`TenantWrite::commit`] for a resource that is one per account (no id).
    pub async fn commit_unnamed(self, action: Action, resource: Resource) -> sqlx::Result<()> {
        self.finish(action, resource, None).await
    }

    async fn finish(
        mut self,
        action: Action,
        resource: Resource,
        resource_id: Option<&str>,
    ) -> sqlx::Result<()> {
        let change = Change {
            action,
            resource,
            resource_id,
            fields: &self.fields,
        };
        audit::record(&mut self.tx, &self.actor, &change).await?;
        self.tx.commit().await
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
