//! The principal behind a request and the seam through which bearers become principals.

use super::oidc::OrgRoles;
use crate::tenancy::slug::AccountSlug;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person, identified by the OIDC subject of a verified ID token, with the token's
    /// organisation and roles claims.
    User {
        subject: String,
        email: Option<String>,
        org_id: Option<String>,
        roles: OrgRoles,
    },
    /// An `sk_live_` API key of one account: full account access, never admin.
    ApiKey {
        account: AccountSlug,
        key_id: String,
    },
}

impl Principal {
    /// `user` or `api_key`, as written to logs and audit rows.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User { .. } => "user",
            Self::ApiKey { .. } => "api_key",
        }
    }

    /// The subject or key id (never the key itself).
    pub fn id(&self) -> &str {
        match self {
            Self::User { subject, .. } => subject,
            Self::ApiKey { key_id, .. } => key_id,
        }
    }

    /// `kind:id`, as the `created_by` columns record who made a row.
    pub fn created_by(&self) -> String {
        format!("{}:{}", self.kind(), self.id())
    }

    /// The account a credential is bound to, if it is bound to one.
    pub fn bound_account(&self) -> Option<&AccountSlug> {
        match self {
            Self::User { .. } => None,
            Self::ApiKey { account, .. } => Some(account),
        }
    }
}

/// Why a bearer was refused. `reason` is a short stable label for metrics and logs; it never
/// contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRejection {
    pub reason: &'static str,
}

impl AuthRejection {
    pub const fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}
