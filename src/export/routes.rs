//! `GET /api/v1/export`: the account's archive, streamed, for admins (`X-Admin: true`).
//!
//! The export runs in a task of its own that owns the request's tenant connection (and the
//! request's place in the account's limits) until the archive is written: the snapshot and the
//! catalog are read before the answer starts, so that their failures are JSON errors; after
//! that the body is streamed through a small channel, so memory stays flat and a client that
//! stops reading holds the connection for at most [`STALL`].

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::{Export, ExportError, Sink};
use crate::audit::{self, Action, Change, Resource};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, TenantDb};
use crate::state::AppState;

/// Exports running at once on an instance; another one answers 503 with `Retry-After`. Each
/// holds a tenant connection for as long as its client reads.
pub const MAX_CONCURRENT: usize = 8;
/// How long an export waits for its client to take the next chunk before it gives up.
pub const STALL: Duration = Duration::from_secs(60);
/// Chunks (of about 64 KiB) waiting for the client.
const CHANNEL_CHUNKS: usize = 4;

static RUNNING: Semaphore = Semaphore::const_new(MAX_CONCURRENT);

/// Admin only: the account's data as one archive, streamed.
///
/// JSON lines (docs/export.md): a header, then the account's members, limit overrides, the
/// metadata of its keys (never a key or its hash), its agents, tools, playbooks, FAQs, their
/// links and its widget settings, and last a manifest with counts and sha256 checksums. The
/// audit log is not exported. `kataven-hub accounts import` makes a new account of it. Each
/// export is recorded in the audit log (`export`, `account`). At most 8 run at once per
/// instance (503 with `Retry-After` beyond).
#[utoipa::path(get, security(("bearer" = [], "account" = [], "admin" = [])), operation_id = "export_account", path = "/export", tag = "export",
    responses((status = 200, description = "The archive, streamed: one JSON object a line, the `manifest` last (a body without it was cut off and is refused by `accounts import`)",
        content_type = "application/x-ndjson", body = String,
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"<account>-<UTC time>.kataven.jsonl\"`")))))]
pub async fn export(State(state): State<AppState>, Admin(db): Admin) -> ApiResult<Response> {
    let permit = RUNNING
        .try_acquire()
        .map_err(|_| ApiError::unavailable("too many exports are running; retry later"))?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let (chunks_tx, chunks_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let slug = db.tenant.slug.to_string();
    tokio::spawn(
        async move {
            let _permit = permit;
            run(state, db, ready_tx, chunks_tx).await;
        }
        .instrument(tracing::Span::current()),
    );
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::Internal(anyhow::anyhow!("the export task ended"))),
    }
    let body = futures::stream::unfold(chunks_rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let filename = format!(
        "attachment; filename=\"{slug}-{}.kataven.jsonl\"",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::CONTENT_DISPOSITION, filename),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The export task: audit, snapshot, then the archive into the channel. Answers `ready` once
/// the snapshot is taken (or with the error that prevented it).
async fn run(
    state: AppState,
    db: TenantDb,
    ready: oneshot::Sender<ApiResult<()>>,
    chunks: mpsc::Sender<io::Result<Bytes>>,
) {
    let TenantDb {
        tenant, mut conn, ..
    } = db;
    let slug = tenant.slug.as_str();
    let change = Change::of(Action::Export, Resource::Account, slug);
    audit::record_committed(&mut conn, &tenant.actor(), &change).await;
    let known = state.provisioner.latest_tenant_version();
    let export = match Export::begin(&mut conn, state.catalog.pool(), slug, known).await {
        Ok(export) => export,
        Err(e) => {
            let _ = ready.send(Err(api_error(e)));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut sink = ChannelSink {
        chunks: chunks.clone(),
    };
    match export.write(&mut sink).await {
        Ok(summary) => tracing::info!(
            rows = summary.manifest.rows,
            bytes = summary.bytes,
            ms = summary.elapsed.as_millis() as u64,
            "export finished"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "export failed; the archive was cut off before its manifest");
            // Ends the body with an error, so that the client sees a broken transfer rather
            // than a clean end (best effort: a client that stopped reading sees nothing).
            let _ = chunks.try_send(Err(io::Error::other("the export failed")));
        }
    }
}

fn api_error(e: ExportError) -> ApiError {
    match e {
        ExportError::Store(e) => e.into(),
        // An instance older than the account's database (a deploy in progress): a newer
        // instance can answer.
        ExportError::NewerSchema { .. } => {
            tracing::warn!(error = %e, "export refused");
            ApiError::unavailable("this instance is older than the account's database")
        }
        other => ApiError::Internal(other.into()),
    }
}

/// The body's side of the channel: a chunk is handed over within [`STALL`] or the export ends.
struct ChannelSink {
    chunks: mpsc::Sender<io::Result<Bytes>>,
}

impl Sink for ChannelSink {
    async fn send(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        match tokio::time::timeout(STALL, self.chunks.send(Ok(Bytes::from(bytes)))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
        }
    }
}
