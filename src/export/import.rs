//! `kataven-hub accounts import`: a new account from an archive, all or nothing.
//!
//! The account is created by the provisioner with an empty database, which is migrated to the
//! archive's schema version, filled in one transaction while the archive is read and verified,
//! and then migrated to the newest schema; the catalog's row (with the members and limit
//! overrides) commits last. A refused archive — a checksum that does not match, a truncated
//! file, a row the database refuses — leaves neither a catalog row nor a database.

use std::path::Path;

use sqlx::{Connection, PgConnection};
use tokio::io::AsyncBufRead;

use super::archive::{AccountInfo, ArchiveError, ArchiveReader, Section};
use super::store;
use crate::tenancy::catalog::Account;
use crate::tenancy::provision::{NewAccount, ProvisionError, Provisioner, Start};
use crate::tenancy::slug::AccountSlug;

/// Rows loaded with one statement.
const BATCH_ROWS: usize = 1000;
/// Bytes of rows loaded with one statement (a batch closes at the first limit it reaches).
const BATCH_BYTES: usize = 4 << 20;

/// What the operator may choose instead of the archive's values.
#[derive(Debug, Default, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// The display name (default: the exported account's).
    pub display_name: Option<&'a str>,
    /// The OIDC organisation id (default: the exported account's).
    pub oidc_org_id: Option<&'a str>,
    /// The database server (default: the system database's).
    pub server: Option<&'a str>,
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub account: Account,
    /// The exported account.
    pub source: AccountInfo,
    /// The archive's schema version (the new account is at the newest).
    pub from_version: i64,
    /// Rows read per section, in [`Section::ALL`]'s order. Key metadata is read and verified
    /// but not loaded.
    pub rows: Vec<(Section, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "the archive's schema version {archive} is newer than this binary's {known}: import it \
         with a newer kataven-hub"
    )]
    NewerSchema { archive: i64, known: i64 },
    #[error("the archive's schema version {0} is not one of this binary's tenant migrations")]
    UnknownSchema(i64),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// Imports the archive at `path` (`-`: standard input) as the new account `slug`.
pub async fn from_path(
    provisioner: &Provisioner,
    slug: &AccountSlug,
    path: &Path,
    options: ImportOptions<'_>,
) -> anyhow::Result<Imported> {
    use anyhow::Context;
    const BUFFER: usize = 256 << 10;
    if path == Path::new("-") {
        let input = tokio::io::BufReader::with_capacity(BUFFER, tokio::io::stdin());
        return Ok(import(provisioner, slug, input, options).await?);
    }
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let input = tokio::io::BufReader::with_capacity(BUFFER, file);
    Ok(import(provisioner, slug, input, options).await?)
}

/// Imports the archive read from `input` as the new account `slug`.
pub async fn import<R: AsyncBufRead + Unpin>(
    provisioner: &Provisioner,
    slug: &AccountSlug,
    input: R,
    options: ImportOptions<'_>,
) -> Result<Imported, ImportError> {
    let mut archive = ArchiveReader::new(input);
    let header = archive.header().await?;
    let known = provisioner.latest_tenant_version();
    if header.schema_version > known {
        return Err(ImportError::NewerSchema {
            archive: header.schema_version,
            known,
        });
    }
    if !provisioner
        .tenant_migrations()
        .iter()
        .any(|m| m.version == header.schema_version)
    {
        return Err(ImportError::UnknownSchema(header.schema_version));
    }
    let new = NewAccount {
        slug,
        display_name: options.display_name.unwrap_or(&header.account.display_name),
        oidc_org_id: options
            .oidc_org_id
            .or(header.account.oidc_org_id.as_deref()),
        server: options.server,
    };
    let mut counts = [0u64; Section::ALL.len()];
    let version = header.schema_version;
    let reader = &mut archive;
    let tally = &mut counts;
    let account = provisioner
        .create_account_with(new, Start::Empty, async move |tenant, catalog| {
            provisioner.migrate_empty_to(tenant, version).await?;
            load(reader, tenant, catalog, slug.as_str(), tally).await
        })
        .await?;
    Ok(Imported {
        account,
        source: header.account,
        from_version: version,
        rows: Section::ALL.into_iter().zip(counts).collect(),
    })
}

/// Reads every row of the archive into the new account: the tenant's tables in one
/// transaction on `tenant`, members and limit overrides on `catalog` (the provisioner's
/// transaction). Commits the tenant's transaction only once the manifest has been verified.
async fn load<R: AsyncBufRead + Unpin>(
    archive: &mut ArchiveReader<R>,
    tenant: &mut PgConnection,
    catalog: &mut PgConnection,
    slug: &str,
    counts: &mut [u64; Section::ALL.len()],
) -> anyhow::Result<()> {
    let mut tx = tenant.begin().await?;
    store::prepare_load(&mut tx).await?;
    let salt: [u8; 32] = rand::random();
    let mut batch = Batch::default();
    while let Some((section, row)) = archive.next().await? {
        if batch.section != Some(section) || batch.is_full() {
            batch.flush(&mut tx, catalog, slug, &salt).await?;
            batch.section = Some(section);
        }
        batch.push(row);
        let index = Section::ALL.iter().position(|s| *s == section);
        counts[index.expect("a known section")] += 1;
    }
    batch.flush(&mut tx, catalog, slug, &salt).await?;
    tx.commit().await?;
    Ok(())
}

/// Rows of one section waiting to be loaded, as a JSON array.
#[derive(Default)]
struct Batch {
    section: Option<Section>,
    json: String,
    rows: usize,
}

impl Batch {
    fn push(&mut self, row: &str) {
        self.json.push(if self.rows == 0 { '[' } else { ',' });
        self.json.push_str(row);
        self.rows += 1;
    }

    fn is_full(&self) -> bool {
        self.rows >= BATCH_ROWS || self.json.len() >= BATCH_BYTES
    }

    /// Loads the waiting rows where their section goes, and empties the batch.
    async fn flush(
        &mut self,
        tenant: &mut PgConnection,
        catalog: &mut PgConnection,
        slug: &str,
        salt: &[u8],
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let Some(section) = self.section.filter(|_| self.rows > 0) else {
            return Ok(());
        };
        self.json.push(']');
        match section {
            Section::Members => store::load_members(catalog, slug, &self.json).await,
            Section::Limits => store::load_limits(catalog, slug, &self.json).await,
            // Key metadata is informational: no key is recreated (docs/export.md).
            Section::ApiKeys | Section::WidgetKeys => Ok(()),
            tenant_section => {
                let table = store::tenant_table(tenant_section).expect("a tenant section");
                store::load_tenant_rows(tenant, table, &self.json, salt).await
            }
        }
        .with_context(|| format!("loading the rows of `{}`", section.name()))?;
        self.json.clear();
        self.rows = 0;
        Ok(())
    }
}
