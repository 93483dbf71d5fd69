//! `accounts move` across two PostgreSQL clusters (docs/fleet.md): a writer and a reader on two
//! instances during the move, every acknowledged write on the target, the source fenced, the
//! write pause measured; the target dying mid-move; the pg_dump fallback; the pause itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kataven_hub::fleet::moves::{self, MoveOptions, Mover, Phase};
use kataven_hub::fleet::servers::{NewServer, add};
use kataven_hub::tenancy::catalog::Account;
use kataven_hub::tenancy::embedded_pg::EmbeddedPostgres;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, PgConnection};

use crate::support::cluster::start_cluster;
use crate::support::{TestApp, error_code, suffix};

/// A cluster that can publish and subscribe.
fn logical_cluster() -> EmbeddedPostgres {
    start_cluster(&[
        ("wal_level", "logical"),
        ("max_replication_slots", "10"),
        ("max_wal_senders", "10"),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("max_connections", "200"),
    ])
}

/// Two such clusters, started side by side.
async fn two_logical_clusters() -> (EmbeddedPostgres, EmbeddedPostgres) {
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(logical_cluster),
        tokio::task::spawn_blocking(logical_cluster)
    );
    (a.unwrap(), b.unwrap())
}

/// Two instances sharing a system database on `home`, with server `b` (cluster `other`) added;
/// the password of `b` from a secrets directory.
struct Fleet {
    one: Arc<TestApp>,
    two: Arc<TestApp>,
    _secrets: tempfile::TempDir,
}

/// A secrets directory holding the password of server `b` (the cluster `b`).
fn secrets_of_b(b: &EmbeddedPostgres) -> tempfile::TempDir {
    let secrets = tempfile::tempdir().unwrap();
    let password = kataven_hub::fleet::password_of(&b.url("postgres")).unwrap();
    std::fs::write(
        secrets.path().join("b"),
        secrecy::ExposeSecret::expose_secret(&password),
    )
    .unwrap();
    secrets
}

async fn fleet(home: &EmbeddedPostgres, other: &EmbeddedPostgres) -> Fleet {
    let secrets = secrets_of_b(other);
    let url = home.url(&format!("kataven-admin-{}", suffix()));
    let dir = secrets.path().to_owned();
    let one = TestApp::builder()
        .await
        .database_url(&url)
        .config(|c| c.server_secrets_dir = Some(dir.clone()))
        .spawn()
        .await;
    let issuer = one.issuer.issuer();
    let two = TestApp::builder()
        .await
        .database_url(&url)
        .config(|c| {
            c.server_secrets_dir = Some(dir);
            c.oidc_issuer = Some(issuer);
        })
        .spawn()
        .await;
    Fleet {
        one: Arc::new(one),
        two: Arc::new(two),
        _secrets: secrets,
    }
}

/// Two clusters, two instances with server `b` added, and an account (admin `alice`) on `main`
/// (created before `b` exists, so that placement cannot choose `b`).
async fn moving_account(prefix: &str) -> (EmbeddedPostgres, EmbeddedPostgres, Fleet, Account) {
    let (a, b) = two_logical_clusters().await;
    let fleet = fleet(&a, &b).await;
    let acme = fleet.one.account_with_admin(prefix, "alice").await;
    assert_eq!(acme.server, "main");
    add_server(&fleet.one, "b", &b).await;
    (a, b, fleet, acme)
}

async fn add_server(app: &TestApp, id: &str, pg: &EmbeddedPostgres) {
    let url = format!("postgres://127.0.0.1:{}", pg.port());
    let new = NewServer {
        id,
        url: &url,
        weight: None,
        connection_budget: None,
    };
    add(app.provisioner(), new).await.expect("add server");
}

async fn connect(pg: &EmbeddedPostgres, database: &str) -> PgConnection {
    pg.url(database)
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Every row of every tenant table as text, by table (markers aside).
async fn rows(conn: &mut PgConnection) -> BTreeMap<String, BTreeSet<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'
         AND tablename NOT IN ('_sqlx_migrations', 'kataven_move_markers')",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut all = BTreeMap::new();
    for table in tables {
        let set: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        all.insert(table, set.into_iter().collect());
    }
    all
}

/// One answer of the load: when it was sent, how long it took, status, error code, the id
/// of what a write created.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    took: Duration,
    status: u16,
    code: Option<String>,
    retry_after: bool,
    id: Option<String>,
}

/// Writes FAQs (alternating instances) until `stop`, at most one at a time per task.
async fn writer(
    apps: [Arc<TestApp>; 2],
    slug: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let app = &apps[(n % 2) as usize];
        n += 1;
        let at = Instant::now();
        let resp = app
            .client
            .request(Method::POST, app.url("/api/v1/faqs"))
            .header("X-Account-ID", &slug)
            .bearer_auth(&token)
            .json(&json!({"name": format!("w{n}_{}", suffix()), "content": "moving"}))
            .send()
            .await
            .expect("no reset, no hang");
        answers.push(answer(at, resp).await);
    }
    answers
}

/// Reads the FAQ list until `stop`.
async fn reader(
    app: Arc<TestApp>,
    slug: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let at = Instant::now();
        let resp = app
            .client
            .get(app.url("/api/v1/faqs?limit=5"))
            .header("X-Account-ID", &slug)
            .bearer_auth(&token)
            .send()
            .await
            .expect("no reset, no hang");
        answers.push(answer(at, resp).await);
    }
    answers
}

async fn answer(at: Instant, resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Answer {
        at,
        took: at.elapsed(),
        status,
        code: body["error"]["code"].as_str().map(str::to_owned),
        retry_after,
        id: body["id"].as_str().map(str::to_owned),
    }
}

/// Every answer is a success, or a 503 `account_moving`/`unavailable` with `Retry-After`.
fn assert_no_failure(answers: &[Answer], what: &str) {
    for a in answers {
        let ok = (200..300).contains(&a.status)
            || (a.status == 503
                && a.retry_after
                && matches!(a.code.as_deref(), Some("account_moving" | "unavailable")));
        assert!(ok, "{what}: {a:?}");
    }
}

fn percentile(mut took: Vec<Duration>, p: f64) -> Duration {
    took.sort();
    took[((took.len() as f64 - 1.0) * p).round() as usize]
}

async fn seed_faqs(pg: &EmbeddedPostgres, database: &str, n: i64) {
    let mut conn = connect(pg, database).await;
    sqlx::query(
        "INSERT INTO faqs (id, name, title, content)
         SELECT gen_random_uuid(), 'seed_' || i, 'Seed ' || i, repeat('x', 200) FROM generate_series(1, $1) i",
    )
    .bind(n)
    .execute(&mut conn)
    .await
    .unwrap();
}

/// The account row as the catalog has it now.
async fn account_now(app: &TestApp, account: &Account) -> Account {
    app.state
        .catalog
        .account(&account.slug.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_moves_between_servers_while_two_instances_write_and_read_it() {
    let (a, b, Fleet { one, two, _secrets }, acme) = moving_account("moving").await;
    seed_faqs(&a, &acme.database_name, 3_000).await;
    let token = one.token("alice");

    let say = |line: &str| eprintln!("move: {line}");
    let mover = Mover::new(one.provisioner(), &say);
    let slug = acme.slug.parse().unwrap();
    let mut pauses = Vec::new();
    let mut write_answers = Vec::new();
    // There and back again: main → b, then (finished) b → main, then main → b.
    for (round, to) in ["b", "main", "b"].into_iter().enumerate() {
        let before = account_now(&one, &acme).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writers = [[one.clone(), two.clone()], [two.clone(), one.clone()]]
            .map(|apps| tokio::spawn(writer(apps, acme.slug.clone(), token.clone(), stop.clone())));
        let reading = tokio::spawn(reader(
            two.clone(),
            acme.slug.clone(),
            token.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let summary = mover
            .run(&slug, to, MoveOptions::default())
            .await
            .expect("the move");
        // Writes go on a while on the target, through both instances.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Release);
        let mut writes = Vec::new();
        for w in writers {
            writes.extend(w.await.unwrap());
        }
        let reads = reading.await.unwrap();
        assert_no_failure(&writes, "write");
        assert_no_failure(&reads, "read");
        let acked: BTreeSet<String> = writes.iter().filter_map(|a| a.id.clone()).collect();
        assert!(acked.len() > 20, "the writers wrote: {}", acked.len());
        assert!(
            writes
                .iter()
                .any(|w| w.at > Instant::now() - Duration::from_millis(400) && w.status == 201),
            "writes succeed after the move"
        );

        // The catalog points at the target; the source is kept and fenced.
        let after = account_now(&one, &acme).await;
        assert_eq!(after.server, to);
        assert!(!after.writes_paused());
        let status = moves::status(one.provisioner(), &slug)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.phase, Phase::Switched);
        let (source_pg, target_pg) = if to == "b" { (&a, &b) } else { (&b, &a) };
        let mut source = connect(source_pg, &before.database_name).await;
        let mut target = connect(target_pg, &after.database_name).await;
        let refused = sqlx::query("DELETE FROM faqs").execute(&mut source).await;
        let code = refused
            .unwrap_err()
            .as_database_error()
            .unwrap()
            .code()
            .unwrap()
            .into_owned();
        assert_eq!(code, moves::FENCE_SQLSTATE, "the source refuses writes");

        // Every acknowledged write is on the target; every source row is there, unchanged; the
        // target's other rows are the writes acknowledged after the switch (and their audit).
        let source_rows = rows(&mut source).await;
        let target_rows = rows(&mut target).await;
        let faq_ids: BTreeSet<String> = sqlx::query_scalar("SELECT id::text FROM faqs")
            .fetch_all(&mut target)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let lost: Vec<_> = acked.difference(&faq_ids).collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes missing on the target: {lost:?}"
        );
        let mut summary_line = Vec::new();
        for (table, on_source) in &source_rows {
            let on_target = &target_rows[table];
            let missing: Vec<_> = on_source.difference(on_target).take(3).collect();
            assert!(
                missing.is_empty(),
                "{table}: source rows not on the target: {missing:?}"
            );
            for extra in on_target.difference(on_source) {
                assert!(
                    acked.iter().any(|id| extra.contains(id.as_str())),
                    "{table}: a row on the target that no acknowledged write made: {extra}"
                );
            }
            let checksum = |set: &BTreeSet<String>| {
                use sha2::Digest;
                hex::encode(
                    &sha2::Sha256::digest(set.iter().cloned().collect::<Vec<_>>().join("\n"))[..6],
                )
            };
            let target_subset: BTreeSet<String> =
                on_target.intersection(on_source).cloned().collect();
            assert_eq!(checksum(on_source), checksum(&target_subset), "{table}");
            summary_line.push(format!("{table} {}→{}", on_source.len(), on_target.len()));
        }
        // Both instances switched: neither holds a connection to the old database.
        let mut held = 0;
        for _ in 0..50 {
            held = crate::support::backends(
                &mut connect(source_pg, "postgres").await,
                &[&before.database_name],
            )
            .await;
            if held <= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            held <= 1,
            "instances still connected to the old database: {held}"
        );

        let took: Vec<Duration> = writes.iter().map(|w| w.took).collect();
        eprintln!(
            "round {round} → {to}: {} rows, copy {} ms, writes paused {} ms; {} writes (p50 {:?}, p99 {:?}, max {:?}), {} of them 503; {} reads; rows {}",
            summary.rows,
            summary.copy.as_millis(),
            summary.pause.as_millis(),
            writes.len(),
            percentile(took.clone(), 0.5),
            percentile(took.clone(), 0.99),
            took.iter().max().unwrap(),
            writes.iter().filter(|w| w.status == 503).count(),
            reads.len(),
            summary_line.join(", ")
        );
        pauses.push(summary.pause);
        write_answers.extend(writes);
        drop((source, target));
        mover.finish(&slug).await.expect("finish");
        assert!(
            moves::status(one.provisioner(), &slug)
                .await
                .unwrap()
                .is_none()
        );
        let mut admin = connect(source_pg, "postgres").await;
        let kept: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&before.database_name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        assert!(!kept, "--finish drops the old database");
        let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(slots, 0, "no replication slot left behind");
    }
    eprintln!("cut-over write pauses: {pauses:?}");
    let _ = write_answers;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_out_a_pause_then_answer_503_account_moving_and_the_fence_answers_it_too() {
    let app = TestApp::builder()
        .await
        .config(|c| c.db_acquire_timeout_ms = 1_500)
        .spawn()
        .await;
    let client = crate::support::client::Client::new(&app, "paused", "alice").await;
    // Sets the pause, and waits until the instance has heard of it (the catalog's notification).
    let pause = |secs: f64| {
        let app = &app;
        let slug: kataven_hub::tenancy::slug::AccountSlug = client.account.parse().unwrap();
        async move {
            sqlx::query("UPDATE accounts SET writes_paused_until = now() + make_interval(secs => $2) WHERE slug = $1")
                .bind(slug.as_str())
                .bind(secs)
                .execute(app.state.catalog.pool())
                .await
                .unwrap();
            for _ in 0..200 {
                let seen = app.state.cache.account(&slug).await.unwrap().unwrap();
                if seen.writes_paused() == (secs > 0.0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the instance never heard of the pause");
        }
    };
    // A short pause: the write waits it out, then succeeds; a read does not wait.
    pause(0.8).await;
    let started = Instant::now();
    let read = client.get("/faqs").await;
    assert_eq!(read.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a read waited {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let created = client.post("/faqs", json!({"name": "after_pause"})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the write waited {:?}",
        started.elapsed()
    );

    // A pause longer than the request's wait: 503 account_moving with Retry-After.
    pause(30.0).await;
    let started = Instant::now();
    let resp = client
        .req(Method::POST, "/api/v1/faqs")
        .json(&json!({"name": "during_pause"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_code(resp).await, (503, "account_moving".to_owned()));
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    pause(0.0).await;

    // The fence of a moved database (an instance that did not hear of the move): a write meets
    // it and answers 503 account_moving, never 500.
    let mut conn = client.db().await;
    moves::fence(&mut conn, None).await.unwrap();
    let resp = client
        .req(Method::POST, "/api/v1/faqs")
        .json(&json!({"name": "fenced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_code(resp).await, (503, "account_moving".to_owned()));
    assert_eq!(client.get("/faqs").await.status, 200, "reads go on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_mid_move_leaves_the_account_serving_and_abort_cleans_up() {
    let (a, b, fleet, acme) = moving_account("orphan").await;
    let one = &fleet.one;
    seed_faqs(&a, &acme.database_name, 500).await;
    let say = |line: &str| eprintln!("move: {line}");
    let mover = Mover::new(one.provisioner(), &say);
    let slug = acme.slug.parse().unwrap();
    // Copied; the target follows the source.
    mover
        .copy(&slug, "b", MoveOptions::default())
        .await
        .expect("copy");
    let client = crate::support::client::Client::in_account(one, &acme.slug, "alice");
    assert_eq!(
        client
            .post("/faqs", json!({"name": "while_following"}))
            .await
            .status,
        201
    );

    // The target dies.
    b.stop_with("immediate").unwrap();
    let failed = mover.run(&slug, "b", MoveOptions::default()).await;
    let message = format!("{:#}", failed.unwrap_err());
    for pg in [&a, &b] {
        let password = kataven_hub::fleet::password_of(&pg.url("x")).unwrap();
        let password = secrecy::ExposeSecret::expose_secret(&password);
        assert!(!message.contains(password), "no password in: {message}");
    }
    eprintln!("the move with its target down: {message}");
    // The account is where it was, writable, not paused.
    let now = account_now(one, &acme).await;
    assert_eq!(now.server, "main");
    assert!(!now.writes_paused());
    assert_eq!(
        client
            .post("/faqs", json!({"name": "target_down"}))
            .await
            .status,
        201
    );
    assert_eq!(client.get("/faqs").await.status, 200);

    // --abort with the target still down: the source's slot and publication go (a slot left
    // behind would keep the source's WAL forever); the target's database is named for later.
    mover.abort(&slug).await.expect("abort");
    let mut source_admin = connect(&a, &acme.database_name).await;
    let (slots, publications): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication)",
    )
    .fetch_one(&mut source_admin)
    .await
    .unwrap();
    assert_eq!((slots, publications), (0, 0));
    assert!(
        moves::status(one.provisioner(), &slug)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        client
            .post("/faqs", json!({"name": "after_abort"}))
            .await
            .status,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_logical_replication_a_move_pauses_writes_for_a_dump_copy_when_allowed() {
    // The system database on the shared cluster (wal_level replica); the target is its own.
    let b = tokio::task::spawn_blocking(logical_cluster).await.unwrap();
    let secrets = secrets_of_b(&b);
    let dir = secrets.path().to_owned();
    let app = TestApp::builder()
        .await
        .config(|c| c.server_secrets_dir = Some(dir))
        .spawn()
        .await;
    let client = crate::support::client::Client::new(&app, "dumped", "alice").await;
    add_server(&app, "b", &b).await;
    for i in 0..50 {
        assert_eq!(
            client
                .post("/faqs", json!({"name": format!("f{i}")}))
                .await
                .status,
            201
        );
    }
    let slug = client.account.parse().unwrap();
    let said = std::sync::Mutex::new(Vec::<String>::new());
    let say = |line: &str| said.lock().unwrap().push(line.to_owned());
    let mover = Mover::new(app.provisioner(), &say);
    let refused = mover
        .run(&slug, "b", MoveOptions::default())
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("--allow-write-pause"),
        "{refused:#}"
    );
    assert!(
        said.lock().unwrap().iter().any(|l| l.contains("PAUSED")),
        "said before starting"
    );
    assert!(
        moves::status(app.provisioner(), &slug)
            .await
            .unwrap()
            .is_none(),
        "nothing started"
    );

    let summary = mover
        .run(
            &slug,
            "b",
            MoveOptions {
                allow_write_pause: true,
            },
        )
        .await
        .expect("dump move");
    assert_eq!(summary.the_move.method, moves::Method::Dump);
    let mut target = connect(&b, &summary.the_move.target_database).await;
    let faqs: i64 = sqlx::query_scalar("SELECT count(*) FROM faqs")
        .fetch_one(&mut target)
        .await
        .unwrap();
    assert_eq!(faqs, 50);
    hears_of_placement(&app, &slug, "b").await;
    assert_eq!(
        client.get("/faqs?limit=100").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    assert_eq!(
        client.post("/faqs", json!({"name": "on_b"})).await.status,
        201
    );
    let faqs: i64 = sqlx::query_scalar("SELECT count(*) FROM faqs")
        .fetch_one(&mut target)
        .await
        .unwrap();
    assert_eq!(faqs, 51);
    eprintln!(
        "dump move: {} rows, writes paused {} ms",
        summary.rows,
        summary.pause.as_millis()
    );
}

/// The copy time of an account of about 100 MB (the yardstick), by hand:
/// `cargo test --test api moves::a_100_mb_account -- --ignored --nocapture`. Not in CI: it
/// measures, it asserts no time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn a_100_mb_account_moves_and_reports_its_copy_time() {
    let (a, b, fleet, acme) = moving_account("large").await;
    let one = &fleet.one;
    // 100,000 FAQs of about 1 kB.
    let mut conn = connect(&a, &acme.database_name).await;
    sqlx::query(
        "INSERT INTO faqs (id, name, title, content)
         SELECT gen_random_uuid(), 'seed_' || i, 'Seed ' || i, md5(i::text) || repeat('y', 900)
         FROM generate_series(1, 100000) i",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let say = |line: &str| eprintln!("move: {line}");
    let summary = Mover::new(one.provisioner(), &say)
        .run(&acme.slug.parse().unwrap(), "b", MoveOptions::default())
        .await
        .expect("the move");
    let mut target = connect(&b, &summary.the_move.target_database).await;
    let faqs: i64 = sqlx::query_scalar("SELECT count(*) FROM faqs")
        .fetch_one(&mut target)
        .await
        .unwrap();
    assert_eq!(faqs, 100_000);
    eprintln!(
        "a {:.0} MB account: copy {} ms, writes paused {} ms, {} rows",
        size as f64 / 1e6,
        summary.copy.as_millis(),
        summary.pause.as_millis(),
        summary.rows
    );
}

/// A mover that died after fencing the source (the account's writes refused, reads fine) is
/// resumed by running the move again; a switched move is reverted to the kept source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_cut_over_resumes_and_a_switched_move_can_be_reverted() {
    let (a, b, fleet, acme) = moving_account("resumed").await;
    let one = &fleet.one;
    seed_faqs(&a, &acme.database_name, 200).await;
    let say = |line: &str| eprintln!("move: {line}");
    let mover = Mover::new(one.provisioner(), &say);
    let slug = acme.slug.parse().unwrap();
    let client = crate::support::client::Client::in_account(one, &acme.slug, "alice");
    let the_move = mover
        .copy(&slug, "b", MoveOptions::default())
        .await
        .expect("copy");

    // The mover dies right after the fence: writes meet it, reads go on, the move is `copying`.
    let mut source = connect(&a, &acme.database_name).await;
    moves::fence(&mut source, Some(the_move.id)).await.unwrap();
    let fenced = client.post("/faqs", json!({"name": "fenced_out"})).await;
    assert_eq!((fenced.status, fenced.code()), (503, "account_moving"));
    assert_eq!(fenced.headers["retry-after"], "1");
    assert_eq!(client.get("/faqs").await.status, 200);
    let status = moves::status(one.provisioner(), &slug)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.phase, Phase::Copying);

    // Run again: it resumes, fences again (idempotently) and switches.
    let summary = mover
        .run(&slug, "b", MoveOptions::default())
        .await
        .expect("the resumed move");
    assert_eq!(summary.the_move.phase, Phase::Switched);
    hears_of_placement(one, &slug, "b").await;
    let moved = client.post("/faqs", json!({"name": "on_b"})).await;
    assert_eq!(moved.status, 201, "{}", moved.text);
    let mut target = connect(&b, &summary.the_move.target_database).await;
    assert_eq!(faq_count(&mut target).await, 201);
    assert_eq!(faq_count(&mut source).await, 200);

    // --abort is refused once switched; --revert goes back to the kept source, unfenced
    // (losing the write made on the target meanwhile, as documented).
    let refused = mover.abort(&slug).await.unwrap_err();
    assert!(format!("{refused:#}").contains("--revert"), "{refused:#}");
    mover.revert(&slug).await.expect("revert");
    assert_eq!(account_now(one, &acme).await.server, "main");
    // The reverted-from database is fenced: an instance that has not heard yet cannot write
    // there.
    let refused = sqlx::query("DELETE FROM faqs").execute(&mut target).await;
    let code = refused
        .unwrap_err()
        .as_database_error()
        .unwrap()
        .code()
        .unwrap()
        .into_owned();
    assert_eq!(code, moves::FENCE_SQLSTATE);
    hears_of_placement(one, &slug, "main").await;
    assert!(
        moves::status(one.provisioner(), &slug)
            .await
            .unwrap()
            .is_none()
    );
    let back = client.post("/faqs", json!({"name": "back_on_main"})).await;
    assert_eq!(back.status, 201, "{}", back.text);
    assert_eq!(faq_count(&mut source).await, 201);
    assert_eq!(
        faq_count(&mut target).await,
        201,
        "the target is left as it was"
    );
}

async fn faq_count(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM faqs")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The hourly housekeeping finishes a switched move once its grace period is over (drops the
/// kept old database), and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_rows_reach_no_old_database_and_the_housekeeping_finishes_moves_past_their_grace() {
    let (a, _b, fleet, acme) = moving_account("graced").await;
    let one = &fleet.one;
    let say = |line: &str| eprintln!("move: {line}");
    let slug = acme.slug.parse().unwrap();
    Mover::new(one.provisioner(), &say)
        .run(&slug, "b", MoveOptions::default())
        .await
        .expect("the move");
    let old_database_exists = || async {
        let mut admin = connect(&a, "postgres").await;
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(&acme.database_name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    };

    // A request still holding the account's row from before the move (read before the
    // notification arrived) gets no connection to the old database: 503 account_moving.
    hears_of_placement(one, &slug, "b").await;
    let stale = one.state.pools.acquire(&acme).await;
    assert!(
        matches!(
            stale,
            Err(kataven_hub::tenancy::pool_error::PoolError::Moved)
        ),
        "a stale row reached a database"
    );
    let mut admin = connect(&a, "postgres").await;
    let held = crate::support::backends(&mut admin, &[&acme.database_name]).await;
    assert_eq!(held, 0, "connections to the old database");

    // Within the grace period (168 hours by default): kept.
    let swept = kataven_hub::housekeeping::sweep(&one.state).await;
    assert_eq!(swept.moves_finished, 0);
    assert!(old_database_exists().await);

    // Switched longer ago than that: dropped, the move over.
    sqlx::query("UPDATE account_moves SET switched_at = now() - interval '169 hours'")
        .execute(one.state.catalog.pool())
        .await
        .unwrap();
    let swept = kataven_hub::housekeeping::sweep(&one.state).await;
    assert_eq!(swept.moves_finished, 1);
    assert!(!old_database_exists().await);
    assert!(
        moves::status(one.provisioner(), &slug)
            .await
            .unwrap()
            .is_none()
    );
    let client = crate::support::client::Client::in_account(one, &acme.slug, "alice");
    assert_eq!(
        client
            .post("/faqs", json!({"name": "still_fine"}))
            .await
            .status,
        201
    );
}

/// Waits (bounded) until the instance has heard that the account lives on `server` now (the
/// catalog's `placement:` notification), as a client would by retrying a 503.
async fn hears_of_placement(
    app: &TestApp,
    slug: &kataven_hub::tenancy::slug::AccountSlug,
    server: &str,
) {
    for _ in 0..400 {
        let seen = app.state.cache.account(slug).await.unwrap().unwrap();
        if seen.server == server {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the instance never heard that `{slug}` moved to `{server}`");
}
