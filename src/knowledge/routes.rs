//! `/api/v1/playbooks`, `/api/v1/faqs`, `/api/v1/tools`: CRUD addressable by UUID or name.
//! Lists are paged and filterable; built-in (`is_default`) playbooks and tools cannot be deleted.
//! The handlers are declarations (one per operation, for the OpenAPI document) over the five
//! generic flows below.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;

use super::model::{
    Faq, FaqCreate, FaqPatch, Playbook, PlaybookCreate, PlaybookPatch, Tool, ToolCreate, ToolPatch,
};
use super::store::{self, Resource};
use crate::audit::Action;
use crate::error::ApiResult;
use crate::extract::TenantDb;
use crate::json::Json;
use crate::model::{IdOrName, ListQuery, Page, PatchFields};
use crate::query::Query;
use crate::tenancy::pools::TenantConn;

/// `POST`: validates, inserts and audits in one write.
async fn create<R: Resource + serde::Serialize>(
    mut db: TenantDb,
    body: R::Create,
) -> ApiResult<Response> {
    let item = R::create(body);
    item.validate()?;
    let mut write = db.write().await?;
    let saved = store::save(&mut write, &item, true).await?;
    let answer = (StatusCode::CREATED, Json(saved));
    write
        .commit(Action::Create, R::AUDIT, item.id(), answer)
        .await
}

/// `PATCH`: reads the row locked, applies the change, validates, saves and audits in one write.
async fn patch<R: Resource + serde::Serialize>(
    mut db: TenantDb,
    target: IdOrName,
    body: R::Patch,
) -> ApiResult<Response> {
    let mut write = db.write().await?;
    let mut item: R = store::fetch(&mut write, &target, true).await?;
    write.set_fields(body.fields());
    item.apply(body);
    item.validate()?;
    let saved = store::save(&mut write, &item, false).await?;
    write
        .commit(Action::Update, R::AUDIT, item.id(), Json(saved))
        .await
}

/// `DELETE`: built-in entries are refused.
async fn delete<R: Resource>(mut db: TenantDb, target: IdOrName) -> ApiResult<Response> {
    let mut write = db.write().await?;
    let id = store::delete::<R>(&mut write, &target).await?;
    write
        .commit(Action::Delete, R::AUDIT, id, StatusCode::NO_CONTENT)
        .await
}

/// `GET` of a list: one page.
async fn list<R: Resource>(mut conn: TenantConn, q: ListQuery) -> ApiResult<Json<Page<R>>> {
    q.validate()?;
    Ok(Json(store::list(&mut conn, &q).await?))
}

/// `GET` of one entry, by UUID or name.
async fn get<R: Resource>(mut conn: TenantConn, target: IdOrName) -> ApiResult<Json<R>> {
    Ok(Json(store::fetch(&mut conn, &target, false).await?))
}

// ---- playbooks -------------------------------------------------------------------------------

/// List playbooks (by name; paged, filterable).
#[utoipa::path(get, path = "/playbooks", tag = "playbooks", params(ListQuery),
    responses((status = 200, description = "A page of playbooks", body = Page<Playbook>)))]
pub async fn list_playbooks(
    TenantDb { conn, .. }: TenantDb,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Playbook>>> {
    list(conn, q).await
}

/// Create a playbook.
#[utoipa::path(post, path = "/playbooks", tag = "playbooks", request_body = PlaybookCreate,
    responses((status = 201, description = "Created", body = Playbook),
               (status = 409, description = "A playbook with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_playbook(
    db: TenantDb,
    Json(body): Json<PlaybookCreate>,
) -> ApiResult<Response> {
    create::<Playbook>(db, body).await
}

/// Get a playbook by UUID or name.
#[utoipa::path(get, path = "/playbooks/{id}", tag = "playbooks",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The playbook", body = Playbook)))]
pub async fn get_playbook(
    TenantDb { conn, .. }: TenantDb,
    Path(id): Path<IdOrName>,
) -> ApiResult<Json<Playbook>> {
    get(conn, id).await
}

/// Change some fields of a playbook.
#[utoipa::path(patch, operation_id = "update_playbook", path = "/playbooks/{id}", tag = "playbooks", request_body = PlaybookPatch,
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The changed playbook", body = Playbook),
               (status = 409, description = "A playbook with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn patch_playbook(
    db: TenantDb,
    Path(id): Path<IdOrName>,
    Json(body): Json<PlaybookPatch>,
) -> ApiResult<Response> {
    patch::<Playbook>(db, id, body).await
}

/// Delete a playbook (built-in ones: 403).
#[utoipa::path(delete, path = "/playbooks/{id}", tag = "playbooks",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_playbook(db: TenantDb, Path(id): Path<IdOrName>) -> ApiResult<Response> {
    delete::<Playbook>(db, id).await
}

// ---- FAQs ------------------------------------------------------------------------------------

/// List FAQs (by name; paged, filterable).
#[utoipa::path(get, path = "/faqs", tag = "faqs", params(ListQuery),
    responses((status = 200, description = "A page of FAQs", body = Page<Faq>)))]
pub async fn list_faqs(
    TenantDb { conn, .. }: TenantDb,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Faq>>> {
    list(conn, q).await
}

/// Create a FAQ.
#[utoipa::path(post, path = "/faqs", tag = "faqs", request_body = FaqCreate,
    responses((status = 201, description = "Created", body = Faq),
               (status = 409, description = "A FAQ with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_faq(db: TenantDb, Json(body): Json<FaqCreate>) -> ApiResult<Response> {
    create::<Faq>(db, body).await
}

/// Get a FAQ by UUID or name.
#[utoipa::path(get, path = "/faqs/{id}", tag = "faqs",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The FAQ", body = Faq)))]
pub async fn get_faq(
    TenantDb { conn, .. }: TenantDb,
    Path(id): Path<IdOrName>,
) -> ApiResult<Json<Faq>> {
    get(conn, id).await
}

/// Change some fields of a FAQ.
#[utoipa::path(patch, operation_id = "update_faq", path = "/faqs/{id}", tag = "faqs", request_body = FaqPatch,
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The changed FAQ", body = Faq),
               (status = 409, description = "A FAQ with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn patch_faq(
    db: TenantDb,
    Path(id): Path<IdOrName>,
    Json(body): Json<FaqPatch>,
) -> ApiResult<Response> {
    patch::<Faq>(db, id, body).await
}

/// Delete a FAQ.
#[utoipa::path(delete, path = "/faqs/{id}", tag = "faqs",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_faq(db: TenantDb, Path(id): Path<IdOrName>) -> ApiResult<Response> {
    delete::<Faq>(db, id).await
}

// ---- tools -----------------------------------------------------------------------------------

/// List tools (by name; paged, filterable).
#[utoipa::path(get, path = "/tools", tag = "tools", params(ListQuery),
    responses((status = 200, description = "A page of tools", body = Page<Tool>)))]
pub async fn list_tools(
    TenantDb { conn, .. }: TenantDb,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Tool>>> {
    list(conn, q).await
}

/// Create a tool.
#[utoipa::path(post, path = "/tools", tag = "tools", request_body = ToolCreate,
    responses((status = 201, description = "Created", body = Tool),
               (status = 409, description = "A tool with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_tool(db: TenantDb, Json(body): Json<ToolCreate>) -> ApiResult<Response> {
    create::<Tool>(db, body).await
}

/// Get a tool by UUID or name.
#[utoipa::path(get, path = "/tools/{id}", tag = "tools",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The tool", body = Tool)))]
pub async fn get_tool(
    TenantDb { conn, .. }: TenantDb,
    Path(id): Path<IdOrName>,
) -> ApiResult<Json<Tool>> {
    get(conn, id).await
}

/// Change some fields of a tool.
#[utoipa::path(patch, operation_id = "update_tool", path = "/tools/{id}", tag = "tools", request_body = ToolPatch,
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, description = "The changed tool", body = Tool),
               (status = 409, description = "A tool with this name exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn patch_tool(
    db: TenantDb,
    Path(id): Path<IdOrName>,
    Json(body): Json<ToolPatch>,
) -> ApiResult<Response> {
    patch::<Tool>(db, id, body).await
}

/// Delete a tool (built-in ones: 403). Agents using it lose it.
#[utoipa::path(delete, path = "/tools/{id}", tag = "tools",
    params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_tool(db: TenantDb, Path(id): Path<IdOrName>) -> ApiResult<Response> {
    delete::<Tool>(db, id).await
}
