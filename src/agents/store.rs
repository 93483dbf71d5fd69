//! The SQL of the `agents` table and its link tables (`agent_tools`, `agent_playbooks`,
//! `agent_faqs`).

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::model::{Agent, AgentTool};
use crate::audit::Resource;
use crate::model::IdOrName;
use crate::store::{StoreError, StoreResult};

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

/// What a missing agent is called in a [`StoreError::NotFound`].
pub const AGENT: &str = "agent";

/// Every agent, newest first.
pub async fn list(conn: &mut PgConnection) -> StoreResult<Vec<Agent>> {
    Ok(sqlx::query_as(&format!(
        "{SELECT_AGENTS} ORDER BY a.created_at DESC, a.id DESC"
    ))
    .fetch_all(conn)
    .await?)
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> StoreResult<Agent> {
    let row = sqlx::query_as(&format!("{SELECT_AGENTS} WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    StoreError::found(row, AGENT)
}

pub async fn exists(conn: &mut PgConnection, id: Uuid) -> StoreResult<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

/// Locks the agent row for a change.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> StoreResult<()> {
    let row = sqlx::query("SELECT 1 FROM agents WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    StoreError::found(row, AGENT).map(drop)
}

/// Writes an agent: inserts a new one, or updates the fields a client may change of an
/// existing one (`created_by` and `created_at` stay).
pub async fn save(conn: &mut PgConnection, agent: &Agent) -> StoreResult<()> {
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

/// Deletes an agent; its links go with it (`ON DELETE CASCADE`).
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> StoreResult<()> {
    let deleted = sqlx::query("DELETE FROM agents WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    StoreError::found((deleted.rows_affected() > 0).then_some(()), AGENT)
}

/// The tools enabled on an agent, by name.
pub async fn tools(conn: &mut PgConnection, id: Uuid) -> StoreResult<Vec<AgentTool>> {
    let mut tx = conn.begin().await?;
    let row = sqlx::query("SELECT 1 FROM agents WHERE id = $1 FOR SHARE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    StoreError::found(row, AGENT)?;
    let tools = sqlx::query_as(
        "SELECT tool_name, config, enabled, created_at, updated_at FROM agent_tools
         WHERE agent_id = $1 ORDER BY tool_name",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(tools)
}

/// Enables or reconfigures the tool `tool_name` on an agent; `true` when it was not on the
/// agent before.
pub async fn upsert_tool(
    conn: &mut PgConnection,
    id: Uuid,
    tool_name: &str,
    config: &serde_json::Value,
    enabled: bool,
) -> StoreResult<(AgentTool, bool)> {
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tools WHERE name = $1)")
        .bind(tool_name)
        .fetch_one(&mut *conn)
        .await?;
    if !known {
        return Err(StoreError::Dangling {
            field: "tool_name",
            message: format!("names no tool: `{tool_name}`"),
        });
    }
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
    .bind(tool_name)
    .bind(config)
    .bind(enabled)
    .fetch_one(conn)
    .await?;
    Ok((row.tool, row.inserted))
}

/// An agent's link to its playbooks or FAQs.
pub struct Association {
    /// The linked resource's table, addressed by UUID or name.
    table: &'static str,
    /// The link table and its column naming the linked row.
    link: &'static str,
    column: &'static str,
    /// What a missing linked row, and a missing link, are called.
    noun: &'static str,
    not_linked: &'static str,
    /// The audit log's name for a link (the link table's).
    pub audit: Resource,
}

pub const PLAYBOOKS: Association = Association {
    table: "playbooks",
    link: "agent_playbooks",
    column: "playbook_id",
    noun: "playbook",
    not_linked: "playbook on this agent",
    audit: Resource::AgentPlaybooks,
};

pub const FAQS: Association = Association {
    table: "faqs",
    link: "agent_faqs",
    column: "faq_id",
    noun: "faq",
    not_linked: "faq on this agent",
    audit: Resource::AgentFaqs,
};

impl Association {
    async fn resolve(
        &self,
        conn: &mut PgConnection,
        target: &IdOrName,
    ) -> StoreResult<Option<Uuid>> {
        let (id, name) = target.binds();
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM {} WHERE id = $1 OR name = $2",
            self.table
        ))
        .bind(id)
        .bind(name)
        .fetch_optional(conn)
        .await?)
    }

    /// Links `target` to the agent (nothing when it already is); returns the target's id.
    pub async fn link(
        &self,
        conn: &mut PgConnection,
        agent: Uuid,
        target: &IdOrName,
    ) -> StoreResult<Uuid> {
        let target = StoreError::found(self.resolve(conn, target).await?, self.noun)?;
        sqlx::query(&format!(
            "INSERT INTO {} (agent_id, {}) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.link, self.column
        ))
        .bind(agent)
        .bind(target)
        .execute(conn)
        .await?;
        Ok(target)
    }

    /// Removes the link to `target`; returns the target's id.
    pub async fn unlink(
        &self,
        conn: &mut PgConnection,
        agent: Uuid,
        target: &IdOrName,
    ) -> StoreResult<Uuid> {
        let target = StoreError::found(self.resolve(conn, target).await?, self.not_linked)?;
        let removed = sqlx::query(&format!(
            "DELETE FROM {} WHERE agent_id = $1 AND {} = $2",
            self.link, self.column
        ))
        .bind(agent)
        .bind(target)
        .execute(conn)
        .await?;
        StoreError::found(
            (removed.rows_affected() > 0).then_some(target),
            self.not_linked,
        )
    }
}
