//! The `kataven-hub` command line: serve, dev, migrate, accounts.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{ConnectOptions, Connection};
use tokio::net::TcpListener;

use crate::audit::{self, Action, Change, Resource};
use crate::auth::dev_issuer::upsert_dev_user;
use crate::config::Config;
use crate::fleet::moves::{self, Move, MoveOptions, Mover};
use crate::server;
use crate::tenancy::catalog::{Account, AccountStatus, Role};
use crate::tenancy::embedded_pg::{self, EmbeddedPostgres};
use crate::tenancy::provision::{ProvisionError, Provisioner};
use crate::tenancy::slug::{AccountSlug, SYSTEM_DATABASE};

#[derive(Debug, Parser)]
#[command(
    name = "kataven-hub",
    version,
    about = "Kataven Hub API: multi-tenant management backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the production server.
    Serve,
    /// Run everything locally: embedded PostgreSQL (unless KATAVEN_DATABASE_URL is set),
    /// dev login, demo account `acme`.
    Dev,
    /// Create/upgrade the system database, the tenant template and every tenant database.
    Migrate,
    /// Check the configuration and every dependency, one line per check; exits non-zero when
    /// any check failed. Changes nothing.
    Doctor,
    /// Manage accounts (tenants).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage the database servers tenant databases live on (docs/fleet.md).
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Manage API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Print the OpenAPI document (the committed `openapi/openapi.json` equals it).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account and its database (cloned from the tenant template).
    Create {
        slug: String,
        #[command(flatten)]
        new: NewAccountArgs,
    },
    /// Write the account's data as one archive (JSON lines with a manifest; docs/export.md):
    /// tenant tables, members, key metadata (never a key), widget settings, limit overrides.
    Export {
        slug: String,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Create a new account from an archive of `accounts export`, all or nothing.
    Import {
        slug: String,
        /// The archive (`-`: standard input).
        file: std::path::PathBuf,
        #[command(flatten)]
        new: NewAccountArgs,
    },
    /// Move an account's database to another server while the account stays in use
    /// (docs/fleet.md); run again to resume an interrupted move.
    #[command(group(clap::ArgGroup::new("what").required(true)
        .args(["to", "status", "abort", "finish", "revert"])))]
    Move {
        slug: String,
        /// The server to move to (`servers list`).
        #[arg(long)]
        to: Option<String>,
        /// Show the account's move, if any.
        #[arg(long)]
        status: bool,
        /// Undo a move that has not switched: the account stays where it is.
        #[arg(long)]
        abort: bool,
        /// Drop the old database of a switched move (kept until then, fenced).
        #[arg(long)]
        finish: bool,
        /// Point a switched account back at its old database, losing the writes made since
        /// the cut-over (for a lost target server).
        #[arg(long)]
        revert: bool,
        /// Accept a copy with pg_dump, which pauses the account's writes for the whole copy,
        /// when the source server has no wal_level = logical.
        #[arg(long)]
        allow_write_pause: bool,
        /// With --to: copy and leave the target following the source, without cutting over
        /// (run again without it to cut over, e.g. in a quiet hour).
        #[arg(long, requires = "to")]
        copy_only: bool,
    },
    /// List every account.
    List,
    /// Suspend an account: its requests answer 403 `account_suspended`.
    Suspend { slug: String },
    /// Resume a suspended account.
    Resume { slug: String },
    /// Delete an account from the catalog; `--purge` also drops its database.
    Delete {
        slug: String,
        #[arg(long)]
        purge: bool,
    },
    /// Manage account members.
    #[command(subcommand)]
    Members(MembersCommand),
    /// Show or override an account's limits. A number sets the override (0 blocks the
    /// dimension); `default` clears it; `--clear` clears them all.
    Limits {
        slug: String,
        #[arg(long, value_parser = limit_arg)]
        per_minute: Option<LimitArg>,
        #[arg(long, value_parser = limit_arg)]
        per_hour: Option<LimitArg>,
        #[arg(long, value_parser = limit_arg)]
        per_day: Option<LimitArg>,
        #[arg(long, value_parser = limit_arg)]
        concurrent: Option<LimitArg>,
        #[arg(long, value_parser = limit_arg)]
        daily_minutes: Option<LimitArg>,
        /// Clear every override (back to the configured defaults).
        #[arg(long)]
        clear: bool,
    },
}

/// What `accounts create` and `accounts import` may say of the new account.
#[derive(Debug, clap::Args)]
pub struct NewAccountArgs {
    /// Display name (default: the slug; for an import, the exported account's).
    #[arg(long)]
    name: Option<String>,
    /// The account's OIDC organisation id (Zitadel org; for an import, default: the exported
    /// account's).
    #[arg(long)]
    org_id: Option<String>,
    /// The server for the tenant database (`servers list`; default: the active server with
    /// the fewest accounts per weight).
    #[arg(long)]
    server: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ServersCommand {
    /// Add a database server (it must be reachable; the tenant template is prepared there).
    Add {
        /// Its id (`db2`): 1–63 of a-z, 0-9, `-`, `_`.
        id: String,
        /// `postgres://[user@]host[:port][?sslmode=…]`, without a password (the password is
        /// read from KATAVEN_SERVER_SECRETS_DIR/<id>, else the system database's is used).
        url: String,
        /// Placement weight (default 100): a server of weight 200 gets twice the accounts.
        #[arg(long)]
        weight: Option<i32>,
        /// Connections one instance opens to it at most (default: KATAVEN_DB_CONNECTION_BUDGET).
        #[arg(long)]
        connection_budget: Option<i32>,
    },
    /// List the servers: state, accounts, size, connections, schema versions.
    List,
    /// Stop placing new accounts on a server (its accounts stay).
    Drain { id: String },
    /// Place new accounts on a server again.
    Activate { id: String },
    /// Retire a server that holds no account any more.
    Retire { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create an API key and print it once (bootstrap for headless set-ups).
    Create {
        slug: String,
        #[arg(long)]
        name: String,
        /// never, 30d, 90d or 1y.
        #[arg(long, default_value = "90d")]
        expiry: crate::keys::api::Expiry,
    },
}

/// A limit override: a number, or `default` to clear it.
#[derive(Debug, Clone, Copy)]
pub enum LimitArg {
    Set(u32),
    Default,
}

fn limit_arg(s: &str) -> Result<LimitArg, String> {
    if s == "default" {
        return Ok(LimitArg::Default);
    }
    s.parse::<u32>()
        .ok()
        .filter(|n| *n <= i32::MAX as u32)
        .map(LimitArg::Set)
        .ok_or_else(|| format!("`{s}` is neither a count nor `default`"))
}

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a member (or change its role).
    Add {
        slug: String,
        subject: String,
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
    },
    /// Remove a member.
    Remove { slug: String, subject: String },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Dev => dev(config).await,
        Command::Migrate => migrate(&config).await,
        Command::Doctor => doctor(&config).await,
        Command::Accounts(cmd) => accounts(&config, cmd).await,
        Command::Servers(cmd) => servers(&config, cmd).await,
        Command::ApiKeys(ApiKeysCommand::Create { slug, name, expiry }) => {
            let slug = slug_arg(&slug)?;
            let pepper = config
                .key_pepper
                .clone()
                .context("KATAVEN_KEY_PEPPER is required: keys are stored as its HMAC")?;
            let provisioner = server::provisioner(&config).await?;
            let account = existing(&provisioner, &slug).await?;
            let hasher = crate::auth::keys::KeyHasher::new(pepper);
            let mut conn = provisioner.catalog().pool().acquire().await?;
            let created = crate::keys::api::create_key(
                &mut conn,
                &hasher,
                slug.as_str(),
                &name,
                expiry,
                "cli",
            )
            .await?;
            let id = created.id.to_string();
            let change = Change::of(Action::Create, Resource::ApiKey, &id);
            audit::record_operator(&provisioner, &account, &change).await;
            let expires = created
                .expires_at
                .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
            eprintln!(
                "API key `{}` for {slug} (id {}, expires {expires}); it is shown once:",
                created.name, created.id
            );
            println!("{}", created.key);
            Ok(())
        }
        Command::Openapi => {
            print!("{}", crate::routes::openapi::json());
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.key_pepper.is_none() {
        bail!("KATAVEN_KEY_PEPPER is required by `serve` (a long random secret)");
    }
    let provisioner = server::provisioner(&config).await?;
    provisioner
        .prepare_template(&server::system_options(&config)?)
        .await?;
    run_server(config, provisioner).await
}

async fn run_server(config: Config, provisioner: Provisioner) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = server::build_state(config, provisioner, addr).await?;
    let router = crate::app(state.clone());
    tracing::info!(%addr, "listening");
    server::serve(listener, state, router, server::shutdown_signal()).await
}

async fn dev(mut config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let embedded = if config.database_url.is_none() {
        let bin = embedded_pg::find_bin_dir(config.pg_bin.as_deref())?;
        let dir = embedded_pg::dev_cluster_dir(&config.data_dir)?;
        let root = dir.path.clone();
        let pg =
            tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&root, bin, &[])).await??;
        config.database_url = Some(SecretString::from(pg.url(SYSTEM_DATABASE)));
        tracing::info!(port = pg.port(), dir = %pg.root().display(), "embedded PostgreSQL running");
        Some((StopOnDrop(pg), dir.relocated))
    } else {
        None
    };
    if config.key_pepper.is_none() {
        config.key_pepper = Some(dev_secret(&config.data_dir.join("key-pepper"), 48)?);
    }
    config.dev_login.get_or_insert(true);

    let result = async {
        let provisioner = server::provisioner(&config).await?;
        provisioner
            .prepare_template(&server::system_options(&config)?)
            .await?;
        seed_demo(&provisioner, &config).await?;
        let password = dev_secret(&config.data_dir.join("dev-user-password"), 20)?;
        let slug = AccountSlug::parse(DEMO_ACCOUNT).expect("valid slug");
        upsert_dev_user(
            provisioner.catalog().pool(),
            &slug,
            DEMO_EMAIL,
            password.expose_secret(),
            Role::Admin,
        )
        .await?;
        let url = config.public_url();
        let password = password.expose_secret();
        println!("\nKataven Hub (dev) is running at {url}");
        println!("  console:   {url}/  (sign in as the dev user)");
        println!("  dev user:  {DEMO_EMAIL} / {password}  (admin of `{DEMO_ACCOUNT}`)");
        let data_dir = config.data_dir.canonicalize()?;
        println!("  data:      {}", data_dir.display());
        if let Some((StopOnDrop(pg), relocated)) = &embedded {
            println!(
                "  PostgreSQL: {} (port {})",
                pg.root().display(),
                pg.port()
            );
            if *relocated {
                println!(
                    "    kept there because the `postgres` user cannot enter {}; {} links to it",
                    data_dir.display(),
                    data_dir.join("postgres").display()
                );
            }
        }
        println!("  log in and call a protected endpoint:");
        println!(
            "    TOKEN=$(curl -s {url}/api/login -H 'Content-Type: application/json' \\\n      \
             -d '{{\"account\":\"{DEMO_ACCOUNT}\",\"email\":\"{DEMO_EMAIL}\",\"password\":\"{password}\"}}' \\\n      \
             | sed -E 's/.*\"token\":\"([^\"]+)\".*/\\1/')"
        );
        println!("    curl -s {url}/api/v1/agents -H \"X-Account-ID: {DEMO_ACCOUNT}\" -H \"Authorization: Bearer $TOKEN\"");
        if let Ok(key) = std::fs::read_to_string(config.data_dir.join("widget-key")) {
            println!("  widget key (localhost pages): {}", key.trim());
            println!("    widget page: {url}/console/widget?client_key={}", key.trim());
            println!("    curl -s '{url}/api/v1/widget/config?client_key={}' -H 'Origin: http://localhost:3000'", key.trim());
        }
        println!("Press Ctrl-C to stop.\n");
        run_server(config, provisioner).await
    }
    .await;
    drop(embedded);
    result
}

/// Stops the embedded cluster when `dev` ends, however it ends.
struct StopOnDrop(EmbeddedPostgres);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        match self.0.stop() {
            Ok(()) if self.0.started_here() => tracing::info!("embedded PostgreSQL stopped"),
            Ok(()) => {}
            Err(e) => tracing::error!(error = ?e, "stopping embedded PostgreSQL"),
        }
    }
}

/// A secret generated on first use and kept (mode 0600) in the dev data directory.
fn dev_secret(path: &Path, len: usize) -> anyhow::Result<SecretString> {
    use rand::distr::{Alphanumeric, SampleString};
    use std::os::unix::fs::PermissionsExt;
    if let Ok(existing) = std::fs::read_to_string(path) {
        // Readable by its owner only, even if an older version wrote it otherwise.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    let secret = Alphanumeric.sample_string(&mut rand::rng(), len);
    embedded_pg::write_private(path, &secret)?;
    Ok(SecretString::from(secret))
}

const DEMO_ACCOUNT: &str = "acme";
const DEMO_EMAIL: &str = "admin@acme.test";

/// The demo account, created on the first `dev` run (later runs find it and leave it alone).
async fn seed_demo(provisioner: &Provisioner, config: &Config) -> anyhow::Result<()> {
    let slug = AccountSlug::parse(DEMO_ACCOUNT).expect("valid slug");
    if provisioner.catalog().account(&slug).await?.is_some() {
        return Ok(());
    }
    let account = provisioner
        .create_account(&slug, "Acme Corp", None, None)
        .await?;
    // Sample agents and knowledge, so that the printed curl shows something real.
    let mut conn = provisioner
        .tenant_options(&account)
        .await?
        .connect()
        .await?;
    sqlx::raw_sql(include_str!("seed/demo_acme.sql"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // A widget key for local pages; its plaintext is kept for the banner (dev only).
    let key = crate::auth::keys::new_widget_key(DEMO_ACCOUNT);
    let pepper = config.key_pepper.clone().context("the dev pepper")?;
    sqlx::query(
        "INSERT INTO widget_keys (id, account, name, key_hash, last8, domain_allowlist, created_by)
         VALUES ($1, $2, 'Local pages', $3, $4, $5, 'seed')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(DEMO_ACCOUNT)
    .bind(&crate::auth::keys::KeyHasher::new(pepper).hash(&key)[..])
    .bind(crate::auth::keys::last8(&key))
    .bind(vec!["localhost:*".to_owned(), "127.0.0.1".to_owned()])
    .execute(provisioner.catalog().pool())
    .await?;
    embedded_pg::write_private(&config.data_dir.join("widget-key"), &key)?;
    tracing::info!("seeded demo account `acme`");
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    use futures::StreamExt;
    let started = Instant::now();
    let provisioner = server::provisioner(config).await?;
    println!("system database: up to date");
    let accounts = provisioner.prepare_migration().await?;
    println!("tenant template: up to date");
    let mut progress = MigrateProgress::new(accounts.len(), started);
    let mut results = Vec::with_capacity(accounts.len());
    let mut migrations =
        std::pin::pin!(provisioner.migrate_tenants(accounts, config.migrate_concurrency));
    while let Some(r) = migrations.next().await {
        progress.record(r.result.is_ok());
        results.push(r);
    }
    progress.finish();
    results.sort_by(|a, b| a.account.cmp(&b.account));
    let (mut migrated, mut current, mut failed) = (0, 0, 0);
    for r in &results {
        match &r.result {
            Ok(m) if m.applied > 0 => {
                migrated += 1;
                println!(
                    "tenant {}: migrated to version {} ({} applied)",
                    r.account, m.version, m.applied
                );
            }
            Ok(m) => {
                current += 1;
                println!(
                    "tenant {}: at version {} (already current)",
                    r.account, m.version
                );
            }
            Err(e) => {
                failed += 1;
                println!("tenant {}: FAILED: {e:#}", r.account);
            }
        }
    }
    println!(
        "migrate: {} tenants in {:.1} s: {migrated} migrated, {current} already current, {failed} failed",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} tenant(s) failed to migrate; fix them and run `migrate` again");
    }
    Ok(())
}

async fn doctor(config: &Config) -> anyhow::Result<()> {
    use crate::doctor::Status;
    let checks = crate::doctor::run(config).await;
    for check in &checks {
        println!("{check}");
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let (ok, warnings, failures) = (
        count(Status::Ok),
        count(Status::Warning),
        count(Status::Failure),
    );
    println!("doctor: {ok} ok, {warnings} warning(s), {failures} failure(s)");
    if failures > 0 {
        bail!("{failures} check(s) failed");
    }
    Ok(())
}

/// Progress of `migrate` over the tenants, on stderr: a bar on a terminal; otherwise (CI,
/// logs) a line every 5 % of the tenants (at most every 1,000) and one when all are done.
struct MigrateProgress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
    failed: usize,
    every: usize,
    started: Instant,
}

impl MigrateProgress {
    fn new(total: usize, started: Instant) -> Self {
        use std::io::IsTerminal;
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} tenants, {elapsed} elapsed, about {eta} left {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self {
            bar,
            total,
            done: 0,
            failed: 0,
            every: total.div_ceil(20).clamp(1, 1000),
            started,
        }
    }

    fn record(&mut self, ok: bool) {
        self.done += 1;
        if !ok {
            self.failed += 1;
        }
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if !ok {
                    bar.set_message(format!("({} failed)", self.failed));
                }
            }
            None if self.done % self.every == 0 || self.done == self.total => eprintln!(
                "migrate: {}/{} tenants ({}%), {} failed, {:.1} s",
                self.done,
                self.total,
                self.done * 100 / self.total,
                self.failed,
                self.started.elapsed().as_secs_f64()
            ),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_move(m: &Move) {
    println!(
        "{}: {:?} from server `{}` (database `{}`) to server `{}` (database `{}`) by {:?},          started {}{}",
        m.account,
        m.phase,
        m.source_server,
        m.source_database,
        m.target_server,
        m.target_database,
        m.method,
        m.started_at.to_rfc3339(),
        match (m.switched_at, m.pause_ms) {
            (Some(at), Some(ms)) => format!(
                "; switched {} (writes paused {ms} ms); old database kept until --finish",
                at.to_rfc3339()
            ),
            _ => String::new(),
        }
    );
}

async fn servers(config: &Config, cmd: ServersCommand) -> anyhow::Result<()> {
    use crate::fleet::ServerState;
    use crate::fleet::servers as fleet;
    let provisioner = server::provisioner(config).await?;
    let pool = provisioner.catalog().pool();
    let (id, state) = match cmd {
        ServersCommand::Add {
            id,
            url,
            weight,
            connection_budget,
        } => {
            let new = fleet::NewServer {
                id: &id,
                url: &url,
                weight,
                connection_budget,
            };
            let added = fleet::add(&provisioner, new).await?;
            println!(
                "added server `{id}` (PostgreSQL {}, wal_level {}{}): active, weight {}",
                added.version,
                added.wal_level,
                if added.wal_level == "logical" {
                    ""
                } else {
                    "; moves away from it pause writes for the copy"
                },
                added.server.weight
            );
            return Ok(());
        }
        ServersCommand::List => {
            println!(
                "{:<16} {:<9} {:>6} {:>6} {:>8} {:>10} {:>6} {:<8}  SCHEMA VERSIONS",
                "SERVER", "STATE", "WEIGHT", "BUDGET", "ACCOUNTS", "SIZE", "CONNS", "WAL"
            );
            for u in fleet::list(&provisioner).await? {
                let (size, conns, wal) = match &u.live {
                    Ok(live) => (
                        format!("{:.1} MB", live.bytes as f64 / 1e6),
                        live.connections.to_string(),
                        live.wal_level.clone(),
                    ),
                    Err(e) => (format!("unreachable: {e}"), "-".into(), "-".into()),
                };
                let versions: Vec<String> =
                    u.schema_versions.iter().map(|v| v.to_string()).collect();
                println!(
                    "{:<16} {:<9} {:>6} {:>6} {:>8} {:>10} {:>6} {:<8}  {}",
                    u.server.id,
                    u.server.state.as_str(),
                    u.server.weight,
                    u.server
                        .connection_budget
                        .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                    u.accounts,
                    size,
                    conns,
                    wal,
                    versions.join(", ")
                );
            }
            return Ok(());
        }
        ServersCommand::Drain { id } => (id, ServerState::Draining),
        ServersCommand::Activate { id } => (id, ServerState::Active),
        ServersCommand::Retire { id } => (id, ServerState::Retired),
    };
    let server = fleet::set_state(pool, &id, state).await?;
    println!("server `{}` is now {}", server.id, server.state.as_str());
    Ok(())
}

fn slug_arg(raw: &str) -> anyhow::Result<AccountSlug> {
    AccountSlug::parse(raw).map_err(|e| anyhow::anyhow!("`{raw}`: {e}"))
}

async fn accounts(config: &Config, cmd: AccountsCommand) -> anyhow::Result<()> {
    // Parse the slug before touching any database.
    let provisioner = || server::provisioner(config);
    match cmd {
        AccountsCommand::Create {
            slug,
            new:
                NewAccountArgs {
                    name,
                    org_id,
                    server,
                },
        } => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let name = name.unwrap_or_else(|| slug.to_string());
            let started = std::time::Instant::now();
            let account = provisioner
                .create_account(&slug, &name, org_id.as_deref(), server.as_deref())
                .await
                .map_err(provision_error)?;
            println!(
                "created account {} (database {}, schema version {}) in {} ms",
                account.slug,
                account.database_name,
                account.schema_version,
                started.elapsed().as_millis()
            );
        }
        AccountsCommand::Export { slug, out } => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let account = existing(&provisioner, &slug).await?;
            let change = Change::of(Action::Export, Resource::Account, slug.as_str());
            audit::record_operator(&provisioner, &account, &change).await;
            let summary = crate::export::to_path(&provisioner, &account, out.as_deref()).await?;
            eprintln!(
                "exported account {slug} (schema version {}): {} rows, {} bytes in {} ms{}; sha256 {}",
                summary.manifest.schema_version,
                summary.manifest.rows,
                summary.bytes,
                summary.elapsed.as_millis(),
                out.map(|p| format!(" to {}", p.display()))
                    .unwrap_or_default(),
                summary.manifest.sha256,
            );
        }
        AccountsCommand::Import { slug, file, new } => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let started = Instant::now();
            let options = crate::export::import::ImportOptions {
                display_name: new.name.as_deref(),
                oidc_org_id: new.org_id.as_deref(),
                server: new.server.as_deref(),
            };
            let imported =
                crate::export::import::from_path(&provisioner, &slug, &file, options).await?;
            let change = Change::of(Action::Import, Resource::Account, slug.as_str());
            audit::record_operator(&provisioner, &imported.account, &change).await;
            let rows: u64 = imported.rows.iter().map(|(_, n)| n).sum();
            println!(
                "imported account {slug} from the export of {} (schema version {} → {}): {rows} rows in {} ms",
                imported.source.slug,
                imported.from_version,
                imported.account.schema_version,
                started.elapsed().as_millis()
            );
        }
        AccountsCommand::Move {
            slug,
            to,
            status,
            abort,
            finish,
            revert,
            allow_write_pause,
            copy_only,
        } => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let account = existing(&provisioner, &slug).await?;
            let say = |line: &str| eprintln!("{line}");
            let mover = Mover::new(&provisioner, &say);
            if status {
                match moves::status(&provisioner, &slug).await? {
                    None => println!("{slug}: on server `{}`, no move", account.server),
                    Some(m) => print_move(&m),
                }
                return Ok(());
            }
            if abort {
                let m = mover.abort(&slug).await?;
                println!(
                    "aborted the move of {slug} to `{}`: it stays on server `{}`",
                    m.target_server, m.source_server
                );
            } else if finish {
                let m = mover.finish(&slug).await?;
                println!(
                    "finished the move of {slug}: dropped its old database `{}` on server `{}`",
                    m.source_database, m.source_server
                );
            } else if revert {
                let m = mover.revert(&slug).await?;
                println!(
                    "{slug} runs on its old database `{}` on server `{}` again; database `{}` on                      server `{}` is left as it was",
                    m.source_database, m.source_server, m.target_database, m.target_server
                );
            } else if let Some(to) = to.as_deref().filter(|_| copy_only) {
                let options = MoveOptions { allow_write_pause };
                let m = mover.copy(&slug, to, options).await?;
                println!(
                    "copied {slug} to server `{to}` (database `{}`); it keeps following: run                      `accounts move {slug} --to {to}` to cut over",
                    m.target_database
                );
                return Ok(());
            } else if let Some(to) = &to {
                let options = MoveOptions { allow_write_pause };
                let done = mover.run(&slug, to, options).await?;
                println!(
                    "moved {slug} to server `{to}` (database `{}`): {} rows; copy {} ms, writes                      paused {} ms; the old database is kept until `accounts move {slug} --finish`",
                    done.the_move.target_database,
                    done.rows,
                    done.copy.as_millis(),
                    done.pause.as_millis()
                );
            }
            if abort || finish || revert || to.is_some() {
                let change = Change::of(Action::Move, Resource::Account, slug.as_str());
                audit::record_operator(
                    &provisioner,
                    &existing(&provisioner, &slug).await?,
                    &change,
                )
                .await;
            }
        }
        AccountsCommand::List => {
            let provisioner = provisioner().await?;
            let accounts = provisioner.catalog().all_accounts().await?;
            println!(
                "{:<32} {:<10} {:<16} {:>15}  NAME",
                "ACCOUNT", "STATUS", "SERVER", "SCHEMA"
            );
            for a in accounts {
                let status = match a.status {
                    AccountStatus::Active => "active",
                    AccountStatus::Suspended => "suspended",
                };
                println!(
                    "{:<32} {:<10} {:<16} {:>15}  {}",
                    a.slug, status, a.server, a.schema_version, a.display_name
                );
            }
        }
        AccountsCommand::Suspend { slug } => {
            set_status(
                &provisioner().await?,
                &slug_arg(&slug)?,
                AccountStatus::Suspended,
            )
            .await?
        }
        AccountsCommand::Resume { slug } => {
            set_status(
                &provisioner().await?,
                &slug_arg(&slug)?,
                AccountStatus::Active,
            )
            .await?
        }
        AccountsCommand::Delete { slug, purge } => {
            let slug = slug_arg(&slug)?;
            provisioner()
                .await?
                .delete_account(&slug, purge)
                .await
                .map_err(provision_error)?;
            if purge {
                println!("deleted account {slug} and dropped its database");
            } else {
                println!(
                    "deleted account {slug}; its database `{slug}` was kept (use --purge to drop it)"
                );
            }
        }
        AccountsCommand::Limits {
            slug,
            per_minute,
            per_hour,
            per_day,
            concurrent,
            daily_minutes,
            clear,
        } => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let account = existing(&provisioner, &slug).await?;
            let catalog = provisioner.catalog();
            if clear {
                catalog.clear_limits(&slug).await?;
            }
            let changes = [
                ("per_minute", per_minute),
                ("per_hour", per_hour),
                ("per_day", per_day),
                ("concurrent", concurrent),
                ("daily_minutes", daily_minutes),
            ];
            let mut changed = Vec::new();
            for (column, change) in changes {
                if clear || change.is_some() {
                    changed.push(column);
                }
                if let Some(change) = change {
                    let value = match change {
                        LimitArg::Set(n) => Some(n as i32),
                        LimitArg::Default => None,
                    };
                    catalog.set_limit(&slug, column, value).await?;
                }
            }
            if !changed.is_empty() {
                let change = Change {
                    action: Action::Update,
                    resource: Resource::Limits,
                    resource_id: None,
                    fields: &changed,
                };
                audit::record_operator(&provisioner, &account, &change).await;
            }
            let l = catalog.limits(&slug, &config.default_limits()).await?;
            println!(
                "{slug}: per-minute {}, per-hour {}, per-day {}, concurrent {}, daily minutes {}",
                l.per_minute, l.per_hour, l.per_day, l.concurrent, l.daily_minutes
            );
        }
        AccountsCommand::Members(MembersCommand::Add {
            slug,
            subject,
            role,
        }) => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let account = existing(&provisioner, &slug).await?;
            provisioner
                .catalog()
                .upsert_member(&slug, &subject, role)
                .await?;
            let change = Change::of(Action::Upsert, Resource::Member, &subject);
            audit::record_operator(&provisioner, &account, &change).await;
            println!("{subject} is now {role:?} of {slug}");
        }
        AccountsCommand::Members(MembersCommand::Remove { slug, subject }) => {
            let slug = slug_arg(&slug)?;
            let provisioner = provisioner().await?;
            let account = existing(&provisioner, &slug).await?;
            if !provisioner.catalog().remove_member(&slug, &subject).await? {
                bail!("{subject} is not a member of {slug}");
            }
            let change = Change::of(Action::Delete, Resource::Member, &subject);
            audit::record_operator(&provisioner, &account, &change).await;
            println!("removed {subject} from {slug}");
        }
    }
    Ok(())
}

async fn set_status(
    provisioner: &Provisioner,
    slug: &AccountSlug,
    status: AccountStatus,
) -> anyhow::Result<()> {
    if !provisioner.catalog().set_status(slug, status).await? {
        bail!("no account `{slug}`");
    }
    let account = existing(provisioner, slug).await?;
    let action = match status {
        AccountStatus::Suspended => Action::Suspend,
        AccountStatus::Active => Action::Resume,
    };
    let change = Change::of(action, Resource::Account, slug.as_str());
    audit::record_operator(provisioner, &account, &change).await;
    println!("account {slug} is now {status:?}");
    Ok(())
}

/// The account `slug`, or the error that there is none.
async fn existing(provisioner: &Provisioner, slug: &AccountSlug) -> anyhow::Result<Account> {
    provisioner
        .catalog()
        .account(slug)
        .await?
        .with_context(|| format!("no account `{slug}`"))
}

fn provision_error(e: ProvisionError) -> anyhow::Error {
    match e {
        ProvisionError::Other(e) => e,
        other => anyhow::anyhow!("{other}"),
    }
}
