//! The test harness: a real PostgreSQL cluster, the real app on a real port, and a stand-in
//! authenticator until the identity issue brings real tokens.

pub mod client;
pub mod cluster;
pub mod faults;
pub mod issuer;
pub mod logs;
pub mod npm;
pub mod redis;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use kataven_hub::config::Config;
use kataven_hub::extract::TenantDb;
use kataven_hub::state::AppState;
use kataven_hub::tenancy::catalog::{Account, Role};
use kataven_hub::tenancy::provision::{self, Provisioner};
use kataven_hub::tenancy::slug::AccountSlug;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::oneshot;

pub use cluster::cluster;
pub use issuer::{AUDIENCE, TestIssuer};

/// A lowercase random suffix, so that tests sharing the cluster never collide.
pub fn suffix() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 8)
        .to_lowercase()
}

/// A fresh, unique account slug starting with `prefix`.
pub fn unique_slug(prefix: &str) -> AccountSlug {
    AccountSlug::parse(&format!("{prefix}-{}", suffix())).expect("valid slug")
}

/// A fresh system database on the shared cluster.
pub fn system_db_url() -> String {
    cluster().pg.url(&format!("kataven-admin-{}", suffix()))
}

pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::defaults();
    config.database_url = Some(SecretString::from(database_url.to_owned()));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.key_pepper = Some(SecretString::from("test-pepper".to_owned()));
    // Generous limits, so that only the tests about limits meet them.
    config.limit_per_minute = 100_000;
    config.limit_per_hour = 100_000;
    config.limit_per_day = 1_000_000;
    config.limit_concurrent = 1_000;
    config.public_limit_per_minute = 100_000;
    config.auth_failure_limit_per_minute = 100_000;
    config
}

pub async fn provisioner(database_url: &str, migrator: Option<Migrator>) -> Provisioner {
    provisioner_with(database_url, migrator, &provision::SystemPool::default()).await
}

/// A provisioner whose system pool has the given settings (as `serve` derives them from its
/// configuration).
pub async fn provisioner_with(
    database_url: &str,
    migrator: Option<Migrator>,
    pool: &provision::SystemPool,
) -> Provisioner {
    let system = PgConnectOptions::from_str(database_url)
        .unwrap()
        .application_name("kataven-hub");
    let pool = provision::prepare_system_database_with(&system, pool)
        .await
        .expect("system database");
    let migrator = migrator.unwrap_or_else(provision::tenant_migrator);
    Provisioner::new(
        kataven_hub::tenancy::catalog::Catalog::new(pool),
        system,
        Arc::new(migrator),
    )
    .with_credentials(kataven_hub::fleet::password_of(database_url), None)
}

pub struct TestApp {
    /// The stand-in for Zitadel whose tokens this app trusts.
    pub issuer: TestIssuer,
    pub addr: SocketAddr,
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Builder {
    config: Config,
    database_url: String,
    migrator: Option<Migrator>,
    issuer: Option<TestIssuer>,
}

impl Builder {
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Share a system database with another app (several instances of one deployment).
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = url.to_owned();
        self.config.database_url = Some(SecretString::from(url.to_owned()));
        self
    }

    pub fn migrator(mut self, migrator: Migrator) -> Self {
        self.migrator = Some(migrator);
        self
    }

    /// The stand-in issuer the app will trust (to take it down before the app starts).
    pub fn issuer(&self) -> &TestIssuer {
        self.issuer.as_ref().expect("issuer")
    }

    /// Trust no OIDC issuer at all.
    pub fn without_issuer(mut self) -> Self {
        self.config.oidc_issuer = None;
        self.config.oidc_audiences.clear();
        self
    }

    pub async fn spawn(self) -> TestApp {
        let system_pool = provision::SystemPool {
            acquire_timeout: self.config.db_acquire_timeout(),
            statement_timeout: self.config.db_statement_timeout(),
            ..provision::SystemPool::default()
        };
        let provisioner = provisioner_with(&self.database_url, self.migrator, &system_pool)
            .await
            .with_credentials(
                kataven_hub::fleet::password_of(&self.database_url),
                self.config.server_secrets_dir.clone(),
            );
        provisioner
            .prepare_template(&PgConnectOptions::from_str(&self.database_url).unwrap())
            .await
            .expect("template");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dev_login = self.config.dev_login.unwrap_or(false);
        let state = kataven_hub::server::build_state(self.config, provisioner, addr)
            .await
            .expect("application state");
        let router = kataven_hub::routes::router(test_routes(dev_login), state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(kataven_hub::server::serve(
            listener,
            state.clone(),
            router,
            async move {
                let _ = rx.await;
            },
        ));
        TestApp {
            issuer: self.issuer.expect("issuer"),
            addr,
            base: format!("http://{addr}"),
            state,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            shutdown: Some(tx),
            server: Some(server),
        }
    }
}

/// The application's routes plus probes that exercise the tenant extractor the way resource
/// handlers will: `/test/tenant` answers which database the request reached.
fn test_routes(dev_login: bool) -> Router<AppState> {
    #[derive(Deserialize)]
    struct Params {
        sleep_ms: Option<u64>,
    }
    async fn tenant(
        TenantDb {
            tenant, mut conn, ..
        }: TenantDb,
        Query(p): Query<Params>,
    ) -> Result<Json<Value>, kataven_hub::error::ApiError> {
        if let Some(ms) = p.sleep_ms {
            sqlx::query("SELECT pg_sleep($1)")
                .bind(ms as f64 / 1000.0)
                .execute(&mut *conn)
                .await?;
        }
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut *conn)
            .await?;
        Ok(Json(json!({
            "account": tenant.slug,
            "database": db,
            "principal": tenant.principal.id(),
            "role": format!("{:?}", tenant.role),
        })))
    }
    /// Writes an audit row inside a transaction, then sleeps before committing: a client that
    /// gives up meanwhile leaves a transaction behind on the connection.
    async fn in_transaction(
        TenantDb { mut conn, .. }: TenantDb,
        Query(p): Query<Params>,
    ) -> Result<&'static str, kataven_hub::error::ApiError> {
        use sqlx::Connection;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO audit_log (id, principal_kind, principal_id, action, resource)
             VALUES (gen_random_uuid(), 'test', 'test', 'uncommitted', 'test')",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_sleep($1)")
            .bind(p.sleep_ms.unwrap_or(0) as f64 / 1000.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok("committed")
    }
    async fn slow(Query(p): Query<Params>) -> &'static str {
        tokio::time::sleep(Duration::from_millis(p.sleep_ms.unwrap_or(500))).await;
        "done"
    }
    // Routes that check credentials sit behind the failure budget, as the application's do.
    let checks_credentials = axum::Router::new()
        .route("/test/tenant", get(tenant))
        .route("/test/tx", get(in_transaction))
        .layer(axum::middleware::from_fn(
            kataven_hub::limits::auth_failures::budget,
        ));
    kataven_hub::routes::routes(dev_login)
        .merge(checks_credentials)
        .route("/test/slow", get(slow))
}

impl TestApp {
    pub async fn builder() -> Builder {
        let database_url = system_db_url();
        let issuer = TestIssuer::start().await;
        let mut config = test_config(&database_url);
        config.oidc_issuer = Some(issuer.issuer());
        config.oidc_audiences = vec![AUDIENCE.to_owned()];
        Builder {
            config,
            database_url,
            migrator: None,
            issuer: Some(issuer),
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().await.spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// A valid ID token of the test issuer for `subject`.
    pub fn token(&self, subject: &str) -> String {
        self.issuer.token(subject)
    }

    /// `GET /test/tenant` as `subject` in `account`.
    pub fn tenant_get(&self, account: &str, subject: &str) -> reqwest::RequestBuilder {
        self.get("/test/tenant")
            .header("X-Account-ID", account)
            .bearer_auth(self.token(subject))
    }

    /// The status of `GET /test/tenant` as `subject` in `account`.
    pub async fn tenant_status(&self, account: &str, subject: &str) -> u16 {
        self.tenant_get(account, subject)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A request as `subject` in `account` (bearer ID token and `X-Account-ID`).
    pub fn as_user(
        &self,
        method: reqwest::Method,
        path: &str,
        account: &str,
        subject: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-Account-ID", account)
            .bearer_auth(self.token(subject))
    }

    pub fn provisioner(&self) -> &Provisioner {
        &self.state.provisioner
    }

    /// Creates an account with `subject` as its admin.
    pub async fn account_with_admin(&self, prefix: &str, subject: &str) -> Account {
        let slug = unique_slug(prefix);
        let account = self
            .provisioner()
            .create_account(&slug, &format!("{prefix} Inc"), None, None)
            .await
            .expect("create account");
        self.state
            .catalog
            .upsert_member(&slug, subject, Role::Admin)
            .await
            .unwrap();
        account
    }

    /// Reads one sample of a metric from `/metrics` (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self
            .get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)?
                    .strip_prefix(' ')?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Triggers a graceful shutdown and waits for the server to finish.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }
}

/// An app whose request limits (SPEC §9) cannot get in the way of tests that make many
/// requests, whatever the harness configures.
pub async fn roomy_app() -> TestApp {
    TestApp::builder()
        .await
        .config(|c| {
            c.limit_per_minute = 1_000_000;
            c.limit_per_hour = 1_000_000;
            c.limit_per_day = 1_000_000;
            c.limit_concurrent = 10_000;
        })
        .spawn()
        .await
}

/// The system database URL an app runs on (to start a second instance of the same deployment).
pub fn system_url_of(app: &TestApp) -> String {
    use secrecy::ExposeSecret;
    app.state
        .config
        .database_url
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// A superuser connection to one database of the cluster.
pub async fn tenant_conn(database: &str) -> PgConnection {
    let opts = PgConnectOptions::from_str(&cluster().pg.url(database)).unwrap();
    opts.connect().await.unwrap()
}

/// A superuser connection to the cluster's maintenance database.
pub async fn admin_conn() -> PgConnection {
    let opts = PgConnectOptions::from_str(&cluster().pg.url("postgres")).unwrap();
    opts.connect().await.unwrap()
}

/// Client backends currently connected to any of `databases`.
pub async fn backends(conn: &mut PgConnection, databases: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = ANY($1)",
    )
    .bind(databases)
    .fetch_one(conn)
    .await
    .unwrap()
}

pub async fn database_exists(name: &str) -> bool {
    let mut conn = admin_conn().await;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    exists
}

/// A request builder that comes from `client` as far as the app can tell: the app trusts
/// `127.0.0.1` as a proxy (`KATAVEN_TRUSTED_PROXIES`), and this says who the client is.
pub fn from_client(req: reqwest::RequestBuilder, client: &str) -> reqwest::RequestBuilder {
    req.header("X-Forwarded-For", client)
}

/// An `sk_live_` key for `account` as someone without the pepper can make it: the right shape
/// and a valid CRC32 checksum, but no valid tag.
pub fn forged_api_key(account: &str) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let random: String = (0..32)
        .map(|_| BASE62[rand::random_range(0..62)] as char)
        .collect();
    let head = format!("sk_live_{account}_{random}");
    let mut sum = u64::from(crc32fast::hash(head.as_bytes()));
    let mut checksum = [b'0'; 6];
    for slot in checksum.iter_mut().rev() {
        *slot = BASE62[(sum % 62) as usize];
        sum /= 62;
    }
    head + std::str::from_utf8(&checksum).unwrap()
}

/// The error code of a JSON error body.
pub async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned(),
    )
}
