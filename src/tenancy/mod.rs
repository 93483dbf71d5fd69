//! Tenancy by database isolation: slugs, the catalog, tenant pools and provisioning.

pub mod catalog;
pub mod embedded_pg;
pub mod gate;
pub mod pool_error;
pub mod pools;
pub mod provision;
pub mod slug;
