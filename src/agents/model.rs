//! Agents and their associations.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{check_required_text, check_text, non_null, nullable, patch};

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident),+ $(,)? } default $default:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema, sqlx::Type)]
        #[serde(rename_all = "snake_case")]
        #[sqlx(type_name = "text", rename_all = "snake_case")]
        pub enum $name {
            $(
                $(#[$vm])*
                $variant,
            )+
        }
        impl $name {
            pub const DEFAULT: Self = Self::$default;
        }
    };
}

text_enum!(
    /// What the agent is for.
    AgentCategory { CustomerSupport, Sales, Operations, #[default] Custom } default Custom
);
text_enum!(
    /// Lifecycle of an agent; only `active` agents take calls and widget sessions.
    AgentStatus { #[default] Draft, Active, Paused, Archived } default Draft
);
text_enum!(
    /// Whether callers may interrupt the greeting.
    GreetingMode { #[default] Interruptible, Locked } default Interruptible
);
text_enum!(
    /// The text-to-speech provider.
    VoiceProvider { #[default] Cartesia, Elevenlabs, Deepgram } default Cartesia
);
text_enum!(
    /// `public` agents accept anonymous callers (and widget guests); `authenticated` ones do not.
    AuthMode { Public, #[default] Authenticated } default Authenticated
);
text_enum!(
    /// Which widget sessions an agent accepts.
    WidgetAuthMode { Guest, User, #[default] Both } default Both
);

/// An attached playbook, as listed on its agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlaybookRef {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
}

/// An attached FAQ, as listed on its agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FaqRef {
    pub id: Uuid,
    pub name: String,
    pub title: String,
}

/// An agent.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub category: AgentCategory,
    pub status: AgentStatus,
    pub system_prompt: String,
    pub greeting_message: String,
    pub greeting_mode: GreetingMode,
    pub llm_model: String,
    pub voice_provider: VoiceProvider,
    pub voice_id: Option<String>,
    pub auth_mode: AuthMode,
    pub ringing_enabled: bool,
    pub background_audio_enabled: bool,
    pub background_audio_volume: f64,
    pub noise_suppression_enabled: bool,
    pub template_id: Option<Uuid>,
    pub active_prompt_id: Option<Uuid>,
    /// The principal that created the agent (`user:<sub>` or `api_key:<id>`).
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(json)]
    pub playbooks: Vec<PlaybookRef>,
    #[sqlx(json)]
    pub faqs: Vec<FaqRef>,
}

pub const DEFAULT_LLM_MODEL: &str = "gpt-4o";
pub const DEFAULT_VOLUME: f64 = 0.8;

/// A new agent: only `name` is required. Server-set fields (`id`, `created_by`, timestamps,
/// `playbooks`, `faqs`) are ignored if sent.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AgentCreate {
    #[schema(min_length = 1, max_length = 200, example = "Front desk")]
    pub name: String,
    #[serde(default)]
    #[schema(default = "")]
    pub description: String,
    #[serde(default)]
    #[schema(default = "custom")]
    pub category: AgentCategory,
    #[serde(default)]
    #[schema(default = "draft")]
    pub status: AgentStatus,
    #[serde(default)]
    #[schema(default = "")]
    pub system_prompt: String,
    #[serde(default)]
    #[schema(default = "")]
    pub greeting_message: String,
    #[serde(default)]
    #[schema(default = "interruptible")]
    pub greeting_mode: GreetingMode,
    #[schema(default = "gpt-4o")]
    pub llm_model: Option<String>,
    #[serde(default)]
    #[schema(default = "cartesia")]
    pub voice_provider: VoiceProvider,
    pub voice_id: Option<String>,
    #[serde(default)]
    #[schema(default = "authenticated")]
    pub auth_mode: AuthMode,
    #[schema(default = true)]
    pub ringing_enabled: Option<bool>,
    #[serde(default)]
    #[schema(default = false)]
    pub background_audio_enabled: bool,
    #[schema(minimum = 0.0, maximum = 1.0, default = 0.8)]
    pub background_audio_volume: Option<f64>,
    #[schema(default = true)]
    pub noise_suppression_enabled: Option<bool>,
    pub template_id: Option<Uuid>,
    pub active_prompt_id: Option<Uuid>,
}

/// A partial update: absent fields keep their value; `null` clears a nullable field.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct AgentPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub category: Option<AgentCategory>,
    #[serde(default, deserialize_with = "non_null")]
    pub status: Option<AgentStatus>,
    #[serde(default, deserialize_with = "non_null")]
    pub system_prompt: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub greeting_message: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub greeting_mode: Option<GreetingMode>,
    #[serde(default, deserialize_with = "non_null")]
    pub llm_model: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub voice_provider: Option<VoiceProvider>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub voice_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub auth_mode: Option<AuthMode>,
    #[serde(default, deserialize_with = "non_null")]
    pub ringing_enabled: Option<bool>,
    #[serde(default, deserialize_with = "non_null")]
    pub background_audio_enabled: Option<bool>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    #[serde(default, deserialize_with = "non_null")]
    pub background_audio_volume: Option<f64>,
    #[serde(default, deserialize_with = "non_null")]
    pub noise_suppression_enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub template_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub active_prompt_id: Option<Option<Uuid>>,
}

patch!(AgentPatch => Agent {
    name,
    description,
    category,
    status,
    system_prompt,
    greeting_message,
    greeting_mode,
    llm_model,
    voice_provider,
    voice_id,
    auth_mode,
    ringing_enabled,
    background_audio_enabled,
    background_audio_volume,
    noise_suppression_enabled,
    template_id,
    active_prompt_id
});

impl Agent {
    /// Checks the fields a client may set.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_required_text("name", &self.name, 200)?;
        check_text("description", &self.description, 10_000)?;
        check_text("system_prompt", &self.system_prompt, 100_000)?;
        check_text("greeting_message", &self.greeting_message, 10_000)?;
        check_required_text("llm_model", &self.llm_model, 100)?;
        if let Some(v) = &self.voice_id {
            check_text("voice_id", v, 200)?;
        }
        if !(0.0..=1.0).contains(&self.background_audio_volume) {
            return Err(ApiError::invalid_field(
                "background_audio_volume",
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(())
    }

    /// A new agent from a create body, with the documented defaults.
    pub fn from_create(body: AgentCreate, created_by: String) -> Self {
        let now = Utc::now();
        Self {
            id: Uuid::now_v7(),
            name: body.name,
            description: body.description,
            category: body.category,
            status: body.status,
            system_prompt: body.system_prompt,
            greeting_message: body.greeting_message,
            greeting_mode: body.greeting_mode,
            llm_model: body.llm_model.unwrap_or_else(|| DEFAULT_LLM_MODEL.into()),
            voice_provider: body.voice_provider,
            voice_id: body.voice_id,
            auth_mode: body.auth_mode,
            ringing_enabled: body.ringing_enabled.unwrap_or(true),
            background_audio_enabled: body.background_audio_enabled,
            background_audio_volume: body.background_audio_volume.unwrap_or(DEFAULT_VOLUME),
            noise_suppression_enabled: body.noise_suppression_enabled.unwrap_or(true),
            template_id: body.template_id,
            active_prompt_id: body.active_prompt_id,
            created_by,
            created_at: now,
            updated_at: now,
            playbooks: Vec::new(),
            faqs: Vec::new(),
        }
    }
}

/// A tool enabled on an agent, with the agent's configuration of it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct AgentTool {
    pub tool_name: String,
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub config: serde_json::Value,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Enables (or reconfigures) a tool on an agent. Idempotent per `(agent, tool_name)`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AgentToolUpsert {
    /// The `name` of an existing tool.
    pub tool_name: String,
    /// Tool configuration for this agent (an object; default `{}`).
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    pub config: Option<serde_json::Value>,
    #[schema(default = true)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AttachPlaybook {
    /// The playbook's UUID or name.
    pub playbook_id: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AttachFaq {
    /// The FAQ's UUID or name.
    pub faq_id: String,
}
