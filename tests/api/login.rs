//! The dev issuer and `POST /api/login`; `GET /api/user/org` through the issuer's userinfo.

use kataven_hub::auth::dev_issuer::upsert_dev_user;
use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::client::{Resp, second_instance, send};
use crate::support::{TestApp, unique_slug};

async fn dev_app() -> TestApp {
    TestApp::builder()
        .await
        .config(|c| c.dev_login = Some(true))
        .spawn()
        .await
}

/// A fresh account with the dev user `email` / `password` (`role`): the slug and the user's
/// subject.
async fn dev_user(app: &TestApp, email: &str, password: &str, role: Role) -> (String, String) {
    let acme = app.account_with_admin("dev", "someone-else").await;
    let subject = upsert_dev_user(
        app.state.catalog.pool(),
        &acme.slug.parse().unwrap(),
        email,
        password,
        role,
    )
    .await
    .unwrap();
    (acme.slug, subject)
}

/// `POST /api/login` with `body`.
async fn login(app: &TestApp, body: Value) -> Resp {
    send(app.client.post(app.url("/api/login")).json(&body)).await
}

/// Logs in as the dev user of `dev_user(app, "Dev@Acme.test", "s3cret-pass", Member)`:
/// the slug, the subject and the answer (asserting 200).
async fn logged_in(app: &TestApp) -> (String, String, Value) {
    let (slug, subject) = dev_user(app, "Dev@Acme.test", "s3cret-pass", Role::Member).await;
    let body = json!({ "account": slug, "email": " DEV@acme.test ", "password": "s3cret-pass" });
    let answer = login(app, body).await.ok(200).clone();
    (slug, subject, answer)
}

#[tokio::test]
async fn dev_login_refuses_a_wrong_password_or_an_unknown_email() {
    let app = dev_app().await;
    let (slug, _) = dev_user(&app, "Dev@Acme.test", "s3cret-pass", Role::Member).await;
    for (email, password) in [
        ("dev@acme.test", "wrong"),
        ("nobody@acme.test", "s3cret-pass"),
    ] {
        let body = json!({ "account": slug, "email": email, "password": password });
        login(&app, body)
            .await
            .err(401, "unauthenticated", None, email);
    }
}

#[tokio::test]
async fn dev_login_issues_an_es256_bearer_token_the_normal_validator_accepts() {
    let app = dev_app().await;
    // The email matches whatever its case and surrounding blanks.
    let (slug, _, body) = logged_in(&app).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["account"], slug.as_str());
    let token = body["token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let members = app
        .get("/api/v1/members")
        .header("X-Account-ID", slug.as_str())
        .bearer_auth(token);
    send(members).await.ok(200);
}

#[tokio::test]
async fn the_dev_issuer_serves_its_discovery_keys_and_userinfo() {
    let app = dev_app().await;
    let (_, subject, body) = logged_in(&app).await;
    let token = body["token"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();

    let discovery = send(app.get("/dev/oidc/.well-known/openid-configuration")).await;
    assert_eq!(discovery.body["issuer"], format!("{}/dev/oidc", app.base));
    let keys = send(app.get("/dev/oidc/keys")).await.body;
    assert_eq!(keys["keys"][0]["kid"], kid.as_str());
    assert!(
        keys["keys"][0].get("d").is_none(),
        "private key material published"
    );
    let info = send(app.get("/dev/oidc/userinfo").bearer_auth(token))
        .await
        .body;
    assert_eq!(info["sub"], subject.as_str());
    assert_eq!(info["email"], "dev@acme.test");
}

#[tokio::test]
async fn dev_login_refuses_bad_bodies_and_the_reserved_account() {
    let app = dev_app().await;
    let (slug, _) = dev_user(&app, "Dev@Acme.test", "s3cret-pass", Role::Member).await;
    let resp = login(&app, json!({ "account": slug })).await;
    assert_eq!((resp.status, resp.code()), (400, "invalid_body"));
    let resp = login(
        &app,
        json!({ "account": "kataven-admin", "email": "a", "password": "b" }),
    )
    .await;
    assert_eq!((resp.status, resp.code()), (403, "reserved_account"));
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
        let req = app
            .client
            .request(method, app.url(path))
            .json(&json!({ "account": "acme", "email": "a", "password": "b" }));
        assert_eq!(send(req).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn a_dev_token_is_not_trusted_by_an_instance_without_dev_login() {
    let dev = dev_app().await;
    let (slug, _) = dev_user(&dev, "a@b.test", "pw-pw-pw", Role::Admin).await;
    let body = json!({ "account": slug, "email": "a@b.test", "password": "pw-pw-pw" });
    let answer = login(&dev, body).await.ok(200).clone();

    // A production instance on the same catalog (same signing keys in the database).
    let prod = second_instance(&dev, |_| {}).await;
    let members = prod
        .get("/api/v1/members")
        .header("X-Account-ID", slug.as_str())
        .bearer_auth(answer["token"].as_str().unwrap());
    let resp = send(members).await;
    assert_eq!((resp.status, resp.code()), (401, "unauthenticated"));
}

/// Four accounts: one bound to the user's organisation, one with the user as a member, one
/// whose organisation grants the user a role, and a stranger's; the issuer's userinfo for
/// `opaque-access-token` names that user. Returns what `/api/user/org` must list.
async fn userinfo_identity(app: &TestApp) -> Value {
    let by_org = unique_slug("byorg");
    let by_member = unique_slug("bymember");
    let by_role = unique_slug("byrole");
    let p = app.provisioner();
    for (slug, name, org) in [
        (&by_org, "By Org", Some("org-1")),
        (&by_member, "By Member", None),
        (&by_role, "By Role", Some("org-7")),
        (&unique_slug("stranger"), "Stranger", Some("org-2")),
    ] {
        p.create_account(slug, name, org, None).await.unwrap();
    }
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
    let mut accounts = vec![
        json!({ "account": by_org.as_str(), "name": "By Org", "role": "member" }),
        json!({ "account": by_member.as_str(), "name": "By Member", "role": "admin" }),
        json!({ "account": by_role.as_str(), "name": "By Role", "role": "admin" }),
    ];
    accounts.sort_by(|a, b| a["account"].as_str().cmp(&b["account"].as_str()));
    Value::Array(accounts)
}

/// `GET {prefix}/api/user/org` with the bearer `token`.
async fn user_org(app: &TestApp, prefix: &str, token: &str) -> Resp {
    send(
        app.get(&format!("{prefix}/api/user/org"))
            .bearer_auth(token),
    )
    .await
}

#[tokio::test]
async fn user_org_lists_the_accounts_of_the_userinfo_identity() {
    let app = TestApp::spawn().await;
    let accounts = userinfo_identity(&app).await;
    let resp = user_org(&app, "", "opaque-access-token").await;
    let body = resp.ok(200);
    assert_eq!(body["sub"], "u-1");
    assert_eq!(body["email"], "u1@example.test");
    assert_eq!(
        body["org"],
        json!({ "id": "org-1", "name": "Org One", "primary_domain": "one.example" })
    );
    assert_eq!(body["accounts"], accounts);
}

#[tokio::test]
async fn user_org_asks_the_issuer_once_per_token() {
    let app = TestApp::spawn().await;
    userinfo_identity(&app).await;
    let first = user_org(&app, "", "opaque-access-token").await;
    for _ in 0..2 {
        let again = user_org(&app, "", "opaque-access-token").await;
        assert_eq!(again.ok(200), first.ok(200));
    }
    assert_eq!(app.issuer.userinfo_calls(), 1);
}

#[tokio::test]
async fn user_org_answers_under_hub_api_too() {
    let app = TestApp::spawn().await;
    let accounts = userinfo_identity(&app).await;
    let resp = user_org(&app, "/hub-api", "opaque-access-token").await;
    assert_eq!(resp.ok(200)["accounts"], accounts);
}

#[tokio::test]
async fn user_org_refuses_a_token_the_issuer_refuses_or_none() {
    let app = TestApp::spawn().await;
    userinfo_identity(&app).await;
    user_org(&app, "", "refused-token")
        .await
        .err(401, "unauthenticated", None, "refused token");
    assert_eq!(send(app.get("/api/user/org")).await.status, 401);
}

#[tokio::test]
async fn user_org_answers_503_with_retry_after_while_the_issuer_is_down() {
    let app = TestApp::spawn().await;
    userinfo_identity(&app).await;
    user_org(&app, "", "opaque-access-token").await.ok(200);
    // Not a 500 and not a hang (raw: the `Retry-After` header).
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
