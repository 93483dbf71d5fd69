//! JWT validation against a real (test) issuer, membership and roles, admin elevation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApp, error_code};

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
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let rsa = |claims: &Value| app.issuer.sign("rsa-1", claims);
    let valid = rsa(&good);
    let (h, p, _) = {
        let mut parts = valid.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            (),
        )
    };
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
        let evil = with(json!({ "sub": "mallory" }));
        format!(
            "{h}.{}.{}",
            URL_SAFE_NO_PAD.encode(evil.to_string()),
            valid.split('.').nth(2).unwrap()
        )
    };

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
            rsa(&with(json!({ "iss": "https://evil.example" }))),
            "wrong_issuer",
        ),
        (
            "issuer with trailing slash",
            rsa(&with(json!({ "iss": format!("{iss}/") }))),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            rsa(&with(json!({ "aud": ["someone-else"] }))),
            "wrong_audience",
        ),
        (
            "expired beyond leeway",
            rsa(&with(json!({ "exp": now() - 120 }))),
            "expired",
        ),
        (
            "not yet valid",
            rsa(&with(json!({ "nbf": now() + 120 }))),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            rsa(&with(json!({ "iat": now() + 120 }))),
            "not_yet_valid",
        ),
        (
            "no exp",
            rsa(&with(json!({ "exp": null }))),
            "missing_claim",
        ),
        (
            "no aud",
            rsa(&with(json!({ "aud": null }))),
            "missing_claim",
        ),
        (
            "no sub",
            rsa(&with(json!({ "sub": null }))),
            "missing_claim",
        ),
        ("empty sub", rsa(&with(json!({ "sub": "" }))), "empty_sub"),
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
        let metric = format!(r#"kataven_auth_failures_total{{reason="{reason}"}}"#);
        let before = app.metric(&metric).await;
        assert_eq!(
            status_with(&app, &acme.slug, token).await,
            (401, "unauthenticated".into()),
            "{name}"
        );
        assert_eq!(
            app.metric(&metric).await,
            before + 1.0,
            "{name}: reason {reason}"
        );
    }

    // Within the 60 s leeway the same kinds of token are fine.
    for (name, claims) in [
        ("expired 30 s ago", with(json!({ "exp": now() - 30 }))),
        ("valid in 30 s", with(json!({ "nbf": now() + 30 }))),
        (
            "second audience",
            with(json!({ "aud": ["other", crate::support::AUDIENCE] })),
        ),
        (
            "audience as a string",
            with(json!({ "aud": crate::support::AUDIENCE })),
        ),
    ] {
        assert_eq!(
            status_with(&app, &acme.slug, &rsa(&claims)).await.0,
            200,
            "{name}"
        );
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

#[tokio::test]
async fn organisation_and_roles_claims_grant_access_to_bound_accounts() {
    let app = TestApp::spawn().await;
    let slug = crate::support::unique_slug("org");
    app.provisioner()
        .create_account(&slug, "Org Co", Some("org-1"), None)
        .await
        .unwrap();
    let token = |patch: Value| {
        let mut claims = app.issuer.claims("zed");
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        app.issuer.sign("rsa-1", &claims)
    };
    let role_of = |resp: Value| resp["role"].as_str().unwrap().to_owned();
    let get = |token: String| {
        let req = app
            .get("/test/tenant")
            .header("X-Account-ID", slug.as_str())
            .bearer_auth(token);
        async move { req.send().await.unwrap() }
    };

    // No member row and no claims: refused.
    assert_eq!(error_code(get(token(json!({}))).await).await.1, "forbidden");
    // The user's organisation is the account's.
    let resp = get(token(
        json!({ "urn:zitadel:iam:user:resourceowner:id": "org-1" }),
    ))
    .await;
    assert_eq!(role_of(resp.json().await.unwrap()), "Member");
    // Another organisation: refused.
    let resp = get(token(
        json!({ "urn:zitadel:iam:user:resourceowner:id": "org-2" }),
    ))
    .await;
    assert_eq!(resp.status(), 403);
    // A role granted from the account's organisation.
    let resp = get(token(
        json!({ "urn:zitadel:iam:org:project:roles": { "viewer": { "org-1": "org.example" } } }),
    ))
    .await;
    assert_eq!(role_of(resp.json().await.unwrap()), "Member");
    let resp = get(token(
        json!({ "urn:zitadel:iam:org:project:roles": { "admin": { "org-1": "org.example" } } }),
    ))
    .await;
    assert_eq!(role_of(resp.json().await.unwrap()), "Admin");
    // Admin of another organisation: nothing here.
    let resp = get(token(
        json!({ "urn:zitadel:iam:org:project:roles": { "admin": { "org-2": "x.example" } } }),
    ))
    .await;
    assert_eq!(resp.status(), 403);
    // Without a configured project, a project's own roles claim grants nothing.
    let resp = get(token(
        json!({ "urn:zitadel:iam:org:project:p-1:roles": { "admin": { "org-1": "org.example" } } }),
    ))
    .await;
    assert_eq!(resp.status(), 403);
}

/// Issue 10, item 10: with `KATAVEN_OIDC_PROJECT_ID`, only that project's roles claim
/// (`urn:zitadel:iam:org:project:<id>:roles`) grants anything — in ID tokens and in the
/// userinfo answers of `/api/user/org`; the project-less claim and other projects' claims
/// grant nothing.
#[tokio::test]
async fn with_a_project_id_only_that_projects_roles_count() {
    let app = TestApp::builder()
        .await
        .config(|c| c.oidc_project_id = Some("project-1".into()))
        .spawn()
        .await;
    let slug = crate::support::unique_slug("proj");
    app.provisioner()
        .create_account(&slug, "Proj Co", Some("org-1"), None)
        .await
        .unwrap();
    const GENERIC: &str = "urn:zitadel:iam:org:project:roles";
    const OURS: &str = "urn:zitadel:iam:org:project:project-1:roles";
    const OTHER: &str = "urn:zitadel:iam:org:project:project-2:roles";
    let admin = json!({ "admin": { "org-1": "org.example" } });
    let viewer = json!({ "viewer": { "org-1": "org.example" } });
    let role_with = |claims: Vec<(&str, &Value)>| {
        let mut c = app.issuer.claims("zed");
        for (k, v) in claims {
            c[k] = v.clone();
        }
        let req = app
            .get("/test/tenant")
            .header("X-Account-ID", slug.as_str())
            .bearer_auth(app.issuer.sign("rsa-1", &c));
        async move {
            let resp = req.send().await.unwrap();
            match resp.status().as_u16() {
                200 => resp.json::<Value>().await.unwrap()["role"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                _ => error_code(resp).await.1,
            }
        }
    };
    for (name, claims, want) in [
        ("project-less claim", vec![(GENERIC, &admin)], "forbidden"),
        (
            "another project's claim",
            vec![(OTHER, &admin)],
            "forbidden",
        ),
        ("our project's admin", vec![(OURS, &admin)], "Admin"),
        ("our project's viewer", vec![(OURS, &viewer)], "Member"),
        (
            "project-less admin beside our viewer",
            vec![(GENERIC, &admin), (OURS, &viewer)],
            "Member",
        ),
    ] {
        assert_eq!(role_with(claims).await, want, "{name}");
    }

    // `/api/user/org` reads the same claims from userinfo.
    let accounts_of = |token: &'static str, claim: &str, roles: &Value| {
        app.issuer.set_userinfo(
            token,
            json!({ "sub": format!("sub-{token}"), claim: roles }),
        );
        let req = app.get("/api/user/org").bearer_auth(token);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()["accounts"].clone()
        }
    };
    assert_eq!(accounts_of("at-generic", GENERIC, &admin).await, json!([]));
    assert_eq!(accounts_of("at-other", OTHER, &admin).await, json!([]));
    assert_eq!(
        accounts_of("at-ours", OURS, &admin).await,
        json!([{ "account": slug.as_str(), "name": "Proj Co", "role": "admin" }])
    );
}

#[tokio::test]
async fn membership_changes_reach_every_instance_at_once() {
    let one = TestApp::spawn().await;
    let acme = one.account_with_admin("two", "alice").await;
    let slug: kataven_hub::tenancy::slug::AccountSlug = acme.slug.parse().unwrap();
    one.state
        .catalog
        .upsert_member(&slug, "bob", Role::Member)
        .await
        .unwrap();
    let issuer = one.issuer.issuer();
    let two = TestApp::builder()
        .await
        .database_url(&crate::support::system_url_of(&one))
        .config(|c| c.oidc_issuer = Some(issuer))
        .spawn()
        .await;

    // Warm both instances' caches.
    for app in [&one, &two] {
        let resp = app
            .get("/test/tenant")
            .header("X-Account-ID", slug.as_str())
            .bearer_auth(one.token("bob"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Removed on instance one (through the catalog, as the CLI or the API would)…
    one.state.catalog.remove_member(&slug, "bob").await.unwrap();
    // …instance two refuses promptly, long before the 30 s cache lifetime.
    let mut refused = false;
    for _ in 0..50 {
        let resp = two
            .get("/test/tenant")
            .header("X-Account-ID", slug.as_str())
            .bearer_auth(one.token("bob"))
            .send()
            .await
            .unwrap();
        if resp.status() == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "instance two still let a removed member in");

    // Suspension propagates the same way.
    one.state
        .catalog
        .set_status(
            &slug,
            kataven_hub::tenancy::catalog::AccountStatus::Suspended,
        )
        .await
        .unwrap();
    let mut suspended = false;
    for _ in 0..50 {
        let (_, code) = error_code(
            two.get("/test/tenant")
                .header("X-Account-ID", slug.as_str())
                .bearer_auth(one.token("alice"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if code == "account_suspended" {
            suspended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(suspended);
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_role_and_the_header() {
    let app = TestApp::spawn().await;
    let slug = crate::support::unique_slug("sudo");
    app.provisioner()
        .create_account(&slug, "Sudo", Some("org-9"), None)
        .await
        .unwrap();
    let s: kataven_hub::tenancy::slug::AccountSlug = slug.clone();
    app.state
        .catalog
        .upsert_member(&s, "root", Role::Admin)
        .await
        .unwrap();
    app.state
        .catalog
        .upsert_member(&s, "pleb", Role::Member)
        .await
        .unwrap();
    let claims_admin = {
        let mut c = app.issuer.claims("claimed");
        c["urn:zitadel:iam:org:project:roles"] = json!({ "admin": { "org-9": "x" } });
        app.issuer.sign("ec-1", &c)
    };

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
        let (status, code) = error_code(req.send().await.unwrap()).await;
        assert_eq!(status, want, "case {i}");
        if want == 403 {
            assert_eq!(code, "admin_required", "case {i}");
        }
    }

    // Reading members needs no elevation.
    let resp = app
        .as_user(Method::GET, "/api/v1/members", slug.as_str(), "pleb")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn members_resource_round_trip_with_last_admin_protection() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("mem", "alice").await;
    let admin = |method: Method, path: &str| {
        app.as_user(method, path, &acme.slug, "alice")
            .header("X-Admin", "true")
    };

    let resp = admin(Method::POST, "/api/v1/members")
        .json(&json!({ "subject": "bob", "role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["subject"], "bob");
    assert_eq!(body["role"], "member");
    assert!(body["created_at"].is_string());

    // The same list under every alias.
    for path in [
        "/api/v1/members",
        "/api/members",
        "/v1/members",
        "/hub-api/api/v1/members",
        "/hub-api/api/members",
        "/hub-api/v1/members",
    ] {
        let resp = app
            .as_user(Method::GET, path, &acme.slug, "bob")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let list: Value = resp.json().await.unwrap();
        let subjects: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["subject"].as_str().unwrap())
            .collect();
        assert_eq!(subjects, ["alice", "bob"], "{path}");
    }

    // Bad bodies.
    for (body, what) in [
        (json!({ "subject": "x", "role": "owner" }), "unknown role"),
        (json!({ "role": "member" }), "missing subject"),
        (json!({ "subject": 7, "role": "member" }), "wrong type"),
        (json!({ "subject": "", "role": "member" }), "empty subject"),
    ] {
        let (status, code) = error_code(
            admin(Method::POST, "/api/v1/members")
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "invalid_body"), "{what}");
    }
    let resp = admin(Method::POST, "/api/v1/members")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_body");
    let resp = admin(Method::POST, "/api/v1/members")
        .json(&json!({ "role": "member" }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("subject"),
        "{body}"
    );

    // The last admin can be neither removed nor demoted.
    let (status, code) = error_code(
        admin(Method::DELETE, "/api/v1/members/alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (409, "conflict"));
    let (status, _) = error_code(
        admin(Method::POST, "/api/v1/members")
            .json(&json!({ "subject": "alice", "role": "member" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409);
    // With a second admin, the first may go.
    admin(Method::POST, "/api/v1/members")
        .json(&json!({ "subject": "bob", "role": "admin" }))
        .send()
        .await
        .unwrap();
    let (status, _) = error_code(
        admin(Method::DELETE, "/api/v1/members/nobody")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let resp = admin(Method::DELETE, "/api/v1/members/alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // Every change is in the tenant's audit log.
    let mut conn = crate::support::tenant_conn(&acme.slug).await;
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT principal_kind, principal_id, action, resource, resource_id FROM audit_log ORDER BY at, id",
    )
    .fetch_all(&mut conn)
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
    let audience = crate::support::AUDIENCE;
    let with = |patch: Value| {
        let mut c = app.issuer.claims("alice");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
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
        let metric = format!(r#"kataven_auth_failures_total{{reason="{reason}"}}"#);
        let before = app.metric(&metric).await;
        assert_eq!(
            status_with(&app, &acme.slug, token).await,
            (401, "unauthenticated".into()),
            "{name}"
        );
        assert_eq!(
            app.metric(&metric).await,
            before + 1.0,
            "{name}: reason {reason}"
        );
    }

    // ID tokens: what Zitadel signs (`azp` and `client_id` the client, `auth_time`, `amr`,
    // `at_hash`, `sid`), an `azp` with a `jti` (other issuers), a plain `typ: JWT`.
    for (name, claims) in [
        (
            "Zitadel ID token",
            with(json!({
                "aud": [audience, "project-1"], "azp": audience, "client_id": audience,
                "auth_time": now() - 5, "amr": ["pwd"], "at_hash": "x", "sid": "s-1",
            })),
        ),
        (
            "azp with jti",
            with(json!({ "azp": audience, "jti": "id-1" })),
        ),
        ("no azp, no access-token claims", with(json!({}))),
    ] {
        assert_eq!(
            status_with(&app, &acme.slug, &app.issuer.sign("rsa-1", &claims))
                .await
                .0,
            200,
            "{name}"
        );
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
