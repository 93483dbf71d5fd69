//! Real-browser tests: headless Chromium, driven by playwright-core (`tests/browser/*.mjs`,
//! one launcher in `browser.mjs`).
//!
//! - The widget (SPEC §5): a page from one origin fetches the widget config and a guest token
//!   from the API on another origin; the same page from an origin that is not on the key's
//!   allowlist is refused.
//! - The first hour: the dev console and widget page of `kataven-hub dev`, typed into.
//! - The API reference at `/docs`, rendered offline.
//!
//! `KATAVEN_SCREENSHOT_DIR=docs` saves the screenshots the README shows.
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
    let packages = manifest_dir().join("tests/browser");
    if let Err(e) = crate::support::npm::ensure_installed(&packages) {
        missing.push(e);
    }
    let playwright = packages.join("node_modules/playwright-core/package.json");
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

/// Runs `tests/browser/<script>` with `args` and `envs` and returns what it printed: the
/// scenario's result, with the browser's log in `browser` (see `tests/browser/browser.mjs`).
async fn run_script(script: &str, args: Vec<String>, envs: Vec<(&'static str, String)>) -> PageRun {
    let script = format!("tests/browser/{script}");
    tokio::task::spawn_blocking(move || {
        let out = Command::new("node")
            .arg(&script)
            .args(&args)
            .envs(envs)
            .current_dir(manifest_dir())
            .output()
            .unwrap_or_else(|e| panic!("run node {script}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "{script} failed ({}) on {args:?}\nstdout: {stdout}\nstderr: {log}",
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

/// Loads `url` in headless Chromium and returns what the page wrote into `#result`.
async fn run_page(url: String) -> PageRun {
    run_script("run-page.mjs", vec![url], Vec::new()).await
}

impl PageRun {
    /// Every URL the page requested.
    fn requests(&self) -> Vec<&str> {
        self.result["browser"]["requests"]
            .as_array()
            .expect("the browser's requests")
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect()
    }

    /// What the page logged, less the lines `expected` accepts.
    fn unexpected_log(&self, expected: impl Fn(&str) -> bool) -> Vec<&str> {
        self.result["browser"]["console"]
            .as_array()
            .expect("the browser's log")
            .iter()
            .map(|l| l.as_str().unwrap())
            .filter(|l| !expected(l))
            .collect()
    }
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

/// `kataven-hub dev`, started as a user starts it (its own embedded PostgreSQL in a fresh data
/// directory), stopped with Ctrl-C (SIGINT) when dropped, so that its cluster stops too even
/// when the test fails.
struct DevServer {
    child: Option<std::process::Child>,
    port: u16,
    data_dir: PathBuf,
    _data: tempfile::TempDir,
}

impl DevServer {
    fn start() -> DevServer {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        // Readable by `postgres`, which runs the cluster when the tests run as root.
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data_dir = data.path().join(".kataven");
        let port = crate::cli::free_port();
        let mut child = Command::new(crate::cli::BIN)
            .arg("dev")
            .env_remove("KATAVEN_DATABASE_URL")
            .env_remove("KATAVEN_KEY_PEPPER")
            .env("KATAVEN_DATA_DIR", &data_dir)
            .env("KATAVEN_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        crate::cli::wait_healthy(port, &mut child);
        DevServer {
            child: Some(child),
            port,
            data_dir,
            _data: data,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn secret(&self, file: &str) -> String {
        std::fs::read_to_string(self.data_dir.join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Ctrl-C; returns what it printed on stdout and stderr.
    fn stop(&mut self) -> (String, String) {
        let Some(mut child) = self.child.take() else {
            return Default::default();
        };
        crate::cli::signal(&child, libc::SIGINT);
        let exit = crate::cli::wait_exit(&mut child);
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let mut log = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert!(exit.success(), "dev exited with {exit}: {log}");
        (out, log)
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::cli::signal(&child, libc::SIGINT);
            let mut child = child;
            let _ = crate::cli::wait_exit(&mut child);
        }
    }
}

/// Where to save screenshots: `KATAVEN_SCREENSHOT_DIR` (`docs/` refreshes the README's).
fn screenshot_dir() -> Option<String> {
    std::env::var("KATAVEN_SCREENSHOT_DIR").ok().map(|dir| {
        std::path::absolute(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    })
}

/// The first hour, in a real browser against `kataven-hub dev`: the console at `/` discovers
/// the account, validates it as it is typed, signs the dev user in, renders the agents of the
/// demo account and creates one; the widget page opened by the link `dev` prints gets the
/// configuration and a guest session for the dev widget key. Both pages run under their strict
/// CSP without a violation and ask nothing of any other origin.
#[tokio::test]
async fn console_and_widget_pages_take_a_new_user_from_the_first_keystroke_to_agents_and_a_guest_session()
 {
    if !browser_available() {
        return;
    }
    let mut dev = tokio::task::spawn_blocking(DevServer::start).await.unwrap();
    let base = dev.url();
    let key = dev.secret("widget-key");
    // The link `dev` prints (checked below): the API's own origin, on the key's allowlist.
    let widget_url = format!("{base}/console/widget?client_key={key}");
    let mut envs = vec![
        ("CONSOLE_EMAIL", "admin@acme.test".to_owned()),
        ("CONSOLE_PASSWORD", dev.secret("dev-user-password")),
    ];
    if let Some(dir) = screenshot_dir() {
        envs.push(("SCREENSHOT_DIR", dir));
    }
    let run = run_script(
        "first-hour.mjs",
        vec![format!("{base}/"), widget_url.clone()],
        envs,
    )
    .await;
    let r = &run.result;

    // The console.
    assert_eq!(r["console_csp"], kataven_hub::routes::console::CSP, "{run}");
    assert_eq!(r["directory"], json!(["Acme Corp (acme)"]), "{run}");
    assert_eq!(r["status_after_acm"], "No such account", "{run}");
    assert_eq!(r["status_after_acme"], "✓ Acme Corp", "{run}");
    assert_eq!(r["heading"], "Agents of Acme Corp (acme)", "{run}");
    assert_eq!(
        r["agents"],
        json!(["Sales assistant", "Front desk"]),
        "the demo agents, newest first: {run}"
    );
    assert_eq!(
        r["agents_after_create"],
        json!(["Night shift", "Sales assistant", "Front desk"]),
        "{run}"
    );
    let shown_errors: Vec<&Value> = r["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.as_str() != Some(""))
        .collect();
    assert!(shown_errors.is_empty(), "{run}");

    // The widget page.
    assert_eq!(r["widget_csp"], kataven_hub::routes::console::CSP, "{run}");
    assert_eq!(r["widget_origin"], base.as_str(), "{run}");
    assert_eq!(r["widget_error"], "", "{run}");
    assert_eq!(r["widget_agents"], json!(["Front desk"]), "{run}");
    assert_eq!(r["widget_agent"], "Front desk", "{run}");
    assert_eq!(
        r["greeting"], "Hi, thanks for calling Acme! How can I help?",
        "{run}"
    );
    assert_eq!(r["session"], "guest session · expires in 15 min", "{run}");
    assert!(
        r["token_shown"].as_str().unwrap().starts_with("Bearer eyJ"),
        "{run}"
    );
    assert!(r["token_length"].as_u64().unwrap() > 100, "{run}");

    // Nothing but this origin; no CSP violation, no script error. The one expected failure in
    // the log is the 404 of validating "acm".
    for url in run.requests() {
        assert!(url.starts_with(&format!("{base}/")), "{url}: {run}");
    }
    let unexpected = run.unexpected_log(|l| {
        l.starts_with(
            "console.error: Failed to load resource: the server responded with a status of 404",
        )
    });
    assert!(unexpected.is_empty(), "{unexpected:?}\n{run}");
    // Validated as typed, once typing pauses (usually "acm" then "acme"; a slow machine may
    // pause earlier than the test does, so only prefixes, "acm" and finally "acme" are certain).
    let validated: Vec<&str> = run
        .requests()
        .into_iter()
        .filter_map(|u| u.split("/api/accounts/validate/").nth(1))
        .collect();
    assert!(
        validated.iter().all(|v| "acme".starts_with(v))
            && validated.contains(&"acm")
            && validated.last() == Some(&"acme"),
        "{validated:?}: {run}"
    );

    let (out, _) = tokio::task::spawn_blocking(move || dev.stop())
        .await
        .unwrap();
    assert!(out.contains(&format!("console:   {base}/ ")), "{out}");
    assert!(
        out.contains(&format!("widget page: {widget_url}\n")),
        "{out}"
    );
}

/// `/docs` renders the operations from the binary alone: every file the page loads comes from
/// the server (the browser has no network either), under both prefixes, with no CSP violation.
#[tokio::test]
async fn the_api_reference_renders_offline_from_the_binary() {
    if !browser_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let doc: Value = serde_json::from_str(kataven_hub::routes::openapi::json()).unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    for path in ["/docs", "/hub-api/docs"] {
        let mut envs = Vec::new();
        if let (Some(dir), "/docs") = (screenshot_dir(), path) {
            envs.push(("SCREENSHOT", format!("{dir}/docs.png")));
        }
        let run = run_script(
            "docs.mjs",
            vec![app.url(path), "List agents".to_owned()],
            envs,
        )
        .await;
        let r = &run.result;
        assert_eq!(r["status"], 200, "{run}");
        assert_eq!(r["title"], "Kataven Hub API 0.1.0 OAS 3.1", "{run}");
        let summaries = r["summaries"].as_array().unwrap();
        assert_eq!(summaries.len(), operations, "every operation: {run}");
        assert!(
            summaries.contains(&json!(
                "List agents, newest first, with their playbooks and FAQs."
            )),
            "{run}"
        );
        assert!(
            r["operation_ids"]
                .as_array()
                .unwrap()
                .contains(&json!("list_agents")),
            "{run}"
        );
        let prefix = path.trim_end_matches("/docs");
        for url in run.requests() {
            assert!(
                url.starts_with(&format!("{}{prefix}/", app.base)),
                "{url} is not from the server under {prefix}/: {run}"
            );
        }
        assert!(
            run.requests()
                .contains(&app.url(&format!("{prefix}/api/v1/openapi.json")).as_str()),
            "{run}"
        );
        let unexpected = run.unexpected_log(|_| false);
        assert!(unexpected.is_empty(), "{unexpected:?}\n{run}");
    }
}
