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

/// Records a change made in the catalog (members, keys) in the tenant's audit log. The change
/// is committed already; a failure to audit is logged, not turned into an error for the caller.
pub async fn record_catalog_change(
    state: &crate::state::AppState,
    tenant: &crate::extract::Tenant,
    action: &str,
    resource: &str,
    resource_id: &str,
) {
    let result = async {
        let mut conn = state.pools.acquire(&tenant.account).await?;
        record(
            &mut conn,
            &tenant.principal,
            action,
            resource,
            Some(resource_id),
        )
        .await?;
        Ok::<_, crate::error::ApiError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, resource, "could not write the audit row of a catalog change");
    }
}
