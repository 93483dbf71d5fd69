//! `/api/v1/agents` and the agent's associations (tools, playbooks, FAQs).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::audit::{self, Action, Resource};
use crate::error::{ApiError, ApiResult};
use crate::extract::TenantDb;
use crate::json::Json;
use crate::model::IdOrName;
use crate::model::agents::{
    Agent, AgentCreate, AgentPatch, AgentTool, AgentToolUpsert, AttachFaq, AttachPlaybook,
};

/// One query for any number of agents: attached playbooks and FAQs are aggregated per row.
pub const SELECT_AGENTS: &str = "
    SELECT a.id, a.name, a.description, a.category, a.status, a.system_prompt,
           a.greeting_message, a.greeting_mode, a.llm_model, a.voice_provider, a.voice_id,
           a.auth_mode, a.ringing_enabled, a.background_audio_enabled, a.background_audio_volume,
           a.noise_suppression_enabled, a.template_id, a.active_prompt_id, a.created_by,
           a.created_at, a.updated_at,
           COALESCE((SELECT json_agg(json_build_object('id', p.id, 'name', p.name,
                                                       'display_name', p.display_name)
                                     ORDER BY p.name)
                     FROM agent_playbooks ap JOIN playbooks p ON p.id = ap.playbook_id
                     WHERE ap.agent_id = a.id), '[]'::json) AS playbooks,
           COALESCE((SELECT json_agg(json_build_object('id', f.id, 'name', f.name, 'title', f.title)
                                     ORDER BY f.name)
                     FROM agent_faqs af JOIN faqs f ON f.id = af.faq_id
                     WHERE af.agent_id = a.id), '[]'::json) AS faqs
    FROM agents a";

/// Agent ids are UUIDs; anything else names no agent (404, like an unknown UUID).
pub fn parse_agent_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| no_agent())
}

fn no_agent() -> ApiError {
    ApiError::not_found("no such agent")
}

pub async fn load_agent(conn: &mut PgConnection, id: Uuid) -> ApiResult<Agent> {
    sqlx::query_as(&format!("{SELECT_AGENTS} WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(no_agent)
}

/// Writes an agent: inserts a new one, or updates the fields a client may change of an
/// existing one (`created_by` and `created_at` stay).
async fn save_agent(conn: &mut PgConnection, agent: &Agent) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO agents (id, name, description, category, status, system_prompt,
            greeting_message, greeting_mode, llm_model, voice_provider, voice_id, auth_mode,
            ringing_enabled, background_audio_enabled, background_audio_volume,
            noise_suppression_enabled, template_id, active_prompt_id, created_by, created_at,
            updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $20)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
            category = EXCLUDED.category, status = EXCLUDED.status,
            system_prompt = EXCLUDED.system_prompt, greeting_message = EXCLUDED.greeting_message,
            greeting_mode = EXCLUDED.greeting_mode, llm_model = EXCLUDED.llm_model,
            voice_provider = EXCLUDED.voice_provider, voice_id = EXCLUDED.voice_id,
            auth_mode = EXCLUDED.auth_mode, ringing_enabled = EXCLUDED.ringing_enabled,
            background_audio_enabled = EXCLUDED.background_audio_enabled,
            background_audio_volume = EXCLUDED.background_audio_volume,
            noise_suppression_enabled = EXCLUDED.noise_suppression_enabled,
            template_id = EXCLUDED.template_id, active_prompt_id = EXCLUDED.active_prompt_id,
            updated_at = now()",
    )
    .bind(agent.id)
    .bind(&agent.name)
    .bind(&agent.description)
    .bind(agent.category)
    .bind(agent.status)
    .bind(&agent.system_prompt)
    .bind(&agent.greeting_message)
    .bind(agent.greeting_mode)
    .bind(&agent.llm_model)
    .bind(agent.voice_provider)
    .bind(&agent.voice_id)
    .bind(agent.auth_mode)
    .bind(agent.ringing_enabled)
    .bind(agent.background_audio_enabled)
    .bind(agent.background_audio_volume)
    .bind(agent.noise_suppression_enabled)
    .bind(agent.template_id)
    .bind(agent.active_prompt_id)
    .bind(&agent.created_by)
    .bind(agent.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the agent row for a change; 404 when it does not exist.
async fn lock_agent(conn: &mut PgConnection, id: Uuid) -> ApiResult<()> {
    sqlx::query("SELECT 1 FROM agents WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(|_| ())
        .ok_or_else(no_agent)
}

/// List agents, newest first, with their playbooks and FAQs.
#[utoipa::path(get, operation_id = "list_agents", path = "/agents", tag = "agents",
    responses((status = 200, description = "The account's agents, newest first", body = Vec<Agent>)))]
pub async fn list(TenantDb { mut conn, .. }: TenantDb) -> ApiResult<Json<Vec<Agent>>> {
    let agents = sqlx::query_as(&format!(
        "{SELECT_AGENTS} ORDER BY a.created_at DESC, a.id DESC"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(agents))
}

/// Create an agent. Only `name` is required; see the schema for defaults.
#[utoipa::path(post, operation_id = "create_agent", path = "/agents", tag = "agents", request_body = AgentCreate,
    responses((status = 201, description = "Created", body = Agent,
               headers(("Location" = String, description = "The new agent's URL")))))]
pub async fn create(
    TenantDb { tenant, mut conn }: TenantDb,
    Json(body): Json<AgentCreate>,
) -> ApiResult<Response> {
    let principal = format!("{}:{}", tenant.principal.kind(), tenant.principal.id());
    let agent = Agent::from_create(body, principal);
    agent.validate()?;
    let mut tx = conn.begin().await?;
    save_agent(&mut tx, &agent).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Create,
        Resource::Agent,
        Some(&agent.id.to_string()),
    )
    .await?;
    let created = load_agent(&mut tx, agent.id).await?;
    tx.commit().await?;
    let location = HeaderValue::from_str(&format!("/api/v1/agents/{}", created.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// Get one agent.
#[utoipa::path(get, operation_id = "get_agent", path = "/agents/{id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent", body = Agent)))]
pub async fn get(
    TenantDb { mut conn, .. }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    let id = parse_agent_id(&id)?;
    Ok(Json(load_agent(&mut conn, id).await?))
}

/// Change some fields of an agent.
#[utoipa::path(patch, operation_id = "update_agent", path = "/agents/{id}", tag = "agents", request_body = AgentPatch,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The changed agent", body = Agent)))]
pub async fn patch(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<AgentPatch>,
) -> ApiResult<Json<Agent>> {
    let id = parse_agent_id(&id)?;
    let mut tx = conn.begin().await?;
    lock_agent(&mut tx, id).await?;
    let mut agent = load_agent(&mut tx, id).await?;
    agent.apply(body);
    agent.validate()?;
    save_agent(&mut tx, &agent).await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Update,
        Resource::Agent,
        Some(&id.to_string()),
    )
    .await?;
    let updated = load_agent(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// Delete an agent and its associations.
#[utoipa::path(delete, operation_id = "delete_agent", path = "/agents/{id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_agent_id(&id)?;
    let mut tx = conn.begin().await?;
    let deleted = sqlx::query("DELETE FROM agents WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(no_agent());
    }
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Delete,
        Resource::Agent,
        Some(&id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tools enabled on an agent.
#[utoipa::path(get, operation_id = "list_agent_tools", path = "/agents/{id}/tools", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent's tools", body = Vec<AgentTool>)))]
pub async fn list_tools(
    TenantDb { mut conn, .. }: TenantDb,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<AgentTool>>> {
    let id = parse_agent_id(&id)?;
    let mut tx = conn.begin().await?;
    lock_agent(&mut tx, id).await?;
    let tools = sqlx::query_as(
        "SELECT tool_name, config, enabled, created_at, updated_at FROM agent_tools
         WHERE agent_id = $1 ORDER BY tool_name",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(tools))
}

/// Enable or reconfigure a tool on an agent (idempotent per tool name; PUT does the same).
#[utoipa::path(post, operation_id = "upsert_agent_tool", path = "/agents/{id}/tools", tag = "agents", request_body = AgentToolUpsert,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 201, description = "Enabled on the agent", body = AgentTool),
               (status = 200, description = "Already on the agent: updated", body = AgentTool)))]
pub async fn upsert_tool(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<AgentToolUpsert>,
) -> ApiResult<(StatusCode, Json<AgentTool>)> {
    let id = parse_agent_id(&id)?;
    let config = body.config.unwrap_or_else(|| serde_json::json!({}));
    if !config.is_object() {
        return Err(ApiError::invalid_field("config", "must be an object"));
    }
    crate::json::check_json_numbers("config", &config)?;
    let mut tx = conn.begin().await?;
    lock_agent(&mut tx, id).await?;
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tools WHERE name = $1)")
        .bind(&body.tool_name)
        .fetch_one(&mut *tx)
        .await?;
    if !known {
        return Err(ApiError::invalid_field(
            "tool_name",
            format_args!("names no tool: `{}`", body.tool_name),
        ));
    }
    let (tool, inserted): (AgentTool, bool) = {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            tool: AgentTool,
            inserted: bool,
        }
        let row: Row = sqlx::query_as(
            "INSERT INTO agent_tools (agent_id, tool_name, config, enabled) VALUES ($1, $2, $3, $4)
             ON CONFLICT (agent_id, tool_name)
             DO UPDATE SET config = EXCLUDED.config, enabled = EXCLUDED.enabled, updated_at = now()
             RETURNING tool_name, config, enabled, created_at, updated_at, (xmax = 0) AS inserted",
        )
        .bind(id)
        .bind(&body.tool_name)
        .bind(&config)
        .bind(body.enabled.unwrap_or(true))
        .fetch_one(&mut *tx)
        .await?;
        (row.tool, row.inserted)
    };
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Upsert,
        Resource::AgentTool,
        Some(&format!("{id}/{}", tool.tool_name)),
    )
    .await?;
    tx.commit().await?;
    Ok((
        if inserted {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(tool),
    ))
}

/// The same as `POST /agents/{id}/tools`.
#[utoipa::path(put, operation_id = "put_agent_tool", path = "/agents/{id}/tools", tag = "agents", request_body = AgentToolUpsert,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 201, description = "Enabled on the agent", body = AgentTool),
               (status = 200, description = "Already on the agent: updated", body = AgentTool)))]
pub async fn put_tool(
    db: TenantDb,
    path: Path<String>,
    body: Json<AgentToolUpsert>,
) -> ApiResult<(StatusCode, Json<AgentTool>)> {
    upsert_tool(db, path, body).await
}

/// An agent's link to its playbooks or FAQs.
struct Association {
    /// The linked resource's table, addressed by UUID or name.
    table: &'static str,
    /// The link table and its column naming the linked row.
    link: &'static str,
    column: &'static str,
    noun: &'static str,
    /// The audit log's name for a link (the link table's).
    audit: Resource,
}

const PLAYBOOKS: Association = Association {
    table: "playbooks",
    link: "agent_playbooks",
    column: "playbook_id",
    noun: "playbook",
    audit: Resource::AgentPlaybooks,
};

const FAQS: Association = Association {
    table: "faqs",
    link: "agent_faqs",
    column: "faq_id",
    noun: "faq",
    audit: Resource::AgentFaqs,
};

async fn resolve(conn: &mut PgConnection, table: &str, raw: &str) -> ApiResult<Option<Uuid>> {
    let target = IdOrName::parse(raw);
    let (id, name) = target.binds();
    Ok(sqlx::query_scalar(&format!(
        "SELECT id FROM {table} WHERE id = $1 OR name = $2"
    ))
    .bind(id)
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

/// Attach a playbook to an agent (idempotent).
#[utoipa::path(post, path = "/agents/{id}/playbooks", tag = "agents", request_body = AttachPlaybook,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent with the playbook attached", body = Agent)))]
pub async fn attach_playbook(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<AttachPlaybook>,
) -> ApiResult<Json<Agent>> {
    attach(&tenant, &mut conn, &id, &PLAYBOOKS, &body.playbook_id).await
}

/// Attach a FAQ to an agent (idempotent).
#[utoipa::path(post, path = "/agents/{id}/faqs", tag = "agents", request_body = AttachFaq,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent with the FAQ attached", body = Agent)))]
pub async fn attach_faq(
    TenantDb { tenant, mut conn }: TenantDb,
    Path(id): Path<String>,
    Json(body): Json<AttachFaq>,
) -> ApiResult<Json<Agent>> {
    attach(&tenant, &mut conn, &id, &FAQS, &body.faq_id).await
}

async fn attach(
    tenant: &crate::extract::Tenant,
    conn: &mut PgConnection,
    agent: &str,
    assoc: &Association,
    target: &str,
) -> ApiResult<Json<Agent>> {
    let Association {
        table,
        link,
        column,
        noun,
        audit: link_resource,
    } = assoc;
    let id = parse_agent_id(agent)?;
    let mut tx = conn.begin().await?;
    lock_agent(&mut tx, id).await?;
    let target_id = resolve(&mut tx, table, target)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such {noun}")))?;
    sqlx::query(&format!(
        "INSERT INTO {link} (agent_id, {column}) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    ))
    .bind(id)
    .bind(target_id)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Attach,
        *link_resource,
        Some(&format!("{id}/{target_id}")),
    )
    .await?;
    let agent = load_agent(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(agent))
}

async fn detach(
    tenant: &crate::extract::Tenant,
    conn: &mut PgConnection,
    agent: &str,
    assoc: &Association,
    target: &str,
) -> ApiResult<StatusCode> {
    let Association {
        table,
        link,
        column,
        noun,
        audit: link_resource,
    } = assoc;
    let id = parse_agent_id(agent)?;
    let mut tx = conn.begin().await?;
    lock_agent(&mut tx, id).await?;
    let not_attached = || ApiError::not_found(format!("no such {noun} on this agent"));
    let target_id = resolve(&mut tx, table, target)
        .await?
        .ok_or_else(not_attached)?;
    let removed = sqlx::query(&format!(
        "DELETE FROM {link} WHERE agent_id = $1 AND {column} = $2"
    ))
    .bind(id)
    .bind(target_id)
    .execute(&mut *tx)
    .await?;
    if removed.rows_affected() == 0 {
        return Err(not_attached());
    }
    audit::record(
        &mut tx,
        &tenant.principal,
        Action::Detach,
        *link_resource,
        Some(&format!("{id}/{target_id}")),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Detach a playbook from an agent.
#[utoipa::path(delete, path = "/agents/{id}/playbooks/{playbook_id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id"),
           ("playbook_id" = String, Path, description = "The playbook's UUID or name")),
    responses((status = 204, description = "Detached")))]
pub async fn detach_playbook(
    TenantDb { tenant, mut conn }: TenantDb,
    Path((id, playbook)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    detach(&tenant, &mut conn, &id, &PLAYBOOKS, &playbook).await
}

/// Detach a FAQ from an agent.
#[utoipa::path(delete, path = "/agents/{id}/faqs/{faq_id}", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id"),
           ("faq_id" = String, Path, description = "The FAQ's UUID or name")),
    responses((status = 204, description = "Detached")))]
pub async fn detach_faq(
    TenantDb { tenant, mut conn }: TenantDb,
    Path((id, faq)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    detach(&tenant, &mut conn, &id, &FAQS, &faq).await
}
