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

/// Records a change already committed in the catalog (members, keys) in the tenant's audit
/// log, on a connection the handler holds. A failure to audit is logged, not turned into an
/// error for the caller: the change happened, and an error answer would tell the caller it did
/// not (and lose a new key's only copy).
pub async fn record_committed(
    conn: &mut PgConnection,
    principal: &Principal,
    action: &str,
    resource: &str,
    resource_id: &str,
) {
    if let Err(e) = record(conn, principal, action, resource, Some(resource_id)).await {
        tracing::error!(error = %e, resource, "could not write the audit row of a catalog change");
    }
}

/// [`record_committed`] for a handler that holds no tenant connection: opens one.
pub async fn record_catalog_change(
    state: &crate::state::AppState,
    tenant: &crate::extract::Tenant,
    action: &str,
    resource: &str,
    resource_id: &str,
) {
    match state.pools.acquire(&tenant.account).await {
        Ok(mut conn) => {
            record_committed(&mut conn, &tenant.principal, action, resource, resource_id).await;
        }
        Err(e) => {
            tracing::error!(error = %e, resource, "could not write the audit row of a catalog change");
        }
    }
}
