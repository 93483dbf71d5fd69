//! Widget keys, widget settings and the public widget endpoints (SPEC §5): allowlists, guest
//! and user sessions, refresh, CORS, abuse limits.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kataven_hub::auth::membership::CatalogChange;
use kataven_hub::config::Config;
use kataven_hub::tenancy::catalog::{AccountStatus, Role};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::client::{Client, Page, Resp, WIDGET, second_instance, send};
use crate::support::{TestApp, from_client};

/// The page the widget runs on in most tests (allowlist `acme.com`).
const SITE: &str = "https://acme.com";

/// A page whose origin merely ends like an allowed one.
const EVIL: &str = "https://evilacme.com";

/// The widget's server-to-server endpoint.
const USER_TOKEN: &str = "/api/v1/widget/auth/user-token";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A fresh account with `alice` as admin and `bob` as a plain member; alice.
async fn account<'a>(app: &'a TestApp, prefix: &str) -> Client<'a> {
    let alice = Client::new(app, prefix, "alice").await;
    app.state
        .catalog
        .upsert_member(&alice.account.parse().unwrap(), "bob", Role::Member)
        .await
        .unwrap();
    alice
}

fn id(created: &Value) -> String {
    created["id"].as_str().expect("id").to_owned()
}

fn key_of(created: &Value) -> String {
    created["key"].as_str().expect("key").to_owned()
}

/// Creates an agent; returns its id.
async fn agent(c: &Client<'_>, body: Value) -> String {
    id(&c.create("/agents", body).await)
}

/// An active, public agent: the widget offers it to guests and users.
async fn public_agent(c: &Client<'_>, name: &str) -> String {
    let greeting = format!("Hi from {name}");
    agent(
        c,
        json!({ "name": name, "status": "active", "auth_mode": "public", "greeting_message": greeting }),
    )
    .await
}

/// Creates a widget key (asserting 201); returns the answer, with the key.
async fn widget_key(c: &Client<'_>, allowlist: &[&str], pin: Option<&str>) -> Value {
    c.create(
        "/widget-keys",
        json!({ "name": "site", "domain_allowlist": allowlist, "agent_id": pin }),
    )
    .await
}

/// The `sk_live_` secret of a new API key, created by `admin` elevated.
async fn api_key_secret(admin: &Client<'_>) -> String {
    key_of(
        &admin
            .elevated()
            .create("/api-keys", json!({ "name": "backend" }))
            .await,
    )
}

/// The account's server: a new API key of the account, as a client.
async fn api_key<'a>(admin: &Client<'a>) -> Client<'a> {
    Client::api_key(admin.app, &api_key_secret(admin).await)
}

async fn set_policy(c: &Client<'_>, agent: &str, body: Value) {
    let resp = c
        .patch(&format!("/agents/{agent}/widget-settings"), body)
        .await;
    resp.ok(200);
}

async fn patch_agent(c: &Client<'_>, agent: &str, body: Value) {
    c.patch(&format!("/agents/{agent}"), body).await.ok(200);
}

async fn patch_widget_key(c: &Client<'_>, id: &str, body: Value) -> Resp {
    c.patch(&format!("/widget-keys/{id}"), body).await
}

async fn list_widget_keys(c: &Client<'_>) -> Vec<Value> {
    let resp = c.get("/widget-keys").await;
    resp.ok(200).as_array().expect("a list").clone()
}

/// A fresh account (`alice`, `bob`) with a public agent "Support" and a widget key for
/// `acme.com`, pinned to the agent when `pinned`, used on [`SITE`].
struct Site<'a> {
    alice: Client<'a>,
    agent: String,
    created: Value,
    page: Page<'a>,
}

async fn site<'a>(app: &'a TestApp, prefix: &str, pinned: bool) -> Site<'a> {
    let alice = account(app, prefix).await;
    let agent = public_agent(&alice, "Support").await;
    let created = widget_key(&alice, &["acme.com"], pinned.then_some(agent.as_str())).await;
    let page = Page::new(app, &key_of(&created), SITE);
    Site {
        alice,
        agent,
        created,
        page,
    }
}

/// Asks `probe` until it answers with `code` (a catalog change propagating), at most 100
/// times 20 ms; returns the last answer.
async fn until_code<F, Fut>(probe: F, code: &str) -> Resp
where
    F: Fn() -> Fut,
    Fut: Future<Output = Resp>,
{
    let mut resp = probe().await;
    for _ in 0..100 {
        if resp.code() == code {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        resp = probe().await;
    }
    resp
}

async fn jwks(app: &TestApp) -> Value {
    send(app.get("/.well-known/jwks.json"))
        .await
        .ok(200)
        .clone()
}

/// The claims of a session token, verified the way the voice gateway would: with the key the
/// token's `kid` names in `/.well-known/jwks.json`, ES256, our issuer and audience.
async fn verify_session(app: &TestApp, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let kid = header.kid.expect("session tokens name their key");
    let jwks: JwkSet = serde_json::from_value(jwks(app).await).expect("a JWK set");
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

/// The claims of the session token in a 200 answer.
async fn session_claims(app: &TestApp, resp: &Resp) -> Value {
    let token = resp.ok(200)["token"].as_str().expect("token");
    verify_session(app, token).await
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

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Asserts an error answer's status and code, whatever its field.
#[track_caller]
fn assert_code(resp: &Resp, status: u16, code: &str, case: &str) {
    assert_eq!(
        (resp.status, resp.code()),
        (status, code),
        "{case}: {}",
        resp.text
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Widget keys
// ---------------------------------------------------------------------------------------------

/// Bob (a plain member) creates a key pinned to a new public agent, its allowlist spelled
/// loosely; returns the answer and the agent.
async fn members_key(alice: &Client<'_>) -> (Value, String) {
    let pinned = public_agent(alice, "Front desk").await;
    let created = alice
        .as_user("bob")
        .create(
            "/widget-keys",
            json!({
                "name": "  Marketing site ",
                "domain_allowlist": ["HTTPS://Acme.COM:443/", "*.Shop.Example", "Localhost:*", "acme.com:8443"],
                "agent_id": pinned,
            }),
        )
        .await;
    (created, pinned)
}

#[tokio::test]
async fn a_member_creates_a_widget_key_in_its_normal_spelling() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_crud").await;
    let (created, pinned) = members_key(&alice).await;
    let key = key_of(&created);
    let prefix = format!("pk_live_{}_", alice.account);
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
}

#[tokio::test]
async fn a_widget_key_is_never_shown_or_stored_again() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_once").await;
    let (created, pinned) = members_key(&alice).await;
    let key = key_of(&created);

    let list = list_widget_keys(&alice.as_user("bob")).await;
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
    let secret = &key[format!("pk_live_{}_", alice.account).len()..key.len() - 8];
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM widget_keys WHERE position($1 in (widget_keys::text)) > 0",
    )
    .bind(secret)
    .fetch_one(app.state.catalog.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn a_widget_key_may_have_an_empty_allowlist_and_no_pin() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_empty").await;
    let blocked = alice
        .as_user("bob")
        .create(
            "/widget-keys",
            json!({ "name": "blocked", "domain_allowlist": [] }),
        )
        .await;
    assert!(blocked["agent_id"].is_null());
    assert_eq!(blocked["domain_allowlist"], json!([]));
}

#[tokio::test]
async fn widget_keys_are_listed_newest_first() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_order").await;
    let older = widget_key(&alice, &["acme.com"], None).await;
    let newer = widget_key(&alice, &[], None).await;
    let list = list_widget_keys(&alice).await;
    assert_eq!(list[0]["id"], newer["id"]);
    assert_eq!(list[1]["id"], older["id"]);
}

#[tokio::test]
async fn widget_key_bodies_are_validated() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_valid").await;
    let refused = |body: Value, field: &'static str| {
        let alice = &alice;
        async move {
            let case = body.to_string();
            let resp = alice.post("/widget-keys", body).await;
            resp.err(400, "invalid_body", Some(field), &case);
        }
    };
    for bad in [
        "*.com",
        "https://acme.com/path",
        "a.*.com",
        "",
        "*",
        "ftp://acme.com",
    ] {
        let body = json!({ "name": "k", "domain_allowlist": ["acme.com", bad] });
        refused(body, "domain_allowlist").await;
    }
    for agent_id in [json!(Uuid::now_v7()), json!("nope")] {
        let body = json!({ "name": "k", "domain_allowlist": ["acme.com"], "agent_id": agent_id });
        refused(body, "agent_id").await;
    }
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
        refused(body, field).await;
    }
    // An agent of another account is unknown here.
    let other = account(&app, "wk_other").await;
    let foreign = public_agent(&other, "Theirs").await;
    let body = json!({ "name": "k", "domain_allowlist": ["acme.com"], "agent_id": foreign });
    refused(body, "agent_id").await;
    assert!(list_widget_keys(&alice).await.is_empty());
}

#[tokio::test]
async fn a_patch_renames_repins_and_normalises_a_widget_key_at_once() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_patch").await;
    let first = public_agent(&alice, "First").await;
    let created = widget_key(&alice, &["acme.com"], None).await;

    let resp = patch_widget_key(
        &alice,
        &id(&created),
        json!({ "name": "Renamed", "domain_allowlist": ["*.Acme.com", "https://acme.com"], "agent_id": first }),
    )
    .await;
    let item = resp.ok(200);
    assert_eq!(item["name"], "Renamed");
    assert_eq!(
        item["domain_allowlist"],
        json!(["*.acme.com", "https://acme.com"])
    );
    assert_eq!(item["agent_id"], first.as_str());
    assert_eq!(item["last8"], created["last8"]);
    assert!(item.get("key").is_none());
    // The pin takes effect at once: config names the pinned agent.
    let page = Page::new(&app, &key_of(&created), SITE);
    assert_eq!(
        page.config(None).await.ok(200)["agent"]["id"],
        first.as_str()
    );
}

#[tokio::test]
async fn a_widget_key_patch_keeps_absent_fields_and_null_unpins() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_unpin").await;
    let first = public_agent(&alice, "First").await;
    let second = public_agent(&alice, "Second").await;
    let created = alice
        .create(
            "/widget-keys",
            json!({ "name": "Renamed", "domain_allowlist": ["*.acme.com", "https://acme.com"], "agent_id": first }),
        )
        .await;
    let key_id = id(&created);

    // Absent fields keep their value; a new pin replaces the old one.
    let resp = patch_widget_key(&alice, &key_id, json!({ "agent_id": second })).await;
    let item = resp.ok(200);
    assert_eq!(
        (item["name"].clone(), item["agent_id"].clone()),
        (json!("Renamed"), json!(second))
    );
    // `null` unpins.
    let resp = patch_widget_key(&alice, &key_id, json!({ "agent_id": null })).await;
    let item = resp.ok(200);
    assert!(item["agent_id"].is_null());
    assert_eq!(
        item["domain_allowlist"],
        json!(["*.acme.com", "https://acme.com"])
    );
    let resp = Page::new(&app, &key_of(&created), SITE).config(None).await;
    let cfg = resp.ok(200);
    assert!(cfg.get("agent").is_none());
    assert_eq!(cfg["agents"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_disabled_widget_key_stops_working_until_re_enabled() {
    let app = TestApp::spawn().await;
    let Site {
        alice,
        created,
        page,
        ..
    } = site(&app, "wk_disable", false).await;
    let key_id = id(&created);

    let resp = patch_widget_key(&alice, &key_id, json!({ "disabled": true })).await;
    let item = resp.ok(200);
    assert_eq!(item["disabled"], true);
    assert!(item["disabled_at"].is_string());
    let resp = page.config(None).await;
    resp.err(401, "invalid_client_key", None, "disabled");
    // Disabling again keeps the first time.
    let again = patch_widget_key(&alice, &key_id, json!({ "disabled": true })).await;
    assert_eq!(again.ok(200)["disabled_at"], item["disabled_at"]);
    let resp = patch_widget_key(&alice, &key_id, json!({ "disabled": false })).await;
    let item = resp.ok(200);
    assert_eq!(item["disabled"], false);
    assert!(item["disabled_at"].is_null());
    assert_eq!(page.config(None).await.status, 200);
}

#[tokio::test]
async fn widget_key_patches_are_validated() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_pvalid").await;
    let key_id = id(&widget_key(&alice, &["acme.com"], None).await);
    for (body, field) in [
        (json!({ "domain_allowlist": ["*.com"] }), "domain_allowlist"),
        (json!({ "domain_allowlist": [""] }), "domain_allowlist"),
        (json!({ "agent_id": Uuid::now_v7() }), "agent_id"),
        (json!({ "name": "" }), "name"),
        (json!({ "name": null }), "name"),
        (json!({ "disabled": null }), "disabled"),
    ] {
        let case = body.to_string();
        let resp = patch_widget_key(&alice, &key_id, body).await;
        resp.err(400, "invalid_body", Some(field), &case);
    }
}

#[tokio::test]
async fn patching_an_unknown_widget_key_is_not_found() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_unknown").await;
    for missing in [Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        let resp = patch_widget_key(&alice, &missing, json!({ "name": "x" })).await;
        resp.err(404, "not_found", None, &missing);
    }
}

#[tokio::test]
async fn another_account_cannot_see_or_change_a_widget_key() {
    let app = TestApp::spawn().await;
    let Site { created, page, .. } = site(&app, "wk_patch", false).await;
    let key_id = id(&created);
    let other = Client::new(&app, "wk_patch_o", "alice").await;

    let resp = patch_widget_key(&other, &key_id, json!({ "disabled": true })).await;
    resp.err(404, "not_found", None, "patch");
    let resp = other.delete(&format!("/widget-keys/{key_id}")).await;
    resp.err(404, "not_found", None, "delete");
    assert!(list_widget_keys(&other).await.is_empty());
    assert_eq!(page.config(None).await.status, 200);
}

#[tokio::test]
async fn deleting_a_never_used_widget_key_removes_it() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_del").await;
    let bob = alice.as_user("bob");
    let unused = widget_key(&alice, &["acme.com"], None).await;
    let used = widget_key(&alice, &["acme.com"], None).await;
    let path = format!("/widget-keys/{}", id(&unused));

    bob.delete(&path).await.ok(204);
    let list = list_widget_keys(&alice).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], used["id"]);
    bob.delete(&path)
        .await
        .err(404, "not_found", None, "deleted twice");
    let page = Page::new(&app, &key_of(&unused), SITE);
    let resp = page.config(None).await;
    resp.err(401, "invalid_client_key", None, "deleted key");
}

#[tokio::test]
async fn deleting_a_used_widget_key_disables_it() {
    let app = TestApp::spawn().await;
    let Site {
        alice,
        created,
        page,
        ..
    } = site(&app, "wk_del_used", false).await;
    let bob = alice.as_user("bob");
    let path = format!("/widget-keys/{}", id(&created));

    // Used by a widget: DELETE keeps it for the record, disabled.
    assert_eq!(page.config(None).await.status, 200);
    bob.delete(&path).await.ok(204);
    let list = list_widget_keys(&alice).await;
    assert_eq!(list.len(), 1, "a used widget key was hard-deleted");
    assert_eq!(list[0]["id"], created["id"]);
    assert_eq!(list[0]["disabled"], true);
    assert!(list[0]["last_used_at"].is_string());
    let resp = page.config(None).await;
    resp.err(401, "invalid_client_key", None, "deleted key");
    // Deleting it again is harmless.
    bob.delete(&path).await.ok(204);
}

/// A widget key change is committed in the catalog before its audit row is written in the
/// tenant database: when that write fails, the caller still gets the answer of the change that
/// happened (and a new key's only copy), not an error.
#[tokio::test]
async fn a_failed_audit_write_does_not_fail_a_committed_widget_key_change() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "noaudit").await;
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&mut alice.db().await)
        .await
        .unwrap();
    let created = widget_key(&alice, &["acme.com"], None).await;
    assert!(key_of(&created).starts_with("pk_live_"));
    let path = format!("/widget-keys/{}", id(&created));
    alice
        .patch(&path, json!({ "name": "renamed" }))
        .await
        .ok(200);
    alice.delete(&path).await.ok(204);
    assert!(list_widget_keys(&alice).await.is_empty());
}

#[tokio::test]
async fn an_api_key_may_manage_widget_keys() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_sk").await;
    let server = api_key(&alice).await;

    let created = server
        .create(
            "/widget-keys",
            json!({ "name": "by key", "domain_allowlist": ["acme.com"] }),
        )
        .await;
    assert!(key_of(&created).starts_with(&format!("pk_live_{}_", alice.account)));
    let list = server.get("/widget-keys").await;
    assert_eq!(list.body[0]["id"], created["id"]);
    assert!(list.body[0].get("key").is_none());
    let path = format!("/widget-keys/{}", id(&created));
    server
        .patch(&path, json!({ "name": "renamed" }))
        .await
        .ok(200);
    server.delete(&path).await.ok(204);
    assert!(list_widget_keys(&alice).await.is_empty());
}

#[tokio::test]
async fn widget_keys_need_credentials() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "wk_anon").await;
    let resp = send(
        app.get("/api/v1/widget-keys")
            .header("X-Account-ID", &alice.account),
    )
    .await;
    resp.err(401, "unauthenticated", None, "without credentials");
}

// ---------------------------------------------------------------------------------------------
// 2. Widget settings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn widget_branding_has_defaults() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ws_default").await;
    let resp = alice.as_user("bob").get("/widget-settings").await;
    let settings = resp.ok(200);
    assert_eq!(settings["primary_color"], "#4F46E5");
    assert_eq!(settings["accent_color"], "#F59E0B");
    assert!(settings["logo_url"].is_null());
    assert_eq!(settings["launcher_position"], "br");
    assert_eq!(settings["launcher_label"], "Chat with us");
    assert_eq!(settings["privacy_notice"], "");
}

#[tokio::test]
async fn only_elevated_admins_change_widget_branding() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ws_brand").await;
    let server = api_key(&alice).await;
    let change = json!({ "primary_color": "#112233" });

    // A member, even elevated; an admin without the header; an API key: 403 admin_required.
    let bob = alice.as_user("bob").elevated();
    let resp = bob.patch("/widget-settings", change.clone()).await;
    resp.err(403, "admin_required", None, "an elevated member");
    let resp = alice.patch("/widget-settings", change.clone()).await;
    resp.err(403, "admin_required", None, "an admin, not elevated");
    let rb = server.req(Method::PATCH, "/api/v1/widget-settings");
    let resp = send(rb.header("X-Admin", "true").json(&change)).await;
    resp.err(403, "admin_required", None, "an API key");
}

#[tokio::test]
async fn widget_branding_is_validated() {
    let app = TestApp::spawn().await;
    let admin = account(&app, "ws_valid").await.elevated();
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
        let case = body.to_string();
        let resp = admin.patch("/widget-settings", body).await;
        resp.err(400, "invalid_body", Some(field), &case);
    }
}

#[tokio::test]
async fn changed_widget_branding_is_what_members_and_the_widget_see() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "ws_change", false).await;
    let resp = alice
        .elevated()
        .patch(
            "/widget-settings",
            json!({
                "primary_color": "#112233",
                "accent_color": "#abc",
                "logo_url": "https://cdn.acme.com/logo.png",
                "launcher_position": "tl",
                "launcher_label": "Talk to us",
                "privacy_notice": "We record calls.",
            }),
        )
        .await;
    let changed = resp.ok(200);
    assert_eq!(changed["primary_color"], "#112233");
    assert_eq!(changed["accent_color"], "#abc");
    assert_eq!(changed["logo_url"], "https://cdn.acme.com/logo.png");
    assert_eq!(changed["launcher_position"], "tl");
    assert_eq!(changed["launcher_label"], "Talk to us");
    assert_eq!(changed["privacy_notice"], "We record calls.");
    let got = alice.as_user("bob").get("/widget-settings").await;
    assert_eq!(got.ok(200), changed);

    // The widget sees the branding.
    let resp = page.config(None).await;
    let cfg = resp.ok(200);
    assert_eq!(cfg["branding"]["primary_color"], "#112233");
    assert_eq!(cfg["branding"]["launcher_position"], "tl");
    assert_eq!(cfg["account"], alice.account.as_str());
}

#[tokio::test]
async fn a_null_logo_url_clears_the_logo_and_keeps_the_rest() {
    let app = TestApp::spawn().await;
    let admin = account(&app, "ws_logo").await.elevated();
    let branded =
        json!({ "primary_color": "#112233", "logo_url": "https://cdn.acme.com/logo.png" });
    admin.patch("/widget-settings", branded).await.ok(200);

    let resp = admin
        .patch("/widget-settings", json!({ "logo_url": null }))
        .await;
    let cleared = resp.ok(200);
    assert!(cleared["logo_url"].is_null());
    assert_eq!(cleared["primary_color"], "#112233");
}

/// The path of an agent's widget policy.
fn policy_path(agent: &str) -> String {
    format!("/agents/{agent}/widget-settings")
}

#[tokio::test]
async fn an_agents_widget_policy_defaults_to_enabled_for_guests_and_users() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ws_agent").await;
    let plain = agent(&alice, json!({ "name": "Plain" })).await;
    let got = alice.as_user("bob").get(&policy_path(&plain)).await;
    assert_eq!(
        got.ok(200),
        &json!({ "widget_enabled": true, "auth_mode": "both" })
    );
}

#[tokio::test]
async fn any_member_changes_an_agents_widget_policy() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ws_member").await;
    let path = policy_path(&agent(&alice, json!({ "name": "Plain" })).await);
    let bob = alice.as_user("bob");

    // Not admin-only: a member may change an agent's policy.
    let body = json!({ "widget_enabled": false, "auth_mode": "guest" });
    let resp = bob.patch(&path, body).await;
    assert_eq!(
        resp.ok(200),
        &json!({ "widget_enabled": false, "auth_mode": "guest" })
    );
    let resp = bob.patch(&path, json!({ "auth_mode": "user" })).await;
    let changed = resp.ok(200);
    assert_eq!(
        changed,
        &json!({ "widget_enabled": false, "auth_mode": "user" })
    );
    assert_eq!(alice.get(&path).await.ok(200), changed);
}

#[tokio::test]
async fn agent_widget_policies_are_validated() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ws_pvalid").await;
    let path = policy_path(&agent(&alice, json!({ "name": "Plain" })).await);
    for (body, field) in [
        (json!({ "auth_mode": "everyone" }), "auth_mode"),
        (json!({ "widget_enabled": "yes" }), "widget_enabled"),
        (json!({ "widget_enabled": null }), "widget_enabled"),
    ] {
        let case = body.to_string();
        let resp = alice.patch(&path, body).await;
        resp.err(400, "invalid_body", Some(field), &case);
    }
}

#[tokio::test]
async fn widget_policies_of_unknown_or_foreign_agents_are_not_found() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ws_unknown").await;
    let other = account(&app, "ws_agent_o").await;
    let foreign = agent(&other, json!({ "name": "Theirs" })).await;
    for missing in [Uuid::now_v7().to_string(), foreign] {
        let path = policy_path(&missing);
        alice.get(&path).await.err(404, "not_found", None, &missing);
        let resp = alice.patch(&path, json!({ "widget_enabled": false })).await;
        resp.err(404, "not_found", None, &missing);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Config and origins
// ---------------------------------------------------------------------------------------------

/// An account's agents, offered by the widget or not.
struct Agents<'a> {
    alice: Client<'a>,
    /// Active and public.
    older: String,
    /// Active, for authenticated callers only, created after `older`.
    newer: String,
    /// Active and public, but not enabled for the widget.
    hidden: String,
    /// Public, but paused.
    paused: String,
}

async fn agents<'a>(app: &'a TestApp, prefix: &str) -> Agents<'a> {
    let alice = account(app, prefix).await;
    let older = public_agent(&alice, "Older").await;
    let newer = agent(
        &alice,
        json!({ "name": "Members only", "status": "active", "auth_mode": "authenticated", "greeting_message": "Welcome back" }),
    )
    .await;
    agent(&alice, json!({ "name": "Draft", "auth_mode": "public" })).await;
    let hidden = public_agent(&alice, "Hidden").await;
    set_policy(&alice, &hidden, json!({ "widget_enabled": false })).await;
    let paused = public_agent(&alice, "Paused").await;
    patch_agent(&alice, &paused, json!({ "status": "paused" })).await;
    Agents {
        alice,
        older,
        newer,
        hidden,
        paused,
    }
}

#[tokio::test]
async fn config_lists_the_offered_agents_newest_first() {
    let app = TestApp::spawn().await;
    let Agents {
        alice,
        older,
        newer,
        ..
    } = agents(&app, "cfg").await;
    let key = key_of(&widget_key(&alice, &["acme.com"], None).await);

    let resp = Page::new(&app, &key, SITE).config(None).await;
    let cfg = resp.ok(200);
    assert_eq!(cfg["account"], alice.account.as_str());
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
}

#[tokio::test]
async fn config_names_the_agent_asked_for_if_the_widget_offers_it() {
    let app = TestApp::spawn().await;
    let Agents {
        alice,
        older,
        hidden,
        paused,
        ..
    } = agents(&app, "cfg_named").await;
    let key = key_of(&widget_key(&alice, &["acme.com"], None).await);
    let page = Page::new(&app, &key, SITE);

    let resp = page.config(Some(&older)).await;
    let cfg = resp.ok(200);
    assert_eq!(cfg["agent"]["id"], older.as_str());
    assert!(cfg.get("agents").is_none());
    // An agent the widget does not offer, or none at all: 403 widget_not_allowed.
    for not_offered in [hidden, paused, Uuid::now_v7().to_string()] {
        let resp = page.config(Some(&not_offered)).await;
        resp.err(403, "widget_not_allowed", None, &not_offered);
    }
}

#[tokio::test]
async fn a_pinned_keys_config_names_its_agent_and_the_auth_modes_to_offer() {
    let app = TestApp::spawn().await;
    let Agents { alice, older, .. } = agents(&app, "cfg_pinned").await;
    let pinned = key_of(&widget_key(&alice, &["acme.com"], Some(&older)).await);
    let page = Page::new(&app, &pinned, SITE);

    let resp = page.config(None).await;
    let cfg = resp.ok(200);
    assert_eq!(cfg["agent"]["id"], older.as_str());
    assert_eq!(cfg["agent"]["name"], "Older");
    assert_eq!(cfg["agent"]["greeting_message"], "Hi from Older");
    assert_eq!(cfg["agent"]["auth_modes"], json!(["guest", "user"]));
    assert!(cfg.get("agents").is_none());
    set_policy(&alice, &older, json!({ "auth_mode": "guest" })).await;
    let resp = page.config(None).await;
    assert_eq!(resp.ok(200)["agent"]["auth_modes"], json!(["guest"]));
}

#[tokio::test]
async fn a_pinned_key_refuses_other_agents_and_a_pinned_agent_no_longer_offered() {
    let app = TestApp::spawn().await;
    let Agents {
        alice,
        older,
        newer,
        ..
    } = agents(&app, "cfg_pin_no").await;
    let pinned = key_of(&widget_key(&alice, &["acme.com"], Some(&older)).await);
    let page = Page::new(&app, &pinned, SITE);

    // Asking a pinned key for another agent: 403.
    let resp = page.config(Some(&newer)).await;
    resp.err(403, "widget_not_allowed", None, "another agent");
    // The pinned agent no longer offered: 403.
    set_policy(&alice, &older, json!({ "widget_enabled": false })).await;
    let resp = page.config(None).await;
    resp.err(403, "widget_not_allowed", None, "the pinned agent disabled");
}

#[tokio::test]
async fn the_allowlist_decides_which_pages_may_use_a_key() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "origins", false).await;
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
        let resp = page.from(origin).config(None).await;
        if status == 200 {
            assert_eq!(resp.status, 200, "{origin}");
        } else {
            resp.err(403, "origin_not_allowed", None, origin);
        }
    }
}

#[tokio::test]
async fn without_an_origin_the_referers_origin_counts() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "referer", false).await;
    let from = |origin: Option<&str>, referer: Option<&str>| {
        let page = match origin {
            Some(origin) => page.from(origin),
            None => page.without_origin(),
        };
        let rb = page.config_req(None);
        send(match referer {
            Some(referer) => rb.header("Referer", referer),
            None => rb,
        })
    };
    let resp = from(None, Some("https://acme.com/pricing?plan=pro#chat")).await;
    assert_eq!(resp.status, 200);
    let resp = from(None, Some("https://evilacme.com/acme.com")).await;
    resp.err(
        403,
        "origin_not_allowed",
        None,
        "the Referer of another page",
    );
    // Neither: 403. `Origin: null` never falls back to the Referer. An Origin wins over a Referer.
    let resp = from(None, None).await;
    resp.err(403, "origin_not_allowed", None, "neither");
    let resp = from(Some("null"), Some("https://acme.com/")).await;
    resp.err(403, "origin_not_allowed", None, "Origin: null");
    let resp = from(Some(EVIL), Some("https://acme.com/")).await;
    resp.err(403, "origin_not_allowed", None, "another Origin");
}

#[tokio::test]
async fn wildcard_any_port_and_exact_allowlist_entries_match_as_documented() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "shapes").await;
    let allowlist = ["*.shop.example", "localhost:*", "https://exact.example"];
    let shapes = key_of(&widget_key(&alice, &allowlist, None).await);
    let page = Page::new(&app, &shapes, SITE);
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
            page.from(origin).config(None).await.status,
            status,
            "{origin}"
        );
    }
}

#[tokio::test]
async fn an_empty_allowlist_blocks_a_key_everywhere() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "blocked").await;
    public_agent(&alice, "Support").await;
    let blocked = key_of(&widget_key(&alice, &[], None).await);
    let resp = Page::new(&app, &blocked, SITE).config(None).await;
    resp.err(403, "origin_not_allowed", None, "an empty allowlist");
}

#[tokio::test]
async fn unknown_and_malformed_widget_keys_are_refused() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "badkeys", false).await;
    let key = page.key.clone();
    assert_eq!(page.config(None).await.status, 200);

    let unknown = kataven_hub::auth::keys::new_widget_key(&alice.account);
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
        let resp = page.with_key(bad).config(None).await;
        resp.err(401, "invalid_client_key", None, bad);
    }
    // Missing client_key: 400.
    let resp = send(page.req(Method::GET, &format!("{WIDGET}/config"))).await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn a_disabled_key_is_refused_by_the_widget_endpoints() {
    let app = TestApp::spawn().await;
    let Site {
        alice,
        created,
        page,
        ..
    } = site(&app, "disabled", false).await;
    let resp = patch_widget_key(&alice, &id(&created), json!({ "disabled": true })).await;
    resp.ok(200);
    let resp = page.config(None).await;
    resp.err(401, "invalid_client_key", None, "config");
    let resp = page.guest(Some(&Uuid::now_v7().to_string())).await;
    resp.err(401, "invalid_client_key", None, "guest");
}

#[tokio::test]
async fn the_keys_of_a_suspended_account_are_refused() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "suspended", false).await;
    assert_eq!(page.config(None).await.status, 200);
    app.state
        .catalog
        .set_status(&alice.account.parse().unwrap(), AccountStatus::Suspended)
        .await
        .unwrap();
    // 403 account_suspended, once the change has propagated.
    let resp = until_code(|| page.config(None), "account_suspended").await;
    resp.err(403, "account_suspended", None, "suspended");
}

// ---------------------------------------------------------------------------------------------
// 4. Guest sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_guest_gets_a_signed_session_for_a_public_agent() {
    let app = TestApp::spawn().await;
    let Site {
        alice, agent, page, ..
    } = site(&app, "guest", false).await;

    let resp = page.guest(Some(&agent)).await;
    let body = resp.ok(200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let claims = session_claims(&app, &resp).await;
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["aud"], "kataven-widget");
    let sub = claims["sub"].as_str().unwrap();
    let guest_id = sub.strip_prefix("guest:").expect("guest:<uuid>");
    assert!(Uuid::parse_str(guest_id).is_ok(), "{sub}");
    assert_eq!(claims["acct"], alice.account.as_str());
    assert_eq!(claims["agent_id"], agent.as_str());
    assert_eq!(claims["kind"], "guest");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 900);
    assert!((iat - now()).abs() < 60);
    assert!(Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn each_guest_is_someone_new() {
    let app = TestApp::spawn().await;
    let Site { agent, page, .. } = site(&app, "guest_new", false).await;
    let first = verify_session(&app, &page.guest_session(Some(&agent)).await).await;
    let again = verify_session(&app, &page.guest_session(Some(&agent)).await).await;
    assert_ne!(again["sub"], first["sub"]);
    assert_ne!(again["jti"], first["jti"]);
}

#[tokio::test]
async fn the_jwks_publishes_only_public_material() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "jwks", true).await;
    page.guest_session(None).await;
    let jwks = jwks(&app).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty(), "{jwks}");
    for jwk in keys {
        assert_eq!(jwk["kty"], "EC");
        assert!(jwk.get("d").is_none(), "a private key is published");
    }
}

#[tokio::test]
async fn a_pinned_key_needs_no_agent_id() {
    let app = TestApp::spawn().await;
    let Site { agent, page, .. } = site(&app, "guest_pin", true).await;
    for asked in [None, Some(agent.as_str())] {
        let token = page.guest_session(asked).await;
        let claims = verify_session(&app, &token).await;
        assert_eq!(claims["agent_id"], agent.as_str(), "{asked:?}");
    }
}

#[tokio::test]
async fn guest_sessions_are_also_served_under_hub_api() {
    let app = TestApp::spawn().await;
    let Site { agent, page, .. } = site(&app, "guest_hub", false).await;
    let body = json!({ "client_key": page.key, "agent_id": agent });
    let resp = page.post("/hub-api/api/v1/widget/auth/guest", body).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn guests_are_refused_unless_the_agent_and_its_policy_allow_them() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "guest_no").await;
    let ok = public_agent(&alice, "Open").await;
    let draft = agent(&alice, json!({ "name": "Draft", "auth_mode": "public" })).await;
    let disabled = public_agent(&alice, "Disabled").await;
    set_policy(&alice, &disabled, json!({ "widget_enabled": false })).await;
    let users_only = public_agent(&alice, "Users only").await;
    set_policy(&alice, &users_only, json!({ "auth_mode": "user" })).await;
    let guests_only = public_agent(&alice, "Guests only").await;
    set_policy(&alice, &guests_only, json!({ "auth_mode": "guest" })).await;
    let authenticated = agent(
        &alice,
        json!({ "name": "Private", "status": "active", "auth_mode": "authenticated" }),
    )
    .await;
    let other = account(&app, "guest_no_o").await;
    let foreign = public_agent(&other, "Theirs").await;
    let key = key_of(&widget_key(&alice, &["acme.com"], None).await);
    let page = Page::new(&app, &key, SITE);

    assert_eq!(page.guest(Some(&ok)).await.status, 200);
    assert_eq!(page.guest(Some(&guests_only)).await.status, 200);
    // An agent of another account is not offered here either.
    for refused in [
        &draft,
        &disabled,
        &users_only,
        &authenticated,
        &Uuid::now_v7().to_string(),
        &foreign,
    ] {
        let resp = page.guest(Some(refused)).await;
        resp.err(403, "widget_not_allowed", None, refused);
    }
}

#[tokio::test]
async fn a_guest_asks_for_one_agent_the_key_allows() {
    let app = TestApp::spawn().await;
    let Site {
        alice, agent, page, ..
    } = site(&app, "guest_agent", false).await;
    // Unpinned key without agent_id: 400 naming the field.
    let resp = page.guest(None).await;
    resp.err(400, "invalid_body", Some("agent_id"), "no agent");
    // Pinned key asked for another agent: 403.
    let second = public_agent(&alice, "Second").await;
    let pinned = key_of(&widget_key(&alice, &["acme.com"], Some(&agent)).await);
    let resp = page.with_key(&pinned).guest(Some(&second)).await;
    resp.err(403, "widget_not_allowed", None, "another agent");
}

#[tokio::test]
async fn guests_on_other_pages_are_refused() {
    let app = TestApp::spawn().await;
    let Site { agent, page, .. } = site(&app, "guest_page", false).await;
    let resp = page.from(EVIL).guest(Some(&agent)).await;
    resp.err(403, "origin_not_allowed", None, EVIL);
}

#[tokio::test]
async fn malformed_guest_requests_are_bad_requests() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "guest_bad", false).await;
    for body in [
        json!({}),
        json!({ "client_key": page.key, "agent_id": "not-a-uuid" }),
    ] {
        let case = body.to_string();
        let resp = page.post(&format!("{WIDGET}/auth/guest"), body).await;
        assert_code(&resp, 400, "invalid_body", &case);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. User tokens and the exchange
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_api_key_mints_a_user_token_stored_only_as_a_hash() {
    let app = TestApp::spawn().await;
    let server = api_key(&account(&app, "ut").await).await;

    let resp = server
        .user_token(json!({ "external_user_id": "u-1" }))
        .await;
    let minted = resp.ok(200);
    assert_eq!(minted["expires_in"], 300);
    let token = minted["user_token"].as_str().unwrap();
    assert!(token.len() >= 32);
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM widget_user_tokens WHERE position($1 in (widget_user_tokens::text)) > 0",
    )
    .bind(token)
    .fetch_one(app.state.catalog.pool())
    .await
    .unwrap();
    assert_eq!(plain, 0);
}

#[tokio::test]
async fn user_tokens_need_an_api_key() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "ut_auth", false).await;
    let body = json!({ "external_user_id": "u-1" });

    // No key, a JWT, a widget key, a made-up key: 401 (with WWW-Authenticate for none).
    let resp = page.without_origin().post(USER_TOKEN, body.clone()).await;
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    resp.err(401, "unauthenticated", None, "no key");
    let resp = alice.user_token(body.clone()).await;
    resp.err(401, "unauthenticated", None, "an ID token");
    for bearer in [
        page.key.clone(),
        app.state.api_keys.hasher().new_api_key(&alice.account),
        "sk_live_nonsense".to_owned(),
    ] {
        let rb = Client::api_key(&app, &bearer).req(Method::POST, USER_TOKEN);
        let resp = send(rb.header("X-Account-ID", &alice.account).json(&body)).await;
        resp.err(401, "unauthenticated", None, &bearer);
    }
}

#[tokio::test]
async fn a_user_token_needs_an_external_user_id() {
    let app = TestApp::spawn().await;
    let server = api_key(&account(&app, "ut_ext").await).await;
    for bad in [json!({}), json!({ "external_user_id": "" })] {
        let case = bad.to_string();
        let resp = server.user_token(bad).await;
        resp.err(400, "invalid_body", Some("external_user_id"), &case);
    }
}

#[tokio::test]
async fn a_user_token_is_exchanged_for_a_user_session() {
    let app = TestApp::spawn().await;
    let Site {
        alice, agent, page, ..
    } = site(&app, "xchg", true).await;
    let server = api_key(&alice).await;

    let token = server.mint_user_token("cust-42", None).await;
    let resp = page.exchange(&token).await;
    let body = resp.ok(200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let claims = session_claims(&app, &resp).await;
    assert_eq!(claims["sub"], "user:cust-42");
    assert_eq!(claims["kind"], "user");
    assert_eq!(claims["acct"], alice.account.as_str());
    assert_eq!(claims["agent_id"], agent.as_str());
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["aud"], "kataven-widget");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

#[tokio::test]
async fn a_user_token_is_exchanged_only_once() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "xchg_once", true).await;
    let server = api_key(&alice).await;
    let token = server.mint_user_token("cust-42", None).await;
    assert_eq!(page.exchange(&token).await.status, 200);

    let resp = page.exchange(&token).await;
    resp.err(401, "unauthenticated", None, "replayed");
    let resp = page.exchange("ut_made_up").await;
    resp.err(401, "unauthenticated", None, "unknown");
}

#[tokio::test]
async fn with_an_unpinned_key_the_user_token_names_the_agent() {
    let app = TestApp::spawn().await;
    let Site {
        alice, agent, page, ..
    } = site(&app, "xchg_named", true).await;
    let server = api_key(&alice).await;
    let unpinned = key_of(&widget_key(&alice, &["acme.com"], None).await);
    let page = page.with_key(&unpinned);

    let token = server.mint_user_token("cust-43", Some(&agent)).await;
    let claims = session_claims(&app, &page.exchange(&token).await).await;
    assert_eq!(claims["agent_id"], agent.as_str());
    assert_eq!(claims["sub"], "user:cust-43");
    // Neither a pin nor an agent in the token: 403.
    let token = server.mint_user_token("cust-44", None).await;
    let resp = page.exchange(&token).await;
    resp.err(403, "widget_not_allowed", None, "no agent");
}

#[tokio::test]
async fn a_user_token_naming_another_agent_than_the_pin_is_refused() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "xchg_other", true).await;
    let server = api_key(&alice).await;
    let second = public_agent(&alice, "Second").await;
    let token = server.mint_user_token("cust-45", Some(&second)).await;
    let resp = page.exchange(&token).await;
    resp.err(403, "widget_not_allowed", None, "another agent");
}

#[tokio::test]
async fn an_expired_user_token_is_refused() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "xchg_exp", true).await;
    let server = api_key(&alice).await;
    let token = server.mint_user_token("cust-46", None).await;
    sqlx::query(
        "UPDATE widget_user_tokens SET expires_at = now() - interval '1 second'
         WHERE account = $1 AND consumed_at IS NULL",
    )
    .bind(&alice.account)
    .execute(app.state.catalog.pool())
    .await
    .unwrap();
    let resp = page.exchange(&token).await;
    resp.err(401, "unauthenticated", None, "expired");
}

#[tokio::test]
async fn a_user_token_is_exchanged_only_in_its_own_account() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "xchg_no", true).await;
    let Site {
        alice: them,
        page: theirs,
        ..
    } = site(&app, "xchg_no_o", true).await;
    let other_server = api_key(&them).await;

    // A user token of another account, with this account's widget key: 401, and it stays
    // usable in its own account.
    let token = other_server.mint_user_token("mallory", None).await;
    let resp = page.exchange(&token).await;
    resp.err(401, "unauthenticated", None, "another account's token");
    assert_eq!(theirs.exchange(&token).await.status, 200);
}

#[tokio::test]
async fn an_exchange_from_another_page_is_refused_and_keeps_the_token() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "xchg_page", true).await;
    let server = api_key(&alice).await;
    let token = server.mint_user_token("cust-1", None).await;
    for other in [page.from(EVIL), page.without_origin()] {
        let resp = other.exchange(&token).await;
        resp.err(
            403,
            "origin_not_allowed",
            None,
            &format!("{:?}", other.origin),
        );
    }
    assert_eq!(page.exchange(&token).await.status, 200);
}

#[tokio::test]
async fn a_policy_refusal_keeps_the_user_token_for_when_users_are_allowed() {
    let app = TestApp::spawn().await;
    let Site {
        alice, agent, page, ..
    } = site(&app, "xchg_policy", true).await;
    let server = api_key(&alice).await;

    // The agent's widget policy is guest-only: 403 widget_not_allowed, token not consumed.
    let token = server.mint_user_token("cust-2", None).await;
    set_policy(&alice, &agent, json!({ "auth_mode": "guest" })).await;
    let resp = page.exchange(&token).await;
    resp.err(403, "widget_not_allowed", None, "guests only");
    // Users may talk to an agent whose own auth_mode is `authenticated` (guests may not).
    set_policy(&alice, &agent, json!({ "auth_mode": "user" })).await;
    patch_agent(&alice, &agent, json!({ "auth_mode": "authenticated" })).await;
    let claims = session_claims(&app, &page.exchange(&token).await).await;
    assert_eq!(claims["sub"], "user:cust-2");
}

#[tokio::test]
async fn an_exchange_with_the_widget_disabled_is_refused() {
    let app = TestApp::spawn().await;
    let Site {
        alice, agent, page, ..
    } = site(&app, "xchg_off", true).await;
    let server = api_key(&alice).await;
    set_policy(&alice, &agent, json!({ "widget_enabled": false })).await;
    let token = server.mint_user_token("cust-3", None).await;
    let resp = page.exchange(&token).await;
    resp.err(403, "widget_not_allowed", None, "widget disabled");
}

#[tokio::test]
async fn an_exchange_with_an_unknown_widget_key_is_refused() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "xchg_key", true).await;
    let server = api_key(&alice).await;
    let token = server.mint_user_token("cust-3", None).await;
    let unknown = kataven_hub::auth::keys::new_widget_key(&alice.account);
    let resp = page.with_key(&unknown).exchange(&token).await;
    resp.err(401, "invalid_client_key", None, "unknown key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_token_is_exchanged_once_across_instances() {
    let one = TestApp::spawn().await;
    let two = second_instance(&one, |_| {}).await;
    let Site { alice, page, .. } = site(&one, "xchg_race", true).await;
    let server = api_key(&alice).await;
    let (page_one, page_two) = (page.clone(), page.on(&two));
    // Both instances know the key.
    for page in [&page_one, &page_two] {
        assert_eq!(page.config(None).await.status, 200);
    }
    for round in 0..5 {
        let token = server
            .mint_user_token(&format!("racer-{round}"), None)
            .await;
        let (a, b) = tokio::join!(page_one.exchange(&token), page_two.exchange(&token));
        let mut statuses = [a.status, b.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401], "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Refresh
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_guest_session_refreshes_with_the_same_identity() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "refresh", true).await;
    let token = page.guest_session(None).await;
    let old = verify_session(&app, &token).await;

    let resp = page.refresh(&token).await;
    let body = resp.ok(200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_ne!(body["token"].as_str().unwrap(), token);
    let new = session_claims(&app, &resp).await;
    for claim in ["sub", "kind", "agent_id", "acct", "iss", "aud"] {
        assert_eq!(new[claim], old[claim], "{claim}");
    }
    assert_ne!(new["jti"], old["jti"]);
    assert_eq!(
        new["exp"].as_i64().unwrap() - new["iat"].as_i64().unwrap(),
        900
    );
}

#[tokio::test]
async fn a_user_session_refreshes_with_the_same_identity() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "refresh_user", true).await;
    let server = api_key(&alice).await;
    let ut = server.mint_user_token("cust-9", None).await;
    let session = page.user_session(&ut).await;
    let claims = session_claims(&app, &page.refresh(&session).await).await;
    assert_eq!(claims["sub"], "user:cust-9");
    assert_eq!(claims["kind"], "user");
}

#[tokio::test]
async fn a_refresh_rechecks_the_pages_origin() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "refresh_page", true).await;
    let token = page.guest_session(None).await;
    for other in [page.from(EVIL), page.without_origin()] {
        let resp = other.refresh(&token).await;
        resp.err(
            403,
            "origin_not_allowed",
            None,
            &format!("{:?}", other.origin),
        );
    }
}

/// A refresh goes through the widget pipeline like any request made with the key, down to
/// noting the key's use.
#[tokio::test]
async fn a_refresh_notes_the_use_of_its_widget_key() {
    let app = TestApp::spawn().await;
    let Site { alice, page, .. } = site(&app, "refresh_use", true).await;
    let last_used = || async {
        assert!(app.state.api_keys.flush_last_used().await);
        let list = list_widget_keys(&alice).await;
        let at = list[0]["last_used_at"].as_str().unwrap().to_owned();
        chrono::DateTime::parse_from_rfc3339(&at).unwrap()
    };

    let token = page.guest_session(None).await;
    let opened = last_used().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    page.refreshed(&token).await;
    assert!(last_used().await > opened, "the refresh was not noted");
}

#[tokio::test]
async fn expired_sessions_refresh_only_within_the_grace_period() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "grace", true).await;
    let real = verify_session(&app, &page.guest_session(None).await).await;
    let (kid, pem) = signing_key(&app).await;
    let expiring = |exp: i64| {
        let mut claims = real.clone();
        claims["exp"] = json!(exp);
        claims["iat"] = json!(exp - 900);
        claims["jti"] = json!(Uuid::now_v7());
        sign(&kid, &pem, &claims)
    };

    // Our own signature over the real claims is accepted (the helper signs like the service).
    assert_eq!(page.refresh(&expiring(now() + 600)).await.status, 200);

    // Expired three minutes ago: still refreshable, same identity.
    let resp = page.refresh(&expiring(now() - 180)).await;
    let claims = session_claims(&app, &resp).await;
    assert_eq!(claims["sub"], real["sub"]);
    assert!(claims["exp"].as_i64().unwrap() > now() + 800);

    // Expired ten minutes ago: too late.
    let resp = page.refresh(&expiring(now() - 600)).await;
    resp.err(401, "unauthenticated", None, "expired ten minutes ago");
}

#[tokio::test]
async fn refresh_refuses_foreign_tokens() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "forged", true).await;
    let token = page.guest_session(None).await;
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
        let resp = page.refresh(&forged).await;
        resp.err(401, "unauthenticated", None, what);
    }
}

/// A [`site`] with a pinned key, a guest session and a user session on it.
struct Sessions<'a> {
    site: Site<'a>,
    guest: String,
    user: String,
}

async fn sessions<'a>(app: &'a TestApp, prefix: &str) -> Sessions<'a> {
    let site = site(app, prefix, true).await;
    let server = api_key(&site.alice).await;
    let guest = site.page.guest_session(None).await;
    let ut = server.mint_user_token("cust-1", None).await;
    let user = site.page.user_session(&ut).await;
    Sessions { site, guest, user }
}

#[tokio::test]
async fn a_refresh_follows_the_policys_auth_mode() {
    let app = TestApp::spawn().await;
    let Sessions { site, guest, user } = sessions(&app, "recheck").await;
    let Site {
        alice, agent, page, ..
    } = &site;

    // Users only: guests are refused, users still refresh.
    set_policy(alice, agent, json!({ "auth_mode": "user" })).await;
    let resp = page.refresh(&guest).await;
    resp.err(403, "widget_not_allowed", None, "a guest, users only");
    let user = page.refreshed(&user).await;
    // Guests only: users refused, guests refresh.
    set_policy(alice, agent, json!({ "auth_mode": "guest" })).await;
    let resp = page.refresh(&user).await;
    resp.err(403, "widget_not_allowed", None, "a user, guests only");
    page.refreshed(&guest).await;
}

/// A guest session of a fresh [`sessions`] does not refresh (403 widget_not_allowed) while its
/// agent has `change`, and refreshes again once the agent has `restore`.
async fn agent_change_stops_refresh(prefix: &str, change: Value, restore: Value) {
    let app = TestApp::spawn().await;
    let Sessions { site, guest, .. } = sessions(&app, prefix).await;
    patch_agent(&site.alice, &site.agent, change.clone()).await;
    let resp = site.page.refresh(&guest).await;
    resp.err(403, "widget_not_allowed", None, &change.to_string());
    patch_agent(&site.alice, &site.agent, restore).await;
    site.page.refreshed(&guest).await;
}

#[tokio::test]
async fn a_guest_session_refreshes_only_while_the_agent_is_public() {
    let not_public = json!({ "auth_mode": "authenticated" });
    let public = json!({ "auth_mode": "public" });
    agent_change_stops_refresh("recheck_pub", not_public, public).await;
}

#[tokio::test]
async fn a_session_refreshes_only_while_the_agent_is_active() {
    let paused = json!({ "status": "paused" });
    let active = json!({ "status": "active" });
    agent_change_stops_refresh("recheck_paused", paused, active).await;
}

#[tokio::test]
async fn a_session_does_not_refresh_once_its_key_is_pinned_to_another_agent() {
    let app = TestApp::spawn().await;
    let Sessions { site, guest, .. } = sessions(&app, "recheck_pin").await;
    let Site {
        alice,
        created,
        page,
        ..
    } = &site;

    let other_agent = public_agent(alice, "Other").await;
    let resp = patch_widget_key(alice, &id(created), json!({ "agent_id": other_agent })).await;
    resp.ok(200);
    let resp = page.refresh(&guest).await;
    resp.err(403, "widget_not_allowed", None, "re-pinned");
    let resp = patch_widget_key(alice, &id(created), json!({ "agent_id": null })).await;
    resp.ok(200);
    page.refreshed(&guest).await;
}

#[tokio::test]
async fn a_session_refreshes_only_on_pages_the_allowlist_still_has() {
    let app = TestApp::spawn().await;
    let Sessions { site, guest, .. } = sessions(&app, "recheck_list").await;
    let Site {
        alice,
        created,
        page,
        ..
    } = &site;

    let allowlist = json!({ "domain_allowlist": ["other.example"] });
    patch_widget_key(alice, &id(created), allowlist)
        .await
        .ok(200);
    let resp = page.refresh(&guest).await;
    resp.err(403, "origin_not_allowed", None, "a page no longer allowed");
    page.from("https://other.example").refreshed(&guest).await;
}

#[tokio::test]
async fn no_session_of_a_disabled_key_refreshes() {
    let app = TestApp::spawn().await;
    let Sessions { site, guest, user } = sessions(&app, "recheck_off").await;
    let Site {
        alice,
        created,
        page,
        ..
    } = &site;

    let resp = patch_widget_key(alice, &id(created), json!({ "disabled": true })).await;
    resp.ok(200);
    for (kind, session) in [("guest", &guest), ("user", &user)] {
        let resp = page.refresh(session).await;
        resp.err(401, "invalid_client_key", None, kind);
    }
}

/// Each session token refreshes once: a stolen or replayed token cannot be turned into many
/// sessions. A refused refresh (wrong origin, policy) does not use the token up.
#[tokio::test]
async fn a_session_token_refreshes_once() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "onerefresh", true).await;
    let token = page.guest_session(None).await;
    let resp = page.from("https://evil.example").refresh(&token).await;
    resp.err(403, "origin_not_allowed", None, "another page");
    let next = page.refreshed(&token).await;
    let resp = page.refresh(&token).await;
    resp.err(401, "unauthenticated", None, "refreshed twice");
    // The new token refreshes (once) in its turn.
    page.refreshed(&next).await;
}

/// Many refreshes of one token at once, on two instances: exactly one wins.
#[tokio::test]
async fn of_concurrent_refreshes_of_one_token_on_two_instances_one_wins() {
    let app = TestApp::spawn().await;
    let two = second_instance(&app, |_| {}).await;
    let Site { page, .. } = site(&app, "onerefresh2", true).await;
    let other = page.on(&two);
    let token = page.guest_session(None).await;
    let attempts = (0..20).map(|i| {
        let instance = if i % 2 == 0 { &page } else { &other };
        instance.refresh(&token)
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status)
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

// ---------------------------------------------------------------------------------------------
// 7. CORS
// ---------------------------------------------------------------------------------------------

/// Anywhere on the web: a page no allowlist has.
const ANYWHERE: &str = "https://anything.example";

const ALLOW_ORIGIN: &str = "access-control-allow-origin";

/// The `Vary` header, every value, lowercase.
fn vary(resp: &Resp) -> String {
    resp.header_all("vary").to_lowercase()
}

#[tokio::test]
async fn widget_preflights_are_answered_for_any_origin() {
    let app = TestApp::spawn().await;
    let page = Page::new(&app, "", ANYWHERE);
    for path in [
        "/api/v1/widget/auth/guest",
        USER_TOKEN,
        "/api/v1/widget/auth/exchange",
        "/api/v1/widget/auth/refresh",
        "/api/v1/widget/config",
        "/hub-api/api/v1/widget/auth/guest",
    ] {
        let rb = page
            .req(Method::OPTIONS, path)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type");
        let resp = send(rb).await;
        assert!((200..300).contains(&resp.status), "{path}: {}", resp.status);
        assert_eq!(resp.header(ALLOW_ORIGIN), Some(ANYWHERE), "{path}");
        assert!(vary(&resp).contains("origin"), "{path}: {}", vary(&resp));
        let methods = resp
            .header("access-control-allow-methods")
            .unwrap()
            .to_uppercase();
        assert!(methods.contains("POST"), "{methods}");
        let headers = resp
            .header("access-control-allow-headers")
            .unwrap()
            .to_lowercase();
        assert!(headers.contains("content-type"), "{headers}");
    }
}

#[tokio::test]
async fn widget_answers_echo_the_origin() {
    let app = TestApp::spawn().await;
    let Site { page, .. } = site(&app, "cors", true).await;
    let anywhere = page.from(ANYWHERE);

    // Successes and errors echo the origin (so the widget can read either), with Vary: Origin.
    let resp = page.guest(None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(SITE));
    assert!(vary(&resp).contains("origin"), "{}", vary(&resp));
    let resp = anywhere.guest(None).await;
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(ANYWHERE));
    assert!(vary(&resp).contains("origin"));
    resp.err(403, "origin_not_allowed", None, "guest from anywhere");
    let resp = anywhere.config(None).await;
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(ANYWHERE));
    let resp = page.config(None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(SITE));
    let resp = page.refresh("garbage").await;
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(SITE));
    assert_eq!(resp.status, 401);
}

#[tokio::test]
async fn the_management_api_does_not_answer_cors_for_any_origin() {
    let app = TestApp::spawn().await;
    let resp = send(Page::new(&app, "", ANYWHERE).req(Method::GET, "/api/v1/widget-keys")).await;
    assert!(
        resp.header(ALLOW_ORIGIN).is_none(),
        "management endpoints answered CORS for any origin"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Abuse limits
// ---------------------------------------------------------------------------------------------

/// An app configured by `f`.
async fn app_with(f: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::builder().await.config(f).spawn().await
}

/// Asserts a 429 `rate_limited` answer of `limit`.
#[track_caller]
fn assert_limited(resp: &Resp, limit: &str) {
    assert_eq!(resp.status, 429, "{}", resp.text);
    assert_eq!(resp.code(), "rate_limited", "{}", resp.text);
    assert_eq!(resp.body["error"]["limit"], limit, "{}", resp.text);
}

#[tokio::test]
async fn each_widget_key_has_its_own_quota() {
    let app = app_with(|c| c.widget_key_limit_per_minute = 3).await;
    let Site { alice, page, .. } = site(&app, "keyquota", false).await;
    let other = key_of(&widget_key(&alice, &["acme.com"], None).await);

    for i in 0..3 {
        assert_eq!(page.config(None).await.status, 200, "call {i}");
    }
    let resp = page.config(None).await;
    assert_limited(&resp, "client_key");
    let retry_after: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(SITE));
    // Every widget endpoint that takes the key counts against it.
    let resp = page.guest(None).await;
    assert_eq!(resp.body["error"]["limit"], "client_key");
    // Another key of the same account is not affected.
    assert_eq!(page.with_key(&other).config(None).await.status, 200);
    assert!(
        app.metric(r#"kataven_rate_limited_total{limit="client_key"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn widget_endpoints_are_limited_per_client_ip() {
    let app = app_with(|c| c.public_limit_per_minute = 3).await;
    let Site { alice, page, .. } = site(&app, "ipquota", false).await;

    // Three widget calls of any kind (even failing ones) use the address's quota.
    assert_eq!(page.config(None).await.status, 200);
    assert_eq!(page.guest(None).await.status, 400);
    assert_eq!(page.refresh("garbage").await.status, 401);
    let resp = page.config(None).await;
    assert_limited(&resp, "ip");
    assert!(resp.header("retry-after").is_some());
    assert_eq!(resp.header(ALLOW_ORIGIN), Some(SITE));
    let resp = page
        .without_origin()
        .post(USER_TOKEN, json!({ "external_user_id": "x" }))
        .await;
    assert_eq!(resp.body["error"]["limit"], "ip");
    // The management API is not a public endpoint: unaffected.
    assert_eq!(list_widget_keys(&alice).await.len(), 1);
}

/// A client that sends an allowed `Origin` from a script spends only its own share of the key's
/// quota: visitors from other addresses keep working.
#[tokio::test]
async fn one_client_spends_only_its_share_of_a_widget_key() {
    let app = app_with(|c| {
        c.widget_key_ip_limit_per_minute = 3;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let Site { page, .. } = site(&app, "keyshare", false).await;
    let config_from = |client: &str| send(from_client(page.config_req(None), client));
    for i in 0..3 {
        assert_eq!(config_from("203.0.113.66").await.status, 200, "call {i}");
    }
    let resp = config_from("203.0.113.66").await;
    assert_limited(&resp, "client_key");
    for visitor in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(config_from(visitor).await.status, 200, "{visitor}");
    }
}

/// A refresh spends the key's quota like the other widget calls.
#[tokio::test]
async fn refreshes_count_against_the_key_quota() {
    let app = app_with(|c| c.widget_key_limit_per_minute = 3).await;
    let Site { page, .. } = site(&app, "refreshquota", true).await;
    let token = page.guest_session(None).await;
    let token = page.refreshed(&token).await;
    let token = page.refreshed(&token).await;
    assert_limited(&page.refresh(&token).await, "client_key");
}

#[tokio::test]
async fn pages_on_other_origins_cannot_spend_a_keys_quota() {
    let app = app_with(|c| c.widget_key_limit_per_minute = 2).await;
    let Site { page, .. } = site(&app, "quotaorigin", false).await;
    for _ in 0..5 {
        assert_eq!(page.from(EVIL).config(None).await.status, 403);
    }
    for i in 0..2 {
        assert_eq!(page.config(None).await.status, 200, "call {i}");
    }
    assert_eq!(page.config(None).await.status, 429);
}

#[tokio::test]
async fn user_token_strings_are_bounded() {
    let app = TestApp::spawn().await;
    let server = api_key(&account(&app, "utbounds").await).await;
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
        let resp = server.user_token(body).await;
        resp.err(400, "invalid_body", Some(field), field);
    }
    // The longest accepted values.
    let resp = server
        .user_token(
            json!({ "external_user_id": "x".repeat(255), "display_name": "d".repeat(200),
                "email": format!("{}@example.com", "e".repeat(242)) }),
        )
        .await;
    assert_eq!(resp.status, 200);
}

/// Sets the account's per-minute limit, effective at once.
async fn set_per_minute(app: &TestApp, account: &str, limit: Option<i32>) {
    app.state
        .catalog
        .set_limit(&account.parse().unwrap(), "per_minute", limit)
        .await
        .unwrap();
    app.state
        .cache
        .invalidate(&CatalogChange::Limits(account.to_owned()));
}

/// `user-token` spends the account's request limits, and `0` stops it.
#[tokio::test]
async fn user_tokens_count_against_the_accounts_limits() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "utlimits").await;
    let server = api_key(&alice).await;
    set_per_minute(&app, &alice.account, Some(0)).await;
    let resp = server.user_token(json!({ "external_user_id": "u" })).await;
    assert_limited(&resp, "minute");
    set_per_minute(&app, &alice.account, None).await;
    let resp = server.user_token(json!({ "external_user_id": "u" })).await;
    assert_eq!(resp.status, 200);
}

/// At most 1,000 user tokens per account wait to be exchanged.
#[tokio::test]
async fn at_most_a_thousand_user_tokens_wait_per_account() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "utwaiting").await;
    let server = api_key(&alice).await;
    let pool = app.state.catalog.pool();
    sqlx::query(
        "INSERT INTO widget_user_tokens (token_hash, account, external_user_id, expires_at)
         SELECT sha256((g::text || random()::text)::bytea), $1, 'u', now() + interval '5 minutes'
         FROM generate_series(1, 1000) AS g",
    )
    .bind(&alice.account)
    .execute(pool)
    .await
    .unwrap();
    let resp = server.user_token(json!({ "external_user_id": "u" })).await;
    assert_eq!(resp.body["error"]["limit"], "user_tokens", "{}", resp.text);
    // Exchanged (or expired) ones do not count.
    sqlx::query(
        "UPDATE widget_user_tokens SET consumed_at = now()
         WHERE ctid IN (SELECT ctid FROM widget_user_tokens WHERE account = $1 LIMIT 1)",
    )
    .bind(&alice.account)
    .execute(pool)
    .await
    .unwrap();
    let resp = server.user_token(json!({ "external_user_id": "u" })).await;
    assert_eq!(resp.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Suspected defects (see the reasons)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_suspended_account_cannot_mint_user_tokens() {
    let app = TestApp::spawn().await;
    let alice = account(&app, "ut_susp").await;
    let server = api_key(&alice).await;
    // The key works in the management API before.
    assert_eq!(server.get("/agents").await.status, 200);
    app.state
        .catalog
        .set_status(&alice.account.parse().unwrap(), AccountStatus::Suspended)
        .await
        .unwrap();
    // The management API refuses once the change propagated…
    let resp = until_code(|| server.get("/agents"), "account_suspended").await;
    resp.err(403, "account_suspended", None, "the management API");
    // …and so must the widget's server-to-server endpoint.
    let resp = server.user_token(json!({ "external_user_id": "u" })).await;
    resp.err(403, "account_suspended", None, "user-token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_signing_key_is_known_to_every_instance() {
    let public_url = "https://hub.example";
    let one = app_with(|c| c.public_url = Some(public_url.to_owned())).await;
    let two = second_instance(&one, |c| c.public_url = Some(public_url.to_owned())).await;
    let Site { page, .. } = site(&one, "rotate", true).await;
    let on_two = page.on(&two);
    // Before: tokens of one refresh on two.
    let token = page.guest_session(None).await;
    assert_eq!(on_two.refresh(&token).await.status, 200);

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
    let token = page.guest_session(None).await;
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let (newest, _) = signing_key(&one).await;
    assert_eq!(kid, newest);

    // Within a few seconds instance two publishes the new key and accepts its tokens.
    let mut known = false;
    for _ in 0..50 {
        let jwks: JwkSet = serde_json::from_value(jwks(&two).await).unwrap();
        if jwks.find(&kid).is_some() && on_two.refresh(&token).await.status == 200 {
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
    let Site { page, .. } = site(&app, "retire", true).await;
    let (leaked, _) = signing_key(&app).await;
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE purpose = 'widget_session'")
        .execute(app.state.catalog.pool())
        .await
        .unwrap();
    let mut signed_by = None;
    for _ in 0..50 {
        let resp = page.guest(None).await;
        assert!(matches!(resp.status, 200 | 500), "{}", resp.status);
        if resp.status == 200 {
            let token = resp.body["token"].as_str().unwrap();
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
    let alice = account(&app, "ut_case").await;
    let authorization = format!("bearer {}", api_key_secret(&alice).await);
    let lowercase = |rb: reqwest::RequestBuilder| send(rb.header("Authorization", &authorization));
    // The management API accepts it…
    let resp = lowercase(app.get("/api/v1/agents")).await;
    assert_eq!(resp.status, 200);
    // …and so should the widget's server-to-server endpoint.
    let body = json!({ "external_user_id": "u" });
    let resp = lowercase(app.client.post(app.url(USER_TOKEN)).json(&body)).await;
    assert_eq!(resp.status, 200);
}
