//! Playbooks, FAQs and tools: `model` holds the wire types, `store` the SQL (written once over
//! the [`store::Resource`] trait), `routes` the handlers of `/api/v1/playbooks`, `/faqs` and
//! `/tools`.

pub mod model;
pub mod routes;
pub mod store;
