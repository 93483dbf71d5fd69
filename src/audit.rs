//! The tenant's audit log: every write through the API records who did what to which resource.

use sqlx::PgConnection;

use crate::auth::Principal;

pub async fn record(
    conn: &mut PgConnection,
    principal: &Principal,
    action: &str,
    resource: &str,
    resource_id: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, principal_kind, principal_id, action, resource, resource_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(principal.kind())
    .bind(principal.id())
    .bind(action)
    .bind(resource)
    .bind(resource_id)
    .execute(conn)
    .await?;
    Ok(())
}
