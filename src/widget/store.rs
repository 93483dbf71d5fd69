//! The widget's SQL: in the tenant database, the agents' widget policy and the account's
//! branding (`widget_settings`); in the catalog, pending user tokens (`widget_user_tokens`) and
//! spent session tokens (`widget_refreshes`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::settings::{AgentWidgetSettings, WidgetSettings, WidgetSettingsPatch};
use crate::agents::model::{AgentStatus, AuthMode, WidgetAuthMode};
use crate::agents::store::AGENT;
use crate::auth::widget_session::SessionKind;
use crate::store::{StoreError, StoreResult};

/// An agent as the widget sees it: what it shows, and what decides who may talk to it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentPolicy {
    pub id: Uuid,
    pub name: String,
    pub greeting_message: String,
    pub status: AgentStatus,
    pub auth_mode: AuthMode,
    pub widget_enabled: bool,
    pub widget_auth_mode: WidgetAuthMode,
}

impl AgentPolicy {
    /// Whether the widget offers the agent at all: active and widget-enabled.
    pub fn offered(&self) -> bool {
        self.status == AgentStatus::Active && self.widget_enabled
    }

    /// Whether a `kind` session may talk to this agent (SPEC §5): the agent is offered, its
    /// widget mode allows the kind, and guests need a public agent.
    pub fn allows(&self, kind: SessionKind) -> bool {
        let mode = self.widget_auth_mode;
        self.offered()
            && match kind {
                SessionKind::Guest => {
                    matches!(mode, WidgetAuthMode::Guest | WidgetAuthMode::Both)
                        && self.auth_mode == AuthMode::Public
                }
                SessionKind::User => matches!(mode, WidgetAuthMode::User | WidgetAuthMode::Both),
            }
    }
}

const POLICY_COLUMNS: &str =
    "id, name, greeting_message, status, auth_mode, widget_enabled, widget_auth_mode";

pub async fn agent(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<AgentPolicy>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM agents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The agents the widget offers, newest first.
pub async fn offered_agents(conn: &mut PgConnection) -> StoreResult<Vec<AgentPolicy>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM agents WHERE status = 'active' AND widget_enabled
         ORDER BY created_at DESC, id DESC"
    ))
    .fetch_all(conn)
    .await?)
}

pub async fn settings(conn: &mut PgConnection) -> StoreResult<WidgetSettings> {
    Ok(sqlx::query_as(
        "SELECT primary_color, accent_color, logo_url, launcher_position, launcher_label,
                privacy_notice, updated_at FROM widget_settings WHERE id",
    )
    .fetch_one(conn)
    .await?)
}

/// Changes the branding (fields absent from `patch` stay).
pub async fn update_settings(
    conn: &mut PgConnection,
    patch: &WidgetSettingsPatch,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE widget_settings SET
            primary_color = COALESCE($1, primary_color),
            accent_color = COALESCE($2, accent_color),
            logo_url = CASE WHEN $3 THEN $4 ELSE logo_url END,
            launcher_position = COALESCE($5, launcher_position),
            launcher_label = COALESCE($6, launcher_label),
            privacy_notice = COALESCE($7, privacy_notice),
            updated_at = now()
         WHERE id",
    )
    .bind(&patch.primary_color)
    .bind(&patch.accent_color)
    .bind(patch.logo_url.is_some())
    .bind(patch.logo_url.clone().flatten())
    .bind(patch.launcher_position)
    .bind(&patch.launcher_label)
    .bind(&patch.privacy_notice)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn agent_settings(conn: &mut PgConnection, id: Uuid) -> StoreResult<AgentWidgetSettings> {
    let row = sqlx::query_as(
        "SELECT widget_enabled, widget_auth_mode AS auth_mode FROM agents WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    StoreError::found(row, AGENT)
}

/// Changes an agent's widget policy (`None`: unchanged).
pub async fn update_agent_settings(
    conn: &mut PgConnection,
    id: Uuid,
    widget_enabled: Option<bool>,
    auth_mode: Option<WidgetAuthMode>,
) -> StoreResult<()> {
    let updated = sqlx::query(
        "UPDATE agents SET widget_enabled = COALESCE($2, widget_enabled),
            widget_auth_mode = COALESCE($3, widget_auth_mode), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(widget_enabled)
    .bind(auth_mode)
    .execute(conn)
    .await?;
    StoreError::found((updated.rows_affected() > 0).then_some(()), AGENT)
}

/// A user token to be stored (by its hash) until it is exchanged.
pub struct NewUserToken<'a> {
    pub token_hash: &'a [u8],
    pub account: &'a str,
    pub external_user_id: &'a str,
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub agent_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

/// Stores a user token unless its account already has `max_pending` waiting; `false` then.
pub async fn mint_user_token(
    pool: &PgPool,
    token: NewUserToken<'_>,
    max_pending: i64,
) -> StoreResult<bool> {
    let minted = sqlx::query(
        "INSERT INTO widget_user_tokens (token_hash, account, external_user_id, display_name, email, agent_id, expires_at)
         SELECT $1, $2, $3, $4, $5, $6, $7
         WHERE (SELECT count(*) FROM widget_user_tokens
                WHERE account = $2 AND consumed_at IS NULL AND expires_at > now()) < $8",
    )
    .bind(token.token_hash)
    .bind(token.account)
    .bind(token.external_user_id)
    .bind(token.display_name)
    .bind(token.email)
    .bind(token.agent_id)
    .bind(token.expires_at)
    .bind(max_pending)
    .execute(pool)
    .await?;
    Ok(minted.rows_affected() == 1)
}

/// A user token of `account` waiting to be exchanged: its user and agent.
pub async fn pending_user_token(
    pool: &PgPool,
    token_hash: &[u8],
    account: &str,
) -> StoreResult<Option<(String, Option<Uuid>)>> {
    Ok(sqlx::query_as(
        "SELECT external_user_id, agent_id FROM widget_user_tokens
         WHERE token_hash = $1 AND account = $2 AND consumed_at IS NULL AND expires_at > now()",
    )
    .bind(token_hash)
    .bind(account)
    .fetch_optional(pool)
    .await?)
}

/// Uses a pending user token up; `true` for exactly one caller, on any instance.
pub async fn consume_user_token(
    pool: &PgPool,
    token_hash: &[u8],
    account: &str,
) -> StoreResult<bool> {
    let consumed = sqlx::query(
        "UPDATE widget_user_tokens SET consumed_at = now()
         WHERE token_hash = $1 AND account = $2 AND consumed_at IS NULL AND expires_at > now()",
    )
    .bind(token_hash)
    .bind(account)
    .execute(pool)
    .await?;
    Ok(consumed.rows_affected() == 1)
}

/// Records the refresh of session `jti` (kept until `expires_at`); `true` for exactly one
/// refresh of each session token, on any instance.
pub async fn first_refresh(pool: &PgPool, jti: Uuid, expires_at: i64) -> StoreResult<bool> {
    let first = sqlx::query(
        "INSERT INTO widget_refreshes (jti, expires_at) VALUES ($1, to_timestamp($2))
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(expires_at as f64)
    .execute(pool)
    .await?;
    Ok(first.rows_affected() == 1)
}

/// Forgets user tokens expired for a day and refresh records past their session's grace.
pub async fn purge(pool: &PgPool) {
    let purged =
        sqlx::query("DELETE FROM widget_user_tokens WHERE expires_at < now() - interval '1 day'")
            .execute(pool)
            .await;
    if let Err(e) = purged {
        tracing::warn!(error = %e, "could not purge expired widget user tokens");
    }
    let purged = sqlx::query("DELETE FROM widget_refreshes WHERE expires_at < now()")
        .execute(pool)
        .await;
    if let Err(e) = purged {
        tracing::warn!(error = %e, "could not purge widget refresh records");
    }
}
