//! Per-account limits (429) and per-IP limits on public endpoints.

use std::time::Duration;

use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::client::Client;
use crate::support::redis::TestRedis;
use crate::support::{TestApp, system_url_of};

/// Fixed windows are aligned to UTC: wait until the current minute has at least `secs` left,
/// so that a test's burst stays within one window.
async fn away_from_minute_boundary(secs: u64) {
    let now = kataven_hub::limits::now_secs();
    let left = 60 - now % 60;
    if left < secs {
        tokio::time::sleep(Duration::from_secs(left) + Duration::from_millis(100)).await;
    }
}

async fn limited_app(f: impl FnOnce(&mut kataven_hub::config::Config)) -> TestApp {
    TestApp::builder().await.config(f).spawn().await
}

async fn get(app: &TestApp, account: &str, subject: &str) -> reqwest::Response {
    app.as_user(Method::GET, "/api/v1/agents", account, subject)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_one_to_n_pass_and_n_plus_one_is_refused_with_every_header() {
    let app = limited_app(|c| c.limit_per_minute = 5).await;
    let acme = app.account_with_admin("cap", "alice").await;
    away_from_minute_boundary(10).await;

    for i in 1..=5 {
        let resp = get(&app, &acme.slug, "alice").await;
        assert_eq!(resp.status(), 200, "request {i}");
        let policy = resp.headers()["ratelimit-policy"].to_str().unwrap();
        assert!(
            policy.starts_with(r#""minute";q=5;w=60, "hour";q=100000;w=3600"#),
            "{policy}"
        );
        let remaining = resp.headers()["ratelimit"].to_str().unwrap();
        assert!(
            remaining.starts_with(&format!(r#""minute";r={};t="#, 5 - i)),
            "{remaining}"
        );
    }
    for _ in 0..2 {
        let resp = get(&app, &acme.slug, "alice").await;
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(h["ratelimit"], format!(r#""minute";r=0;t={retry_after}"#));
        assert!(
            h["ratelimit-policy"]
                .to_str()
                .unwrap()
                .contains(r#""minute";q=5;w=60"#)
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(body["error"]["limit"], "minute");
        assert_eq!(
            body["error"]["message"],
            "rate_limited: per-minute (5) exceeded"
        );
    }
    assert_eq!(
        app.metric(r#"kataven_rate_limited_total{limit="minute"}"#)
            .await,
        2.0
    );
    // Another account has its own counters.
    let other = app.account_with_admin("other", "alice").await;
    assert_eq!(get(&app, &other.slug, "alice").await.status(), 200);
}

#[tokio::test]
async fn hour_and_day_caps_and_refusals_consume_nothing() {
    let app = limited_app(|c| {
        c.limit_per_hour = 3;
        c.limit_per_day = 4;
    })
    .await;
    let acme = app.account_with_admin("hour", "alice").await;
    for _ in 0..3 {
        assert_eq!(get(&app, &acme.slug, "alice").await.status(), 200);
    }
    for _ in 0..3 {
        let resp = get(&app, &acme.slug, "alice").await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["limit"], "hour");
        assert_eq!(
            body["error"]["message"],
            "rate_limited: per-hour (3) exceeded"
        );
    }
    // The refused requests did not count towards the day: one more fits when the hour cap rises.
    let slug = acme.slug.parse().unwrap();
    app.state
        .catalog
        .set_limit(&slug, "per_hour", Some(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the NOTIFY reaches the cache
    assert_eq!(get(&app, &acme.slug, "alice").await.status(), 200);
    let body: Value = get(&app, &acme.slug, "alice").await.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "day");
}

#[tokio::test]
async fn requests_refused_earlier_in_the_pipeline_never_count() {
    let app = limited_app(|c| c.limit_per_hour = 2).await;
    let acme = app.account_with_admin("early", "alice").await;
    let bob = Client::in_account(&app, &acme.slug, "alice")
        .with_member("bob", Role::Member)
        .await;
    for _ in 0..5 {
        // 401: no valid bearer.
        let resp = app
            .get("/api/v1/agents")
            .header("X-Account-ID", acme.slug.as_str())
            .bearer_auth("junk")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        // 403: not a member.
        assert_eq!(get(&app, &acme.slug, "mallory").await.status(), 403);
        // 403: an admin-only route without elevation.
        let resp = bob
            .post("/members", json!({ "subject": "x", "role": "member" }))
            .await;
        assert_eq!(resp.code(), "admin_required");
    }
    assert_eq!(get(&app, &acme.slug, "alice").await.status(), 200);
    assert_eq!(get(&app, &acme.slug, "bob").await.status(), 200);
    assert_eq!(get(&app, &acme.slug, "alice").await.status(), 429);
}

#[tokio::test]
async fn zero_is_a_kill_switch() {
    let app = TestApp::spawn().await;
    for (column, limit) in [
        ("per_minute", "minute"),
        ("per_hour", "hour"),
        ("per_day", "day"),
        ("concurrent", "concurrent"),
    ] {
        let acme = app.account_with_admin("kill", "alice").await;
        app.state
            .catalog
            .set_limit(&acme.slug.parse().unwrap(), column, Some(0))
            .await
            .unwrap();
        let resp = get(&app, &acme.slug, "alice").await;
        assert_eq!(resp.status(), 429, "{column}");
        assert!(resp.headers().contains_key("retry-after"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["limit"], limit);
        assert_eq!(
            body["error"]["message"],
            format!(
                "rate_limited: {} (0) exceeded",
                if limit == "concurrent" {
                    "concurrent".to_owned()
                } else {
                    format!("per-{limit}")
                }
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_beyond_the_cap_are_refused_while_others_run() {
    let app = limited_app(|c| c.limit_concurrent = 2).await;
    let acme = app.account_with_admin("conc", "alice").await;
    let slow = |app: &TestApp| {
        let req = app
            .get("/test/tenant?sleep_ms=1500")
            .header("X-Account-ID", acme.slug.as_str())
            .bearer_auth(app.token("alice"));
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    let (a, b) = (slow(&app), slow(&app));
    // Wait (bounded, without requests of our own) until both hold their slots.
    for _ in 0..200 {
        if app.state.pools.stats().connections_in_use == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.state.pools.stats().connections_in_use, 2);
    let resp = app.tenant_get(&acme.slug, "alice").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let refused: Value = resp.json().await.unwrap();
    assert_eq!(refused["error"]["limit"], "concurrent");
    assert_eq!(
        refused["error"]["message"],
        "rate_limited: concurrent (2) exceeded"
    );
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (200, 200));
    // Their slots are free again.
    assert_eq!(
        app.tenant_get(&acme.slug, "alice")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn daily_counts_survive_a_restart() {
    let mut first = limited_app(|c| c.limit_per_day = 5).await;
    let acme = first.account_with_admin("restart", "alice").await;
    for _ in 0..3 {
        assert_eq!(get(&first, &acme.slug, "alice").await.status(), 200);
    }
    let url = system_url_of(&first);
    let issuer = first.issuer.issuer();
    first.shutdown().await.unwrap();

    let second = TestApp::builder()
        .await
        .database_url(&url)
        .config(|c| {
            c.limit_per_day = 5;
            c.oidc_issuer = Some(issuer);
        })
        .spawn()
        .await;
    let token = first.token("alice");
    let call = || {
        second
            .get("/api/v1/agents")
            .header("X-Account-ID", acme.slug.as_str())
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 200);
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["limit"], "day");
}

#[tokio::test]
async fn two_instances_share_one_cap_through_redis() {
    let redis = TestRedis::start();
    let one = limited_app(|c| {
        c.limit_per_hour = 6;
        c.redis_url = Some(redis.url().into());
    })
    .await;
    let acme = one.account_with_admin("shared", "alice").await;
    let issuer = one.issuer.issuer();
    let two = TestApp::builder()
        .await
        .database_url(&system_url_of(&one))
        .config(|c| {
            c.limit_per_hour = 6;
            c.redis_url = Some(redis.url().into());
            c.oidc_issuer = Some(issuer);
        })
        .spawn()
        .await;
    let token = one.token("alice");
    let mut statuses = Vec::new();
    for i in 0..10 {
        let app = if i % 2 == 0 { &one } else { &two };
        let resp = app
            .get("/api/v1/agents")
            .header("X-Account-ID", acme.slug.as_str())
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);
}

#[tokio::test]
async fn redis_outage_fails_open_and_limiting_resumes_when_it_returns() {
    let mut redis = TestRedis::start();
    let app = limited_app(|c| {
        c.limit_per_hour = 2;
        c.redis_url = Some(redis.url().into());
    })
    .await;
    let acme = app.account_with_admin("outage", "alice").await;
    assert_eq!(get(&app, &acme.slug, "alice").await.status(), 200);

    redis.stop();
    for _ in 0..5 {
        assert_eq!(
            get(&app, &acme.slug, "alice").await.status(),
            200,
            "must fail open"
        );
    }
    assert!(app.metric("kataven_limiter_store_errors_total").await >= 5.0);

    // A new, empty Redis: counting starts over and the cap holds again.
    redis.resume();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(get(&app, &acme.slug, "alice").await.status().as_u16());
        if statuses.ends_with(&[429]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "limiting did not resume: {statuses:?}"
    );
}

#[tokio::test]
async fn public_endpoints_are_limited_per_client_ip() {
    let app = limited_app(|c| c.public_limit_per_minute = 3).await;
    for _ in 0..3 {
        assert_eq!(app.get("/api/accounts").send().await.unwrap().status(), 200);
    }
    let resp = app.get("/api/accounts/validate/acme").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["limit"], "ip");
    // Health, metrics and the document are not limited.
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(app.get(path).send().await.unwrap().status(), 200, "{path}");
    }
    // A client cannot escape by claiming another address: the proxy is not trusted.
    let resp = app
        .get("/api/accounts")
        .header("X-Forwarded-For", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota() {
    let app = limited_app(|c| {
        c.public_limit_per_minute = 2;
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let from = |ip: &str| {
        app.get("/api/accounts")
            .header("X-Forwarded-For", ip)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(from("198.51.100.1").await.unwrap().status(), 200);
    }
    assert_eq!(from("198.51.100.1").await.unwrap().status(), 429);
    assert_eq!(from("198.51.100.2").await.unwrap().status(), 200);
    // A spoofed left-most entry does not help: the proxy appended the real address.
    assert_eq!(
        from("203.0.113.5, 198.51.100.1").await.unwrap().status(),
        429
    );
}

/// A request whose client gives up while Redis has not answered the admission script yet: the
/// script may still add it to the in-flight set when Redis answers again, and the slot must be
/// removed then, not held until it goes stale (a minute, for a cap of 1 in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_redis_is_slow_leaves_no_slot_behind() {
    let redis = TestRedis::start();
    let app = limited_app(|c| {
        c.limit_concurrent = 1;
        c.redis_url = Some(redis.url().into());
    })
    .await;
    let acme = app.account_with_admin("slotleak", "alice").await;
    // Warm up: the script is loaded, the connection made.
    assert_eq!(get(&app, &acme.slug, "alice").await.status(), 200);

    redis.freeze();
    let gave_up = app
        .as_user(Method::GET, "/api/v1/agents", &acme.slug, "alice")
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have given up");
    redis.thaw();

    // The cap of one in flight is free again at once.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&app, &acme.slug, "alice").await.status().as_u16());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses, [200; 5], "a cancelled request kept its slot");
}
