//! Public endpoints: account discovery, health, metrics, request ids and JSON errors.

use kataven_hub::config::AccountDirectory;
use kataven_hub::tenancy::catalog::AccountStatus;
use serde_json::{Value, json};

use crate::support::{TestApp, error_code, unique_slug};

#[tokio::test]
async fn directory_lists_active_accounts_sorted_under_both_prefixes() {
    let app = TestApp::spawn().await;
    let p = app.provisioner();
    let zed = unique_slug("zed");
    let abc = unique_slug("abc");
    let off = unique_slug("mid");
    for (slug, name) in [(&zed, "Zed"), (&abc, "Abc"), (&off, "Mid")] {
        p.create_account(slug, name, None, None).await.unwrap();
    }
    app.state
        .catalog
        .set_status(&off, AccountStatus::Suspended)
        .await
        .unwrap();

    for prefix in ["", "/hub-api"] {
        let resp = app
            .get(&format!("{prefix}/api/accounts"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!([{ "account": abc.as_str(), "name": "Abc" }, { "account": zed.as_str(), "name": "Zed" }])
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
    let (status, code) = error_code(app.get("/api/accounts").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    // Validation stays available: the login page needs it.
    let resp = app
        .get("/api/accounts/validate/nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn validate_answers_each_case() {
    let app = TestApp::spawn().await;
    let slug = unique_slug("val");
    app.provisioner()
        .create_account(&slug, "Val Co", None, None)
        .await
        .unwrap();

    for prefix in ["", "/hub-api"] {
        let resp = app
            .get(&format!("{prefix}/api/accounts/validate/{slug}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "account": slug.as_str(), "name": "Val Co", "valid": true })
        );
    }

    let resp = app
        .get("/api/accounts/validate/unknown-acct")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({ "valid": false })
    );

    for bad in [
        "Upper",
        "-dash",
        "_under",
        "dot.ted",
        "sp%20ace",
        &"a".repeat(64),
    ] {
        let (status, code) = error_code(
            app.get(&format!("/api/accounts/validate/{bad}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "invalid_account"), "{bad}");
    }

    let (status, code) = error_code(
        app.get("/api/accounts/validate/kataven-admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "reserved_account"));

    // A suspended account is not disclosed to the public.
    app.state
        .catalog
        .set_status(&slug, AccountStatus::Suspended)
        .await
        .unwrap();
    let resp = app
        .get(&format!("/api/accounts/validate/{slug}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({ "valid": false })
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz", "/hub-api/healthz", "/hub-api/readyz"] {
        let resp = app.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
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
    let statuses: Vec<u16> = futures::future::join_all(
        (0..2_000).map(|_| async { app.get("/readyz").send().await.unwrap().status().as_u16() }),
    )
    .await;
    let made = probes().await - before;
    let secs = started.elapsed().as_secs_f64();
    println!("2000 calls of /readyz in {secs:.1} s: {made} probes");
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(made <= secs.ceil() + 2.0, "{made} probes in {secs:.1} s");
}

#[tokio::test]
async fn readiness_fails_with_retry_after_when_the_system_database_is_gone() {
    let mut app = TestApp::spawn().await;
    // Close the system pool: every query now fails as it would with the database down.
    app.state.catalog.pool().close().await;
    // `/readyz` answers from a probe at most a second old.
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
    // The directory answers 503 too, never 500 or a hang.
    let resp = app.get("/api/accounts").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_ids_are_echoed_when_valid_and_generated_otherwise() {
    let app = TestApp::spawn().await;
    let resp = app
        .get("/healthz")
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");

    let resp = app
        .get("/healthz")
        .header("X-Request-Id", "bad id; drop")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(generated, "bad id; drop");
    assert!(uuid::Uuid::parse_str(&generated).is_ok());

    // Error bodies carry the same id as the header.
    let resp = app
        .get("/no/such/route")
        .header("X-Request-Id", "trace-me")
        .send()
        .await
        .unwrap();
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
    let resp = app
        .client
        .delete(app.url("/api/accounts"))
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(resp).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.get("/api/accounts/validate/nobody-here")
            .send()
            .await
            .unwrap();
    }
    app.get("/api/accounts/validate/kataven-admin")
        .send()
        .await
        .unwrap();
    let resp = app.get("/metrics").send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let n = app
        .metric(r#"kataven_http_requests_total{method="GET",route="/api/accounts/validate/{account}",status="404"}"#)
        .await;
    assert_eq!(n, 3.0);
    let n = app
        .metric(r#"kataven_http_requests_total{method="GET",route="/api/accounts/validate/{account}",status="403"}"#)
        .await;
    assert_eq!(n, 1.0);
    let text = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "kataven_http_request_duration_seconds_bucket",
        "kataven_tenant_pools_open",
        "kataven_tenant_connections_open",
        "kataven_tenant_connections_in_use",
        "kataven_tenant_pool_cold_opens_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // No raw paths (and so no account names) become labels.
    assert!(!text.contains("nobody-here"));
}
