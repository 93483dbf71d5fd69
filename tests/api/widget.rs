//! Widget keys, widget settings and the public widget endpoints (SPEC §5): allowlists, guest
//! and user sessions, refresh, CORS, abuse limits.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kataven_hub::auth::membership::CatalogChange;
use kataven_hub::tenancy::catalog::{AccountStatus, Role};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, error_code, from_client, system_url_of};

/// The page the widget runs on in most tests (allowlist `acme.com`).
const SITE: &str = "https://acme.com";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An account with `alice` as admin and `bob` as a plain member.
async fn account(app: &TestApp, prefix: &str) -> String {
    let account = app.account_with_admin(prefix, "alice").await;
    app.state
        .catalog
        .upsert_member(&account.slug.parse().unwrap(), "bob", Role::Member)
        .await
        .unwrap();
    account.slug
}

/// Creates an agent as alice; returns its id.
async fn agent(app: &TestApp, slug: &str, body: Value) -> String {
    let resp = app
        .as_user(Method::POST, "/api/v1/agents", slug, "alice")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "creating agent {body}");
    let agent: Value = resp.json().await.unwrap();
    agent["id"].as_str().unwrap().to_owned()
}

/// An active, public agent: the widget offers it to guests and users.
async fn public_agent(app: &TestApp, slug: &str, name: &str) -> String {
    agent(
        app,
        slug,
        json!({ "name": name, "status": "active", "auth_mode": "public", "greeting_message": format!("Hi from {name}") }),
    )
    .await
}

/// Creates a widget key as alice.
async fn widget_key(app: &TestApp, slug: &str, allowlist: &[&str], pin: Option<&str>) -> Value {
    let resp = app
        .as_user(Method::POST, "/api/v1/widget-keys", slug, "alice")
        .json(&json!({ "name": "site", "domain_allowlist": allowlist, "agent_id": pin }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

fn key_of(created: &Value) -> String {
    created["key"].as_str().unwrap().to_owned()
}

fn id_of(created: &Value) -> String {
    created["id"].as_str().unwrap().to_owned()
}

/// Creates an `sk_live_` API key as alice (admin, elevated).
async fn api_key(app: &TestApp, slug: &str) -> String {
    let resp = app
        .as_user(Method::POST, "/api/v1/api-keys", slug, "alice")
        .header("X-Admin", "true")
        .json(&json!({ "name": "backend" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    created["key"].as_str().unwrap().to_owned()
}

/// The config URL with its query string.
fn config_url(app: &TestApp, query: &[(&str, &str)]) -> url::Url {
    url::Url::parse_with_params(&app.url("/api/v1/widget/config"), query).unwrap()
}

/// `GET /api/v1/widget/config` from `origin`.
async fn config(app: &TestApp, origin: &str, key: &str, agent: Option<&str>) -> reqwest::Response {
    let mut query = vec![("client_key", key)];
    if let Some(agent) = agent {
        query.push(("agent_id", agent));
    }
    app.client
        .get(config_url(app, &query))
        .header("Origin", origin)
        .send()
        .await
        .unwrap()
}

/// A public widget POST from `origin`.
async fn widget_post(app: &TestApp, path: &str, origin: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("Origin", origin)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn guest(app: &TestApp, origin: &str, key: &str, agent: Option<&str>) -> reqwest::Response {
    widget_post(
        app,
        "/api/v1/widget/auth/guest",
        origin,
        json!({ "client_key": key, "agent_id": agent }),
    )
    .await
}

/// A guest session token (asserting success).
async fn guest_token(app: &TestApp, key: &str, agent: Option<&str>) -> String {
    let resp = guest(app, SITE, key, agent).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn user_token_resp(app: &TestApp, sk: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/widget/auth/user-token"))
        .bearer_auth(sk)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A single-use user token minted with `sk` (asserting success).
async fn user_token(app: &TestApp, sk: &str, external: &str, agent: Option<&str>) -> String {
    let resp = user_token_resp(
        app,
        sk,
        json!({ "external_user_id": external, "display_name": "Jo", "email": "jo@example.com", "agent_id": agent }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    body["user_token"].as_str().unwrap().to_owned()
}

async fn exchange(app: &TestApp, origin: &str, key: &str, token: &str) -> reqwest::Response {
    widget_post(
        app,
        "/api/v1/widget/auth/exchange",
        origin,
        json!({ "client_key": key, "user_token": token }),
    )
    .await
}

async fn refresh(app: &TestApp, origin: &str, token: &str) -> reqwest::Response {
    widget_post(
        app,
        "/api/v1/widget/auth/refresh",
        origin,
        json!({ "token": token }),
    )
    .await
}

/// Refreshes `token` (asserting success) and returns the new token: each token refreshes once.
async fn refreshed(app: &TestApp, origin: &str, token: &str) -> String {
    let resp = refresh(app, origin, token).await;
    assert_eq!(resp.status(), 200, "refresh from {origin}");
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// The claims of a session token, verified the way the voice gateway would: with the key the
/// token's `kid` names in `/.well-known/jwks.json`, ES256, our issuer and audience.
async fn verify_session(app: &TestApp, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let kid = header.kid.expect("session tokens name their key");
    let jwks: JwkSet = app
        .get("/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["kataven-widget"]);
    validation.set_issuer(&[&app.base]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("a valid session token")
        .claims
}

/// The session signing key currently in use (newest, not retired), read from the system DB.
async fn signing_key(app: &TestApp) -> (String, String) {
    sqlx::query_as(
        "SELECT kid, private_pem FROM signing_keys
         WHERE purpose = 'widget_session' AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(app.state.catalog.pool())
    .await
    .unwrap()
}

fn sign(kid: &str, pem: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A PEM of a fresh P-256 key that the service has never seen.
fn foreign_pem() -> String {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}

async fn set_policy(app: &TestApp, slug: &str, agent: &str, body: Value) {
    let resp = app
        .as_user(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}/widget-settings"),
            slug,
            "alice",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "policy {body}");
}

async fn patch_agent(app: &TestApp, slug: &str, agent: &str, body: Value) {
    let resp = app
        .as_user(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            slug,
            "alice",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "agent {body}");
}

async fn patch_widget_key(app: &TestApp, slug: &str, id: &str, body: Value) -> reqwest::Response {
    app.as_user(
        Method::PATCH,
        &format!("/api/v1/widget-keys/{id}"),
        slug,
        "alice",
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

async fn list_widget_keys(app: &TestApp, slug: &str, subject: &str) -> Vec<Value> {
    let resp = app
        .as_user(Method::GET, "/api/v1/widget-keys", slug, subject)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Status, error code and error field of an error answer.
async fn error_field(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or("<none>").to_owned();
    (
        status,
        text(&body["error"]["code"]),
        text(&body["error"]["field"]),
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---------------------------------------------------------------------------------------------
// 1. Widget keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn widget_keys_are_shown_once_normalised_and_managed_by_any_member() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "wk_crud").await;
    let pinned = public_agent(&app, &slug, "Front desk").await;

    // A plain member (not an admin) creates one; the allowlist comes back in its normal spelling.
    let resp = app
        .as_user(Method::POST, "/api/v1/widget-keys", &slug, "bob")
        .json(&json!({
            "name": "  Marketing site ",
            "domain_allowlist": ["HTTPS://Acme.COM:443/", "*.Shop.Example", "Localhost:*", "acme.com:8443"],
            "agent_id": pinned,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let key = key_of(&created);
    let prefix = format!("pk_live_{slug}_");
    assert!(key.starts_with(&prefix), "{key}");
    let body = &key[prefix.len()..];
    assert_eq!(body.len(), 32);
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(created["last8"], &key[key.len() - 8..]);
    assert_eq!(created["name"], "Marketing site");
    assert_eq!(
        created["domain_allowlist"],
        json!([
            "https://acme.com",
            "*.shop.example",
            "localhost",
            "acme.com:8443"
        ])
    );
    assert_eq!(created["agent_id"], pinned.as_str());
    assert!(Uuid::parse_str(created["id"].as_str().unwrap()).is_ok());
    assert!(created["created_at"].is_string());

    // The list never shows the key again.
    let list = list_widget_keys(&app, &slug, "bob").await;
    assert_eq!(list.len(), 1);
    let item = &list[0];
    assert_eq!(item["id"], created["id"]);
    assert_eq!(item["last8"], created["last8"]);
    assert_eq!(item["domain_allowlist"], created["domain_allowlist"]);
    assert_eq!(item["agent_id"], pinned.as_str());
    assert_eq!(item["disabled"], false);
    assert!(item["disabled_at"].is_null());
    assert!(item["last_used_at"].is_null());
    assert!(item.get("key").is_none());
    let text = Value::Array(list.clone()).to_string();
    assert!(!text.contains(&key), "the key leaked into the list");
    assert!(!text.contains(&key[..key.len() - 8]));
    // Nor in the key's own stored row: only its hash is kept.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM widget_keys WHERE position($1 in (widget_keys::text)) > 0",
    )
    .bind(&key[prefix.len()..key.len() - 8])
    .fetch_one(app.state.catalog.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0);

    // An empty allowlist is allowed (it blocks the key); no pin is allowed.
    let resp = app
        .as_user(Method::POST, "/api/v1/widget-keys", &slug, "bob")
        .json(&json!({ "name": "blocked", "domain_allowlist": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let blocked: Value = resp.json().await.unwrap();
    assert!(blocked["agent_id"].is_null());
    assert_eq!(blocked["domain_allowlist"], json!([]));
    // Newest first.
    let list = list_widget_keys(&app, &slug, "alice").await;
    assert_eq!(list[0]["id"], blocked["id"]);
    assert_eq!(list[1]["id"], created["id"]);
}

#[tokio::test]
async fn widget_key_bodies_are_validated() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "wk_valid").await;
    let post = |body: Value| {
        app.as_user(Method::POST, "/api/v1/widget-keys", &slug, "alice")
            .json(&body)
            .send()
    };
    for bad in [
        "*.com",
        "https://acme.com/path",
        "a.*.com",
        "",
        "*",
        "ftp://acme.com",
    ] {
        let resp = post(json!({ "name": "k", "domain_allowlist": ["acme.com", bad] }))
            .await
            .unwrap();
        assert_eq!(
            error_field(resp).await,
            (400, "invalid_body".into(), "domain_allowlist".into()),
            "{bad:?}"
        );
    }
    let resp =
        post(json!({ "name": "k", "domain_allowlist": ["acme.com"], "agent_id": Uuid::now_v7() }))
            .await
            .unwrap();
    assert_eq!(
        error_field(resp).await,
        (400, "invalid_body".into(), "agent_id".into())
    );
    let resp = post(json!({ "name": "k", "domain_allowlist": ["acme.com"], "agent_id": "nope" }))
        .await
        .unwrap();
    assert_eq!(
        error_field(resp).await,
        (400, "invalid_body".into(), "agent_id".into())
    );
    for (body, field) in [
        (json!({ "domain_allowlist": ["acme.com"] }), "name"),
        (
            json!({ "name": "  ", "domain_allowlist": ["acme.com"] }),
            "name",
        ),
        (json!({ "name": "k" }), "domain_allowlist"),
        (
            json!({ "name": "k", "domain_allowlist": "acme.com" }),
            "domain_allowlist",
        ),
    ] {
        let resp = post(body.clone()).await.unwrap();
        assert_eq!(
            error_field(resp).await,
            (400, "invalid_body".into(), field.into()),
            "{body}"
        );
    }
    // An agent of another account is unknown here.
    let other = account(&app, "wk_other").await;
    let foreign = public_agent(&app, &other, "Theirs").await;
    let resp = post(json!({ "name": "k", "domain_allowlist": ["acme.com"], "agent_id": foreign }))
        .await
        .unwrap();
    assert_eq!(
        error_field(resp).await,
        (400, "invalid_body".into(), "agent_id".into())
    );
    assert!(list_widget_keys(&app, &slug, "alice").await.is_empty());
}

#[tokio::test]
async fn widget_keys_can_be_renamed_repinned_and_disabled() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "wk_patch").await;
    let first = public_agent(&app, &slug, "First").await;
    let second = public_agent(&app, &slug, "Second").await;
    let created = widget_key(&app, &slug, &["acme.com"], None).await;
    let (key, id) = (key_of(&created), id_of(&created));

    let resp = patch_widget_key(
        &app,
        &slug,
        &id,
        json!({ "name": "Renamed", "domain_allowlist": ["*.Acme.com", "https://acme.com"], "agent_id": first }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let item: Value = resp.json().await.unwrap();
    assert_eq!(item["name"], "Renamed");
    assert_eq!(
        item["domain_allowlist"],
        json!(["*.acme.com", "https://acme.com"])
    );
    assert_eq!(item["agent_id"], first.as_str());
    assert_eq!(item["last8"], created["last8"]);
    assert!(item.get("key").is_none());
    // The pin takes effect at once: config names the pinned agent.
    let cfg: Value = config(&app, SITE, &key, None).await.json().await.unwrap();
    assert_eq!(cfg["agent"]["id"], first.as_str());

    // Absent fields keep their value; a new pin replaces the old one.
    let item: Value = patch_widget_key(&app, &slug, &id, json!({ "agent_id": second }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (item["name"].clone(), item["agent_id"].clone()),
        (json!("Renamed"), json!(second))
    );
    // `null` unpins.
    let item: Value = patch_widget_key(&app, &slug, &id, json!({ "agent_id": null }))
        .await
        .json()
        .await
        .unwrap();
    assert!(item["agent_id"].is_null());
    assert_eq!(
        item["domain_allowlist"],
        json!(["*.acme.com", "https://acme.com"])
    );
    let cfg: Value = config(&app, SITE, &key, None).await.json().await.unwrap();
    assert!(cfg.get("agent").is_none());
    assert_eq!(cfg["agents"].as_array().unwrap().len(), 2);

    // Disabled: `disabled_at` set, the key stops working; re-enabled: cleared, works again.
    let item: Value = patch_widget_key(&app, &slug, &id, json!({ "disabled": true }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item["disabled"], true);
    assert!(item["disabled_at"].is_string());
    assert_eq!(
        error_code(config(&app, SITE, &key, None).await).await,
        (401, "invalid_client_key".into())
    );
    // Disabling again keeps the first time.
    let again: Value = patch_widget_key(&app, &slug, &id, json!({ "disabled": true }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["disabled_at"], item["disabled_at"]);
    let item: Value = patch_widget_key(&app, &slug, &id, json!({ "disabled": false }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item["disabled"], false);
    assert!(item["disabled_at"].is_null());
    assert_eq!(config(&app, SITE, &key, None).await.status(), 200);

    // Validation, unknown ids.
    for (body, field) in [
        (json!({ "domain_allowlist": ["*.com"] }), "domain_allowlist"),
        (json!({ "domain_allowlist": [""] }), "domain_allowlist"),
        (json!({ "agent_id": Uuid::now_v7() }), "agent_id"),
        (json!({ "name": "" }), "name"),
        (json!({ "name": null }), "name"),
        (json!({ "disabled": null }), "disabled"),
    ] {
        let resp = patch_widget_key(&app, &slug, &id, body.clone()).await;
        assert_eq!(
            error_field(resp).await,
            (400, "invalid_body".into(), field.into()),
            "{body}"
        );
    }
    for missing in [Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        let resp = patch_widget_key(&app, &slug, &missing, json!({ "name": "x" })).await;
        assert_eq!(error_code(resp).await, (404, "not_found".into()));
    }

    // Another account sees none of it.
    let other = app.account_with_admin("wk_patch_o", "alice").await;
    let resp = patch_widget_key(&app, &other.slug, &id, json!({ "disabled": true })).await;
    assert_eq!(error_code(resp).await, (404, "not_found".into()));
    let resp = app
        .as_user(
            Method::DELETE,
            &format!("/api/v1/widget-keys/{id}"),
            &other.slug,
            "alice",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (404, "not_found".into()));
    assert!(
        list_widget_keys(&app, &other.slug, "alice")
            .await
            .is_empty()
    );
    assert_eq!(config(&app, SITE, &key, None).await.status(), 200);
}

#[tokio::test]
async fn deleting_a_never_used_key_removes_it_and_a_used_one_is_disabled() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "wk_del").await;
    let unused = widget_key(&app, &slug, &["acme.com"], None).await;
    let used = widget_key(&app, &slug, &["acme.com"], None).await;
    let delete = |id: String| {
        app.as_user(
            Method::DELETE,
            &format!("/api/v1/widget-keys/{id}"),
            &slug,
            "bob",
        )
        .send()
    };

    let resp = delete(id_of(&unused)).await.unwrap();
    assert_eq!(resp.status(), 204);
    let list = list_widget_keys(&app, &slug, "alice").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], used["id"]);
    assert_eq!(
        error_code(delete(id_of(&unused)).await.unwrap()).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(config(&app, SITE, &key_of(&unused), None).await).await,
        (401, "invalid_client_key".into())
    );

    // Used by a widget: DELETE keeps it for the record, disabled.
    assert_eq!(config(&app, SITE, &key_of(&used), None).await.status(), 200);
    let resp = delete(id_of(&used)).await.unwrap();
    assert_eq!(resp.status(), 204);
    let list = list_widget_keys(&app, &slug, "alice").await;
    assert_eq!(list.len(), 1, "a used widget key was hard-deleted");
    assert_eq!(list[0]["id"], used["id"]);
    assert_eq!(list[0]["disabled"], true);
    assert!(list[0]["last_used_at"].is_string());
    assert_eq!(
        error_code(config(&app, SITE, &key_of(&used), None).await).await,
        (401, "invalid_client_key".into())
    );
    // Deleting it again is harmless.
    assert_eq!(delete(id_of(&used)).await.unwrap().status(), 204);
}

/// A widget key change is committed in the catalog before its audit row is written in the
/// tenant database: when that write fails, the caller still gets the answer of the change that
/// happened (and a new key's only copy), not an error.
#[tokio::test]
async fn a_failed_audit_write_does_not_fail_a_committed_widget_key_change() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "noaudit").await;
    let mut tenant = crate::support::tenant_conn(&slug).await;
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&mut tenant)
        .await
        .unwrap();
    let created = widget_key(&app, &slug, &["acme.com"], None).await;
    assert!(key_of(&created).starts_with("pk_live_"));
    let id = id_of(&created);
    let resp = patch_widget_key(&app, &slug, &id, json!({ "name": "renamed" })).await;
    assert_eq!(resp.status(), 200);
    let resp = app
        .as_user(
            Method::DELETE,
            &format!("/api/v1/widget-keys/{id}"),
            &slug,
            "alice",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(list_widget_keys(&app, &slug, "alice").await.is_empty());
}

#[tokio::test]
async fn an_api_key_may_manage_widget_keys() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "wk_sk").await;
    let sk = api_key(&app, &slug).await;
    let with_key =
        |method: Method, path: &str| app.client.request(method, app.url(path)).bearer_auth(&sk);

    let resp = with_key(Method::POST, "/api/v1/widget-keys")
        .json(&json!({ "name": "by key", "domain_allowlist": ["acme.com"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert!(key_of(&created).starts_with(&format!("pk_live_{slug}_")));
    let list: Value = with_key(Method::GET, "/api/v1/widget-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["id"], created["id"]);
    assert!(list[0].get("key").is_none());
    let resp = with_key(
        Method::PATCH,
        &format!("/api/v1/widget-keys/{}", id_of(&created)),
    )
    .json(&json!({ "name": "renamed" }))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = with_key(
        Method::DELETE,
        &format!("/api/v1/widget-keys/{}", id_of(&created)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(list_widget_keys(&app, &slug, "alice").await.is_empty());
    // Without credentials: 401.
    let resp = app
        .client
        .get(app.url("/api/v1/widget-keys"))
        .header("X-Account-ID", &slug)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
}

// ---------------------------------------------------------------------------------------------
// 2. Widget settings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn widget_branding_has_defaults_and_only_elevated_admins_change_it() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "ws_brand").await;
    let sk = api_key(&app, &slug).await;

    let resp = app
        .as_user(Method::GET, "/api/v1/widget-settings", &slug, "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let settings: Value = resp.json().await.unwrap();
    assert_eq!(settings["primary_color"], "#4F46E5");
    assert_eq!(settings["accent_color"], "#F59E0B");
    assert!(settings["logo_url"].is_null());
    assert_eq!(settings["launcher_position"], "br");
    assert_eq!(settings["launcher_label"], "Chat with us");
    assert_eq!(settings["privacy_notice"], "");

    let change = json!({ "primary_color": "#112233" });
    // A member, even elevated; an admin without the header; an API key: 403 admin_required.
    let resp = app
        .as_user(Method::PATCH, "/api/v1/widget-settings", &slug, "bob")
        .header("X-Admin", "true")
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "admin_required".into()));
    let resp = app
        .as_user(Method::PATCH, "/api/v1/widget-settings", &slug, "alice")
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "admin_required".into()));
    let resp = app
        .client
        .patch(app.url("/api/v1/widget-settings"))
        .bearer_auth(&sk)
        .header("X-Admin", "true")
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "admin_required".into()));

    let admin_patch = |body: Value| {
        app.as_user(Method::PATCH, "/api/v1/widget-settings", &slug, "alice")
            .header("X-Admin", "true")
            .json(&body)
            .send()
    };
    for (body, field) in [
        (json!({ "primary_color": "blue" }), "primary_color"),
        (json!({ "primary_color": "#12345G" }), "primary_color"),
        (json!({ "primary_color": "4F46E5" }), "primary_color"),
        (json!({ "primary_color": null }), "primary_color"),
        (json!({ "accent_color": "#ABCD" }), "accent_color"),
        (
            json!({ "logo_url": "http://cdn.acme.com/logo.png" }),
            "logo_url",
        ),
        (json!({ "logo_url": "javascript:alert(1)" }), "logo_url"),
        (json!({ "logo_url": "logo.png" }), "logo_url"),
        (
            json!({ "launcher_position": "middle" }),
            "launcher_position",
        ),
        (
            json!({ "launcher_label": "x".repeat(61) }),
            "launcher_label",
        ),
    ] {
        let resp = admin_patch(body.clone()).await.unwrap();
        assert_eq!(
            error_field(resp).await,
            (400, "invalid_body".into(), field.into()),
            "{body}"
        );
    }

    let resp = admin_patch(json!({
        "primary_color": "#112233",
        "accent_color": "#abc",
        "logo_url": "https://cdn.acme.com/logo.png",
        "launcher_position": "tl",
        "launcher_label": "Talk to us",
        "privacy_notice": "We record calls.",
    }))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let changed: Value = resp.json().await.unwrap();
    assert_eq!(changed["primary_color"], "#112233");
    assert_eq!(changed["accent_color"], "#abc");
    assert_eq!(changed["logo_url"], "https://cdn.acme.com/logo.png");
    assert_eq!(changed["launcher_position"], "tl");
    assert_eq!(changed["launcher_label"], "Talk to us");
    assert_eq!(changed["privacy_notice"], "We record calls.");
    let got: Value = app
        .as_user(Method::GET, "/api/v1/widget-settings", &slug, "bob")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, changed);

    // The widget sees the branding.
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    let cfg: Value = config(&app, SITE, &key, None).await.json().await.unwrap();
    assert_eq!(cfg["branding"]["primary_color"], "#112233");
    assert_eq!(cfg["branding"]["launcher_position"], "tl");
    assert_eq!(cfg["account"], slug.as_str());

    // `null` clears the logo; other fields stay.
    let cleared: Value = admin_patch(json!({ "logo_url": null }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(cleared["logo_url"].is_null());
    assert_eq!(cleared["primary_color"], "#112233");
}

#[tokio::test]
async fn agent_widget_policy_defaults_and_changes() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "ws_agent").await;
    let id = agent(&app, &slug, json!({ "name": "Plain" })).await;
    let path = format!("/api/v1/agents/{id}/widget-settings");

    let got: Value = app
        .as_user(Method::GET, &path, &slug, "bob")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, json!({ "widget_enabled": true, "auth_mode": "both" }));

    // Not admin-only: a member may change an agent's policy.
    let resp = app
        .as_user(Method::PATCH, &path, &slug, "bob")
        .json(&json!({ "widget_enabled": false, "auth_mode": "guest" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let changed: Value = resp.json().await.unwrap();
    assert_eq!(
        changed,
        json!({ "widget_enabled": false, "auth_mode": "guest" })
    );
    let changed: Value = app
        .as_user(Method::PATCH, &path, &slug, "bob")
        .json(&json!({ "auth_mode": "user" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        changed,
        json!({ "widget_enabled": false, "auth_mode": "user" })
    );
    let got: Value = app
        .as_user(Method::GET, &path, &slug, "alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, changed);

    for (body, field) in [
        (json!({ "auth_mode": "everyone" }), "auth_mode"),
        (json!({ "widget_enabled": "yes" }), "widget_enabled"),
        (json!({ "widget_enabled": null }), "widget_enabled"),
    ] {
        let resp = app
            .as_user(Method::PATCH, &path, &slug, "alice")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_field(resp).await,
            (400, "invalid_body".into(), field.into()),
            "{body}"
        );
    }

    // Unknown agents, also those of another account: 404.
    let other = account(&app, "ws_agent_o").await;
    let foreign = agent(&app, &other, json!({ "name": "Theirs" })).await;
    for missing in [Uuid::now_v7().to_string(), foreign] {
        let path = format!("/api/v1/agents/{missing}/widget-settings");
        let resp = app
            .as_user(Method::GET, &path, &slug, "alice")
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(resp).await, (404, "not_found".into()));
        let resp = app
            .as_user(Method::PATCH, &path, &slug, "alice")
            .json(&json!({ "widget_enabled": false }))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(resp).await, (404, "not_found".into()));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Config and origins
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn config_lists_the_offered_agents_or_the_pinned_one() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "cfg").await;
    let older = public_agent(&app, &slug, "Older").await;
    let newer = agent(
        &app,
        &slug,
        json!({ "name": "Members only", "status": "active", "auth_mode": "authenticated", "greeting_message": "Welcome back" }),
    )
    .await;
    let _draft = agent(
        &app,
        &slug,
        json!({ "name": "Draft", "auth_mode": "public" }),
    )
    .await;
    let hidden = public_agent(&app, &slug, "Hidden").await;
    set_policy(&app, &slug, &hidden, json!({ "widget_enabled": false })).await;
    let paused = public_agent(&app, &slug, "Paused").await;
    patch_agent(&app, &slug, &paused, json!({ "status": "paused" })).await;

    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    let resp = config(&app, SITE, &key, None).await;
    assert_eq!(resp.status(), 200);
    let cfg: Value = resp.json().await.unwrap();
    assert_eq!(cfg["account"], slug.as_str());
    assert_eq!(cfg["branding"]["primary_color"], "#4F46E5");
    assert!(cfg.get("agent").is_none());
    let agents = cfg["agents"].as_array().unwrap();
    let ids: Vec<&str> = agents.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [newer.as_str(), older.as_str()],
        "active, widget-enabled, newest first"
    );
    assert_eq!(agents[0]["name"], "Members only");
    assert_eq!(agents[0]["greeting_message"], "Welcome back");
    assert_eq!(agents[0]["auth_modes"], json!(["user"]));
    assert_eq!(agents[1]["auth_modes"], json!(["guest", "user"]));
    // Internal columns are not exposed.
    assert!(agents[0].get("status").is_none());
    assert!(agents[0].get("widget_auth_mode").is_none());

    // Naming an agent with an unpinned key.
    let cfg: Value = config(&app, SITE, &key, Some(&older))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["agent"]["id"], older.as_str());
    assert!(cfg.get("agents").is_none());
    // An agent the widget does not offer, or none at all: 403 widget_not_allowed.
    for not_offered in [hidden.clone(), paused.clone(), Uuid::now_v7().to_string()] {
        let resp = config(&app, SITE, &key, Some(&not_offered)).await;
        assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    }

    // A pinned key: that agent, with the auth modes the widget should offer.
    let pinned = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&older)).await);
    let cfg: Value = config(&app, SITE, &pinned, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["agent"]["id"], older.as_str());
    assert_eq!(cfg["agent"]["name"], "Older");
    assert_eq!(cfg["agent"]["greeting_message"], "Hi from Older");
    assert_eq!(cfg["agent"]["auth_modes"], json!(["guest", "user"]));
    assert!(cfg.get("agents").is_none());
    set_policy(&app, &slug, &older, json!({ "auth_mode": "guest" })).await;
    let cfg: Value = config(&app, SITE, &pinned, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["agent"]["auth_modes"], json!(["guest"]));
    // Asking a pinned key for another agent: 403.
    let resp = config(&app, SITE, &pinned, Some(&newer)).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    // The pinned agent no longer offered: 403.
    set_policy(&app, &slug, &older, json!({ "widget_enabled": false })).await;
    let resp = config(&app, SITE, &pinned, None).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
}

#[tokio::test]
async fn the_allowlist_decides_which_pages_may_use_a_key() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "origins").await;
    public_agent(&app, &slug, "A").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);

    for (origin, status) in [
        ("https://acme.com", 200),
        ("http://acme.com:8080", 200),
        ("HTTPS://ACME.COM", 200),
        ("https://evilacme.com", 403),
        ("https://acme.com.evil.net", 403),
        ("https://www.acme.com", 403),
        ("null", 403),
        ("https://acme.com/path", 403),
        ("file://", 403),
    ] {
        let resp = config(&app, origin, &key, None).await;
        if status == 200 {
            assert_eq!(resp.status(), 200, "{origin}");
        } else {
            assert_eq!(
                error_code(resp).await,
                (403, "origin_not_allowed".into()),
                "{origin}"
            );
        }
    }

    let get = || {
        app.client
            .get(config_url(&app, &[("client_key", key.as_str())]))
    };
    // Without Origin, the origin of the Referer counts.
    let resp = get()
        .header("Referer", "https://acme.com/pricing?plan=pro#chat")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = get()
        .header("Referer", "https://evilacme.com/acme.com")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    // Neither: 403. `Origin: null` never falls back to the Referer. An Origin wins over a Referer.
    let resp = get().send().await.unwrap();
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let resp = get()
        .header("Origin", "null")
        .header("Referer", "https://acme.com/")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let resp = get()
        .header("Origin", "https://evilacme.com")
        .header("Referer", "https://acme.com/")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));

    // The other entry shapes, end to end.
    let shapes = key_of(
        &widget_key(
            &app,
            &slug,
            &["*.shop.example", "localhost:*", "https://exact.example"],
            None,
        )
        .await,
    );
    for (origin, status) in [
        ("https://eu.shop.example", 200),
        ("http://a.b.shop.example:3000", 200),
        ("https://shop.example", 403),
        ("http://localhost:5173", 200),
        ("http://localhost", 200),
        ("https://exact.example", 200),
        ("https://exact.example:443", 200),
        ("http://exact.example", 403),
        ("https://exact.example:8443", 403),
    ] {
        assert_eq!(
            config(&app, origin, &shapes, None).await.status(),
            status,
            "{origin}"
        );
    }
    // An empty allowlist blocks the key everywhere.
    let blocked = key_of(&widget_key(&app, &slug, &[], None).await);
    let resp = config(&app, SITE, &blocked, None).await;
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
}

#[tokio::test]
async fn unknown_disabled_and_suspended_keys_are_refused() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "badkeys").await;
    let created = widget_key(&app, &slug, &["acme.com"], None).await;
    let key = key_of(&created);
    assert_eq!(config(&app, SITE, &key, None).await.status(), 200);

    let unknown = kataven_hub::auth::keys::new_widget_key(&slug);
    let mut tampered = key.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        unknown.as_str(),
        tampered.as_str(),
        "",
        "pk_live_",
        "garbage",
        &key[..key.len() - 1],
        &format!("{key}x"),
        &key.replace("pk_live_", "sk_live_"),
        &kataven_hub::auth::keys::new_widget_key("kataven-admin"),
        &kataven_hub::auth::keys::new_widget_key("no-such-account"),
    ] {
        let resp = config(&app, SITE, bad, None).await;
        assert_eq!(
            error_code(resp).await,
            (401, "invalid_client_key".into()),
            "{bad}"
        );
    }
    // Missing client_key: 400.
    let resp = app
        .get("/api/v1/widget/config")
        .header("Origin", SITE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Disabled.
    let resp = patch_widget_key(&app, &slug, &id_of(&created), json!({ "disabled": true })).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        error_code(config(&app, SITE, &key, None).await).await,
        (401, "invalid_client_key".into())
    );
    let resp = guest(&app, SITE, &key, Some(&Uuid::now_v7().to_string())).await;
    assert_eq!(error_code(resp).await, (401, "invalid_client_key".into()));

    // A key of a suspended account: 403 account_suspended (once the change has propagated).
    let other = account(&app, "suspended").await;
    let theirs = key_of(&widget_key(&app, &other, &["acme.com"], None).await);
    assert_eq!(config(&app, SITE, &theirs, None).await.status(), 200);
    app.state
        .catalog
        .set_status(&other.parse().unwrap(), AccountStatus::Suspended)
        .await
        .unwrap();
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = error_code(config(&app, SITE, &theirs, None).await).await;
        if last.1 == "account_suspended" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, (403, "account_suspended".into()));
}

// ---------------------------------------------------------------------------------------------
// 4. Guest sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn guests_get_a_signed_session_for_public_agents() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "guest").await;
    let agent_id = public_agent(&app, &slug, "Lobby").await;
    let created = widget_key(&app, &slug, &["acme.com"], None).await;
    let key = key_of(&created);

    let resp = guest(&app, SITE, &key, Some(&agent_id)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["token"].as_str().unwrap();

    let claims = verify_session(&app, token).await;
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["aud"], "kataven-widget");
    let sub = claims["sub"].as_str().unwrap();
    let guest_id = sub.strip_prefix("guest:").expect("guest:<uuid>");
    assert!(Uuid::parse_str(guest_id).is_ok(), "{sub}");
    assert_eq!(claims["acct"], slug.as_str());
    assert_eq!(claims["agent_id"], agent_id.as_str());
    assert_eq!(claims["kind"], "guest");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 900);
    assert!((iat - now()).abs() < 60);
    assert!(Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());

    // Each guest is someone new.
    let again = guest_token(&app, &key, Some(&agent_id)).await;
    let claims2 = verify_session(&app, &again).await;
    assert_ne!(claims2["sub"], claims["sub"]);
    assert_ne!(claims2["jti"], claims["jti"]);

    // The JWKS publishes only public material.
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for jwk in jwks["keys"].as_array().unwrap() {
        assert_eq!(jwk["kty"], "EC");
        assert!(jwk.get("d").is_none(), "a private key is published");
    }

    // A pinned key needs no agent_id.
    let pinned = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let token = guest_token(&app, &pinned, None).await;
    assert_eq!(
        verify_session(&app, &token).await["agent_id"],
        agent_id.as_str()
    );
    let token = guest_token(&app, &pinned, Some(&agent_id)).await;
    assert_eq!(
        verify_session(&app, &token).await["agent_id"],
        agent_id.as_str()
    );

    // The same under /hub-api.
    let resp = app
        .client
        .post(app.url("/hub-api/api/v1/widget/auth/guest"))
        .header("Origin", SITE)
        .json(&json!({ "client_key": key, "agent_id": agent_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn guests_are_refused_unless_the_agent_and_its_policy_allow_them() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "guest_no").await;
    let ok = public_agent(&app, &slug, "Open").await;
    let draft = agent(
        &app,
        &slug,
        json!({ "name": "Draft", "auth_mode": "public" }),
    )
    .await;
    let disabled = public_agent(&app, &slug, "Disabled").await;
    set_policy(&app, &slug, &disabled, json!({ "widget_enabled": false })).await;
    let users_only = public_agent(&app, &slug, "Users only").await;
    set_policy(&app, &slug, &users_only, json!({ "auth_mode": "user" })).await;
    let guests_only = public_agent(&app, &slug, "Guests only").await;
    set_policy(&app, &slug, &guests_only, json!({ "auth_mode": "guest" })).await;
    let authenticated = agent(
        &app,
        &slug,
        json!({ "name": "Private", "status": "active", "auth_mode": "authenticated" }),
    )
    .await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);

    assert_eq!(guest(&app, SITE, &key, Some(&ok)).await.status(), 200);
    assert_eq!(
        guest(&app, SITE, &key, Some(&guests_only)).await.status(),
        200
    );
    for refused in [
        &draft,
        &disabled,
        &users_only,
        &authenticated,
        &Uuid::now_v7().to_string(),
    ] {
        let resp = guest(&app, SITE, &key, Some(refused)).await;
        assert_eq!(
            error_code(resp).await,
            (403, "widget_not_allowed".into()),
            "{refused}"
        );
    }
    // An agent of another account is not offered here either.
    let other = account(&app, "guest_no_o").await;
    let foreign = public_agent(&app, &other, "Theirs").await;
    let resp = guest(&app, SITE, &key, Some(&foreign)).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));

    // Unpinned key without agent_id: 400 naming the field.
    let resp = guest(&app, SITE, &key, None).await;
    assert_eq!(
        error_field(resp).await,
        (400, "invalid_body".into(), "agent_id".into())
    );
    // Pinned key asked for another agent: 403.
    let pinned = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&ok)).await);
    let resp = guest(&app, SITE, &pinned, Some(&guests_only)).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    // From another page: 403 origin_not_allowed.
    let resp = guest(&app, "https://evilacme.com", &key, Some(&ok)).await;
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    // Malformed bodies.
    for body in [
        json!({}),
        json!({ "client_key": key, "agent_id": "not-a-uuid" }),
    ] {
        let resp = widget_post(&app, "/api/v1/widget/auth/guest", SITE, body.clone()).await;
        assert_eq!(
            error_code(resp).await,
            (400, "invalid_body".into()),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. User tokens and the exchange
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn user_tokens_need_an_api_key() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "ut").await;
    let sk = api_key(&app, &slug).await;
    let body = json!({ "external_user_id": "u-1" });

    let resp = user_token_resp(&app, &sk, body.clone()).await;
    assert_eq!(resp.status(), 200);
    let minted: Value = resp.json().await.unwrap();
    assert_eq!(minted["expires_in"], 300);
    let token = minted["user_token"].as_str().unwrap();
    assert!(token.len() >= 32);
    // Only its hash is stored.
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM widget_user_tokens WHERE position($1 in (widget_user_tokens::text)) > 0",
    )
    .bind(token)
    .fetch_one(app.state.catalog.pool())
    .await
    .unwrap();
    assert_eq!(plain, 0);

    // No key, a JWT, a widget key, a made-up key: 401 with WWW-Authenticate.
    let resp = app
        .client
        .post(app.url("/api/v1/widget/auth/user-token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    let widget = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    for bearer in [
        app.token("alice"),
        widget,
        app.state.api_keys.hasher().new_api_key(&slug),
        "sk_live_nonsense".to_owned(),
    ] {
        let resp = app
            .client
            .post(app.url("/api/v1/widget/auth/user-token"))
            .bearer_auth(&bearer)
            .header("X-Account-ID", &slug)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (401, "unauthenticated".into()),
            "{bearer}"
        );
    }
    // external_user_id is required.
    for bad in [json!({}), json!({ "external_user_id": "" })] {
        let resp = user_token_resp(&app, &sk, bad.clone()).await;
        assert_eq!(
            error_field(resp).await,
            (400, "invalid_body".into(), "external_user_id".into()),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_user_token_is_exchanged_once_for_a_user_session() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "xchg").await;
    let sk = api_key(&app, &slug).await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let pinned = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);

    let token = user_token(&app, &sk, "cust-42", None).await;
    let resp = exchange(&app, SITE, &pinned, &token).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let claims = verify_session(&app, body["token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "user:cust-42");
    assert_eq!(claims["kind"], "user");
    assert_eq!(claims["acct"], slug.as_str());
    assert_eq!(claims["agent_id"], agent_id.as_str());
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["aud"], "kataven-widget");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    // Replayed: 401.
    let resp = exchange(&app, SITE, &pinned, &token).await;
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    // Unknown: 401.
    let resp = exchange(&app, SITE, &pinned, "ut_made_up").await;
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));

    // A user token naming the agent, with an unpinned key.
    let unpinned = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    let token = user_token(&app, &sk, "cust-43", Some(&agent_id)).await;
    let resp = exchange(&app, SITE, &unpinned, &token).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = verify_session(&app, body["token"].as_str().unwrap()).await;
    assert_eq!(claims["agent_id"], agent_id.as_str());
    assert_eq!(claims["sub"], "user:cust-43");
    // Neither a pin nor an agent in the token: 403.
    let token = user_token(&app, &sk, "cust-44", None).await;
    let resp = exchange(&app, SITE, &unpinned, &token).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    // A token naming another agent than the key's pin: 403.
    let second = public_agent(&app, &slug, "Second").await;
    let token = user_token(&app, &sk, "cust-45", Some(&second)).await;
    let resp = exchange(&app, SITE, &pinned, &token).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));

    // Expired: 401.
    let token = user_token(&app, &sk, "cust-46", None).await;
    sqlx::query(
        "UPDATE widget_user_tokens SET expires_at = now() - interval '1 second'
         WHERE account = $1 AND consumed_at IS NULL",
    )
    .bind(&slug)
    .execute(app.state.catalog.pool())
    .await
    .unwrap();
    let resp = exchange(&app, SITE, &pinned, &token).await;
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
}

#[tokio::test]
async fn exchanges_are_refused_across_accounts_origins_and_policies() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "xchg_no").await;
    let sk = api_key(&app, &slug).await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);

    // A user token of another account, with this account's widget key: 401, and it stays
    // usable in its own account.
    let other = account(&app, "xchg_no_o").await;
    let other_sk = api_key(&app, &other).await;
    let other_agent = public_agent(&app, &other, "Theirs").await;
    let other_key = key_of(&widget_key(&app, &other, &["acme.com"], Some(&other_agent)).await);
    let theirs = user_token(&app, &other_sk, "mallory", None).await;
    let resp = exchange(&app, SITE, &key, &theirs).await;
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    assert_eq!(
        exchange(&app, SITE, &other_key, &theirs).await.status(),
        200
    );

    // From a disallowed origin: 403, and the token is not consumed.
    let token = user_token(&app, &sk, "cust-1", None).await;
    let resp = exchange(&app, "https://evilacme.com", &key, &token).await;
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let resp = app
        .client
        .post(app.url("/api/v1/widget/auth/exchange"))
        .json(&json!({ "client_key": key, "user_token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let resp = exchange(&app, SITE, &key, &token).await;
    assert_eq!(resp.status(), 200);

    // The agent's widget policy is guest-only: 403 widget_not_allowed, token not consumed.
    let token = user_token(&app, &sk, "cust-2", None).await;
    set_policy(&app, &slug, &agent_id, json!({ "auth_mode": "guest" })).await;
    let resp = exchange(&app, SITE, &key, &token).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    // Users may talk to an agent whose own auth_mode is `authenticated` (guests may not).
    set_policy(&app, &slug, &agent_id, json!({ "auth_mode": "user" })).await;
    patch_agent(
        &app,
        &slug,
        &agent_id,
        json!({ "auth_mode": "authenticated" }),
    )
    .await;
    let resp = exchange(&app, SITE, &key, &token).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        verify_session(&app, body["token"].as_str().unwrap()).await["sub"],
        "user:cust-2"
    );
    // A disabled widget: 403.
    set_policy(&app, &slug, &agent_id, json!({ "widget_enabled": false })).await;
    let token = user_token(&app, &sk, "cust-3", None).await;
    let resp = exchange(&app, SITE, &key, &token).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    // An unknown widget key: 401 invalid_client_key.
    let resp = exchange(
        &app,
        SITE,
        &kataven_hub::auth::keys::new_widget_key(&slug),
        &token,
    )
    .await;
    assert_eq!(error_code(resp).await, (401, "invalid_client_key".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_token_is_exchanged_once_across_instances() {
    let one = TestApp::spawn().await;
    let two = TestApp::builder()
        .await
        .database_url(&system_url_of(&one))
        .config(|c| c.oidc_issuer = Some(one.issuer.issuer()))
        .spawn()
        .await;
    let slug = account(&one, "xchg_race").await;
    let sk = api_key(&one, &slug).await;
    let agent_id = public_agent(&one, &slug, "Support").await;
    let key = key_of(&widget_key(&one, &slug, &["acme.com"], Some(&agent_id)).await);
    // Both instances know the key.
    for app in [&one, &two] {
        assert_eq!(config(app, SITE, &key, None).await.status(), 200);
    }
    for round in 0..5 {
        let token = user_token(&one, &sk, &format!("racer-{round}"), None).await;
        let (a, b) = tokio::join!(
            exchange(&one, SITE, &key, &token),
            exchange(&two, SITE, &key, &token)
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401], "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Refresh
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_refresh_with_the_same_identity() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "refresh").await;
    let sk = api_key(&app, &slug).await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);

    // A fresh guest session.
    let token = guest_token(&app, &key, None).await;
    let old = verify_session(&app, &token).await;
    let resp = refresh(&app, SITE, &token).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let fresh = body["token"].as_str().unwrap();
    assert_ne!(fresh, token);
    let new = verify_session(&app, fresh).await;
    for claim in ["sub", "kind", "agent_id", "acct", "iss", "aud"] {
        assert_eq!(new[claim], old[claim], "{claim}");
    }
    assert_ne!(new["jti"], old["jti"]);
    assert_eq!(
        new["exp"].as_i64().unwrap() - new["iat"].as_i64().unwrap(),
        900
    );

    // A user session.
    let ut = user_token(&app, &sk, "cust-9", None).await;
    let body: Value = exchange(&app, SITE, &key, &ut).await.json().await.unwrap();
    let resp = refresh(&app, SITE, body["token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = verify_session(&app, body["token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "user:cust-9");
    assert_eq!(claims["kind"], "user");

    // Refresh re-checks the page's origin.
    let resp = refresh(&app, "https://evilacme.com", fresh).await;
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let resp = app
        .client
        .post(app.url("/api/v1/widget/auth/refresh"))
        .json(&json!({ "token": fresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
}

/// A refresh goes through the widget pipeline like any request made with the key, down to
/// noting the key's use.
#[tokio::test]
async fn a_refresh_notes_the_use_of_its_widget_key() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "refresh_use").await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let last_used = || async {
        assert!(app.state.api_keys.flush_last_used().await);
        let list = list_widget_keys(&app, &slug, "alice").await;
        let at = list[0]["last_used_at"].as_str().unwrap().to_owned();
        chrono::DateTime::parse_from_rfc3339(&at).unwrap()
    };

    let token = guest_token(&app, &key, None).await;
    let opened = last_used().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    refreshed(&app, SITE, &token).await;
    assert!(last_used().await > opened, "the refresh was not noted");
}

#[tokio::test]
async fn expired_sessions_refresh_only_within_the_grace_period() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "grace").await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let real = verify_session(&app, &guest_token(&app, &key, None).await).await;
    let (kid, pem) = signing_key(&app).await;
    let with_times = |exp: i64| {
        let mut claims = real.clone();
        claims["exp"] = json!(exp);
        claims["iat"] = json!(exp - 900);
        claims["jti"] = json!(Uuid::now_v7());
        claims
    };

    // Our own signature over the real claims is accepted (the helper signs like the service).
    let resp = refresh(&app, SITE, &sign(&kid, &pem, &with_times(now() + 600))).await;
    assert_eq!(resp.status(), 200);

    // Expired three minutes ago: still refreshable, same identity.
    let resp = refresh(&app, SITE, &sign(&kid, &pem, &with_times(now() - 180))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = verify_session(&app, body["token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], real["sub"]);
    assert!(claims["exp"].as_i64().unwrap() > now() + 800);

    // Expired ten minutes ago: too late.
    let resp = refresh(&app, SITE, &sign(&kid, &pem, &with_times(now() - 600))).await;
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
}

#[tokio::test]
async fn refresh_refuses_foreign_tokens() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "forged").await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let token = guest_token(&app, &key, None).await;
    let real = verify_session(&app, &token).await;
    let (kid, pem) = signing_key(&app).await;
    let foreign = foreign_pem();

    let mut wrong_aud = real.clone();
    wrong_aud["aud"] = json!("kataven-test");
    let mut wrong_iss = real.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let mut no_sub = real.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "none", "kid": kid }).to_string());
    let payload = URL_SAFE_NO_PAD.encode(real.to_string());
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &real, &EncodingKey::from_secret(b"guess")).unwrap()
    };
    let mut tampered = token.clone().into_bytes();
    let i = token.rfind('.').unwrap() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    for (what, forged) in [
        ("another key, our kid", sign(&kid, &foreign, &real)),
        (
            "another key, unknown kid",
            sign("widget_session-nope", &foreign, &real),
        ),
        ("another key, no kid", {
            jsonwebtoken::encode(
                &Header::new(Algorithm::ES256),
                &real,
                &EncodingKey::from_ec_pem(foreign.as_bytes()).unwrap(),
            )
            .unwrap()
        }),
        ("wrong audience", sign(&kid, &pem, &wrong_aud)),
        ("wrong issuer", sign(&kid, &pem, &wrong_iss)),
        ("no subject", sign(&kid, &pem, &no_sub)),
        ("alg none", format!("{header}.{payload}.")),
        ("HS256", hs256),
        ("tampered payload", tampered),
        ("not a JWT", "garbage".to_owned()),
        ("an ID token", app.token("alice")),
    ] {
        let resp = refresh(&app, SITE, &forged).await;
        assert_eq!(
            error_code(resp).await,
            (401, "unauthenticated".into()),
            "{what}"
        );
    }
}

#[tokio::test]
async fn refresh_rechecks_the_key_and_the_policy() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "recheck").await;
    let sk = api_key(&app, &slug).await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let created = widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await;
    let key = key_of(&created);
    let mut guest_session = guest_token(&app, &key, None).await;
    let ut = user_token(&app, &sk, "cust-1", None).await;
    let body: Value = exchange(&app, SITE, &key, &ut).await.json().await.unwrap();
    let mut user_session = body["token"].as_str().unwrap().to_owned();

    // Policy changed to users only: guests are refused, users still refresh.
    set_policy(&app, &slug, &agent_id, json!({ "auth_mode": "user" })).await;
    let resp = refresh(&app, SITE, &guest_session).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    user_session = refreshed(&app, SITE, &user_session).await;
    // Guests only: users refused.
    set_policy(&app, &slug, &agent_id, json!({ "auth_mode": "guest" })).await;
    let resp = refresh(&app, SITE, &user_session).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    guest_session = refreshed(&app, SITE, &guest_session).await;
    // The agent no longer public: guests refused.
    patch_agent(
        &app,
        &slug,
        &agent_id,
        json!({ "auth_mode": "authenticated" }),
    )
    .await;
    let resp = refresh(&app, SITE, &guest_session).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    patch_agent(&app, &slug, &agent_id, json!({ "auth_mode": "public" })).await;
    guest_session = refreshed(&app, SITE, &guest_session).await;
    // The agent paused: refused.
    patch_agent(&app, &slug, &agent_id, json!({ "status": "paused" })).await;
    let resp = refresh(&app, SITE, &guest_session).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    patch_agent(&app, &slug, &agent_id, json!({ "status": "active" })).await;
    // The key re-pinned to another agent: refused.
    let other_agent = public_agent(&app, &slug, "Other").await;
    let resp = patch_widget_key(
        &app,
        &slug,
        &id_of(&created),
        json!({ "agent_id": other_agent }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = refresh(&app, SITE, &guest_session).await;
    assert_eq!(error_code(resp).await, (403, "widget_not_allowed".into()));
    let resp = patch_widget_key(&app, &slug, &id_of(&created), json!({ "agent_id": null })).await;
    assert_eq!(resp.status(), 200);
    guest_session = refreshed(&app, SITE, &guest_session).await;
    // The allowlist no longer has the page: 403.
    let resp = patch_widget_key(
        &app,
        &slug,
        &id_of(&created),
        json!({ "domain_allowlist": ["other.example"] }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = refresh(&app, SITE, &guest_session).await;
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    guest_session = refreshed(&app, "https://other.example", &guest_session).await;
    // The key disabled: 401 invalid_client_key, for both kinds.
    let resp = patch_widget_key(&app, &slug, &id_of(&created), json!({ "disabled": true })).await;
    assert_eq!(resp.status(), 200);
    for session in [&guest_session, &user_session] {
        let resp = refresh(&app, "https://other.example", session).await;
        assert_eq!(error_code(resp).await, (401, "invalid_client_key".into()));
    }
}

// ---------------------------------------------------------------------------------------------
// 7. CORS
// ---------------------------------------------------------------------------------------------

fn vary(resp: &reqwest::Response) -> String {
    resp.headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// An account with a public agent and a key pinned to it (allowlist `acme.com`).
async fn cors_fixture(app: &TestApp) -> String {
    let slug = account(app, "cors").await;
    let agent_id = public_agent(app, &slug, "Support").await;
    key_of(&widget_key(app, &slug, &["acme.com"], Some(&agent_id)).await)
}

#[tokio::test]
async fn widget_preflights_are_answered_for_any_origin() {
    let app = TestApp::spawn().await;
    let anywhere = "https://anything.example";
    for path in [
        "/api/v1/widget/auth/guest",
        "/api/v1/widget/auth/user-token",
        "/api/v1/widget/auth/exchange",
        "/api/v1/widget/auth/refresh",
        "/api/v1/widget/config",
        "/hub-api/api/v1/widget/auth/guest",
    ] {
        let resp = app
            .client
            .request(Method::OPTIONS, app.url(path))
            .header("Origin", anywhere)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            anywhere,
            "{path}"
        );
        assert!(vary(&resp).contains("origin"), "{path}: {}", vary(&resp));
        let methods = resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_uppercase();
        assert!(methods.contains("POST"), "{methods}");
        let headers = resp.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(headers.contains("content-type"), "{headers}");
    }
}

#[tokio::test]
async fn widget_answers_echo_the_origin() {
    let app = TestApp::spawn().await;
    let key = cors_fixture(&app).await;
    let anywhere = "https://anything.example";

    // Successes and errors echo the origin (so the widget can read either), with Vary: Origin.
    let resp = guest(&app, SITE, &key, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], SITE);
    assert!(vary(&resp).contains("origin"), "{}", vary(&resp));
    let resp = guest(&app, anywhere, &key, None).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], anywhere);
    assert!(vary(&resp).contains("origin"));
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let resp = config(&app, anywhere, &key, None).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], anywhere);
    let resp = config(&app, SITE, &key, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], SITE);
    let resp = refresh(&app, SITE, "garbage").await;
    assert_eq!(resp.headers()["access-control-allow-origin"], SITE);
    assert_eq!(resp.status(), 401);

    // The management API is not opened up the same way.
    let resp = app
        .client
        .get(app.url("/api/v1/widget-keys"))
        .header("Origin", anywhere)
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "management endpoints answered CORS for any origin"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Abuse limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_widget_key_has_its_own_quota() {
    let app = TestApp::builder()
        .await
        .config(|c| c.widget_key_limit_per_minute = 3)
        .spawn()
        .await;
    let slug = account(&app, "keyquota").await;
    public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    let other = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);

    for i in 0..3 {
        assert_eq!(
            config(&app, SITE, &key, None).await.status(),
            200,
            "call {i}"
        );
    }
    let resp = config(&app, SITE, &key, None).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(resp.headers()["access-control-allow-origin"], SITE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["limit"], "client_key");
    // Every widget endpoint that takes the key counts against it.
    let resp = guest(&app, SITE, &key, None).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "client_key");
    // Another key of the same account is not affected.
    assert_eq!(config(&app, SITE, &other, None).await.status(), 200);
    assert!(
        app.metric(r#"kataven_rate_limited_total{limit="client_key"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn widget_endpoints_are_limited_per_client_ip() {
    let app = TestApp::builder()
        .await
        .config(|c| c.public_limit_per_minute = 3)
        .spawn()
        .await;
    let slug = account(&app, "ipquota").await;
    public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);

    // Three widget calls of any kind (even failing ones) use the address's quota.
    assert_eq!(config(&app, SITE, &key, None).await.status(), 200);
    assert_eq!(guest(&app, SITE, &key, None).await.status(), 400);
    assert_eq!(refresh(&app, SITE, "garbage").await.status(), 401);
    let resp = config(&app, SITE, &key, None).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["access-control-allow-origin"], SITE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["limit"], "ip");
    let resp = app
        .client
        .post(app.url("/api/v1/widget/auth/user-token"))
        .json(&json!({ "external_user_id": "x" }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "ip");
    // The management API is not a public endpoint: unaffected.
    assert_eq!(list_widget_keys(&app, &slug, "alice").await.len(), 1);
}

/// A client that sends an allowed `Origin` from a script spends only its own share of the key's
/// quota: visitors from other addresses keep working.
#[tokio::test]
async fn one_client_spends_only_its_share_of_a_widget_key() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.widget_key_ip_limit_per_minute = 3;
            c.trusted_proxies = vec!["127.0.0.1".into()];
        })
        .spawn()
        .await;
    let slug = account(&app, "keyshare").await;
    public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    let config_from = |client: &'static str| {
        let req = app
            .client
            .get(config_url(&app, &[("client_key", key.as_str())]))
            .header("Origin", SITE);
        from_client(req, client).send()
    };
    for i in 0..3 {
        assert_eq!(
            config_from("203.0.113.66").await.unwrap().status(),
            200,
            "call {i}"
        );
    }
    let resp = config_from("203.0.113.66").await.unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "client_key");
    for visitor in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(
            config_from(visitor).await.unwrap().status(),
            200,
            "{visitor}"
        );
    }
}

/// A refresh spends the key's quota like the other widget calls.
#[tokio::test]
async fn refreshes_count_against_the_key_quota() {
    let app = TestApp::builder()
        .await
        .config(|c| c.widget_key_limit_per_minute = 3)
        .spawn()
        .await;
    let slug = account(&app, "refreshquota").await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let token = guest_token(&app, &key, None).await;
    let token = refreshed(&app, SITE, &token).await;
    let token = refreshed(&app, SITE, &token).await;
    let resp = refresh(&app, SITE, &token).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "client_key");
}

/// Each session token refreshes once, on any instance: a stolen or replayed token cannot be
/// turned into many parallel sessions. A refused refresh (wrong origin, policy) does not use
/// the token up.
#[tokio::test]
async fn a_session_token_refreshes_once() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "onerefresh").await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let token = guest_token(&app, &key, None).await;
    let resp = refresh(&app, "https://evil.example", &token).await;
    assert_eq!(error_code(resp).await, (403, "origin_not_allowed".into()));
    let next = refreshed(&app, SITE, &token).await;
    let resp = refresh(&app, SITE, &token).await;
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    // The new token refreshes (once) in its turn.
    refreshed(&app, SITE, &next).await;

    // Many refreshes of one token at once, on two instances: exactly one wins.
    let issuer = app.issuer.issuer();
    let two = TestApp::builder()
        .await
        .database_url(&system_url_of(&app))
        .config(|c| c.oidc_issuer = Some(issuer))
        .spawn()
        .await;
    let token = guest_token(&app, &key, None).await;
    let attempts = (0..20).map(|i| {
        let instance = if i % 2 == 0 { &app } else { &two };
        refresh(instance, SITE, &token)
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );
}

/// `user-token` stores bounded strings only, spends the account's request limits (and `0`
/// stops it), and keeps at most 1,000 tokens per account waiting to be exchanged.
#[tokio::test]
async fn user_tokens_are_bounded_and_count_against_the_account() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "utbounds").await;
    let sk = api_key(&app, &slug).await;
    for (field, body) in [
        (
            "display_name",
            json!({ "external_user_id": "u", "display_name": "x".repeat(201) }),
        ),
        (
            "email",
            json!({ "external_user_id": "u", "email": format!("{}@example.com", "x".repeat(243)) }),
        ),
        (
            "external_user_id",
            json!({ "external_user_id": "x".repeat(256) }),
        ),
    ] {
        let resp = user_token_resp(&app, &sk, body).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_body", "{field}");
        assert_eq!(body["error"]["field"], field);
    }
    // The longest accepted values.
    let resp = user_token_resp(
        &app,
        &sk,
        json!({ "external_user_id": "x".repeat(255), "display_name": "d".repeat(200),
                "email": format!("{}@example.com", "e".repeat(242)) }),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // The account's limits apply, and 0 is the kill switch.
    let account: kataven_hub::tenancy::slug::AccountSlug = slug.parse().unwrap();
    let catalog = &app.state.catalog;
    catalog
        .set_limit(&account, "per_minute", Some(0))
        .await
        .unwrap();
    app.state
        .cache
        .invalidate(&CatalogChange::Limits(slug.clone()));
    let resp = user_token_resp(&app, &sk, json!({ "external_user_id": "u" })).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "minute");
    catalog
        .set_limit(&account, "per_minute", None)
        .await
        .unwrap();
    app.state
        .cache
        .invalidate(&CatalogChange::Limits(slug.clone()));

    // At most 1,000 waiting to be exchanged.
    sqlx::query(
        "INSERT INTO widget_user_tokens (token_hash, account, external_user_id, expires_at)
         SELECT sha256((g::text || random()::text)::bytea), $1, 'u', now() + interval '5 minutes'
         FROM generate_series(1, 999) AS g",
    )
    .bind(&slug)
    .execute(catalog.pool())
    .await
    .unwrap();
    let resp = user_token_resp(&app, &sk, json!({ "external_user_id": "u" })).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "user_tokens", "{body}");
    // Exchanged (or expired) ones do not count.
    sqlx::query(
        "UPDATE widget_user_tokens SET consumed_at = now()
         WHERE ctid IN (SELECT ctid FROM widget_user_tokens WHERE account = $1 LIMIT 1)",
    )
    .bind(&slug)
    .execute(catalog.pool())
    .await
    .unwrap();
    assert_eq!(
        user_token_resp(&app, &sk, json!({ "external_user_id": "u" }))
            .await
            .status(),
        200
    );
}

// ---------------------------------------------------------------------------------------------
// Suspected defects (see the reasons)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_suspended_account_cannot_mint_user_tokens() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "ut_susp").await;
    let sk = api_key(&app, &slug).await;
    // The key works in the management API before.
    let resp = app
        .client
        .get(app.url("/api/v1/agents"))
        .bearer_auth(&sk)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.state
        .catalog
        .set_status(&slug.parse().unwrap(), AccountStatus::Suspended)
        .await
        .unwrap();
    // The management API refuses once the change propagated…
    let mut suspended = false;
    for _ in 0..100 {
        let resp = app
            .client
            .get(app.url("/api/v1/agents"))
            .bearer_auth(&sk)
            .send()
            .await
            .unwrap();
        if error_code(resp).await == (403, "account_suspended".into()) {
            suspended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(suspended);
    // …and so must the widget's server-to-server endpoint.
    let resp = user_token_resp(&app, &sk, json!({ "external_user_id": "u" })).await;
    assert_eq!(error_code(resp).await, (403, "account_suspended".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_signing_key_is_known_to_every_instance() {
    let public_url = "https://hub.example";
    let one = TestApp::builder()
        .await
        .config(|c| c.public_url = Some(public_url.to_owned()))
        .spawn()
        .await;
    let two = TestApp::builder()
        .await
        .database_url(&system_url_of(&one))
        .config(|c| {
            c.oidc_issuer = Some(one.issuer.issuer());
            c.public_url = Some(public_url.to_owned());
        })
        .spawn()
        .await;
    let slug = account(&one, "rotate").await;
    let agent_id = public_agent(&one, &slug, "Support").await;
    let key = key_of(&widget_key(&one, &slug, &["acme.com"], Some(&agent_id)).await);
    // Before: tokens of one refresh on two.
    let token = guest_token(&one, &key, None).await;
    assert_eq!(refresh(&two, SITE, &token).await.status(), 200);

    // Instance one rotates (what its maintenance task does when the key is due).
    let rotated = one
        .state
        .widget
        .sessions
        .keys()
        .rotate_if_older(chrono::Duration::zero())
        .await
        .unwrap();
    assert!(rotated);
    let token = guest_token(&one, &key, None).await;
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let (newest, _) = signing_key(&one).await;
    assert_eq!(kid, newest);

    // Within a few seconds instance two publishes the new key and accepts its tokens.
    let mut known = false;
    for _ in 0..50 {
        let jwks: JwkSet = two
            .get("/.well-known/jwks.json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if jwks.find(&kid).is_some() && refresh(&two, SITE, &token).await.status() == 200 {
            known = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(known, "instance two never learned the rotated key");
}

/// Retiring the only session signing key (what an operator does when it leaked) does not stop
/// sessions: an instance creates a new key at once, and new sessions are signed with it.
#[tokio::test]
async fn retiring_the_only_signing_key_creates_a_new_one() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "retire").await;
    let agent_id = public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], Some(&agent_id)).await);
    let (leaked, _) = signing_key(&app).await;
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE purpose = 'widget_session'")
        .execute(app.state.catalog.pool())
        .await
        .unwrap();
    let mut signed_by = None;
    for _ in 0..50 {
        let resp = guest(&app, SITE, &key, None).await;
        assert!(
            matches!(resp.status().as_u16(), 200 | 500),
            "{}",
            resp.status()
        );
        if resp.status() == 200 {
            let body: Value = resp.json().await.unwrap();
            let token = body["token"].as_str().unwrap();
            let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
            if kid != leaked {
                verify_session(&app, token).await;
                signed_by = Some(kid);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kid = signed_by.expect("sessions were never signed with a new key");
    let (newest, _) = signing_key(&app).await;
    assert_eq!(kid, newest);
}

#[tokio::test]
async fn user_token_accepts_the_bearer_scheme_in_any_case() {
    let app = TestApp::spawn().await;
    let slug = account(&app, "ut_case").await;
    let sk = api_key(&app, &slug).await;
    let authorization = format!("bearer {sk}");
    // The management API accepts it…
    let resp = app
        .client
        .get(app.url("/api/v1/agents"))
        .header("Authorization", &authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // …and so should the widget's server-to-server endpoint.
    let resp = app
        .client
        .post(app.url("/api/v1/widget/auth/user-token"))
        .header("Authorization", &authorization)
        .json(&json!({ "external_user_id": "u" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn pages_on_other_origins_cannot_spend_a_keys_quota() {
    let app = TestApp::builder()
        .await
        .config(|c| c.widget_key_limit_per_minute = 2)
        .spawn()
        .await;
    let slug = account(&app, "quotaorigin").await;
    public_agent(&app, &slug, "Support").await;
    let key = key_of(&widget_key(&app, &slug, &["acme.com"], None).await);
    for _ in 0..5 {
        let resp = config(&app, "https://evilacme.com", &key, None).await;
        assert_eq!(resp.status(), 403);
    }
    for i in 0..2 {
        assert_eq!(
            config(&app, SITE, &key, None).await.status(),
            200,
            "call {i}"
        );
    }
    assert_eq!(config(&app, SITE, &key, None).await.status(), 429);
}
