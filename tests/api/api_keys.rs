//! `sk_live_` API keys: management, the hot path, revocation across instances.

use std::time::{Duration, Instant};

use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};

use futures::StreamExt;

use crate::support::client::{Client, V1, second_instance, send};
use crate::support::{TestApp, from_client, unique_slug};

/// An account with `alice` as its admin, and a key she created (elevated) with `body`: alice,
/// the key's answer (with the key) and the key as a client.
async fn keyed<'a>(app: &'a TestApp, prefix: &str, body: Value) -> (Client<'a>, Value, Client<'a>) {
    let alice = Client::new(app, prefix, "alice").await;
    let created = alice.elevated().create("/api-keys", body).await;
    let key = Client::api_key(app, created["key"].as_str().unwrap());
    (alice, created, key)
}

/// The key's account as the key sees it: the status of `GET /agents`.
async fn agents_status(key: &Client<'_>) -> u16 {
    key.get("/agents").await.status
}

/// A key created by `alice` in an account whose slug has a `_`: the account is everything up
/// to the last `_`.
async fn underscore_account_key(app: &TestApp) -> (Value, Client<'_>) {
    let slug = unique_slug("acme_eu");
    app.provisioner()
        .create_account(&slug, "EU", None, None)
        .await
        .unwrap();
    let alice = Client::in_account(app, slug.as_str(), "alice")
        .with_member("alice", Role::Admin)
        .await;
    let created = alice
        .elevated()
        .create("/api-keys", json!({ "name": "deploys", "expiry": "30d" }))
        .await;
    let key = Client::api_key(app, created["key"].as_str().unwrap());
    assert_eq!(key.account, slug.as_str());
    (created, key)
}

#[tokio::test]
async fn a_new_key_is_shown_once_with_its_name_and_expiry() {
    let app = TestApp::spawn().await;
    let (created, key) = underscore_account_key(&app).await;
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with(&format!("sk_live_{}_", key.account)));
    assert_eq!(created["last8"], &secret[secret.len() - 8..]);
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
    let list = key.get("/api-keys").await.ok(200).clone();
    assert_eq!(list[0]["id"], created["id"]);
    assert_eq!(list[0]["disabled"], false);
    assert!(list[0].get("key").is_none());
    assert!(!list.to_string().contains(&secret[..secret.len() - 8]));
}

#[tokio::test]
async fn a_key_acts_in_its_account_with_or_without_the_account_header() {
    let app = TestApp::spawn().await;
    let (_, key) = underscore_account_key(&app).await;
    let with_header = |account: &str| {
        send(
            key.req(Method::GET, &format!("{V1}/agents"))
                .header("X-Account-ID", account),
        )
    };
    key.get("/agents").await.ok(200);
    with_header(&key.account).await.ok(200);
    // Another account: 400.
    let other = app.account_with_admin("other", "alice").await;
    with_header(&other.slug)
        .await
        .err(400, "account_mismatch", None, "another account");
}

#[tokio::test]
async fn what_a_key_creates_is_attributed_to_it() {
    let app = TestApp::spawn().await;
    let (created, key) = underscore_account_key(&app).await;
    let agent = key.agent("By key").await;
    assert_eq!(
        agent["created_by"],
        format!("api_key:{}", created["id"].as_str().unwrap())
    );
}

/// The key-management calls on the key `id`, with a body each accepts.
fn management_calls(id: &str) -> [(Method, String); 3] {
    [
        (Method::POST, format!("{V1}/api-keys")),
        (Method::PATCH, format!("{V1}/api-keys/{id}")),
        (Method::DELETE, format!("{V1}/api-keys/{id}")),
    ]
}

#[tokio::test]
async fn keys_cannot_manage_keys_even_with_the_admin_header() {
    let app = TestApp::spawn().await;
    let (_, created, key) = keyed(&app, "mgmt", json!({ "name": "k" })).await;
    for (method, path) in management_calls(created["id"].as_str().unwrap()) {
        let req = key
            .req(method.clone(), &path)
            .header("X-Admin", "true")
            .json(&json!({ "name": "x" }));
        send(req).await.err(
            403,
            "api_key_not_allowed",
            None,
            &format!("{method} {path}"),
        );
    }
}

#[tokio::test]
async fn members_cannot_manage_keys_even_elevated() {
    let app = TestApp::spawn().await;
    let (alice, created, _) = keyed(&app, "mgmtm", json!({ "name": "k" })).await;
    let bob = alice.with_member("bob", Role::Member).await.elevated();
    for (method, path) in management_calls(created["id"].as_str().unwrap()) {
        let case = format!("{method} {path}");
        bob.call(method, &path, Some(&json!({ "name": "x" })))
            .await
            .err(403, "admin_required", None, &case);
    }
}

#[tokio::test]
async fn an_admin_must_elevate_to_manage_keys() {
    let app = TestApp::spawn().await;
    let (alice, created, _) = keyed(&app, "mgmta", json!({ "name": "k" })).await;
    for (method, path) in management_calls(created["id"].as_str().unwrap()) {
        let case = format!("{method} {path}");
        alice
            .call(method, &path, Some(&json!({ "name": "x" })))
            .await
            .err(403, "admin_required", None, &case);
    }
}

#[tokio::test]
async fn a_key_never_acts_as_admin_elsewhere() {
    let app = TestApp::spawn().await;
    let (_, _, key) = keyed(&app, "mgmtk", json!({ "name": "k" })).await;
    let req = key
        .req(Method::POST, &format!("{V1}/members"))
        .header("X-Admin", "true")
        .json(&json!({ "subject": "x", "role": "admin" }));
    send(req)
        .await
        .err(403, "admin_required", None, "add a member");
}

#[tokio::test]
async fn an_unknown_key_expiry_is_an_invalid_body() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "expiry", "alice").await;
    let resp = alice
        .elevated()
        .post("/api-keys", json!({ "name": "x", "expiry": "2w" }))
        .await;
    assert_eq!((resp.status, resp.code()), (400, "invalid_body"));
}

/// An app whose catalog has been taken away after a key was made: anything that needed the
/// catalog would now answer 503. Returns the key.
async fn without_catalog(app: &TestApp) -> String {
    let (_, created, _) = keyed(app, "fmt", json!({ "name": "k" })).await;
    app.state.catalog.pool().close().await;
    created["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn malformed_keys_are_refused_without_touching_the_catalog() {
    let mut app = TestApp::spawn().await;
    let key = without_catalog(&app).await;
    let mut tampered = key.clone().into_bytes();
    let i = key.len() - 10;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();

    for bad in [
        tampered.as_str(),
        "sk_live_",
        "sk_live_acme",
        &key[..key.len() - 1],
    ] {
        let resp = Client::api_key(&app, bad).get("/agents").await;
        assert_eq!(
            (resp.status, resp.code()),
            (401, "unauthenticated"),
            "{bad}"
        );
    }
    assert_eq!(
        app.metric(r#"kataven_auth_failures_total{reason="bad_checksum"}"#)
            .await,
        1.0
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_well_formed_uncached_key_needs_the_catalog() {
    let mut app = TestApp::spawn().await;
    let key = without_catalog(&app).await;
    let account = Client::api_key(&app, &key).account;
    // 503, not 401 or 500.
    let unknown = app.state.api_keys.hasher().new_api_key(&account);
    let resp = Client::api_key(&app, &unknown).get("/agents").await;
    assert_eq!((resp.status, resp.code()), (503, "unavailable"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_naming_the_system_database_is_refused_as_reserved() {
    let app = TestApp::spawn().await;
    let key = app.state.api_keys.hasher().new_api_key("kataven-admin");
    let resp = Client::api_key(&app, &key).get("/agents").await;
    assert_eq!((resp.status, resp.code()), (403, "reserved_account"));
}

/// Step 3 reads the account a key names before the key is verified: a malformed key naming
/// the system database is refused as reserved too (SPEC §2: `sk_live_kataven-admin_…`).
#[tokio::test]
async fn a_malformed_key_naming_the_system_database_is_refused_as_reserved() {
    let app = TestApp::spawn().await;
    for key in ["sk_live_kataven-admin_x", "sk_live_kataven-admin_"] {
        let resp = Client::api_key(&app, key).get("/agents").await;
        assert_eq!(
            (resp.status, resp.code()),
            (403, "reserved_account"),
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_disabled_key_stops_working_until_enabled_again() {
    let app = TestApp::spawn().await;
    let (alice, created, key) =
        keyed(&app, "life", json!({ "name": "k", "expiry": "never" })).await;
    let admin = alice.elevated();
    let path = format!("/api-keys/{}", created["id"].as_str().unwrap());
    assert!(created["expires_at"].is_null());
    assert_eq!(agents_status(&key).await, 200);

    let item = admin
        .patch(&path, json!({ "disabled": true, "name": "off" }))
        .await
        .ok(200)
        .clone();
    assert_eq!(
        (item["disabled"].clone(), item["name"].clone()),
        (json!(true), json!("off"))
    );
    let resp = key.get("/agents").await;
    assert_eq!((resp.status, resp.code()), (401, "unauthenticated"));
    admin
        .patch(&path, json!({ "disabled": false }))
        .await
        .ok(200);
    assert_eq!(agents_status(&key).await, 200);
}

#[tokio::test]
async fn an_expired_key_stops_working() {
    let app = TestApp::spawn().await;
    let (_, created, key) = keyed(&app, "expired", json!({ "name": "k" })).await;
    assert_eq!(agents_status(&key).await, 200);
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(created["id"].as_str().unwrap())
        .execute(app.state.catalog.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = key.get("/agents").await;
    assert_eq!((resp.status, resp.code()), (401, "unauthenticated"));
    assert!(
        app.metric(r#"kataven_auth_failures_total{reason="expired_api_key"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn deleting_a_used_key_disables_it_and_an_unused_one_is_gone() {
    let app = TestApp::spawn().await;
    let (alice, used, key) = keyed(&app, "delete", json!({ "name": "used" })).await;
    let admin = alice.elevated();
    assert_eq!(agents_status(&key).await, 200);
    let unused = admin.create("/api-keys", json!({ "name": "unused" })).await;
    for k in [&used, &unused] {
        admin
            .delete(&format!("/api-keys/{}", k["id"].as_str().unwrap()))
            .await
            .ok(204);
    }
    // The used key is kept for the record.
    let list = alice.get("/api-keys").await.ok(200).clone();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], used["id"]);
    assert_eq!(list[0]["disabled"], true);
    assert!(list[0]["last_used_at"].is_string());
    let resp = admin
        .delete(&format!("/api-keys/{}", unused["id"].as_str().unwrap()))
        .await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn last_used_at_is_written_in_batches() {
    let app = TestApp::spawn().await;
    let (_, created, key) = keyed(&app, "used", json!({ "name": "k" })).await;
    for _ in 0..20 {
        assert_eq!(agents_status(&key).await, 200);
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
        let list = key.get("/api-keys").await.ok(200).clone();
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
    let two = second_instance(&one, |_| {}).await;
    let (alice, created, _) = keyed(&one, "revoke", json!({ "name": "k" })).await;
    let secret = created["key"].as_str().unwrap();
    // Both instances have verified (and cached) the key.
    for app in [&one, &two] {
        assert_eq!(agents_status(&Client::api_key(app, secret)).await, 200);
    }
    let revoked_at = Instant::now();
    alice
        .elevated()
        .patch(
            &format!("/api-keys/{}", created["id"].as_str().unwrap()),
            json!({ "disabled": true }),
        )
        .await
        .ok(200);
    let on_two = Client::api_key(&two, secret);
    let mut refused_after = None;
    while revoked_at.elapsed() < Duration::from_secs(1) {
        if agents_status(&on_two).await == 401 {
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
    let (_, created, key) = keyed(&app, "listener", json!({ "name": "k" })).await;
    assert_eq!(agents_status(&key).await, 200);

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
        if agents_status(&key).await == 401
            && app.metric("kataven_catalog_listener_resets_total").await >= 1.0
        {
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
    let two = second_instance(&one, |_| {}).await;
    let (alice, created, _) = keyed(&one, "xdelete", json!({ "name": "k" })).await;
    let id = created["id"].as_str().unwrap();
    let on_two = Client::api_key(&two, created["key"].as_str().unwrap());
    assert_eq!(agents_status(&on_two).await, 200);

    alice
        .elevated()
        .delete(&format!("/api-keys/{id}"))
        .await
        .ok(204);
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

const BUDGET: u32 = 50;

/// An app with a failure budget of [`BUDGET`] a minute that trusts `127.0.0.1` to name the
/// client, an account, and a legitimate key in it (verified once, so cached).
async fn forged_keys_app() -> (TestApp, String) {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.auth_failure_limit_per_minute = BUDGET;
            c.trusted_proxies = vec!["127.0.0.1".into()];
        })
        .spawn()
        .await;
    let legit = {
        let (_, created, key) = keyed(&app, "forged", json!({ "name": "k" })).await;
        assert_eq!(as_client(&key, "198.51.100.7").await, 200);
        created["key"].as_str().unwrap().to_owned()
    };
    (app, legit)
}

/// The status of `GET /agents` with `key`, from `client`.
async fn as_client(key: &Client<'_>, client: &str) -> u16 {
    let req = from_client(key.req(Method::GET, &format!("{V1}/agents")), client);
    send(req).await.status
}

/// Catalog lookups of keys that missed the cache.
async fn misses(app: &TestApp) -> f64 {
    app.metric(r#"kataven_catalog_cache_lookups_total{cache="api_keys",result="miss"}"#)
        .await
}

/// What a client can spend in `secs`: the budget, what refilled, and the requests it had in
/// flight (16 here) when the budget ran out.
fn bound(secs: f64) -> f64 {
    BUDGET as f64 + (secs * BUDGET as f64 / 60.0).ceil() + 16.0
}

/// Made-up keys for `account` from `client` (`KATAVEN_TEST_FORGED_KEYS`, 4000 by default), 16
/// at a time: their statuses, the seconds it took, and the catalog queries they caused.
async fn flood(app: &TestApp, account: &str, client: &str) -> (Vec<u16>, f64, f64) {
    let forged_count: usize = std::env::var("KATAVEN_TEST_FORGED_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000);
    let before = misses(app).await;
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..forged_count)
        .map(|_| async move {
            let key = crate::support::forged_api_key(account);
            as_client(&Client::api_key(app, &key), client).await
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let queries = misses(app).await - before;
    println!("{forged_count} forged keys from {client} in {secs:.1} s: {queries} catalog queries");
    (statuses, secs, queries)
}

/// Made-up keys (a valid CRC32 is easy; the tag needs the pepper) are refused without a
/// catalog query once no untagged key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_keys_cost_no_catalog_query_once_no_untagged_key_is_left() {
    let (app, legit) = forged_keys_app().await;
    let account = Client::api_key(&app, &legit).account;
    app.state.api_keys.check_untagged_keys().await;
    let (statuses, secs, queries) = flood(&app, &account, "203.0.113.66").await;
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("{refused} × 401, {limited} × 429");
    assert_eq!(queries, 0.0);
    assert!(
        (BUDGET as usize..=bound(secs) as usize).contains(&refused),
        "{refused} refused in {secs:.1} s"
    );
    assert_eq!(refused + limited, statuses.len());
    assert!(
        app.metric(r#"kataven_auth_failures_total{reason="forged_api_key"}"#)
            .await
            >= 1.0
    );
}

/// While untagged keys (made before tags) exist, made-up keys are looked up, but a client's
/// cost at most its failure budget of queries a minute, then 429 `auth`. A legitimate key from
/// another client keeps working, from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_keys_cost_a_bounded_number_of_queries_per_client_while_untagged_keys_exist() {
    let (app, legit) = forged_keys_app().await;
    let account = Client::api_key(&app, &legit).account;
    sqlx::query(
        "INSERT INTO api_keys (id, account, name, key_hash, last8, created_by)
         VALUES (gen_random_uuid(), $1, 'old', sha256(random()::text::bytea), 'oldkey00', 'test')",
    )
    .bind(&account)
    .execute(app.state.catalog.pool())
    .await
    .unwrap();
    app.state.api_keys.check_untagged_keys().await;
    let (statuses, secs, queries) = flood(&app, &account, "203.0.113.67").await;
    assert!(queries <= bound(secs), "{queries} queries in {secs:.1} s");
    assert!(statuses.contains(&429));
    // Raw: the `Retry-After` header.
    let forged = Client::api_key(&app, &crate::support::forged_api_key(&account));
    let resp = from_client(
        forged.req(Method::GET, &format!("{V1}/agents")),
        "203.0.113.67",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "auth");

    // The legitimate client is unaffected, and served from the cache (after at most one read:
    // a long run outlives the cache's 30 s).
    let legit = Client::api_key(&app, &legit);
    assert_eq!(as_client(&legit, "198.51.100.7").await, 200);
    let before = misses(&app).await;
    assert_eq!(as_client(&legit, "198.51.100.7").await, 200);
    assert_eq!(misses(&app).await, before);
}
