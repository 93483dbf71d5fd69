//! The dev console's pages over plain HTTP: routed only with dev login, under both mount
//! points, with their CSP; not in the OpenAPI document. (`browser.rs` drives them in Chromium.)

use serde_json::Value;

use crate::support::TestApp;

#[tokio::test]
async fn without_dev_login_the_console_is_an_unknown_route() {
    let app = TestApp::spawn().await;
    for path in ["/", "/console/widget", "/console/console.js", "/hub-api"] {
        let resp = app.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
        assert_eq!(body["error"]["message"], "no such route", "{path}");
    }
}

#[tokio::test]
async fn with_dev_login_the_console_pages_are_served_with_a_strict_csp() {
    let app = TestApp::builder()
        .await
        .config(|c| c.dev_login = Some(true))
        .spawn()
        .await;
    let csp = kataven_hub::routes::console::CSP;
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    for (path, content_type, base) in [
        ("/", "text/html; charset=utf-8", Some("/")),
        ("/console/widget", "text/html; charset=utf-8", Some("/")),
        ("/hub-api", "text/html; charset=utf-8", Some("/hub-api/")),
        (
            "/hub-api/console/widget",
            "text/html; charset=utf-8",
            Some("/hub-api/"),
        ),
        (
            "/console/console.js",
            "text/javascript; charset=utf-8",
            None,
        ),
        ("/console/widget.js", "text/javascript; charset=utf-8", None),
        ("/console/common.js", "text/javascript; charset=utf-8", None),
        ("/console/console.css", "text/css; charset=utf-8", None),
        (
            "/hub-api/console/console.css",
            "text/css; charset=utf-8",
            None,
        ),
    ] {
        let resp = app.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], content_type, "{path}");
        assert_eq!(resp.headers()["content-security-policy"], csp, "{path}");
        assert_eq!(
            resp.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
        let text = resp.text().await.unwrap();
        if let Some(base) = base {
            // Relative URLs resolve under the mount point the page was opened at.
            assert!(
                text.contains(&format!(r#"<base href="{base}">"#)),
                "{path}: {text}"
            );
            // Nothing inline for the CSP to refuse.
            assert!(
                !text.contains("<script>") && !text.contains("style="),
                "{path}"
            );
        }
    }
    let resp = app.get("/console/other.js").send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Pages, not API: not in the document.
    let doc: Value = serde_json::from_str(kataven_hub::routes::openapi::json()).unwrap();
    for path in ["/", "/console/widget", "/console/{file}"] {
        assert!(doc["paths"].get(path).is_none(), "{path} is documented");
    }
}
