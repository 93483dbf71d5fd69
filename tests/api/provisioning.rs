//! Provisioning from the template, refusals, all-or-nothing failure, migrations.

use std::str::FromStr;
use std::sync::Arc;

use kataven_hub::tenancy::provision::{ProvisionError, latest_version, tenant_migrator};
use kataven_hub::tenancy::slug::AccountSlug;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::support::{
    TestApp, admin_conn, cluster, database_exists, provisioner, suffix, system_db_url, unique_slug,
};

async fn tenant_conn(db: &str) -> PgConnection {
    PgConnectOptions::from_str(&cluster().pg.url(db))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn table_exists(conn: &mut PgConnection, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_clones_the_migrated_template() {
    let p = provisioner(&system_db_url(), None).await;
    let slug = unique_slug("fresh");
    let account = p
        .create_account(&slug, "Fresh", Some("org-1"), None)
        .await
        .unwrap();
    assert_eq!(account.database_name, slug.as_str());
    assert_eq!(account.schema_version, latest_version(&tenant_migrator()));
    assert_eq!(account.oidc_org_id.as_deref(), Some("org-1"));
    let mut conn = tenant_conn(slug.as_str()).await;
    assert!(table_exists(&mut conn, "audit_log").await);
    // No account column anywhere in a tenant database: the database is the boundary.
    let account_columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND column_name LIKE 'account%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(account_columns, 0);
}

#[tokio::test]
async fn names_that_are_not_tenants_are_refused() {
    let url = system_db_url();
    let p = provisioner(&url, None).await;
    let system_db = PgConnectOptions::from_str(&url)
        .unwrap()
        .get_database()
        .unwrap()
        .to_owned();
    // A database that exists on the server but is not a tenant.
    let stranger = format!("stranger-{}", suffix());
    let mut admin = admin_conn().await;
    sqlx::query(&format!("CREATE DATABASE \"{stranger}\""))
        .execute(&mut admin)
        .await
        .unwrap();

    for name in [
        "postgres",
        "template0",
        "template1",
        &stranger,
        &system_db,
        &p.template_name(),
    ] {
        let slug = AccountSlug::parse(name).unwrap();
        let err = p.create_account(&slug, "x", None, None).await.unwrap_err();
        assert!(matches!(err, ProvisionError::NameTaken(_)), "{name}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(p.catalog().pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_duplicate_is_refused_and_concurrent_creates_make_one_account() {
    let p = provisioner(&system_db_url(), None).await;
    let slug = unique_slug("dup");
    p.create_account(&slug, "Dup", None, None).await.unwrap();
    let err = p
        .create_account(&slug, "Dup again", None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProvisionError::AlreadyExists(_)), "{err}");

    let racing = unique_slug("race");
    let results =
        futures::future::join_all((0..4).map(|_| p.create_account(&racing, "Race", None, None)))
            .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(database_exists(racing.as_str()).await);
}

#[tokio::test]
async fn a_failure_midway_leaves_no_row_and_no_database() {
    let p = provisioner(&system_db_url(), None).await;
    p.create_account(&unique_slug("first"), "First", None, None)
        .await
        .unwrap();
    // Hold a session on the template: `CREATE DATABASE … TEMPLATE` cannot copy it, after the
    // catalog row has been inserted in the provisioning transaction.
    let _blocker = tenant_conn(&p.template_name()).await;
    let slug = unique_slug("half");
    let err = p
        .create_account(&slug, "Half", None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProvisionError::Other(_)), "{err}");
    assert!(
        p.catalog().account(&slug).await.unwrap().is_none(),
        "catalog row left behind"
    );
    assert!(
        !database_exists(slug.as_str()).await,
        "orphan database left behind"
    );
}

#[tokio::test]
async fn delete_keeps_the_database_unless_purged() {
    let p = provisioner(&system_db_url(), None).await;
    let kept = unique_slug("kept");
    let purged = unique_slug("purged");
    p.create_account(&kept, "Kept", None, None).await.unwrap();
    p.create_account(&purged, "Purged", None, None)
        .await
        .unwrap();

    p.delete_account(&kept, false).await.unwrap();
    assert!(p.catalog().account(&kept).await.unwrap().is_none());
    assert!(database_exists(kept.as_str()).await);
    // Its name stays taken: a new account cannot silently adopt the old data.
    assert!(matches!(
        p.create_account(&kept, "Again", None, None)
            .await
            .unwrap_err(),
        ProvisionError::NameTaken(_)
    ));

    // A session on the database does not stop a purge.
    let _open = tenant_conn(purged.as_str()).await;
    p.delete_account(&purged, true).await.unwrap();
    assert!(!database_exists(purged.as_str()).await);
    assert!(matches!(
        p.delete_account(&purged, true).await.unwrap_err(),
        ProvisionError::NoSuchAccount(_)
    ));
}

/// A migrator with the embedded tenant migrations plus one more, as a newer release would have.
async fn newer_migrator(extra_sql: &str) -> (tempfile::TempDir, Migrator) {
    let dir = tempfile::tempdir().unwrap();
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/tenant")).unwrap()
    {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("29991231000000_newer.sql"), extra_sql).unwrap();
    let migrator = Migrator::new(dir.path()).await.unwrap();
    (dir, migrator)
}

#[tokio::test]
async fn migrate_reports_a_failing_tenant_and_resumes_on_rerun() {
    let url = system_db_url();
    let old = provisioner(&url, None).await;
    let slugs: Vec<AccountSlug> = (0..3).map(|i| unique_slug(&format!("mig{i}"))).collect();
    for s in &slugs {
        old.create_account(s, "M", None, None).await.unwrap();
    }
    // Tenant 1 has a table in the way of the new migration.
    let mut broken = tenant_conn(slugs[1].as_str()).await;
    sqlx::query("CREATE TABLE newer_things (id int)")
        .execute(&mut broken)
        .await
        .unwrap();

    let (_dir, migrator) = newer_migrator("CREATE TABLE newer_things (id uuid PRIMARY KEY);").await;
    let newest = latest_version(&migrator);
    let p = kataven_hub::tenancy::provision::Provisioner::new(
        old.catalog().clone(),
        PgConnectOptions::from_str(&url).unwrap(),
        Arc::new(migrator),
    );
    let report = p.migrate_all(2).await.unwrap();
    assert_eq!(report.len(), 3);
    for r in &report {
        if r.account == slugs[1].as_str() {
            assert!(r.result.is_err(), "{r:?}");
        } else {
            let migrated = r.result.as_ref().unwrap();
            assert_eq!((migrated.version, migrated.applied), (newest, 1), "{r:?}");
        }
    }
    let version = |s: &AccountSlug| {
        let catalog = p.catalog().clone();
        let s = s.clone();
        async move { catalog.account(&s).await.unwrap().unwrap().schema_version }
    };
    assert_eq!(version(&slugs[0]).await, newest);
    assert!(version(&slugs[1]).await < newest);
    assert_eq!(version(&slugs[2]).await, newest);
    // The template moved on too: new accounts are born current.
    let born = unique_slug("born");
    assert_eq!(
        p.create_account(&born, "B", None, None)
            .await
            .unwrap()
            .schema_version,
        newest
    );

    // Fix the tenant and run again: it resumes and completes.
    sqlx::query("DROP TABLE newer_things")
        .execute(&mut broken)
        .await
        .unwrap();
    broken.close().await.unwrap();
    let report = p.migrate_all(2).await.unwrap();
    assert!(report.iter().all(|r| r.result.is_ok()), "{report:?}");
    assert_eq!(version(&slugs[1]).await, newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_behind_is_migrated_once_when_its_pool_first_opens() {
    let url = system_db_url();
    let old = provisioner(&url, None).await;
    let slug = unique_slug("lazy");
    old.create_account(&slug, "Lazy", None, None).await.unwrap();
    old.catalog()
        .upsert_member(&slug, "alice", kataven_hub::tenancy::catalog::Role::Admin)
        .await
        .unwrap();

    // A newer release starts; the tenant has not been migrated by `migrate`.
    let (_dir, migrator) = newer_migrator("CREATE TABLE newer_things (id uuid PRIMARY KEY);").await;
    let newest = latest_version(&migrator);
    let app = TestApp::builder()
        .await
        .database_url(&url)
        .migrator(migrator)
        .spawn()
        .await;

    let statuses = futures::future::join_all((0..20).map(|_| async {
        app.tenant_get(slug.as_str(), "alice")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        app.metric("kataven_tenant_pool_cold_opens_total").await,
        1.0
    );

    let mut conn = tenant_conn(slug.as_str()).await;
    assert!(table_exists(&mut conn, "newer_things").await);
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = $1")
            .bind(newest)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(applied, 1);
    assert_eq!(
        app.state
            .catalog
            .account(&slug)
            .await
            .unwrap()
            .unwrap()
            .schema_version,
        newest
    );
}
