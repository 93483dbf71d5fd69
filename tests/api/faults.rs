//! Faults injected into a PostgreSQL cluster of the test's own while clients keep the service
//! busy: a restart, a crash (`SIGKILL`), a freeze (`SIGSTOP`), a server full of someone else's
//! connections, a tenant database dropped underneath, a statement that runs too long.
//!
//! Every answer is checked: no 500, no reset, none slower than the request timeout allows,
//! only JSON 503 with `Retry-After` while the fault lasts, and recovery after it. Each scenario
//! prints its numbers (answers by status during the fault, time to the first success and to
//! all requests succeeding) for the fault table in `docs/operations.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kataven_hub::config::Config;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::TestApp;
use crate::support::faults::{FaultCluster, StoppedBackend, ThawOnDrop};

const REQUEST_TIMEOUT_SECS: u64 = 2;
const ACQUIRE_TIMEOUT_MS: u64 = 1_000;
/// No answer may take longer: the request timeout, plus slack for a loaded CI machine.
const ANSWER_BOUND: Duration = Duration::from_millis(REQUEST_TIMEOUT_SECS * 1000 + 1_500);
/// Every request that starts this long after the fault ended must succeed. The target is far
/// lower (see the printed numbers); this bound only keeps a slow CI machine from failing.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

/// A fault cluster, an app on it and three accounts: two kept busy, one left idle.
struct Setup {
    cluster: Arc<FaultCluster>,
    app: TestApp,
    busy: Vec<String>,
    idle: String,
    token: String,
}

async fn setup(max_connections: u32, tweak: impl FnOnce(&mut Config)) -> Setup {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(move || FaultCluster::start(max_connections))
            .await
            .unwrap(),
    );
    let url = cluster.url("kataven-admin");
    let app = TestApp::builder()
        .await
        .database_url(&url)
        .config(|c| {
            c.request_timeout_secs = REQUEST_TIMEOUT_SECS;
            c.db_acquire_timeout_ms = ACQUIRE_TIMEOUT_MS;
            c.limit_per_minute = 1_000_000;
            c.limit_per_hour = 1_000_000;
            c.limit_per_day = 10_000_000;
            c.limit_concurrent = 10_000;
            tweak(c);
        })
        .spawn()
        .await;
    let mut busy = Vec::new();
    for prefix in ["busy-a", "busy-b"] {
        busy.push(app.account_with_admin(prefix, "alice").await.slug);
    }
    let idle = app.account_with_admin("idle", "alice").await.slug;
    let token = app.token("alice");
    // Every account has a pool with an idle connection, to go stale in the fault.
    for slug in busy.iter().chain([&idle]) {
        let status = agents(&app, &token, slug).await;
        assert_eq!(status, Outcome::Ok(200), "warm-up of {slug}");
    }
    Setup {
        cluster,
        app,
        busy,
        idle,
        token,
    }
}

/// One answer as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok(u16),
    /// An error answer: status, code, whether it was JSON with `Retry-After`.
    Error {
        status: u16,
        code: String,
        json_with_retry_after: bool,
    },
    /// No HTTP answer (reset, timeout, …).
    Transport(String),
}

impl Outcome {
    fn key(&self) -> String {
        match self {
            Self::Ok(s) => s.to_string(),
            Self::Error { status, code, .. } => format!("{status} {code}"),
            Self::Transport(_) => "transport error".into(),
        }
    }
}

async fn outcome(resp: reqwest::Result<reqwest::Response>) -> Outcome {
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => return Outcome::Transport(format!("{e:?}")),
    };
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return match resp.bytes().await {
            Ok(_) => Outcome::Ok(status),
            Err(e) => Outcome::Transport(format!("{e:?}")),
        };
    }
    let retry_after = resp.headers().contains_key("retry-after");
    let json = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Outcome::Error {
        status,
        code: body["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned(),
        json_with_retry_after: json && retry_after,
    }
}

async fn agents(app: &TestApp, token: &str, slug: &str) -> Outcome {
    outcome(
        app.client
            .get(app.url("/api/v1/agents"))
            .header("X-Account-ID", slug)
            .bearer_auth(token)
            .send()
            .await,
    )
    .await
}

#[derive(Debug, Clone)]
struct Answer {
    /// When the request started, from the start of the load.
    start: Duration,
    took: Duration,
    outcome: Outcome,
    /// The agent name a writer tried to create.
    wrote: Option<String>,
}

/// Clients sending requests in a loop until stopped; each returns what it saw.
struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Answer>>>,
}

impl Load {
    /// `per_account` readers (`GET /api/v1/agents`) on each account.
    fn readers(setup: &Setup, accounts: &[String], per_account: usize) -> Self {
        Self::start(setup, accounts, per_account, false)
    }

    /// `per_account` writers (`POST /api/v1/agents`, a new name each time) on each account.
    fn writers(setup: &Setup, accounts: &[String], per_account: usize) -> Self {
        Self::start(setup, accounts, per_account, true)
    }

    fn start(setup: &Setup, accounts: &[String], per_account: usize, write: bool) -> Self {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for slug in accounts {
            for client_no in 0..per_account {
                let (stop, slug, token) = (stop.clone(), slug.clone(), setup.token.clone());
                let (client, base) = (setup.app.client.clone(), setup.app.base.clone());
                clients.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let (request, wrote) = if write {
                            n += 1;
                            let name = format!("w{client_no}-{n}");
                            let req = client
                                .post(format!("{base}/api/v1/agents"))
                                .json(&json!({ "name": name }));
                            (req, Some(name))
                        } else {
                            (client.get(format!("{base}/api/v1/agents")), None)
                        };
                        let outcome = outcome(
                            request
                                .header("X-Account-ID", &slug)
                                .bearer_auth(&token)
                                .send()
                                .await,
                        )
                        .await;
                        answers.push(Answer {
                            start: started - t0,
                            took: started.elapsed(),
                            outcome,
                            wrote,
                        });
                        if answers.last().unwrap().took < Duration::from_millis(2) {
                            // Keep a failing service from being hammered by a tight loop.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    answers
                }));
            }
        }
        Self { t0, stop, clients }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for client in self.clients {
            all.extend(client.await.unwrap());
        }
        all.sort_by_key(|a| a.start);
        all
    }
}

/// What a scenario measured.
struct Report {
    during: BTreeMap<String, usize>,
    first_success: Option<Duration>,
    all_succeed: Duration,
}

/// When a fault began, when it was in full effect and when it ended (times since the load
/// began).
#[derive(Clone, Copy)]
struct Window {
    began: Duration,
    full: Duration,
    healed: Duration,
}

impl Window {
    fn new(began: Duration, healed: Duration) -> Self {
        Self {
            began,
            full: began,
            healed,
        }
    }
}

/// Checks every answer of a run with a fault and prints the numbers. `allowed` are the error
/// codes the fault may cause.
fn check(name: &str, answers: &[Answer], window: Window, allowed: &[&str]) -> Report {
    let Window {
        began: fault,
        full,
        healed,
    } = window;
    assert!(!answers.is_empty());
    let mut during = BTreeMap::new();
    for a in answers {
        assert!(
            !matches!(a.outcome, Outcome::Transport(_)),
            "{name}: a request got no HTTP answer: {a:?}"
        );
        assert!(
            a.took <= ANSWER_BOUND,
            "{name}: an answer took {:?} (bound {ANSWER_BOUND:?}): {a:?}",
            a.took
        );
        match &a.outcome {
            Outcome::Ok(_) => {}
            Outcome::Error {
                status,
                code,
                json_with_retry_after,
            } => {
                assert!(
                    *status == 503 && *json_with_retry_after && allowed.contains(&code.as_str()),
                    "{name}: only JSON 503 {allowed:?} with Retry-After may answer: {a:?}"
                );
                assert!(
                    a.start + a.took >= fault,
                    "{name}: an error before the fault: {a:?}"
                );
            }
            Outcome::Transport(_) => unreachable!(),
        }
        if a.start >= full && a.start < healed {
            *during.entry(a.outcome.key()).or_insert(0) += 1;
        }
    }
    let first_success = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Ok(_)) && a.start + a.took >= healed)
        .map(|a| (a.start + a.took).saturating_sub(healed))
        .min();
    // From when on every request succeeded.
    let last_failure_start = answers
        .iter()
        .filter(|a| !matches!(a.outcome, Outcome::Ok(_)))
        .map(|a| a.start)
        .max()
        .unwrap_or_default();
    let all_succeed = last_failure_start.saturating_sub(healed);
    let after = answers.iter().filter(|a| a.start >= healed).count();
    println!(
        "FAULT {name}: answers during the fault {during:?}; after it: first success {:?}, \
         every request succeeding from {:?} after the fault ended; {} answers in all, {after} after",
        first_success.map(|d| d.as_millis()),
        all_succeed.as_millis(),
        answers.len(),
    );
    assert!(
        first_success.is_some(),
        "{name}: no success after the fault"
    );
    assert!(
        all_succeed <= RECOVERY_BOUND,
        "{name}: requests still failed {all_succeed:?} after the fault ended"
    );
    assert!(
        answers
            .iter()
            .any(|a| a.start >= healed + RECOVERY_BOUND && matches!(a.outcome, Outcome::Ok(_))),
        "{name}: the load did not run past the recovery bound"
    );
    Report {
        during,
        first_success,
        all_succeed,
    }
}

async fn blocking(cluster: &Arc<FaultCluster>, f: fn(&FaultCluster)) {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || f(&cluster))
        .await
        .unwrap();
}

/// The first request to each account right after the server accepts connections again
/// succeeds: no connection from before the fault is handed out.
async fn first_requests_succeed(setup: &Setup, name: &str) {
    let idle = agents(&setup.app, &setup.token, &setup.idle).await;
    assert_eq!(
        idle,
        Outcome::Ok(200),
        "{name}: first request to the idle account"
    );
    let busy = agents(&setup.app, &setup.token, &setup.busy[0]).await;
    assert_eq!(
        busy,
        Outcome::Ok(200),
        "{name}: first request to a busy account"
    );
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let resp = app.get("/readyz").send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn wait_ready(app: &TestApp) -> Duration {
    let started = Instant::now();
    loop {
        if readyz(app).await.0 == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/readyz did not turn ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pg_ctl stop -m fast` for 2 s under load (readers and writers), then started again: the
/// connections of every pool are dead. The first request to a busy and to an idle account
/// succeeds, no acknowledged write is lost, `/readyz` reports the system database down and
/// turns ready again, and the catalog listener is back (a revocation after the restart takes
/// effect at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_heals_every_pool() {
    let setup = setup(100, |_| {}).await;
    let load = Load::readers(&setup, &setup.busy, 3);
    let writes = Load::writers(&setup, &setup.busy[..1], 3);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fault = load.now();
    let write_fault = writes.now();
    blocking(&setup.cluster, FaultCluster::stop).await;
    // `/readyz` answers from a probe made at most a second ago.
    let (status, body) = loop {
        let (status, body) = readyz(&setup.app).await;
        if status != 200 || load.now() - fault > Duration::from_secs(3) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["system_database"], "down", "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(load.now() - fault)).await;
    blocking(&setup.cluster, FaultCluster::start_again).await;
    let healed = load.now();
    let write_healed = writes.now();
    first_requests_succeed(&setup, "restart").await;
    let ready_after = wait_ready(&setup.app).await;
    println!(
        "FAULT restart: /readyz ready again {} ms after the restart",
        ready_after.as_millis()
    );

    tokio::time::sleep(RECOVERY_BOUND + Duration::from_millis(500)).await;
    let answers = load.finish().await;
    let written = writes.finish().await;
    check(
        "restart",
        &answers,
        Window::new(fault, healed),
        &["unavailable"],
    );
    check(
        "restart (writes)",
        &written,
        Window::new(write_fault, write_healed),
        &["unavailable"],
    );
    verify_writes(&setup, &setup.busy[0], &written, "restart (writes)").await;
    assert!(
        setup
            .app
            .metric("kataven_tenant_connections_broken_total")
            .await
            >= 1.0
    );
    assert!(
        setup
            .app
            .metric("kataven_catalog_listener_resets_total")
            .await
            >= 1.0
    );

    // The listener listens again: a membership removed now is refused within a second.
    let mut catalog = setup.cluster.connect("kataven-admin").await.unwrap();
    sqlx::query("DELETE FROM account_members WHERE account = $1 AND subject = 'alice'")
        .bind(&setup.busy[1])
        .execute(&mut catalog)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        match agents(&setup.app, &setup.token, &setup.busy[1]).await {
            Outcome::Error { status: 403, .. } => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(1),
                "a removed member was still let in after a second: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every PostgreSQL process killed with `SIGKILL` while writers create agents, then started
/// again (crash recovery): every write that answered 2xx is there, and none that answered 503
/// is half there (an agent without its audit row, or the reverse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_write() {
    let setup = setup(100, |_| {}).await;
    let load = Load::writers(&setup, &setup.busy[..1], 6);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fault = load.now();
    blocking(&setup.cluster, FaultCluster::kill).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    blocking(&setup.cluster, FaultCluster::start_again).await;
    let healed = load.now();
    first_requests_succeed(&setup, "crash").await;
    tokio::time::sleep(RECOVERY_BOUND + Duration::from_millis(500)).await;
    let answers = load.finish().await;
    check(
        "sigkill (writes)",
        &answers,
        Window::new(fault, healed),
        &["unavailable"],
    );

    verify_writes(&setup, &setup.busy[0], &answers, "sigkill (writes)").await;
}

/// The postmaster and every backend stopped with `SIGSTOP` for 4 s (twice the request
/// timeout), then `SIGCONT`: requests answer 503 within the request timeout, never hang, and
/// everything recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_never_makes_a_request_hang() {
    let setup = setup(100, |_| {}).await;
    let load = Load::readers(&setup, &setup.busy, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fault = load.now();
    blocking(&setup.cluster, FaultCluster::freeze).await;
    let thaw = ThawOnDrop(&setup.cluster);
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(thaw);
    let healed = load.now();
    tokio::time::sleep(RECOVERY_BOUND + Duration::from_millis(500)).await;
    let answers = load.finish().await;
    let report = check(
        "sigstop",
        &answers,
        Window::new(fault, healed),
        &["unavailable"],
    );
    assert!(
        report.during.keys().any(|k| k.starts_with("503")),
        "the freeze caused no 503: {:?}",
        report.during
    );
    assert!(report.first_success.is_some() && report.all_succeed <= RECOVERY_BOUND);
    assert!(wait_ready(&setup.app).await < Duration::from_secs(3));
}

/// Someone else takes every connection the server allows (`53300 too_many_connections`) and
/// the service's own connections are terminated: 503 while it lasts, recovery once they are
/// given back, and the cause logged once per outage, not once per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_reached_by_someone_else() {
    crate::support::logs::capture();
    let setup = setup(40, |_| {}).await;
    let port = setup.cluster.pg.port().to_string();
    let load = Load::readers(&setup, &setup.busy, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fault = load.now();
    let mut hog = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        // End the service's sessions, and take every slot that frees up: several connection
        // attempts at a time, retried at once, win the race against the service's reconnects
        // (which back off).
        if let Some(conn) = hog.first_mut() {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'kataven-hub'",
            )
            .execute(conn)
            .await
            .unwrap();
        }
        let until = Instant::now() + Duration::from_millis(300);
        let grabbers = (0..8).map(|_| {
            let cluster = setup.cluster.clone();
            async move {
                let mut taken = Vec::new();
                while Instant::now() < until {
                    match cluster.connect("postgres").await {
                        Ok(conn) => taken.push(conn),
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                taken
            }
        });
        for taken in futures::future::join_all(grabbers).await {
            hog.extend(taken);
        }
        let service: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kataven-hub'",
        )
        .fetch_one(&mut hog[0])
        .await
        .unwrap();
        if service == 0 {
            break;
        }
        assert!(rounds < 50, "the service kept {service} connections");
    }
    let full = load.now();
    let refused_before = setup
        .app
        .metric("kataven_tenant_connects_total{outcome=\"too_many_connections\"}")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused_after = setup
        .app
        .metric("kataven_tenant_connects_total{outcome=\"too_many_connections\"}")
        .await;
    for conn in hog {
        conn.close().await.ok();
    }
    let healed = load.now();
    tokio::time::sleep(RECOVERY_BOUND + Duration::from_millis(500)).await;
    let answers = load.finish().await;
    check(
        "max_connections",
        &answers,
        Window {
            began: fault,
            full,
            healed,
        },
        &["unavailable"],
    );
    // Attempts while the server is full are spaced by the backoff (at most 4 per second per
    // server), not one per request.
    let attempts = refused_after - refused_before;
    println!(
        "FAULT max_connections: {attempts} tenant connection attempts refused in 2 s ({rounds} rounds to take every slot)"
    );
    assert!(attempts <= 10.0, "{attempts} connection attempts in 2 s");
    // The cause is logged once for the outage by the tenant pools' gate of this server and by
    // the readiness probe of the system database (plus, at most, once more for the lasting
    // outage after the flapping while the hog took the slots), not once per request.
    let cause = crate::support::logs::lines_with(&[&port, "too many connections"]);
    println!("FAULT max_connections: log lines naming the cause: {cause:#?}");
    assert!(
        !cause.is_empty() && cause.len() <= 4,
        "the cause was logged {} times",
        cause.len()
    );
}

/// A tenant database dropped underneath (its catalog row stays): that account answers 503
/// `account_unavailable` at once, the others are unaffected, connection attempts back off,
/// and the account serves again once its database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tenant_database_is_an_account_outage() {
    let setup = setup(100, |_| {}).await;
    let (victim, other) = (setup.busy[0].clone(), setup.busy[1].clone());
    let load_victim = Load::readers(&setup, std::slice::from_ref(&victim), 3);
    let load_other = Load::readers(&setup, std::slice::from_ref(&other), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The drop waits for the backends it terminates to exit (and for a checkpoint): a second
    // and more on a loaded machine. One of them is kept stopped for 1.5 s so that every run
    // sees a slow drop: meanwhile a connection attempt waits on the database's lock and may
    // run out of time, which may answer any 503 with `Retry-After`; once the database is
    // gone, the account's own answer. The other account must see none of it.
    let mut admin = setup.cluster.connect("postgres").await.unwrap();
    let stopped = StoppedBackend::of(&mut admin, &victim).await;
    let fault = load_victim.now();
    let statement = format!("DROP DATABASE \"{victim}\" WITH (FORCE)");
    let drop_database = sqlx::query(&statement).execute(&mut admin);
    let thaw = async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        drop(stopped);
    };
    let (dropped, ()) = tokio::join!(drop_database, thaw);
    dropped.unwrap();
    let dropped = load_victim.now();
    println!(
        "FAULT missing database: the drop took {} ms",
        (dropped - fault).as_millis()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let missing_attempts = setup
        .app
        .metric("kataven_tenant_connects_total{outcome=\"database_missing\"}")
        .await;
    sqlx::query(&format!(
        "CREATE DATABASE \"{victim}\" TEMPLATE \"kataven-admin-template\""
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let healed = load_victim.now();

    // The account serves again at its next attempt (the backoff is at most 4 s by now).
    let started = Instant::now();
    while agents(&setup.app, &setup.token, &victim).await != Outcome::Ok(200) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the account did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "FAULT missing database: {missing_attempts} connection attempts in 3 s; serving again {} ms after the database was restored",
        started.elapsed().as_millis()
    );
    let victim_answers = load_victim.finish().await;
    let other_answers = load_other.finish().await;

    for a in victim_answers
        .iter()
        .filter(|a| a.start >= fault && a.start < healed)
    {
        assert!(a.took <= ANSWER_BOUND, "{a:?}");
        assert!(
            matches!(
                a.outcome,
                Outcome::Ok(200)
                    | Outcome::Error {
                        status: 503,
                        json_with_retry_after: true,
                        ..
                    }
            ),
            "during the drop: {a:?}"
        );
    }
    let during: Vec<&Answer> = victim_answers
        .iter()
        .filter(|a| a.start >= dropped + Duration::from_millis(200) && a.start < healed)
        .collect();
    assert!(during.len() > 20, "too few requests during the fault");
    for a in &during {
        match &a.outcome {
            Outcome::Error {
                status: 503,
                code,
                json_with_retry_after: true,
            } if code == "account_unavailable" => {}
            other => panic!("expected 503 account_unavailable, got {other:?}"),
        }
    }
    assert!(
        missing_attempts <= 4.0,
        "{missing_attempts} connection attempts to a missing database in 3 s"
    );
    for a in &other_answers {
        assert_eq!(
            a.outcome,
            Outcome::Ok(200),
            "another account was affected: {a:?}"
        );
    }
}

/// Counts and key uses that could not be written while the database was down are written
/// once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_key_use_written_during_an_outage_are_kept() {
    let setup = setup(100, |_| {}).await;
    let slug = setup.busy[0].clone();
    let state = setup.app.state.clone();
    let kataven_hub::limits::Store::Memory(memory) = state.limiter.store() else {
        panic!("in-process counters expected");
    };
    let limits = state.config.default_limits();
    let widget_key = uuid::Uuid::now_v7();
    let mut catalog = setup.cluster.connect("kataven-admin").await.unwrap();
    sqlx::query(
        "INSERT INTO widget_keys (id, account, name, key_hash, last8, created_by)
         VALUES ($1, $2, 'w', $3, '00000000', 'test')",
    )
    .bind(widget_key)
    .bind(&slug)
    .bind(widget_key.as_bytes().repeat(2))
    .execute(&mut catalog)
    .await
    .unwrap();
    catalog.close().await.ok();
    let before: i64 = usage_today(&setup, &slug).await;
    for _ in 0..5 {
        drop(state.limiter.admit(&slug, &limits).await.unwrap());
    }

    blocking(&setup.cluster, FaultCluster::stop).await;
    for _ in 0..7 {
        drop(state.limiter.admit(&slug, &limits).await.unwrap());
    }
    state.api_keys.touch_widget_key(widget_key);
    assert!(
        !memory.flush().await,
        "the flush cannot succeed while the database is down"
    );
    assert!(!state.api_keys.flush_last_used().await);
    blocking(&setup.cluster, FaultCluster::start_again).await;

    // The next flushes (the background one or these) write everything, once.
    let started = Instant::now();
    while !(memory.flush().await && state.api_keys.flush_last_used().await) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "flushes kept failing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The setup's warm-up request was counted too, possibly already before `before`.
    let after = usage_today(&setup, &slug).await;
    assert!(
        (12..=13).contains(&(after - before)),
        "{before} → {after}: counts were lost or doubled"
    );
    let mut catalog = setup.cluster.connect("kataven-admin").await.unwrap();
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM widget_keys WHERE id = $1")
            .bind(widget_key)
            .fetch_one(&mut catalog)
            .await
            .unwrap();
    assert!(used.is_some(), "the widget key's use was lost");
}

/// Every write that answered 2xx is stored, and every stored agent has exactly its audit row
/// (a write is all there or not at all, including those that answered 503).
async fn verify_writes(setup: &Setup, slug: &str, answers: &[Answer], name: &str) {
    let mut tenant = setup.cluster.connect(slug).await.unwrap();
    let stored: BTreeSet<String> = sqlx::query_scalar::<_, String>("SELECT name FROM agents")
        .fetch_all(&mut tenant)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let acknowledged: Vec<&String> = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Ok(_)))
        .filter_map(|a| a.wrote.as_ref())
        .collect();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| !matches!(a.outcome, Outcome::Ok(_)))
        .filter_map(|a| a.wrote.as_ref())
        .collect();
    assert!(
        acknowledged.len() > 20 && !refused.is_empty(),
        "{name}: too few writes"
    );
    for agent in &acknowledged {
        assert!(
            stored.contains(*agent),
            "{name}: acknowledged agent {agent} was lost"
        );
    }
    // Each stored agent has exactly its audit row: a write is all there or not at all.
    let unaudited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents a WHERE (SELECT count(*) FROM audit_log l
           WHERE l.resource_id = a.id::text AND l.action = 'create') <> 1",
    )
    .fetch_one(&mut tenant)
    .await
    .unwrap();
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log l WHERE l.action = 'create' AND l.resource = 'agent'
           AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.id::text = l.resource_id)",
    )
    .fetch_one(&mut tenant)
    .await
    .unwrap();
    assert_eq!((unaudited, orphans), (0, 0), "a write was half applied");
    let refused_but_stored = refused.iter().filter(|n| stored.contains(**n)).count();
    println!(
        "FAULT {name}: {} acknowledged, all stored; {} answered 503, of which {} \
         committed before the connection died (complete, with their audit rows)",
        acknowledged.len(),
        refused.len(),
        refused_but_stored
    );
    tenant.close().await.ok();
}

async fn usage_today(setup: &Setup, slug: &str) -> i64 {
    let mut catalog = setup.cluster.connect("kataven-admin").await.unwrap();
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT requests FROM usage_daily WHERE account = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
    )
    .bind(slug)
    .fetch_optional(&mut catalog)
    .await
    .unwrap();
    catalog.close().await.ok();
    n.unwrap_or(0)
}
