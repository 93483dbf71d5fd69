//! `/api/v1/playbooks`, `/api/v1/faqs`, `/api/v1/tools`: CRUD addressable by UUID or name.
//! Lists are paged and filterable; built-in (`is_default`) playbooks and tools cannot be deleted.

use axum::extract::Path;
use axum::http::StatusCode;
use sqlx::postgres::PgRow;
use sqlx::{Connection, FromRow, PgConnection};

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
}

impl Resource for Playbook {
    const TABLE: &'static str = "playbooks";
    const NOUN: &'static str = "playbook";
    const AUDIT: audit::Resource = audit::Resource::Playbook;
    const COLUMNS: &'static str = "id, name, display_name, category, description, tags, tool_names, is_default, created_at, updated_at";
    const SEARCHED: &'static [&'static str] = &["name", "display_name", "description"];
    const HAS_DEFAULTS: bool = true;
}

impl Resource for Faq {
    const TABLE: &'static str = "faqs";
    const NOUN: &'static str = "faq";
    const AUDIT: audit::Resource = audit::Resource::Faq;
    const COLUMNS: &'static str =
        "id, name, title, summary, content, category, tags, created_at, updated_at";
    const SEARCHED: &'static [&'static str] = &["name", "title", "summary"];
    const HAS_DEFAULTS: bool = false;
}

impl Resource for Tool {
    const TABLE: &'static str = "tools";
    const NOUN: &'static str = "tool";
    const AUDIT: audit::Resource = audit::Resource::Tool;
    const COLUMNS: &'static str = "id, name, display_name, category, description, schema, implementation_type, \
         implementation_config, implementation_code, tags, is_default, created_at, updated_at";
    const SEARCHED: &'static [&'static str] = &["name", "display_name", "description"];
    const HAS_DEFAULTS: bool = true;
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

async fn save_playbook(conn: &mut PgConnection, p: &Playbook, insert: bool) -> ApiResult<Playbook> {
    let sql = if insert {
        "INSERT INTO playbooks (id, name, display_name, category, description, tags, tool_names)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    } else {
        "UPDATE playbooks SET name = $2, display_name = $3, category = $4, description = $5,
            tags = $6, tool_names = $7, updated_at = now() WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(p.id)
        .bind(&p.name)
        .bind(&p.display_name)
        .bind(&p.category)
        .bind(&p.description)
        .bind(&p.tags)
        .bind(&p.tool_names)
        .execute(&mut *conn)
        .await
        .map_err(conflict_on_unique("playbook", &p.name))?;
    fetch(conn, &p.id.to_string(), false).await
}

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
    let p = Playbook::new(body);
    p.validate()?;
    let mut tx = conn.begin().await?;
    let saved = save_playbook(&mut tx, &p, true).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Create,
        audit::Resource::Playbook,
        Some(&p.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(saved)))
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
    let mut tx = conn.begin().await?;
    let mut p: Playbook = fetch(&mut tx, &id, true).await?;
    p.apply(body);
    p.validate()?;
    let saved = save_playbook(&mut tx, &p, false).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Update,
        audit::Resource::Playbook,
        Some(&p.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(saved))
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

async fn save_faq(conn: &mut PgConnection, f: &Faq, insert: bool) -> ApiResult<Faq> {
    let sql = if insert {
        "INSERT INTO faqs (id, name, title, summary, content, category, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    } else {
        "UPDATE faqs SET name = $2, title = $3, summary = $4, content = $5, category = $6,
            tags = $7, updated_at = now() WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(f.id)
        .bind(&f.name)
        .bind(&f.title)
        .bind(&f.summary)
        .bind(&f.content)
        .bind(&f.category)
        .bind(&f.tags)
        .execute(&mut *conn)
        .await
        .map_err(conflict_on_unique("faq", &f.name))?;
    fetch(conn, &f.id.to_string(), false).await
}

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
    let f = Faq::new(body);
    f.validate()?;
    let mut tx = conn.begin().await?;
    let saved = save_faq(&mut tx, &f, true).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Create,
        audit::Resource::Faq,
        Some(&f.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(saved)))
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
    let mut tx = conn.begin().await?;
    let mut f: Faq = fetch(&mut tx, &id, true).await?;
    f.apply(body);
    f.validate()?;
    let saved = save_faq(&mut tx, &f, false).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Update,
        audit::Resource::Faq,
        Some(&f.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(saved))
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

async fn save_tool(conn: &mut PgConnection, t: &Tool, insert: bool) -> ApiResult<Tool> {
    let sql = if insert {
        "INSERT INTO tools (id, name, display_name, category, description, schema,
            implementation_type, implementation_config, implementation_code, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    } else {
        "UPDATE tools SET name = $2, display_name = $3, category = $4, description = $5,
            schema = $6, implementation_type = $7, implementation_config = $8,
            implementation_code = $9, tags = $10, updated_at = now() WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(t.id)
        .bind(&t.name)
        .bind(&t.display_name)
        .bind(&t.category)
        .bind(&t.description)
        .bind(&t.schema)
        .bind(t.implementation_type)
        .bind(&t.implementation_config)
        .bind(&t.implementation_code)
        .bind(&t.tags)
        .execute(&mut *conn)
        .await
        .map_err(conflict_on_unique("tool", &t.name))?;
    fetch(conn, &t.id.to_string(), false).await
}

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
    let t = Tool::new(body);
    t.validate()?;
    let mut tx = conn.begin().await?;
    let saved = save_tool(&mut tx, &t, true).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Create,
        audit::Resource::Tool,
        Some(&t.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(saved)))
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
    let mut tx = conn.begin().await?;
    let mut t: Tool = fetch(&mut tx, &id, true).await?;
    t.apply(body);
    t.validate()?;
    let saved = save_tool(&mut tx, &t, false).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Update,
        audit::Resource::Tool,
        Some(&t.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(saved))
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
