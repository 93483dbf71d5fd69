//! JWT validation against a real (test) issuer, membership and roles, admin elevation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kataven_hub::tenancy::catalog::{AccountStatus, Role};
use kataven_hub::tenancy::slug::AccountSlug;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::client::{Client, V1, second_instance, send};
use crate::support::{AUDIENCE, TestApp, error_code, unique_slug};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token with the given header and claims and a signature that cannot be right.
fn forge(header: Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The issuer's claims for `subject` with `patch` applied (`null` removes a claim).
fn claims_with(app: &TestApp, subject: &str, patch: Value) -> Value {
    let mut claims = app.issuer.claims(subject);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// `alice`'s claims with `patch`, signed with the issuer's `rsa-1`.
fn rsa_with(app: &TestApp, patch: Value) -> String {
    app.issuer.sign("rsa-1", &claims_with(app, "alice", patch))
}

/// `GET /test/tenant` in `account` with `token` (raw: a 401 must say `WWW-Authenticate:
/// Bearer`): the status and error code.
async fn status_with(app: &TestApp, account: &str, token: &str) -> (u16, String) {
    let resp = app
        .get("/test/tenant")
        .header("X-Account-ID", account)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    if resp.status() == 401 {
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    error_code(resp).await
}

/// Asserts that `token` is refused 401 `unauthenticated` and counted once under `reason`.
async fn assert_refused(app: &TestApp, account: &str, name: &str, token: &str, reason: &str) {
    let metric = format!(r#"kataven_auth_failures_total{{reason="{reason}"}}"#);
    let before = app.metric(&metric).await;
    assert_eq!(
        status_with(app, account, token).await,
        (401, "unauthenticated".into()),
        "{name}"
    );
    assert_eq!(
        app.metric(&metric).await,
        before + 1.0,
        "{name}: reason {reason}"
    );
}

/// What `/test/tenant` in `account` makes of `token`: the role on 200, else the error code.
async fn role_or_code(app: &TestApp, account: &str, token: &str) -> String {
    let resp = send(
        app.get("/test/tenant")
            .header("X-Account-ID", account)
            .bearer_auth(token),
    )
    .await;
    match resp.status {
        200 => resp.body["role"].as_str().unwrap().to_owned(),
        _ => resp.code().to_owned(),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_the_issuer_are_accepted() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("jwt", "alice").await;
    let claims = app.issuer.claims("alice");
    for kid in ["rsa-1", "ec-1"] {
        let token = app.issuer.sign(kid, &claims);
        assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200, "{kid}");
    }
}

#[tokio::test]
async fn adversarial_tokens_are_refused_with_their_reason() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("adv", "alice").await;
    let iss = app.issuer.issuer();
    let good = app.issuer.claims("alice");
    let valid = rsa_with(&app, json!({}));
    let parts: Vec<&str> = valid.split('.').collect();
    let (h, p, signature) = (parts[0], parts[1], parts[2]);
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(app.issuer.rsa_public_pem().as_bytes()),
    )
    .unwrap();
    let tampered = {
        let evil = claims_with(&app, "alice", json!({ "sub": "mallory" }));
        format!(
            "{h}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(evil.to_string())
        )
    };
    let rsa = |patch: Value| rsa_with(&app, patch);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            forge(
                json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}),
                &good,
                "",
            ),
            "malformed_token",
        ),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
            "disallowed_alg",
        ),
        (
            "wrong issuer",
            rsa(json!({ "iss": "https://evil.example" })),
            "wrong_issuer",
        ),
        (
            "issuer with trailing slash",
            rsa(json!({ "iss": format!("{iss}/") })),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            rsa(json!({ "aud": ["someone-else"] })),
            "wrong_audience",
        ),
        (
            "expired beyond leeway",
            rsa(json!({ "exp": now() - 120 })),
            "expired",
        ),
        (
            "not yet valid",
            rsa(json!({ "nbf": now() + 120 })),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            rsa(json!({ "iat": now() + 120 })),
            "not_yet_valid",
        ),
        ("no exp", rsa(json!({ "exp": null })), "missing_claim"),
        ("no aud", rsa(json!({ "aud": null })), "missing_claim"),
        ("no sub", rsa(json!({ "sub": null })), "missing_claim"),
        ("empty sub", rsa(json!({ "sub": "" })), "empty_sub"),
        (
            "unknown kid",
            forge(json!({"alg": "RS256", "kid": "nobody"}), &good, "c2ln"),
            "unknown_kid",
        ),
        (
            "no kid",
            forge(json!({"alg": "RS256"}), &good, "c2ln"),
            "missing_kid",
        ),
        (
            "unpublished key with a published kid",
            app.issuer.sign_with_unpublished_key("rsa-1", &good),
            "bad_signature",
        ),
        (
            "RS256 header on the EC key's kid",
            app.issuer.sign_with_unpublished_key("ec-1", &good),
            "alg_mismatch",
        ),
        ("tampered payload", tampered, "bad_signature"),
        ("garbage", "garbage".into(), "malformed_token"),
        ("three garbage parts", "a.b.c".into(), "malformed_token"),
        (
            "header and payload only",
            format!("{h}.{p}"),
            "malformed_token",
        ),
    ];
    for (name, token, reason) in &cases {
        assert_refused(&app, &acme.slug, name, token, reason).await;
    }
}

#[tokio::test]
async fn tokens_within_the_leeway_or_with_our_audience_among_others_are_accepted() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("leeway", "alice").await;
    // Within the 60 s leeway the same kinds of token as above are fine.
    for (name, patch) in [
        ("expired 30 s ago", json!({ "exp": now() - 30 })),
        ("valid in 30 s", json!({ "nbf": now() + 30 })),
        ("second audience", json!({ "aud": ["other", AUDIENCE] })),
        ("audience as a string", json!({ "aud": AUDIENCE })),
    ] {
        let token = rsa_with(&app, patch);
        assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_kids_cost_at_most_one_jwks_fetch_per_cooldown() {
    const COOLDOWN_SECS: u64 = 3;
    let app = TestApp::builder()
        .await
        .config(|c| c.jwks_refresh_cooldown_secs = COOLDOWN_SECS)
        .spawn()
        .await;
    let acme = app.account_with_admin("junk", "alice").await;
    assert_eq!(
        status_with(&app, &acme.slug, &app.token("alice")).await.0,
        200
    );
    // Let the cooldown of the start-up fetch pass, so that the flood may refresh once.
    tokio::time::sleep(
        std::time::Duration::from_secs(COOLDOWN_SECS) + std::time::Duration::from_millis(200),
    )
    .await;
    let before = app.issuer.jwks_fetches();
    let discovery_before = app.issuer.discovery_fetches();

    let good = app.issuer.claims("alice");
    let statuses: Vec<u16> = futures::stream::iter(0..400)
        .map(|i| {
            let token = forge(
                json!({"alg": "RS256", "kid": format!("junk-{i}")}),
                &good,
                "c2ln",
            );
            let app = &app;
            let slug = acme.slug.clone();
            async move { status_with(app, &slug, &token).await.0 }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401));
    let fetched = app.issuer.jwks_fetches() - before;
    println!("400 junk-kid requests caused {fetched} JWKS fetch(es)");
    // One refresh (single-flight), then the cooldown refuses further ones.
    assert_eq!(fetched, 1, "{fetched} JWKS fetches for junk kids");
    assert_eq!(app.issuer.discovery_fetches(), discovery_before);
}

#[tokio::test]
async fn a_rotated_in_key_is_accepted_without_restart() {
    let app = TestApp::builder()
        .await
        .config(|c| c.jwks_refresh_cooldown_secs = 0)
        .spawn()
        .await;
    let acme = app.account_with_admin("rot", "alice").await;
    assert_eq!(
        status_with(&app, &acme.slug, &app.token("alice")).await.0,
        200
    );

    for (kid, rsa) in [("rsa-2", true), ("ec-2", false)] {
        app.issuer.rotate_in(kid, rsa);
        let token = app.issuer.sign(kid, &app.issuer.claims("alice"));
        assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200, "{kid}");
    }
    // A key the issuer withdrew stops working at the next refresh.
    app.issuer.unpublish("rsa-1");
    app.issuer.rotate_in("rsa-3", true);
    let token = app.issuer.sign("rsa-3", &app.issuer.claims("alice"));
    assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200);
    let (status, _) = status_with(&app, &acme.slug, &app.token("alice")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn cached_keys_keep_serving_while_the_issuer_is_down() {
    let app = TestApp::builder()
        .await
        .config(|c| c.jwks_refresh_cooldown_secs = 0)
        .spawn()
        .await;
    let acme = app.account_with_admin("down", "alice").await;
    assert_eq!(
        status_with(&app, &acme.slug, &app.token("alice")).await.0,
        200
    );

    app.issuer.set_down(true);
    // An unknown kid forces a refresh, which fails…
    let forged = forge(
        json!({"alg": "RS256", "kid": "new"}),
        &app.issuer.claims("alice"),
        "c2ln",
    );
    assert_eq!(status_with(&app, &acme.slug, &forged).await.0, 401);
    assert!(app.metric("kataven_jwks_fetch_failures_total").await >= 1.0);
    // …and the last good keys still verify.
    for kid in ["rsa-1", "ec-1"] {
        let token = app.issuer.sign(kid, &app.issuer.claims("alice"));
        assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200, "{kid}");
    }
    app.issuer.set_down(false);
}

/// A fresh account bound to the organisation `org-1`, with no members.
async fn org_account(app: &TestApp, prefix: &str) -> AccountSlug {
    let slug = unique_slug(prefix);
    app.provisioner()
        .create_account(&slug, &format!("{prefix} Co"), Some("org-1"), None)
        .await
        .unwrap();
    slug
}

#[tokio::test]
async fn organisation_and_roles_claims_grant_access_to_bound_accounts() {
    let app = TestApp::spawn().await;
    let slug = org_account(&app, "org").await;
    const OWNER: &str = "urn:zitadel:iam:user:resourceowner:id";
    const ROLES: &str = "urn:zitadel:iam:org:project:roles";
    for (name, claims, want) in [
        ("no member row and no claims", json!({}), "forbidden"),
        (
            "the user's organisation is the account's",
            json!({ OWNER: "org-1" }),
            "Member",
        ),
        (
            "another organisation",
            json!({ OWNER: "org-2" }),
            "forbidden",
        ),
        (
            "a role granted from the account's organisation",
            json!({ ROLES: { "viewer": { "org-1": "org.example" } } }),
            "Member",
        ),
        (
            "admin granted from the account's organisation",
            json!({ ROLES: { "admin": { "org-1": "org.example" } } }),
            "Admin",
        ),
        (
            "admin of another organisation",
            json!({ ROLES: { "admin": { "org-2": "x.example" } } }),
            "forbidden",
        ),
        // Without a configured project, a project's own roles claim grants nothing.
        (
            "a project's roles claim, no project configured",
            json!({ "urn:zitadel:iam:org:project:p-1:roles": { "admin": { "org-1": "org.example" } } }),
            "forbidden",
        ),
    ] {
        let token = app.issuer.sign("rsa-1", &claims_with(&app, "zed", claims));
        assert_eq!(
            role_or_code(&app, slug.as_str(), &token).await,
            want,
            "{name}"
        );
    }
}

const GENERIC: &str = "urn:zitadel:iam:org:project:roles";
const OURS: &str = "urn:zitadel:iam:org:project:project-1:roles";
const OTHER: &str = "urn:zitadel:iam:org:project:project-2:roles";

/// An app configured with the project `project-1`, and an account bound to `org-1`.
async fn project_app() -> (TestApp, AccountSlug) {
    let app = TestApp::builder()
        .await
        .config(|c| c.oidc_project_id = Some("project-1".into()))
        .spawn()
        .await;
    let slug = org_account(&app, "proj").await;
    (app, slug)
}

/// Issue 10, item 10: with `KATAVEN_OIDC_PROJECT_ID`, only that project's roles claim
/// (`urn:zitadel:iam:org:project:<id>:roles`) grants anything in ID tokens; the project-less
/// claim and other projects' claims grant nothing.
#[tokio::test]
async fn with_a_project_id_only_that_projects_roles_count() {
    let (app, slug) = project_app().await;
    let admin = json!({ "admin": { "org-1": "org.example" } });
    let viewer = json!({ "viewer": { "org-1": "org.example" } });
    for (name, claims, want) in [
        ("project-less claim", json!({ GENERIC: admin }), "forbidden"),
        (
            "another project's claim",
            json!({ OTHER: admin }),
            "forbidden",
        ),
        ("our project's admin", json!({ OURS: admin }), "Admin"),
        ("our project's viewer", json!({ OURS: viewer }), "Member"),
        (
            "project-less admin beside our viewer",
            json!({ GENERIC: admin, OURS: viewer }),
            "Member",
        ),
    ] {
        let token = app.issuer.sign("rsa-1", &claims_with(&app, "zed", claims));
        assert_eq!(
            role_or_code(&app, slug.as_str(), &token).await,
            want,
            "{name}"
        );
    }
}

/// Issue 10, item 10: `/api/user/org` reads the same claims from userinfo, with the same rule.
#[tokio::test]
async fn with_a_project_id_user_org_counts_only_that_projects_roles() {
    let (app, slug) = project_app().await;
    let admin = json!({ "admin": { "org-1": "org.example" } });
    for (token, claim, want) in [
        ("at-generic", GENERIC, json!([])),
        ("at-other", OTHER, json!([])),
        (
            "at-ours",
            OURS,
            json!([{ "account": slug.as_str(), "name": "proj Co", "role": "admin" }]),
        ),
    ] {
        app.issuer.set_userinfo(
            token,
            json!({ "sub": format!("sub-{token}"), claim: admin }),
        );
        let resp = send(app.get("/api/user/org").bearer_auth(token)).await;
        assert_eq!(resp.ok(200)["accounts"], want, "{claim}");
    }
}

/// Two instances of one deployment; an account with `alice` (admin) and `bob` (member) whose
/// membership both instances have cached.
async fn two_warm_instances() -> (TestApp, TestApp, AccountSlug) {
    let one = TestApp::spawn().await;
    let two = second_instance(&one, |_| {}).await;
    let alice = Client::new(&one, "two", "alice").await;
    alice.with_member("bob", Role::Member).await;
    let slug: AccountSlug = alice.account.parse().unwrap();
    for app in [&one, &two] {
        assert_eq!(
            status_with(app, slug.as_str(), &one.token("bob")).await.0,
            200
        );
    }
    (one, two, slug)
}

/// Polls `GET /test/tenant` on `app` with `token` (50 times, 20 ms apart) until the error code
/// is `code`; whether it came.
async fn comes_to(app: &TestApp, slug: &str, token: &str, code: &str) -> bool {
    for _ in 0..50 {
        if status_with(app, slug, token).await.1 == code {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_removed_member_is_refused_on_every_instance_at_once() {
    let (one, two, slug) = two_warm_instances().await;
    // Removed on instance one (through the catalog, as the CLI or the API would)…
    one.state.catalog.remove_member(&slug, "bob").await.unwrap();
    // …instance two refuses promptly, long before the 30 s cache lifetime.
    assert!(
        comes_to(&two, slug.as_str(), &one.token("bob"), "forbidden").await,
        "instance two still let a removed member in"
    );
}

#[tokio::test]
async fn a_suspension_reaches_every_instance_at_once() {
    let (one, two, slug) = two_warm_instances().await;
    one.state
        .catalog
        .set_status(&slug, AccountStatus::Suspended)
        .await
        .unwrap();
    assert!(
        comes_to(
            &two,
            slug.as_str(),
            &one.token("alice"),
            "account_suspended"
        )
        .await
    );
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_role_and_the_header() {
    let app = TestApp::spawn().await;
    let slug = unique_slug("sudo");
    app.provisioner()
        .create_account(&slug, "Sudo", Some("org-9"), None)
        .await
        .unwrap();
    let root = Client::in_account(&app, slug.as_str(), "root")
        .with_member("root", Role::Admin)
        .await;
    root.with_member("pleb", Role::Member).await;
    let claims_admin = app.issuer.sign(
        "ec-1",
        &claims_with(
            &app,
            "claimed",
            json!({ "urn:zitadel:iam:org:project:roles": { "admin": { "org-9": "x" } } }),
        ),
    );

    let cases: Vec<(String, Option<&str>, u16)> = vec![
        (app.token("root"), Some("true"), 201),
        (app.token("root"), Some("TRUE"), 201),
        (app.token("root"), None, 403),
        (app.token("root"), Some("false"), 403),
        (app.token("root"), Some("1"), 403),
        (app.token("pleb"), Some("true"), 403),
        (app.token("pleb"), None, 403),
        (claims_admin.clone(), Some("true"), 201),
        (claims_admin, None, 403),
    ];
    for (i, (token, header, want)) in cases.into_iter().enumerate() {
        let mut req = app
            .client
            .post(app.url("/api/v1/members"))
            .header("X-Account-ID", slug.as_str())
            .bearer_auth(token)
            .json(&json!({ "subject": format!("new-{i}"), "role": "member" }));
        if let Some(h) = header {
            req = req.header("X-Admin", h);
        }
        let resp = send(req).await;
        match want {
            403 => resp.err(403, "admin_required", None, &format!("case {i}")),
            _ => assert_eq!(resp.status, want, "case {i}"),
        }
    }
}

#[tokio::test]
async fn reading_members_needs_no_elevation() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "readmem", "alice").await;
    let pleb = alice.with_member("pleb", Role::Member).await;
    pleb.get("/members").await.ok(200);
}

#[tokio::test]
async fn an_elevated_admin_adds_a_member() {
    let app = TestApp::spawn().await;
    let admin = Client::new(&app, "mem", "alice").await.elevated();
    let body = admin
        .create("/members", json!({ "subject": "bob", "role": "member" }))
        .await;
    assert_eq!(body["subject"], "bob");
    assert_eq!(body["role"], "member");
    assert!(body["created_at"].is_string());
}

#[tokio::test]
async fn the_members_list_answers_under_every_alias() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "memlist", "alice").await;
    let bob = alice.with_member("bob", Role::Member).await;
    for path in [
        "/api/v1/members",
        "/api/members",
        "/v1/members",
        "/hub-api/api/v1/members",
        "/hub-api/api/members",
        "/hub-api/v1/members",
    ] {
        let resp = bob.call(Method::GET, path, None).await;
        let subjects: Vec<&str> = resp
            .ok(200)
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["subject"].as_str().unwrap())
            .collect();
        assert_eq!(subjects, ["alice", "bob"], "{path}");
    }
}

#[tokio::test]
async fn invalid_member_bodies_answer_invalid_body() {
    let app = TestApp::spawn().await;
    let admin = Client::new(&app, "memval", "alice").await.elevated();
    for (body, what) in [
        (json!({ "subject": "x", "role": "owner" }), "unknown role"),
        (json!({ "role": "member" }), "missing subject"),
        (json!({ "subject": 7, "role": "member" }), "wrong type"),
        (json!({ "subject": "", "role": "member" }), "empty subject"),
    ] {
        let resp = admin.post("/members", body).await;
        assert_eq!((resp.status, resp.code()), (400, "invalid_body"), "{what}");
    }
    let resp = send(
        admin
            .req(Method::POST, &format!("{V1}/members"))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(resp.code(), "invalid_body");
    // A missing subject is named in the message.
    let resp = admin.post("/members", json!({ "role": "member" })).await;
    let message = resp.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("subject"), "{}", resp.text);
}

#[tokio::test]
async fn the_last_admin_can_be_neither_removed_nor_demoted() {
    let app = TestApp::spawn().await;
    let admin = Client::new(&app, "lastadm", "alice").await.elevated();
    let resp = admin.delete("/members/alice").await;
    assert_eq!((resp.status, resp.code()), (409, "conflict"));
    let resp = admin
        .post("/members", json!({ "subject": "alice", "role": "member" }))
        .await;
    assert_eq!(resp.status, 409);
}

#[tokio::test]
async fn with_a_second_admin_the_first_may_go() {
    let app = TestApp::spawn().await;
    let admin = Client::new(&app, "secadm", "alice").await.elevated();
    admin
        .create("/members", json!({ "subject": "bob", "role": "admin" }))
        .await;
    assert_eq!(admin.delete("/members/nobody").await.status, 404);
    admin.delete("/members/alice").await.ok(204);
}

#[tokio::test]
async fn member_changes_and_only_they_are_audited() {
    let app = TestApp::spawn().await;
    let admin = Client::new(&app, "memaudit", "alice").await.elevated();
    admin
        .create("/members", json!({ "subject": "bob", "role": "member" }))
        .await;
    // Refused changes: not audited.
    assert_eq!(
        admin
            .post("/members", json!({ "role": "member" }))
            .await
            .status,
        400
    );
    assert_eq!(admin.delete("/members/alice").await.status, 409);
    let demote = json!({ "subject": "alice", "role": "member" });
    assert_eq!(admin.post("/members", demote).await.status, 409);
    admin
        .create("/members", json!({ "subject": "bob", "role": "admin" }))
        .await;
    assert_eq!(admin.delete("/members/nobody").await.status, 404);
    admin.delete("/members/alice").await.ok(204);

    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT principal_kind, principal_id, action, resource, resource_id FROM audit_log ORDER BY at, id",
    )
    .fetch_all(&mut admin.db().await)
    .await
    .unwrap();
    let actions: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.1.as_str(), r.2.as_str(), r.4.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        actions,
        [
            ("alice", "upsert", "bob"),
            ("alice", "upsert", "bob"),
            ("alice", "delete", "alice")
        ]
    );
    assert!(rows.iter().all(|r| r.0 == "user" && r.3 == "member"));
}

#[tokio::test]
async fn pipeline_order_holds_for_admin_routes() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("order", "alice").await;
    let post = |account: Option<&str>, token: Option<String>, admin: bool| {
        let mut req = app
            .client
            .post(app.url("/api/v1/members"))
            .json(&json!({ "subject": "x", "role": "member" }));
        if let Some(a) = account {
            req = req.header("X-Account-ID", a);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if admin {
            req = req.header("X-Admin", "true");
        }
        async move { error_code(req.send().await.unwrap()).await }
    };
    let cases = vec![
        (
            post(None, None, false).await,
            (400, "missing_account_header"),
        ),
        (
            post(Some("kataven-admin"), Some("bad".into()), true).await,
            (403, "reserved_account"),
        ),
        (
            post(Some(&acme.slug), Some("bad".into()), true).await,
            (401, "unauthenticated"),
        ),
        (
            post(Some("unknown-acct"), Some(app.token("alice")), false).await,
            (400, "invalid_account"),
        ),
        (
            post(Some(&acme.slug), Some(app.token("mallory")), true).await,
            (403, "forbidden"),
        ),
        (
            post(Some(&acme.slug), Some(app.token("alice")), false).await,
            (403, "admin_required"),
        ),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!((got.0, got.1.as_str()), want, "case {i}");
    }
}

#[tokio::test]
async fn a_remembered_verification_ends_when_the_token_expires() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("expiry", "alice").await;
    // Expired 55 s ago: still inside the 60 s leeway, for 5 more seconds.
    let mut claims = app.issuer.claims("alice");
    claims["exp"] = json!(now() - 55);
    let token = app.issuer.sign("rsa-1", &claims);
    assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200);
    assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200);
    // Once past exp + leeway, the remembered verification no longer counts.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert_eq!(
        status_with(&app, &acme.slug, &token).await,
        (401, "unauthenticated".into())
    );
}

/// Issue 10, item 6: while discovery has never succeeded and the issuer is down, a flood of
/// `GET /api/user/org` costs the issuer at most one discovery per cooldown (the single-flight
/// and cooldown of the key refresh), and every call still answers 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_org_flood_costs_at_most_one_discovery_per_cooldown_while_the_issuer_is_down() {
    const COOLDOWN_SECS: u64 = 3;
    let started = std::time::Instant::now();
    let builder = TestApp::builder()
        .await
        .config(|c| c.jwks_refresh_cooldown_secs = COOLDOWN_SECS);
    builder.issuer().set_down(true);
    let app = builder.spawn().await;

    let user_org = |token: String| {
        let req = app.get("/api/user/org").bearer_auth(token);
        async move {
            let resp = req.send().await.unwrap();
            let retry_after = resp.headers().contains_key("retry-after");
            let (status, code) = error_code(resp).await;
            (status, code, retry_after)
        }
    };
    let mut answers: Vec<(u16, String, bool)> = futures::stream::iter(0..60)
        .map(|i| user_org(format!("access-token-{i}")))
        .buffer_unordered(30)
        .collect()
        .await;
    for i in 0..20 {
        answers.push(user_org(format!("sequential-token-{i}")).await);
    }
    let elapsed = started.elapsed();
    for answer in &answers {
        assert_eq!(answer, &(503, "unavailable".to_owned(), true));
    }
    let discoveries = app.issuer.discovery_fetches();
    println!(
        "{} calls to /api/user/org in {elapsed:?} (issuer down) caused {discoveries} discovery request(s)",
        answers.len()
    );
    // The start-up refresh, plus one per cooldown the test lasted.
    let allowed = 1 + (elapsed.as_secs() / COOLDOWN_SECS) as usize;
    assert!(
        discoveries <= allowed,
        "{discoveries} discovery requests (at most {allowed} allowed)"
    );
    assert_eq!(app.issuer.userinfo_calls(), 0);

    // Back up: once the cooldown has passed, the next call discovers and is answered.
    app.issuer.set_down(false);
    app.issuer
        .set_userinfo("at-back", json!({ "sub": "u-back", "email": null }));
    tokio::time::sleep(std::time::Duration::from_millis(COOLDOWN_SECS * 1000 + 200)).await;
    let resp = app
        .get("/api/user/org")
        .bearer_auth("at-back")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sub"], "u-back");
}

/// Issue 10, item 10: tokens of the trusted issuer that are not ID tokens for this service.
/// An `azp` must be one of the configured audiences; an access token (RFC 9068 `typ`, or the
/// claims of one: `scope`, or `client_id`/`jti` without `azp`) is refused, each with its own
/// reason, whatever its valid signature, issuer and audience.
#[tokio::test]
async fn access_tokens_and_foreign_authorized_parties_are_refused() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("confuse", "alice").await;
    let audience = AUDIENCE;
    let with = |patch: Value| claims_with(&app, "alice", patch);
    // What Zitadel signs as a JWT access token: `jti`, `nbf`, the project and client in `aud`,
    // no `azp`; `typ` is "JWT".
    let zitadel_access_token = with(json!({
        "aud": [audience, "project-1"], "jti": "at-1", "nbf": now(),
    }));
    let refused: Vec<(&str, String, &str)> = vec![
        (
            "azp of another client",
            app.issuer
                .sign("rsa-1", &with(json!({ "azp": "another-client" }))),
            "azp_mismatch",
        ),
        (
            "azp of another client, ES256",
            app.issuer.sign(
                "ec-1",
                &with(json!({ "azp": "another-client", "client_id": "another-client" })),
            ),
            "azp_mismatch",
        ),
        (
            "typ at+jwt",
            app.issuer.sign_typed("rsa-1", "at+jwt", &with(json!({}))),
            "access_token",
        ),
        (
            "typ application/at+jwt",
            app.issuer
                .sign_typed("rsa-1", "application/at+jwt", &with(json!({}))),
            "access_token",
        ),
        (
            "typ AT+JWT",
            app.issuer
                .sign_typed("ec-1", "AT+JWT", &with(json!({ "azp": audience }))),
            "access_token",
        ),
        (
            "scope claim",
            app.issuer.sign(
                "rsa-1",
                &with(json!({ "scope": "openid profile", "azp": audience })),
            ),
            "access_token",
        ),
        (
            "Zitadel JWT access token",
            app.issuer.sign("rsa-1", &zitadel_access_token),
            "access_token",
        ),
        (
            "RFC 9068 claims without azp",
            app.issuer.sign(
                "rsa-1",
                &with(json!({ "client_id": audience, "jti": "at-2" })),
            ),
            "access_token",
        ),
    ];
    for (name, token, reason) in &refused {
        assert_refused(&app, &acme.slug, name, token, reason).await;
    }
}

/// Issue 10, item 10: the ID tokens beside those access tokens are accepted: what Zitadel
/// signs (`azp` and `client_id` the client, `auth_time`, `amr`, `at_hash`, `sid`), an `azp`
/// with a `jti` (other issuers), a plain `typ: JWT`.
#[tokio::test]
async fn id_tokens_with_our_authorized_party_or_none_are_accepted() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("idtoken", "alice").await;
    for (name, patch) in [
        (
            "Zitadel ID token",
            json!({
                "aud": [AUDIENCE, "project-1"], "azp": AUDIENCE, "client_id": AUDIENCE,
                "auth_time": now() - 5, "amr": ["pwd"], "at_hash": "x", "sid": "s-1",
            }),
        ),
        ("azp with jti", json!({ "azp": AUDIENCE, "jti": "id-1" })),
        ("no azp, no access-token claims", json!({})),
    ] {
        let token = rsa_with(&app, patch);
        assert_eq!(status_with(&app, &acme.slug, &token).await.0, 200, "{name}");
    }
}

/// Issue 10, item 10: `/api/user/org` never hands this service's own credentials to the
/// issuer's userinfo endpoint — `sk_live_` API keys, `pk_live_` widget keys, widget user tokens
/// (`ut_`) and widget session tokens (this service's `iss`, audience `kataven-widget`): they
/// are refused here, 401, before any outbound request.
#[tokio::test]
async fn user_org_never_forwards_this_services_credentials_to_the_issuer() {
    use kataven_hub::auth::keys::{new_widget_key, random_secret};
    use kataven_hub::auth::widget_session::SessionKind;

    let app = TestApp::spawn().await;
    // Discovery done and userinfo reachable: any later request at the issuer would be ours.
    app.issuer.set_userinfo("at-ok", json!({ "sub": "u-ok" }));
    let resp = app
        .get("/api/user/org")
        .bearer_auth("at-ok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let before = app.issuer.requests();

    let api_key = app.state.api_keys.hasher().new_api_key("acme");
    let session = app
        .state
        .widget
        .sessions
        .mint(
            "acme",
            uuid::Uuid::now_v7(),
            SessionKind::Guest,
            "guest:g-1".into(),
            uuid::Uuid::now_v7(),
        )
        .unwrap()
        .0;
    let credentials = [
        ("API key", api_key.clone()),
        (
            "API key, upper-case prefix",
            api_key.replacen("sk_live_", "SK_LIVE_", 1),
        ),
        ("malformed API key", "sk_live_x".to_owned()),
        ("widget key", new_widget_key("acme")),
        ("widget user token", random_secret("ut_", 40)),
        ("widget session token", session),
    ];
    let metric = r#"kataven_auth_failures_total{reason="local_credential"}"#;
    for (name, token) in &credentials {
        let counted = app.metric(metric).await;
        let resp = app
            .get("/api/user/org")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer", "{name}");
        assert_eq!(
            error_code(resp).await,
            (401, "unauthenticated".to_owned()),
            "{name}"
        );
        assert_eq!(app.metric(metric).await, counted + 1.0, "{name}");
    }
    assert_eq!(
        app.issuer.requests(),
        before,
        "the issuer received a request"
    );
}
