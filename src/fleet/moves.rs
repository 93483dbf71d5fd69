//! `kataven-hub accounts move`: an account's database moves to another server while the
//! account stays in use (docs/fleet.md, "How a move works").
//!
//! 1. **Copy.** A database cloned from the template on the target (emptied of rows), a
//!    publication of the tenant tables on the source and a subscription on the target: logical
//!    replication copies the rows, then streams every later write. Reads and writes go on.
//! 2. **Cut-over.** The account's writes pause (`accounts.writes_paused_until`: instances hold
//!    new writes back, then answer 503 `account_moving`); one transaction on the source locks
//!    every tenant table against writes (waiting for the writes under way), installs the
//!    *fence* (a trigger on each table that refuses any write with [`FENCE_SQLSTATE`]) and
//!    writes a marker row. Once the marker has reached the target, so has every write before
//!    it; the catalog row switches to the target (every instance drops its pool on the
//!    `placement:` notification) and writes resume.
//! 3. **Kept source.** The source database stays, fenced, until `accounts move --finish` or
//!    the grace period (`KATAVEN_MOVE_GRACE_HOURS`); `--revert` points the account back at it.
//!
//! Every step is recorded in `account_moves` and may be run again: an interrupted move resumes
//! where it stopped (`accounts move <slug> --to <server>` again), or is undone (`--abort`).
//! A write can never land on the source after the switch: the fence is committed before the
//! catalog changes, whatever instance (even one that missed the notification) sends it.
//! Without `wal_level = logical` on the source, the copy is `pg_dump | pg_restore` with the
//! account's writes paused (and fenced) for the whole copy.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use super::{Endpoint, ServerState};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tenancy::catalog::Account;
use crate::tenancy::provision::{
    Provisioner, clone_template, database_exists, drop_database, maintenance, quote_ident,
};
use crate::tenancy::slug::AccountSlug;

/// The SQLSTATE of a write refused by the fence of a database whose account moved away:
/// answered 503 `account_moving` (the client retries and reaches the new server).
pub const FENCE_SQLSTATE: &str = "KV001";
/// The pause is a lease: a mover that dies leaves the account's writes paused this long at
/// most (the fence, once committed, holds on regardless).
const PAUSE_LEASE: Duration = Duration::from_secs(30);
/// Instances hear of the pause through the catalog's notification; the fence is taken this
/// much later, so that new writes wait at the instance rather than at the fence.
const PAUSE_PROPAGATION: Duration = Duration::from_millis(50);
/// How long the fence waits for the writes under way (`lock_timeout`); a cut-over that cannot
/// lock in time lifts the pause and tries again.
const FENCE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const CUTOVER_ATTEMPTS: u32 = 3;
/// How long the marker may take to reach the target before the cut-over gives up (and
/// unfences the source).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first copy may go without progress before the move reports it.
const COPY_STALL: Duration = Duration::from_secs(600);
/// The table of the cut-over's marker rows, quoted as [`tenant_tables`] names it.
const MARKERS: &str = "\"kataven_move_markers\"";

/// A write that finds its account's writes paused waits (polling the cached catalog row, which
/// the notifications keep current) until the pause ends, then goes on with the account as it
/// is now, on its new server; after the request's acquire timeout it answers 503
/// `account_moving`.
pub async fn writable(state: &AppState, slug: &AccountSlug) -> Result<Account, ApiError> {
    let deadline = tokio::time::Instant::now() + state.config.db_acquire_timeout();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let account = state
            .cache
            .account(slug)
            .await?
            .ok_or_else(|| ApiError::UnknownAccount(slug.to_string()))?;
        if !account.writes_paused() {
            return Ok(account);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::AccountMoving);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Logical replication: the account stays writable during the copy.
    Replication,
    /// `pg_dump | pg_restore`: the account's writes are paused for the copy.
    Dump,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Copying,
    Switched,
}

/// A row of `account_moves`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Move {
    pub account: String,
    pub id: Uuid,
    pub source_server: String,
    pub source_database: String,
    pub target_server: String,
    pub target_database: String,
    pub method: Method,
    pub phase: Phase,
    pub pause_ms: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub switched_at: Option<DateTime<Utc>>,
}

impl Move {
    /// The name of the publication, subscription and replication slot of this move.
    fn channel(&self) -> String {
        format!("kataven_move_{}", self.id.simple())
    }
}

/// What the operator asked for besides the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoveOptions {
    /// Accept the `pg_dump` copy (writes paused for the whole copy) when the source cannot
    /// replicate.
    pub allow_write_pause: bool,
}

/// What a finished cut-over measured.
#[derive(Debug, Clone)]
pub struct Summary {
    pub the_move: Move,
    pub copy: Duration,
    pub pause: Duration,
    pub rows: u64,
}

/// The mover: runs moves with a provisioner, reporting progress through `say`.
pub struct Mover<'a> {
    provisioner: &'a Provisioner,
    say: &'a (dyn Fn(&str) + Sync),
}

/// The columns of a [`Move`].
const MOVE_COLUMNS: &str = "account, id, source_server, source_database, target_server, \
                            target_database, method, phase, pause_ms, started_at, updated_at, \
                            switched_at";

async fn load(pool: &sqlx::PgPool, slug: &str) -> sqlx::Result<Option<Move>> {
    sqlx::query_as(&format!(
        "SELECT {MOVE_COLUMNS} FROM account_moves WHERE account = $1"
    ))
    .bind(slug)
    .fetch_optional(pool)
    .await
}

/// The move of `slug`, if one is under way or kept.
pub async fn status(provisioner: &Provisioner, slug: &AccountSlug) -> anyhow::Result<Option<Move>> {
    Ok(load(provisioner.catalog().pool(), slug.as_str()).await?)
}

impl<'a> Mover<'a> {
    pub fn new(provisioner: &'a Provisioner, say: &'a (dyn Fn(&str) + Sync)) -> Self {
        Self { provisioner, say }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.provisioner.catalog().pool()
    }

    async fn account(&self, slug: &AccountSlug) -> anyhow::Result<Account> {
        self.provisioner
            .catalog()
            .account(slug)
            .await?
            .with_context(|| format!("no account `{slug}`"))
    }

    async fn endpoint(&self, server: &str) -> anyhow::Result<std::sync::Arc<Endpoint>> {
        self.provisioner.servers().get(server).await
    }

    async fn connect(&self, server: &str, database: &str) -> anyhow::Result<PgConnection> {
        let options = self.endpoint(server).await?.options.clone();
        connect_to(&options, database)
            .await
            .with_context(|| format!("connecting to `{database}` on server `{server}`"))
    }

    /// Moves `slug` to server `to`, or resumes its interrupted move there.
    pub async fn run(
        &self,
        slug: &AccountSlug,
        to: &str,
        options: MoveOptions,
    ) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let the_move = self.copy(slug, to, options).await?;
        let copy = started.elapsed();
        let (pause, rows) = self.cut_over(&the_move).await?;
        let the_move = load(self.pool(), slug.as_str())
            .await?
            .context("the move's row vanished")?;
        self.clean_up_after_switch(&the_move).await;
        Ok(Summary {
            the_move,
            copy,
            pause,
            rows,
        })
    }

    /// The copy half of [`Self::run`] (`accounts move --copy-only`): starts or resumes the move
    /// and returns once the target follows the source; the account runs on the source until a
    /// later `run` cuts over. A dump move has nothing to copy ahead: its copy is the cut-over.
    pub async fn copy(
        &self,
        slug: &AccountSlug,
        to: &str,
        options: MoveOptions,
    ) -> anyhow::Result<Move> {
        let the_move = match load(self.pool(), slug.as_str()).await? {
            Some(m) if m.phase == Phase::Switched => bail!(
                "`{slug}` moved to server `{}` at {}; its old database is kept until \
                 `accounts move {slug} --finish` (or `--revert`): finish it before another move",
                m.target_server,
                m.switched_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
            Some(m) if m.target_server != to => bail!(
                "a move of `{slug}` to server `{}` is under way: resume it (--to {}) or \
                 `--abort` it first",
                m.target_server,
                m.target_server
            ),
            Some(m) => {
                (self.say)(&format!(
                    "resuming the move of {slug} to server `{to}` (started {})",
                    m.started_at.to_rfc3339()
                ));
                m
            }
            None => self.begin(slug, to, options).await?,
        };
        if the_move.method == Method::Dump && !options.allow_write_pause {
            bail!(
                "this move copies with pg_dump (the source server has no wal_level = logical): \
                 the account's writes are paused for the whole copy; run again with \
                 --allow-write-pause to accept"
            );
        }
        match the_move.method {
            Method::Replication => self.replicate(&the_move).await?,
            Method::Dump => self.prepare_target(&the_move).await?,
        }
        Ok(the_move)
    }

    /// Checks the move and records it (phase `copying`).
    async fn begin(
        &self,
        slug: &AccountSlug,
        to: &str,
        options: MoveOptions,
    ) -> anyhow::Result<Move> {
        let mut account = self.account(slug).await?;
        if account.server == to {
            bail!("`{slug}` is already on server `{to}`");
        }
        let target = super::server(self.pool(), to)
            .await?
            .with_context(|| format!("no server `{to}` (see `kataven-hub servers list`)"))?;
        if target.state != ServerState::Active {
            bail!(
                "server `{to}` is {}: it takes no accounts",
                target.state.as_str()
            );
        }
        // The target is cloned from the newest template: the source must be as new.
        if account.schema_version < self.provisioner.latest_tenant_version() {
            (self.say)(&format!("migrating {slug} to the newest schema first"));
            self.provisioner.migrate_tenant(&account).await?;
            account = self.account(slug).await?;
        }
        let mut source = self
            .connect(&account.server, &account.database_name)
            .await?;
        let wal_level: String = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&mut source)
            .await?;
        source.close().await.ok();
        let method = if wal_level == "logical" {
            Method::Replication
        } else {
            (self.say)(&format!(
                "server `{}` has wal_level = {wal_level}, not logical: logical replication \
                 cannot be used, so the copy is pg_dump | pg_restore and the account's writes \
                 are PAUSED for the whole copy",
                account.server
            ));
            if !options.allow_write_pause {
                bail!(
                    "not started: run again with --allow-write-pause to accept the pause, or set \
                     wal_level = logical on server `{}` (a restart) for a move without one",
                    account.server
                );
            }
            Method::Dump
        };
        // The target's database: the account's name, unless that is taken there.
        let target_options = self.endpoint(to).await?.options.clone();
        let mut admin = maintenance(&target_options).await?;
        let mut target_database = account.database_name.clone();
        if database_exists(&mut admin, &target_database).await? {
            let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
            let keep = 63 - stamp.len() - 1;
            target_database = format!(
                "{}-{stamp}",
                &account.database_name[..account.database_name.len().min(keep)]
            );
            if database_exists(&mut admin, &target_database).await? {
                bail!("database `{target_database}` exists on server `{to}`; try again");
            }
        }
        admin.close().await.ok();
        let the_move: Move = sqlx::query_as(&format!(
            "INSERT INTO account_moves (account, id, source_server, source_database,
                                        target_server, target_database, method, phase)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'copying')
             RETURNING {MOVE_COLUMNS}"
        ))
        .bind(slug.as_str())
        .bind(Uuid::now_v7())
        .bind(&account.server)
        .bind(&account.database_name)
        .bind(to)
        .bind(&target_database)
        .bind(method)
        .fetch_one(self.pool())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                anyhow::anyhow!("another move of `{slug}` started meanwhile")
            }
            _ => e.into(),
        })?;
        (self.say)(&format!(
            "moving {slug} from server `{}` to server `{to}` (database `{target_database}`) by {}",
            account.server,
            match method {
                Method::Replication => "logical replication; the account stays writable",
                Method::Dump => "pg_dump | pg_restore; writes paused during the copy",
            }
        ));
        Ok(the_move)
    }

    /// The target database: a clone of the template, emptied of rows, created once.
    async fn prepare_target(&self, m: &Move) -> anyhow::Result<()> {
        let target = self.endpoint(&m.target_server).await?.options.clone();
        let mut admin = maintenance(&target).await?;
        if !database_exists(&mut admin, &m.target_database).await? {
            if !database_exists(&mut admin, &self.provisioner.template_name()).await? {
                self.provisioner.prepare_template(&target).await?;
            }
            clone_template(
                &mut admin,
                &m.target_database,
                &self.provisioner.template_name(),
            )
            .await?;
            let mut conn = connect_to(&target, &m.target_database).await?;
            let tables = tenant_tables(&mut conn).await?;
            if !tables.is_empty() {
                // Rows a migration inserted: the copy brings the account's own.
                sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
                    .execute(&mut conn)
                    .await?;
            }
            conn.close().await.ok();
        }
        admin.close().await.ok();
        Ok(())
    }

    /// The copy by logical replication, up to the point where the target has caught up.
    async fn replicate(&self, m: &Move) -> anyhow::Result<()> {
        self.prepare_target(m).await?;
        let channel = m.channel();
        let mut source = self.connect(&m.source_server, &m.source_database).await?;
        let published: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
                .bind(&channel)
                .fetch_one(&mut source)
                .await?;
        if !published {
            let tables = tenant_tables(&mut source).await?;
            sqlx::query(&format!(
                "CREATE PUBLICATION {channel} FOR TABLE {}",
                tables.join(", ")
            ))
            .execute(&mut source)
            .await
            .context("creating the publication on the source")?;
        }
        let mut target = self.connect(&m.target_server, &m.target_database).await?;
        let subscribed: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)")
                .bind(&channel)
                .fetch_one(&mut target)
                .await?;
        if !subscribed {
            let source_endpoint = self.endpoint(&m.source_server).await?;
            let conninfo = source_endpoint.conninfo(&m.source_database);
            // The connection string holds a password: the error says what failed, not it.
            sqlx::query(&format!(
                "CREATE SUBSCRIPTION {channel} CONNECTION {} PUBLICATION {channel}",
                quote_literal(conninfo.expose_secret())
            ))
            .execute(&mut target)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating the subscription on server `{}` (it connects to server `{}` \
                     as this instance does): {}",
                    m.target_server,
                    m.source_server,
                    e.as_database_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_else(|| "the connection failed".to_owned())
                )
            })?;
        }
        // Wait for the first copy of every table.
        let copying = Instant::now();
        let mut last_report = Instant::now();
        let mut last_pending = i64::MAX;
        let mut progress_at = Instant::now();
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
                 WHERE s.subname = $1 AND r.srsubstate NOT IN ('r', 's')",
            )
            .bind(&channel)
            .fetch_one(&mut target)
            .await?;
            let known: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
                 WHERE s.subname = $1",
            )
            .bind(&channel)
            .fetch_one(&mut target)
            .await?;
            if known > 0 && pending == 0 {
                break;
            }
            if pending < last_pending {
                last_pending = pending;
                progress_at = Instant::now();
            } else if progress_at.elapsed() > COPY_STALL {
                bail!(
                    "the first copy made no progress for {} s: see the target server's log \
                     (the move can be resumed or aborted)",
                    COPY_STALL.as_secs()
                );
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                (self.say)(&format!(
                    "copying: {pending} of {known} tables still in their first copy ({} s)",
                    copying.elapsed().as_secs()
                ));
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        source.close().await.ok();
        target.close().await.ok();
        (self.say)(&format!(
            "first copy done in {} ms; the target follows the source",
            copying.elapsed().as_millis()
        ));
        Ok(())
    }

    /// Pauses the account's writes, fences the source, waits until the target has every
    /// write, switches the catalog and resumes writes. Returns the pause and the rows moved.
    async fn cut_over(&self, m: &Move) -> anyhow::Result<(Duration, u64)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_cut_over(m).await {
                Ok(done) => return Ok(done),
                Err(CutOver::Retry(e)) if attempt < CUTOVER_ATTEMPTS => {
                    (self.say)(&format!(
                        "cut-over attempt {attempt} gave up ({e:#}); retrying"
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(CutOver::Retry(e) | CutOver::Failed(e)) => return Err(e),
            }
        }
    }

    async fn try_cut_over(&self, m: &Move) -> Result<(Duration, u64), CutOver> {
        let paused_at = Instant::now();
        self.pause(&m.account).await.map_err(CutOver::Failed)?;
        let done = self.fenced_switch(m, paused_at).await;
        if done.is_err() {
            // Writes resume where the catalog says the account is (the source, unfenced, or
            // the target if the switch committed).
            if let Err(e) = self.resume_writes(&m.account).await {
                tracing::warn!(error = ?e, "could not lift the pause (it expires by itself)");
            }
        }
        done
    }

    async fn fenced_switch(
        &self,
        m: &Move,
        paused_at: Instant,
    ) -> Result<(Duration, u64), CutOver> {
        // A dump copy's pause lasts as long as the copy: keep the lease alive meanwhile.
        let heartbeat = (m.method == Method::Dump).then(|| {
            let pool = self.pool().clone();
            let slug = m.account.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PAUSE_LEASE / 3).await;
                    let _ = pause_writes(&pool, &slug).await;
                }
            })
        });
        let _stop = AbortOnDrop(heartbeat);
        tokio::time::sleep(PAUSE_PROPAGATION).await;
        let mut source = self
            .connect(&m.source_server, &m.source_database)
            .await
            .map_err(CutOver::Retry)?;
        fence(&mut source, Some(m.id))
            .await
            .map_err(CutOver::Retry)?;
        let switched = async {
            match m.method {
                Method::Replication => self.await_marker(m).await?,
                Method::Dump => self.dump_restore(m).await?,
            }
            copy_sequences(
                &mut source,
                &mut self.connect(&m.target_server, &m.target_database).await?,
            )
            .await?;
            let rows = row_count(&mut source).await?;
            let pause = paused_at.elapsed();
            self.switch(m, pause).await?;
            anyhow::Ok((pause, rows))
        }
        .await;
        match switched {
            Ok(done) => Ok(done),
            Err(e) => {
                // Not switched: the source stays the account's database; take the fence down.
                if let Err(unfence_err) = unfence(&mut source).await {
                    tracing::error!(error = ?unfence_err, account = %m.account, "could not unfence the source after a failed cut-over; `accounts move --abort` does");
                    return Err(CutOver::Failed(e.context(
                        "the cut-over failed and the source is still fenced (writes answer 503): \
                         run `accounts move --abort` or resume the move",
                    )));
                }
                Err(CutOver::Retry(e))
            }
        }
    }

    async fn pause(&self, slug: &str) -> anyhow::Result<()> {
        pause_writes(self.pool(), slug).await
    }

    async fn resume_writes(&self, slug: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE accounts SET writes_paused_until = NULL WHERE slug = $1")
            .bind(slug)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Waits until the fence's marker row has reached the target: every write before the fence
    /// has then too.
    async fn await_marker(&self, m: &Move) -> anyhow::Result<()> {
        let mut target = self.connect(&m.target_server, &m.target_database).await?;
        let started = Instant::now();
        loop {
            let arrived: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM kataven_move_markers WHERE move_id = $1)",
            )
            .bind(m.id)
            .fetch_one(&mut target)
            .await?;
            if arrived {
                target.close().await.ok();
                return Ok(());
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                bail!(
                    "the target did not catch up within {} s",
                    CATCH_UP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The dump copy: the fenced source's rows into the emptied target.
    async fn dump_restore(&self, m: &Move) -> anyhow::Result<()> {
        let source = self.endpoint(&m.source_server).await?;
        let target = self.endpoint(&m.target_server).await?;
        let mut conn = self.connect(&m.target_server, &m.target_database).await?;
        let tables = tenant_tables(&mut conn).await?;
        if !tables.is_empty() {
            sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await.ok();
        let bin = crate::tenancy::embedded_pg::find_bin_dir(None)
            .context("pg_dump and pg_restore are needed for a move without logical replication")?;
        let source_db = m.source_database.clone();
        let target_db = m.target_database.clone();
        let source_env = source.libpq_env();
        let target_env = target.libpq_env();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            use std::process::{Command, Stdio};
            let mut dump = Command::new(bin.join("pg_dump"))
                .args(["--data-only", "--format=custom", "--no-owner"])
                .args(["--exclude-table=_sqlx_migrations"])
                .args(["--exclude-table=kataven_move_markers"])
                .arg(format!("--dbname={source_db}"))
                .envs(source_env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting pg_dump")?;
            let restore = Command::new(bin.join("pg_restore"))
                .args(["--data-only", "--disable-triggers", "--single-transaction"])
                .arg(format!("--dbname={target_db}"))
                .envs(target_env)
                .stdin(dump.stdout.take().context("pg_dump's output")?)
                .output()
                .context("running pg_restore")?;
            let dumped = dump.wait_with_output().context("running pg_dump")?;
            if !dumped.status.success() {
                bail!(
                    "pg_dump failed: {}",
                    String::from_utf8_lossy(&dumped.stderr).trim()
                );
            }
            if !restore.status.success() {
                bail!(
                    "pg_restore failed: {}",
                    String::from_utf8_lossy(&restore.stderr).trim()
                );
            }
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// The catalog's switch: the account now lives on the target; writes resume.
    async fn switch(&self, m: &Move, pause: Duration) -> anyhow::Result<()> {
        let mut tx = self.pool().begin().await?;
        place(&mut tx, &m.account, &m.target_server, &m.target_database).await?;
        sqlx::query(
            "UPDATE account_moves SET phase = 'switched', pause_ms = $2, switched_at = now(),
                    updated_at = now()
             WHERE account = $1",
        )
        .bind(&m.account)
        .bind(i32::try_from(pause.as_millis()).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// After the switch: the subscription, the publication (and with them the replication
    /// slot) go; the marker row goes. Failures are reported, not fatal: `--finish` retries.
    async fn clean_up_after_switch(&self, m: &Move) {
        match self.drop_replication(m).await {
            Ok(None) => {}
            Ok(Some(todo)) => (self.say)(&format!("warning: {todo}")),
            Err(e) => (self.say)(&format!(
                "warning: could not drop the move's replication objects ({e:#}); \
                 `accounts move {} --finish` tries again",
                m.account
            )),
        }
        if let Ok(mut target) = self.connect(&m.target_server, &m.target_database).await {
            let _ = sqlx::query("DELETE FROM kataven_move_markers")
                .execute(&mut target)
                .await;
            target.close().await.ok();
        }
        if let Ok(mut source) = self.connect(&m.source_server, &m.source_database).await {
            let comment = format!(
                "kataven: account {} moved to server {} (database {}) at {}; kept until \
                 `accounts move --finish`",
                m.account,
                m.target_server,
                m.target_database,
                Utc::now().to_rfc3339()
            );
            let _ = sqlx::query(&format!(
                "COMMENT ON DATABASE {} IS {}",
                quote_ident(&m.source_database),
                quote_literal(&comment)
            ))
            .execute(&mut source)
            .await;
            source.close().await.ok();
        }
    }

    /// Drops the subscription (on the target), the publication and the replication slot (on
    /// the source), whichever exist. Works when the target is gone: the slot is dropped on
    /// the source directly (left behind, it would keep the source's WAL forever), and the
    /// answer says what to run on the target once it is back.
    async fn drop_replication(&self, m: &Move) -> anyhow::Result<Option<String>> {
        if m.method != Method::Replication {
            return Ok(None);
        }
        let channel = m.channel();
        let mut target_down = None;
        match self.connect(&m.target_server, &m.target_database).await {
            Ok(mut target) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
                )
                .bind(&channel)
                .fetch_one(&mut target)
                .await?;
                if exists {
                    // Detached from its slot first, so that dropping it needs no source.
                    for sql in [
                        format!("ALTER SUBSCRIPTION {channel} DISABLE"),
                        format!("ALTER SUBSCRIPTION {channel} SET (slot_name = NONE)"),
                        format!("DROP SUBSCRIPTION {channel}"),
                    ] {
                        sqlx::query(&sql).execute(&mut target).await?;
                    }
                }
                target.close().await.ok();
            }
            Err(e) => {
                target_down = Some(format!(
                    "server `{}` cannot be reached ({e:#}); once it is back, run in its database \
                     `{}`: ALTER SUBSCRIPTION {channel} DISABLE; ALTER SUBSCRIPTION {channel} SET \
                     (slot_name = NONE); DROP SUBSCRIPTION {channel};",
                    m.target_server, m.target_database
                ))
            }
        }
        match self.connect(&m.source_server, &m.source_database).await {
            Ok(mut source) => {
                sqlx::query(&format!("DROP PUBLICATION IF EXISTS {channel}"))
                    .execute(&mut source)
                    .await?;
                // The walsender may take a moment to let go of the slot.
                let started = Instant::now();
                loop {
                    let dropped = sqlx::query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                         WHERE slot_name = $1",
                    )
                    .bind(&channel)
                    .execute(&mut source)
                    .await;
                    match dropped {
                        Ok(_) => break,
                        Err(e) if started.elapsed() < Duration::from_secs(10) => {
                            tracing::debug!(error = %e, "replication slot still active");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                source.close().await.ok();
            }
            Err(e) => {
                return Err(e.context(format!(
                    "the replication slot `{channel}` on server `{}` could not be dropped",
                    m.source_server
                )));
            }
        }
        Ok(target_down)
    }

    /// The move of `slug`, which must exist.
    async fn existing(&self, slug: &AccountSlug) -> anyhow::Result<Move> {
        load(self.pool(), slug.as_str())
            .await?
            .with_context(|| format!("`{slug}` has no move (see `accounts move {slug} --status`)"))
    }

    /// `--abort`: undoes a move that has not switched. The account stays where it is; the
    /// target's database, the replication objects and any fence go.
    pub async fn abort(&self, slug: &AccountSlug) -> anyhow::Result<Move> {
        let m = self.existing(slug).await?;
        if m.phase == Phase::Switched {
            bail!(
                "`{slug}` already runs on server `{}`: --finish keeps it there (dropping the old \
                 database), --revert goes back to the old database (losing the writes since the \
                 cut-over)",
                m.target_server
            );
        }
        self.resume_writes(slug.as_str()).await?;
        if let Some(todo) = self.drop_replication(&m).await? {
            (self.say)(&format!("warning: {todo}"));
        }
        let mut source = self.connect(&m.source_server, &m.source_database).await?;
        unfence(&mut source).await?;
        source.close().await.ok();
        let target = self.endpoint(&m.target_server).await?;
        match maintenance(&target.options).await {
            Ok(mut admin) => drop_database(&mut admin, &m.target_database).await?,
            Err(e) => (self.say)(&format!(
                "warning: server `{}` cannot be reached ({e:#}): drop database `{}` there by \
                 hand once it is back",
                m.target_server, m.target_database
            )),
        }
        forget(self.pool(), slug).await?;
        Ok(m)
    }

    /// `--finish`: drops the old database of a switched move.
    pub async fn finish(&self, slug: &AccountSlug) -> anyhow::Result<Move> {
        let m = self.existing(slug).await?;
        if m.phase != Phase::Switched {
            bail!("the move of `{slug}` has not switched yet: resume it, or --abort it");
        }
        if let Some(todo) = self.drop_replication(&m).await? {
            (self.say)(&format!("warning: {todo}"));
        }
        let source = self.endpoint(&m.source_server).await?;
        let mut admin = maintenance(&source.options).await?;
        drop_database(&mut admin, &m.source_database).await?;
        admin.close().await.ok();
        forget(self.pool(), slug).await?;
        Ok(m)
    }

    /// `--revert`: after a switch, points the account back at its old database (unfenced),
    /// losing every write made since the cut-over; the new database is fenced (if its server
    /// answers) and kept for the operator to inspect or drop. For when the target server is
    /// lost.
    pub async fn revert(&self, slug: &AccountSlug) -> anyhow::Result<Move> {
        let m = self.existing(slug).await?;
        if m.phase != Phase::Switched {
            bail!("the move of `{slug}` has not switched: --abort it instead");
        }
        // The new database is fenced first (when its server answers), so that an instance
        // that has not heard of the revert yet cannot write there any more.
        match self.connect(&m.target_server, &m.target_database).await {
            Ok(mut target) => {
                fence(&mut target, None).await?;
                target.close().await.ok();
            }
            Err(e) => (self.say)(&format!(
                "warning: server `{}` cannot be reached ({e:#}); its database `{}` is not \
                 fenced",
                m.target_server, m.target_database
            )),
        }
        let mut source = self.connect(&m.source_server, &m.source_database).await?;
        unfence(&mut source).await?;
        source.close().await.ok();
        let mut tx = self.pool().begin().await?;
        place(&mut tx, slug.as_str(), &m.source_server, &m.source_database).await?;
        forget(&mut *tx, slug).await?;
        tx.commit().await?;
        Ok(m)
    }
}

/// Finishes the moves switched longer than `grace` ago (hourly housekeeping); returns how many.
pub async fn finish_expired(provisioner: &Provisioner, grace: Duration) -> anyhow::Result<usize> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT account FROM account_moves
         WHERE phase = 'switched' AND switched_at < now() - make_interval(secs => $1)",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(provisioner.catalog().pool())
    .await?;
    let say = |line: &str| tracing::info!("{line}");
    let mover = Mover::new(provisioner, &say);
    let mut finished = 0;
    for slug in due {
        let Ok(slug) = AccountSlug::parse(&slug) else {
            continue;
        };
        match mover.finish(&slug).await {
            Ok(m) => {
                tracing::info!(account = %slug, server = %m.source_server, database = %m.source_database, "dropped the database of a move past its grace period");
                finished += 1;
            }
            Err(e) => {
                tracing::warn!(account = %slug, error = ?e, "could not finish a move past its grace period")
            }
        }
    }
    Ok(finished)
}

enum CutOver {
    /// Nothing changed for good (the pause is lifted, the source unfenced): try again.
    Retry(anyhow::Error),
    Failed(anyhow::Error),
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Points the account at `database` on `server` and ends any pause of its writes (the
/// `placement:` notification makes every instance drop its pool for the account).
async fn place(
    tx: &mut PgConnection,
    slug: &str,
    server: &str,
    database: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE accounts SET server = $2, database_name = $3, writes_paused_until = NULL
         WHERE slug = $1",
    )
    .bind(slug)
    .bind(server)
    .bind(database)
    .execute(tx)
    .await?;
    Ok(())
}

/// Deletes the account's move row (the move is over: aborted, finished or reverted).
async fn forget(db: impl sqlx::PgExecutor<'_>, slug: &AccountSlug) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM account_moves WHERE account = $1")
        .bind(slug.as_str())
        .execute(db)
        .await?;
    Ok(())
}

async fn pause_writes(pool: &sqlx::PgPool, slug: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE accounts SET writes_paused_until = now() + make_interval(secs => $2)
         WHERE slug = $1",
    )
    .bind(slug)
    .bind(PAUSE_LEASE.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

async fn connect_to(options: &PgConnectOptions, database: &str) -> anyhow::Result<PgConnection> {
    Ok(options
        .clone()
        .database(database)
        .application_name("kataven-hub mover")
        .connect()
        .await?)
}

/// The account's tables (every table of `public` but sqlx's bookkeeping), quoted.
async fn tenant_tables(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT tablename FROM pg_tables
         WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY tablename",
    )
    .fetch_all(conn)
    .await?;
    Ok(names.iter().map(|n| quote_ident(n)).collect())
}

/// Fences the database: one transaction waits for the writes under way, then installs on every
/// tenant table (the markers aside) a trigger that refuses any write with [`FENCE_SQLSTATE`] (and, for a move,
/// writes its marker row before the fence, the last write the target receives). Writes that
/// waited for the lock meet the fence once it commits.
pub async fn fence(conn: &mut PgConnection, marker: Option<Uuid>) -> anyhow::Result<()> {
    let tables = tenant_tables(conn).await?;
    let mut tx = conn.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        FENCE_LOCK_TIMEOUT.as_millis()
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .context("waiting for the writes under way (lock_timeout)")?;
    if let Some(id) = marker {
        sqlx::query(
            "INSERT INTO kataven_move_markers (move_id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!(
        "CREATE OR REPLACE FUNCTION kataven_moved() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION USING ERRCODE = '{FENCE_SQLSTATE}',
                 MESSAGE = 'this account''s database moved to another server';
         END $$"
    ))
    .execute(&mut *tx)
    .await?;
    // The markers stay writable: a cut-over resumed after the fence writes its marker again.
    for table in tables.iter().filter(|t| *t != MARKERS) {
        sqlx::query(&format!(
            "CREATE OR REPLACE TRIGGER kataven_moved
             BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
             FOR EACH STATEMENT EXECUTE FUNCTION kataven_moved()"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Takes the fence down (an aborted or failed cut-over, a revert).
async fn unfence(conn: &mut PgConnection) -> anyhow::Result<()> {
    let tables = tenant_tables(conn).await?;
    let mut tx = conn.begin().await?;
    for table in &tables {
        sqlx::query(&format!("DROP TRIGGER IF EXISTS kataven_moved ON {table}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DROP FUNCTION IF EXISTS kataven_moved()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Logical replication does not carry sequences: their values are set on the target.
async fn copy_sequences(
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> anyhow::Result<()> {
    let sequences: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'",
    )
    .fetch_all(&mut *source)
    .await?;
    for (name, last) in sequences {
        if let Some(last) = last {
            sqlx::query("SELECT setval($1::regclass, $2)")
                .bind(quote_ident(&name))
                .bind(last)
                .execute(&mut *target)
                .await?;
        }
    }
    Ok(())
}

/// Rows in the account's tables (reported by a move), markers aside.
async fn row_count(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let tables = tenant_tables(conn).await?;
    let mut total = 0i64;
    for table in tables.iter().filter(|t| *t != MARKERS) {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *conn)
            .await?;
        total += n;
    }
    Ok(total.max(0) as u64)
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
