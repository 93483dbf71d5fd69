//! The embeddable widget: its public endpoints (`routes.rs`) behind the widget caller
//! (`caller.rs`: key, origin, quota, account, once for every endpoint), the account's branding
//! and each agent's widget policy (`settings.rs`), and their SQL (`store.rs`).

pub mod caller;
pub mod routes;
pub mod settings;
pub mod store;
