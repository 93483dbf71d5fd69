//! The `audit_log` table's SQL: the row every change writes, the newest-first keyset pages of
//! the readable log, and the retention sweep.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Action, Actor, Change, Resource};
use crate::store::StoreResult;

pub(super) async fn insert(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    change: &Change<'_>,
) -> sqlx::Result<()> {
    let origin = actor.origin;
    sqlx::query(
        "INSERT INTO audit_log (id, principal_kind, principal_id, action, resource, resource_id,
            request_id, ip, user_agent, fields)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(Uuid::now_v7())
    .bind(<&str>::from(actor.kind))
    .bind(actor.id)
    .bind(<&str>::from(change.action))
    .bind(<&str>::from(change.resource))
    .bind(change.resource_id)
    .bind(origin.request_id.as_deref())
    .bind(origin.ip.map(|ip| ip.to_string()))
    .bind(origin.user_agent.as_deref())
    .bind(change.fields)
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of the log, as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct Row {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub principal_kind: String,
    pub principal_id: String,
    pub action: String,
    pub resource: String,
    pub resource_id: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub fields: Vec<String>,
}

/// Where a page starts: after the row at `(at, id)` in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// Which rows a page holds: each `None` filters nothing. `since` is inclusive, `until`
/// exclusive; rows older than `retained_since` are never answered (the sweep deletes them).
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<Action>,
    pub resource: Option<Resource>,
    pub resource_id: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub retained_since: Option<DateTime<Utc>>,
}

/// Up to `limit` rows matching `filter`, newest first (by `at`, then id), after `after`.
/// Rows added meanwhile are newer than any page already read, so a walk over the pages sees
/// each older row once.
pub async fn page(
    conn: &mut PgConnection,
    filter: &Filter<'_>,
    after: Option<After>,
    limit: i64,
) -> StoreResult<Vec<Row>> {
    let rows = sqlx::query_as(
        "SELECT id, at, principal_kind, principal_id, action, resource, resource_id,
                request_id, ip, user_agent, fields
         FROM audit_log
         WHERE ($1::text IS NULL OR principal_id = $1)
           AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR resource = $3)
           AND ($4::text IS NULL OR resource_id = $4)
           AND ($5::timestamptz IS NULL OR at >= $5)
           AND ($6::timestamptz IS NULL OR at < $6)
           AND ($7::timestamptz IS NULL OR at >= $7)
           AND ($8::timestamptz IS NULL OR (at, id) < ($8, $9))
         ORDER BY at DESC, id DESC
         LIMIT $10",
    )
    .bind(filter.actor)
    .bind(filter.action.map(<&str>::from))
    .bind(filter.resource.map(<&str>::from))
    .bind(filter.resource_id)
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.retained_since)
    .bind(after.map(|a| a.at))
    .bind(after.map(|a| a.id))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Deletes up to `batch` rows older than `before`; answers how many it deleted.
pub async fn delete_older(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM audit_log WHERE id IN
            (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
    )
    .bind(before)
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
