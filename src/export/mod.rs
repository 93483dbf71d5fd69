//! An account's data, out and back in: `kataven-hub accounts export|import` and
//! `GET /api/v1/export` (docs/export.md).
//!
//! `archive.rs` is the format (JSON lines: a header, rows by section, a manifest with counts
//! and checksums) and its writer and verifying reader; `store.rs` the SQL; this file the
//! export itself (a snapshot of the tenant database, streamed through a cursor, so memory
//! stays flat whatever the account's size); `import.rs` the import (a new account, all or
//! nothing); `routes.rs` the HTTP endpoint.

pub mod archive;
pub mod import;
pub mod routes;
pub mod store;

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use self::archive::{AccountInfo, ArchiveError, ArchiveWriter, FORMAT, FORMAT_VERSION, Header};
use self::archive::{Manifest, Section};
use crate::store::StoreError;
use crate::tenancy::catalog::{Account, AccountStatus};
use crate::tenancy::provision::Provisioner;

/// Rows fetched from the cursor at a time: what an export holds of a table at once.
const FETCH_ROWS: usize = 100;

/// Where an archive's bytes go: a file, standard output, or an HTTP body.
pub trait Sink: Send {
    fn send(&mut self, bytes: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
}

/// A [`Sink`] over an async writer.
pub struct WriteSink<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> Sink for WriteSink<W> {
    async fn send(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.0.write_all(&bytes).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "the account's database is at schema version {found}, newer than this binary's \
         {known}: export it with a newer kataven-hub"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("no account `{0}`")]
    NoAccount(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("writing the archive: {0}")]
    Io(#[from] io::Error),
}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub manifest: Manifest,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// An export whose snapshot is taken: a REPEATABLE READ, read-only transaction on the tenant
/// database, and the catalog's part of the account read in a snapshot of its own. Failures up
/// to here are answered before any byte is written; [`Export::write`] streams the rest.
pub struct Export<'c> {
    tx: Transaction<'c, Postgres>,
    header: Header,
    catalog: Vec<(Section, String)>,
    started: Instant,
}

impl<'c> Export<'c> {
    /// Takes the snapshot of account `slug` on `conn` (its tenant database); `known` is the
    /// newest tenant schema this binary knows.
    pub async fn begin(
        conn: &'c mut PgConnection,
        catalog: &PgPool,
        slug: &str,
        known: i64,
    ) -> Result<Self, ExportError> {
        let started = Instant::now();
        let mut tx = conn.begin_with(store::SNAPSHOT).await?;
        let schema_version = store::schema_version(&mut tx).await?;
        if schema_version > known {
            return Err(ExportError::NewerSchema {
                found: schema_version,
                known,
            });
        }
        let (account, rows) = store::catalog_part(catalog, slug)
            .await?
            .ok_or_else(|| ExportError::NoAccount(slug.to_owned()))?;
        let header = Header {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            schema_version,
            exported_at: Utc::now(),
            hub_version: env!("CARGO_PKG_VERSION").to_owned(),
            account: account_info(&account),
        };
        Ok(Self {
            tx,
            header,
            catalog: rows,
            started,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Writes the archive into `sink`: the catalog's rows, every tenant table through a
    /// cursor ([`FETCH_ROWS`] rows at a time), the manifest. Ends the snapshot.
    pub async fn write(mut self, sink: &mut impl Sink) -> Result<Summary, ExportError> {
        let mut writer = ArchiveWriter::new(&self.header);
        let mut bytes = 0u64;
        for (section, row) in std::mem::take(&mut self.catalog) {
            writer.row(section, &row)?;
        }
        for table in &store::TENANT_TABLES {
            store::open_cursor(&mut self.tx, table).await?;
            loop {
                let rows = store::fetch(&mut self.tx, FETCH_ROWS).await?;
                for row in &rows {
                    writer.row(table.section, row)?;
                    if let Some(chunk) = writer.take() {
                        bytes += chunk.len() as u64;
                        sink.send(chunk).await?;
                    }
                }
                if rows.len() < FETCH_ROWS {
                    break;
                }
            }
            store::close_cursor(&mut self.tx).await?;
        }
        // Read-only: nothing to commit.
        self.tx.rollback().await?;
        let (last, manifest) = writer.finish();
        bytes += last.len() as u64;
        sink.send(last).await?;
        Ok(Summary {
            manifest,
            bytes,
            elapsed: self.started.elapsed(),
        })
    }
}

fn account_info(account: &Account) -> AccountInfo {
    AccountInfo {
        slug: account.slug.clone(),
        display_name: account.display_name.clone(),
        oidc_org_id: account.oidc_org_id.clone(),
        status: match account.status {
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
        }
        .to_owned(),
        created_at: account.created_at,
    }
}

/// `kataven-hub accounts export`: the account's archive into `out` (standard output when
/// `None`). A file is written as `<out>.partial` and renamed once complete, so that `out`
/// never holds half an archive. A tenant database behind the newest schema is migrated first,
/// as opening its pool would.
pub async fn to_path(
    provisioner: &Provisioner,
    account: &Account,
    out: Option<&Path>,
) -> anyhow::Result<Summary> {
    use anyhow::Context;
    let mut conn = provisioner.tenant_options(account).await?.connect().await?;
    if account.schema_version < provisioner.latest_tenant_version() {
        provisioner
            .migrate_tenant_on(&mut conn, &account.slug)
            .await?;
    }
    let export = Export::begin(
        &mut conn,
        provisioner.catalog().pool(),
        &account.slug,
        provisioner.latest_tenant_version(),
    )
    .await?;
    let summary = match out {
        None => {
            let mut sink = WriteSink(tokio::io::stdout());
            let summary = export.write(&mut sink).await?;
            sink.0.flush().await?;
            summary
        }
        Some(path) => {
            let mut partial = path.as_os_str().to_owned();
            partial.push(".partial");
            let partial = std::path::PathBuf::from(partial);
            let file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut sink = WriteSink(file);
            let written = async {
                let summary = export.write(&mut sink).await?;
                sink.0.flush().await?;
                sink.0.sync_all().await?;
                tokio::fs::rename(&partial, path).await?;
                anyhow::Ok(summary)
            }
            .await;
            if written.is_err() {
                let _ = tokio::fs::remove_file(&partial).await;
            }
            written.with_context(|| format!("writing {}", path.display()))?
        }
    };
    conn.close().await?;
    Ok(summary)
}
