//! `sk_live_` API keys: management, the hot path, revocation across instances.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use futures::StreamExt;

use crate::support::client::Client;
use crate::support::{TestApp, error_code, from_client, system_url_of, unique_slug};

/// Creates a key as `admin` (elevated) in `account`; returns the answer (with the key).
async fn create_key(app: &TestApp, account: &str, admin: &str, body: Value) -> Value {
    Client::in_account(app, account, admin)
        .elevated()
        .create("/api-keys", body)
        .await
}

/// A request with the API key `key` (and no account header).
fn with_key(app: &TestApp, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    Client::api_key(app, key).req(method, path)
}

#[tokio::test]
async fn a_key_is_shown_once_and_acts_in_its_account_without_the_header() {
    let app = TestApp::spawn().await;
    // A slug with `_`: the account is everything up to the last `_`.
    let slug = unique_slug("acme_eu");
    app.provisioner()
        .create_account(&slug, "EU", None, None)
        .await
        .unwrap();
    app.state
        .catalog
        .upsert_member(&slug, "alice", kataven_hub::tenancy::catalog::Role::Admin)
        .await
        .unwrap();
    let created = create_key(
        &app,
        slug.as_str(),
        "alice",
        json!({ "name": "deploys", "expiry": "30d" }),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("sk_live_{slug}_")));
    assert_eq!(created["last8"], &key[key.len() - 8..]);
    assert_eq!(created["name"], "deploys");
    let expires: chrono::DateTime<chrono::Utc> =
        created["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (expires - chrono::Utc::now() - chrono::Duration::days(30))
            .num_seconds()
            .abs()
            < 60
    );

    // Lists never show the key again.
    let list: Value = with_key(&app, Method::GET, "/api/v1/api-keys", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["id"], created["id"]);
    assert_eq!(list[0]["disabled"], false);
    assert!(list[0].get("key").is_none());
    assert!(!list.to_string().contains(&key[..key.len() - 8]));

    // The key works without X-Account-ID, and with the right one; another account: 400.
    assert_eq!(
        with_key(&app, Method::GET, "/api/v1/agents", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = with_key(&app, Method::GET, "/api/v1/agents", &key)
        .header("X-Account-ID", slug.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let other = app.account_with_admin("other", "alice").await;
    let resp = with_key(&app, Method::GET, "/api/v1/agents", &key)
        .header("X-Account-ID", other.slug.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "account_mismatch".into()));

    // What a key creates is attributed to it.
    let resp = with_key(&app, Method::POST, "/api/v1/agents", &key)
        .json(&json!({ "name": "By key" }))
        .send()
        .await
        .unwrap();
    let agent: Value = resp.json().await.unwrap();
    assert_eq!(
        agent["created_by"],
        format!("api_key:{}", created["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn keys_cannot_manage_keys_and_only_elevated_admins_can() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("mgmt", "alice").await;
    app.state
        .catalog
        .upsert_member(
            &acme.slug.parse().unwrap(),
            "bob",
            kataven_hub::tenancy::catalog::Role::Member,
        )
        .await
        .unwrap();
    let key = create_key(&app, &acme.slug, "alice", json!({ "name": "k" })).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = {
        let list: Value = with_key(&app, Method::GET, "/api/v1/api-keys", &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list[0]["id"].as_str().unwrap().to_owned()
    };
    for (method, path) in [
        (Method::POST, "/api/v1/api-keys".to_owned()),
        (Method::PATCH, format!("/api/v1/api-keys/{id}")),
        (Method::DELETE, format!("/api/v1/api-keys/{id}")),
    ] {
        let resp = with_key(&app, method.clone(), &path, &key)
            .header("X-Admin", "true")
            .json(&json!({ "name": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "api_key_not_allowed".into()),
            "{method} {path}"
        );
        let resp = app
            .as_user(method.clone(), &path, &acme.slug, "bob")
            .header("X-Admin", "true")
            .json(&json!({ "name": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "admin_required".into()),
            "{method} {path}"
        );
        let resp = app
            .as_user(method.clone(), &path, &acme.slug, "alice")
            .json(&json!({ "name": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "admin_required".into()),
            "{method} {path}"
        );
    }
    // A key never acts as admin elsewhere either.
    let resp = with_key(&app, Method::POST, "/api/v1/members", &key)
        .header("X-Admin", "true")
        .json(&json!({ "subject": "x", "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "admin_required".into()));
    // Bad bodies.
    let resp = app
        .as_user(Method::POST, "/api/v1/api-keys", &acme.slug, "alice")
        .header("X-Admin", "true")
        .json(&json!({ "name": "x", "expiry": "2w" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "invalid_body".into()));
}

#[tokio::test]
async fn malformed_keys_are_refused_without_touching_the_catalog() {
    let mut app = TestApp::spawn().await;
    let acme = app.account_with_admin("fmt", "alice").await;
    let key = create_key(&app, &acme.slug, "alice", json!({ "name": "k" })).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tampered = key.clone().into_bytes();
    let i = key.len() - 10;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();

    // Take the catalog away: anything that needed it would now answer 503.
    app.state.catalog.pool().close().await;
    for bad in [
        tampered.as_str(),
        "sk_live_",
        "sk_live_acme",
        &key[..key.len() - 1],
    ] {
        let resp = with_key(&app, Method::GET, "/api/v1/agents", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (401, "unauthenticated".into()),
            "{bad}"
        );
    }
    assert_eq!(
        app.metric(r#"kataven_auth_failures_total{reason="bad_checksum"}"#)
            .await,
        1.0
    );
    // A well-formed key that is not cached does need the catalog: 503, not 401 or 500.
    let unknown = app.state.api_keys.hasher().new_api_key(&acme.slug);
    let resp = with_key(&app, Method::GET, "/api/v1/agents", &unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (503, "unavailable".into()));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_naming_the_system_database_is_refused_as_reserved() {
    let app = TestApp::spawn().await;
    let key = app.state.api_keys.hasher().new_api_key("kataven-admin");
    let resp = with_key(&app, Method::GET, "/api/v1/agents", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "reserved_account".into()));
}

/// Step 3 reads the account a key names before the key is verified: a malformed key naming
/// the system database is refused as reserved too (SPEC §2: `sk_live_kataven-admin_…`).
#[tokio::test]
async fn a_malformed_key_naming_the_system_database_is_refused_as_reserved() {
    let app = TestApp::spawn().await;
    for key in ["sk_live_kataven-admin_x", "sk_live_kataven-admin_"] {
        let resp = with_key(&app, Method::GET, "/api/v1/agents", key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "reserved_account".into()),
            "{key}"
        );
    }
}

#[tokio::test]
async fn disabled_expired_and_deleted_keys_stop_working() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("life", "alice").await;
    let admin = |method: Method, path: &str| {
        app.as_user(method, path, &acme.slug, "alice")
            .header("X-Admin", "true")
    };
    let created = create_key(
        &app,
        &acme.slug,
        "alice",
        json!({ "name": "k", "expiry": "never" }),
    )
    .await;
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    assert!(created["expires_at"].is_null());
    assert_eq!(
        with_key(&app, Method::GET, "/api/v1/agents", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let resp = admin(Method::PATCH, &format!("/api/v1/api-keys/{id}"))
        .json(&json!({ "disabled": true, "name": "off" }))
        .send()
        .await
        .unwrap();
    let item: Value = resp.json().await.unwrap();
    assert_eq!(
        (item["disabled"].clone(), item["name"].clone()),
        (json!(true), json!("off"))
    );
    let resp = with_key(&app, Method::GET, "/api/v1/agents", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    admin(Method::PATCH, &format!("/api/v1/api-keys/{id}"))
        .json(&json!({ "disabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        with_key(&app, Method::GET, "/api/v1/agents", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Expired.
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&id)
        .execute(app.state.catalog.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = with_key(&app, Method::GET, "/api/v1/agents", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    assert!(
        app.metric(r#"kataven_auth_failures_total{reason="expired_api_key"}"#)
            .await
            >= 1.0
    );

    // DELETE: a used key is disabled (kept for the record), an unused one is gone.
    let unused = create_key(&app, &acme.slug, "alice", json!({ "name": "unused" })).await;
    for k in [&created, &unused] {
        let resp = admin(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", k["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), 204);
    }
    let list: Value = app
        .as_user(Method::GET, "/api/v1/api-keys", &acme.slug, "alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], created["id"]);
    assert_eq!(list[0]["disabled"], true);
    assert!(list[0]["last_used_at"].is_string());
    let resp = admin(
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", unused["id"].as_str().unwrap()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn last_used_at_is_written_in_batches() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("used", "alice").await;
    let created = create_key(&app, &acme.slug, "alice", json!({ "name": "k" })).await;
    let key = created["key"].as_str().unwrap();
    for _ in 0..20 {
        assert_eq!(
            with_key(&app, Method::GET, "/api/v1/agents", key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // Not yet written per request…
    let row: (Option<chrono::DateTime<chrono::Utc>>,) =
        sqlx::query_as("SELECT last_used_at FROM api_keys WHERE id = $1::uuid")
            .bind(created["id"].as_str().unwrap())
            .fetch_one(app.state.catalog.pool())
            .await
            .unwrap();
    assert!(row.0.is_none());
    // …but by the next flush (every 5 s).
    let mut written = None;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let list: Value = with_key(&app, Method::GET, "/api/v1/api-keys", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list[0]["last_used_at"].is_string() {
            written = Some(list[0]["last_used_at"].clone());
            break;
        }
    }
    assert!(written.is_some(), "last_used_at was never written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_instance_reaches_another_within_a_second() {
    let one = TestApp::spawn().await;
    let acme = one.account_with_admin("revoke", "alice").await;
    let issuer = one.issuer.issuer();
    let two = TestApp::builder()
        .await
        .database_url(&system_url_of(&one))
        .config(|c| c.oidc_issuer = Some(issuer))
        .spawn()
        .await;
    let created = create_key(&one, &acme.slug, "alice", json!({ "name": "k" })).await;
    let key = created["key"].as_str().unwrap();
    // Both instances have verified (and cached) the key.
    for app in [&one, &two] {
        assert_eq!(
            with_key(app, Method::GET, "/api/v1/agents", key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let revoked_at = Instant::now();
    let resp = one
        .as_user(
            Method::PATCH,
            &format!("/api/v1/api-keys/{}", created["id"].as_str().unwrap()),
            &acme.slug,
            "alice",
        )
        .header("X-Admin", "true")
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut refused_after = None;
    while revoked_at.elapsed() < Duration::from_secs(1) {
        let status = with_key(&two, Method::GET, "/api/v1/agents", key)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            refused_after = Some(revoked_at.elapsed());
            break;
        }
    }
    let refused_after =
        refused_after.expect("instance two still accepted the key 1 s after revocation");
    println!(
        "revocation reached the other instance after {} ms",
        refused_after.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_connection_flushes_the_caches() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("listener", "alice").await;
    let created = create_key(&app, &acme.slug, "alice", json!({ "name": "k" })).await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(
        with_key(&app, Method::GET, "/api/v1/agents", key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Cut the listener's connection, and disable the key behind the instance's back while it
    // may be deaf to the notification.
    let pool = app.state.catalog.pool();
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(cut, 1, "the listener connection was not found");
    sqlx::query("UPDATE api_keys SET disabled_at = now() WHERE id = $1::uuid")
        .bind(created["id"].as_str().unwrap())
        .execute(pool)
        .await
        .unwrap();

    // The instance notices, flushes everything it cached, and refuses the key.
    let mut refused = false;
    for _ in 0..100 {
        let status = with_key(&app, Method::GET, "/api/v1/agents", key)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 && app.metric("kataven_catalog_listener_resets_total").await >= 1.0 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "the disabled key was still accepted after the listener reset"
    );
}

/// The decision between deleting and disabling a key is the same on every instance: a key that
/// authenticated on another instance a moment ago (whose batched `last_used_at` is not written
/// yet) is disabled, not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_on_another_instance_is_disabled_not_deleted() {
    let one = TestApp::spawn().await;
    let acme = one.account_with_admin("xdelete", "alice").await;
    let issuer = one.issuer.issuer();
    let two = TestApp::builder()
        .await
        .database_url(&system_url_of(&one))
        .config(|c| c.oidc_issuer = Some(issuer))
        .spawn()
        .await;
    let created = create_key(&one, &acme.slug, "alice", json!({ "name": "k" })).await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let resp = with_key(&two, Method::GET, "/api/v1/agents", key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let resp = one
        .as_user(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            &acme.slug,
            "alice",
        )
        .header("X-Admin", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let disabled: Option<bool> =
        sqlx::query_scalar("SELECT disabled_at IS NOT NULL FROM api_keys WHERE id = $1::uuid")
            .bind(id)
            .fetch_optional(one.state.catalog.pool())
            .await
            .unwrap();
    assert_eq!(
        disabled,
        Some(true),
        "a used key was deleted (or left enabled)"
    );
}

/// Made-up keys (a valid CRC32 is easy; the tag needs the pepper) are refused without a
/// catalog query once no untagged key is left; while untagged keys exist, a client's made-up
/// keys cost at most its failure budget of queries, then 429 `auth`. A legitimate key from
/// another client keeps working, from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_keys_cost_no_catalog_query_and_a_bounded_number_per_client() {
    const BUDGET: u32 = 50;
    let forged_count: usize = std::env::var("KATAVEN_TEST_FORGED_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000);
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.auth_failure_limit_per_minute = BUDGET;
            c.trusted_proxies = vec!["127.0.0.1".into()];
        })
        .spawn()
        .await;
    let acme = app.account_with_admin("forged", "alice").await;
    let legit = create_key(&app, &acme.slug, "alice", json!({ "name": "k" })).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_legit = || {
        from_client(
            with_key(&app, Method::GET, "/api/v1/agents", &legit),
            "198.51.100.7",
        )
        .send()
    };
    assert_eq!(as_legit().await.unwrap().status(), 200);
    let misses =
        || app.metric(r#"kataven_catalog_cache_lookups_total{cache="api_keys",result="miss"}"#);
    // What a client can spend in `secs`: the budget, what refilled, and the requests it had in
    // flight (16 here) when the budget ran out.
    let bound = |secs: f64| BUDGET as f64 + (secs * BUDGET as f64 / 60.0).ceil() + 16.0;
    let flood = |client: &'static str| {
        let app = &app;
        let slug = acme.slug.clone();
        async move {
            let started = std::time::Instant::now();
            let statuses: Vec<u16> = futures::stream::iter(0..forged_count)
                .map(|_| {
                    let key = crate::support::forged_api_key(&slug);
                    async move {
                        from_client(with_key(app, Method::GET, "/api/v1/agents", &key), client)
                            .send()
                            .await
                            .unwrap()
                            .status()
                            .as_u16()
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            (statuses, started.elapsed().as_secs_f64())
        }
    };

    // No untagged key left: not one query.
    app.state.api_keys.check_untagged_keys().await;
    let before = misses().await;
    let (statuses, secs) = flood("203.0.113.66").await;
    let queries = misses().await - before;
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "{forged_count} forged keys from one client in {secs:.1} s, no untagged key left: {queries} catalog queries, {refused} × 401, {limited} × 429"
    );
    assert_eq!(queries, 0.0);
    assert!(
        (BUDGET as usize..=bound(secs) as usize).contains(&refused),
        "{refused} refused in {secs:.1} s"
    );
    assert_eq!(refused + limited, forged_count);
    assert!(
        app.metric(r#"kataven_auth_failures_total{reason="forged_api_key"}"#)
            .await
            >= 1.0
    );

    // An untagged key exists (made before tags): made-up keys are looked up, but one client
    // gets its budget's worth of queries a minute.
    sqlx::query(
        "INSERT INTO api_keys (id, account, name, key_hash, last8, created_by)
         VALUES (gen_random_uuid(), $1, 'old', sha256(random()::text::bytea), 'oldkey00', 'test')",
    )
    .bind(acme.slug.as_str())
    .execute(app.state.catalog.pool())
    .await
    .unwrap();
    app.state.api_keys.check_untagged_keys().await;
    let before = misses().await;
    let (statuses, secs) = flood("203.0.113.67").await;
    let queries = misses().await - before;
    println!(
        "{forged_count} forged keys from one client in {secs:.1} s, untagged keys left: {queries} catalog queries"
    );
    assert!(queries <= bound(secs), "{queries} queries in {secs:.1} s");
    let resp = from_client(
        with_key(
            &app,
            Method::GET,
            "/api/v1/agents",
            &crate::support::forged_api_key(&acme.slug),
        ),
        "203.0.113.67",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "auth");
    assert!(statuses.contains(&429));

    // The legitimate client is unaffected, and served from the cache (after at most one read:
    // a long run outlives the cache's 30 s).
    assert_eq!(as_legit().await.unwrap().status(), 200);
    let before = misses().await;
    assert_eq!(as_legit().await.unwrap().status(), 200);
    assert_eq!(misses().await, before);
}
