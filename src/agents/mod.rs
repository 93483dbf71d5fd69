//! Agents and their associations (tools, playbooks, FAQs): `model` holds the wire types,
//! `store` the SQL, `routes` the handlers of `/api/v1/agents`.

pub mod model;
pub mod routes;
pub mod store;

pub use routes::AgentId;
