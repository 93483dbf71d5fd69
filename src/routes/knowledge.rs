//! `/api/v1/playbooks`, `/api/v1/faqs`, `/api/v1/tools`: CRUD addressable by UUID or name.
//! Lists are paged and filterable; built-in (`is_default`) playbooks and tools cannot be deleted.

use axum::extract::Path;
use axum::http::StatusCode;
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query as SqlQuery;
use sqlx::{Connection, FromRow, PgConnection};
use uuid::Uuid;

use crate::audit::{self, Action};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Tenant, TenantDb};
use crate::json::Json;
use crate::model::knowledge::{
    Faq, FaqCreate, FaqPatch, Playbook, PlaybookCreate, PlaybookPatch, Tool, ToolCreate, ToolPatch,
};
use crate::model::{IdOrName, ListQuery, Page, conflict_on_unique};
use crate::query::Query;

/// What the shared list/get/delete code needs to know about a resource table.
trait Resource: for<'r> FromRow<'r, PgRow> + Send + Unpin {
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
    type Patch: Send;
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

async fn list_page<R: Resource>(conn: &mut PgConnection, q: &ListQuery) -> ApiResult<Page<R>> {
    q.validate()?;
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

async fn fetch<R: Resource>(conn: &mut PgConnection, raw: &str, lock: bool) -> ApiResult<R> {
    let target = IdOrName::parse(raw);
    let (id, name) = target.binds();
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {} FROM {} WHERE id = $1 OR name = $2{lock}",
        R::COLUMNS,
        R::TABLE
    ))
    .bind(id)
    .bind(name)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no such {}", R::NOUN)))
}

/// Inserts or updates `item`, then reads it back as stored.
async fn save<R: Resource>(conn: &mut PgConnection, item: &R, insert: bool) -> ApiResult<R> {
    let sql = if insert { R::INSERT } else { R::UPDATE };
    item.bind(sqlx::query(sql))
        .execute(&mut *conn)
        .await
        .map_err(conflict_on_unique(R::NOUN, item.name()))?;
    fetch(conn, &item.id().to_string(), false).await
}

/// `POST`: validates, inserts and audits in one transaction.
async fn create<R: Resource + serde::Serialize>(
    tenant: &Tenant,
    conn: &mut PgConnection,
    body: R::Create,
) -> ApiResult<(StatusCode, Json<R>)> {
    let item = R::create(body);
    item.validate()?;
    let mut tx = conn.begin().await?;
    let saved = save(&mut tx, &item, true).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Create,
        R::AUDIT,
        Some(&item.id().to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(saved)))
}

/// `PATCH`: reads the row locked, applies the change, validates, saves and audits in one
/// transaction.
async fn patch<R: Resource + serde::Serialize>(
    tenant: &Tenant,
    conn: &mut PgConnection,
    raw_id: &str,
    body: R::Patch,
) -> ApiResult<Json<R>> {
    let mut tx = conn.begin().await?;
    let mut item: R = fetch(&mut tx, raw_id, true).await?;
    item.apply(body);
    item.validate()?;
    let saved = save(&mut tx, &item, false).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Update,
        R::AUDIT,
        Some(&item.id().to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(saved))
}

async fn delete<R: Resource>(
    tenant: &Tenant,
    conn: &mut PgConnection,
    raw: &str,
) -> ApiResult<StatusCode> {
    let mut tx = conn.begin().await?;
    let target = IdOrName::parse(raw);
    let (id, name) = target.binds();
    let row: Option<(uuid::Uuid, bool)> = sqlx::query_as(&format!(
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
    .fetch_optional(&mut *tx)
    .await?;
    let (id, is_default) =
        row.ok_or_else(|| ApiError::not_found(format!("no such {}", R::NOUN)))?;
    if is_default {
        return Err(ApiError::Forbidden("built-in entries cannot be deleted"));
    }
    sqlx::query(&format!("DELETE FROM {} WHERE id = $1", R::TABLE))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Delete,
        R::AUDIT,
        Some(&id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- playbooks -------------------------------------------------------------------------------

/// List playbooks (by name; paged, filterable).
#[utoipa::path(get, path = "/playbooks", tag = "playbooks", params(ListQuery),
    responses((status = 200, description = "A page of playbooks", body = Page<Playbook>)))]
pub async fn list_playbooks(
    TenantDb { mut conn, .. }: TenantDb,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Playbook>>> {
    Ok(Json(list_page(&mut conn, &q).await?))
}

/// Create a playbook.
#[utoipa::path(post, path = "/playbooks", tag = "playbooks", request_body = PlaybookCreate,
    responses((status = 201, description = "Created", body = Playbook),
               (status = 409, description = "A playbook with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_playbook(
    TenantDb { tenant, mut conn }: TenantDb,
    Json(body): Json<PlaybookCreate>,
) -> ApiResult<(StatusCode, Json<Playbook>)> {
    create(&tenant, &mut conn, body).await
}

/// Get a playbook by UUID or name.
#[utoipa::path(get, path = "/playbooks/{id}", tag = "playbooks",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The playbook", body = Playbook)))]
pub async fn get_playbook(
    TenantDb { mut conn, .. }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<Json<Playbook>> {
    Ok(Json(fetch(&mut conn, &id, false).await?))
}

/// Change some fields of a playbook.
#[utoipa::path(patch, operation_id = "update_playbook", path = "/playbooks/{id}", tag = "playbooks", request_body = PlaybookPatch,
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The changed playbook", body = Playbook),
               (status = 409, description = "A playbook with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn patch_playbook(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<PlaybookPatch>,
) -> ApiResult<Json<Playbook>> {
    patch(&tenant, &mut conn, &id, body).await
}

/// Delete a playbook (built-in ones: 403).
#[utoipa::path(delete, path = "/playbooks/{id}", tag = "playbooks",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_playbook(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete::<Playbook>(&tenant, &mut conn, &id).await
}

// ---- FAQs ------------------------------------------------------------------------------------

/// List FAQs (by name; paged, filterable).
#[utoipa::path(get, path = "/faqs", tag = "faqs", params(ListQuery),
    responses((status = 200, description = "A page of FAQs", body = Page<Faq>)))]
pub async fn list_faqs(
    TenantDb { mut conn, .. }: TenantDb,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Faq>>> {
    Ok(Json(list_page(&mut conn, &q).await?))
}

/// Create a FAQ.
#[utoipa::path(post, path = "/faqs", tag = "faqs", request_body = FaqCreate,
    responses((status = 201, description = "Created", body = Faq),
               (status = 409, description = "A FAQ with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_faq(
    TenantDb { tenant, mut conn }: TenantDb,
    Json(body): Json<FaqCreate>,
) -> ApiResult<(StatusCode, Json<Faq>)> {
    create(&tenant, &mut conn, body).await
}

/// Get a FAQ by UUID or name.
#[utoipa::path(get, path = "/faqs/{id}", tag = "faqs",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The FAQ", body = Faq)))]
pub async fn get_faq(
    TenantDb { mut conn, .. }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<Json<Faq>> {
    Ok(Json(fetch(&mut conn, &id, false).await?))
}

/// Change some fields of a FAQ.
#[utoipa::path(patch, operation_id = "update_faq", path = "/faqs/{id}", tag = "faqs", request_body = FaqPatch,
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The changed FAQ", body = Faq),
               (status = 409, description = "A FAQ with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn patch_faq(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<FaqPatch>,
) -> ApiResult<Json<Faq>> {
    patch(&tenant, &mut conn, &id, body).await
}

/// Delete a FAQ.
#[utoipa::path(delete, path = "/faqs/{id}", tag = "faqs",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_faq(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete::<Faq>(&tenant, &mut conn, &id).await
}

// ---- tools -----------------------------------------------------------------------------------

/// List tools (by name; paged, filterable).
#[utoipa::path(get, path = "/tools", tag = "tools", params(ListQuery),
    responses((status = 200, description = "A page of tools", body = Page<Tool>)))]
pub async fn list_tools(
    TenantDb { mut conn, .. }: TenantDb,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Tool>>> {
    Ok(Json(list_page(&mut conn, &q).await?))
}

/// Create a tool.
#[utoipa::path(post, path = "/tools", tag = "tools", request_body = ToolCreate,
    responses((status = 201, description = "Created", body = Tool),
               (status = 409, description = "A tool with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_tool(
    TenantDb { tenant, mut conn }: TenantDb,
    Json(body): Json<ToolCreate>,
) -> ApiResult<(StatusCode, Json<Tool>)> {
    create(&tenant, &mut conn, body).await
}

/// Get a tool by UUID or name.
#[utoipa::path(get, path = "/tools/{id}", tag = "tools",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The tool", body = Tool)))]
pub async fn get_tool(
    TenantDb { mut conn, .. }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<Json<Tool>> {
    Ok(Json(fetch(&mut conn, &id, false).await?))
}

/// Change some fields of a tool.
#[utoipa::path(patch, operation_id = "update_tool", path = "/tools/{id}", tag = "tools", request_body = ToolPatch,
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The changed tool", body = Tool),
               (status = 409, description = "A tool with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn patch_tool(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<ToolPatch>,
) -> ApiResult<Json<Tool>> {
    patch(&tenant, &mut conn, &id, body).await
}

/// Delete a tool (built-in ones: 403). Agents using it lose it.
#[utoipa::path(delete, path = "/tools/{id}", tag = "tools",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_tool(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete::<Tool>(&tenant, &mut conn, &id).await
}
