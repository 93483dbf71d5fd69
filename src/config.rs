//! Configuration: one typed struct, filled from flags or `KATAVEN_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccountDirectory {
    Public,
    Off,
}

/// Settings shared by every command. Secrets are `SecretString`s: their `Debug` prints
/// `[REDACTED]`, so a logged config never leaks them.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// URL of the system database (`…/kataven-admin`); tenant databases default to the same server.
    #[arg(long, env = "KATAVEN_DATABASE_URL", value_parser = secret, global = true)]
    pub database_url: Option<SecretString>,

    /// Address to listen on.
    #[arg(
        long,
        env = "KATAVEN_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// External base URL (token `iss`, links). Default: `http://<listen>`.
    #[arg(long, env = "KATAVEN_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// OIDC issuer URL (the Zitadel instance).
    #[arg(long, env = "KATAVEN_OIDC_ISSUER", global = true)]
    pub oidc_issuer: Option<String>,

    /// Comma-separated accepted audiences (client ids, project id).
    #[arg(
        long,
        env = "KATAVEN_OIDC_AUDIENCES",
        value_delimiter = ',',
        global = true
    )]
    pub oidc_audiences: Vec<String>,

    /// Zitadel project id: when set, only that project's roles claim
    /// (`urn:zitadel:iam:org:project:<id>:roles`) grants roles; the project-less
    /// `urn:zitadel:iam:org:project:roles` is ignored. Unset: only the project-less claim counts.
    #[arg(long, env = "KATAVEN_OIDC_PROJECT_ID", global = true)]
    pub oidc_project_id: Option<String>,

    /// How often the OIDC issuer's keys are refreshed (seconds).
    #[arg(
        long,
        env = "KATAVEN_JWKS_REFRESH_SECS",
        default_value_t = 300,
        global = true
    )]
    pub jwks_refresh_secs: u64,

    /// A token with an unknown `kid` triggers at most one key refresh per this many seconds.
    #[arg(
        long,
        env = "KATAVEN_JWKS_REFRESH_COOLDOWN_SECS",
        default_value_t = 10,
        global = true
    )]
    pub jwks_refresh_cooldown_secs: u64,

    /// Secret for API/widget key HMACs (required in `serve`).
    #[arg(long, env = "KATAVEN_KEY_PEPPER", value_parser = secret, global = true)]
    pub key_pepper: Option<SecretString>,

    /// Enable the dev issuer and `POST /api/login` (default: false; `dev`: true).
    #[arg(long, env = "KATAVEN_DEV_LOGIN", global = true)]
    pub dev_login: Option<bool>,

    /// Redis URL for shared limit counters (unset: in-process counters).
    #[arg(long, env = "KATAVEN_REDIS_URL", value_parser = secret, global = true)]
    pub redis_url: Option<SecretString>,

    #[arg(
        long,
        env = "KATAVEN_LIMIT_PER_MINUTE",
        default_value_t = 60,
        global = true
    )]
    pub limit_per_minute: u32,
    #[arg(
        long,
        env = "KATAVEN_LIMIT_PER_HOUR",
        default_value_t = 1000,
        global = true
    )]
    pub limit_per_hour: u32,
    #[arg(
        long,
        env = "KATAVEN_LIMIT_PER_DAY",
        default_value_t = 10_000,
        global = true
    )]
    pub limit_per_day: u32,
    #[arg(
        long,
        env = "KATAVEN_LIMIT_CONCURRENT",
        default_value_t = 20,
        global = true
    )]
    pub limit_concurrent: u32,

    /// Requests per minute per client IP on public endpoints (`/api/accounts*`, `/api/login`,
    /// `/api/user/org`, widget endpoints).
    #[arg(
        long,
        env = "KATAVEN_PUBLIC_LIMIT_PER_MINUTE",
        default_value_t = 120,
        global = true
    )]
    pub public_limit_per_minute: u32,

    /// Failed authentications per minute per client IP (401s and unknown accounts); past it,
    /// 429 `rate_limited` with `limit: "auth"` until the budget refills.
    #[arg(
        long,
        env = "KATAVEN_AUTH_FAILURE_LIMIT_PER_MINUTE",
        default_value_t = 60,
        global = true
    )]
    pub auth_failure_limit_per_minute: u32,

    /// IPv6 clients of the per-IP limits are counted per network of this prefix length
    /// (IPv4 clients per address).
    #[arg(
        long,
        env = "KATAVEN_IPV6_PREFIX_LEN",
        default_value_t = 64,
        value_parser = clap::value_parser!(u8).range(32..=128),
        global = true
    )]
    pub ipv6_prefix_len: u8,

    /// Requests per minute per widget key on the public widget endpoints.
    #[arg(
        long,
        env = "KATAVEN_WIDGET_KEY_LIMIT_PER_MINUTE",
        default_value_t = 600,
        global = true
    )]
    pub widget_key_limit_per_minute: u32,

    /// Requests per minute from one client IP within one widget key's quota (its share), so
    /// that one client cannot spend a key's whole quota.
    #[arg(
        long,
        env = "KATAVEN_WIDGET_KEY_IP_LIMIT_PER_MINUTE",
        default_value_t = 60,
        global = true
    )]
    pub widget_key_ip_limit_per_minute: u32,

    /// Call minutes per account and day (reported by `/api/v1/call-limits`).
    #[arg(
        long,
        env = "KATAVEN_LIMIT_DAILY_MINUTES",
        default_value_t = 1440,
        global = true
    )]
    pub limit_daily_minutes: u32,

    /// A tenant pool's share: connections it may always open (more while the budget has headroom).
    #[arg(
        long,
        env = "KATAVEN_TENANT_POOL_MAX",
        default_value_t = 5,
        global = true
    )]
    pub tenant_pool_max: u32,

    /// Maximum connections this instance opens to each database server, across its tenant pools.
    #[arg(
        long,
        env = "KATAVEN_DB_CONNECTION_BUDGET",
        default_value_t = 80,
        global = true
    )]
    pub db_connection_budget: u32,

    /// How long a request waits for a tenant connection before answering 503 (milliseconds).
    #[arg(
        long,
        env = "KATAVEN_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 2000,
        global = true
    )]
    pub db_acquire_timeout_ms: u64,

    /// Server-side `statement_timeout` of the service's database connections (milliseconds;
    /// `0`: the server's own setting). A statement cancelled by it answers 503.
    #[arg(
        long,
        env = "KATAVEN_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub db_statement_timeout_ms: u64,

    /// Idle tenant connections are closed after this many seconds; a pool with no connections
    /// left is dropped from the map.
    #[arg(
        long,
        env = "KATAVEN_TENANT_IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub tenant_idle_timeout_secs: u64,

    /// `public` or `off` for `GET /api/accounts`.
    #[arg(
        long,
        env = "KATAVEN_ACCOUNT_DIRECTORY",
        value_enum,
        default_value = "public",
        global = true
    )]
    pub account_directory: AccountDirectory,

    /// `pretty` or `json`.
    #[arg(
        long,
        env = "KATAVEN_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,

    /// CIDRs whose `X-Forwarded-For` is believed for the client IP (comma-separated).
    #[arg(
        long,
        env = "KATAVEN_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<String>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "KATAVEN_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub body_limit_bytes: usize,

    /// Requests running longer than this answer 503 (seconds).
    #[arg(
        long,
        env = "KATAVEN_REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_secs: u64,

    /// On SIGTERM/SIGINT, in-flight requests get this long to finish (seconds).
    #[arg(
        long,
        env = "KATAVEN_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub shutdown_timeout_secs: u64,

    /// Audit log entries older than this many days are deleted (swept hourly; see
    /// docs/resources.md) and never answered by `GET /api/v1/audit-log`.
    #[arg(
        long,
        env = "KATAVEN_AUDIT_RETENTION_DAYS",
        default_value_t = 365,
        value_parser = clap::value_parser!(u32).range(1..=36_500),
        global = true
    )]
    pub audit_retention_days: u32,

    /// How long the answer of a write made with an `Idempotency-Key` is kept for retries
    /// (hours; swept hourly; see docs/idempotency.md).
    #[arg(
        long,
        env = "KATAVEN_IDEMPOTENCY_TTL_HOURS",
        default_value_t = 24,
        value_parser = clap::value_parser!(u32).range(1..=720),
        global = true
    )]
    pub idempotency_ttl_hours: u32,

    /// Tenants migrated at once by `migrate`.
    #[arg(
        long,
        env = "KATAVEN_MIGRATE_CONCURRENCY",
        default_value_t = 4,
        global = true
    )]
    pub migrate_concurrency: usize,

    /// Passwords of the database servers other than the system database's: one file per
    /// server id holding its password (docs/fleet.md). A server without a file is reached with
    /// the system database's credentials.
    #[arg(long, env = "KATAVEN_SERVER_SECRETS_DIR", global = true)]
    pub server_secrets_dir: Option<PathBuf>,

    /// How long the database of an account moved to another server is kept on its old server
    /// (fenced: it refuses writes) before the hourly housekeeping drops it (hours; `accounts
    /// move --finish` drops it at once).
    #[arg(
        long,
        env = "KATAVEN_MOVE_GRACE_HOURS",
        default_value_t = 168,
        value_parser = clap::value_parser!(u32).range(1..=8760),
        global = true
    )]
    pub move_grace_hours: u32,

    /// Directory of the PostgreSQL server binaries (`initdb`, `pg_ctl`) for `dev`.
    /// Default: the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
    #[arg(long, env = "KATAVEN_PG_BIN", global = true)]
    pub pg_bin: Option<PathBuf>,

    /// Where `dev` keeps its embedded PostgreSQL cluster and generated secrets.
    #[arg(
        long,
        env = "KATAVEN_DATA_DIR",
        default_value = ".kataven",
        global = true
    )]
    pub data_dir: PathBuf,
}

impl Config {
    /// The password in `KATAVEN_DATABASE_URL` (the fleet's servers may share it).
    pub fn system_password(&self) -> Option<SecretString> {
        use secrecy::ExposeSecret;
        let url = self.database_url.as_ref()?;
        crate::fleet::password_of(url.expose_secret())
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    /// `None` when statements may run as long as the server lets them.
    pub fn db_statement_timeout(&self) -> Option<Duration> {
        (self.db_statement_timeout_ms > 0)
            .then(|| Duration::from_millis(self.db_statement_timeout_ms))
    }

    pub fn tenant_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.tenant_idle_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// How long audit log entries are kept.
    pub fn audit_retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.audit_retention_days))
    }

    /// How long an idempotent write's answer is kept.
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.idempotency_ttl_hours) * 3600)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The configured default limits.
    pub fn default_limits(&self) -> crate::tenancy::catalog::Limits {
        crate::tenancy::catalog::Limits {
            per_minute: self.limit_per_minute,
            per_hour: self.limit_per_hour,
            per_day: self.limit_per_day,
            concurrent: self.limit_concurrent,
            daily_minutes: self.limit_daily_minutes,
        }
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_owned()
    }

    /// A config with every default, for embedding the service (tests, tools).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        <Only as clap::Parser>::parse_from(["kataven-hub"]).config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        <Only as clap::Parser>::try_parse_from(
            std::iter::once("kataven-hub").chain(args.iter().copied()),
        )
        .map(|only| only.config)
    }

    #[test]
    fn the_ipv6_prefix_length_is_32_to_128() {
        assert_eq!(Config::defaults().ipv6_prefix_len, 64);
        for ok in ["32", "48", "56", "128"] {
            assert_eq!(
                parse(&["--ipv6-prefix-len", ok])
                    .unwrap()
                    .ipv6_prefix_len
                    .to_string(),
                ok
            );
        }
        for bad in ["0", "31", "129", "-1", "64x"] {
            assert!(parse(&["--ipv6-prefix-len", bad]).is_err(), "{bad}");
        }
    }
}
