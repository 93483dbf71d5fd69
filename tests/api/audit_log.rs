//! `GET /api/v1/audit-log`: who may read it, its order, filters and cursor pages, what an entry
//! says, the catalog's and the command line's changes in it, retention, and isolation.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use kataven_hub::tenancy::catalog::Role;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::client::{Client, Resp, V1, id, send};
use crate::support::{TestApp, roomy_app, system_url_of};

const LOG: &str = "/audit-log";

/// The entries of one page read by `admin` (elevated) with `query`, asserting 200.
async fn entries(admin: &Client<'_>, query: &str) -> Vec<Value> {
    page(admin, query).await["items"]
        .as_array()
        .expect("items")
        .clone()
}

async fn page(admin: &Client<'_>, query: &str) -> Value {
    admin.get(&format!("{LOG}{query}")).await.ok(200).clone()
}

/// `(action, resource_type, resource_id)` of each entry.
fn changes(items: &[Value]) -> Vec<(String, String, String)> {
    items
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["resource_type"].as_str().unwrap().to_owned(),
                e["resource_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn resource_ids(items: &[Value]) -> Vec<String> {
    changes(items).into_iter().map(|(_, _, id)| id).collect()
}

#[tokio::test]
async fn only_an_elevated_admin_reads_the_log() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "auditread", "alice").await;
    let bob = alice.with_member("bob", Role::Member).await;
    let created = alice
        .elevated()
        .create("/api-keys", json!({ "name": "deploys", "expiry": "30d" }))
        .await;
    let key = Client::api_key(&app, created["key"].as_str().unwrap());

    for (who, c) in [
        ("admin without X-Admin", alice.clone()),
        ("elevated member", bob.elevated()),
        ("member", bob),
        ("API key", key),
    ] {
        c.get(LOG).await.err(403, "admin_required", None, who);
    }
    alice.elevated().get(LOG).await.ok(200);
}

#[tokio::test]
async fn entries_are_newest_first() {
    let app = roomy_app().await;
    let alice = Client::new(&app, "auditorder", "alice").await;
    let mut agents = Vec::new();
    for n in 0..3 {
        agents.push(id(&alice.agent(&format!("Agent {n}")).await));
    }
    let items = entries(&alice.elevated(), "").await;
    agents.reverse();
    assert_eq!(resource_ids(&items), agents);
    let times: Vec<&str> = items.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
}

#[tokio::test]
async fn each_filter_narrows_the_log() {
    let app = roomy_app().await;
    let alice = Client::new(&app, "auditfilter", "alice").await;
    let admin = alice.elevated();
    let bob = alice.with_member("bob", Role::Member).await;
    let a = id(&alice.agent("Alice's").await);
    let b = id(&bob.agent("Bob's").await);
    let before_update = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    alice
        .patch(&format!("/agents/{a}"), json!({ "name": "Renamed" }))
        .await
        .ok(200);
    let tool = id(&alice.create("/tools", json!({ "name": "lookup" })).await);

    let by_bob = entries(&admin, "?actor=bob").await;
    assert_eq!(
        changes(&by_bob),
        [("create".into(), "agent".into(), b.clone())]
    );

    let updates = entries(&admin, "?action=update").await;
    assert_eq!(resource_ids(&updates), std::slice::from_ref(&a));

    let tools = entries(&admin, "?resource_type=tool").await;
    assert_eq!(changes(&tools)[0].1, "tool");
    assert_eq!(tools.len(), 1);

    let of_a = entries(&admin, &format!("?resource_id={a}")).await;
    assert_eq!(
        changes(&of_a),
        [
            ("update".into(), "agent".into(), a.clone()),
            ("create".into(), "agent".into(), a.clone())
        ]
    );

    let since = before_update.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let later = entries(&admin, &format!("?since={since}")).await;
    assert_eq!(
        changes(&later),
        [
            ("create".into(), "tool".into(), tool),
            ("update".into(), "agent".into(), a.clone()),
        ]
    );
    let earlier = entries(&admin, &format!("?until={since}")).await;
    assert_eq!(resource_ids(&earlier), [b.clone(), a.clone()]);

    // Filters combine.
    let none = entries(&admin, &format!("?actor=bob&resource_id={a}")).await;
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn a_cursor_walk_sees_each_entry_once_while_entries_are_added() {
    let app = roomy_app().await;
    let alice = Client::new(&app, "auditwalk", "alice").await;
    let admin = alice.elevated();
    let mut expected = HashSet::new();
    for n in 0..25 {
        expected.insert(id(&alice.agent(&format!("Before {n}")).await));
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=4&cursor={c}"),
            None => "?limit=4".to_owned(),
        };
        let body = page(&admin, &query).await;
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 4);
        seen.extend(resource_ids(items));
        pages += 1;
        // Changes made between pages are newer than every page read: they never show up in
        // the rest of the walk, and they shift nothing.
        for n in 0..2 {
            alice.agent(&format!("During {pages}.{n}")).await;
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 7, "25 entries in pages of 4");
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was seen twice");
    assert_eq!(unique, expected, "entries were missed or added");
}

#[tokio::test]
async fn malformed_cursors_and_limits_are_refused() {
    let app = TestApp::spawn().await;
    let admin = Client::new(&app, "auditbad", "alice").await.elevated();
    for (query, field) in [
        ("?cursor=not-a-cursor!", "cursor"),
        ("?cursor=AAAA", "cursor"),
        ("?cursor=", "cursor"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=ten", "limit"),
        ("?action=erase", "action"),
        ("?resource_type=planet", "resource_type"),
        ("?since=yesterday", "since"),
    ] {
        admin
            .get(&format!("{LOG}{query}"))
            .await
            .err(400, "invalid_query", Some(field), query);
    }
    for limit in [1, 200] {
        admin.get(&format!("{LOG}?limit={limit}")).await.ok(200);
    }
}

#[tokio::test]
async fn an_entry_says_who_and_where_from() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "auditorigin", "alice").await;
    let long_agent = format!("probe/{}", "x".repeat(400));
    let resp = send(
        alice
            .req(Method::POST, &format!("{V1}/agents"))
            .header("User-Agent", &long_agent)
            .json(&json!({ "name": "Traced" })),
    )
    .await;
    let agent = resp.ok(201).clone();
    let request_id = resp
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_owned();

    let items = entries(&alice.elevated(), "").await;
    let entry = &items[0];
    assert_eq!(entry["resource_id"], agent["id"]);
    assert_eq!(entry["action"], "create");
    assert_eq!(entry["resource_type"], "agent");
    assert_eq!(
        entry["actor"],
        json!({ "kind": "user", "id": "alice", "name": "alice" })
    );
    assert_eq!(entry["request_id"], request_id.as_str());
    assert_eq!(entry["ip"], "127.0.0.1");
    let user_agent = entry["user_agent"].as_str().unwrap();
    assert_eq!(user_agent.chars().count(), 256);
    assert!(long_agent.starts_with(user_agent));
    assert_eq!(entry["changed_fields"], json!([]));
    assert!(Uuid::parse_str(entry["id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn an_update_names_the_fields_it_set_never_their_values() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "auditfields", "alice").await;
    let a = id(&alice.agent("Fields").await);
    alice
        .patch(
            &format!("/agents/{a}"),
            json!({ "system_prompt": "sekrit-prompt-value", "name": "Renamed" }),
        )
        .await
        .ok(200);
    alice.create("/tools", json!({ "name": "lookup" })).await;
    alice
        .patch(
            "/tools/lookup",
            json!({ "implementation_code": "sekrit-code" }),
        )
        .await
        .ok(200);
    let key = alice
        .elevated()
        .create("/api-keys", json!({ "name": "deploys", "expiry": "30d" }))
        .await;
    alice
        .elevated()
        .patch(&format!("/api-keys/{}", id(&key)), json!({ "name": "ci" }))
        .await
        .ok(200);

    let resp = alice.elevated().get(LOG).await;
    let items = resp.ok(200)["items"].as_array().unwrap().clone();
    let fields = |resource: &str| -> Value {
        items
            .iter()
            .find(|e| e["action"] == "update" && e["resource_type"] == resource)
            .unwrap_or_else(|| panic!("no update of {resource}"))["changed_fields"]
            .clone()
    };
    assert_eq!(fields("agent"), json!(["name", "system_prompt"]));
    assert_eq!(fields("tool"), json!(["implementation_code"]));
    assert_eq!(fields("api_key"), json!(["name"]));
    let secret = key["key"].as_str().unwrap();
    for value in ["sekrit-prompt-value", "sekrit-code", secret] {
        assert!(!resp.text.contains(value), "{value} is in the log");
    }
}

#[tokio::test]
async fn catalog_changes_appear_in_the_log() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "auditcatalog", "alice").await;
    let admin = alice.elevated();
    let key = admin
        .create("/api-keys", json!({ "name": "deploys", "expiry": "30d" }))
        .await;
    let unused = admin
        .create("/api-keys", json!({ "name": "spare", "expiry": "30d" }))
        .await;
    admin
        .delete(&format!("/api-keys/{}", id(&unused)))
        .await
        .ok(204);
    admin
        .post("/members", json!({ "subject": "bob", "role": "member" }))
        .await
        .ok(201);
    let widget_key = alice
        .create(
            "/widget-keys",
            json!({ "name": "site", "domain_allowlist": ["https://example.com"] }),
        )
        .await;
    // The key acts: its entries name it.
    let by_key = Client::api_key(&app, key["key"].as_str().unwrap());
    let agent = id(&by_key.agent("By key").await);

    let items = entries(&admin, "").await;
    assert_eq!(
        changes(&items),
        [
            ("create".into(), "agent".into(), agent),
            ("create".into(), "widget_key".into(), id(&widget_key)),
            ("upsert".into(), "member".into(), "bob".into()),
            ("delete".into(), "api_key".into(), id(&unused)),
            ("create".into(), "api_key".into(), id(&unused)),
            ("create".into(), "api_key".into(), id(&key)),
        ]
    );
    assert_eq!(
        items[0]["actor"],
        json!({ "kind": "api_key", "id": id(&key), "name": "deploys" })
    );
    assert!(items[1..].iter().all(|e| e["actor"]["id"] == "alice"));
}

/// Runs the binary against `app`'s system database (with its key pepper) as operator `ops`.
fn hub(app: &TestApp, args: &[&str]) {
    use secrecy::ExposeSecret;
    let pepper = app.state.config.key_pepper.as_ref().expect("pepper");
    let out = Command::new(crate::cli::BIN)
        .args(args)
        .env("KATAVEN_DATABASE_URL", system_url_of(app))
        .env("KATAVEN_KEY_PEPPER", pepper.expose_secret())
        .env("KATAVEN_LOG_FORMAT", "json")
        .env("USER", "ops")
        .output()
        .expect("run kataven-hub");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("could not be written"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn command_line_changes_appear_in_the_log() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "auditcli", "alice").await;
    let slug = alice.account.clone();
    let cli = |args: &'static [&'static str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.insert(2, &slug);
        hub(&app, &all);
    };
    cli(&[
        "accounts",
        "limits",
        "--per-day",
        "100000",
        "--concurrent",
        "50",
    ]);
    cli(&["accounts", "suspend"]);
    cli(&["accounts", "resume"]);
    hub(&app, &["accounts", "members", "add", &slug, "carol"]);
    hub(&app, &["api-keys", "create", &slug, "--name", "bootstrap"]);

    // The resume reaches this instance's caches through the catalog's notifications.
    let admin = alice.elevated();
    let mut resp: Resp = admin.get(LOG).await;
    for _ in 0..50 {
        if resp.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        resp = admin.get(LOG).await;
    }
    let items = resp.ok(200)["items"].as_array().unwrap().clone();
    let got: Vec<(String, String)> = changes(&items)
        .into_iter()
        .map(|(action, resource, _)| (action, resource))
        .collect();
    let want = [
        ("create", "api_key"),
        ("upsert", "member"),
        ("resume", "account"),
        ("suspend", "account"),
        ("update", "limits"),
    ];
    assert_eq!(
        got,
        want.map(|(a, r)| (a.to_owned(), r.to_owned())),
        "{items:?}"
    );
    for entry in &items {
        assert_eq!(
            entry["actor"],
            json!({ "kind": "operator", "id": "ops", "name": "ops" })
        );
        assert_eq!(entry["request_id"], Value::Null);
    }
    assert_eq!(items[2]["resource_id"], slug.as_str());
    assert_eq!(items[4]["changed_fields"], json!(["per_day", "concurrent"]));
}

/// Writes an entry `days` old directly into the account's database.
async fn old_entry(c: &Client<'_>, days: i32) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audit_log (id, at, principal_kind, principal_id, action, resource, resource_id)
         VALUES ($1, now() - make_interval(days => $2), 'user', 'alice', 'create', 'agent', 'old')",
    )
    .bind(id)
    .bind(days)
    .execute(&mut c.db().await)
    .await
    .unwrap();
    id
}

async fn stored(c: &Client<'_>, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit_log WHERE id = $1)")
        .bind(id)
        .fetch_one(&mut c.db().await)
        .await
        .unwrap()
}

/// An app that keeps audit entries 30 days.
async fn thirty_days_kept() -> TestApp {
    TestApp::builder()
        .await
        .config(|c| c.audit_retention_days = 30)
        .spawn()
        .await
}

#[tokio::test]
async fn the_retention_sweep_deletes_old_entries() {
    let app = thirty_days_kept().await;
    let alice = Client::new(&app, "auditsweep", "alice").await;
    alice.agent("Recent").await; // its pool is open: the sweep visits the account
    let expired = old_entry(&alice, 31).await;
    let kept = old_entry(&alice, 29).await;

    let swept = kataven_hub::housekeeping::sweep(&app.state).await;
    assert!(swept.audit_entries >= 1);
    assert!(!stored(&alice, expired).await, "an expired entry was kept");
    assert!(
        stored(&alice, kept).await,
        "an entry within retention was deleted"
    );
    assert_eq!(entries(&alice.elevated(), "").await.len(), 2);
}

#[tokio::test]
async fn entries_past_retention_are_never_answered() {
    let app = thirty_days_kept().await;
    let alice = Client::new(&app, "auditpast", "alice").await;
    old_entry(&alice, 31).await;
    assert_eq!(entries(&alice.elevated(), "").await, Vec::<Value>::new());
}

#[tokio::test]
async fn another_accounts_entries_never_appear() {
    let app = TestApp::spawn().await;
    let a = Client::new(&app, "auditiso", "alice").await;
    let b = Client::new(&app, "auditiso", "alice").await;
    let in_a = id(&a.agent("In A").await);
    let in_b = id(&b.agent("In B").await);
    assert_eq!(resource_ids(&entries(&a.elevated(), "").await), [in_a]);
    assert_eq!(
        resource_ids(&entries(&b.elevated(), "").await),
        std::slice::from_ref(&in_b)
    );
    // Not even by filter.
    let filtered = entries(&a.elevated(), &format!("?resource_id={in_b}")).await;
    assert!(filtered.is_empty());
}
