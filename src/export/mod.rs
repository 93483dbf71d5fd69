//! An account's data, out and back in: `kataven-hub accounts export|import` and
//! `GET /api/v1/export` (docs/export.md).
//!
//! `archive.rs` is the format (JSON lines: a header, rows by section, a manifest with counts
//! and checksums) and its writer and verifying reader.

pub mod archive;
