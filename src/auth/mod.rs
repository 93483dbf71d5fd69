//! Authentication: who is calling. Authorization (may they act in this account) lives with the
//! tenant extractor in [`crate::extract`].

pub mod principal;

pub use principal::{AuthRejection, Authenticator, NoIdentityProvider, Principal};
