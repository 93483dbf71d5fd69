//! `/api/v1/members`: who may act in the account. Listing is open to every principal of the
//! account; adding, changing and removing members is admin-only. The last admin stays.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::{self, Action, Resource};
use crate::auth::membership::CatalogChange;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, Tenant, TenantDb};
use crate::json::Json;
use crate::state::AppState;
use crate::tenancy::catalog::{Catalog, Member, MemberChange, Role};

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberOut {
    pub subject: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<Member> for MemberOut {
    fn from(m: Member) -> Self {
        Self {
            subject: m.subject,
            role: m.role,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewMember {
    pub subject: String,
    pub role: Role,
}

/// The account's members.
#[utoipa::path(get, operation_id = "list_members", path = "/members", tag = "members",
    responses((status = 200, description = "Members", body = Vec<MemberOut>)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
) -> ApiResult<Json<Vec<MemberOut>>> {
    let members = state.catalog.members(&tenant.slug).await?;
    Ok(Json(members.into_iter().map(Into::into).collect()))
}

/// Admin only: add a member or change its role (201 either way). Demoting the last admin is
/// refused (409).
#[utoipa::path(post, security(("bearer" = [], "account" = [], "admin" = [])), operation_id = "upsert_member", path = "/members", tag = "members", request_body = NewMember,
    responses((status = 201, description = "The member", body = MemberOut),
              (status = 409, description = "It would leave the account without an admin", body = crate::error::ErrorBody)))]
pub async fn upsert(
    State(state): State<AppState>,
    Admin(mut db): Admin,
    Json(body): Json<NewMember>,
) -> ApiResult<Response> {
    let subject = body.subject.trim();
    if subject.is_empty() || subject.chars().count() > 255 {
        return Err(ApiError::invalid_field(
            "subject",
            "must be 1–255 characters",
        ));
    }
    change(&state, &mut db, subject, Some(body.role), |member| {
        (StatusCode::CREATED, Json(MemberOut::from(member))).into_response()
    })
    .await
}

/// Admin only: remove a member. Removing the last admin is refused (409).
#[utoipa::path(delete, security(("bearer" = [], "account" = [], "admin" = [])), operation_id = "remove_member", path = "/members/{subject}", tag = "members",
    params(("subject" = String, Path, description = "The member's OIDC subject")),
    responses((status = 204, description = "Removed"),
              (status = 409, description = "It would leave the account without an admin", body = crate::error::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Admin(mut db): Admin,
    Path(subject): Path<String>,
) -> ApiResult<Response> {
    change(&state, &mut db, &subject, None, |_| {
        StatusCode::NO_CONTENT.into_response()
    })
    .await
}

/// Gives `subject` the role `role`, or removes them (`None`), in the catalog, answering
/// `answer(member)`; then every instance's caches drop the account's members, and the change
/// is audited (after the commit, so that it never fails the request).
async fn change(
    state: &AppState,
    db: &mut TenantDb,
    subject: &str,
    role: Option<Role>,
    answer: impl FnOnce(Member) -> Response,
) -> ApiResult<Response> {
    let mut write = db.catalog_write(state).await?;
    let slug = &db.tenant.slug;
    let member = match Catalog::change_member(&mut write, slug, subject, role).await? {
        MemberChange::Done(member) => member,
        MemberChange::NotAMember => return Err(ApiError::not_found("no such member")),
        MemberChange::LastAdmin => return Err(last_admin()),
    };
    let answer = write.commit(answer(member)).await?;
    state
        .cache
        .invalidate(&CatalogChange::Members(slug.to_string()));
    let action = if role.is_some() {
        Action::Upsert
    } else {
        Action::Delete
    };
    let change = audit::Change::of(action, Resource::Member, subject);
    audit::record_committed(&mut db.conn, &db.tenant.actor(), &change).await;
    Ok(answer)
}

fn last_admin() -> ApiError {
    ApiError::Conflict("the account must keep at least one admin".into())
}
