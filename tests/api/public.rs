//! Public endpoints: account discovery, health, metrics, request ids and JSON errors.

use kataven_hub::config::AccountDirectory;
use kataven_hub::tenancy::catalog::AccountStatus;
use kataven_hub::tenancy::slug::AccountSlug;
use serde_json::{Value, json};

use crate::support::client::{Resp, send};
use crate::support::{TestApp, error_code, unique_slug};

/// Both prefixes the public endpoints answer at.
const PREFIXES: [&str; 2] = ["", "/hub-api"];

/// An unauthenticated `GET`, read whole.
async fn get(app: &TestApp, path: &str) -> Resp {
    send(app.get(path)).await
}

/// A fresh account named `name`.
async fn account(app: &TestApp, prefix: &str, name: &str) -> AccountSlug {
    let slug = unique_slug(prefix);
    app.provisioner()
        .create_account(&slug, name, None, None)
        .await
        .unwrap();
    slug
}

async fn suspend(app: &TestApp, slug: &AccountSlug) {
    app.state
        .catalog
        .set_status(slug, AccountStatus::Suspended)
        .await
        .unwrap();
}

#[tokio::test]
async fn directory_lists_active_accounts_sorted_under_both_prefixes() {
    let app = TestApp::spawn().await;
    let zed = account(&app, "zed", "Zed").await;
    let abc = account(&app, "abc", "Abc").await;
    let off = account(&app, "mid", "Mid").await;
    suspend(&app, &off).await;

    for prefix in PREFIXES {
        assert_eq!(
            get(&app, &format!("{prefix}/api/accounts")).await.ok(200),
            &json!([{ "account": abc.as_str(), "name": "Abc" }, { "account": zed.as_str(), "name": "Zed" }]),
            "{prefix}"
        );
    }
}

#[tokio::test]
async fn directory_can_be_turned_off() {
    let app = TestApp::builder()
        .await
        .config(|c| c.account_directory = AccountDirectory::Off)
        .spawn()
        .await;
    get(&app, "/api/accounts")
        .await
        .err(404, "not_found", None, "directory");
    // Validation stays available: the login page needs it.
    assert_eq!(get(&app, "/api/accounts/validate/nobody").await.status, 404);
}

#[tokio::test]
async fn validate_answers_an_active_account_under_both_prefixes() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "val", "Val Co").await;
    for prefix in PREFIXES {
        assert_eq!(
            get(&app, &format!("{prefix}/api/accounts/validate/{slug}"))
                .await
                .ok(200),
            &json!({ "account": slug.as_str(), "name": "Val Co", "valid": true }),
            "{prefix}"
        );
    }
}

/// Asserts that validating `account` answers 404 `{"valid": false}`: nothing to tell.
async fn assert_not_disclosed(app: &TestApp, account: &str) {
    let resp = get(app, &format!("/api/accounts/validate/{account}")).await;
    assert_eq!(resp.ok(404), &json!({ "valid": false }), "{account}");
}

#[tokio::test]
async fn validate_answers_not_valid_for_an_unknown_account() {
    let app = TestApp::spawn().await;
    assert_not_disclosed(&app, "unknown-acct").await;
}

#[tokio::test]
async fn validate_refuses_what_cannot_be_an_account() {
    let app = TestApp::spawn().await;
    for bad in [
        "Upper",
        "-dash",
        "_under",
        "dot.ted",
        "sp%20ace",
        &"a".repeat(64),
    ] {
        get(&app, &format!("/api/accounts/validate/{bad}"))
            .await
            .err(400, "invalid_account", None, bad);
    }
}

#[tokio::test]
async fn validate_refuses_the_system_database_as_reserved() {
    let app = TestApp::spawn().await;
    get(&app, "/api/accounts/validate/kataven-admin").await.err(
        403,
        "reserved_account",
        None,
        "kataven-admin",
    );
}

#[tokio::test]
async fn validate_does_not_disclose_a_suspended_account() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "susp", "Susp Co").await;
    get(&app, &format!("/api/accounts/validate/{slug}"))
        .await
        .ok(200);
    suspend(&app, &slug).await;
    assert_not_disclosed(&app, slug.as_str()).await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz", "/hub-api/healthz", "/hub-api/readyz"] {
        assert_eq!(get(&app, path).await.status, 200, "{path}");
    }
}

/// A flood of `/readyz` costs the database nothing: it answers from a probe made about once a
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_a_flood_from_a_cached_probe() {
    let app = TestApp::spawn().await;
    let probes = || app.metric("kataven_readiness_probes_total");
    let before = probes().await;
    let started = std::time::Instant::now();
    let statuses: Vec<u16> =
        futures::future::join_all((0..2_000).map(|_| async { get(&app, "/readyz").await.status }))
            .await;
    let made = probes().await - before;
    let secs = started.elapsed().as_secs_f64();
    println!("2000 calls of /readyz in {secs:.1} s: {made} probes");
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(made <= secs.ceil() + 2.0, "{made} probes in {secs:.1} s");
}

/// An app whose system pool is closed: every query now fails as it would with the database
/// down.
async fn without_system_database() -> TestApp {
    let app = TestApp::spawn().await;
    app.state.catalog.pool().close().await;
    app
}

#[tokio::test]
async fn readiness_fails_with_retry_after_when_the_system_database_is_gone() {
    let mut app = without_system_database().await;
    // `/readyz` answers from a probe at most a second old (raw: the `Retry-After` header).
    let started = std::time::Instant::now();
    let resp = loop {
        let resp = app.get("/readyz").send().await.unwrap();
        if resp.status() != 200 || started.elapsed() > std::time::Duration::from_secs(3) {
            break resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, code) = error_code(resp).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_directory_answers_503_when_the_system_database_is_gone() {
    let mut app = without_system_database().await;
    // Never 500 or a hang (raw: the `Retry-After` header).
    let resp = app.get("/api/accounts").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    app.shutdown().await.unwrap();
}

/// `GET path` with `X-Request-Id: id` (raw: the answer's `X-Request-Id` header).
async fn with_request_id(app: &TestApp, path: &str, id: &str) -> reqwest::Response {
    app.get(path)
        .header("X-Request-Id", id)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_valid_request_id_is_echoed() {
    let app = TestApp::spawn().await;
    let resp = with_request_id(&app, "/healthz", "abc-123").await;
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn an_invalid_request_id_is_replaced_by_a_generated_uuid() {
    let app = TestApp::spawn().await;
    let resp = with_request_id(&app, "/healthz", "bad id; drop").await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(generated, "bad id; drop");
    assert!(uuid::Uuid::parse_str(&generated).is_ok());
}

#[tokio::test]
async fn error_bodies_carry_the_request_id_of_the_header() {
    let app = TestApp::spawn().await;
    let resp = with_request_id(&app, "/no/such/route", "trace-me").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "trace-me");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["request_id"], "trace-me");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let app = TestApp::spawn().await;
    send(app.client.delete(app.url("/api/accounts"))).await.err(
        405,
        "method_not_allowed",
        None,
        "DELETE /api/accounts",
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        get(&app, "/api/accounts/validate/nobody-here").await;
    }
    get(&app, "/api/accounts/validate/kataven-admin").await;
    let route = r#"method="GET",route="/api/accounts/validate/{account}""#;
    for (status, want) in [(404, 3.0), (403, 1.0)] {
        let n = app
            .metric(&format!(
                r#"kataven_http_requests_total{{{route},status="{status}"}}"#
            ))
            .await;
        assert_eq!(n, want, "{status}");
    }
    // No raw paths (and so no account names) become labels.
    assert!(!get(&app, "/metrics").await.text.contains("nobody-here"));
}

#[tokio::test]
async fn metrics_are_text_with_the_latency_and_tenant_pool_series() {
    let app = TestApp::spawn().await;
    get(&app, "/api/accounts/validate/nobody-here").await;
    let metrics = get(&app, "/metrics").await;
    assert!(metrics.content_type.starts_with("text/plain"));
    for name in [
        "kataven_http_request_duration_seconds_bucket",
        "kataven_tenant_pools_open",
        "kataven_tenant_connections_open",
        "kataven_tenant_connections_in_use",
        "kataven_tenant_pool_cold_opens_total",
    ] {
        assert!(metrics.text.contains(name), "{name} missing from /metrics");
    }
}
