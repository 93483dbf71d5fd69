//! The tenant's audit log: every change to an account — through the API, or by an operator with
//! the command line — records who did what to which resource, from where.
//!
//! `mod.rs` holds the vocabulary (`Action`, `Resource`, `ActorKind`) and the writing side
//! ([`Actor`], [`Change`], [`record`]); `store.rs` the table's SQL; `routes.rs` the readable
//! log (`GET /api/v1/audit-log`); `retention.rs` how long rows are kept (swept by `housekeeping`).

pub mod retention;
pub mod routes;
pub mod store;

use std::net::IpAddr;

use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection, PgConnection};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::request_id::RequestId;
use crate::state::AppState;
use crate::tenancy::catalog::Account;
use crate::tenancy::provision::Provisioner;

/// What was done (stored in the `action` column).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, Serialize, Deserialize, ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[schema(as = AuditAction)]
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
    /// An operator suspended or resumed the account (`kataven-hub accounts suspend|resume`).
    Suspend,
    Resume,
    /// The account's data was exported (`GET /export`, `kataven-hub accounts export`).
    Export,
    /// The account was created from an archive (`kataven-hub accounts import`).
    Import,
    /// The account's database moved to another server, or a move was aborted, finished or
    /// reverted (`kataven-hub accounts move`).
    Move,
}

/// To what (stored in the `resource` column; an attach or detach names the link table).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, Serialize, Deserialize, ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[schema(as = AuditResource)]
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
    /// The account itself (its status: suspend and resume).
    Account,
    /// The account's limit overrides (`kataven-hub accounts limits`).
    Limits,
}

/// Who acted (stored in the `principal_kind` column).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, Serialize, ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[schema(as = AuditActorKind)]
pub enum ActorKind {
    /// A person (OIDC subject).
    User,
    /// An `sk_live_` API key (its id).
    ApiKey,
    /// A widget session. No widget endpoint changes the account today, so no row has it yet.
    Widget,
    /// An operator on the command line (`kataven-hub accounts …`, `api-keys create`).
    Operator,
}

impl ActorKind {
    fn of(principal: &Principal) -> Self {
        match principal {
            Principal::User { .. } => Self::User,
            Principal::ApiKey { .. } => Self::ApiKey,
        }
    }
}

/// Where a request came from, as its audit rows record it: built once by the request pipeline
/// (`extract::Tenant`), so every write of the request carries it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: Option<String>,
    /// The client's address (behind trusted proxies; the whole address, also for IPv6).
    pub ip: Option<IpAddr>,
    /// The `User-Agent` header, cut to [`Origin::USER_AGENT_MAX_CHARS`] characters.
    pub user_agent: Option<String>,
}

impl Origin {
    /// The most of a `User-Agent` an audit row keeps.
    pub const USER_AGENT_MAX_CHARS: usize = 256;

    /// The origin of the request whose head is `parts`.
    pub fn of(parts: &Parts, state: &AppState) -> Self {
        // Cut from the header's text as it is (borrowed when it is UTF-8): one copy, bounded.
        let user_agent = parts.headers.get(USER_AGENT).map(|v| {
            bounded(
                &String::from_utf8_lossy(v.as_bytes()),
                Self::USER_AGENT_MAX_CHARS,
            )
        });
        Self {
            request_id: parts.extensions.get::<RequestId>().map(|id| id.0.clone()),
            ip: state
                .ip_limiter
                .client_address(&parts.extensions, &parts.headers),
            user_agent,
        }
    }
}

/// `text` cut to at most `max` characters.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// Who made a change, and from where.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub kind: ActorKind,
    /// The subject, the API key's id, or the operator's login name.
    pub id: &'a str,
    pub origin: &'a Origin,
}

impl<'a> Actor<'a> {
    /// A principal of the API, in the request of `origin`.
    pub fn of(principal: &'a Principal, origin: &'a Origin) -> Self {
        Self {
            kind: ActorKind::of(principal),
            id: principal.id(),
            origin,
        }
    }
}

/// What changed: the action, the resource and its id, and for an update the names of the
/// fields it set (never their values).
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub action: Action,
    pub resource: Resource,
    pub resource_id: Option<&'a str>,
    pub fields: &'a [&'static str],
}

impl<'a> Change<'a> {
    /// `action` to `resource` `id`, no fields named.
    pub fn of(action: Action, resource: Resource, id: &'a str) -> Self {
        Self {
            action,
            resource,
            resource_id: Some(id),
            fields: &[],
        }
    }
}

/// Records `change` by `actor` on a tenant connection (in the caller's transaction, if any).
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    change: &Change<'_>,
) -> sqlx::Result<()> {
    store::insert(conn, actor, change).await
}

/// Records a change already committed in the catalog (members, keys) in the tenant's audit
/// log, on a connection the handler holds. A failure to audit is logged, not turned into an
/// error for the caller: the change happened, and an error answer would tell the caller it did
/// not (and lose a new key's only copy).
pub async fn record_committed(conn: &mut PgConnection, actor: &Actor<'_>, change: &Change<'_>) {
    if let Err(e) = record(conn, actor, change).await {
        let resource: &str = change.resource.into();
        tracing::error!(error = %e, resource, "could not write the audit row of a catalog change");
    }
}

/// An operator on the command line, as the audit log records them: their login name (`USER`,
/// else `LOGNAME`), `unknown` without one.
pub fn operator_name() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .map_or_else(|| "unknown".to_owned(), |name| bounded(&name, 255))
}

/// Records a change an operator made with the command line in the account's audit log, on a
/// connection of its own to the account's database (migrated first when it is behind, as
/// opening its pool would). Like [`record_committed`], a failure is reported on stderr and
/// does not fail the command: the change was made.
pub async fn record_operator(provisioner: &Provisioner, account: &Account, change: &Change<'_>) {
    let recorded = async {
        let mut conn = provisioner.tenant_options(account).await?.connect().await?;
        if account.schema_version < provisioner.latest_tenant_version() {
            provisioner
                .migrate_tenant_on(&mut conn, &account.slug)
                .await?;
        }
        let (name, origin) = (operator_name(), Origin::default());
        let actor = Actor {
            kind: ActorKind::Operator,
            id: &name,
            origin: &origin,
        };
        record(&mut conn, &actor, change).await?;
        conn.close().await?;
        anyhow::Ok(())
    };
    if let Err(e) = recorded.await {
        eprintln!(
            "warning: the change was made, but its audit log entry could not be written: {e:#}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, Resource, bounded};

    #[test]
    fn bounded_cuts_at_characters() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc");
        assert_eq!(bounded("ééé", 2), "éé");
    }

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
            (Action::Suspend, "suspend"),
            (Action::Resume, "resume"),
            (Action::Export, "export"),
            (Action::Import, "import"),
            (Action::Move, "move"),
        ];
        for (action, word) in actions {
            assert_eq!(serde_json::to_value(action).unwrap(), word);
        }
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
            (Resource::Account, "account"),
            (Resource::Limits, "limits"),
        ];
        for (resource, word) in resources {
            assert_eq!(serde_json::to_value(resource).unwrap(), word);
        }
        for (resource, word) in resources {
            assert_eq!(<&str>::from(resource), word);
        }
    }
}
