//! The tenant pool map: single-flight creation, the connection budget, idle closing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use kataven_hub::tenancy::catalog::Role;

use crate::support::faults::StoppedBackend;
use crate::support::{TestApp, admin_conn, backends, cluster, error_code, unique_slug};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_open_one_pool() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.tenant_pool_max = 5;
            c.db_connection_budget = 5;
        })
        .spawn()
        .await;
    let acme = app.account_with_admin("burst", "alice").await;

    let requests = (0..50).map(|_| async {
        app.tenant_get(&acme.slug, "alice")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    let statuses: Vec<u16> = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    assert_eq!(
        app.metric("kataven_tenant_pool_cold_opens_total").await,
        1.0
    );
    let stats = app.state.pools.stats();
    assert_eq!(stats.pools, 1);
    assert!(stats.connections_open <= 5, "{stats:?}");
    let mut admin = admin_conn().await;
    assert!(backends(&mut admin, &[acme.slug.as_str()]).await <= 5);
}

/// Requests storm across many tenants while a sampler counts the server-side connections to
/// them: the count never goes above the budget, and requests that cannot get a connection in
/// time answer 503 with Retry-After rather than a PostgreSQL error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_budget_holds_under_a_storm_across_tenants() {
    const BUDGET: u32 = 8;
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.db_connection_budget = BUDGET;
            c.tenant_pool_max = 3;
            c.db_acquire_timeout_ms = 5_000;
        })
        .spawn()
        .await;
    let mut tenants = Vec::new();
    for i in 0..16 {
        tenants.push(
            app.account_with_admin(&format!("storm{i}"), "alice")
                .await
                .slug,
        );
    }

    let peak = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, tenants) = (peak.clone(), done.clone(), tenants.clone());
        tokio::spawn(async move {
            let mut admin = admin_conn().await;
            while !done.load(Ordering::Relaxed) {
                let n = backends(
                    &mut admin,
                    &tenants.iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .await;
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let statuses: Vec<(u16, bool)> = futures::stream::iter(0..240)
        .map(|i| {
            let slug = tenants[(i * 7) % tenants.len()].clone();
            let app = &app;
            async move {
                let resp = app
                    .get("/test/tenant?sleep_ms=15")
                    .header("X-Account-ID", &slug)
                    .bearer_auth(app.token("alice"))
                    .send()
                    .await
                    .unwrap();
                let retry_after = resp.headers().contains_key("retry-after");
                (resp.status().as_u16(), retry_after)
            }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let peak = peak.load(Ordering::Relaxed);
    println!(
        "budget {BUDGET}: peak server-side connections {peak}; statuses {:?}",
        count(&statuses)
    );
    assert!(
        peak <= BUDGET as i64,
        "peak {peak} exceeded the budget {BUDGET}"
    );
    assert!(
        peak >= 2,
        "the storm should have used several connections (peak {peak})"
    );
    for (status, retry_after) in &statuses {
        assert!(
            *status == 200 || (*status == 503 && *retry_after),
            "status {status}"
        );
    }
    assert!(
        statuses.iter().filter(|(s, _)| *s == 200).count() >= 200,
        "{:?}",
        count(&statuses)
    );
    assert!(app.state.pools.stats().connections_open <= BUDGET as usize);
}

fn count(statuses: &[(u16, bool)]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (s, _) in statuses {
        *m.entry(*s).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_answers_503_after_a_brief_wait() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.db_connection_budget = 1;
            c.db_acquire_timeout_ms = 300;
        })
        .spawn()
        .await;
    let busy = app.account_with_admin("busy", "alice").await;
    let other = app.account_with_admin("other", "alice").await;

    // One request holds the only connection for a while…
    let holder = {
        let req = app
            .get("/test/tenant?sleep_ms=2000")
            .header("X-Account-ID", &busy.slug)
            .bearer_auth(app.token("alice"));
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // …so another tenant's request cannot get one: it cannot evict a connection in use.
    let resp = app.tenant_get(&other.slug, "alice").send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, code) = error_code(resp).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert_eq!(holder.await.unwrap(), 200);
    assert_eq!(
        app.metric("kataven_tenant_connection_acquire_timeouts_total")
            .await,
        1.0
    );

    // Once the connection is idle, the other tenant takes its place by evicting it.
    let resp = app.tenant_get(&other.slug, "alice").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.metric("kataven_tenant_connection_evictions_total")
            .await,
        1.0
    );
    let mut admin = admin_conn().await;
    assert!(backends(&mut admin, &[busy.slug.as_str(), other.slug.as_str()]).await <= 1);
}

/// The budget applies per database server: while one account holds all of its server's budget,
/// an account on another server still gets a connection at once, and the saturated server's
/// budget still holds for the accounts on it. One cluster stands for two servers here: server
/// `main` (the system database's, at `127.0.0.1`) and server `other` at `localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_server_does_not_starve_accounts_on_another() {
    const BUDGET: u32 = 4;
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.db_connection_budget = BUDGET;
            c.tenant_pool_max = BUDGET;
            c.db_acquire_timeout_ms = 1_500;
        })
        .spawn()
        .await;
    let url = format!("postgres://localhost:{}", cluster().pg.port());
    // Its own budget, smaller than the instance's default.
    let other = kataven_hub::fleet::servers::NewServer {
        id: "other",
        url: &url,
        weight: None,
        connection_budget: Some(2),
    };
    kataven_hub::fleet::servers::add(app.provisioner(), other)
        .await
        .expect("add server");
    let account_on = |prefix: &'static str, server: &'static str| {
        let app = &app;
        async move {
            let slug = unique_slug(prefix);
            let account = app
                .provisioner()
                .create_account(&slug, prefix, None, Some(server))
                .await
                .expect("create account");
            app.state
                .catalog
                .upsert_member(&slug, "alice", Role::Admin)
                .await
                .unwrap();
            account
        }
    };
    let busy = account_on("busy", "main").await;
    let neighbour = account_on("neighbour", "main").await;
    let elsewhere = account_on("elsewhere", "other").await;

    // The busy account takes the whole budget of its server and keeps it.
    let mut held = Vec::new();
    for _ in 0..BUDGET {
        held.push(app.state.pools.acquire(&busy).await.unwrap());
    }
    let mut admin = admin_conn().await;
    assert_eq!(
        backends(&mut admin, &[busy.slug.as_str()]).await,
        BUDGET as i64
    );

    // An account on the other server is not held up by it.
    let started = std::time::Instant::now();
    let status = app.tenant_status(&elsewhere.slug, "alice").await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "the other server's account waited {waited:?}");
    assert!(waited < Duration::from_millis(1_000), "{waited:?}");
    // The gauge sums the servers: nothing left on the saturated one, one of two taken on the
    // other.
    assert_eq!(app.state.pools.stats().budget_available, 1);
    // The other server's own budget holds too: two connections, not the instance's four.
    let mut elsewhere_held = vec![app.state.pools.acquire(&elsewhere).await.unwrap()];
    elsewhere_held.push(app.state.pools.acquire(&elsewhere).await.unwrap());
    assert!(
        app.state.pools.acquire(&elsewhere).await.is_err(),
        "a third connection to a server with a budget of 2"
    );
    drop(elsewhere_held);

    // On the saturated server the budget still holds: the busy account's next request and its
    // neighbour's first both answer 503 after the acquire timeout, and no connection is opened.
    let request = |slug: &str| {
        let resp = app.tenant_get(slug, "alice").send();
        async move {
            let started = std::time::Instant::now();
            let resp = resp.await.unwrap();
            let waited = started.elapsed();
            assert_eq!(resp.headers()["retry-after"], "1");
            (error_code(resp).await, waited)
        }
    };
    let (own, beside) = tokio::join!(request(&busy.slug), request(&neighbour.slug));
    for ((answer, waited), who) in [(own, "busy"), (beside, "neighbour")] {
        assert_eq!(answer, (503, "unavailable".to_owned()), "{who}");
        assert!(waited >= Duration::from_millis(1_400), "{who}: {waited:?}");
    }
    assert_eq!(
        backends(&mut admin, &[busy.slug.as_str(), neighbour.slug.as_str()]).await,
        BUDGET as i64
    );

    // Once the busy account lets go, its server serves again.
    drop(held);
    assert_eq!(app.tenant_status(&neighbour.slug, "alice").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_pools_are_closed() {
    let app = TestApp::builder()
        .await
        .config(|c| c.tenant_idle_timeout_secs = 1)
        .spawn()
        .await;
    let acme = app.account_with_admin("idle", "alice").await;
    assert_eq!(app.tenant_status(&acme.slug, "alice").await, 200);
    assert_eq!(app.state.pools.stats().pools, 1);

    let mut admin = admin_conn().await;
    // The reaper runs every 250 ms here; wait (bounded) for it rather than asserting a time.
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = app.state.pools.stats();
        // Closed on both sides, and its budget permit returned.
        if stats.pools == 0
            && stats.budget_available == 80
            && backends(&mut admin, &[acme.slug.as_str()]).await == 0
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "idle pool still open: {:?}",
        app.state.pools.stats()
    );
    // The next request opens it again.
    assert_eq!(app.tenant_status(&acme.slug, "alice").await, 200);
    assert_eq!(
        app.metric("kataven_tenant_pool_cold_opens_total").await,
        2.0
    );
}

/// When idle connections of some accounts fill the budget, a tenth of it is freed again (the
/// least recently used idle connections close), so that another account's first request finds
/// a permit at once instead of waiting for one of them to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_never_take_the_whole_budget() {
    const BUDGET: u32 = 10;
    let app = TestApp::builder()
        .await
        .config(|c| c.db_connection_budget = BUDGET)
        .spawn()
        .await;
    let mut accounts = Vec::new();
    for i in 0..BUDGET {
        let account = app
            .account_with_admin(&format!("reserve{i}"), "alice")
            .await;
        assert_eq!(app.tenant_status(&account.slug, "alice").await, 200);
        accounts.push(account);
    }
    // One idle connection per account would fill the budget; the reserve (one permit here)
    // comes back once the evicted backend has exited.
    let mut freed = false;
    for _ in 0..50 {
        let stats = app.state.pools.stats();
        if stats.budget_available >= 1 && stats.connections_in_use == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "no reserve: {:?}", app.state.pools.stats());
    assert!(
        app.metric("kataven_tenant_connection_evictions_total")
            .await
            >= 1.0
    );
    // The least recently used account lost its idle connection, the newest kept it.
    let mut admin = admin_conn().await;
    assert_eq!(backends(&mut admin, &[accounts[0].slug.as_str()]).await, 0);
    assert_eq!(
        backends(&mut admin, &[accounts[BUDGET as usize - 1].slug.as_str()]).await,
        1
    );
}

/// Pools are elastic: a busy account may use more than its share (`KATAVEN_TENANT_POOL_MAX`)
/// while the budget has headroom, never more than the budget, and gives connections back when
/// other accounts need them: their requests wait at most about one of its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_account_borrows_beyond_its_share_and_gives_back_under_contention() {
    const BUDGET: u32 = 8;
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.tenant_pool_max = 2;
            c.db_connection_budget = BUDGET;
            c.db_acquire_timeout_ms = 5_000;
        })
        .spawn()
        .await;
    let hot = app.account_with_admin("hot", "alice").await.slug;
    let mut cold = Vec::new();
    for i in 0..6 {
        cold.push(
            app.account_with_admin(&format!("cold{i}"), "alice")
                .await
                .slug,
        );
    }
    let token = app.token("alice");
    let request = |slug: &str, sleep_ms: u64| {
        app.get(&format!("/test/tenant?sleep_ms={sleep_ms}"))
            .header("X-Account-ID", slug)
            .bearer_auth(&token)
            .send()
    };

    // Alone, the hot account uses more than its share of 2, within the budget.
    let burst = futures::future::join_all((0..16).map(|_| request(&hot, 300)));
    let (answers, peak) = tokio::join!(burst, peak_backends(&hot));
    assert!(answers.into_iter().all(|r| r.unwrap().status() == 200));
    assert!(
        (3..=BUDGET as i64).contains(&peak),
        "the hot account used {peak} connections (share 2, budget {BUDGET})"
    );

    // While it keeps the budget busy, the cold accounts' requests still get through quickly.
    let stop = Arc::new(AtomicBool::new(false));
    let hot_load = {
        let stop = stop.clone();
        let (app, token, hot) = (&app, token.clone(), hot.clone());
        async move {
            let clients = (0..16).map(|_| {
                let (stop, token, hot) = (stop.clone(), token.clone(), hot.clone());
                async move {
                    while !stop.load(Ordering::Relaxed) {
                        let resp = app
                            .get("/test/tenant?sleep_ms=100")
                            .header("X-Account-ID", &hot)
                            .bearer_auth(&token)
                            .send()
                            .await
                            .unwrap();
                        assert!(matches!(resp.status().as_u16(), 200 | 503));
                    }
                }
            });
            futures::future::join_all(clients).await;
        }
    };
    let cold_load = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut latencies = Vec::new();
        for round in 0..5 {
            for slug in &cold {
                let started = std::time::Instant::now();
                let resp = request(slug, 0).await.unwrap();
                assert_eq!(resp.status(), 200, "cold account {slug}, round {round}");
                latencies.push(started.elapsed());
            }
        }
        stop.store(true, Ordering::Relaxed);
        latencies.sort();
        latencies
    };
    let ((), latencies) = tokio::join!(hot_load, cold_load);
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "cold accounts beside a hot one: p50 {:?}, p99 {p99:?} ({} requests)",
        latencies[latencies.len() / 2],
        latencies.len()
    );
    // A cold request waits for at most about one hot request (100 ms) to give its connection back.
    assert!(p99 < Duration::from_millis(1_000), "cold p99 {p99:?}");
    assert!(app.state.pools.stats().connections_open <= BUDGET as usize);
}

/// A request cancelled while its new connection is on the way (here: waiting for a spent
/// budget; as well: a client that hangs up, a time limit) gives back the place it took in its
/// pool. Before, the pool kept counting a connection that never existed: it lost that part of
/// its share for good (its next request found it "full" and waited for a connection that
/// would never come back) and, never empty, was never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_connecting_gives_its_place_back() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.tenant_pool_max = 1;
            c.db_connection_budget = 1;
            c.db_acquire_timeout_ms = 2_000;
        })
        .spawn()
        .await;
    let busy = app.account_with_admin("cancel-busy", "alice").await;
    let other = app.account_with_admin("cancel-other", "alice").await;
    let held = app.state.pools.acquire(&busy).await.unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(200), app.state.pools.acquire(&other)).await;
    assert!(cancelled.is_err(), "the budget is spent: it waits");
    drop(held);
    // The busy account's connection turns idle; the other account's next request closes it to
    // make room and connects, within its share of one.
    let conn = app.state.pools.acquire(&other).await;
    assert!(conn.is_ok(), "{:?}", conn.err());
    drop(conn);
    assert_eq!(app.state.pools.stats().connections_open, 1);
}

/// The same for a request cancelled while an idle connection is checked before reuse: the
/// connection (its answer unread) is closed and its place given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_checking_an_idle_connection_gives_its_place_back() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.tenant_pool_max = 1;
            c.db_acquire_timeout_ms = 2_000;
        })
        .spawn()
        .await;
    let acme = app.account_with_admin("cancel-check", "alice").await;
    drop(app.state.pools.acquire(&acme).await.unwrap());
    // Suspect idle connections are checked (a round trip) before reuse; this one's backend
    // does not answer until it is let go.
    let stopped = StoppedBackend::of(&mut admin_conn().await, acme.slug.as_str()).await;
    app.state.pools.suspect_idle_connections();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), app.state.pools.acquire(&acme)).await;
    assert!(
        cancelled.is_err(),
        "the check waits for the stopped backend"
    );
    drop(stopped);
    let conn = app.state.pools.acquire(&acme).await;
    assert!(conn.is_ok(), "{:?}", conn.err());
    drop(conn);
    assert_eq!(app.state.pools.stats().connections_open, 1);
}

/// A request cancelled while its transaction's `BEGIN` is in flight (a client that hangs up, a
/// time limit) leaves no transaction open on its connection: the `BEGIN` still runs once the
/// server answers, and a `ROLLBACK` must follow it before anyone else uses the connection.
/// With sqlx-postgres 0.8.6 as published nothing followed it (`vendor/README.md`): the pool's
/// only connection stayed idle in a transaction, and the next request's statements ran in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_its_transaction_begins_leaves_none_open() {
    let app = TestApp::builder()
        .await
        .config(|c| c.tenant_pool_max = 1)
        .spawn()
        .await;
    let acme = app.account_with_admin("cancel-begin", "alice").await;
    let mut conn = app.state.pools.acquire(&acme).await.unwrap();
    let mut admin = admin_conn().await;
    let stopped = StoppedBackend::of(&mut admin, acme.slug.as_str()).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        sqlx::Connection::begin(&mut *conn),
    )
    .await
    .is_err();
    assert!(cancelled, "BEGIN waits for the stopped backend");
    drop(stopped);
    drop(conn);

    one_idle_backend(
        &mut admin,
        acme.slug.as_str(),
        "the cancelled BEGIN left its connection in a transaction",
    )
    .await;
    // The same connection serves the next request.
    assert_eq!(app.tenant_status(&acme.slug, "alice").await, 200);
    assert_eq!(app.state.pools.stats().connections_open, 1);
}

/// Waits up to 5 s until `slug`'s database has exactly one backend besides `conn`'s own, and
/// it is idle (not idle in a transaction); `failure` says what it means if it never is.
async fn one_idle_backend(conn: &mut sqlx::PgConnection, slug: &str, failure: &str) {
    let started = std::time::Instant::now();
    loop {
        let states: Vec<String> = sqlx::query_scalar(
            // A backend still starting up has no state yet: polled again, like any other.
            "SELECT coalesce(state, 'starting') FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(slug)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        if states == ["idle"] {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{failure}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The most backends connected to `slug`'s database seen over 600 ms (sampled every 10 ms).
async fn peak_backends(slug: &str) -> i64 {
    let mut admin = admin_conn().await;
    let mut peak = 0;
    for _ in 0..60 {
        peak = peak.max(backends(&mut admin, &[slug]).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak
}

/// A statement past `KATAVEN_DB_STATEMENT_TIMEOUT_MS` is cancelled by the server: 503 with
/// `Retry-After`, and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_statement_timeout_answers_503() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.db_statement_timeout_ms = 300;
            c.tenant_pool_max = 1;
        })
        .spawn()
        .await;
    let acme = app.account_with_admin("slowsql", "alice").await;
    let started = std::time::Instant::now();
    let resp = app
        .get("/test/tenant?sleep_ms=5000")
        .header("X-Account-ID", &acme.slug)
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_code(resp).await, (503, "unavailable".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(app.tenant_status(&acme.slug, "alice").await, 200);
    assert_eq!(
        app.metric("kataven_tenant_connections_broken_total").await,
        0.0
    );
}

/// A client that gives up in the middle of a transaction: the transaction is rolled back
/// before the connection serves anyone else (it is never left idle in a transaction), and the
/// pool keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_abandoned_by_a_cancelled_request_is_rolled_back() {
    let app = TestApp::builder()
        .await
        .config(|c| c.tenant_pool_max = 1)
        .spawn()
        .await;
    let acme = app.account_with_admin("cancel", "alice").await;
    let gave_up = app
        .get("/test/tx?sleep_ms=800")
        .header("X-Account-ID", &acme.slug)
        .bearer_auth(app.token("alice"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have given up");

    // Once the sleep is over, the connection is rolled back at once (not when someone next
    // uses it): the session is idle, not idle in a transaction holding its locks.
    let mut tenant = crate::support::tenant_conn(&acme.slug).await;
    one_idle_backend(
        &mut tenant,
        acme.slug.as_str(),
        "the abandoned transaction was not rolled back",
    )
    .await;
    let uncommitted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'uncommitted'")
            .fetch_one(&mut tenant)
            .await
            .unwrap();
    assert_eq!(uncommitted, 0, "the abandoned transaction was committed");
    // And the pool's only connection serves the next request.
    assert_eq!(app.tenant_status(&acme.slug, "alice").await, 200);
}
