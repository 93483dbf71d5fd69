//! Authentication: who is calling. Authorization (may they act in this account) lives with the
//! tenant extractor in [`crate::extract`] and the cached catalog lookups in [`membership`].

pub mod api_keys;
pub mod crypto;
pub mod dev_issuer;
pub mod identity;
pub mod keys;
pub mod membership;
pub mod oidc;
pub mod origin;
pub mod principal;
pub mod signing;
pub mod widget_keys;
pub mod widget_session;

pub use identity::Identity;
pub use principal::{AuthRejection, Principal};
