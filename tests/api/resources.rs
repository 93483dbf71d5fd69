//! Agents, playbooks, FAQs, tools, their associations, call limits and the audit log
//! (SPEC §6–§8), through real HTTP against real tenant databases.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::client::{Client, V1, id, send};
use crate::support::{TestApp, error_code, roomy_app};

/// Every prefix the protected resources answer at (SPEC §7).
const PREFIXES: [&str; 6] = [
    "/api/v1",
    "/api",
    "/v1",
    "/hub-api/api/v1",
    "/hub-api/api",
    "/hub-api/v1",
];

/// The knowledge resources that share list, get-by-id-or-name and delete code.
const KINDS: [&str; 3] = ["playbooks", "faqs", "tools"];

fn time(v: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(v.as_str().expect("timestamp")).expect("RFC 3339")
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A create body for a knowledge resource, with `text` in a searched column.
fn knowledge_body(kind: &str, name: &str, category: Option<&str>, text: &str) -> Value {
    let mut body = match kind {
        "faqs" => json!({ "name": name, "title": format!("About {name}"), "summary": text }),
        _ => json!({ "name": name, "display_name": format!("About {name}"), "description": text }),
    };
    if let Some(category) = category {
        body["category"] = json!(category);
    }
    body
}

// ---- agents ----------------------------------------------------------------------------------

/// Asserts that getting `agent` by its id answers it as it is.
async fn assert_fetched_as(c: &Client<'_>, agent: &Value) {
    let path = format!("/agents/{}", id(agent));
    assert_eq!(c.get(&path).await.ok(200), agent, "{path}");
}

#[tokio::test]
async fn an_agent_created_with_only_a_name_has_every_documented_default() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agdef", "alice").await;

    let before = chrono::Utc::now();
    let agent = c.agent("Front desk").await;
    let agent_id = id(&agent);
    assert!(Uuid::parse_str(&agent_id).is_ok(), "{agent_id}");
    let expected = json!({
        "id": agent_id,
        "name": "Front desk",
        "description": "",
        "category": "custom",
        "status": "draft",
        "system_prompt": "",
        "greeting_message": "",
        "greeting_mode": "interruptible",
        "llm_model": "gpt-4o",
        "voice_provider": "cartesia",
        "voice_id": null,
        "auth_mode": "authenticated",
        "ringing_enabled": true,
        "background_audio_enabled": false,
        "background_audio_volume": 0.8,
        "noise_suppression_enabled": true,
        "template_id": null,
        "active_prompt_id": null,
        "created_by": "user:alice",
        "created_at": agent["created_at"],
        "updated_at": agent["updated_at"],
        "playbooks": [],
        "faqs": [],
    });
    assert_eq!(agent, expected);
    let created_at = time(&agent["created_at"]);
    assert!(created_at >= before - chrono::Duration::seconds(5));
    assert!(created_at <= chrono::Utc::now() + chrono::Duration::seconds(5));
    assert_eq!(agent["created_at"], agent["updated_at"]);
    assert_eq!(c.get(&format!("/agents/{agent_id}")).await.ok(200), &agent);
}

#[tokio::test]
async fn a_created_agents_location_answers_with_the_same_agent() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agloc", "alice").await;
    let resp = c.post("/agents", json!({ "name": "Front desk" })).await;
    let agent = resp.ok(201).clone();
    let location = resp.location.as_deref();
    assert_eq!(
        location,
        Some(format!("/api/v1/agents/{}", id(&agent)).as_str())
    );
    let fetched = send(c.req(Method::GET, location.unwrap())).await;
    assert_eq!(fetched.ok(200), &agent);
}

#[tokio::test]
async fn every_agent_field_can_be_set_on_create() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agall", "alice").await;
    let template = Uuid::now_v7().to_string();
    let prompt = Uuid::now_v7().to_string();
    let fields = json!({
        "name": "Sales bot",
        "description": "Sells things",
        "category": "sales",
        "status": "active",
        "system_prompt": "Be nice.",
        "greeting_message": "Hello!",
        "greeting_mode": "locked",
        "llm_model": "gpt-4.1-mini",
        "voice_provider": "elevenlabs",
        "voice_id": "voice-42",
        "auth_mode": "public",
        "ringing_enabled": false,
        "background_audio_enabled": true,
        "background_audio_volume": 0.25,
        "noise_suppression_enabled": false,
        "template_id": template,
        "active_prompt_id": prompt,
    });
    let agent = c.create("/agents", fields.clone()).await;
    for (field, value) in fields.as_object().unwrap() {
        assert_eq!(&agent[field], value, "{field}");
    }
    assert_fetched_as(&c, &agent).await;
}

#[tokio::test]
async fn server_set_agent_fields_are_ignored_on_create() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agforge", "alice").await;
    let forged_id = Uuid::now_v7().to_string();
    let agent = c
        .create(
            "/agents",
            json!({
                "name": "Sales bot",
                "id": forged_id,
                "created_by": "user:mallory",
                "created_at": "2000-01-01T00:00:00Z",
                "updated_at": "2000-01-01T00:00:00Z",
                "playbooks": [{ "id": Uuid::now_v7(), "name": "ghost", "display_name": "Ghost" }],
                "faqs": [{ "id": Uuid::now_v7(), "name": "ghost", "title": "Ghost" }],
            }),
        )
        .await;
    assert_ne!(id(&agent), forged_id);
    assert_eq!(agent["created_by"], "user:alice");
    assert!(time(&agent["created_at"]).timestamp() > 1_700_000_000);
    assert!(time(&agent["updated_at"]).timestamp() > 1_700_000_000);
    assert_eq!(agent["playbooks"], json!([]));
    assert_eq!(agent["faqs"], json!([]));
    // The forged id names nothing.
    c.get(&format!("/agents/{forged_id}"))
        .await
        .err(404, "not_found", None, "forged id");
}

#[tokio::test]
async fn every_agent_enum_value_is_accepted() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agenum", "alice").await;
    for (field, values) in [
        (
            "category",
            &["customer_support", "sales", "operations", "custom"][..],
        ),
        ("status", &["draft", "active", "paused", "archived"]),
        ("greeting_mode", &["interruptible", "locked"]),
        ("voice_provider", &["cartesia", "elevenlabs", "deepgram"]),
        ("auth_mode", &["public", "authenticated"]),
    ] {
        for value in values {
            let agent = c
                .create("/agents", json!({ "name": "Enum", field: value }))
                .await;
            assert_eq!(agent[field], json!(value), "{field}");
        }
    }
}

#[tokio::test]
async fn the_agent_volume_bounds_are_inclusive() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agvol", "alice").await;
    for volume in [0.0, 1.0] {
        let agent = c
            .create(
                "/agents",
                json!({ "name": "Edge", "background_audio_volume": volume }),
            )
            .await;
        assert_eq!(agent["background_audio_volume"], json!(volume));
    }
}

#[tokio::test]
async fn agents_are_listed_newest_first() {
    let app = roomy_app().await;
    let c = Client::new(&app, "aglist", "alice").await;
    assert_eq!(c.agents().await, Vec::<Value>::new());

    let mut created = Vec::new();
    for name in ["first", "second", "third", "fourth"] {
        created.push(c.agent(name).await);
    }
    let expected: Vec<Value> = created.iter().rev().cloned().collect();
    assert_eq!(c.agents().await, expected);
}

#[tokio::test]
async fn agent_names_need_not_be_unique() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agsame", "alice").await;
    for name in ["first", "second", "first"] {
        c.agent(name).await;
    }
    let listed = c.agents().await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["name"], "first");
    assert_eq!(listed[2]["name"], "first");
}

/// An agent with a description, a voice and a template, and its path.
async fn patchable_agent(c: &Client<'_>, template: &str) -> (Value, String) {
    let agent = c
        .create(
            "/agents",
            json!({
                "name": "Support",
                "description": "Helps",
                "voice_id": "voice-1",
                "template_id": template,
            }),
        )
        .await;
    let path = format!("/agents/{}", id(&agent));
    (agent, path)
}

#[tokio::test]
async fn patching_an_agent_changes_only_the_fields_sent() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agpatch", "alice").await;
    let (agent, path) = patchable_agent(&c, &Uuid::now_v7().to_string()).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let patched = c
        .patch(
            &path,
            json!({ "status": "active", "background_audio_volume": 0.5, "voice_id": null }),
        )
        .await
        .ok(200)
        .clone();
    let mut expected = agent.clone();
    expected["status"] = json!("active");
    expected["background_audio_volume"] = json!(0.5);
    expected["voice_id"] = Value::Null;
    expected["updated_at"] = patched["updated_at"].clone();
    assert_eq!(patched, expected);
    assert!(time(&patched["updated_at"]) > time(&agent["updated_at"]));
    assert_eq!(patched["created_at"], agent["created_at"]);
    assert_eq!(c.get(&path).await.ok(200), &patched);
}

#[tokio::test]
async fn absent_nullable_agent_fields_keep_their_value_and_null_clears_them() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agpnull", "alice").await;
    let template = Uuid::now_v7().to_string();
    let (_, path) = patchable_agent(&c, &template).await;
    c.patch(&path, json!({ "status": "active" })).await.ok(200);

    let patched = c
        .patch(&path, json!({ "name": "Support 2" }))
        .await
        .ok(200)
        .clone();
    assert_eq!(patched["template_id"], json!(template));
    assert_eq!(patched["description"], "Helps");
    assert_eq!(patched["status"], "active");
    let patched = c
        .patch(
            &path,
            json!({ "template_id": null, "voice_id": "voice-2", "ringing_enabled": false }),
        )
        .await
        .ok(200)
        .clone();
    assert_eq!(patched["template_id"], Value::Null);
    assert_eq!(patched["voice_id"], "voice-2");
    assert_eq!(patched["ringing_enabled"], false);
    assert_eq!(patched["name"], "Support 2");
}

#[tokio::test]
async fn server_set_agent_fields_are_ignored_on_patch() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agpforge", "alice").await;
    let (agent, path) = patchable_agent(&c, &Uuid::now_v7().to_string()).await;
    let patched = c
        .patch(
            &path,
            json!({
                "id": Uuid::now_v7(),
                "created_by": "user:mallory",
                "created_at": "2000-01-01T00:00:00Z",
                "playbooks": [{ "id": Uuid::now_v7(), "name": "x", "display_name": "X" }],
            }),
        )
        .await
        .ok(200)
        .clone();
    assert_eq!(patched["id"], agent["id"]);
    assert_eq!(patched["created_by"], "user:alice");
    assert_eq!(patched["created_at"], agent["created_at"]);
    assert_eq!(patched["playbooks"], json!([]));
}

#[tokio::test]
async fn an_empty_agent_patch_changes_nothing_but_the_timestamp() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agpempty", "alice").await;
    let (_, path) = patchable_agent(&c, &Uuid::now_v7().to_string()).await;
    let before = c.get(&path).await.ok(200).clone();
    let after = c.patch(&path, json!({})).await.ok(200).clone();
    let mut expected = before.clone();
    expected["updated_at"] = after["updated_at"].clone();
    assert_eq!(after, expected);
}

#[tokio::test]
async fn deleting_an_agent_answers_204_then_404() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agdel", "alice").await;
    let keep = c.agent("keep").await;
    let gone = c.agent("gone").await;
    let path = format!("/agents/{}", id(&gone));

    let resp = c.delete(&path).await;
    assert_eq!(resp.status, 204, "{}", resp.text);
    assert!(resp.text.is_empty(), "{}", resp.text);
    c.get(&path).await.err(404, "not_found", None, "get");
    c.delete(&path).await.err(404, "not_found", None, "delete");
    c.patch(&path, json!({ "name": "x" }))
        .await
        .err(404, "not_found", None, "patch");
    assert_eq!(c.agents().await, vec![keep]);
}

#[tokio::test]
async fn invalid_agent_bodies_answer_invalid_body_naming_the_field() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agval", "alice").await;
    let long = "x".repeat(201);

    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("name of the wrong type", json!({ "name": 5 }), Some("name")),
        ("null name", json!({ "name": null }), Some("name")),
        ("empty name", json!({ "name": "" }), Some("name")),
        ("blank name", json!({ "name": "   " }), Some("name")),
        ("name too long", json!({ "name": long }), Some("name")),
        (
            "string for a bool",
            json!({ "name": "a", "ringing_enabled": "yes" }),
            Some("ringing_enabled"),
        ),
        (
            "number for a bool",
            json!({ "name": "a", "background_audio_enabled": 1 }),
            Some("background_audio_enabled"),
        ),
        (
            "unknown category",
            json!({ "name": "a", "category": "space" }),
            Some("category"),
        ),
        (
            "unknown status",
            json!({ "name": "a", "status": "deleted" }),
            Some("status"),
        ),
        (
            "unknown greeting mode",
            json!({ "name": "a", "greeting_mode": "shouty" }),
            Some("greeting_mode"),
        ),
        (
            "unknown voice provider",
            json!({ "name": "a", "voice_provider": "espeak" }),
            Some("voice_provider"),
        ),
        (
            "unknown auth mode",
            json!({ "name": "a", "auth_mode": "maybe" }),
            Some("auth_mode"),
        ),
        (
            "enum value in the wrong case",
            json!({ "name": "a", "category": "Sales" }),
            Some("category"),
        ),
        (
            "volume above 1",
            json!({ "name": "a", "background_audio_volume": 1.5 }),
            Some("background_audio_volume"),
        ),
        (
            "volume below 0",
            json!({ "name": "a", "background_audio_volume": -0.1 }),
            Some("background_audio_volume"),
        ),
        (
            "volume as a string",
            json!({ "name": "a", "background_audio_volume": "loud" }),
            Some("background_audio_volume"),
        ),
        (
            "empty llm model",
            json!({ "name": "a", "llm_model": "" }),
            Some("llm_model"),
        ),
        (
            "malformed template id",
            json!({ "name": "a", "template_id": "not-a-uuid" }),
            Some("template_id"),
        ),
        (
            "malformed active prompt id",
            json!({ "name": "a", "active_prompt_id": 7 }),
            Some("active_prompt_id"),
        ),
        (
            "voice id of the wrong type",
            json!({ "name": "a", "voice_id": ["v"] }),
            Some("voice_id"),
        ),
    ];
    for (case, body, field) in &cases {
        c.post("/agents", body.clone())
            .await
            .err(400, "invalid_body", *field, case);
    }
    // Nothing was created.
    assert_eq!(c.agents().await, Vec::<Value>::new());
}

/// The `field` member too: see `a_missing_required_field_is_named_in_the_field_member`.
#[tokio::test]
async fn a_missing_agent_name_is_named_in_the_message() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agnoname", "alice").await;
    for body in [json!({}), json!({ "description": "no name" })] {
        let resp = c.post("/agents", body).await;
        assert_eq!((resp.status, resp.code()), (400, "invalid_body"));
        let message = resp.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("`name`"), "{message}");
    }
    assert_eq!(c.agents().await, Vec::<Value>::new());
}

#[tokio::test]
async fn agent_bodies_that_are_not_objects_are_invalid() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agnotobj", "alice").await;
    for body in [json!([]), json!("name"), json!(null), json!(42)] {
        c.post("/agents", body.clone()).await.err(
            400,
            "invalid_body",
            None,
            &format!("body {body}"),
        );
    }
    assert_eq!(c.agents().await, Vec::<Value>::new());
}

#[tokio::test]
async fn invalid_agent_patches_answer_invalid_body_and_change_nothing() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agpval", "alice").await;
    let agent = c.agent("Steady").await;
    let path = format!("/agents/{}", id(&agent));

    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "volume above 1",
            json!({ "background_audio_volume": 1.5 }),
            Some("background_audio_volume"),
        ),
        (
            "volume below 0",
            json!({ "background_audio_volume": -0.1 }),
            Some("background_audio_volume"),
        ),
        (
            "unknown category",
            json!({ "category": "space" }),
            Some("category"),
        ),
        (
            "string for a bool",
            json!({ "ringing_enabled": "yes" }),
            Some("ringing_enabled"),
        ),
        ("empty name", json!({ "name": "" }), Some("name")),
        (
            "name of the wrong type",
            json!({ "name": [] }),
            Some("name"),
        ),
        (
            "empty llm model",
            json!({ "llm_model": " " }),
            Some("llm_model"),
        ),
        (
            "malformed template id",
            json!({ "template_id": "nope" }),
            Some("template_id"),
        ),
        // A valid change next to an invalid one is not applied either.
        (
            "valid and invalid together",
            json!({ "name": "Changed", "background_audio_volume": 2 }),
            Some("background_audio_volume"),
        ),
        ("array body", json!([]), None),
    ];
    for (case, body, field) in &cases {
        c.patch(&path, body.clone())
            .await
            .err(400, "invalid_body", *field, case);
    }
    assert_eq!(c.get(&path).await.ok(200), &agent);
}

#[tokio::test]
async fn malformed_json_and_wrong_content_types_answer_invalid_body() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agjson", "alice").await;
    let agent = c.agent("Target").await;
    let agent_path = format!("{V1}/agents/{}", id(&agent));
    let raw =
        |method, path: &str, content_type, body| raw_body(&c, method, path, content_type, body);
    let agents = format!("{V1}/agents");
    let json_ct = Some("application/json");

    for (case, method, path, ct, body) in [
        ("truncated", Method::POST, &agents, json_ct, r#"{"name":"#),
        ("not json", Method::POST, &agents, json_ct, "name=x"),
        ("empty body", Method::POST, &agents, json_ct, ""),
        (
            "trailing garbage",
            Method::POST,
            &agents,
            json_ct,
            r#"{"name":"x"} {}"#,
        ),
        (
            "single quotes",
            Method::POST,
            &agents,
            json_ct,
            "{'name':'x'}",
        ),
        (
            "text/plain",
            Method::POST,
            &agents,
            Some("text/plain"),
            r#"{"name":"x"}"#,
        ),
        (
            "form",
            Method::POST,
            &agents,
            Some("application/x-www-form-urlencoded"),
            "name=x",
        ),
        (
            "no content type",
            Method::POST,
            &agents,
            None,
            r#"{"name":"x"}"#,
        ),
        (
            "json-looking but not json",
            Method::POST,
            &agents,
            Some("application/jsonx"),
            r#"{"name":"x"}"#,
        ),
        (
            "patch truncated",
            Method::PATCH,
            &agent_path,
            json_ct,
            r#"{"name""#,
        ),
        (
            "patch text/plain",
            Method::PATCH,
            &agent_path,
            Some("text/plain"),
            r#"{"name":"x"}"#,
        ),
    ] {
        send(raw(method, path, ct, body))
            .await
            .err(400, "invalid_body", None, case);
    }
    // Nothing was created; the target is unchanged.
    assert_eq!(c.agents().await, vec![agent]);
}

#[tokio::test]
async fn json_content_types_with_parameters_or_a_json_suffix_are_json() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agjsonct", "alice").await;
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.kataven+json",
    ] {
        let rb = raw_body(
            &c,
            Method::POST,
            &format!("{V1}/agents"),
            Some(ct),
            r#"{"name":"ct"}"#,
        );
        let resp = send(rb).await;
        assert_eq!(resp.status, 201, "{ct}: {}", resp.text);
    }
    assert_eq!(c.agents().await.len(), 3);
}

/// A request with `body` as it is, and `content_type` if any.
fn raw_body(
    c: &Client<'_>,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> reqwest::RequestBuilder {
    let rb = c.req(method, path).body(body.to_owned());
    match content_type {
        Some(ct) => rb.header("content-type", ct),
        None => rb,
    }
}

#[tokio::test]
async fn null_for_a_non_nullable_agent_field_in_a_patch_is_invalid() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agnull", "alice").await;
    let agent = c.agent("Not null").await;
    let path = format!("/agents/{}", id(&agent));
    for field in [
        "name",
        "category",
        "background_audio_volume",
        "ringing_enabled",
    ] {
        c.patch(&path, json!({ field: null })).await.err(
            400,
            "invalid_body",
            Some(field),
            &format!("{field}: null"),
        );
    }
}

#[tokio::test]
async fn bodies_over_the_limit_answer_payload_too_large() {
    let app = TestApp::builder()
        .await
        .config(|c| c.body_limit_bytes = 4096)
        .spawn()
        .await;
    let c = Client::new(&app, "big", "alice").await;
    let agent = c.agent("Small").await;
    let big = "x".repeat(8192);
    c.post("/agents", json!({ "name": "Big", "description": big }))
        .await
        .err(413, "payload_too_large", None, "create");
    c.patch(
        &format!("/agents/{}", id(&agent)),
        json!({ "system_prompt": big }),
    )
    .await
    .err(413, "payload_too_large", None, "patch");
    c.post("/playbooks", json!({ "name": "big", "description": big }))
        .await
        .err(413, "payload_too_large", None, "playbook");
    assert_eq!(c.agents().await, vec![agent]);
}

#[tokio::test]
async fn a_missing_required_field_is_named_in_the_field_member() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agmiss", "alice").await;
    let agent = c.agent("a").await;
    c.post("/agents", json!({}))
        .await
        .err(400, "invalid_body", Some("name"), "agent without name");
    c.post("/playbooks", json!({ "display_name": "x" }))
        .await
        .err(400, "invalid_body", Some("name"), "playbook without name");
    c.post(&format!("/agents/{}/tools", id(&agent)), json!({}))
        .await
        .err(400, "invalid_body", Some("tool_name"), "tool without name");
    c.post(&format!("/agents/{}/playbooks", id(&agent)), json!({}))
        .await
        .err(
            400,
            "invalid_body",
            Some("playbook_id"),
            "attach without id",
        );
}

#[tokio::test]
async fn unknown_and_malformed_agent_ids_answer_not_found() {
    let app = roomy_app().await;
    let c = Client::new(&app, "ag404", "alice").await;
    c.create("/tools", json!({ "name": "lookup" })).await;
    c.create("/playbooks", json!({ "name": "book" })).await;
    c.create("/faqs", json!({ "name": "faq" })).await;
    let unknown = Uuid::now_v7().to_string();

    for agent in [
        unknown.as_str(),
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        let base = format!("/agents/{agent}");
        let cases = [
            ("get", c.get(&base).await),
            ("patch", c.patch(&base, json!({ "name": "x" })).await),
            ("delete", c.delete(&base).await),
            ("tools", c.get(&format!("{base}/tools")).await),
            (
                "upsert tool",
                c.post(&format!("{base}/tools"), json!({ "tool_name": "lookup" }))
                    .await,
            ),
            (
                "put tool",
                c.put(&format!("{base}/tools"), json!({ "tool_name": "lookup" }))
                    .await,
            ),
            (
                "attach playbook",
                c.post(
                    &format!("{base}/playbooks"),
                    json!({ "playbook_id": "book" }),
                )
                .await,
            ),
            (
                "detach playbook",
                c.delete(&format!("{base}/playbooks/book")).await,
            ),
            (
                "attach faq",
                c.post(&format!("{base}/faqs"), json!({ "faq_id": "faq" }))
                    .await,
            ),
            ("detach faq", c.delete(&format!("{base}/faqs/faq")).await),
        ];
        for (case, resp) in cases {
            resp.err(404, "not_found", None, &format!("{case} {agent}"));
        }
    }
}

// ---- playbooks, FAQs, tools ------------------------------------------------------------------

/// One kind of knowledge resource, as its behaviours' tests need it.
struct Knowledge {
    kind: &'static str,
    /// A create body setting every field, plus server-set fields (which are ignored).
    full: Value,
    /// What `full` creates, but for `id` and the timestamps.
    created: Value,
    /// What a body with only a name creates, but for `id`, `name` and the timestamps.
    defaults: Value,
    /// A patch (server-set fields in it are ignored) and the fields it changes.
    patch: Value,
    patched: Value,
}

/// Playbooks, FAQs and tools: each knowledge test runs over all three.
fn knowledge() -> [Knowledge; 3] {
    let schema = json!({
        "type": "object",
        "properties": { "order_id": { "type": "string" } },
        "required": ["order_id"],
    });
    let playbook = json!({
        "name": "refund_policy",
        "display_name": "Refund policy",
        "category": "custom",
        "description": "How refunds work",
        "tags": ["billing", "refunds"],
        "tool_names": ["lookup_order"],
    });
    let faq = json!({
        "name": "opening_hours",
        "title": "When are you open?",
        "summary": "Weekdays",
        "content": "9 to 5, Monday to Friday.",
        "category": "general",
        "tags": ["hours"],
    });
    let tool = json!({
        "name": "lookup_order",
        "display_name": "Look up an order",
        "category": "commerce",
        "description": "Finds an order by id",
        "schema": schema,
        "implementation_type": "python",
        "implementation_config": { "timeout_s": 5 },
        "implementation_code": "def run(order_id): ...",
        "tags": ["orders"],
    });
    let with = |body: &Value, extra: Value| {
        let mut body = body.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let server_set = |is_default: bool| {
        let mut fields = json!({ "id": Uuid::now_v7() });
        if is_default {
            fields["is_default"] = json!(true);
        }
        fields
    };
    [
        Knowledge {
            kind: "playbooks",
            full: with(&playbook, server_set(true)),
            created: with(&playbook, json!({ "is_default": false })),
            defaults: json!({
                "display_name": "", "category": "custom", "description": "", "tags": [],
                "tool_names": [], "is_default": false,
            }),
            patch: json!({ "category": "billing", "tags": [], "is_default": true }),
            patched: json!({ "category": "billing", "tags": [] }),
        },
        Knowledge {
            kind: "faqs",
            full: with(&faq, server_set(false)),
            created: faq,
            defaults: json!({
                "title": "", "summary": "", "content": "", "category": "custom", "tags": [],
            }),
            patch: json!({ "content": "Always." }),
            patched: json!({ "content": "Always." }),
        },
        Knowledge {
            kind: "tools",
            full: with(&tool, server_set(true)),
            created: with(&tool, json!({ "is_default": false })),
            defaults: json!({
                "display_name": "", "category": "custom", "description": "", "schema": {},
                "implementation_type": "http", "implementation_config": {},
                "implementation_code": null, "tags": [], "is_default": false,
            }),
            // `null` clears the code.
            patch: json!({ "implementation_type": "http", "implementation_code": null }),
            patched: json!({ "implementation_type": "http", "implementation_code": null }),
        },
    ]
}

impl Knowledge {
    /// The collection's path, or one item's (`target`: a UUID or a name).
    fn at(&self, target: &str) -> String {
        match target {
            "" => format!("/{}", self.kind),
            _ => format!("/{}/{target}", self.kind),
        }
    }

    fn name(&self) -> &str {
        self.full["name"].as_str().unwrap()
    }

    /// `expected` with the server-set `id` and timestamps of `actual`.
    fn as_created(&self, expected: &Value, actual: &Value) -> Value {
        let mut expected = expected.clone();
        for field in ["id", "created_at", "updated_at"] {
            expected[field] = actual[field].clone();
        }
        expected
    }

    /// Creates the item of `full`, asserting 201.
    async fn create(&self, c: &Client<'_>) -> Value {
        c.create(&self.at(""), self.full.clone()).await
    }

    /// Creates an item with only a name, asserting 201.
    async fn create_named(&self, c: &Client<'_>, name: &str) -> Value {
        c.create(&self.at(""), json!({ "name": name })).await
    }

    async fn total(&self, c: &Client<'_>) -> Value {
        c.get(&self.at("")).await.ok(200)["total"].clone()
    }
}

#[tokio::test]
async fn knowledge_created_with_every_field_answers_them_and_ignores_server_set_ones() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kfull", "alice").await;
    for k in knowledge() {
        let item = k.create(&c).await;
        assert_eq!(item, k.as_created(&k.created, &item), "{}", k.kind);
        assert_ne!(item["id"], k.full["id"], "{}: the sent id", k.kind);
        assert!(Uuid::parse_str(&id(&item)).is_ok(), "{item}");
        time(&item["created_at"]);
        time(&item["updated_at"]);
    }
}

#[tokio::test]
async fn knowledge_created_with_only_a_name_has_the_documented_defaults() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kdef", "alice").await;
    for k in knowledge() {
        let item = k.create_named(&c, "minimal").await;
        let mut expected = k.defaults.clone();
        expected["name"] = json!("minimal");
        assert_eq!(item, k.as_created(&expected, &item), "{}", k.kind);
    }
}

#[tokio::test]
async fn knowledge_is_found_by_uuid_and_by_name() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kget", "alice").await;
    for k in knowledge() {
        let item = k.create(&c).await;
        assert_eq!(c.get(&k.at(&id(&item))).await.ok(200), &item, "{}", k.kind);
        assert_eq!(c.get(&k.at(k.name())).await.ok(200), &item, "{}", k.kind);
    }
}

#[tokio::test]
async fn patching_knowledge_by_name_changes_only_the_fields_sent() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kpatch", "alice").await;
    for k in knowledge() {
        let item = k.create(&c).await;
        let patched = c
            .patch(&k.at(k.name()), k.patch.clone())
            .await
            .ok(200)
            .clone();
        let mut expected = item.clone();
        for (field, value) in k.patched.as_object().unwrap() {
            expected[field] = value.clone();
        }
        expected["updated_at"] = patched["updated_at"].clone();
        assert_eq!(patched, expected, "{}", k.kind);
        assert!(time(&patched["updated_at"]) >= time(&item["updated_at"]));
        assert_eq!(c.get(&k.at(&id(&item))).await.ok(200), &patched);
    }
}

#[tokio::test]
async fn renaming_knowledge_by_uuid_frees_the_old_name() {
    let app = roomy_app().await;
    let c = Client::new(&app, "krename", "alice").await;
    for k in knowledge() {
        let item = k.create(&c).await;
        let renamed = c
            .patch(&k.at(&id(&item)), json!({ "name": "renamed" }))
            .await
            .ok(200)
            .clone();
        assert_eq!(renamed["name"], "renamed", "{}", k.kind);
        assert_eq!(renamed["id"], item["id"], "{}", k.kind);
        assert_eq!(c.get(&k.at("renamed")).await.ok(200), &renamed);
        c.get(&k.at(k.name()))
            .await
            .err(404, "not_found", None, &format!("{}: old name", k.kind));
    }
}

#[tokio::test]
async fn deleting_knowledge_by_name_or_uuid_answers_204_then_404() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kdel", "alice").await;
    for k in knowledge() {
        let item = k.create(&c).await;
        let minimal = k.create_named(&c, "minimal").await;
        let case = |what: &str| format!("{}: {what}", k.kind);

        c.delete(&k.at(k.name())).await.ok(204);
        for target in [id(&item), k.name().to_owned()] {
            c.get(&k.at(&target))
                .await
                .err(404, "not_found", None, &case("get deleted"));
            c.delete(&k.at(&target))
                .await
                .err(404, "not_found", None, &case("deleted twice"));
        }
        c.delete(&k.at(&id(&minimal))).await.ok(204);
        assert_eq!(k.total(&c).await, 0, "{}", k.kind);
    }
}

/// Asserts that GET, PATCH and DELETE of `path` answer `not_found` to `c`.
async fn assert_not_found(c: &Client<'_>, path: &str) {
    let patch = json!({ "description": "pwned" });
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(&patch)),
        (Method::DELETE, None),
    ] {
        let case = format!("{method} {path}");
        c.call(method, &format!("{V1}{path}"), body)
            .await
            .err(404, "not_found", None, &case);
    }
}

#[tokio::test]
async fn unknown_knowledge_uuids_and_names_answer_not_found() {
    let app = roomy_app().await;
    let c = Client::new(&app, "k404", "alice").await;
    for k in knowledge() {
        k.create(&c).await;
        // Unknown UUIDs and names; names that cannot be names.
        for missing in [
            Uuid::now_v7().to_string(),
            "nothing_here".into(),
            "Not%20A%20Name".into(),
        ] {
            assert_not_found(&c, &k.at(&missing)).await;
        }
    }
}

#[tokio::test]
async fn a_duplicate_knowledge_name_is_a_conflict() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kdup", "alice").await;
    // Names are unique per table, not across tables: `taken` is in all three.
    for k in knowledge() {
        let taken = k.create_named(&c, "taken").await;
        k.create_named(&c, "free").await;
        let case = |what: &str| format!("{}: {what}", k.kind);

        // A duplicate name on create and on rename.
        c.post(&k.at(""), json!({ "name": "taken" })).await.err(
            409,
            "conflict",
            None,
            &case("duplicate"),
        );
        c.patch(&k.at("free"), json!({ "name": "taken" }))
            .await
            .err(409, "conflict", None, &case("rename"));
        // Renaming to its own name is fine.
        c.patch(&k.at("taken"), json!({ "name": "taken" }))
            .await
            .ok(200);
        assert_eq!(c.get(&k.at("free")).await.ok(200)["name"], "free");
        assert_eq!(c.get(&k.at("taken")).await.ok(200)["id"], taken["id"]);
        assert_eq!(k.total(&c).await, 2, "{}", k.kind);
    }
}

#[tokio::test]
async fn knowledge_names_are_snake_case_and_at_most_100_characters() {
    let app = roomy_app().await;
    let c = Client::new(&app, "knames", "alice").await;
    let too_long = "a".repeat(101);
    for k in knowledge() {
        k.create_named(&c, "free").await;
        for bad in [
            "",
            "Refund",
            "refund-policy",
            "refund policy",
            "1st",
            "_lead",
            "émoji",
            "ok.dot",
            too_long.as_str(),
        ] {
            c.post(&k.at(""), json!({ "name": bad })).await.err(
                400,
                "invalid_body",
                Some("name"),
                &format!("{}: create `{bad}`", k.kind),
            );
            c.patch(&k.at("free"), json!({ "name": bad })).await.err(
                400,
                "invalid_body",
                Some("name"),
                &format!("{}: rename to `{bad}`", k.kind),
            );
        }
        c.post(&k.at(""), json!({ "name": 7 })).await.err(
            400,
            "invalid_body",
            Some("name"),
            &format!("{}: number", k.kind),
        );
        // The longest valid name.
        k.create_named(&c, &format!("a{}", "b".repeat(99))).await;
        assert_eq!(k.total(&c).await, 2, "{}", k.kind);
    }
}

#[tokio::test]
async fn an_empty_knowledge_category_is_invalid() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kcat", "alice").await;
    for k in knowledge() {
        c.post(&k.at(""), json!({ "name": "fine", "category": "" }))
            .await
            .err(
                400,
                "invalid_body",
                Some("category"),
                &format!("{}: empty category", k.kind),
            );
        assert_eq!(k.total(&c).await, 0, "{}", k.kind);
    }
}

#[tokio::test]
async fn playbook_tool_names_must_be_names() {
    let app = roomy_app().await;
    let c = Client::new(&app, "ktoolnames", "alice").await;
    c.post(
        "/playbooks",
        json!({ "name": "pb", "tool_names": ["Bad Name"] }),
    )
    .await
    .err(400, "invalid_body", Some("tool_names"), "tool_names");
}

#[tokio::test]
async fn invalid_tool_bodies_answer_invalid_body_naming_the_field() {
    let app = roomy_app().await;
    let c = Client::new(&app, "toolval", "alice").await;
    let tool = c.create("/tools", json!({ "name": "lookup_order" })).await;
    for (case, body, field) in [
        ("array schema", json!({ "schema": [] }), "schema"),
        ("string schema", json!({ "schema": "object" }), "schema"),
        (
            "array config",
            json!({ "implementation_config": [1] }),
            "implementation_config",
        ),
        (
            "unknown implementation type",
            json!({ "implementation_type": "java" }),
            "implementation_type",
        ),
        ("tags not strings", json!({ "tags": [1] }), "tags[0]"),
        ("empty tag", json!({ "tags": [""] }), "tags"),
    ] {
        let mut body = body;
        body["name"] = json!("t1");
        c.post("/tools", body)
            .await
            .err(400, "invalid_body", Some(field), case);
    }
    c.patch(&format!("/tools/{}", id(&tool)), json!({ "schema": 5 }))
        .await
        .err(400, "invalid_body", Some("schema"), "patch schema");
    c.get("/tools/t1")
        .await
        .err(404, "not_found", None, "nothing created");
    assert_eq!(c.get("/tools/lookup_order").await.ok(200), &tool);
}

/// Twelve items per kind, created out of order (lists are sorted by name), and their names
/// in order.
async fn twelve_items(c: &Client<'_>, kind: &str) -> Vec<String> {
    for i in [7, 0, 11, 3, 9, 1, 5, 10, 2, 8, 4, 6] {
        c.create(
            &format!("/{kind}"),
            knowledge_body(kind, &format!("item_{i:02}"), None, "x"),
        )
        .await;
    }
    (0..12).map(|i| format!("item_{i:02}")).collect()
}

/// A page of `kind`'s list with the query `q`, asserting 200 and exactly the six members of
/// a page.
async fn page(c: &Client<'_>, kind: &str, q: &str) -> Value {
    let p = c.get(&format!("/{kind}?{q}")).await.ok(200).clone();
    let mut keys: Vec<&String> = p.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["has_next", "has_prev", "items", "limit", "offset", "total"],
        "{kind}?{q}"
    );
    p
}

#[tokio::test]
async fn an_empty_knowledge_list_is_an_empty_first_page() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kempty", "alice").await;
    for kind in KINDS {
        assert_eq!(
            page(&c, kind, "").await,
            json!({
                "items": [], "total": 0, "limit": 10, "offset": 0,
                "has_next": false, "has_prev": false,
            }),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn knowledge_lists_are_sorted_by_name_and_paged_by_limit_and_offset() {
    let app = roomy_app().await;
    let c = Client::new(&app, "paging", "alice").await;
    for kind in KINDS {
        let all = twelve_items(&c, kind).await;
        // (query, limit, offset, has_next, has_prev, the items' range)
        for (q, limit, offset, has_next, has_prev, range) in [
            ("", 10, 0, true, false, 0..10),
            ("limit=5", 5, 0, true, false, 0..5),
            ("limit=5&offset=5", 5, 5, true, true, 5..10),
            ("limit=5&offset=10", 5, 10, false, true, 10..12),
            ("offset=11", 10, 11, false, true, 11..12),
            ("offset=12", 10, 12, false, true, 12..12),
            ("offset=1000", 10, 1000, false, true, 12..12),
            ("limit=100", 100, 0, false, false, 0..12),
            ("limit=12", 12, 0, false, false, 0..12),
            ("limit=1&offset=0", 1, 0, true, false, 0..1),
        ] {
            let p = page(&c, kind, q).await;
            assert_eq!(
                p,
                json!({
                    "items": p["items"], "total": 12, "limit": limit, "offset": offset,
                    "has_next": has_next, "has_prev": has_prev,
                }),
                "{kind}?{q}"
            );
            assert_eq!(names(&p["items"]), all[range], "{kind}?{q}");
        }
    }
}

#[tokio::test]
async fn walking_knowledge_pages_visits_every_item_once_in_order() {
    let app = roomy_app().await;
    let c = Client::new(&app, "walking", "alice").await;
    for kind in KINDS {
        let all = twelve_items(&c, kind).await;
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let p = page(&c, kind, &format!("limit=3&offset={offset}")).await;
            seen.extend(names(&p["items"]));
            if !p["has_next"].as_bool().unwrap() {
                break;
            }
            offset += 3;
        }
        assert_eq!(seen, all, "{kind}");
    }
}

/// Five items per kind to filter: two in `sales`, one in `Sales`, two in `custom`, with `%`,
/// `_` and `\` in their names or texts.
async fn filter_items(c: &Client<'_>, kind: &str) {
    for (name, category, text) in [
        ("pct_doc", Some("sales"), "100% sure"),
        ("plain_doc", Some("sales"), "100 sure"),
        ("ab_cd", None, "nothing"),
        ("abxcd", None, r"back\slash"),
        ("upper_doc", Some("Sales"), "SHOUTING"),
    ] {
        c.create(
            &format!("/{kind}"),
            knowledge_body(kind, name, category, text),
        )
        .await;
    }
}

/// The names `kind`'s list answers for the query `q` (which all fit one page).
async fn found(c: &Client<'_>, kind: &str, q: &str) -> Vec<String> {
    let p = page(c, kind, q).await;
    assert_eq!(
        p["total"].as_u64().unwrap() as usize,
        p["items"].as_array().unwrap().len(),
        "{kind}?{q}: {p}"
    );
    names(&p["items"])
}

#[tokio::test]
async fn knowledge_lists_filter_by_exact_category() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kcategory", "alice").await;
    for kind in KINDS {
        filter_items(&c, kind).await;
        // Exact and case-sensitive.
        for (category, want) in [
            ("sales", &["pct_doc", "plain_doc"][..]),
            ("Sales", &["upper_doc"]),
            ("custom", &["ab_cd", "abxcd"]),
            ("sal", &[]),
        ] {
            let q = format!("category={category}");
            assert_eq!(found(&c, kind, &q).await, want, "{kind}?{q}");
        }
    }
}

#[tokio::test]
async fn knowledge_search_is_a_case_insensitive_literal_substring() {
    let app = roomy_app().await;
    let c = Client::new(&app, "ksearch", "alice").await;
    for kind in KINDS {
        filter_items(&c, kind).await;
        // Of the name or text; `%`, `_` and `\` are literal.
        for (term, want) in [
            ("100", &["pct_doc", "plain_doc"][..]),
            ("100%", &["pct_doc"]),
            ("%", &["pct_doc"]),
            ("0%", &["pct_doc"]),
            ("100%sure", &[]),
            ("b_c", &["ab_cd"]),
            ("_", &["ab_cd", "pct_doc", "plain_doc", "upper_doc"]),
            ("a_cd", &[]),
            ("\\", &["abxcd"]),
            ("k\\s", &["abxcd"]),
            ("shout", &["upper_doc"]),
            ("UPPER", &["upper_doc"]),
            // The display name / title is searched too ("About <name>").
            ("about abx", &["abxcd"]),
            ("no such text", &[]),
        ] {
            let q = format!("search={}", enc(term));
            assert_eq!(found(&c, kind, &q).await, want, "{kind}?{q}");
        }
        // An empty search does not filter.
        assert_eq!(found(&c, kind, "search=").await.len(), 5, "{kind}");
    }
}

#[tokio::test]
async fn knowledge_filters_combine_with_each_other_and_with_paging() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kcombine", "alice").await;
    for kind in KINDS {
        filter_items(&c, kind).await;
        let q = format!("category=sales&search={}", enc("%"));
        assert_eq!(found(&c, kind, &q).await, ["pct_doc"], "{kind}?{q}");
        let p = page(&c, kind, "category=sales&limit=1&offset=1").await;
        assert_eq!(names(&p["items"]), ["plain_doc"], "{kind}");
        assert_eq!(
            (&p["total"], &p["has_next"], &p["has_prev"]),
            (&json!(2), &json!(false), &json!(true)),
            "{kind}"
        );
    }
}

/// Asserts that each list query answers `invalid_query` naming its field, for every kind.
async fn refuses_queries(c: &Client<'_>, cases: &[(&str, &str)]) {
    for kind in KINDS {
        for &(query, field) in cases {
            c.get(&format!("/{kind}?{query}")).await.err(
                400,
                "invalid_query",
                Some(field),
                &format!("{kind}?{query}"),
            );
        }
    }
}

#[tokio::test]
async fn out_of_range_list_parameters_answer_invalid_query() {
    let app = roomy_app().await;
    let c = Client::new(&app, "query", "alice").await;
    refuses_queries(
        &c,
        &[
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-1", "limit"),
            ("limit=1000000", "limit"),
            ("offset=-1", "offset"),
            ("limit=10&offset=-5", "offset"),
        ],
    )
    .await;
}

#[tokio::test]
async fn non_numeric_list_parameters_answer_json_invalid_query() {
    let app = roomy_app().await;
    let c = Client::new(&app, "nanq", "alice").await;
    refuses_queries(
        &c,
        &[
            ("limit=abc", "limit"),
            ("limit=1.5", "limit"),
            ("limit=", "limit"),
            ("offset=x", "offset"),
        ],
    )
    .await;
}

#[tokio::test]
async fn unknown_list_parameters_are_ignored() {
    let app = roomy_app().await;
    let c = Client::new(&app, "kunknownq", "alice").await;
    for kind in KINDS {
        c.get(&format!("/{kind}?page=2&sort=name")).await.ok(200);
    }
}

/// A built-in playbook (`greeting`) and tool (`transfer_call`), as `(kind, item)`; the flag is
/// server-set, so the database sets it.
async fn built_ins(c: &Client<'_>) -> [(&'static str, Value); 2] {
    let pb = c.create("/playbooks", json!({ "name": "greeting" })).await;
    let tool = c.create("/tools", json!({ "name": "transfer_call" })).await;
    let mut db = c.db().await;
    for (table, row) in [("playbooks", &pb), ("tools", &tool)] {
        sqlx::query(&format!(
            "UPDATE {table} SET is_default = true WHERE id = $1"
        ))
        .bind(Uuid::parse_str(&id(row)).unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    }
    [("playbooks", pb), ("tools", tool)]
}

/// How many deletes the account's audit log holds.
async fn deletes_audited(c: &Client<'_>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'delete'")
        .fetch_one(&mut c.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn built_in_playbooks_and_tools_cannot_be_deleted() {
    let app = roomy_app().await;
    let c = Client::new(&app, "builtin", "alice").await;
    for (kind, row) in built_ins(&c).await {
        let name = row["name"].as_str().unwrap();
        for target in [id(&row), name.to_owned()] {
            c.delete(&format!("/{kind}/{target}")).await.err(
                403,
                "forbidden",
                None,
                &format!("{kind}/{target}"),
            );
        }
        let still = c.get(&format!("/{kind}/{name}")).await.ok(200).clone();
        assert_eq!(still["is_default"], true, "{kind}");
    }
    assert_eq!(deletes_audited(&c).await, 0);
}

#[tokio::test]
async fn a_patch_cannot_clear_the_built_in_flag() {
    let app = roomy_app().await;
    let c = Client::new(&app, "builtinpatch", "alice").await;
    for (kind, row) in built_ins(&c).await {
        let path = format!("/{kind}/{}", row["name"].as_str().unwrap());
        let patched = c
            .patch(&path, json!({ "is_default": false }))
            .await
            .ok(200)
            .clone();
        assert_eq!(patched["is_default"], true, "{kind}");
        c.delete(&path).await.err(403, "forbidden", None, kind);
    }
    assert_eq!(deletes_audited(&c).await, 0);
}

// ---- associations ----------------------------------------------------------------------------

/// Attaches `target` (a UUID or a name) of `kind` (`playbooks` or `faqs`) to the agent `agent`
/// (its id), asserting 200, and returns the agent.
async fn attach(c: &Client<'_>, agent: &str, kind: &str, target: &str) -> Value {
    let field = if kind == "playbooks" {
        "playbook_id"
    } else {
        "faq_id"
    };
    c.post(&format!("/agents/{agent}/{kind}"), json!({ field: target }))
        .await
        .ok(200)
        .clone()
}

/// An agent and the path of its tools, with the tools `lookup_order` and `send_sms`.
async fn tooled_agent(c: &Client<'_>) -> (Value, String) {
    let agent = c.agent("Tooled").await;
    let tools = format!("/agents/{}/tools", id(&agent));
    c.create("/tools", json!({ "name": "lookup_order" })).await;
    c.create("/tools", json!({ "name": "send_sms" })).await;
    (agent, tools)
}

#[tokio::test]
async fn an_agents_first_tool_post_creates_it_enabled_with_an_empty_config() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtool1", "alice").await;
    let (_, tools) = tooled_agent(&c).await;
    assert_eq!(c.get(&tools).await.ok(200), &json!([]));

    let first = c
        .post(&tools, json!({ "tool_name": "lookup_order" }))
        .await
        .ok(201)
        .clone();
    assert_eq!(first["tool_name"], "lookup_order");
    assert_eq!(first["config"], json!({}));
    assert_eq!(first["enabled"], true);
    time(&first["created_at"]);
}

#[tokio::test]
async fn posting_an_agent_tool_again_replaces_its_config_and_enabled() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtool2", "alice").await;
    let (_, tools) = tooled_agent(&c).await;
    let first = c
        .post(&tools, json!({ "tool_name": "lookup_order" }))
        .await
        .ok(201)
        .clone();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let second = c
        .post(
            &tools,
            json!({ "tool_name": "lookup_order", "config": { "region": "eu" }, "enabled": false }),
        )
        .await
        .ok(200)
        .clone();
    assert_eq!(second["config"], json!({ "region": "eu" }));
    assert_eq!(second["enabled"], false);
    assert_eq!(second["created_at"], first["created_at"]);
    assert!(time(&second["updated_at"]) > time(&first["updated_at"]));
}

#[tokio::test]
async fn put_upserts_an_agent_tool_as_post_does() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtool3", "alice").await;
    let (_, tools) = tooled_agent(&c).await;
    c.post(
        &tools,
        json!({ "tool_name": "lookup_order", "enabled": false }),
    )
    .await
    .ok(201);

    // 200 on an existing one, 201 on a new one.
    let updated = c
        .put(
            &tools,
            json!({ "tool_name": "lookup_order", "config": { "region": "us", "n": [1, 2] } }),
        )
        .await
        .ok(200)
        .clone();
    assert_eq!(updated["config"], json!({ "region": "us", "n": [1, 2] }));
    assert_eq!(
        updated["enabled"], true,
        "enabled defaults to true on update"
    );
    let sms = c
        .put(
            &tools,
            json!({ "tool_name": "send_sms", "config": null, "enabled": true }),
        )
        .await
        .ok(201)
        .clone();
    assert_eq!(sms["config"], json!({}));
    assert_eq!(c.get(&tools).await.ok(200), &json!([updated, sms]));
}

#[tokio::test]
async fn agent_tools_are_per_agent() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtool4", "alice").await;
    let (_, tools) = tooled_agent(&c).await;
    let other = c.agent("Other").await;
    c.put(&tools, json!({ "tool_name": "send_sms" }))
        .await
        .ok(201);
    assert_eq!(
        c.get(&format!("/agents/{}/tools", id(&other)))
            .await
            .ok(200),
        &json!([])
    );
}

#[tokio::test]
async fn invalid_agent_tool_bodies_answer_invalid_body_and_change_nothing() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtoolval", "alice").await;
    let (_, tools) = tooled_agent(&c).await;
    c.post(&tools, json!({ "tool_name": "send_sms" }))
        .await
        .ok(201);
    let listed = c.get(&tools).await.ok(200).clone();

    for (case, body, field) in [
        (
            "unknown tool",
            json!({ "tool_name": "no_such_tool" }),
            Some("tool_name"),
        ),
        (
            "array config",
            json!({ "tool_name": "send_sms", "config": [1] }),
            Some("config"),
        ),
        (
            "string config",
            json!({ "tool_name": "send_sms", "config": "x" }),
            Some("config"),
        ),
        (
            "number config",
            json!({ "tool_name": "send_sms", "config": 3 }),
            Some("config"),
        ),
        (
            "tool name of the wrong type",
            json!({ "tool_name": 3 }),
            Some("tool_name"),
        ),
        (
            "enabled of the wrong type",
            json!({ "tool_name": "send_sms", "enabled": "yes" }),
            Some("enabled"),
        ),
    ] {
        c.post(&tools, body.clone())
            .await
            .err(400, "invalid_body", field, case);
        c.put(&tools, body)
            .await
            .err(400, "invalid_body", field, case);
    }
    let resp = c.post(&tools, json!({})).await;
    assert_eq!((resp.status, resp.code()), (400, "invalid_body"));
    assert_eq!(c.get(&tools).await.ok(200), &listed);
}

#[tokio::test]
async fn renaming_or_deleting_a_tool_shows_on_its_agents() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtoolren", "alice").await;
    let (_, tools) = tooled_agent(&c).await;
    for tool in ["lookup_order", "send_sms"] {
        c.post(&tools, json!({ "tool_name": tool })).await.ok(201);
    }

    c.patch("/tools/send_sms", json!({ "name": "send_text" }))
        .await
        .ok(200);
    let names_on_agent: Vec<String> = c
        .get(&tools)
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names_on_agent, ["lookup_order", "send_text"]);
    c.delete("/tools/lookup_order").await.ok(204);
    let left = c.get(&tools).await.ok(200).clone();
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["tool_name"], "send_text");
}

#[tokio::test]
async fn deleting_an_agent_leaves_its_tools() {
    let app = roomy_app().await;
    let c = Client::new(&app, "agtooldel", "alice").await;
    let (agent, tools) = tooled_agent(&c).await;
    c.post(&tools, json!({ "tool_name": "send_sms" }))
        .await
        .ok(201);
    c.delete(&format!("/agents/{}", id(&agent))).await.ok(204);
    c.get("/tools/send_sms").await.ok(200);
    c.get(&tools)
        .await
        .err(404, "not_found", None, "gone agent");
}

/// Two agents, two playbooks and two FAQs, nothing attached.
struct Shelf {
    agent: Value,
    other: Value,
    alpha: Value,
    beta: Value,
    hours: Value,
    address: Value,
}

impl Shelf {
    async fn new(c: &Client<'_>) -> Self {
        let playbook = |name: &str, display_name: &str| {
            c.create(
                "/playbooks",
                json!({ "name": name, "display_name": display_name }),
            )
        };
        let faq =
            |name: &str, title: &str| c.create("/faqs", json!({ "name": name, "title": title }));
        Self {
            agent: c.agent("Knows things").await,
            other: c.agent("Knows nothing").await,
            alpha: playbook("alpha_book", "Alpha").await,
            beta: playbook("beta_book", "Beta").await,
            hours: faq("hours", "Opening hours").await,
            address: faq("address", "Where we are").await,
        }
    }

    /// Attaches both playbooks and both FAQs to `agent`; returns the agent.
    async fn attach_all(&self, c: &Client<'_>) -> Value {
        let a = id(&self.agent);
        attach(c, &a, "playbooks", "alpha_book").await;
        attach(c, &a, "playbooks", &id(&self.beta)).await;
        attach(c, &a, "faqs", "hours").await;
        attach(c, &a, "faqs", &id(&self.address)).await
    }
}

/// How an agent shows an attached playbook.
fn pref(p: &Value) -> Value {
    json!({ "id": p["id"], "name": p["name"], "display_name": p["display_name"] })
}

/// How an agent shows an attached FAQ.
fn fref(f: &Value) -> Value {
    json!({ "id": f["id"], "name": f["name"], "title": f["title"] })
}

#[tokio::test]
async fn playbooks_attach_by_uuid_or_name_idempotently_and_list_by_name() {
    let app = roomy_app().await;
    let c = Client::new(&app, "attachpb", "alice").await;
    let s = Shelf::new(&c).await;
    let a = id(&s.agent);

    // By UUID: the answer is the agent.
    let got = attach(&c, &a, "playbooks", &id(&s.beta)).await;
    assert_eq!(got["id"], s.agent["id"]);
    assert_eq!(got["playbooks"], json!([pref(&s.beta)]));
    let again = attach(&c, &a, "playbooks", &id(&s.beta)).await;
    assert_eq!(again["playbooks"], json!([pref(&s.beta)]));
    // By name; listed by name.
    let got = attach(&c, &a, "playbooks", "alpha_book").await;
    assert_eq!(got["playbooks"], json!([pref(&s.alpha), pref(&s.beta)]));
    let again = attach(&c, &a, "playbooks", "alpha_book").await;
    assert_eq!(again["playbooks"], json!([pref(&s.alpha), pref(&s.beta)]));
}

#[tokio::test]
async fn faqs_attach_by_name_or_uuid_idempotently_and_list_by_name() {
    let app = roomy_app().await;
    let c = Client::new(&app, "attachfaq", "alice").await;
    let s = Shelf::new(&c).await;
    let a = id(&s.agent);

    let got = attach(&c, &a, "faqs", "hours").await;
    assert_eq!(got["id"], s.agent["id"]);
    assert_eq!(got["faqs"], json!([fref(&s.hours)]));
    let got = attach(&c, &a, "faqs", &id(&s.address)).await;
    assert_eq!(got["faqs"], json!([fref(&s.address), fref(&s.hours)]));
    let again = attach(&c, &a, "faqs", "hours").await;
    assert_eq!(again["faqs"], json!([fref(&s.address), fref(&s.hours)]));
}

#[tokio::test]
async fn an_agents_get_and_list_show_what_is_attached_to_it_alone() {
    let app = roomy_app().await;
    let c = Client::new(&app, "attachget", "alice").await;
    let s = Shelf::new(&c).await;
    s.attach_all(&c).await;

    let fetched = c
        .get(&format!("/agents/{}", id(&s.agent)))
        .await
        .ok(200)
        .clone();
    assert_eq!(fetched["playbooks"], json!([pref(&s.alpha), pref(&s.beta)]));
    assert_eq!(fetched["faqs"], json!([fref(&s.address), fref(&s.hours)]));
    let listed = c.agents().await;
    assert_eq!(listed.len(), 2);
    let in_list = listed.iter().find(|x| x["id"] == s.agent["id"]).unwrap();
    assert_eq!(in_list, &fetched);
    let other_listed = listed.iter().find(|x| x["id"] == s.other["id"]).unwrap();
    assert_eq!(other_listed["playbooks"], json!([]));
    assert_eq!(other_listed["faqs"], json!([]));
}

#[tokio::test]
async fn attaching_unknown_knowledge_answers_not_found() {
    let app = roomy_app().await;
    let c = Client::new(&app, "attach404", "alice").await;
    let s = Shelf::new(&c).await;
    let a = id(&s.agent);
    for (case, path, body) in [
        (
            "unknown playbook uuid",
            "playbooks",
            json!({ "playbook_id": Uuid::now_v7() }),
        ),
        (
            "unknown playbook name",
            "playbooks",
            json!({ "playbook_id": "nope" }),
        ),
        (
            "unknown faq uuid",
            "faqs",
            json!({ "faq_id": Uuid::now_v7() }),
        ),
        ("unknown faq name", "faqs", json!({ "faq_id": "nope" })),
        // A FAQ's name is not a playbook.
        (
            "faq as playbook",
            "playbooks",
            json!({ "playbook_id": "hours" }),
        ),
    ] {
        c.post(&format!("/agents/{a}/{path}"), body)
            .await
            .err(404, "not_found", None, case);
    }
}

#[tokio::test]
async fn invalid_attach_bodies_answer_invalid_body() {
    let app = roomy_app().await;
    let c = Client::new(&app, "attachval", "alice").await;
    let a = id(&c.agent("Knows things").await);
    for (case, path, body, field) in [
        (
            "playbook id of the wrong type",
            "playbooks",
            json!({ "playbook_id": 5 }),
            Some("playbook_id"),
        ),
        (
            "faq id of the wrong type",
            "faqs",
            json!({ "faq_id": true }),
            Some("faq_id"),
        ),
        ("array body", "faqs", json!([]), None),
    ] {
        c.post(&format!("/agents/{a}/{path}"), body)
            .await
            .err(400, "invalid_body", field, case);
    }
    let resp = c.post(&format!("/agents/{a}/playbooks"), json!({})).await;
    assert_eq!((resp.status, resp.code()), (400, "invalid_body"));
}

#[tokio::test]
async fn detaching_by_uuid_or_name_answers_204_then_404_and_leaves_the_knowledge() {
    let app = roomy_app().await;
    let c = Client::new(&app, "detach", "alice").await;
    let s = Shelf::new(&c).await;
    s.attach_all(&c).await;
    let a = id(&s.agent);
    let beta = id(&s.beta);

    c.delete(&format!("/agents/{a}/playbooks/{beta}"))
        .await
        .ok(204);
    for (case, path) in [
        ("detached twice", format!("{a}/playbooks/{beta}")),
        ("detached twice by name", format!("{a}/playbooks/beta_book")),
        (
            "never attached",
            format!("{}/playbooks/alpha_book", id(&s.other)),
        ),
        ("unknown playbook", format!("{a}/playbooks/no_such_book")),
        (
            "unknown playbook uuid",
            format!("{a}/playbooks/{}", Uuid::now_v7()),
        ),
    ] {
        c.delete(&format!("/agents/{path}"))
            .await
            .err(404, "not_found", None, case);
    }
    c.delete(&format!("/agents/{a}/playbooks/alpha_book"))
        .await
        .ok(204);
    c.delete(&format!("/agents/{a}/faqs/hours")).await.ok(204);
    c.delete(&format!("/agents/{a}/faqs/hours")).await.err(
        404,
        "not_found",
        None,
        "faq detached twice",
    );
    let fetched = c.get(&format!("/agents/{a}")).await.ok(200).clone();
    assert_eq!(fetched["playbooks"], json!([]));
    assert_eq!(fetched["faqs"], json!([fref(&s.address)]));
    // The playbooks and FAQs themselves are untouched.
    c.get("/playbooks/alpha_book").await.ok(200);
    c.get("/faqs/hours").await.ok(200);
}

#[tokio::test]
async fn deleting_or_renaming_a_playbook_or_faq_shows_on_its_agents() {
    let app = roomy_app().await;
    let c = Client::new(&app, "cascade", "alice").await;
    c.create("/playbooks", json!({ "name": "doomed" })).await;
    c.create("/playbooks", json!({ "name": "kept" })).await;
    c.create("/faqs", json!({ "name": "doomed_faq" })).await;
    c.create("/faqs", json!({ "name": "kept_faq", "title": "Kept" }))
        .await;
    for agent in ["one", "two"] {
        let a = id(&c.agent(agent).await);
        for (kind, target) in [
            ("playbooks", "doomed"),
            ("playbooks", "kept"),
            ("faqs", "doomed_faq"),
            ("faqs", "kept_faq"),
        ] {
            attach(&c, &a, kind, target).await;
        }
    }
    c.delete("/playbooks/doomed").await.ok(204);
    c.delete("/faqs/doomed_faq").await.ok(204);
    // Renames show in the agents' references.
    c.patch(
        "/playbooks/kept",
        json!({ "name": "kept_renamed", "display_name": "Kept!" }),
    )
    .await
    .ok(200);
    c.patch("/faqs/kept_faq", json!({ "title": "Still here" }))
        .await
        .ok(200);

    let agents = c.agents().await;
    assert_eq!(agents.len(), 2);
    for agent in agents {
        assert_eq!(names(&agent["playbooks"]), ["kept_renamed"], "{agent}");
        assert_eq!(agent["playbooks"][0]["display_name"], "Kept!");
        assert_eq!(names(&agent["faqs"]), ["kept_faq"], "{agent}");
        assert_eq!(agent["faqs"][0]["title"], "Still here");
        assert_fetched_as(&c, &agent).await;
    }
}

// ---- paths, tenants, audit -------------------------------------------------------------------

#[tokio::test]
async fn every_alias_reads_like_the_canonical_path() {
    let app = roomy_app().await;
    let c = Client::new(&app, "alias", "alice").await;
    let agent = c.agent("Canonical").await;
    let a = id(&agent);
    c.create("/playbooks", json!({ "name": "shared" })).await;
    c.create("/tools", json!({ "name": "shared_tool" })).await;
    attach(&c, &a, "playbooks", "shared").await;
    c.post(
        &format!("/agents/{a}/tools"),
        json!({ "tool_name": "shared_tool" }),
    )
    .await
    .ok(201);

    let reads = [
        format!("/agents/{a}"),
        "/agents".to_owned(),
        format!("/agents/{a}/tools"),
        "/playbooks/shared".to_owned(),
        "/playbooks?limit=5".to_owned(),
        "/tools".to_owned(),
        "/faqs".to_owned(),
        "/call-limits".to_owned(),
    ];
    for path in &reads {
        let canonical = c.get(path).await.ok(200).clone();
        for prefix in PREFIXES {
            let resp = c.call(Method::GET, &format!("{prefix}{path}"), None).await;
            assert_eq!(resp.ok(200), &canonical, "{prefix}{path}");
        }
    }
}

#[tokio::test]
async fn every_alias_answers_not_found_like_the_canonical_path() {
    let app = roomy_app().await;
    let c = Client::new(&app, "alias404", "alice").await;
    for prefix in PREFIXES {
        let missing = format!("{prefix}/agents/{}", Uuid::now_v7());
        c.call(Method::GET, &missing, None)
            .await
            .err(404, "not_found", None, &missing);
    }
}

#[tokio::test]
async fn writes_work_at_every_alias() {
    let app = roomy_app().await;
    let c = Client::new(&app, "aliasw", "alice").await;
    c.agent("Canonical").await;
    c.create("/playbooks", json!({ "name": "shared" })).await;
    let mut created = Vec::new();
    for prefix in PREFIXES {
        let resp = c
            .call(
                Method::POST,
                &format!("{prefix}/agents"),
                Some(&json!({ "name": prefix })),
            )
            .await;
        let body = resp.ok(201).clone();
        let location = resp.location.clone().expect("Location");
        assert_eq!(
            location,
            format!("/api/v1/agents/{}", id(&body)),
            "{prefix}"
        );
        assert_eq!(send(c.req(Method::GET, &location)).await.ok(200), &body);
        let patched = c
            .call(
                Method::PATCH,
                &format!("{prefix}/agents/{}", id(&body)),
                Some(&json!({ "status": "paused" })),
            )
            .await;
        assert_eq!(patched.ok(200)["status"], "paused", "{prefix}");
        let attached = c
            .call(
                Method::POST,
                &format!("{prefix}/agents/{}/playbooks", id(&body)),
                Some(&json!({ "playbook_id": "shared" })),
            )
            .await;
        assert_eq!(names(&attached.ok(200)["playbooks"]), ["shared"]);
        created.push(id(&body));
    }
    assert_eq!(c.agents().await.len(), 1 + PREFIXES.len());
    for (prefix, agent) in PREFIXES.iter().zip(&created) {
        let resp = c
            .call(Method::DELETE, &format!("{prefix}/agents/{agent}"), None)
            .await;
        assert_eq!(resp.status, 204, "{prefix}: {}", resp.text);
    }
    assert_eq!(c.agents().await.len(), 1);
}

#[tokio::test]
async fn another_tenants_resources_are_not_found() {
    let app = roomy_app().await;
    let a = Client::new(&app, "tenanta", "alice").await;
    let b = Client::new(&app, "tenantb", "bob").await;

    let agent = a.agent("A's agent").await;
    let ag = id(&agent);
    let pb = a.create("/playbooks", json!({ "name": "a_book" })).await;
    let faq = a.create("/faqs", json!({ "name": "a_faq" })).await;
    let tool = a.create("/tools", json!({ "name": "a_tool" })).await;
    attach(&a, &ag, "playbooks", "a_book").await;
    let agent = a.get(&format!("/agents/{ag}")).await.ok(200).clone();
    let b_agent = b.agent("B's agent").await;
    let bg = id(&b_agent);

    // A's agent from B.
    for (case, resp) in [
        ("get", b.get(&format!("/agents/{ag}")).await),
        (
            "patch",
            b.patch(&format!("/agents/{ag}"), json!({ "name": "pwned" }))
                .await,
        ),
        ("delete", b.delete(&format!("/agents/{ag}")).await),
        ("tools", b.get(&format!("/agents/{ag}/tools")).await),
        (
            "upsert tool",
            b.post(
                &format!("/agents/{ag}/tools"),
                json!({ "tool_name": "a_tool" }),
            )
            .await,
        ),
        (
            "attach to A's agent",
            b.post(
                &format!("/agents/{ag}/playbooks"),
                json!({ "playbook_id": id(&pb) }),
            )
            .await,
        ),
        (
            "detach from A's agent",
            b.delete(&format!("/agents/{ag}/playbooks/{}", id(&pb)))
                .await,
        ),
        // A's playbook and FAQ onto B's own agent.
        (
            "attach A's playbook by id",
            b.post(
                &format!("/agents/{bg}/playbooks"),
                json!({ "playbook_id": id(&pb) }),
            )
            .await,
        ),
        (
            "attach A's playbook by name",
            b.post(
                &format!("/agents/{bg}/playbooks"),
                json!({ "playbook_id": "a_book" }),
            )
            .await,
        ),
        (
            "attach A's faq",
            b.post(&format!("/agents/{bg}/faqs"), json!({ "faq_id": id(&faq) }))
                .await,
        ),
    ] {
        resp.err(404, "not_found", None, case);
    }
    // A's tool is unknown to B's agent.
    b.post(
        &format!("/agents/{bg}/tools"),
        json!({ "tool_name": "a_tool" }),
    )
    .await
    .err(400, "invalid_body", Some("tool_name"), "A's tool");

    // A's knowledge by UUID and by name.
    for (kind, row) in [("playbooks", &pb), ("faqs", &faq), ("tools", &tool)] {
        let name = row["name"].as_str().unwrap();
        for target in [id(row), name.to_owned()] {
            assert_not_found(&b, &format!("/{kind}/{target}")).await;
        }
        let page = b.get(&format!("/{kind}")).await.ok(200).clone();
        assert_eq!(page["total"], 0, "{kind}: {page}");
    }
    // B's list holds only B's agent; B may reuse A's names.
    assert_eq!(b.agents().await, vec![b_agent]);
    b.create("/playbooks", json!({ "name": "a_book" })).await;

    // A's things are untouched.
    assert_eq!(a.get(&format!("/agents/{ag}")).await.ok(200), &agent);
    assert_eq!(a.agents().await, vec![agent]);
    assert_eq!(a.get("/playbooks/a_book").await.ok(200), &pb);
    assert_eq!(a.get("/faqs/a_faq").await.ok(200), &faq);
    assert_eq!(a.get("/tools/a_tool").await.ok(200), &tool);

    // Alice is no member of B: her token with B's account header does not reach B's data.
    let resp = b.as_user("alice").get(&format!("/agents/{bg}")).await;
    assert_eq!(resp.status, 403, "{}", resp.text);
}

#[tokio::test]
async fn writes_are_recorded_in_the_tenant_audit_log() {
    let app = roomy_app().await;
    let c = Client::new(&app, "audit", "alice").await;

    let agent = c.agent("Audited").await;
    let a = id(&agent);
    c.patch(&format!("/agents/{a}"), json!({ "status": "active" }))
        .await
        .ok(200);
    let tool = c.create("/tools", json!({ "name": "lookup" })).await;
    c.post(
        &format!("/agents/{a}/tools"),
        json!({ "tool_name": "lookup" }),
    )
    .await
    .ok(201);
    c.put(
        &format!("/agents/{a}/tools"),
        json!({ "tool_name": "lookup", "enabled": false }),
    )
    .await
    .ok(200);
    let pb = c.create("/playbooks", json!({ "name": "book" })).await;
    attach(&c, &a, "playbooks", "book").await;
    let faq = c.create("/faqs", json!({ "name": "faq" })).await;
    attach(&c, &a, "faqs", &id(&faq)).await;
    c.delete(&format!("/agents/{a}/playbooks/book"))
        .await
        .ok(204);
    c.delete(&format!("/agents/{a}/faqs/faq")).await.ok(204);
    c.patch("/playbooks/book", json!({ "description": "changed" }))
        .await
        .ok(200);
    // Reads and failed writes are not audited.
    c.get(&format!("/agents/{a}")).await.ok(200);
    c.agents().await;
    c.get("/playbooks").await.ok(200);
    c.patch(
        &format!("/agents/{a}"),
        json!({ "background_audio_volume": 9 }),
    )
    .await
    .err(400, "invalid_body", Some("background_audio_volume"), "bad");
    c.post("/playbooks", json!({ "name": "book" }))
        .await
        .err(409, "conflict", None, "dup");
    c.delete(&format!("/agents/{}", Uuid::now_v7()))
        .await
        .err(404, "not_found", None, "unknown");
    c.delete(&format!("/agents/{a}/faqs/faq"))
        .await
        .err(404, "not_found", None, "not attached");
    // Deletes are.
    c.delete(&format!("/agents/{a}")).await.ok(204);
    c.delete("/playbooks/book").await.ok(204);
    c.delete(&format!("/faqs/{}", id(&faq))).await.ok(204);
    c.delete("/tools/lookup").await.ok(204);

    let (pb, faq, tool) = (id(&pb), id(&faq), id(&tool));
    let expected: Vec<(&str, &str, String)> = vec![
        ("create", "agent", a.clone()),
        ("update", "agent", a.clone()),
        ("create", "tool", tool.clone()),
        ("upsert", "agent_tool", format!("{a}/lookup")),
        ("upsert", "agent_tool", format!("{a}/lookup")),
        ("create", "playbook", pb.clone()),
        ("attach", "agent_playbooks", format!("{a}/{pb}")),
        ("create", "faq", faq.clone()),
        ("attach", "agent_faqs", format!("{a}/{faq}")),
        ("detach", "agent_playbooks", format!("{a}/{pb}")),
        ("detach", "agent_faqs", format!("{a}/{faq}")),
        ("update", "playbook", pb.clone()),
        ("delete", "agent", a.clone()),
        ("delete", "playbook", pb.clone()),
        ("delete", "faq", faq.clone()),
        ("delete", "tool", tool.clone()),
    ];

    let mut db = c.db().await;
    #[derive(sqlx::FromRow)]
    struct AuditRow {
        at: DateTime<chrono::Utc>,
        principal_kind: String,
        principal_id: String,
        action: String,
        resource: String,
        resource_id: Option<String>,
    }
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT at, principal_kind, principal_id, action, resource, resource_id
         FROM audit_log ORDER BY at, id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let actual: Vec<(&str, &str, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(
                (r.principal_kind.as_str(), r.principal_id.as_str()),
                ("user", "alice"),
                "{} {}",
                r.action,
                r.resource
            );
            (
                r.action.as_str(),
                r.resource.as_str(),
                r.resource_id.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(actual, expected);
    let now = chrono::Utc::now();
    for r in &rows {
        assert!((now - r.at).num_seconds().abs() < 60, "{}", r.at);
    }
}

// ---- call limits ------------------------------------------------------------------------------

/// An app on the service's stock limits (the harness may configure others).
async fn stock_limits_app() -> TestApp {
    let stock = kataven_hub::config::Config::defaults();
    TestApp::builder()
        .await
        .config(|c| {
            c.limit_per_minute = stock.limit_per_minute;
            c.limit_per_hour = stock.limit_per_hour;
            c.limit_per_day = stock.limit_per_day;
            c.limit_concurrent = stock.limit_concurrent;
            c.limit_daily_minutes = stock.limit_daily_minutes;
        })
        .spawn()
        .await
}

/// The stock call limits, as `/call-limits` reports them.
fn stock_call_limits() -> Value {
    json!({
        "calls_per_minute": 60,
        "concurrent_max": 20,
        "daily_calls_max": 10000,
        "daily_minutes_max": 1440,
    })
}

/// Runs `sql` (with `$1` the account) on the system database.
async fn on_limits(app: &TestApp, sql: &str, account: &str) {
    sqlx::query(sql)
        .bind(account)
        .execute(app.state.catalog.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn call_limits_are_the_defaults_unless_the_account_overrides_them() {
    let app = stock_limits_app().await;
    let a = Client::new(&app, "limitsa", "alice").await;
    let b = Client::new(&app, "limitsb", "bob").await;
    assert_eq!(a.get("/call-limits").await.ok(200), &stock_call_limits());
    assert_eq!(b.get("/call-limits").await.ok(200), &stock_call_limits());

    on_limits(
        &app,
        "INSERT INTO account_limits (account, per_minute, concurrent, per_day, daily_minutes)
         VALUES ($1, 30, 5, 500, 90)",
        &a.account,
    )
    .await;
    assert_eq!(
        a.get("/call-limits").await.ok(200),
        &json!({
            "calls_per_minute": 30,
            "concurrent_max": 5,
            "daily_calls_max": 500,
            "daily_minutes_max": 90,
        })
    );
    assert_eq!(b.get("/call-limits").await.ok(200), &stock_call_limits());
}

#[tokio::test]
async fn a_partial_call_limits_override_keeps_the_other_defaults_and_reports_zero() {
    let app = stock_limits_app().await;
    let b = Client::new(&app, "limitsp", "bob").await;
    on_limits(
        &app,
        "INSERT INTO account_limits (account, daily_minutes) VALUES ($1, 0)",
        &b.account,
    )
    .await;
    let mut expected = stock_call_limits();
    expected["daily_minutes_max"] = json!(0);
    assert_eq!(b.get("/call-limits").await.ok(200), &expected);
}

#[tokio::test]
async fn call_limits_changes_show_at_once_and_removing_the_override_restores_the_defaults() {
    let app = stock_limits_app().await;
    let a = Client::new(&app, "limitsc", "alice").await;
    for (sql, per_minute) in [
        (
            "INSERT INTO account_limits (account, per_minute) VALUES ($1, 30)",
            30,
        ),
        (
            "UPDATE account_limits SET per_minute = 45 WHERE account = $1",
            45,
        ),
        ("DELETE FROM account_limits WHERE account = $1", 60),
    ] {
        on_limits(&app, sql, &a.account).await;
        let limits = a.get("/call-limits").await.ok(200).clone();
        assert_eq!(limits["calls_per_minute"], per_minute, "{sql}");
    }
    assert_eq!(a.get("/call-limits").await.ok(200), &stock_call_limits());
}

#[tokio::test]
async fn call_limits_are_read_only_through_the_api() {
    let app = stock_limits_app().await;
    let a = Client::new(&app, "limitsro", "alice").await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let resp = a
            .call(
                method.clone(),
                &format!("{V1}/call-limits"),
                Some(&json!({ "calls_per_minute": 1_000_000 })),
            )
            .await;
        resp.err(405, "method_not_allowed", None, method.as_str());
    }
    assert_eq!(a.get("/call-limits").await.ok(200), &stock_call_limits());
}

#[tokio::test]
async fn call_limits_report_the_configured_defaults() {
    let app = TestApp::builder()
        .await
        .config(|c| {
            c.limit_per_minute = 120;
            c.limit_concurrent = 7;
            c.limit_per_day = 2500;
            c.limit_daily_minutes = 300;
        })
        .spawn()
        .await;
    let c = Client::new(&app, "limitscfg", "alice").await;
    assert_eq!(
        c.get("/call-limits").await.ok(200),
        &json!({
            "calls_per_minute": 120,
            "concurrent_max": 7,
            "daily_calls_max": 2500,
            "daily_minutes_max": 300,
        })
    );
}

// ---- the agents list at scale ----------------------------------------------------------------

#[tokio::test]
async fn the_agents_list_joins_every_agents_playbooks_and_faqs() {
    let app = roomy_app().await;
    let c = Client::new(&app, "many", "alice").await;
    let playbooks: Vec<Value> = {
        let mut v = Vec::new();
        for (name, display) in [("pb_a", "A"), ("pb_b", "B"), ("pb_c", "C")] {
            v.push(
                c.create(
                    "/playbooks",
                    json!({ "name": name, "display_name": display }),
                )
                .await,
            );
        }
        v
    };
    let faqs: Vec<Value> = {
        let mut v = Vec::new();
        for (name, title) in [("faq_a", "FA"), ("faq_b", "FB")] {
            v.push(
                c.create("/faqs", json!({ "name": name, "title": title }))
                    .await,
            );
        }
        v
    };

    let first = c.agent("agent_00").await;
    let listed = c.agents().await;
    assert_eq!(listed, vec![first.clone()]);

    // 20 more, each with a different mix (attached in a scrambled order).
    let mut expected: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    expected.insert(id(&first), (vec![], vec![]));
    let mut order = vec![id(&first)];
    for i in 1..=20usize {
        let agent = c.agent(&format!("agent_{i:02}")).await;
        let a = id(&agent);
        let pbs: Vec<&Value> = playbooks
            .iter()
            .enumerate()
            .filter(|(k, _)| (i >> k) & 1 == 1)
            .map(|(_, p)| p)
            .rev()
            .collect();
        let fs: Vec<&Value> = faqs.iter().take(i % 3).rev().collect();
        for p in &pbs {
            attach(&c, &a, "playbooks", &id(p)).await;
        }
        for f in &fs {
            attach(&c, &a, "faqs", f["name"].as_str().unwrap()).await;
        }
        let mut pb_names: Vec<String> = pbs
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        pb_names.sort();
        let mut faq_names: Vec<String> = fs
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect();
        faq_names.sort();
        expected.insert(a.clone(), (pb_names, faq_names));
        order.push(a);
    }

    let listed = c.agents().await;
    assert_eq!(listed.len(), 21);
    let listed_ids: Vec<String> = listed.iter().map(id).collect();
    let newest_first: Vec<String> = order.iter().rev().cloned().collect();
    assert_eq!(listed_ids, newest_first);
    for agent in &listed {
        let (pbs, fs) = &expected[&id(agent)];
        assert_eq!(&names(&agent["playbooks"]), pbs, "{}", agent["name"]);
        assert_eq!(&names(&agent["faqs"]), fs, "{}", agent["name"]);
        for p in agent["playbooks"].as_array().unwrap() {
            let source = playbooks.iter().find(|x| x["id"] == p["id"]).unwrap();
            assert_eq!(p["display_name"], source["display_name"]);
            assert_eq!(p.as_object().unwrap().len(), 3, "{p}");
        }
        for f in agent["faqs"].as_array().unwrap() {
            let source = faqs.iter().find(|x| x["id"] == f["id"]).unwrap();
            assert_eq!(f["title"], source["title"]);
            assert_eq!(f.as_object().unwrap().len(), 3, "{f}");
        }
        // The list and the single get agree.
        assert_fetched_as(&c, agent).await;
    }
    // Some agent has every playbook, some none.
    assert!(expected.values().any(|(p, _)| p.len() == 3));
    assert!(expected.values().any(|(p, f)| p.is_empty() && f.is_empty()));
}

/// Found by schemathesis: input PostgreSQL cannot store must be a 400, never a 500.
#[tokio::test]
async fn nul_characters_and_unreadable_numbers_are_refused() {
    let app = TestApp::spawn().await;
    let acme = app.account_with_admin("nul", "alice").await;
    let post = |path: &str, body: &str| {
        app.as_user(reqwest::Method::POST, path, &acme.slug, "alice")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    for (path, body) in [
        ("/api/v1/agents", r#"{"name": "a\u0000b"}"#),
        ("/api/v1/faqs", r#"{"name": "ok", "title": "\u0000"}"#),
        (
            "/api/v1/tools",
            r#"{"name": "t", "schema": {"k": "\u0000"}}"#,
        ),
        (
            "/api/v1/tools",
            r#"{"name": "t2", "schema": {"n": 1.7976931348623157e308}}"#,
        ),
    ] {
        let resp = post(path, body).await.unwrap();
        assert_eq!(
            error_code(resp).await,
            (400, "invalid_body".into()),
            "{path} {body}"
        );
    }
    // An escaped backslash followed by `u0000` is ordinary text.
    let resp = post("/api/v1/agents", r#"{"name": "a\\u0000b"}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Query strings and path segments too.
    let resp = app
        .as_user(
            reqwest::Method::GET,
            "/api/v1/faqs?search=%00",
            &acme.slug,
            "alice",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "invalid_query".into()));
    let resp = app
        .as_user(
            reqwest::Method::GET,
            "/api/v1/faqs/a%00b",
            &acme.slug,
            "alice",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
