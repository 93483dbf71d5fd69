//! The widget in a real browser (SPEC §5): headless Chromium, driven by playwright-core
//! (`tests/browser/run-page.mjs`), loads a page from one origin that fetches the widget config
//! and a guest token from the API on another origin; the same page from an origin that is not
//! on the key's allowlist is refused.
//!
//! Needs Node.js, Debian's Chromium (`/usr/bin/chromium`, or `$CHROMIUM`) and
//! `tests/browser/node_modules`; `.ci/run` installs them. Missing any of them fails the test,
//! unless `KATAVEN_SKIP_BROWSER_TESTS=1` opts out explicitly (CI never sets it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestApp;

const ADMIN: &str = "browser-admin";

/// The customer's page: reads the API's base URL, the widget key and the agent from its query
/// string, calls the two public widget endpoints cross-origin the way the widget does, and writes
/// what it got into `#result` (as JSON, with `data-done="1"` once complete).
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>widget host page</title></head>
<body>
<pre id="result"></pre>
<script>
(async () => {
  const q = new URLSearchParams(location.search);
  const api = q.get('api');
  const clientKey = q.get('client_key');
  const agentId = q.get('agent_id');
  const call = async (url, init) => {
    try {
      const resp = await fetch(url, init);
      const text = await resp.text();
      let body;
      try { body = JSON.parse(text); } catch (_) { body = text; }
      return { status: resp.status, body };
    } catch (e) {
      return { error: String(e) };
    }
  };
  const result = { origin: location.origin };
  result.config = await call(
    api + '/api/v1/widget/config?client_key=' + encodeURIComponent(clientKey));
  result.guest = await call(api + '/api/v1/widget/auth/guest', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_key: clientKey, agent_id: agentId }),
  });
  const out = document.getElementById('result');
  out.textContent = JSON.stringify(result);
  out.dataset.done = '1';
})();
</script>
</body>
</html>
"#;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing to run a browser test, if anything.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("Node.js (`node` on PATH)".to_owned());
    }
    let chromium = chromium();
    if !chromium.is_file() {
        missing.push(format!("Chromium at {}", chromium.display()));
    }
    let playwright = manifest_dir().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push("playwright-core in tests/browser/node_modules".to_owned());
    }
    missing
}

/// `true` when the browser test can run; `false` when it may be skipped (explicitly only).
fn browser_available() -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("KATAVEN_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "KATAVEN_SKIP_BROWSER_TESTS=1: skipping the browser test (missing: {})",
            missing.join(", ")
        );
        return false;
    }
    panic!(
        "the browser test needs {}.\n\
         Run `.ci/run`, or install them by hand: `apt-get install chromium` and \
         `npm ci --prefix tests/browser`.\n\
         To skip browser tests explicitly, set KATAVEN_SKIP_BROWSER_TESTS=1.",
        missing.join(", ")
    );
}

/// Serves [`PAGE`] at `/` on a fresh loopback port, until the test's runtime ends.
async fn page_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// What a page reported, and what it logged in the browser (for failure messages).
struct PageRun {
    result: Value,
    log: String,
}

impl std::fmt::Display for PageRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "page result: {:#}\nbrowser log:\n{}",
            self.result, self.log
        )
    }
}

/// Loads `url` in headless Chromium and returns what the page wrote into `#result`.
async fn run_page(url: String) -> PageRun {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("node")
            .arg("tests/browser/run-page.mjs")
            .arg(&url)
            .current_dir(manifest_dir())
            .output()
            .expect("run node tests/browser/run-page.mjs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "run-page.mjs failed ({}) on {url}\nstdout: {stdout}\nstderr: {log}",
            out.status
        );
        let result = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("the page's result is not JSON ({e}): {stdout}\nstderr: {log}")
        });
        PageRun { result, log }
    })
    .await
    .unwrap()
}

fn page_url(page_origin: &str, api: &str, client_key: &str, agent_id: &str) -> String {
    let query = serde_urlencoded::to_string([
        ("api", api),
        ("client_key", client_key),
        ("agent_id", agent_id),
    ])
    .unwrap();
    format!("{page_origin}/?{query}")
}

#[tokio::test]
async fn widget_page_fetches_config_and_guest_token_cross_origin_only_from_allowlisted_origin() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let app = TestApp::spawn().await;
    let account = app.account_with_admin("browser", ADMIN).await;
    let slug = account.slug.as_str();

    let resp = app
        .as_user(Method::POST, "/api/v1/agents", slug, ADMIN)
        .json(&json!({ "name": "Front desk", "status": "active", "auth_mode": "public" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let agent: Value = resp.json().await.unwrap();
    let agent_id = agent["id"].as_str().unwrap().to_owned();

    // Two page servers: the allowlisted origin, and another origin serving the same page.
    let allowed = page_server().await;
    let other = page_server().await;
    let allowed_origin = format!("http://127.0.0.1:{}", allowed.port());
    let other_origin = format!("http://localhost:{}", other.port());

    let resp = app
        .as_user(Method::POST, "/api/v1/widget-keys", slug, ADMIN)
        .json(&json!({
            "name": "Browser test site",
            "domain_allowlist": [allowed_origin],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let key: Value = resp.json().await.unwrap();
    let client_key = key["key"].as_str().unwrap().to_owned();

    // The API is a third origin (another port), so every call below is cross-origin.
    let browser_started = Instant::now();
    let run = run_page(page_url(&allowed_origin, &app.base, &client_key, &agent_id)).await;
    let ok = &run.result;
    assert_eq!(ok["origin"], allowed_origin.as_str(), "{run}");
    assert_eq!(ok["config"]["status"], 200, "{run}");
    let config = &ok["config"]["body"];
    assert_eq!(config["account"], slug, "{run}");
    let agents = config["agents"].as_array().expect("the list of agents");
    assert_eq!(agents.len(), 1, "{run}");
    assert_eq!(agents[0]["id"], agent_id.as_str());
    assert_eq!(agents[0]["name"], "Front desk");
    assert!(
        agents[0]["auth_modes"]
            .as_array()
            .unwrap()
            .contains(&json!("guest")),
        "{run}"
    );
    assert_eq!(ok["guest"]["status"], 200, "{run}");
    let guest = &ok["guest"]["body"];
    assert_eq!(guest["token_type"], "Bearer", "{run}");
    assert!(guest["expires_in"].as_i64().unwrap() > 0, "{run}");
    let token = guest["token"].as_str().expect("a token");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    // The same page from an origin that is not allowlisted: CORS still lets the page read the
    // answers (any origin is echoed), and the handlers refuse it.
    let run = run_page(page_url(&other_origin, &app.base, &client_key, &agent_id)).await;
    let refused = &run.result;
    assert_eq!(refused["origin"], other_origin.as_str(), "{run}");
    for call in ["config", "guest"] {
        assert_eq!(refused[call]["status"], 403, "{call}: {run}");
        assert_eq!(
            refused[call]["body"]["error"]["code"], "origin_not_allowed",
            "{call}: {run}"
        );
    }
    assert!(refused["guest"]["body"].get("token").is_none(), "{run}");

    eprintln!(
        "browser test: {:.1} s in the browser, {:.1} s in all",
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
