//! The tenant's audit log: every write through the API records who did what to which resource.

use sqlx::PgConnection;

use crate::auth::Principal;

/// What was done: the `action` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
    /// A key that was used is disabled instead of deleted.
    Disable,
    /// Created or changed in one call (members, an agent's tool settings).
    Upsert,
    /// A link between an agent and a knowledge entry was added or removed.
    Attach,
    Detach,
}

/// To what: the `resource` column (an attach or detach names the link table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Resource {
    Agent,
    Playbook,
    Faq,
    Tool,
    /// An agent's settings of one tool.
    AgentTool,
    AgentPlaybooks,
    AgentFaqs,
    Member,
    ApiKey,
    WidgetKey,
    WidgetSettings,
    AgentWidgetSettings,
}

pub async fn record(
    conn: &mut PgConnection,
    principal: &Principal,
    action: Action,
    resource: Resource,
    resource_id: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, principal_kind, principal_id, action, resource, resource_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(principal.kind())
    .bind(principal.id())
    .bind(<&str>::from(action))
    .bind(<&str>::from(resource))
    .bind(resource_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a change already committed in the catalog (members, keys) in the tenant's audit
/// log, on a connection the handler holds. A failure to audit is logged, not turned into an
/// error for the caller: the change happened, and an error answer would tell the caller it did
/// not (and lose a new key's only copy).
pub async fn record_committed(
    conn: &mut PgConnection,
    principal: &Principal,
    action: Action,
    resource: Resource,
    resource_id: &str,
) {
    if let Err(e) = record(conn, principal, action, resource, Some(resource_id)).await {
        tracing::error!(error = %e, resource = <&str>::from(resource), "could not write the audit row of a catalog change");
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, Resource};

    /// The stored words are a contract (docs/resources.md lists them): renaming a variant must
    /// not change them.
    #[test]
    fn actions_and_resources_are_stored_as_documented() {
        let actions = [
            (Action::Create, "create"),
            (Action::Update, "update"),
            (Action::Delete, "delete"),
            (Action::Disable, "disable"),
            (Action::Upsert, "upsert"),
            (Action::Attach, "attach"),
            (Action::Detach, "detach"),
        ];
        for (action, word) in actions {
            assert_eq!(<&str>::from(action), word);
        }
        let resources = [
            (Resource::Agent, "agent"),
            (Resource::Playbook, "playbook"),
            (Resource::Faq, "faq"),
            (Resource::Tool, "tool"),
            (Resource::AgentTool, "agent_tool"),
            (Resource::AgentPlaybooks, "agent_playbooks"),
            (Resource::AgentFaqs, "agent_faqs"),
            (Resource::Member, "member"),
            (Resource::ApiKey, "api_key"),
            (Resource::WidgetKey, "widget_key"),
            (Resource::WidgetSettings, "widget_settings"),
            (Resource::AgentWidgetSettings, "agent_widget_settings"),
        ];
        for (resource, word) in resources {
            assert_eq!(<&str>::from(resource), word);
        }
    }
}
