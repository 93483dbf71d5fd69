//! The request pipeline (SPEC §3), steps 1–7, in order, through real HTTP.

use kataven_hub::tenancy::catalog::{AccountStatus, Role};
use reqwest::Method;
use serde_json::Value;

use crate::support::client::{Client, Resp, send};
use crate::support::{TestApp, admin_conn, backends, error_code, from_client};

/// `GET /test/tenant` as `c`.
async fn tenant(c: &Client<'_>) -> Resp {
    c.call(Method::GET, "/test/tenant", None).await
}

async fn call(app: &TestApp, account: Option<&str>, auth: Option<&str>) -> (u16, String) {
    let mut req = app.get("/test/tenant");
    if let Some(a) = account {
        req = req.header("X-Account-ID", a);
    }
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    if resp.status() == 401 {
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    error_code(resp).await
}

#[tokio::test]
async fn each_step_answers_in_order() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("acme", "alice").await;
    let suspended = app.account_with_admin("susp", "alice").await;
    app.state
        .catalog
        .set_status(&suspended.slug.parse().unwrap(), AccountStatus::Suspended)
        .await
        .unwrap();
    let alice = format!("Bearer {}", app.token("alice"));
    let mallory = format!("Bearer {}", app.token("mallory"));
    let raw_alice = app.token("alice");
    let ok = Some(alice.as_str());
    let bad = Some("Bearer not-a-token");

    let cases: &[(Option<&str>, Option<&str>, u16, &str)] = &[
        // Step 1 comes first: a missing header wins over a missing bearer.
        (None, None, 400, "missing_account_header"),
        (None, bad, 400, "missing_account_header"),
        (None, ok, 400, "missing_account_header"),
        // Step 2: the slug syntax, before any bearer is looked at.
        (Some("ACME"), None, 400, "invalid_account"),
        (Some(""), ok, 400, "invalid_account"),
        (Some("-x"), bad, 400, "invalid_account"),
        (Some("acme.com"), ok, 400, "invalid_account"),
        // Step 3: the reserved system database, even with a bad bearer.
        (Some("kataven-admin"), bad, 403, "reserved_account"),
        (Some("kataven-admin"), None, 403, "reserved_account"),
        (Some("kataven-admin"), ok, 403, "reserved_account"),
        // Step 4: a bearer is required and must be valid.
        (Some(&acme.slug), None, 401, "unauthenticated"),
        (Some(&acme.slug), bad, 401, "unauthenticated"),
        (
            Some(&acme.slug),
            Some("Basic YWxpY2U6cHc="),
            401,
            "unauthenticated",
        ),
        (Some(&acme.slug), Some("Bearer "), 401, "unauthenticated"),
        (
            Some(&acme.slug),
            Some(raw_alice.as_str()),
            401,
            "unauthenticated",
        ),
        // Step 4 before step 5: an unknown account does not reveal itself to strangers.
        (Some("no-such-account"), None, 401, "unauthenticated"),
        (Some("no-such-account"), bad, 401, "unauthenticated"),
        // Step 5: the account exists.
        (Some("no-such-account"), ok, 400, "invalid_account"),
        // Step 6: the account is active (after authentication).
        (Some(&suspended.slug), None, 401, "unauthenticated"),
        (Some(&suspended.slug), ok, 403, "account_suspended"),
        // Step 7: membership.
        (Some(&acme.slug), Some(mallory.as_str()), 403, "forbidden"),
    ];
    for (account, auth, status, code) in cases {
        assert_eq!(
            call(&app, *account, *auth).await,
            (*status, code.to_string()),
            "account {account:?}, auth {auth:?}"
        );
    }
}

#[tokio::test]
async fn a_member_passes_every_step_into_the_account_database() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "acme", "alice").await;
    let resp = tenant(&alice).await;
    let body = resp.ok(200);
    assert_eq!(body["database"], alice.account.as_str());
    assert_eq!(body["principal"], "alice");
    assert_eq!(body["role"], "Admin");
}

#[tokio::test]
async fn an_api_key_bearer_may_omit_the_account_header() {
    let app = TestApp::spawn().await;
    // Step 1 lets an `sk_live_` bearer through without the header; this build has no key
    // verifier yet, so step 4 refuses it. It must not answer 400 missing_account_header.
    let (status, code) = call(&app, None, Some("Bearer sk_live_acme_0123456789")).await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
}

#[tokio::test]
async fn a_member_of_a_cannot_use_b_and_b_is_never_connected() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "tenant-a", "alice").await;
    let bob = Client::new(&app, "tenant-b", "bob").await;
    let carol = bob.with_member("carol", Role::Member).await;

    let mut admin = admin_conn().await;
    let alice_in_b = bob.as_user("alice");
    for _ in 0..5 {
        tenant(&alice_in_b)
            .await
            .err(403, "forbidden", None, "alice in B");
    }
    assert_eq!(
        backends(&mut admin, &[bob.account.as_str()]).await,
        0,
        "a foreigner opened B's database"
    );
    assert_eq!(app.state.pools.stats().pools, 0);

    // The legitimate members reach their own databases.
    assert_eq!(
        tenant(&alice).await.ok(200)["database"],
        alice.account.as_str()
    );
    let resp = tenant(&carol).await;
    let body = resp.ok(200);
    assert_eq!(body["database"], bob.account.as_str());
    assert_eq!(body["role"], "Member");
}

#[tokio::test]
async fn unauthenticated_requests_never_open_a_tenant_pool() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("quiet", "alice").await;
    let empty_sub = {
        let mut claims = app.issuer.claims("x");
        claims["sub"] = "".into();
        format!("Bearer {}", app.issuer.sign("rsa-1", &claims))
    };
    for auth in [None, Some("Bearer junk"), Some(empty_sub.as_str())] {
        call(&app, Some(&acme.slug), auth).await;
    }
    let mut admin = admin_conn().await;
    assert_eq!(backends(&mut admin, &[acme.slug.as_str()]).await, 0);
    assert_eq!(
        app.metric("kataven_tenant_pool_cold_opens_total").await,
        0.0
    );
    assert_eq!(
        app.metric(r#"kataven_auth_failures_total{reason="missing_bearer"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"kataven_auth_failures_total{reason="malformed_token"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"kataven_auth_failures_total{reason="empty_sub"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn without_an_identity_provider_every_bearer_is_refused() {
    let app = TestApp::builder().await.without_issuer().spawn().await;
    let alice = Client::new(&app, "closed", "alice").await;
    tenant(&alice)
        .await
        .err(401, "unauthenticated", None, "no identity provider");
}

#[tokio::test]
async fn an_unreachable_tenant_database_answers_503_with_retry_after() {
    let app = TestApp::builder()
        .await
        .config(|c| c.db_acquire_timeout_ms = 1500)
        .spawn()
        .await;
    // An account placed on a server that does not answer (nothing listens on port 1).
    let slug = crate::support::unique_slug("gone");
    sqlx::query("INSERT INTO servers (id, url) VALUES ('gone', 'postgres://kataven@127.0.0.1:1')")
        .execute(app.state.catalog.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO accounts (slug, display_name, database_name, server, schema_version)
         VALUES ($1, 'Gone', $1, 'gone', 1)",
    )
    .bind(slug.as_str())
    .execute(app.state.catalog.pool())
    .await
    .unwrap();
    app.state
        .catalog
        .upsert_member(&slug, "alice", Role::Admin)
        .await
        .unwrap();
    let resp = app.tenant_get(slug.as_str(), "alice").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let (_, code) = error_code(resp).await;
    assert_eq!(code, "unavailable");
}

const BUDGET: u32 = 20;

/// An app with a failure budget of [`BUDGET`] a minute that trusts `127.0.0.1` to name the
/// client (and serves the console, a route that checks nothing).
async fn budget_app() -> TestApp {
    TestApp::builder()
        .await
        .config(|c| {
            c.auth_failure_limit_per_minute = BUDGET;
            c.trusted_proxies = vec!["127.0.0.1".into()];
            c.dev_login = Some(true);
        })
        .spawn()
        .await
}

/// `GET /test/tenant` in `account` with the bearer `token`, from `client`.
async fn from(app: &TestApp, client: &str, account: &str, token: &str) -> Resp {
    let req = app
        .get("/test/tenant")
        .header("X-Account-ID", account)
        .bearer_auth(token);
    send(from_client(req, client)).await
}

/// Spends `client`'s failure budget on bad bearers in `account`: the first is a 401, the last
/// a 429.
async fn spend_on_bad_bearers(app: &TestApp, client: &str, account: &str) {
    let mut bad = Vec::new();
    for _ in 0..(BUDGET + 5) {
        bad.push(from(app, client, account, "not-a-token").await.status);
    }
    assert_eq!(bad[0], 401);
    assert_eq!(*bad.last().unwrap(), 429);
}

/// Failed authentications cost their client a budget: a caller with a valid token that names
/// random accounts makes a bounded number of catalog queries, then gets 429 `auth` (before its
/// bearer is even looked at).
#[tokio::test]
async fn a_client_naming_random_accounts_spends_its_failure_budget() {
    let app = budget_app().await;
    let acme = app.account_with_admin("budget", "alice").await;
    let token = app.token("alice");
    let misses =
        || app.metric(r#"kataven_catalog_cache_lookups_total{cache="accounts",result="miss"}"#);
    let before = misses().await;
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let slug = crate::support::unique_slug("nope");
        let resp = from(&app, "203.0.113.9", slug.as_str(), &token).await;
        statuses.push((resp.status, resp.code().to_owned()));
    }
    let queries = misses().await - before;
    println!("200 random accounts from one client: {queries} catalog queries");
    assert!(queries <= (BUDGET + 5) as f64, "{queries} queries");
    assert_eq!(statuses[0], (400, "invalid_account".into()));
    assert_eq!(statuses[199], (429, "rate_limited".into()));
    // Blocked before the bearer is looked at: even a valid request from that client waits
    // (raw: the `Retry-After` header).
    let req = app
        .get("/test/tenant")
        .header("X-Account-ID", acme.slug.as_str())
        .bearer_auth(&token);
    let resp = from_client(req, "203.0.113.9").send().await.unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "auth");
    assert!(
        app.metric(r#"kataven_rate_limited_total{limit="auth"}"#)
            .await
            >= 1.0
    );
}

/// Another client is unaffected by one that spent its budget, and the same budget covers
/// 401s.
#[tokio::test]
async fn each_client_spends_its_own_failure_budget_on_bad_bearers() {
    let app = budget_app().await;
    let acme = app.account_with_admin("budget2", "alice").await;
    let token = app.token("alice");
    spend_on_bad_bearers(&app, "203.0.113.9", &acme.slug).await;
    from(&app, "198.51.100.20", &acme.slug, &token)
        .await
        .ok(200);
    spend_on_bad_bearers(&app, "198.51.100.20", &acme.slug).await;
}

/// The routes that check nothing still answer a client that spent its budget: health,
/// readiness, metrics, the API document and its reference, the session JWKS and the console.
#[tokio::test]
async fn routes_that_check_nothing_answer_a_client_without_budget() {
    let app = budget_app().await;
    let acme = app.account_with_admin("budget3", "alice").await;
    spend_on_bad_bearers(&app, "198.51.100.20", &acme.slug).await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/docs",
        "/.well-known/jwks.json",
        "/hub-api/.well-known/jwks.json",
        "/",
    ] {
        let resp = send(from_client(app.get(path), "198.51.100.20")).await;
        assert_eq!(resp.status, 200, "{path}");
    }
}
