//! A typed client generated from the committed OpenAPI document, used for real
//! (`tests/client/`): `openapi-typescript` turns `openapi/openapi.json` into TypeScript types,
//! `tsc` type-checks a program that uses them through `openapi-fetch`, and the program runs
//! against this app: agent CRUD, and typed 400, 404 and 429 errors.
//!
//! Needs Node.js; the packages in `tests/client/node_modules` are installed on first use
//! (`npm ci`, [`crate::support::npm`]). Missing either fails the test, unless
//! `KATAVEN_SKIP_CLIENT_TESTS=1` opts out explicitly (CI never sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use kataven_hub::tenancy::slug::AccountSlug;
use serde_json::Value;

use crate::support::TestApp;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client")
}

/// `true` when the test can run; `false` when it may be skipped (explicitly only).
fn client_available() -> bool {
    let mut missing = Vec::new();
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("Node.js (`node` on PATH)".to_owned());
    }
    if let Err(e) = crate::support::npm::ensure_installed(&client_dir()) {
        missing.push(e);
    }
    for package in ["openapi-typescript", "openapi-fetch", "typescript"] {
        let manifest = client_dir().join(format!("node_modules/{package}/package.json"));
        if !manifest.is_file() {
            missing.push(package.to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("KATAVEN_SKIP_CLIENT_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "KATAVEN_SKIP_CLIENT_TESTS=1: skipping the typed client test (missing: {})",
            missing.join(", ")
        );
        return false;
    }
    panic!(
        "the typed client test needs {}.\n\
         Run `.ci/run`, or `npm ci --prefix tests/client`.\n\
         To skip it explicitly, set KATAVEN_SKIP_CLIENT_TESTS=1.",
        missing.join(", ")
    );
}

/// `npm run <script>` in `tests/client`; returns its stdout, or fails with everything it said.
fn npm(script: &str, envs: &[(&str, &str)]) -> String {
    let out = Command::new("npm")
        .args(["run", "--silent", script])
        .envs(envs.iter().copied())
        .current_dir(client_dir())
        .output()
        .unwrap_or_else(|e| panic!("npm run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "npm run {script} failed ({})\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_client_generated_from_the_document_type_checks_and_works() {
    if !client_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let subject = "typed-client";
    let account = app.account_with_admin("client", subject).await;
    let limited = app.account_with_admin("client-limited", subject).await;
    app.state
        .catalog
        .set_limit(
            &AccountSlug::parse(&limited.slug).unwrap(),
            "per_minute",
            Some(1),
        )
        .await
        .unwrap();
    let token = app.token(subject);
    let base = app.base.clone();
    let (account, limited) = (account.slug.to_string(), limited.slug.to_string());

    let summary = tokio::task::spawn_blocking(move || {
        // The types come from the committed document (the openapi tests keep it current).
        npm("generate", &[]);
        // Type errors fail here (`noEmitOnError`): what `tsc --noEmit` checks, plus the output.
        npm("build", &[]);
        npm(
            "start",
            &[
                ("HUB_URL", &base),
                ("HUB_TOKEN", &token),
                ("HUB_ACCOUNT", &account),
                ("HUB_LIMITED_ACCOUNT", &limited),
            ],
        )
    })
    .await
    .unwrap();
    let summary: Value = serde_json::from_str(summary.trim())
        .unwrap_or_else(|e| panic!("the client's summary is not JSON ({e}): {summary}"));
    assert_eq!(summary["created"]["category"], "custom", "{summary}");
    assert_eq!(summary["patched"]["status"], "paused", "{summary}");
    assert_eq!(summary["tool"]["config"]["queue"], "support", "{summary}");
    assert_eq!(
        summary["invalid"]["field"], "background_audio_volume",
        "{summary}"
    );
    assert_eq!(summary["deleted"]["then"], "not_found", "{summary}");
    assert_eq!(summary["rate_limited"]["code"], "rate_limited", "{summary}");
    assert_eq!(summary["rate_limited"]["limit"], "minute", "{summary}");
}
