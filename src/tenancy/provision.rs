//! Databases: the system database, the tenant template, provisioning and migration fan-out.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use super::catalog::{self, ACCOUNT_COLUMNS, Account, Catalog};
use super::slug::{AccountSlug, NAMES_NOT_FOR_ACCOUNTS};
use crate::fleet::{self, Servers};

pub static SYSTEM_MIGRATOR: Migrator = sqlx::migrate!("./migrations/system");
/// The tenant migrations embedded in the binary. A function rather than a static because the
/// provisioner owns its migrator (tests run it with extra migrations).
pub fn tenant_migrator() -> Migrator {
    sqlx::migrate!("./migrations/tenant")
}

/// The database server's maintenance database, used for `CREATE/DROP DATABASE`.
const MAINTENANCE_DB: &str = "postgres";

/// The newest version a migrator knows (0 when it has none).
pub fn latest_version(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Quotes a PostgreSQL identifier (database names contain `-`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("account `{0}` already exists")]
    AlreadyExists(String),
    #[error("`{0}` is the name of a database that is not a tenant; choose another account name")]
    NameTaken(String),
    #[error("no account `{0}`")]
    NoSuchAccount(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ProvisionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Other(e.into())
    }
}

/// How the service's pool of the system database behaves.
#[derive(Debug, Clone)]
pub struct SystemPool {
    pub max_connections: u32,
    /// How long a query waits for a connection (connecting included) before it fails.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout` of the pool's connections.
    pub statement_timeout: Option<Duration>,
}

impl Default for SystemPool {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: None,
        }
    }
}

/// Creates the system database if it is missing, then applies pending system migrations.
/// Safe when several instances start together: a concurrent `CREATE DATABASE` is tolerated
/// and sqlx holds an advisory lock while migrating.
pub async fn prepare_system_database(system: &PgConnectOptions) -> anyhow::Result<PgPool> {
    prepare_system_database_with(system, &SystemPool::default()).await
}

/// [`prepare_system_database`] with the pool's settings. Broken connections never stay in the
/// pool: sqlx checks each one when it is returned and before it is handed out again.
pub async fn prepare_system_database_with(
    system: &PgConnectOptions,
    settings: &SystemPool,
) -> anyhow::Result<PgPool> {
    let name = system
        .get_database()
        .context("KATAVEN_DATABASE_URL must name the system database (…/kataven-admin)")?
        .to_owned();
    create_database_if_missing(system, &name, None).await?;
    // Migrations on a connection of their own, without the statement timeout.
    let mut conn = system
        .connect()
        .await
        .with_context(|| format!("connecting to the system database `{name}`"))?;
    SYSTEM_MIGRATOR
        .run(&mut conn)
        .await
        .context("applying system migrations")?;
    conn.close().await.ok();
    let mut options = system.clone();
    if let Some(limit) = settings.statement_timeout {
        options = options.options([("statement_timeout", format!("{}ms", limit.as_millis()))]);
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to the system database `{name}`"))
}

pub(crate) async fn maintenance(server: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    server
        .clone()
        .database(MAINTENANCE_DB)
        .connect()
        .await
        .context("connecting to the server's `postgres` database")
}

pub(crate) async fn database_exists(conn: &mut PgConnection, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

async fn create_database_if_missing(
    server: &PgConnectOptions,
    name: &str,
    template: Option<&str>,
) -> anyhow::Result<()> {
    let mut conn = maintenance(server).await?;
    if database_exists(&mut conn, name).await? {
        return Ok(());
    }
    let mut sql = format!("CREATE DATABASE {}", quote_ident(name));
    if let Some(t) = template {
        sql.push_str(&format!(" TEMPLATE {}", quote_ident(t)));
    }
    match sqlx::query(&sql).execute(&mut conn).await {
        Ok(_) => Ok(()),
        // 42P04 duplicate_database: someone else created it meanwhile.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        // 23505: two CREATE DATABASE racing on the catalog's unique index.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating database `{name}`")),
    }
}

/// Provisioning and migration of tenant databases.
#[derive(Clone)]
pub struct Provisioner {
    catalog: Catalog,
    /// Options of the system database (on server `main`).
    system: PgConnectOptions,
    /// The servers tenant databases live on.
    servers: Servers,
    migrator: Arc<Migrator>,
}

/// What `migrate` did to one tenant.
#[derive(Debug)]
pub struct TenantMigration {
    pub account: String,
    pub result: anyhow::Result<Migrated>,
}

/// A tenant brought to the newest schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Its schema version now (the newest this binary knows).
    pub version: i64,
    /// Migrations applied by this run; 0 when it was already current.
    pub applied: usize,
}

/// Where a database stands against a migrator (`migrate`, `doctor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    /// The newest migration applied successfully (0: none).
    pub version: i64,
    /// The migrator's migrations not applied yet.
    pub pending: usize,
    /// Applied migrations the migrator does not know: the database is newer than the binary.
    pub unknown: usize,
    /// Applied migrations whose checksum differs from the migrator's (edited after the fact).
    pub altered: usize,
    /// Migrations recorded as failed halfway (sqlx refuses to go on from there).
    pub failed: usize,
}

impl SchemaState {
    /// Reads the database's `_sqlx_migrations` (none when it has no such table).
    pub async fn of(conn: &mut PgConnection, migrator: &Migrator) -> sqlx::Result<Self> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&mut *conn)
                .await?;
        let rows: Vec<(i64, bool, Vec<u8>)> = match table {
            Some(_) => {
                sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                    .fetch_all(&mut *conn)
                    .await?
            }
            None => Vec::new(),
        };
        let known: std::collections::HashMap<i64, &[u8]> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, &*m.checksum))
            .collect();
        let mut state = Self::default();
        for (version, success, checksum) in &rows {
            match known.get(version) {
                None => state.unknown += 1,
                Some(_) if !success => state.failed += 1,
                Some(sum) if *sum != checksum.as_slice() => state.altered += 1,
                Some(_) => {}
            }
            if *success {
                state.version = state.version.max(*version);
            }
        }
        state.pending = known
            .keys()
            .filter(|v| !rows.iter().any(|(r, ok, _)| r == *v && *ok))
            .count();
        Ok(state)
    }
}

impl Provisioner {
    pub fn new(catalog: Catalog, system: PgConnectOptions, migrator: Arc<Migrator>) -> Self {
        let servers = Servers::new(catalog.pool().clone(), system.clone(), None, None);
        Self {
            catalog,
            system,
            servers,
            migrator,
        }
    }

    /// The credentials of the fleet's servers: the system database's password (the one in
    /// its options, which cannot be read back from them) and the directory of the other
    /// servers' passwords (`KATAVEN_SERVER_SECRETS_DIR`, one file per server id).
    pub fn with_credentials(
        mut self,
        system_password: Option<secrecy::SecretString>,
        secrets_dir: Option<std::path::PathBuf>,
    ) -> Self {
        self.servers = Servers::new(
            self.catalog.pool().clone(),
            self.system.clone(),
            system_password,
            secrets_dir,
        );
        self
    }

    /// The fleet's servers and how to reach them.
    pub fn servers(&self) -> &Servers {
        &self.servers
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Connection options of the system database.
    pub fn system_options(&self) -> &PgConnectOptions {
        &self.system
    }

    pub fn latest_tenant_version(&self) -> i64 {
        latest_version(&self.migrator)
    }

    /// The template database's name: `<system db>-template` (`kataven-admin-template`).
    pub fn template_name(&self) -> String {
        format!(
            "{}-template",
            self.system.get_database().unwrap_or("kataven-admin")
        )
    }

    /// Connection options of server `id` (without a database).
    pub async fn server_options(&self, id: &str) -> anyhow::Result<PgConnectOptions> {
        Ok(self.servers.get(id).await?.options.clone())
    }

    /// Connection options for an account's tenant database.
    pub async fn tenant_options(&self, account: &Account) -> anyhow::Result<PgConnectOptions> {
        Ok(self
            .servers
            .get(&account.server)
            .await?
            .database(&account.database_name))
    }

    /// Creates the template database on `server` if missing and migrates it to the newest schema.
    pub async fn prepare_template(&self, server: &PgConnectOptions) -> anyhow::Result<()> {
        let template = self.template_name();
        create_database_if_missing(server, &template, None).await?;
        let mut conn = server
            .clone()
            .database(&template)
            .connect()
            .await
            .context("connecting to the tenant template")?;
        self.migrator
            .run(&mut conn)
            .await
            .context("migrating the tenant template")?;
        // Close explicitly: `CREATE DATABASE … TEMPLATE` refuses while anyone is connected.
        conn.close().await?;
        Ok(())
    }

    /// Creates an account: a catalog row and a database cloned from the template, or neither.
    pub async fn create_account(
        &self,
        slug: &AccountSlug,
        display_name: &str,
        oidc_org_id: Option<&str>,
        server: Option<&str>,
    ) -> Result<Account, ProvisionError> {
        let new = NewAccount {
            slug,
            display_name,
            oidc_org_id,
            server,
        };
        self.create_account_with(new, Start::Template, async |_, _| Ok(()))
            .await
    }

    /// Creates an account whose database `fill` fills before anything commits (an import):
    /// `fill` gets the new database (cloned from the template, or empty) and the catalog's
    /// transaction, which holds the account's uncommitted row (for member rows and the like).
    /// Then the database is migrated to the newest schema and the catalog commits. Any failure
    /// leaves neither a catalog row nor a database, as for [`Self::create_account`].
    pub async fn create_account_with(
        &self,
        new: NewAccount<'_>,
        start: Start,
        fill: impl AsyncFnOnce(&mut PgConnection, &mut PgConnection) -> anyhow::Result<()>,
    ) -> Result<Account, ProvisionError> {
        let NewAccount {
            slug,
            display_name,
            oidc_org_id,
            server,
        } = new;
        let name = slug.as_str();
        if NAMES_NOT_FOR_ACCOUNTS.contains(&name)
            || name == self.template_name()
            || Some(name) == self.system.get_database()
        {
            return Err(ProvisionError::NameTaken(name.to_owned()));
        }
        let server = fleet::place(self.catalog.pool(), server).await?;
        let server_opts = self.server_options(&server).await?;
        let mut admin = maintenance(&server_opts).await?;
        if !database_exists(&mut admin, &self.template_name()).await? {
            self.prepare_template(&server_opts).await?;
        }
        if database_exists(&mut admin, name).await? {
            return Err(match catalog::account(self.catalog.pool(), name).await? {
                Some(_) => ProvisionError::AlreadyExists(name.to_owned()),
                None => ProvisionError::NameTaken(name.to_owned()),
            });
        }

        // The catalog row is inserted in a transaction that commits only once the database
        // exists; a concurrent create of the same slug waits on the primary key meanwhile.
        let mut tx = self.catalog.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (slug, display_name, database_name, server, oidc_org_id)
             VALUES ($1, $2, $1, $3, $4)",
        )
        .bind(name)
        .bind(display_name)
        .bind(server)
        .bind(oidc_org_id)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &inserted {
            if e.is_unique_violation() {
                return Err(ProvisionError::AlreadyExists(name.to_owned()));
            }
        }
        inserted?;

        match start {
            Start::Template => clone_template(&mut admin, name, &self.template_name()).await?,
            Start::Empty => create_empty(&mut admin, name).await?,
        }
        let created = async {
            let opts = server_opts.clone().database(name);
            let mut conn = opts
                .connect()
                .await
                .context("connecting to the new tenant")?;
            fill(&mut conn, &mut tx).await?;
            // A clone is as new as the template, a filled database as its fill left it: bring
            // it up to date.
            self.migrator
                .run(&mut conn)
                .await
                .context("migrating the new tenant")?;
            conn.close().await?;
            sqlx::query("UPDATE accounts SET schema_version = $2 WHERE slug = $1")
                .bind(name)
                .bind(self.latest_tenant_version())
                .execute(&mut *tx)
                .await?;
            let account = catalog::account(&mut *tx, name)
                .await?
                .context("account row vanished")?;
            tx.commit().await?;
            anyhow::Ok(account)
        }
        .await;
        match created {
            Ok(account) => Ok(account),
            Err(err) => {
                // Compensate: the catalog transaction is rolled back when dropped; drop the database.
                if let Err(drop_err) = drop_database(&mut admin, name).await {
                    tracing::error!(account = name, error = ?drop_err, "could not drop the database of a failed provisioning; drop it by hand");
                }
                Err(ProvisionError::Other(err))
            }
        }
    }

    /// Deletes an account from the catalog. With `purge` its database is dropped too;
    /// otherwise the database is kept (its name stays taken) so that the data can be recovered.
    pub async fn delete_account(
        &self,
        slug: &AccountSlug,
        purge: bool,
    ) -> Result<(), ProvisionError> {
        let mut tx = self.catalog.pool().begin().await?;
        let account: Option<Account> = sqlx::query_as(&format!(
            "DELETE FROM accounts WHERE slug = $1 RETURNING {ACCOUNT_COLUMNS}"
        ))
        .bind(slug.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let account = account.ok_or_else(|| ProvisionError::NoSuchAccount(slug.to_string()))?;
        if purge {
            let server = self.server_options(&account.server).await?;
            let mut admin = maintenance(&server).await?;
            drop_database(&mut admin, &account.database_name).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The tenant migrations this binary carries.
    pub fn tenant_migrations(&self) -> &Migrator {
        &self.migrator
    }

    /// Applies the tenant migrations up to `version` (included) to a database that has none
    /// yet: a database made [`Start::Empty`], brought to the schema of the data it receives.
    /// Refuses a version that is not one of the migrations this binary carries.
    pub async fn migrate_empty_to(
        &self,
        conn: &mut PgConnection,
        version: i64,
    ) -> anyhow::Result<()> {
        use sqlx::migrate::Migrate;
        let ups = || {
            self.migrator
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
        };
        if !ups().any(|m| m.version == version) {
            anyhow::bail!("schema version {version} is not a tenant migration of this binary");
        }
        conn.ensure_migrations_table().await?;
        for migration in ups().filter(|m| m.version <= version) {
            conn.apply(migration)
                .await
                .with_context(|| format!("applying tenant migration {}", migration.version))?;
        }
        Ok(())
    }

    /// Migrates one tenant database and records its version in the catalog.
    pub async fn migrate_tenant(&self, account: &Account) -> anyhow::Result<Migrated> {
        let mut conn = self.tenant_options(account).await?.connect().await?;
        let before = SchemaState::of(&mut conn, &self.migrator).await?;
        self.migrate_tenant_on(&mut conn, &account.slug).await?;
        conn.close().await?;
        Ok(Migrated {
            version: self.latest_tenant_version(),
            applied: before.pending,
        })
    }

    /// Migrates the tenant behind `conn` (the migrator's advisory lock makes this safe against
    /// other instances) and records the version in the catalog.
    pub async fn migrate_tenant_on(
        &self,
        conn: &mut PgConnection,
        slug: &str,
    ) -> anyhow::Result<()> {
        // Migrations may run longer than the connection's `statement_timeout` allows.
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await?;
        // `run_direct` on the connection itself: `run` takes an `Acquire`, whose lifetimes make
        // the future unusable inside request handlers.
        let migrated = self.migrator.run_direct(&mut *conn).await;
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
        migrated?;
        self.catalog
            .set_schema_version(slug, self.latest_tenant_version())
            .await?;
        Ok(())
    }

    /// `kataven-hub migrate`: the template on every server in use, then every tenant with at
    /// most `concurrency` at once. A failing tenant is reported and does not stop the others;
    /// migrations are recorded per database, so a re-run resumes where it failed.
    pub async fn migrate_all(&self, concurrency: usize) -> anyhow::Result<Vec<TenantMigration>> {
        let accounts = self.prepare_migration().await?;
        Ok(self
            .migrate_tenants(accounts, concurrency)
            .collect::<Vec<_>>()
            .await)
    }

    /// The first half of [`Self::migrate_all`]: prepares the template on every server in use
    /// (a failure there stops everything before any tenant is touched) and returns the
    /// accounts whose databases are to be migrated.
    pub async fn prepare_migration(&self) -> anyhow::Result<Vec<Account>> {
        let accounts = self.catalog.all_accounts().await?;
        // Every server that holds an account or may receive one.
        let servers: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM servers
             WHERE state <> 'retired' OR id IN (SELECT server FROM accounts) ORDER BY id",
        )
        .fetch_all(self.catalog.pool())
        .await?;
        for server in servers {
            let opts = self.server_options(&server).await?;
            self.prepare_template(&opts)
                .await
                .with_context(|| format!("template on server `{server}`"))?;
        }
        Ok(accounts)
    }

    /// The second half of [`Self::migrate_all`]: migrates `accounts`, at most `concurrency` at
    /// once, yielding each result as it finishes (so that a caller can show progress).
    pub fn migrate_tenants(
        &self,
        accounts: Vec<Account>,
        concurrency: usize,
    ) -> impl futures::Stream<Item = TenantMigration> + '_ {
        futures::stream::iter(accounts)
            .map(move |account| async move {
                let result = self.migrate_tenant(&account).await;
                TenantMigration {
                    account: account.slug,
                    result,
                }
            })
            .buffer_unordered(concurrency.max(1))
    }
}

/// What a new account is made of (see [`Provisioner::create_account_with`]).
#[derive(Debug, Clone, Copy)]
pub struct NewAccount<'a> {
    pub slug: &'a AccountSlug,
    pub display_name: &'a str,
    pub oidc_org_id: Option<&'a str>,
    /// The server's id (`None`: where placement puts it, see [`fleet::place`]).
    pub server: Option<&'a str>,
}

/// How a new account's database starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A clone of the template, at the template's schema.
    Template,
    /// Empty, without any schema: the fill migrates it to the version it needs.
    Empty,
}

/// `CREATE DATABASE` without a template of ours (as the template itself is created).
async fn create_empty(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("CREATE DATABASE {}", quote_ident(name)))
        .execute(admin)
        .await
        .with_context(|| format!("creating database `{name}`"))?;
    Ok(())
}

/// `CREATE DATABASE … TEMPLATE …`, retried briefly while the template is in use
/// (another provisioning or a template migration holds a connection to it).
pub(crate) async fn clone_template(
    admin: &mut PgConnection,
    name: &str,
    template: &str,
) -> anyhow::Result<()> {
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE {}",
        quote_ident(name),
        quote_ident(template)
    );
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match sqlx::query(&sql).execute(&mut *admin).await {
            Ok(_) => return Ok(()),
            // 55006 object_in_use: "source database is being accessed by other users".
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && attempt < 6 =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating database `{name}` from the template"));
            }
        }
    }
    unreachable!("the loop returns")
}

pub(crate) async fn drop_database(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(name)
    ))
    .execute(admin)
    .await
    .with_context(|| format!("dropping database `{name}`"))?;
    Ok(())
}
