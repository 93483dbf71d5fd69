//! The fleet: the PostgreSQL servers tenant databases live on (the `servers` table), where new
//! accounts go, and moves of an account's database between servers ([`moves`]). See
//! `docs/fleet.md`.
//!
//! The catalog keeps a server's URL without a password. A connection to server `id` uses the
//! password in `KATAVEN_SERVER_SECRETS_DIR/<id>` when that file exists, and otherwise the
//! system database's credentials (the URL's user, if it names one, with the system password):
//! a fleet whose servers share one role needs no secret files.

pub mod moves;
pub mod servers;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgExecutor, PgPool};

/// The system database's server: its URL is whatever `KATAVEN_DATABASE_URL` names.
pub const MAIN_SERVER: &str = "main";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, clap::ValueEnum)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes new accounts.
    Active,
    /// Keeps its accounts, takes no new ones (move them away, then retire it).
    Draining,
    /// Holds no account and takes none.
    Retired,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Retired => "retired",
        }
    }
}

/// A row of `servers`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Server {
    pub id: String,
    /// `None` for [`MAIN_SERVER`].
    pub url: Option<String>,
    pub weight: i32,
    pub state: ServerState,
    /// Connections one instance opens to it at most (`None`: `KATAVEN_DB_CONNECTION_BUDGET`).
    pub connection_budget: Option<i32>,
    pub created_at: DateTime<Utc>,
}

pub(crate) const SERVER_COLUMNS: &str = "id, url, weight, state, connection_budget, created_at";

/// How to reach a server, resolved once per process (see [`Servers::get`]).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    /// Connection options without a database.
    pub options: PgConnectOptions,
    /// The password in `options`, for the tools and servers that connect by themselves
    /// (`pg_dump`, a subscription of another server).
    password: Option<SecretString>,
    pub connection_budget: Option<usize>,
}

impl Endpoint {
    /// Connection options for `database` on this server, as the service connects.
    pub fn database(&self, database: &str) -> PgConnectOptions {
        self.options
            .clone()
            .database(database)
            .application_name("kataven-hub")
    }

    /// A libpq connection string for `database` on this server (a subscription's `CONNECTION`).
    /// Holds the password: never log it.
    pub fn conninfo(&self, database: &str) -> SecretString {
        fn quoted(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let o = &self.options;
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            quoted(o.get_host()),
            o.get_port(),
            quoted(o.get_username()),
            quoted(database)
        );
        if let Some(password) = &self.password {
            s.push_str(&format!(" password={}", quoted(password.expose_secret())));
        }
        SecretString::from(s)
    }

    /// The environment of a libpq tool (`pg_dump`, `pg_restore`) connecting to this server.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let o = &self.options;
        let mut env = vec![
            ("PGHOST", o.get_host().to_owned()),
            ("PGPORT", o.get_port().to_string()),
            ("PGUSER", o.get_username().to_owned()),
        ];
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.expose_secret().to_owned()));
        }
        env
    }
}

/// The password in a PostgreSQL URL, decoded.
pub fn password_of(url: &str) -> Option<SecretString> {
    let parsed = url::Url::parse(url).ok()?;
    let raw = parsed.password()?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    Some(SecretString::from(decoded.into_owned()))
}

/// The servers of the catalog with their credentials, cached: a server's URL never changes
/// (`servers add` is the only way to name one), so an entry is read once.
#[derive(Clone)]
pub struct Servers {
    inner: Arc<ServersInner>,
}

struct ServersInner {
    pool: PgPool,
    system: PgConnectOptions,
    system_password: Option<SecretString>,
    secrets_dir: Option<PathBuf>,
    endpoints: DashMap<String, Arc<Endpoint>>,
}

impl Servers {
    /// `system_password`: the one in `system` (which cannot be read back from it).
    pub fn new(
        pool: PgPool,
        system: PgConnectOptions,
        system_password: Option<SecretString>,
        secrets_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            inner: Arc::new(ServersInner {
                pool,
                system,
                system_password,
                secrets_dir,
                endpoints: DashMap::new(),
            }),
        }
    }

    /// How to reach server `id`.
    pub async fn get(&self, id: &str) -> anyhow::Result<Arc<Endpoint>> {
        if let Some(endpoint) = self.inner.endpoints.get(id) {
            return Ok(endpoint.clone());
        }
        let server = server(&self.inner.pool, id)
            .await?
            .with_context(|| format!("no server `{id}` in the catalog"))?;
        let endpoint = Arc::new(self.endpoint(&server)?);
        self.inner.endpoints.insert(id.to_owned(), endpoint.clone());
        Ok(endpoint)
    }

    /// Connection options of `server` (its URL with its credentials; see the module's doc).
    pub fn endpoint(&self, server: &Server) -> anyhow::Result<Endpoint> {
        let system = &self.inner.system;
        let system_password = self.inner.system_password.clone();
        let (options, password) = match &server.url {
            None => (system.clone(), system_password),
            Some(url) => {
                let parsed = url::Url::parse(url).context("invalid server URL")?;
                let named = PgConnectOptions::from_str(url)
                    .map_err(|e| anyhow::anyhow!("invalid server URL: {e}"))?;
                let user = (!parsed.username().is_empty()).then(|| named.get_username().to_owned());
                match self.secret(&server.id)? {
                    Some(password) => (
                        named
                            .username(user.as_deref().unwrap_or(system.get_username()))
                            .password(&password),
                        Some(SecretString::from(password)),
                    ),
                    // The system's credentials: its options with the server's address.
                    None => {
                        let mut options = system
                            .clone()
                            .host(named.get_host())
                            .port(named.get_port())
                            .ssl_mode(named.get_ssl_mode());
                        if let Some(user) = user {
                            options = options.username(&user);
                        }
                        (options, system_password)
                    }
                }
            }
        };
        Ok(Endpoint {
            id: server.id.clone(),
            options,
            password,
            connection_budget: server.connection_budget.map(|b| b.max(1) as usize),
        })
    }

    /// The password in `KATAVEN_SERVER_SECRETS_DIR/<id>`, if that file exists.
    fn secret(&self, id: &str) -> anyhow::Result<Option<String>> {
        let Some(dir) = &self.inner.secrets_dir else {
            return Ok(None);
        };
        read_secret(&dir.join(id))
    }
}

fn read_secret(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub async fn server<'e>(db: impl PgExecutor<'e>, id: &str) -> sqlx::Result<Option<Server>> {
    sqlx::query_as(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn all_servers(pool: &PgPool) -> sqlx::Result<Vec<Server>> {
    sqlx::query_as(&format!("SELECT {SERVER_COLUMNS} FROM servers ORDER BY id"))
        .fetch_all(pool)
        .await
}

/// Where a new account goes: the server `named` (which must be active), else the active server
/// with the fewest accounts per unit of weight (ties: by id).
pub async fn place(pool: &PgPool, named: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = named {
        let server = server(pool, id)
            .await?
            .with_context(|| format!("no server `{id}` (see `kataven-hub servers list`)"))?;
        if server.state != ServerState::Active {
            bail!(
                "server `{id}` is {}: it takes no new accounts",
                server.state.as_str()
            );
        }
        return Ok(server.id);
    }
    let id: Option<String> = sqlx::query_scalar(
        "SELECT s.id FROM servers s LEFT JOIN accounts a ON a.server = s.id
         WHERE s.state = 'active'
         GROUP BY s.id, s.weight
         ORDER BY count(a.slug)::float8 / s.weight, s.id
         LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    id.context("no active database server: activate one (`kataven-hub servers activate`)")
}

/// Checks a URL for `servers add`: a PostgreSQL URL without a password.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).context("not a URL")?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        bail!("a server URL starts with postgres://");
    }
    // As the catalog's check has it: `user:@host` (an empty password) counts, and `password=`
    // in any case.
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.split_once('@'))
        .map(|(userinfo, _)| userinfo);
    if parsed.password().is_some()
        || userinfo.is_some_and(|u| u.contains(':'))
        || parsed
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        bail!(
            "the URL carries a password, and the catalog keeps no secret: put the password into \
             KATAVEN_SERVER_SECRETS_DIR/<id> and give the URL without it"
        );
    }
    if !parsed.path().trim_start_matches('/').is_empty() {
        bail!("a server URL names no database (postgres://host:port)");
    }
    PgConnectOptions::from_str(url).map_err(|e| anyhow::anyhow!("invalid server URL: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_or_databases_are_refused() {
        assert!(check_url("postgres://db2.internal:5432").is_ok());
        assert!(check_url("postgres://kataven@db2.internal").is_ok());
        assert!(check_url("postgresql://db2.internal/?sslmode=require").is_ok());
        for bad in [
            "postgres://kataven:hunter2@db2.internal",
            "postgres://db2.internal/?password=hunter2",
            "postgres://kataven:@db2.internal",
            "postgres://db2.internal/?sslmode=require&Password=hunter2",
            "postgres://db2.internal/kataven-admin",
            "mysql://db2.internal",
            "db2.internal:5432",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
