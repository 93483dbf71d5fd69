//! `Idempotency-Key` on every write (docs/idempotency.md): replays, reuse, concurrency, the
//! answers that are and are not kept, expiry, secrets, every write route, and a server killed
//! around the commit.

use std::collections::BTreeSet;
use std::time::Duration;

use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::client::{Client, Resp, V1, send};

/// Sends `method path` with `body` (if any) and `Idempotency-Key: key`.
async fn keyed(
    c: &Client<'_>,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> Resp {
    let mut rb = c.req(method, path).header("Idempotency-Key", key);
    if let Some(body) = body {
        rb = rb.json(body);
    }
    send(rb).await
}

async fn post_keyed(c: &Client<'_>, path: &str, key: &str, body: Value) -> Resp {
    keyed(c, Method::POST, &format!("{V1}{path}"), key, Some(&body)).await
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

/// A fresh key.
fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn agents_named(c: &Client<'_>, name: &str) -> usize {
    c.agents()
        .await
        .iter()
        .filter(|a| a["name"] == name)
        .count()
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_again_without_running_twice() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idem", "alice").await;
    let key = new_key();
    let first = post_keyed(&alice, "/agents", &key, json!({ "name": "Once" })).await;
    first.ok(201);
    assert!(!replayed(&first), "a first answer is not a replay");

    let retry = post_keyed(&alice, "/agents", &key, json!({ "name": "Once" })).await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert!(replayed(&retry), "{:?}", retry.headers);
    assert_eq!(retry.text, first.text, "the same body");
    assert_eq!(retry.location, first.location, "the same Location");
    assert!(retry.content_type.starts_with("application/json"));
    assert_ne!(
        retry.header("x-request-id"),
        first.header("x-request-id"),
        "the replay is a request of its own"
    );
    // The same operation through an alias path is the same request.
    for alias in ["/api/agents", "/v1/agents", "/hub-api/api/v1/agents"] {
        let r = keyed(
            &alice,
            Method::POST,
            alias,
            &key,
            Some(&json!({ "name": "Once" })),
        )
        .await;
        assert!(replayed(&r) && r.text == first.text, "{alias}: {}", r.text);
    }
    assert_eq!(agents_named(&alice, "Once").await, 1);
}

#[tokio::test]
async fn a_key_used_for_another_request_is_refused() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemreuse", "alice").await;
    let key = new_key();
    post_keyed(&alice, "/agents", &key, json!({ "name": "first" }))
        .await
        .ok(201);
    let other_body = post_keyed(&alice, "/agents", &key, json!({ "name": "Second" })).await;
    other_body.err(422, "idempotency_key_reused", None, "another body");
    let other_path = post_keyed(&alice, "/playbooks", &key, json!({ "name": "first" })).await;
    other_path.err(422, "idempotency_key_reused", None, "another path");
    assert_eq!(agents_named(&alice, "Second").await, 0);
}

#[tokio::test]
async fn keys_are_the_callers_own() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemowner", "alice").await;
    let bob = alice.with_member("bob", Role::Member).await;
    let key = new_key();
    post_keyed(&alice, "/agents", &key, json!({ "name": "Mine" }))
        .await
        .ok(201);
    let bobs = post_keyed(&bob, "/agents", &key, json!({ "name": "Mine" })).await;
    bobs.ok(201);
    assert!(
        !replayed(&bobs),
        "another caller's key is not this caller's"
    );
    // An API key is a caller of its own too.
    let created = alice
        .elevated()
        .create("/api-keys", json!({ "name": "ci" }))
        .await;
    let machine = Client::api_key(&app, created["key"].as_str().unwrap());
    let machines = post_keyed(&machine, "/agents", &key, json!({ "name": "Mine" })).await;
    machines.ok(201);
    assert!(!replayed(&machines));
    assert_eq!(agents_named(&alice, "Mine").await, 3);
    let again = post_keyed(&machine, "/agents", &key, json!({ "name": "Mine" })).await;
    assert!(replayed(&again) && again.text == machines.text);
}

#[tokio::test]
async fn malformed_keys_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idembad", "alice").await;
    let long = "k".repeat(256);
    for bad in ["", &long, "with space", "tab\there"] {
        let r = post_keyed(&alice, "/agents", bad, json!({ "name": "Bad" })).await;
        r.err(400, "invalid_idempotency_key", None, bad);
    }
    let r = send(
        alice
            .req(Method::POST, &format!("{V1}/agents"))
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            )
            .json(&json!({ "name": "Bad" })),
    )
    .await;
    r.err(400, "invalid_idempotency_key", None, "not ASCII");
    let r = send(
        alice
            .req(Method::POST, &format!("{V1}/agents"))
            .header("Idempotency-Key", "one")
            .header("Idempotency-Key", "two")
            .json(&json!({ "name": "Bad" })),
    )
    .await;
    r.err(400, "invalid_idempotency_key", None, "two keys");
    assert_eq!(agents_named(&alice, "Bad").await, 0);
    // 255 characters is a key; reads ignore the header.
    let max = "k".repeat(255);
    post_keyed(&alice, "/agents", &max, json!({ "name": "Max" }))
        .await
        .ok(201);
    let read = keyed(&alice, Method::GET, &format!("{V1}/agents"), "", None).await;
    read.ok(200);
}

#[tokio::test]
async fn fifty_simultaneous_duplicates_create_one_agent() {
    let app = crate::support::roomy_app().await;
    let alice = Client::new(&app, "idemrace", "alice").await;
    let key = new_key();
    let body = json!({ "name": "Raced" });
    let answers = futures::future::join_all(
        (0..50).map(|_| post_keyed(&alice, "/agents", &key, body.clone())),
    )
    .await;
    let fresh: Vec<&Resp> = answers
        .iter()
        .filter(|r| r.status == 201 && !replayed(r))
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one request ran");
    let mut counts = std::collections::BTreeMap::new();
    for r in &answers {
        match (r.status, replayed(r)) {
            (201, true) => assert_eq!(r.text, fresh[0].text, "a replay is the first answer"),
            (201, false) => {}
            (409, _) => {
                r.err(
                    409,
                    "idempotency_key_in_use",
                    None,
                    "a duplicate while running",
                );
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            _ => panic!("unexpected answer {}: {}", r.status, r.text),
        }
        *counts.entry((r.status, replayed(r))).or_insert(0) += 1;
    }
    println!("50 simultaneous duplicates: {counts:?}");
    assert_eq!(agents_named(&alice, "Raced").await, 1);
    // Once it finished, every retry is a replay.
    let later = post_keyed(&alice, "/agents", &key, body).await;
    assert!(replayed(&later) && later.text == fresh[0].text);
}

#[tokio::test]
async fn answers_found_inside_the_write_are_kept_refusals_are_not() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemerr", "alice").await;
    // A conflict found in the write's transaction (the name is taken) is kept: once the name
    // is free, a retry still gets the conflict; a new key runs.
    let taken = alice
        .create("/playbooks", json!({ "name": "taken_name" }))
        .await;
    let key = new_key();
    let conflict = post_keyed(&alice, "/playbooks", &key, json!({ "name": "taken_name" })).await;
    conflict.err(409, "conflict", None, "the name is taken");
    alice
        .delete(&format!("/playbooks/{}", taken["id"].as_str().unwrap()))
        .await
        .ok(204);
    let retry = post_keyed(&alice, "/playbooks", &key, json!({ "name": "taken_name" })).await;
    assert!(
        replayed(&retry) && retry.text == conflict.text,
        "{}",
        retry.text
    );
    assert_eq!(retry.status, 409);
    post_keyed(
        &alice,
        "/playbooks",
        &new_key(),
        json!({ "name": "taken_name" }),
    )
    .await
    .ok(201);

    // A refusal (403) is not kept: once the caller may, the same key runs.
    let bob = alice.with_member("bob", Role::Member).await;
    let key = new_key();
    let settings = json!({ "primary_color": "#112233" });
    let refused = keyed(
        &bob.elevated(),
        Method::PATCH,
        &format!("{V1}/widget-settings"),
        &key,
        Some(&settings),
    )
    .await;
    refused.err(403, "admin_required", None, "a member");
    let bob = alice.with_member("bob", Role::Admin).await;
    let done = keyed(
        &bob.elevated(),
        Method::PATCH,
        &format!("{V1}/widget-settings"),
        &key,
        Some(&settings),
    )
    .await;
    done.ok(200);
    assert!(!replayed(&done));

    // A body refused before the write is not kept either: the same key may then carry a
    // corrected body.
    let key = new_key();
    let invalid = post_keyed(&alice, "/agents", &key, json!({ "name": "" })).await;
    assert_eq!(invalid.status, 400, "{}", invalid.text);
    let fixed = post_keyed(&alice, "/agents", &key, json!({ "name": "Fixed" })).await;
    fixed.ok(201);
    assert!(!replayed(&fixed));
}

/// The stored answers of this account's database.
async fn stored_keys(c: &Client<'_>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&mut c.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_keys_run_again_and_are_swept() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemexp", "alice").await;
    let key = new_key();
    let first = post_keyed(&alice, "/agents", &key, json!({ "name": "Expiring" })).await;
    first.ok(201);
    let mut db = alice.db().await;
    let expires: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM idempotency_keys WHERE key = $1")
            .bind(&key)
            .fetch_one(&mut db)
            .await
            .unwrap();
    let hours = (expires - chrono::Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "kept {hours} h by default");
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&mut db)
        .await
        .unwrap();
    let after = post_keyed(&alice, "/agents", &key, json!({ "name": "Expiring" })).await;
    after.ok(201);
    assert!(!replayed(&after), "an expired key runs again");
    assert_ne!(after.body["id"], first.body["id"]);
    assert_eq!(
        stored_keys(&alice).await,
        1,
        "the expired answer was replaced"
    );

    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&mut db)
        .await
        .unwrap();
    let swept = kataven_hub::housekeeping::sweep(&app.state).await;
    assert!(swept.idempotency_keys >= 1, "{swept:?}");
    assert_eq!(stored_keys(&alice).await, 0);
}

#[tokio::test]
async fn a_retried_key_creation_never_shows_the_secret_again() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemsecret", "alice").await;
    let admin = alice.elevated();
    for (path, body) in [
        ("/api-keys", json!({ "name": "ci" })),
        (
            "/widget-keys",
            json!({ "name": "site", "domain_allowlist": ["acme.com"] }),
        ),
    ] {
        let key = new_key();
        let first = post_keyed(&admin, path, &key, body.clone()).await;
        let secret = first.ok(201)["key"].as_str().unwrap().to_owned();
        let retry = post_keyed(&admin, path, &key, body).await;
        assert_eq!(retry.status, 201, "{}", retry.text);
        assert!(replayed(&retry));
        assert_eq!(retry.body["key"], Value::Null, "{path}: {}", retry.text);
        assert_eq!(retry.body["id"], first.body["id"]);
        assert_eq!(retry.body["last8"], first.body["last8"]);
        assert!(!retry.text.contains(&secret));
        let listed = admin.get(path).await;
        assert_eq!(
            listed.ok(200).as_array().unwrap().len(),
            1,
            "{path}: one key"
        );
        // Nothing in the catalog's kept answers holds the secret.
        let mut catalog = sqlx::PgConnection::connect(&crate::support::system_url_of(&app))
            .await
            .unwrap();
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM idempotency_keys")
            .fetch_all(&mut catalog)
            .await
            .unwrap();
        assert!(!bodies.is_empty());
        for body in bodies {
            let body = String::from_utf8(body).unwrap();
            assert!(!body.contains(&secret), "{path}: the secret was stored");
        }
    }
}

use sqlx::Connection;

#[tokio::test]
async fn catalog_writes_replay_too() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemcat", "alice").await;
    let admin = alice.elevated();
    let key = new_key();
    let member = json!({ "subject": "carol", "role": "member" });
    let first = post_keyed(&admin, "/members", &key, member.clone()).await;
    first.ok(201);
    let retry = post_keyed(&admin, "/members", &key, member).await;
    assert!(replayed(&retry) && retry.text == first.text);

    let key = new_key();
    let path = format!("{V1}/members/carol");
    let first = keyed(&admin, Method::DELETE, &path, &key, None).await;
    first.ok(204);
    let retry = keyed(&admin, Method::DELETE, &path, &key, None).await;
    assert_eq!(
        retry.status, 204,
        "a repeated DELETE replays its 204, not a 404"
    );
    assert!(replayed(&retry));
    // Without a key, a second DELETE is a request of its own.
    admin
        .delete("/members/carol")
        .await
        .err(404, "not_found", None, "gone");

    // The key space of the catalog is the caller's in this account: the same key in another
    // account of the same user runs there.
    let elsewhere = Client::new(&app, "idemcat2", "alice").await.elevated();
    let other = post_keyed(
        &elsewhere,
        "/members",
        &key,
        json!({ "subject": "dan", "role": "member" }),
    )
    .await;
    other.ok(201);
    assert!(!replayed(&other));
}

// ---- every write route --------------------------------------------------------------------------

/// The management API's write operations (method, path under `/api/v1`) in the router's
/// OpenAPI document — those a user's bearer token may call in an account; not the public widget
/// endpoints — each with whether it declares the `Idempotency-Key` header.
fn write_operations() -> Vec<(Method, String, bool)> {
    let doc = serde_json::to_value(kataven_hub::routes::openapi_document()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(path) = path.strip_prefix(V1) else {
            continue;
        };
        for method in ["post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let management = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|requirement| requirement.get("bearer").is_some());
            if !management {
                continue;
            }
            let declares = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header");
            ops.push((
                method.to_uppercase().parse().unwrap(),
                path.to_owned(),
                declares,
            ));
        }
    }
    ops
}

#[tokio::test]
async fn every_write_route_refuses_a_malformed_key_before_anything_else() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemall", "alice").await;
    let admin = alice.elevated();
    let ops = write_operations();
    assert!(ops.len() >= 25, "{} write operations", ops.len());
    for (method, template, declares) in ops {
        assert!(
            declares,
            "{method} {template} does not declare Idempotency-Key"
        );
        let path = template
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{playbook_id}", "x")
            .replace("{faq_id}", "x")
            .replace("{subject}", "x");
        let r = keyed(
            &admin,
            method.clone(),
            &format!("{V1}{path}"),
            "a b",
            Some(&json!({})),
        )
        .await;
        r.err(
            400,
            "invalid_idempotency_key",
            None,
            &format!("{method} {template}"),
        );
    }
}

/// Each write operation's request: method, path template (under `/api/v1`), JSON body (empty:
/// none). Deletes come last so that the rest find what they change.
const WRITES: &[(&str, &str, &str)] = &[
    ("POST", "/agents", r#"{"name": "New"}"#),
    ("PATCH", "/agents/{id}", r#"{"description": "d"}"#),
    ("POST", "/agents/{id}/tools", r#"{"tool_name": "tool_one"}"#),
    (
        "PUT",
        "/agents/{id}/tools",
        r#"{"tool_name": "tool_one", "enabled": false}"#,
    ),
    (
        "POST",
        "/agents/{id}/playbooks",
        r#"{"playbook_id": "pb_one"}"#,
    ),
    ("POST", "/agents/{id}/faqs", r#"{"faq_id": "faq_one"}"#),
    (
        "PATCH",
        "/agents/{id}/widget-settings",
        r#"{"widget_enabled": false}"#,
    ),
    ("POST", "/playbooks", r#"{"name": "pb_two"}"#),
    ("PATCH", "/playbooks/{id}", r#"{"description": "d"}"#),
    ("POST", "/faqs", r#"{"name": "faq_two", "title": "How?"}"#),
    ("PATCH", "/faqs/{id}", r#"{"content": "Thus."}"#),
    (
        "POST",
        "/tools",
        r#"{"name": "tool_two", "description": "Two"}"#,
    ),
    ("PATCH", "/tools/{id}", r#"{"description": "Changed"}"#),
    (
        "POST",
        "/members",
        r#"{"subject": "erin", "role": "member"}"#,
    ),
    ("POST", "/api-keys", r#"{"name": "new"}"#),
    ("PATCH", "/api-keys/{id}", r#"{"name": "renamed"}"#),
    (
        "POST",
        "/widget-keys",
        r#"{"name": "new", "domain_allowlist": ["a.com"]}"#,
    ),
    ("PATCH", "/widget-keys/{id}", r#"{"name": "renamed"}"#),
    (
        "PATCH",
        "/widget-settings",
        r##"{"accent_color": "#445566"}"##,
    ),
    ("DELETE", "/agents/{id}/playbooks/{playbook_id}", ""),
    ("DELETE", "/agents/{id}/faqs/{faq_id}", ""),
    ("DELETE", "/members/{subject}", ""),
    ("DELETE", "/api-keys/{id}", ""),
    ("DELETE", "/widget-keys/{id}", ""),
    ("DELETE", "/playbooks/{id}", ""),
    ("DELETE", "/faqs/{id}", ""),
    ("DELETE", "/tools/{id}", ""),
    ("DELETE", "/agents/{id}", ""),
];

/// An account with one of everything the writes change; answers each template's path in it.
async fn subjects(admin: &Client<'_>) -> impl Fn(&str) -> String {
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let agent = id(admin.agent("Subject").await);
    let mut ids = std::collections::HashMap::new();
    for (resource, body) in [
        ("playbooks", json!({ "name": "pb_one" })),
        ("faqs", json!({ "name": "faq_one", "title": "Why?" })),
        ("tools", json!({ "name": "tool_one", "description": "One" })),
        ("api-keys", json!({ "name": "old" })),
        (
            "widget-keys",
            json!({ "name": "old", "domain_allowlist": ["a.com"] }),
        ),
    ] {
        ids.insert(
            resource,
            id(admin.create(&format!("/{resource}"), body).await),
        );
    }
    ids.insert("agents", agent);
    move |template: &str| {
        let resource = template.split('/').nth(1).unwrap();
        let id = ids.get(resource).map_or("", String::as_str);
        template
            .replace("{id}", id)
            .replace("{playbook_id}", &ids["playbooks"])
            .replace("{faq_id}", &ids["faqs"])
            .replace("{subject}", "erin")
    }
}

#[tokio::test]
async fn every_write_route_keeps_its_answer_for_a_retry() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "idemevery", "alice").await;
    let admin = alice.elevated();
    let path_of = subjects(&admin).await;
    // The table covers exactly the router's writes: a new write route fails here until it is
    // added (and so tested).
    let covered: BTreeSet<(String, String)> = WRITES
        .iter()
        .map(|(m, t, _)| ((*m).to_owned(), (*t).to_owned()))
        .collect();
    let routed: BTreeSet<(String, String)> = write_operations()
        .into_iter()
        .map(|(m, t, _)| (m.to_string(), t))
        .collect();
    assert_eq!(covered, routed, "the table of writes is the router's");
    for (method, template, body) in WRITES {
        let method: Method = method.parse().unwrap();
        let body: Option<Value> = (!body.is_empty()).then(|| serde_json::from_str(body).unwrap());
        let key = new_key();
        let path = format!("{V1}{}", path_of(template));
        let first = keyed(&admin, method.clone(), &path, &key, body.as_ref()).await;
        assert!(
            first.status < 300,
            "{method} {template}: {} {}",
            first.status,
            first.text
        );
        let retry = keyed(&admin, method.clone(), &path, &key, body.as_ref()).await;
        assert!(
            replayed(&retry),
            "{method} {template}: not replayed: {}",
            retry.text
        );
        assert_eq!(retry.status, first.status, "{method} {template}");
        if !template.ends_with("-keys") || method != Method::POST {
            assert_eq!(retry.text, first.text, "{method} {template}");
        }
    }
}

// ---- a server killed around the commit ------------------------------------------------------------

mod crash {
    use std::io::Write;
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::cli::{BIN, free_port, signal, wait_exit, wait_healthy};

    fn serve(system_url: &str, port: u16) -> Child {
        let mut child = Command::new(BIN)
            .arg("serve")
            .env("KATAVEN_DATABASE_URL", system_url)
            .env("KATAVEN_KEY_PEPPER", "test-pepper")
            .env("KATAVEN_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("KATAVEN_OIDC_ISSUER")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_healthy(port, &mut child);
        child
    }

    fn kill(mut child: Child) {
        signal(&child, libc::SIGKILL);
        wait_exit(&mut child);
    }

    /// The request, written to a socket whose answer is never read (the client "vanishes").
    fn send_and_vanish(port: u16, api_key: &str, key: &str, body: &str) -> std::net::TcpStream {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "POST /api/v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n\
             Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream
    }

    /// Whether the write with `key` is committed (its answer kept) in `c`'s database.
    async fn committed(c: &Client<'_>, key: &str) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_one(&mut c.db().await)
            .await
            .unwrap()
            > 0
    }

    /// A retry until the server answers, as a client would after a crash.
    async fn retry(port: u16, api_key: &str, key: &str, body: &str) -> (u16, bool, Value) {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            let sent = client
                .post(format!("http://127.0.0.1:{port}/api/v1/agents"))
                .bearer_auth(api_key)
                .header("Idempotency-Key", key)
                .header("Content-Type", "application/json")
                .body(body.to_owned())
                .send()
                .await;
            if let Ok(resp) = sent {
                let status = resp.status().as_u16();
                let replayed = resp.headers().get("idempotent-replayed").is_some();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status != 409 && status != 503 {
                    return (status, replayed, body);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no answer");
    }

    /// `kill -9` of the server after the write committed and before its client read the
    /// answer; then, over rounds, at random moments of the request (before, during, after the
    /// commit). Every retry after a restart answers once: the write ran exactly once, and a
    /// retry of a committed write replays its answer.
    #[tokio::test]
    async fn a_server_killed_around_the_commit_runs_the_write_exactly_once() {
        let app = TestApp::spawn().await;
        let alice = Client::new(&app, "idemcrash", "alice").await;
        let created = alice
            .elevated()
            .create("/api-keys", json!({ "name": "crash" }))
            .await;
        let api_key = created["key"].as_str().unwrap().to_owned();
        let system_url = crate::support::system_url_of(&app);

        // After the commit: wait until the answer is kept, then kill.
        let port = free_port();
        let server = serve(&system_url, port);
        let key = new_key();
        let body = json!({ "name": "AfterCommit" }).to_string();
        let sent = std::time::Instant::now();
        let _vanished = send_and_vanish(port, &api_key, &key, &body);
        while !committed(&alice, &key).await {
            assert!(sent.elapsed() < Duration::from_secs(10), "never committed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!("committed {:?} after the request was sent", sent.elapsed());
        kill(server);
        let port = free_port();
        let server = serve(&system_url, port);
        let (status, was_replayed, answer) = retry(port, &api_key, &key, &body).await;
        assert_eq!((status, was_replayed), (201, true), "{answer}");
        assert_eq!(agents_named(&alice, "AfterCommit").await, 1);
        let stored = alice
            .get(&format!("/agents/{}", answer["id"].as_str().unwrap()))
            .await;
        assert_eq!(stored.ok(200)["name"], "AfterCommit");
        kill(server);

        // At random moments.
        let mut outcomes = std::collections::BTreeMap::new();
        for round in 0..8u64 {
            let port = free_port();
            let server = serve(&system_url, port);
            let key = new_key();
            let name = format!("Round{round}");
            let body = json!({ "name": name }).to_string();
            let _vanished = send_and_vanish(port, &api_key, &key, &body);
            tokio::time::sleep(Duration::from_millis(round * 40)).await;
            let was_committed = committed(&alice, &key).await;
            kill(server);
            let port = free_port();
            let server = serve(&system_url, port);
            let (status, was_replayed, answer) = retry(port, &api_key, &key, &body).await;
            assert_eq!(status, 201, "{answer}");
            if was_committed {
                assert!(was_replayed, "round {round}: a committed write ran again");
            }
            assert_eq!(agents_named(&alice, &name).await, 1, "round {round}");
            *outcomes
                .entry(if was_replayed {
                    "replayed"
                } else {
                    "ran on retry"
                })
                .or_insert(0) += 1;
            kill(server);
        }
        println!("killed at random moments: {outcomes:?}");
    }
}
