//! The OpenAPI document: committed, served, and in agreement with the router.

use serde_json::Value;

use crate::support::TestApp;

const COMMITTED: &str = include_str!("../../openapi/openapi.json");

#[test]
fn the_committed_document_is_current() {
    let generated = kataven_hub::routes::openapi::json();
    if generated != COMMITTED {
        panic!(
            "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
        );
    }
    let doc: Value = serde_json::from_str(generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Generated clients need unique operation ids.
    let mut ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "duplicate operationId");
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), op));
        }
    }
    out
}

/// Protected operations need an account and a credential: their security requirements are not
/// the empty one that public operations declare.
fn is_protected(op: &Value) -> bool {
    op["security"]
        .as_array()
        .is_some_and(|reqs| reqs.iter().any(|r| r.get("account").is_some()))
}

/// A concrete path for a templated one.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "00000000-0000-7000-8000-000000000000"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the router has a route for `method path` (our fallbacks say "no such route" and
/// answer 405 for a wrong method).
async fn routed(app: &TestApp, method: &str, path: &str) -> bool {
    let resp = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    !(status == 405 || (status == 404 && body["error"]["message"] == "no such route"))
}

#[tokio::test]
async fn every_documented_operation_is_routed_under_every_prefix() {
    let app = TestApp::builder()
        .await
        .config(|c| c.dev_login = Some(true))
        .spawn()
        .await;
    let doc: Value = serde_json::from_str(COMMITTED).unwrap();
    for (method, path, op) in operations(&doc) {
        let path = concrete(&path);
        let mut variants = vec![path.clone()];
        // The protected resources also answer at the `/api` and `/v1` aliases.
        if let Some(rest) = path.strip_prefix("/api/v1/") {
            if is_protected(op) {
                variants.push(format!("/api/{rest}"));
                variants.push(format!("/v1/{rest}"));
            }
        }
        let hub: Vec<String> = variants.iter().map(|p| format!("/hub-api{p}")).collect();
        variants.extend(hub);
        for p in variants {
            assert!(
                routed(&app, &method, &p).await,
                "{method} {p} is documented but not routed"
            );
        }
    }
}

/// Every endpoint the product contract names is routed, and documented.
#[tokio::test]
async fn every_endpoint_of_the_contract_is_routed_and_documented() {
    let app = TestApp::builder()
        .await
        .config(|c| c.dev_login = Some(true))
        .spawn()
        .await;
    let doc: Value = serde_json::from_str(COMMITTED).unwrap();
    let documented: Vec<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let contract = [
        ("GET", "/api/accounts"),
        ("GET", "/api/accounts/validate/{account}"),
        ("POST", "/api/login"),
        ("GET", "/api/user/org"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/api/v1/agents"),
        ("POST", "/api/v1/agents"),
        ("GET", "/api/v1/agents/{id}"),
        ("PATCH", "/api/v1/agents/{id}"),
        ("DELETE", "/api/v1/agents/{id}"),
        ("GET", "/api/v1/agents/{id}/tools"),
        ("POST", "/api/v1/agents/{id}/tools"),
        ("PUT", "/api/v1/agents/{id}/tools"),
        ("POST", "/api/v1/agents/{id}/playbooks"),
        ("DELETE", "/api/v1/agents/{id}/playbooks/{playbook_id}"),
        ("POST", "/api/v1/agents/{id}/faqs"),
        ("DELETE", "/api/v1/agents/{id}/faqs/{faq_id}"),
        ("GET", "/api/v1/playbooks"),
        ("POST", "/api/v1/playbooks"),
        ("GET", "/api/v1/playbooks/{id}"),
        ("PATCH", "/api/v1/playbooks/{id}"),
        ("DELETE", "/api/v1/playbooks/{id}"),
        ("GET", "/api/v1/faqs"),
        ("POST", "/api/v1/faqs"),
        ("GET", "/api/v1/faqs/{id}"),
        ("PATCH", "/api/v1/faqs/{id}"),
        ("DELETE", "/api/v1/faqs/{id}"),
        ("GET", "/api/v1/tools"),
        ("POST", "/api/v1/tools"),
        ("GET", "/api/v1/tools/{id}"),
        ("PATCH", "/api/v1/tools/{id}"),
        ("DELETE", "/api/v1/tools/{id}"),
        ("GET", "/api/v1/call-limits"),
        ("GET", "/api/v1/members"),
        ("POST", "/api/v1/members"),
        ("DELETE", "/api/v1/members/{subject}"),
    ];
    for (method, path) in contract {
        assert!(
            documented.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is not documented"
        );
        assert!(
            routed(&app, method, &concrete(path)).await,
            "{method} {path} is not routed"
        );
    }
}

#[tokio::test]
async fn the_document_and_the_reference_are_served() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/openapi.json", "/hub-api/api/v1/openapi.json"] {
        let resp = app.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.text().await.unwrap(), COMMITTED);
    }
    for path in ["/docs", "/hub-api/docs"] {
        let resp = app.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = resp.text().await.unwrap();
        // Relative, so that they resolve under both prefixes.
        assert!(html.contains(r#"<script src="docs/swagger-ui-bundle.js">"#));
        // Swagger UI's files come from the binary; its settings name the document relatively.
        let prefix = path.trim_end_matches("/docs");
        let resp = app
            .get(&format!("{prefix}/docs/swagger-initializer.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let js = resp.text().await.unwrap();
        assert!(js.contains(r#""url": "api/v1/openapi.json""#), "{js}");
        assert!(js.contains(r#""validatorUrl": "none""#), "{js}");
        let resp = app
            .get(&format!("{prefix}/docs/swagger-ui-bundle.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap().len() > 100_000);
        // `/docs/` leads to `/docs`, staying under the prefix.
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(app.url(&format!("{prefix}/docs/")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(resp.headers()["location"], "../docs");
    }
    let resp = app.get("/docs/nothing.js").send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[test]
fn protected_operations_declare_security_and_errors() {
    let doc: Value = serde_json::from_str(COMMITTED).unwrap();
    for scheme in ["bearer", "api_key", "account", "admin"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    let protected: Vec<_> = operations(&doc)
        .into_iter()
        .filter(|(_, _, op)| is_protected(op))
        .collect();
    assert!(
        protected.len() >= 40,
        "only {} protected operations",
        protected.len()
    );
    for (method, path, op) in protected {
        assert!(
            path.starts_with("/api/v1/") && !path.starts_with("/api/v1/widget/"),
            "{method} {path}"
        );
        {
            for status in ["400", "401", "403", "404", "429", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
    let admin = &doc["paths"]["/api/v1/members"]["post"]["security"];
    assert_eq!(
        admin,
        &serde_json::json!([{ "bearer": [], "account": [], "admin": [] }])
    );
}

/// The document's admin marks are exactly the operations the extractors guard: a member of the
/// account who asks for elevation (`X-Admin: true`) is refused with `admin_required` by every
/// operation whose security names `admin`, and by no other.
#[tokio::test]
async fn admin_marks_match_the_operations_that_refuse_non_admins() {
    let app = TestApp::spawn().await;
    let account = app.account_with_admin("marks", "alice").await;
    app.state
        .catalog
        .upsert_member(
            &account.slug.parse().unwrap(),
            "bob",
            kataven_hub::tenancy::catalog::Role::Member,
        )
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(COMMITTED).unwrap();
    let mut checked = 0;
    for (method, path, op) in operations(&doc) {
        let Some(path) = path.strip_prefix("/api/v1") else {
            continue;
        };
        if path.starts_with("/widget/") || !op["security"].is_array() {
            continue;
        }
        let admin = op["security"]
            .as_array()
            .unwrap()
            .iter()
            .any(|requirement| requirement.get("admin").is_some());
        // Any id will do: the caller is refused (or not) before the path names anything.
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "00000000-0000-7000-8000-000000000000"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let resp = app
            .as_user(
                method.parse().unwrap(),
                &format!("/api/v1{concrete}"),
                &account.slug,
                "bob",
            )
            .header("X-Admin", "true")
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let (status, code) = crate::support::error_code(resp).await;
        let refused = (status, code.as_str()) == (403, "admin_required");
        assert_eq!(refused, admin, "{method} {path}: {status} {code}");
        checked += 1;
    }
    assert!(checked > 40, "only {checked} operations checked");
}
