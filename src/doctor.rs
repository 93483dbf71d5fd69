//! `kataven-hub doctor`: checks the configuration and every dependency, one line per check.
//!
//! It only reads: unlike every other command it never creates the system database, applies
//! migrations or touches a tenant. A **failure** is something that stops the service from
//! starting or from serving part of its traffic; a **warning** is something that works now but
//! needs doing (migrations pending, which `serve` or first use would apply; a short pepper; no
//! identity provider).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::auth::oidc::{IssuerKeys, IssuerSettings, OidcCounters};
use crate::config::Config;
use crate::limits::client_ip::TrustedProxies;
use crate::limits::redis::RedisStore;
use crate::server;
use crate::tenancy::catalog::{Account, Catalog};
use crate::tenancy::gate::ConnectOutcome;
use crate::tenancy::provision::{self, Provisioner, SYSTEM_MIGRATOR, SchemaState};

/// A pepper shorter than this is reported as a warning.
pub const MIN_PEPPER_LEN: usize = 32;
/// How many tenant databases are opened to read their schema version.
const TENANT_SAMPLE: usize = 20;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warning,
    Failure,
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
    /// What to do about a warning or a failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            name,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warning(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warning,
            name,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn failure(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Failure,
            name,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failure => "failure",
        };
        write!(f, "{label:<8} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " -> {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check. The database checks after the first failing one that they depend on are
/// left out (they could only repeat it).
pub async fn run(config: &Config) -> Vec<Check> {
    let mut checks = vec![configuration(config), pepper(config)];
    if let Some(system) = system_database(config, &mut checks).await {
        let (opts, mut conn) = system;
        checks.push(
            schema_check(
                "system migrations",
                &mut conn,
                &SYSTEM_MIGRATOR,
                "run `kataven-hub migrate` (`serve` also applies them when it starts)",
            )
            .await,
        );
        conn.close().await.ok();
        let provisioner = match catalog(&opts, config).await {
            Ok(p) => Some(p),
            Err(e) => {
                checks.push(Check::failure(
                    "tenants",
                    format!("cannot read the catalog: {e:#}"),
                    "run `kataven-hub migrate` to bring the system database up to date",
                ));
                None
            }
        };
        if let Some(provisioner) = provisioner {
            checks.push(template(&provisioner).await);
            checks.push(servers(&provisioner).await);
            checks.push(tenants(&provisioner).await);
            provisioner.catalog().pool().close().await;
        }
    }
    checks.push(redis(config).await);
    checks.push(identity(config).await);
    checks
}

/// Settings that are checked only when something uses them.
fn configuration(config: &Config) -> Check {
    const NAME: &str = "configuration";
    let mut problems = Vec::new();
    if let Err(e) = TrustedProxies::parse(&config.trusted_proxies) {
        problems.push(format!("KATAVEN_TRUSTED_PROXIES: {e:#}"));
    }
    if let Some(public) = &config.public_url {
        if url::Url::parse(public).is_err() {
            problems.push(format!("KATAVEN_PUBLIC_URL `{public}` is not a URL"));
        }
    }
    if config.oidc_issuer.is_some() && config.oidc_audiences.is_empty() {
        problems.push("KATAVEN_OIDC_AUDIENCES is required with KATAVEN_OIDC_ISSUER".into());
    }
    if !problems.is_empty() {
        return Check::failure(
            NAME,
            problems.join("; "),
            "correct these settings: `serve` refuses to start with them",
        );
    }
    if config.db_connection_budget < config.tenant_pool_max {
        return Check::warning(
            NAME,
            format!(
                "KATAVEN_DB_CONNECTION_BUDGET ({}) is below KATAVEN_TENANT_POOL_MAX ({})",
                config.db_connection_budget, config.tenant_pool_max
            ),
            "raise the budget: one busy tenant could not use its whole pool",
        );
    }
    Check::ok(
        NAME,
        format!(
            "listening on {}, public URL {}",
            config.listen,
            config.public_url()
        ),
    )
}

fn pepper(config: &Config) -> Check {
    const NAME: &str = "key pepper";
    match &config.key_pepper {
        None => Check::failure(
            NAME,
            "KATAVEN_KEY_PEPPER is not set (`serve` refuses to start without it)",
            format!(
                "set it to a long random secret (at least {MIN_PEPPER_LEN} characters, e.g. \
                 `openssl rand -base64 48`) and keep it: API and widget keys are stored as its HMAC"
            ),
        ),
        Some(p) if p.expose_secret().trim().is_empty() => Check::failure(
            NAME,
            "KATAVEN_KEY_PEPPER is empty",
            format!("set it to a long random secret (at least {MIN_PEPPER_LEN} characters)"),
        ),
        Some(p) if p.expose_secret().len() < MIN_PEPPER_LEN => Check::warning(
            NAME,
            format!("set, but only {} characters long", p.expose_secret().len()),
            format!(
                "use at least {MIN_PEPPER_LEN} random characters; changing it invalidates every \
                 existing API and widget key, so plan the change"
            ),
        ),
        Some(p) => Check::ok(
            NAME,
            format!("set ({} characters)", p.expose_secret().len()),
        ),
    }
}

/// Where a database is, for messages (never the password).
fn place(opts: &PgConnectOptions) -> String {
    format!(
        "`{}` at {}:{} as `{}`",
        opts.get_database().unwrap_or("?"),
        opts.get_host(),
        opts.get_port(),
        opts.get_username()
    )
}

async fn connect(opts: &PgConnectOptions) -> Result<PgConnection, ConnectError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ConnectError {
            outcome: ConnectOutcome::of(&Err(&e)),
            error: e.to_string(),
        }),
        Err(_) => Err(ConnectError {
            outcome: ConnectOutcome::Timeout,
            error: format!("no answer within {CONNECT_TIMEOUT:?}"),
        }),
    }
}

struct ConnectError {
    outcome: ConnectOutcome,
    error: String,
}

impl ConnectError {
    /// What to do about it, for a database at `opts`.
    fn fix(&self, opts: &PgConnectOptions) -> String {
        let server = format!("{}:{}", opts.get_host(), opts.get_port());
        match self.outcome {
            ConnectOutcome::Refused | ConnectOutcome::Timeout | ConnectOutcome::Other => {
                format!("start PostgreSQL at {server}, or correct the host and port")
            }
            ConnectOutcome::AuthenticationFailed => {
                "check the user and password (and the server's pg_hba.conf)".into()
            }
            ConnectOutcome::TooManyConnections => format!(
                "the server at {server} is full: raise its max_connections or lower \
                 KATAVEN_DB_CONNECTION_BUDGET on the instances"
            ),
            ConnectOutcome::NotAccepting => {
                format!("the server at {server} is starting or stopping: try again shortly")
            }
            ConnectOutcome::DatabaseMissing | ConnectOutcome::DatabaseClosed => {
                "restore the database, or remove what refers to it".into()
            }
            ConnectOutcome::Ok => String::new(),
        }
    }
}

/// The system database: configured, reachable, the role may create databases. Returns its
/// options and a connection when it is usable.
async fn system_database(
    config: &Config,
    checks: &mut Vec<Check>,
) -> Option<(PgConnectOptions, PgConnection)> {
    const NAME: &str = "system database";
    let opts = match server::system_options(config) {
        Ok(opts) => opts,
        Err(e) => {
            checks.push(Check::failure(
                NAME,
                format!("{e:#}"),
                "set KATAVEN_DATABASE_URL to postgres://USER:PASSWORD@HOST:5432/kataven-admin",
            ));
            return None;
        }
    };
    let mut conn = match connect(&opts).await {
        Ok(conn) => conn,
        Err(e) if e.outcome == ConnectOutcome::DatabaseMissing => {
            checks.push(Check::failure(
                NAME,
                format!("{} does not exist", place(&opts)),
                "run `kataven-hub migrate` (or start `serve`): it creates the system database",
            ));
            return None;
        }
        Err(e) => {
            checks.push(Check::failure(
                NAME,
                format!("{}: {} ({})", place(&opts), e.outcome.describe(), e.error),
                e.fix(&opts),
            ));
            return None;
        }
    };
    let facts: Result<(String, bool), sqlx::Error> = sqlx::query_as(
        "SELECT current_setting('server_version'), rolcreatedb OR rolsuper
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await;
    match facts {
        Ok((version, true)) => {
            checks.push(Check::ok(
                NAME,
                format!("{} reachable (PostgreSQL {version})", place(&opts)),
            ));
            Some((opts, conn))
        }
        Ok((version, false)) => {
            checks.push(Check::failure(
                NAME,
                format!(
                    "{} reachable (PostgreSQL {version}), but the role may not create databases",
                    place(&opts)
                ),
                format!(
                    "ALTER ROLE \"{}\" CREATEDB: tenant databases are created by this role",
                    opts.get_username()
                ),
            ));
            Some((opts, conn))
        }
        Err(e) => {
            checks.push(Check::failure(
                NAME,
                format!("{}: {e}", place(&opts)),
                "check the server's logs",
            ));
            None
        }
    }
}

/// A provisioner over a catalog pool of its own, without preparing anything.
async fn catalog(system: &PgConnectOptions, config: &Config) -> anyhow::Result<Provisioner> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(system.clone())
        .await?;
    let provisioner = Provisioner::new(
        Catalog::new(pool),
        system.clone(),
        Arc::new(provision::tenant_migrator()),
    )
    .with_credentials(config.system_password(), config.server_secrets_dir.clone());
    provisioner.catalog().all_accounts().await?;
    Ok(provisioner)
}

/// One database's migrations against the binary's.
async fn schema_check(
    name: &'static str,
    conn: &mut PgConnection,
    migrator: &Migrator,
    fix_pending: &str,
) -> Check {
    match SchemaState::of(conn, migrator).await {
        Err(e) => Check::failure(
            name,
            format!("cannot read its migrations: {e}"),
            "check the server's logs",
        ),
        Ok(state) => schema_verdict(name, &state, migrator, fix_pending),
    }
}

fn schema_verdict(
    name: &'static str,
    state: &SchemaState,
    migrator: &Migrator,
    fix_pending: &str,
) -> Check {
    let newest = provision::latest_version(migrator);
    if state.unknown > 0 {
        return Check::failure(
            name,
            format!(
                "at version {}, newer than this binary knows ({newest}): {} unknown migration(s)",
                state.version, state.unknown
            ),
            "run a binary at least as new as the one that migrated it",
        );
    }
    if state.failed > 0 || state.altered > 0 {
        return Check::failure(
            name,
            format!(
                "{} failed and {} altered migration(s) (checksum differs from this binary's)",
                state.failed, state.altered
            ),
            "restore the database or the migration files as they were applied; never edit an \
             applied migration",
        );
    }
    if state.pending > 0 {
        return Check::warning(
            name,
            format!(
                "at version {}, {} migration(s) behind this binary ({newest})",
                state.version, state.pending
            ),
            fix_pending,
        );
    }
    Check::ok(name, format!("at version {newest}, current"))
}

async fn template(provisioner: &Provisioner) -> Check {
    const NAME: &str = "tenant template";
    let opts = provisioner
        .system_options()
        .clone()
        .database(&provisioner.template_name());
    match connect(&opts).await {
        Ok(mut conn) => {
            let check = schema_check(
                NAME,
                &mut conn,
                provisioner.tenant_migrations(),
                "run `kataven-hub migrate` (`serve` also upgrades it when it starts)",
            )
            .await;
            conn.close().await.ok();
            Check {
                detail: format!("`{}` {}", provisioner.template_name(), check.detail),
                ..check
            }
        }
        Err(e) if e.outcome == ConnectOutcome::DatabaseMissing => Check::warning(
            NAME,
            format!("`{}` does not exist yet", provisioner.template_name()),
            "run `kataven-hub migrate` or start `serve`: either creates it",
        ),
        Err(e) => Check::failure(
            NAME,
            format!("{}: {} ({})", place(&opts), e.outcome.describe(), e.error),
            e.fix(&opts),
        ),
    }
}

/// Every database server that is not retired answers, with its credentials (docs/fleet.md).
async fn servers(provisioner: &Provisioner) -> Check {
    const NAME: &str = "database servers";
    let servers = match crate::fleet::all_servers(provisioner.catalog().pool()).await {
        Ok(servers) => servers,
        Err(e) => {
            return Check::failure(
                NAME,
                format!("cannot read the catalog: {e}"),
                "run `kataven-hub migrate` to bring the system database up to date",
            );
        }
    };
    let mut reachable = Vec::new();
    let mut down = Vec::new();
    for server in servers
        .iter()
        .filter(|s| s.state != crate::fleet::ServerState::Retired)
    {
        let endpoint = match provisioner.servers().endpoint(server) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                down.push(format!("`{}`: {e:#}", server.id));
                continue;
            }
        };
        match connect(&endpoint.options.clone().database("postgres")).await {
            Ok(conn) => {
                conn.close().await.ok();
                reachable.push(format!("`{}`", server.id));
            }
            Err(e) => down.push(format!(
                "`{}` ({}): {}",
                server.id,
                e.outcome.describe(),
                e.error
            )),
        }
    }
    if down.is_empty() {
        return Check::ok(NAME, format!("reachable: {}", reachable.join(", ")));
    }
    Check::failure(
        NAME,
        format!("not reachable: {}", down.join("; ")),
        "start them, or correct their URL or password (KATAVEN_SERVER_SECRETS_DIR/<id>); \
         see docs/fleet.md",
    )
}

/// Every account's schema version in the catalog, and a sample of tenant databases opened to
/// read theirs: those the catalog says are behind first, then a random pick.
async fn tenants(provisioner: &Provisioner) -> Check {
    const NAME: &str = "tenants";
    let newest = provisioner.latest_tenant_version();
    let mut accounts = match provisioner.catalog().all_accounts().await {
        Ok(a) => a,
        Err(e) => {
            return Check::failure(
                NAME,
                format!("cannot read the catalog: {e}"),
                "check the system database",
            );
        }
    };
    if accounts.is_empty() {
        return Check::ok(NAME, "no accounts yet");
    }
    let total = accounts.len();
    let behind_in_catalog = accounts
        .iter()
        .filter(|a| a.schema_version < newest)
        .count();
    accounts.shuffle(&mut rand::rng());
    accounts.sort_by_key(|a| a.schema_version >= newest);
    accounts.truncate(TENANT_SAMPLE);

    let mut unreachable: Vec<String> = Vec::new();
    let mut newer: Vec<String> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    let mut behind: Vec<String> = Vec::new();
    let mut fix_unreachable = String::new();
    for account in &accounts {
        match tenant_state(provisioner, account).await {
            Err((what, fix)) => {
                unreachable.push(format!("{} ({what})", account.slug));
                fix_unreachable = fix;
            }
            Ok(state) if state.unknown > 0 => newer.push(account.slug.clone()),
            Ok(state) if state.failed > 0 || state.altered > 0 => broken.push(account.slug.clone()),
            Ok(state) if state.pending > 0 => behind.push(account.slug.clone()),
            Ok(_) => {}
        }
    }
    let sampled = accounts.len();
    let summary = format!(
        "{total} account(s), {behind_in_catalog} behind version {newest} per the catalog; \
         {sampled} database(s) opened"
    );
    if !unreachable.is_empty() {
        return Check::failure(
            NAME,
            format!("{summary}: unreachable: {}", list(&unreachable)),
            format!("{fix_unreachable}; those accounts answer 503 `account_unavailable` meanwhile"),
        );
    }
    if !newer.is_empty() || !broken.is_empty() {
        return Check::failure(
            NAME,
            format!(
                "{summary}: newer than this binary: {}; failed or altered migrations: {}",
                list(&newer),
                list(&broken)
            ),
            "run a binary at least as new as the one that migrated them; restore altered ones",
        );
    }
    if behind_in_catalog > 0 || !behind.is_empty() {
        return Check::warning(
            NAME,
            format!("{summary}: behind: {}", list(&behind)),
            "run `kataven-hub migrate` (until then each is migrated on its first request)",
        );
    }
    Check::ok(NAME, format!("{summary}: all at version {newest}"))
}

async fn tenant_state(
    provisioner: &Provisioner,
    account: &Account,
) -> Result<SchemaState, (String, String)> {
    let opts = provisioner.tenant_options(account).await.map_err(|e| {
        (
            format!("{e:#}"),
            "correct the account's server URL".to_owned(),
        )
    })?;
    let mut conn = connect(&opts).await.map_err(|e| {
        let fix = match e.outcome {
            ConnectOutcome::DatabaseMissing | ConnectOutcome::DatabaseClosed => format!(
                "restore their databases, or delete the accounts \
                 (`kataven-hub accounts delete {}`)",
                account.slug
            ),
            _ => e.fix(&opts),
        };
        (e.outcome.describe().to_owned(), fix)
    })?;
    let state = SchemaState::of(&mut conn, provisioner.tenant_migrations())
        .await
        .map_err(|e| (e.to_string(), "check the server's logs".to_owned()));
    conn.close().await.ok();
    state
}

/// At most five names, then how many more.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    match names.len() {
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

async fn redis(config: &Config) -> Check {
    const NAME: &str = "redis";
    let Some(url) = &config.redis_url else {
        return Check::ok(
            NAME,
            "not configured: limits are counted by each instance alone (set KATAVEN_REDIS_URL \
             with more than one instance)",
        );
    };
    let store = match RedisStore::new(url.expose_secret(), Duration::from_secs(60)) {
        Ok(store) => store,
        Err(e) => {
            return Check::failure(NAME, format!("{e:#}"), "correct KATAVEN_REDIS_URL");
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Check::ok(NAME, "answers PING"),
        Ok(Err(e)) => Check::failure(
            NAME,
            format!("no answer to PING: {e}"),
            "start Redis or correct KATAVEN_REDIS_URL; meanwhile the per-account limits are not \
             enforced (they fail open)",
        ),
        Err(_) => Check::failure(
            NAME,
            format!("no answer to PING within {CONNECT_TIMEOUT:?}"),
            "start Redis or correct KATAVEN_REDIS_URL",
        ),
    }
}

/// The OIDC issuer: discovery and its key set, fetched now.
async fn identity(config: &Config) -> Check {
    const NAME: &str = "oidc issuer";
    let dev_login = config.dev_login.unwrap_or(false);
    let Some(issuer) = &config.oidc_issuer else {
        return if dev_login {
            Check::warning(
                NAME,
                "not configured; only the dev issuer (KATAVEN_DEV_LOGIN) signs users in",
                "set KATAVEN_OIDC_ISSUER and turn dev login off outside development",
            )
        } else {
            Check::warning(
                NAME,
                "not configured: only API keys authenticate, every ID token is refused",
                "set KATAVEN_OIDC_ISSUER and KATAVEN_OIDC_AUDIENCES to sign users in",
            )
        };
    };
    let issuer = issuer.trim_end_matches('/').to_owned();
    let keys = IssuerKeys::remote(
        IssuerSettings {
            issuer: issuer.clone(),
            audiences: config.oidc_audiences.clone(),
            refresh_interval: Duration::from_secs(config.jwks_refresh_secs),
            refresh_cooldown: Duration::from_secs(config.jwks_refresh_cooldown_secs),
            project_id: None,
        },
        OidcCounters::default(),
    );
    let keys = match keys {
        Ok(keys) => keys,
        Err(e) => return Check::failure(NAME, format!("{e:#}"), "correct KATAVEN_OIDC_ISSUER"),
    };
    match keys.probe().await {
        Ok(0) => Check::failure(
            NAME,
            format!("{issuer}: discovery and JWKS fetched, but no key this service can use"),
            "the issuer must publish RS256, ES256 (or advertised EdDSA) keys with a `kid`",
        ),
        Ok(n) => {
            let detail = format!("{issuer}: discovery and JWKS fetched, {n} usable key(s)");
            if dev_login {
                Check::warning(
                    NAME,
                    format!("{detail}; dev login is on too"),
                    "turn KATAVEN_DEV_LOGIN off outside development",
                )
            } else {
                Check::ok(NAME, detail)
            }
        }
        Err(e) => Check::failure(
            NAME,
            format!("{e:#}"),
            "check that the issuer is up and reachable from here, and KATAVEN_OIDC_ISSUER",
        ),
    }
}
