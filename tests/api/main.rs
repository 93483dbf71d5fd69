//! Integration tests: one binary, real PostgreSQL, real HTTP on a real port.

mod api_keys;
mod audit_log;
mod browser;
mod cli;
mod client;
mod compose;
mod console;
mod docs;
mod export;
mod faults;
mod hostile;
mod idempotency;
mod identity;
mod limits;
mod login;
mod moves;
mod openapi;
mod pipeline;
mod pools;
mod provisioning;
mod public;
mod resources;
mod servers;
mod support;
mod widget;
