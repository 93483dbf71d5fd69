//! The SQL of the knowledge tables (`playbooks`, `faqs`, `tools`), written once over
//! [`Resource`]: each kind declares its table, columns and write statements.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query as SqlQuery;
use sqlx::{Connection, FromRow, PgConnection, Postgres};
use uuid::Uuid;

use super::model::{
    Faq, FaqCreate, FaqPatch, Playbook, PlaybookCreate, PlaybookPatch, Tool, ToolCreate, ToolPatch,
};
use crate::audit;
use crate::error::ApiResult;
use crate::model::{IdOrName, ListQuery, Page, PatchFields};
use crate::store::{StoreError, StoreResult};

/// What the shared list/get/delete code needs to know about a resource table.
pub trait Resource: for<'r> FromRow<'r, PgRow> + Send + Unpin {
    const TABLE: &'static str;
    const NOUN: &'static str;
    /// The audit log's name for it.
    const AUDIT: audit::Resource;
    const COLUMNS: &'static str;
    /// Columns the `search` parameter looks in.
    const SEARCHED: &'static [&'static str];
    const HAS_DEFAULTS: bool;
    /// The write statements: `$1` is the id, the rest bound by [`Resource::bind`].
    const INSERT: &'static str;
    const UPDATE: &'static str;
    type Create: Send;
    type Patch: Send + PatchFields;
    fn create(body: Self::Create) -> Self;
    fn apply(&mut self, patch: Self::Patch);
    fn validate(&self) -> ApiResult<()>;
    fn id(&self) -> Uuid;
    fn name(&self) -> &str;
    /// Binds the id and then the columns the write statements name, in their order.
    fn bind<'q>(
        &'q self,
        q: SqlQuery<'q, Postgres, PgArguments>,
    ) -> SqlQuery<'q, Postgres, PgArguments>;
}

/// The part of a [`Resource`] impl that forwards to the model type: its constructor from a
/// create body, its patch, its validation, its id and name.
macro_rules! model_methods {
    ($ty:ident, $create:ty, $patch:ty) => {
        type Create = $create;
        type Patch = $patch;
        fn create(body: $create) -> Self {
            $ty::new(body)
        }
        fn apply(&mut self, patch: $patch) {
            $ty::apply(self, patch);
        }
        fn validate(&self) -> ApiResult<()> {
            $ty::validate(self)
        }
        fn id(&self) -> Uuid {
            self.id
        }
        fn name(&self) -> &str {
            &self.name
        }
    };
}

impl Resource for Playbook {
    const TABLE: &'static str = "playbooks";
    const NOUN: &'static str = "playbook";
    const AUDIT: audit::Resource = audit::Resource::Playbook;
    const COLUMNS: &'static str = "id, name, display_name, category, description, tags, tool_names, is_default, created_at, updated_at";
    const SEARCHED: &'static [&'static str] = &["name", "display_name", "description"];
    const HAS_DEFAULTS: bool = true;
    const INSERT: &'static str =
        "INSERT INTO playbooks (id, name, display_name, category, description, tags, tool_names)
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    const UPDATE: &'static str =
        "UPDATE playbooks SET name = $2, display_name = $3, category = $4, description = $5,
            tags = $6, tool_names = $7, updated_at = now() WHERE id = $1";
    model_methods!(Playbook, PlaybookCreate, PlaybookPatch);
    fn bind<'q>(
        &'q self,
        q: SqlQuery<'q, Postgres, PgArguments>,
    ) -> SqlQuery<'q, Postgres, PgArguments> {
        q.bind(self.id)
            .bind(&self.name)
            .bind(&self.display_name)
            .bind(&self.category)
            .bind(&self.description)
            .bind(&self.tags)
            .bind(&self.tool_names)
    }
}

impl Resource for Faq {
    const TABLE: &'static str = "faqs";
    const NOUN: &'static str = "faq";
    const AUDIT: audit::Resource = audit::Resource::Faq;
    const COLUMNS: &'static str =
        "id, name, title, summary, content, category, tags, created_at, updated_at";
    const SEARCHED: &'static [&'static str] = &["name", "title", "summary"];
    const HAS_DEFAULTS: bool = false;
    const INSERT: &'static str =
        "INSERT INTO faqs (id, name, title, summary, content, category, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    const UPDATE: &'static str =
        "UPDATE faqs SET name = $2, title = $3, summary = $4, content = $5, category = $6,
            tags = $7, updated_at = now() WHERE id = $1";
    model_methods!(Faq, FaqCreate, FaqPatch);
    fn bind<'q>(
        &'q self,
        q: SqlQuery<'q, Postgres, PgArguments>,
    ) -> SqlQuery<'q, Postgres, PgArguments> {
        q.bind(self.id)
            .bind(&self.name)
            .bind(&self.title)
            .bind(&self.summary)
            .bind(&self.content)
            .bind(&self.category)
            .bind(&self.tags)
    }
}

impl Resource for Tool {
    const TABLE: &'static str = "tools";
    const NOUN: &'static str = "tool";
    const AUDIT: audit::Resource = audit::Resource::Tool;
    const COLUMNS: &'static str = "id, name, display_name, category, description, schema, implementation_type, \
         implementation_config, implementation_code, tags, is_default, created_at, updated_at";
    const SEARCHED: &'static [&'static str] = &["name", "display_name", "description"];
    const HAS_DEFAULTS: bool = true;
    const INSERT: &'static str =
        "INSERT INTO tools (id, name, display_name, category, description, schema,
            implementation_type, implementation_config, implementation_code, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    const UPDATE: &'static str =
        "UPDATE tools SET name = $2, display_name = $3, category = $4, description = $5,
            schema = $6, implementation_type = $7, implementation_config = $8,
            implementation_code = $9, tags = $10, updated_at = now() WHERE id = $1";
    model_methods!(Tool, ToolCreate, ToolPatch);
    fn bind<'q>(
        &'q self,
        q: SqlQuery<'q, Postgres, PgArguments>,
    ) -> SqlQuery<'q, Postgres, PgArguments> {
        q.bind(self.id)
            .bind(&self.name)
            .bind(&self.display_name)
            .bind(&self.category)
            .bind(&self.description)
            .bind(&self.schema)
            .bind(self.implementation_type)
            .bind(&self.implementation_config)
            .bind(&self.implementation_code)
            .bind(&self.tags)
    }
}

/// A page of `R`, by name, filtered by category and a search in [`Resource::SEARCHED`] (the
/// query has been validated).
pub async fn list<R: Resource>(conn: &mut PgConnection, q: &ListQuery) -> StoreResult<Page<R>> {
    let search = R::SEARCHED
        .iter()
        .map(|c| format!("{c} ILIKE $2"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let filter = format!("($1::text IS NULL OR category = $1) AND ($2::text IS NULL OR {search})");
    let pattern = q.search_pattern();
    let mut tx = conn.begin().await?;
    let total: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {} WHERE {filter}", R::TABLE))
            .bind(q.category())
            .bind(pattern.as_deref())
            .fetch_one(&mut *tx)
            .await?;
    let items: Vec<R> = sqlx::query_as(&format!(
        "SELECT {} FROM {} WHERE {filter} ORDER BY name LIMIT $3 OFFSET $4",
        R::COLUMNS,
        R::TABLE
    ))
    .bind(q.category())
    .bind(pattern.as_deref())
    .bind(q.limit())
    .bind(q.offset())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Page::new(items, total, q))
}

/// The row named by `target`, locked for a change when `lock`.
pub async fn fetch<R: Resource>(
    conn: &mut PgConnection,
    target: &IdOrName,
    lock: bool,
) -> StoreResult<R> {
    let (id, name) = target.binds();
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query_as(&format!(
        "SELECT {} FROM {} WHERE id = $1 OR name = $2{lock}",
        R::COLUMNS,
        R::TABLE
    ))
    .bind(id)
    .bind(name)
    .fetch_optional(conn)
    .await?;
    StoreError::found(row, R::NOUN)
}

/// Inserts or updates `item`, then reads it back as stored.
pub async fn save<R: Resource>(conn: &mut PgConnection, item: &R, insert: bool) -> StoreResult<R> {
    let sql = if insert { R::INSERT } else { R::UPDATE };
    item.bind(sqlx::query(sql))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::conflict_on_unique(R::NOUN, item.name()))?;
    fetch(conn, &IdOrName::Id(item.id()), false).await
}

/// Deletes the row named by `target` (built-in ones: [`StoreError::BuiltIn`]); returns its id.
pub async fn delete<R: Resource>(conn: &mut PgConnection, target: &IdOrName) -> StoreResult<Uuid> {
    let (id, name) = target.binds();
    let row: Option<(Uuid, bool)> = sqlx::query_as(&format!(
        "SELECT id, {} FROM {} WHERE id = $1 OR name = $2 FOR UPDATE",
        if R::HAS_DEFAULTS {
            "is_default"
        } else {
            "false"
        },
        R::TABLE
    ))
    .bind(id)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let (id, is_default) = StoreError::found(row, R::NOUN)?;
    if is_default {
        return Err(StoreError::BuiltIn);
    }
    sqlx::query(&format!("DELETE FROM {} WHERE id = $1", R::TABLE))
        .bind(id)
        .execute(conn)
        .await?;
    Ok(id)
}
