//! The dev issuer and `POST /api/login`; `GET /api/user/org` through the issuer's userinfo.

use kataven_hub::auth::dev_issuer::upsert_dev_user;
use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApp, error_code, unique_slug};

async fn dev_app() -> TestApp {
    TestApp::builder()
        .await
        .config(|c| c.dev_login = Some(true))
        .spawn()
        .await
}

#[tokio::test]
async fn dev_login_issues_tokens_the_normal_validator_accepts() {
    let app = dev_app().await;
    let acme = app.account_with_admin("dev", "someone-else").await;
    let slug = acme.slug.parse().unwrap();
    let subject = upsert_dev_user(
        app.state.catalog.pool(),
        &slug,
        "Dev@Acme.test",
        "s3cret-pass",
        Role::Member,
    )
    .await
    .unwrap();

    let login = |email: &str, password: &str| {
        app.client
            .post(app.url("/api/login"))
            .json(&json!({ "account": acme.slug, "email": email, "password": password }))
            .send()
    };
    for (email, password) in [
        ("dev@acme.test", "wrong"),
        ("nobody@acme.test", "s3cret-pass"),
    ] {
        let (status, code) = error_code(login(email, password).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (401, "unauthenticated"), "{email}");
    }
    let resp = login(" DEV@acme.test ", "s3cret-pass").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["account"], acme.slug.as_str());
    let token = body["token"].as_str().unwrap();

    // The token is an ES256 ID token of `<public url>/dev/oidc`, accepted by the pipeline.
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let resp = app
        .get("/api/v1/members")
        .header("X-Account-ID", acme.slug.as_str())
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Its discovery, keys and userinfo are served.
    let discovery: Value = app
        .get("/dev/oidc/.well-known/openid-configuration")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], format!("{}/dev/oidc", app.base));
    let keys: Value = app
        .get("/dev/oidc/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["keys"][0]["kid"], header.kid.unwrap().as_str());
    assert!(
        keys["keys"][0].get("d").is_none(),
        "private key material published"
    );
    let info: Value = app
        .get("/dev/oidc/userinfo")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], subject.as_str());
    assert_eq!(info["email"], "dev@acme.test");

    // Bad bodies and slugs.
    let (status, code) = error_code(
        app.client
            .post(app.url("/api/login"))
            .json(&json!({ "account": acme.slug }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_body"));
    let (status, code) = error_code(
        app.client
            .post(app.url("/api/login"))
            .json(&json!({ "account": "kataven-admin", "email": "a", "password": "b" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "reserved_account"));
}

#[tokio::test]
async fn dev_login_and_the_dev_issuer_are_absent_by_default() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        (Method::POST, "/api/login"),
        (Method::GET, "/dev/oidc/.well-known/openid-configuration"),
        (Method::GET, "/dev/oidc/keys"),
        (Method::GET, "/dev/oidc/userinfo"),
        (Method::POST, "/hub-api/api/login"),
    ] {
        let resp = app
            .client
            .request(method, app.url(path))
            .json(&json!({ "account": "acme", "email": "a", "password": "b" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn a_dev_token_is_not_trusted_by_an_instance_without_dev_login() {
    let dev = dev_app().await;
    let acme = dev.account_with_admin("devtrust", "x").await;
    let slug = acme.slug.parse().unwrap();
    upsert_dev_user(
        dev.state.catalog.pool(),
        &slug,
        "a@b.test",
        "pw-pw-pw",
        Role::Admin,
    )
    .await
    .unwrap();
    let body: Value = dev
        .client
        .post(dev.url("/api/login"))
        .json(&json!({ "account": acme.slug, "email": "a@b.test", "password": "pw-pw-pw" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["token"].as_str().unwrap();

    // A production instance on the same catalog (same signing keys in the database).
    let prod = TestApp::builder()
        .await
        .database_url(&crate::support::system_url_of(&dev))
        .spawn()
        .await;
    let (status, code) = error_code(
        prod.get("/api/v1/members")
            .header("X-Account-ID", acme.slug.as_str())
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
}

#[tokio::test]
async fn user_org_lists_the_accounts_of_the_userinfo_identity() {
    let app = TestApp::spawn().await;
    let by_org = unique_slug("byorg");
    let by_member = unique_slug("bymember");
    let by_role = unique_slug("byrole");
    let stranger = unique_slug("stranger");
    let p = app.provisioner();
    p.create_account(&by_org, "By Org", Some("org-1"), None)
        .await
        .unwrap();
    p.create_account(&by_member, "By Member", None, None)
        .await
        .unwrap();
    p.create_account(&by_role, "By Role", Some("org-7"), None)
        .await
        .unwrap();
    p.create_account(&stranger, "Stranger", Some("org-2"), None)
        .await
        .unwrap();
    app.state
        .catalog
        .upsert_member(&by_member, "u-1", Role::Admin)
        .await
        .unwrap();

    app.issuer.set_userinfo(
        "opaque-access-token",
        json!({
            "sub": "u-1",
            "email": "u1@example.test",
            "urn:zitadel:iam:user:resourceowner:id": "org-1",
            "urn:zitadel:iam:user:resourceowner:name": "Org One",
            "urn:zitadel:iam:user:resourceowner:primary_domain": "one.example",
            "urn:zitadel:iam:org:project:roles": { "admin": { "org-7": "seven.example" } },
        }),
    );
    for _ in 0..3 {
        let resp = app
            .get("/api/user/org")
            .bearer_auth("opaque-access-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["sub"], "u-1");
        assert_eq!(body["email"], "u1@example.test");
        assert_eq!(
            body["org"],
            json!({ "id": "org-1", "name": "Org One", "primary_domain": "one.example" })
        );
        let mut expected = vec![
            json!({ "account": by_org.as_str(), "name": "By Org", "role": "member" }),
            json!({ "account": by_member.as_str(), "name": "By Member", "role": "admin" }),
            json!({ "account": by_role.as_str(), "name": "By Role", "role": "admin" }),
        ];
        expected.sort_by(|a, b| a["account"].as_str().cmp(&b["account"].as_str()));
        assert_eq!(body["accounts"], Value::Array(expected));
    }
    // Cached by token: the issuer was asked once.
    assert_eq!(app.issuer.userinfo_calls(), 1);

    // Under /hub-api too.
    let resp = app
        .get("/hub-api/api/user/org")
        .bearer_auth("opaque-access-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (status, code) = error_code(
        app.get("/api/user/org")
            .bearer_auth("refused-token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    let (status, _) = error_code(app.get("/api/user/org").send().await.unwrap()).await;
    assert_eq!(status, 401);

    // The issuer down: 503 with Retry-After, not a 500 and not a hang.
    app.issuer.set_down(true);
    let resp = app
        .get("/api/user/org")
        .bearer_auth("another-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
}
