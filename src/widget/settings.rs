//! Widget settings: the account's branding (`/api/v1/widget-settings`, admin-only writes) and
//! each agent's widget policy (`/api/v1/agents/{id}/widget-settings`).

use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::store;
use crate::agents::AgentId;
use crate::agents::model::WidgetAuthMode;
use crate::audit::{Action, Resource};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, TenantDb};
use crate::json::Json;
use crate::model::{PatchFields, check_text, non_null, nullable, patch};

/// Where the launcher sits: bottom-left, bottom-right, top-left, top-right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum LauncherPosition {
    Bl,
    Br,
    Tl,
    Tr,
}

/// The account's widget branding.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct WidgetSettings {
    #[schema(example = "#4F46E5")]
    pub primary_color: String,
    #[schema(example = "#F59E0B")]
    pub accent_color: String,
    pub logo_url: Option<String>,
    pub launcher_position: LauncherPosition,
    pub launcher_label: String,
    pub privacy_notice: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WidgetSettingsPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub primary_color: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub accent_color: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub logo_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub launcher_position: Option<LauncherPosition>,
    #[serde(default, deserialize_with = "non_null")]
    pub launcher_label: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub privacy_notice: Option<String>,
}

patch!(WidgetSettingsPatch {
    primary_color,
    accent_color,
    logo_url,
    launcher_position,
    launcher_label,
    privacy_notice
});

/// `#rgb` or `#rrggbb`.
fn check_color(field: &str, value: &str) -> ApiResult<()> {
    let hex = value.strip_prefix('#').unwrap_or("");
    if matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            "must be a color like #4F46E5",
        ))
    }
}

fn check_https_url(field: &str, value: &str) -> ApiResult<()> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() && value.len() <= 2000 => Ok(()),
        _ => Err(ApiError::invalid_field(field, "must be an https:// URL")),
    }
}

/// The account's widget branding.
#[utoipa::path(get, path = "/widget-settings", tag = "widget", operation_id = "get_widget_settings",
    responses((status = 200, description = "Branding", body = WidgetSettings)))]
pub async fn get(TenantDb { mut conn, .. }: TenantDb) -> ApiResult<Json<WidgetSettings>> {
    Ok(Json(store::settings(&mut conn).await?))
}

/// Admin only: change the account's widget branding.
#[utoipa::path(patch, security(("bearer" = [], "account" = [], "admin" = [])), path = "/widget-settings", tag = "widget", operation_id = "update_widget_settings",
    request_body = WidgetSettingsPatch,
    responses((status = 200, description = "Branding", body = WidgetSettings)))]
pub async fn patch(
    Admin(mut db): Admin,
    Json(body): Json<WidgetSettingsPatch>,
) -> ApiResult<Response> {
    if let Some(c) = &body.primary_color {
        check_color("primary_color", c)?;
    }
    if let Some(c) = &body.accent_color {
        check_color("accent_color", c)?;
    }
    if let Some(Some(u)) = &body.logo_url {
        check_https_url("logo_url", u)?;
    }
    if let Some(l) = &body.launcher_label {
        check_text("launcher_label", l, 60)?;
    }
    if let Some(p) = &body.privacy_notice {
        check_text("privacy_notice", p, 2000)?;
    }
    let mut write = db.write().await?;
    write.set_fields(body.fields());
    store::update_settings(&mut write, &body).await?;
    let settings = store::settings(&mut write).await?;
    write
        .commit_unnamed(Action::Update, Resource::WidgetSettings, Json(settings))
        .await
}

/// An agent's widget policy.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct AgentWidgetSettings {
    /// Whether the agent is offered by the widget (default true).
    pub widget_enabled: bool,
    /// Which widget sessions it accepts (default `both`). Guests also need the agent's own
    /// `auth_mode` to be `public`.
    pub auth_mode: WidgetAuthMode,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AgentWidgetSettingsPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub widget_enabled: Option<bool>,
    #[serde(default, deserialize_with = "non_null")]
    pub auth_mode: Option<WidgetAuthMode>,
}

patch!(AgentWidgetSettingsPatch {
    widget_enabled,
    auth_mode
});

/// An agent's widget policy.
#[utoipa::path(get, path = "/agents/{id}/widget-settings", tag = "widget", operation_id = "get_agent_widget_settings",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The policy", body = AgentWidgetSettings)))]
pub async fn get_agent(
    TenantDb { mut conn, .. }: TenantDb,
    AgentId(id): AgentId,
) -> ApiResult<Json<AgentWidgetSettings>> {
    Ok(Json(store::agent_settings(&mut conn, id).await?))
}

/// Change an agent's widget policy.
#[utoipa::path(patch, path = "/agents/{id}/widget-settings", tag = "widget", operation_id = "update_agent_widget_settings",
    request_body = AgentWidgetSettingsPatch,
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "The policy", body = AgentWidgetSettings)))]
pub async fn patch_agent(
    mut db: TenantDb,
    AgentId(id): AgentId,
    Json(body): Json<AgentWidgetSettingsPatch>,
) -> ApiResult<Response> {
    let mut write = db.write().await?;
    write.set_fields(body.fields());
    store::update_agent_settings(&mut write, id, body.widget_enabled, body.auth_mode).await?;
    let settings = store::agent_settings(&mut write, id).await?;
    let answer = Json(settings);
    write
        .commit(Action::Update, Resource::AgentWidgetSettings, id, answer)
        .await
}
