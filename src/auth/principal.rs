//! The principal behind a request and the seam through which bearers become principals.

use futures::future::BoxFuture;

use crate::tenancy::slug::AccountSlug;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person, identified by the OIDC subject of a verified ID token.
    User { subject: String },
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
            Self::User { subject } => subject,
            Self::ApiKey { key_id, .. } => key_id,
        }
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

/// Turns a bearer token into a principal: step 4 of the request pipeline.
///
/// Implementations must verify the token completely (signature, expiry, revocation) and must
/// not touch any tenant database.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        bearer: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AuthRejection>>;
}

/// The authenticator used when no identity provider is configured: it refuses every bearer,
/// so a misconfigured instance fails closed.
#[derive(Debug, Default)]
pub struct NoIdentityProvider;

impl Authenticator for NoIdentityProvider {
    fn authenticate<'a>(
        &'a self,
        _bearer: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AuthRejection>> {
        Box::pin(async { Err(AuthRejection::new("no_identity_provider")) })
    }
}
