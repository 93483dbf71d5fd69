//! The fleet's servers through the binary: `servers add|list|drain|activate|retire`, placement
//! of new accounts, passwords from `KATAVEN_SERVER_SECRETS_DIR`, and the upgrade of a catalog
//! that still has `accounts.database_server`.
//!
//! A second server is mostly the shared cluster reached by another URL
//! (`postgres://localhost:<port>`); the test of secret files runs a private cluster whose
//! password differs from the system database's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use kataven_hub::tenancy::provision::{SYSTEM_MIGRATOR, latest_version, tenant_migrator};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::cli::{BIN, stderr, stdout};
use crate::support::cluster::start_cluster;
use crate::support::{admin_conn, cluster, database_exists, suffix, system_db_url};

/// Runs `kataven-hub args…` on the system database `url`, with `KATAVEN_SERVER_SECRETS_DIR`
/// set to `secrets` (and unset without it).
async fn hub(url: &str, secrets: Option<&Path>, args: &[&str]) -> Output {
    let url = url.to_owned();
    let secrets: Option<PathBuf> = secrets.map(Path::to_path_buf);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env("KATAVEN_DATABASE_URL", &url)
            .env("KATAVEN_LOG_FORMAT", "json")
            .env_remove("KATAVEN_SERVER_SECRETS_DIR");
        if let Some(dir) = &secrets {
            cmd.env("KATAVEN_SERVER_SECRETS_DIR", dir);
        }
        cmd.output().expect("run kataven-hub")
    })
    .await
    .unwrap()
}

/// Like [`hub`], and the command must succeed; returns its standard output.
async fn ok(url: &str, secrets: Option<&Path>, args: &[&str]) -> String {
    let out = hub(url, secrets, args).await;
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Like [`hub`], and the command must fail; returns its standard output and error together.
async fn refused(url: &str, secrets: Option<&Path>, args: &[&str]) -> String {
    let out = hub(url, secrets, args).await;
    assert!(
        !out.status.success(),
        "{args:?} succeeded:\n{}",
        stdout(&out)
    );
    format!("{}{}", stdout(&out), stderr(&out))
}

/// A connection to the system database `url` (which must exist).
async fn catalog(url: &str) -> PgConnection {
    PgConnectOptions::from_str(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The database name in a URL (`…/kataven-admin-x` → `kataven-admin-x`).
fn database_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

fn password_in(url: &str) -> String {
    url::Url::parse(url).unwrap().password().unwrap().to_owned()
}

/// How many accounts each server of the catalog holds, by server id.
async fn accounts_per_server(url: &str) -> Vec<(String, i64)> {
    let mut conn = catalog(url).await;
    let rows = sqlx::query_as(
        "SELECT s.id, count(a.slug) FROM servers s LEFT JOIN accounts a ON a.server = s.id
         GROUP BY s.id ORDER BY s.id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    rows
}

async fn server_of(url: &str, slug: &str) -> Option<String> {
    let mut conn = catalog(url).await;
    let server = sqlx::query_scalar("SELECT server FROM accounts WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    server
}

async fn server_ids(url: &str) -> Vec<String> {
    let mut conn = catalog(url).await;
    let ids = sqlx::query_scalar("SELECT id FROM servers ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    ids
}

/// A line of `servers list`, taken apart.
#[derive(Debug)]
struct Listed {
    state: String,
    weight: String,
    budget: String,
    accounts: i64,
    /// `Err(reason)` when the server could not be asked.
    size_mb: Result<f64, String>,
    versions: Vec<i64>,
}

fn listed(output: &str, id: &str) -> Listed {
    let line = output
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no server `{id}` in:\n{output}"));
    let t: Vec<&str> = line.split_whitespace().collect();
    let (size_mb, rest) = if t[5] == "unreachable:" {
        (Err(t[5..].join(" ")), &[][..])
    } else {
        assert_eq!(t[6], "MB", "{line}");
        (Ok(t[5].parse().unwrap()), &t[9..])
    };
    Listed {
        state: t[1].to_owned(),
        weight: t[2].to_owned(),
        budget: t[3].to_owned(),
        accounts: t[4].parse().unwrap(),
        size_mb,
        versions: rest
            .iter()
            .map(|v| v.trim_end_matches(',').parse().unwrap())
            .collect(),
    }
}

/// The shared cluster as a second server: same PostgreSQL, another URL (without a password:
/// the system database's credentials apply).
fn same_cluster_url() -> String {
    format!("postgres://localhost:{}", cluster().pg.port())
}

fn slug(prefix: &str) -> String {
    format!("{prefix}-{}", suffix())
}

/// `servers add` refuses URLs with a password (without repeating it), URLs naming a database
/// and servers it cannot reach, leaving no row; a good server is added with its version and
/// wal_level reported, gets the tenant template, and `servers list` shows it next to `main`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_refuses_bad_urls_and_prepares_a_good_server() {
    let url = system_db_url();
    let port = cluster().pg.port();
    let template = format!("{}-template", database_of(&url));
    let same = same_cluster_url();

    let with_password = format!("postgres://kataven:hunter2-secret@localhost:{port}");
    let text = refused(&url, None, &["servers", "add", "db2", &with_password]).await;
    assert!(
        text.contains("carries a password") && text.contains("KATAVEN_SERVER_SECRETS_DIR"),
        "{text}"
    );
    assert!(!text.contains("hunter2-secret"), "{text}");
    let in_query = format!("postgres://localhost:{port}/?password=hunter2-secret");
    let text = refused(&url, None, &["servers", "add", "db2", &in_query]).await;
    assert!(text.contains("carries a password"), "{text}");
    assert!(!text.contains("hunter2-secret"), "{text}");

    // An empty password is still `user:` with a colon: the catalog's check refuses it, and
    // `servers add` must say why rather than blame the weight.
    let empty_password = format!("postgres://kataven:@localhost:{port}");
    let text = refused(&url, None, &["servers", "add", "db2", &empty_password]).await;
    assert!(text.contains("carries a password"), "{text}");

    let with_database = format!("postgres://localhost:{port}/postgres");
    let text = refused(&url, None, &["servers", "add", "db2", &with_database]).await;
    assert!(text.contains("names no database"), "{text}");

    let text = refused(
        &url,
        None,
        &["servers", "add", "db2", "postgres://localhost:1"],
    )
    .await;
    assert!(text.contains("server `db2` cannot be reached"), "{text}");

    let text = refused(&url, None, &["servers", "add", "Bad!", &same_cluster_url()]).await;
    assert!(text.contains("is not a server id"), "{text}");

    for bad in [
        &["--weight", "0"][..],
        &["--weight", "10001"][..],
        &["--connection-budget", "0"][..],
    ] {
        let mut args = vec!["servers", "add", "db2", &same];
        args.extend_from_slice(bad);
        let text = refused(&url, None, &args).await;
        assert!(
            text.contains("weight is 1–10000, the connection budget at least 1"),
            "{bad:?}: {text}"
        );
    }

    assert_eq!(server_ids(&url).await, ["main"], "a refused add left a row");
    assert!(
        !database_exists(&template).await,
        "a refused add prepared a template"
    );

    let out = ok(
        &url,
        None,
        &[
            "servers",
            "add",
            "db2",
            &same_cluster_url(),
            "--connection-budget",
            "7",
        ],
    )
    .await;
    let mut admin = admin_conn().await;
    let (version, wal_level): (String, String) =
        sqlx::query_as("SELECT current_setting('server_version'), current_setting('wal_level')")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    admin.close().await.ok();
    assert!(
        out.contains(&format!(
            "added server `db2` (PostgreSQL {version}, wal_level {wal_level}"
        )),
        "{out}"
    );
    assert!(out.contains("active, weight 100"), "{out}");

    // The template is there and migrated to the newest tenant schema.
    assert!(database_exists(&template).await, "no template on db2");
    let mut conn = PgConnectOptions::from_str(&cluster().pg.url(&template))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    let latest = latest_version(&tenant_migrator());
    assert_eq!(newest, latest);

    // The same id, or the same URL under another id, once more: refused.
    let text = refused(
        &url,
        None,
        &["servers", "add", "db2", "postgres://127.0.0.1:1"],
    )
    .await;
    assert!(text.contains("exists already"), "{text}");
    let text = refused(&url, None, &["servers", "add", "db3", &same_cluster_url()]).await;
    assert!(text.contains("exists already"), "{text}");
    assert_eq!(server_ids(&url).await, ["db2", "main"]);

    let on_main = slug("lst");
    ok(
        &url,
        None,
        &["accounts", "create", &on_main, "--server", "main"],
    )
    .await;
    for _ in 0..2 {
        ok(
            &url,
            None,
            &["accounts", "create", &slug("lst"), "--server", "db2"],
        )
        .await;
    }
    let out = ok(&url, None, &["servers", "list"]).await;
    assert!(out.starts_with("SERVER "), "{out}");
    let main = listed(&out, "main");
    let db2 = listed(&out, "db2");
    assert_eq!(
        (main.state.as_str(), main.weight.as_str(), main.accounts),
        ("active", "100", 1),
        "{out}"
    );
    assert_eq!(
        (
            db2.state.as_str(),
            db2.weight.as_str(),
            db2.budget.as_str(),
            db2.accounts
        ),
        ("active", "100", "7", 2),
        "{out}"
    );
    // A tenant database is a few MB; db2's two are larger than main's one.
    let (main_mb, db2_mb) = (main.size_mb.unwrap(), db2.size_mb.unwrap());
    assert!(main_mb > 1.0 && db2_mb > main_mb, "{out}");
    assert_eq!(main.versions, [latest], "{out}");
    assert_eq!(db2.versions, [latest], "{out}");
}

/// Equal weights: four new accounts go two and two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_accounts_over_equal_weights() {
    let url = system_db_url();
    ok(&url, None, &["servers", "add", "db2", &same_cluster_url()]).await;
    for _ in 0..4 {
        ok(&url, None, &["accounts", "create", &slug("even")]).await;
    }
    assert_eq!(
        accounts_per_server(&url).await,
        [("db2".to_owned(), 2), ("main".to_owned(), 2)]
    );
}

/// Weight 300 against `main`'s 100: three of four new accounts go to the heavier server
/// (the order: db3 (tie at 0, by id), main, db3, db3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_the_weights() {
    let url = system_db_url();
    let out = ok(
        &url,
        None,
        &[
            "servers",
            "add",
            "db3",
            &same_cluster_url(),
            "--weight",
            "300",
        ],
    )
    .await;
    assert!(out.contains("weight 300"), "{out}");
    for _ in 0..4 {
        ok(&url, None, &["accounts", "create", &slug("heavy")]).await;
    }
    assert_eq!(
        accounts_per_server(&url).await,
        [("db3".to_owned(), 3), ("main".to_owned(), 1)]
    );
}

/// `--server` beats placement; a draining server gets no new account (and naming it is refused
/// with its state); `activate` makes it take accounts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_draining_and_reactivated_servers() {
    let url = system_db_url();
    ok(&url, None, &["servers", "add", "db2", &same_cluster_url()]).await;

    // Placement would pick db2 (0 accounts each, db2 < main): the named server wins.
    let named = slug("named");
    ok(
        &url,
        None,
        &["accounts", "create", &named, "--server", "main"],
    )
    .await;
    assert_eq!(server_of(&url, &named).await.as_deref(), Some("main"));
    let text = refused(
        &url,
        None,
        &["accounts", "create", &slug("named"), "--server", "nowhere"],
    )
    .await;
    assert!(text.contains("no server `nowhere`"), "{text}");

    let out = ok(&url, None, &["servers", "drain", "db2"]).await;
    assert!(out.contains("server `db2` is now draining"), "{out}");
    assert_eq!(
        listed(&ok(&url, None, &["servers", "list"]).await, "db2").state,
        "draining"
    );
    // db2 holds fewer accounts, yet takes none while draining.
    for _ in 0..2 {
        let s = slug("drained");
        ok(&url, None, &["accounts", "create", &s]).await;
        assert_eq!(server_of(&url, &s).await.as_deref(), Some("main"));
    }
    let refused_slug = slug("drained");
    let text = refused(
        &url,
        None,
        &["accounts", "create", &refused_slug, "--server", "db2"],
    )
    .await;
    assert!(
        text.contains("server `db2` is draining: it takes no new accounts"),
        "{text}"
    );
    assert_eq!(server_of(&url, &refused_slug).await, None);
    assert!(!database_exists(&refused_slug).await);

    let out = ok(&url, None, &["servers", "activate", "db2"]).await;
    assert!(out.contains("server `db2` is now active"), "{out}");
    let s = slug("back");
    ok(&url, None, &["accounts", "create", &s]).await;
    assert_eq!(server_of(&url, &s).await.as_deref(), Some("db2"));
    let s = slug("back");
    ok(&url, None, &["accounts", "create", &s, "--server", "db2"]).await;
    assert_eq!(server_of(&url, &s).await.as_deref(), Some("db2"));

    let text = refused(&url, None, &["servers", "drain", "nowhere"]).await;
    assert!(text.contains("no server `nowhere`"), "{text}");
}

/// `servers retire` is refused while the server holds an account or a move, and works once
/// it holds none; a retired server gets no account, named or placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_needs_an_empty_server_and_a_retired_one_takes_nothing() {
    let url = system_db_url();
    ok(&url, None, &["servers", "add", "db2", &same_cluster_url()]).await;
    let held = slug("held");
    ok(
        &url,
        None,
        &["accounts", "create", &held, "--server", "db2"],
    )
    .await;

    let text = refused(&url, None, &["servers", "retire", "db2"]).await;
    assert!(
        text.contains("server `db2` still holds 1 account(s)")
            && text.contains("move its accounts away"),
        "{text}"
    );
    assert_eq!(
        listed(&ok(&url, None, &["servers", "list"]).await, "db2").state,
        "active"
    );

    ok(&url, None, &["accounts", "delete", &held, "--purge"]).await;
    assert!(!database_exists(&held).await);

    // A move that targets it holds it too.
    let mut conn = catalog(&url).await;
    sqlx::query(
        "INSERT INTO accounts (slug, display_name, database_name, server)
         VALUES ('ghost', 'Ghost', 'ghost', 'main')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO account_moves (account, id, source_server, source_database,
                                    target_server, target_database, method, phase)
         VALUES ('ghost', gen_random_uuid(), 'main', 'ghost', 'db2', 'ghost', 'replication',
                 'copying')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let text = refused(&url, None, &["servers", "retire", "db2"]).await;
    assert!(text.contains("0 account(s) and 1 move(s)"), "{text}");
    sqlx::query("DELETE FROM accounts WHERE slug = 'ghost'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();

    let out = ok(&url, None, &["servers", "retire", "db2"]).await;
    assert!(out.contains("server `db2` is now retired"), "{out}");
    assert_eq!(
        listed(&ok(&url, None, &["servers", "list"]).await, "db2").state,
        "retired"
    );

    let text = refused(
        &url,
        None,
        &["accounts", "create", &slug("late"), "--server", "db2"],
    )
    .await;
    assert!(text.contains("server `db2` is retired"), "{text}");
    // Both servers are empty and db2 comes first by id: only its state keeps accounts away.
    let s = slug("late");
    ok(&url, None, &["accounts", "create", &s]).await;
    assert_eq!(server_of(&url, &s).await.as_deref(), Some("main"));
}

/// A server whose password differs from the system database's: `servers add` reaches it only
/// with `KATAVEN_SERVER_SECRETS_DIR/<id>`, accounts live there, and a process without the
/// secret file cannot use it and says so. No password shows in any output or in the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_password_comes_from_the_secrets_dir_only() {
    let url = system_db_url();
    let private = tokio::task::spawn_blocking(|| start_cluster(&[]))
        .await
        .unwrap();
    let private_password = password_in(&private.url("postgres"));
    let system_password = password_in(&url);
    assert_ne!(private_password, system_password);
    let passwords = [private_password.as_str(), system_password.as_str()];
    let no_password = |text: &str| {
        for p in passwords {
            assert!(!text.contains(p), "a password shows in:\n{text}");
        }
    };
    let vault_url = format!("postgres://127.0.0.1:{}", private.port());

    // Without the secret file the system's password is tried, and refused.
    let text = refused(&url, None, &["servers", "add", "vault", &vault_url]).await;
    assert!(
        text.contains("server `vault` cannot be reached")
            && text.contains("password authentication failed"),
        "{text}"
    );
    no_password(&text);
    assert_eq!(server_ids(&url).await, ["main"]);

    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(
        secrets.path().join("vault"),
        format!("{private_password}\n"),
    )
    .unwrap();
    let dir = Some(secrets.path());
    let out = ok(&url, dir, &["servers", "add", "vault", &vault_url]).await;
    assert!(out.contains("added server `vault`"), "{out}");
    no_password(&out);

    let kept = slug("vault");
    let out = ok(
        &url,
        dir,
        &["accounts", "create", &kept, "--server", "vault"],
    )
    .await;
    no_password(&out);
    assert_eq!(server_of(&url, &kept).await.as_deref(), Some("vault"));
    let on_private = async |db: &str| {
        let mut conn = PgConnectOptions::from_str(&private.url("postgres"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(db)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        conn.close().await.ok();
        exists
    };
    assert!(on_private(&kept).await, "the database is not on the server");
    assert!(!database_exists(&kept).await, "the database is on main");

    // A fresh process without the secret file: refused with the reason, and nothing changes.
    let lost = slug("vault");
    let text = refused(
        &url,
        None,
        &["accounts", "create", &lost, "--server", "vault"],
    )
    .await;
    assert!(text.contains("password authentication failed"), "{text}");
    no_password(&text);
    assert_eq!(server_of(&url, &lost).await, None);
    let text = refused(&url, None, &["accounts", "delete", &kept, "--purge"]).await;
    assert!(text.contains("password authentication failed"), "{text}");
    no_password(&text);
    assert_eq!(server_of(&url, &kept).await.as_deref(), Some("vault"));
    assert!(on_private(&kept).await);

    let out = ok(&url, None, &["servers", "list"]).await;
    no_password(&out);
    let vault = listed(&out, "vault");
    assert_eq!(vault.accounts, 1);
    let reason = vault.size_mb.unwrap_err();
    assert!(reason.contains("password authentication failed"), "{out}");
    listed(&out, "main").size_mb.unwrap();

    let out = ok(&url, dir, &["servers", "list"]).await;
    no_password(&out);
    assert!(listed(&out, "vault").size_mb.unwrap() > 1.0, "{out}");

    let mut conn = catalog(&url).await;
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT url FROM servers ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, [None, Some(vault_url.clone())]);
    let rows: String = sqlx::query_scalar("SELECT string_agg(s::text, ' ') FROM servers s")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    no_password(&rows);
    conn.close().await.ok();

    ok(&url, dir, &["accounts", "delete", &kept, "--purge"]).await;
    assert!(!on_private(&kept).await);
    ok(&url, dir, &["servers", "retire", "vault"]).await;
}

/// A catalog from before the fleet (system migrations up to 20261201000009) whose accounts
/// name their server by URL, password included: the migration turns each distinct URL into a
/// `server-N` row without the password and points the accounts at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_turns_legacy_server_urls_into_servers_without_passwords() {
    let name = format!("kataven-admin-{}", suffix());
    let mut admin = admin_conn().await;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    let url = cluster().pg.url(&name);

    let dir = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/system")).unwrap()
    {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: i64 = file.split('_').next().unwrap().parse().unwrap();
        if version <= 20261201000009 {
            std::fs::copy(&path, dir.path().join(&file)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 9);
    let old = Migrator::new(dir.path()).await.unwrap();
    assert_eq!(latest_version(&old), 20261201000009);

    let mut conn = catalog(&url).await;
    old.run(&mut conn).await.unwrap();
    sqlx::query(
        "INSERT INTO accounts (slug, display_name, database_name, database_server) VALUES
           ('legacy-a', 'Legacy A', 'legacy-a', 'postgres://kataven:secret@db9.internal:5433'),
           ('legacy-b', 'Legacy B', 'legacy-b', 'postgres://kataven:secret@db9.internal:5433'),
           ('legacy-c', 'Legacy C', 'legacy-c',
            'postgres://db8.internal:5432/postgres?user=kataven&password=secret3&sslmode=require'),
           ('legacy-d', 'Legacy D', 'legacy-d', 'postgres://kataven:p@ss-secret@db7.internal'),
           ('local', 'Local', 'local', NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    SYSTEM_MIGRATOR.run(&mut conn).await.unwrap();

    let servers: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT id, url, state FROM servers ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        servers,
        [
            ("main".to_owned(), None, "active".to_owned()),
            (
                "server-1".to_owned(),
                Some("postgres://db8.internal:5432?user=kataven&sslmode=require".to_owned()),
                "active".to_owned()
            ),
            (
                "server-2".to_owned(),
                Some("postgres://kataven@db7.internal".to_owned()),
                "active".to_owned()
            ),
            (
                "server-3".to_owned(),
                Some("postgres://kataven@db9.internal:5433".to_owned()),
                "active".to_owned()
            ),
        ]
    );
    let accounts: Vec<(String, String)> =
        sqlx::query_as("SELECT slug, server FROM accounts ORDER BY slug")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        accounts,
        [
            ("legacy-a".to_owned(), "server-3".to_owned()),
            ("legacy-b".to_owned(), "server-3".to_owned()),
            ("legacy-c".to_owned(), "server-1".to_owned()),
            ("legacy-d".to_owned(), "server-2".to_owned()),
            ("local".to_owned(), "main".to_owned()),
        ]
    );

    // The password is in no row of any table of the catalog.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.len() > 5, "{tables:?}");
    for table in tables {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" t WHERE t::text LIKE '%secret%'"
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(hits, 0, "the password is in `{table}`");
    }
    conn.close().await.ok();
}
