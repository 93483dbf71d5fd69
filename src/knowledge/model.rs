//! Playbooks, FAQs and tools: the knowledge an agent can be given.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{check_required_text, check_snake_name, check_text, non_null, nullable, patch};

fn check_tags(field: &str, tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::invalid_field(
            field,
            "may hold at most 50 entries",
        ));
    }
    for tag in tags {
        check_required_text(field, tag, 100)?;
    }
    Ok(())
}

/// A playbook: instructions an agent follows, and the tools they use.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Playbook {
    pub id: Uuid,
    /// snake_case, unique.
    pub name: String,
    pub display_name: String,
    pub category: String,
    pub description: String,
    pub tags: Vec<String>,
    pub tool_names: Vec<String>,
    /// Built in: cannot be deleted. Set by the platform, ignored in request bodies.
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PlaybookCreate {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,99}$", example = "refund_policy")]
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[schema(default = "custom")]
    pub category: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub tool_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct PlaybookPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub tool_names: Option<Vec<String>>,
}

patch!(PlaybookPatch => Playbook {
    name,
    display_name,
    category,
    description,
    tags,
    tool_names
});

impl Playbook {
    pub fn new(b: PlaybookCreate) -> Self {
        let now = Utc::now();
        Self {
            id: Uuid::now_v7(),
            name: b.name,
            display_name: b.display_name,
            category: b.category.unwrap_or_else(|| "custom".into()),
            description: b.description,
            tags: b.tags,
            tool_names: b.tool_names,
            is_default: false,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        check_snake_name("name", &self.name)?;
        check_text("display_name", &self.display_name, 200)?;
        check_required_text("category", &self.category, 100)?;
        check_text("description", &self.description, 100_000)?;
        check_tags("tags", &self.tags)?;
        for t in &self.tool_names {
            check_snake_name("tool_names", t)?;
        }
        Ok(())
    }
}

/// A FAQ entry an agent can answer from.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Faq {
    pub id: Uuid,
    /// snake_case, unique.
    pub name: String,
    pub title: String,
    pub summary: String,
    pub content: String,
    pub category: String,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct FaqCreate {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,99}$", example = "opening_hours")]
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub content: String,
    #[schema(default = "custom")]
    pub category: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct FaqPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub summary: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub tags: Option<Vec<String>>,
}

patch!(FaqPatch => Faq {
    name,
    title,
    summary,
    content,
    category,
    tags
});

impl Faq {
    pub fn new(b: FaqCreate) -> Self {
        let now = Utc::now();
        Self {
            id: Uuid::now_v7(),
            name: b.name,
            title: b.title,
            summary: b.summary,
            content: b.content,
            category: b.category.unwrap_or_else(|| "custom".into()),
            tags: b.tags,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        check_snake_name("name", &self.name)?;
        check_text("title", &self.title, 500)?;
        check_text("summary", &self.summary, 10_000)?;
        check_text("content", &self.content, 100_000)?;
        check_required_text("category", &self.category, 100)?;
        check_tags("tags", &self.tags)
    }
}

/// How a tool runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ImplementationType {
    Python,
    #[default]
    Http,
}

/// A tool agents can call.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Tool {
    pub id: Uuid,
    /// snake_case, unique.
    pub name: String,
    pub display_name: String,
    pub category: String,
    pub description: String,
    /// JSON Schema of the tool's arguments.
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub schema: serde_json::Value,
    pub implementation_type: ImplementationType,
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub implementation_config: serde_json::Value,
    pub implementation_code: Option<String>,
    pub tags: Vec<String>,
    /// Built in: cannot be deleted. Set by the platform, ignored in request bodies.
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ToolCreate {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,99}$", example = "lookup_order")]
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[schema(default = "custom")]
    pub category: Option<String>,
    #[serde(default)]
    pub description: String,
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    pub schema: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(default = "http")]
    pub implementation_type: ImplementationType,
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    pub implementation_config: Option<serde_json::Value>,
    pub implementation_code: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct ToolPatch {
    #[serde(default, deserialize_with = "non_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub description: Option<String>,
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    #[serde(default, deserialize_with = "non_null")]
    pub schema: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "non_null")]
    pub implementation_type: Option<ImplementationType>,
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    #[serde(default, deserialize_with = "non_null")]
    pub implementation_config: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub implementation_code: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub tags: Option<Vec<String>>,
}

patch!(ToolPatch => Tool {
    name,
    display_name,
    category,
    description,
    schema,
    implementation_type,
    implementation_config,
    implementation_code,
    tags
});

impl Tool {
    pub fn new(b: ToolCreate) -> Self {
        let now = Utc::now();
        Self {
            id: Uuid::now_v7(),
            name: b.name,
            display_name: b.display_name,
            category: b.category.unwrap_or_else(|| "custom".into()),
            description: b.description,
            schema: b.schema.unwrap_or_else(|| serde_json::json!({})),
            implementation_type: b.implementation_type,
            implementation_config: b
                .implementation_config
                .unwrap_or_else(|| serde_json::json!({})),
            implementation_code: b.implementation_code,
            tags: b.tags,
            is_default: false,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        check_snake_name("name", &self.name)?;
        check_text("display_name", &self.display_name, 200)?;
        check_required_text("category", &self.category, 100)?;
        check_text("description", &self.description, 100_000)?;
        if !self.schema.is_object() {
            return Err(ApiError::invalid_field("schema", "must be an object"));
        }
        if !self.implementation_config.is_object() {
            return Err(ApiError::invalid_field(
                "implementation_config",
                "must be an object",
            ));
        }
        crate::json::check_json_numbers("schema", &self.schema)?;
        crate::json::check_json_numbers("implementation_config", &self.implementation_config)?;
        if let Some(code) = &self.implementation_code {
            check_text("implementation_code", code, 200_000)?;
        }
        check_tags("tags", &self.tags)
    }
}
