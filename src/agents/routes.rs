//! `/api/v1/agents` and the agent's associations (tools, playbooks, FAQs).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use uuid::Uuid;

use super::model::{
    Agent, AgentCreate, AgentPatch, AgentTool, AgentToolUpsert, AttachFaq, AttachPlaybook,
};
use super::store::{self, AGENT, Association, FAQS, PLAYBOOKS};
use crate::audit::{Action, Resource};
use crate::error::{ApiError, ApiResult};
use crate::extract::{TenantDb, path_id};
use crate::json::Json;
use crate::model::{IdOrName, PatchFields};

/// The agent named by the path's `{id}`. Agent ids are UUIDs; anything else names no agent
/// (404, like an unknown UUID).
#[derive(Debug, Clone, Copy)]
pub struct AgentId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for AgentId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        path_id(parts, AGENT).await.map(AgentId)
    }
}

/// List agents, newest first, with their playbooks and FAQs.
#[utoipa::path(get, operation_id = "list_agents", path = "/agents", tag = "agents",
    responses((status = 200, description = "The account's agents, newest first", body = Vec<Agent>)))]
pub async fn list(TenantDb { mut conn, .. }: TenantDb) -> ApiResult<Json<Vec<Agent>>> {
    Ok(Json(store::list(&mut conn).await?))
}

/// Create an agent. Only `name` is required; see the schema for defaults.
#[utoipa::path(post, operation_id = "create_agent", path = "/agents", tag = "agents", request_body = AgentCreate,
    responses((status = 201, description = "Created", body = Agent,
               headers(("Location" = String, description = "The new agent's URL")))))]
pub async fn create(mut db: TenantDb, Json(body): Json<AgentCreate>) -> ApiResult<Response> {
    let agent = Agent::from_create(body, db.tenant.principal.created_by());
    agent.validate()?;
    let location = HeaderValue::from_str(&format!("/api/v1/agents/{}", agent.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut write = db.write().await?;
    store::save(&mut write, &agent).await?;
    let created = store::load(&mut write, agent.id).await?;
    let answer = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    );
    write
        .commit(Action::Create, Resource::Agent, agent.id, answer)
        .await
}

/// Get one agent.
#[utoipa::path(get, operation_id = "get_agent", path = "/agents/{id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent", body = Agent)))]
pub async fn get(
    TenantDb { mut conn, .. }: TenantDb,
    AgentId(id): AgentId,
) -> ApiResult<Json<Agent>> {
    Ok(Json(store::load(&mut conn, id).await?))
}

/// Change some fields of an agent.
#[utoipa::path(patch, operation_id = "update_agent", path = "/agents/{id}", tag = "agents", request_body = AgentPatch,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The changed agent", body = Agent)))]
pub async fn patch(
    mut db: TenantDb,
    AgentId(id): AgentId,
    Json(body): Json<AgentPatch>,
) -> ApiResult<Response> {
    let mut write = db.write().await?;
    store::lock(&mut write, id).await?;
    let mut agent = store::load(&mut write, id).await?;
    write.set_fields(body.fields());
    agent.apply(body);
    agent.validate()?;
    store::save(&mut write, &agent).await?;
    let updated = store::load(&mut write, id).await?;
    write
        .commit(Action::Update, Resource::Agent, id, Json(updated))
        .await
}

/// Delete an agent and its associations.
#[utoipa::path(delete, operation_id = "delete_agent", path = "/agents/{id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(mut db: TenantDb, AgentId(id): AgentId) -> ApiResult<Response> {
    let mut write = db.write().await?;
    store::delete(&mut write, id).await?;
    write
        .commit(Action::Delete, Resource::Agent, id, StatusCode::NO_CONTENT)
        .await
}

/// The tools enabled on an agent.
#[utoipa::path(get, operation_id = "list_agent_tools", path = "/agents/{id}/tools", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent's tools", body = Vec<AgentTool>)))]
pub async fn list_tools(
    TenantDb { mut conn, .. }: TenantDb,
    AgentId(id): AgentId,
) -> ApiResult<Json<Vec<AgentTool>>> {
    Ok(Json(store::tools(&mut conn, id).await?))
}

/// Enable or reconfigure a tool on an agent (idempotent per tool name; PUT does the same).
#[utoipa::path(post, operation_id = "upsert_agent_tool", path = "/agents/{id}/tools", tag = "agents", request_body = AgentToolUpsert,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 201, description = "Enabled on the agent", body = AgentTool),
               (status = 200, description = "Already on the agent: updated", body = AgentTool)))]
pub async fn upsert_tool(
    mut db: TenantDb,
    AgentId(id): AgentId,
    Json(body): Json<AgentToolUpsert>,
) -> ApiResult<Response> {
    let config = body.config.unwrap_or_else(|| serde_json::json!({}));
    if !config.is_object() {
        return Err(ApiError::invalid_field("config", "must be an object"));
    }
    crate::json::check_json_numbers("config", &config)?;
    let mut write = db.write().await?;
    store::lock(&mut write, id).await?;
    let enabled = body.enabled.unwrap_or(true);
    let (tool, inserted) =
        store::upsert_tool(&mut write, id, &body.tool_name, &config, enabled).await?;
    let audited = format!("{id}/{}", tool.tool_name);
    let status = if inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    write
        .commit(
            Action::Upsert,
            Resource::AgentTool,
            audited,
            (status, Json(tool)),
        )
        .await
}

/// The same as `POST /agents/{id}/tools`.
#[utoipa::path(put, operation_id = "put_agent_tool", path = "/agents/{id}/tools", tag = "agents", request_body = AgentToolUpsert,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 201, description = "Enabled on the agent", body = AgentTool),
               (status = 200, description = "Already on the agent: updated", body = AgentTool)))]
pub async fn put_tool(
    db: TenantDb,
    id: AgentId,
    body: Json<AgentToolUpsert>,
) -> ApiResult<Response> {
    upsert_tool(db, id, body).await
}

/// Attach a playbook to an agent (idempotent).
#[utoipa::path(post, path = "/agents/{id}/playbooks", tag = "agents", request_body = AttachPlaybook,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent with the playbook attached", body = Agent)))]
pub async fn attach_playbook(
    db: TenantDb,
    id: AgentId,
    Json(body): Json<AttachPlaybook>,
) -> ApiResult<Response> {
    attach(db, id, &PLAYBOOKS, &body.playbook_id).await
}

/// Attach a FAQ to an agent (idempotent).
#[utoipa::path(post, path = "/agents/{id}/faqs", tag = "agents", request_body = AttachFaq,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent with the FAQ attached", body = Agent)))]
pub async fn attach_faq(
    db: TenantDb,
    id: AgentId,
    Json(body): Json<AttachFaq>,
) -> ApiResult<Response> {
    attach(db, id, &FAQS, &body.faq_id).await
}

async fn attach(
    mut db: TenantDb,
    AgentId(id): AgentId,
    assoc: &Association,
    target: &str,
) -> ApiResult<Response> {
    let mut write = db.write().await?;
    store::lock(&mut write, id).await?;
    let target = assoc.link(&mut write, id, &IdOrName::parse(target)).await?;
    let agent = store::load(&mut write, id).await?;
    let audited = format!("{id}/{target}");
    write
        .commit(Action::Attach, assoc.audit, audited, Json(agent))
        .await
}

async fn detach(
    mut db: TenantDb,
    AgentId(id): AgentId,
    assoc: &Association,
    target: &str,
) -> ApiResult<Response> {
    let mut write = db.write().await?;
    store::lock(&mut write, id).await?;
    let target = assoc
        .unlink(&mut write, id, &IdOrName::parse(target))
        .await?;
    let audited = format!("{id}/{target}");
    write
        .commit(Action::Detach, assoc.audit, audited, StatusCode::NO_CONTENT)
        .await
}

/// Detach a playbook from an agent.
#[utoipa::path(delete, path = "/agents/{id}/playbooks/{playbook_id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id"),
           ("playbook_id" = String, Path, description = "The playbook's UUID or name")),
    responses((status = 204, description = "Detached")))]
pub async fn detach_playbook(
    db: TenantDb,
    id: AgentId,
    Path((_agent, playbook)): Path<(String, String)>,
) -> ApiResult<Response> {
    detach(db, id, &PLAYBOOKS, &playbook).await
}

/// Detach a FAQ from an agent.
#[utoipa::path(delete, path = "/agents/{id}/faqs/{faq_id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id"),
           ("faq_id" = String, Path, description = "The FAQ's UUID or name")),
    responses((status = 204, description = "Detached")))]
pub async fn detach_faq(
    db: TenantDb,
    id: AgentId,
    Path((_agent, faq)): Path<(String, String)>,
) -> ApiResult<Response> {
    detach(db, id, &FAQS, &faq).await
}
