//! An account's data, out and back in: `accounts export`, `GET /api/v1/export` and
//! `accounts import` — the round trip compared through the API, who may export, refused
//! archives leaving nothing behind, an older archive upgraded, and a large account's memory.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Instant;

use kataven_hub::export::import::{ImportOptions, import};
use kataven_hub::export::store::{NOT_EXPORTED, TENANT_TABLES};
use kataven_hub::tenancy::catalog::Role;
use kataven_hub::tenancy::slug::AccountSlug;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{BIN, hub, older_migrator, stderr, stdout};
use crate::support::client::{Client, V1, id, send};
use crate::support::{TestApp, database_exists, roomy_app, system_url_of, unique_slug};

/// An account with some of everything: tools, playbooks, FAQs, agents with their tools,
/// playbooks and FAQs attached, widget settings and agent policies, a member, limit
/// overrides, an API key and a widget key. Returns its admin and the API key's secret.
async fn populated<'a>(app: &'a TestApp, prefix: &str) -> (Client<'a>, String) {
    let alice = Client::new(app, prefix, "alice").await;
    let admin = alice.elevated();
    alice.with_member("bob", Role::Member).await;
    alice
        .create(
            "/tools",
            json!({
                "name": "lookup_order", "display_name": "Look up an order", "category": "orders",
                "description": "Finds an order by number", "tags": ["orders", "read"],
                "schema": { "type": "object", "properties": { "number": { "type": "string" } } },
                "implementation_type": "python",
                "implementation_code": "def run(number):\n    return {\"n\": number}  # \\ ü",
            }),
        )
        .await;
    alice
        .create(
            "/tools",
            json!({ "name": "send_mail", "implementation_config": { "url": "https://x.test/mail" } }),
        )
        .await;
    let greet = alice
        .create(
            "/playbooks",
            json!({ "name": "greet", "display_name": "Greet", "tags": ["a"], "tool_names": ["send_mail"] }),
        )
        .await;
    alice
        .create("/playbooks", json!({ "name": "escalate" }))
        .await;
    let refunds = alice
        .create(
            "/faqs",
            json!({ "name": "refunds", "title": "Refunds", "summary": "30 days",
                    "content": "Line one\nLine two \"quoted\" 🎉", "tags": ["money"] }),
        )
        .await;
    alice.create("/faqs", json!({ "name": "hours" })).await;
    let support = alice
        .create(
            "/agents",
            json!({
                "name": "Support", "description": "Answers customers", "category": "customer_support",
                "status": "active", "system_prompt": "Be kind.", "greeting_message": "Hi!",
                "greeting_mode": "locked", "llm_model": "gpt-4o-mini", "voice_provider": "elevenlabs",
                "voice_id": "v-1", "auth_mode": "public", "ringing_enabled": false,
                "background_audio_enabled": true, "background_audio_volume": 0.37,
                "noise_suppression_enabled": false,
            }),
        )
        .await;
    let sales = alice.agent("Sales").await;
    alice.agent("Draft").await;
    let (support, sales) = (id(&support), id(&sales));
    alice
        .post(
            &format!("/agents/{support}/tools"),
            json!({ "tool_name": "lookup_order", "config": { "region": "eu", "max": 3 } }),
        )
        .await
        .ok(201);
    alice
        .post(
            &format!("/agents/{sales}/tools"),
            json!({ "tool_name": "send_mail", "enabled": false }),
        )
        .await
        .ok(201);
    for (agent, path, body) in [
        (&support, "playbooks", json!({ "playbook_id": id(&greet) })),
        (&sales, "playbooks", json!({ "playbook_id": "escalate" })),
        (&support, "faqs", json!({ "faq_id": id(&refunds) })),
        (&support, "faqs", json!({ "faq_id": "hours" })),
    ] {
        let resp = alice.post(&format!("/agents/{agent}/{path}"), body).await;
        assert!(resp.status < 300, "{}", resp.text);
    }
    admin
        .patch(
            "/widget-settings",
            json!({ "primary_color": "#112233", "launcher_label": "Ask us", "logo_url": "https://x.test/l.png" }),
        )
        .await
        .ok(200);
    admin
        .patch(
            &format!("/agents/{sales}/widget-settings"),
            json!({ "widget_enabled": false, "auth_mode": "guest" }),
        )
        .await
        .ok(200);
    let slug: AccountSlug = alice.account.parse().unwrap();
    let catalog = &app.state.catalog;
    catalog
        .set_limit(&slug, "per_minute", Some(77))
        .await
        .unwrap();
    catalog
        .set_limit(&slug, "concurrent", Some(500))
        .await
        .unwrap();
    let key = admin
        .create("/api-keys", json!({ "name": "deploys", "expiry": "30d" }))
        .await;
    alice
        .create(
            "/widget-keys",
            json!({ "name": "site", "domain_allowlist": ["https://example.com"], "agent_id": support }),
        )
        .await;
    (alice, key["key"].as_str().unwrap().to_owned())
}

/// Every answer the API gives about the account's data, keyed by what was asked (paths of
/// rows by their position, so that two accounts with other ids ask the same questions).
async fn answers(c: &Client<'_>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut get = async |label: String, path: String| {
        let body = c.get(&path).await.ok(200).clone();
        out.push((label, body.clone()));
        body
    };
    let agents = get("agents".into(), "/agents".into()).await;
    for (n, agent) in agents.as_array().unwrap().iter().enumerate() {
        let a = id(agent);
        get(format!("agent {n}"), format!("/agents/{a}")).await;
        get(format!("agent {n} tools"), format!("/agents/{a}/tools")).await;
        get(
            format!("agent {n} widget"),
            format!("/agents/{a}/widget-settings"),
        )
        .await;
    }
    for kind in ["tools", "playbooks", "faqs"] {
        let page = get(kind.into(), format!("/{kind}?limit=100")).await;
        for item in page["items"].as_array().unwrap() {
            let name = item["name"].as_str().unwrap();
            get(format!("{kind} {name}"), format!("/{kind}/{name}")).await;
        }
    }
    for path in ["/widget-settings", "/members", "/call-limits"] {
        get(path.into(), path.into()).await;
    }
    out
}

/// `v` with every UUID replaced by `<id>`; the UUIDs go to `ids`.
fn without_ids(v: &Value, ids: &mut HashSet<String>) -> Value {
    match v {
        Value::String(s) if uuid::Uuid::parse_str(s).is_ok() => {
            ids.insert(s.clone());
            json!("<id>")
        }
        Value::Array(items) => items.iter().map(|i| without_ids(i, ids)).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), without_ids(v, ids)))
            .collect(),
        other => other.clone(),
    }
}

/// Asserts that `a` and `b` answer alike but for their ids, which all differ.
async fn assert_same_but_ids(a: &Client<'_>, b: &Client<'_>) {
    let (left, right) = (answers(a).await, answers(b).await);
    assert_eq!(left.len(), right.len());
    let (mut left_ids, mut right_ids) = (HashSet::new(), HashSet::new());
    for ((label, l), (_, r)) in left.iter().zip(&right) {
        assert_eq!(
            without_ids(l, &mut left_ids),
            without_ids(r, &mut right_ids),
            "{label}"
        );
    }
    assert!(left_ids.len() >= 7, "{left_ids:?}");
    assert_eq!(left_ids.len(), right_ids.len());
    assert!(
        left_ids.is_disjoint(&right_ids),
        "ids kept: {:?}",
        left_ids.intersection(&right_ids).collect::<Vec<_>>()
    );
}

fn archive_path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_owned()
}

/// The audit entries of `c`'s account with `action`.
async fn audited(c: &Client<'_>, action: &str) -> Vec<Value> {
    let page = c
        .elevated()
        .get(&format!("/audit-log?action={action}"))
        .await;
    page.ok(200)["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_account_round_trips_through_export_and_import() {
    let app = roomy_app().await;
    let (alice, secret) = populated(&app, "expsrc").await;
    let url = system_url_of(&app);
    let dir = tempfile::tempdir().unwrap();
    let file = archive_path(&dir, "acct.jsonl");

    let out = hub(
        &url,
        &["accounts", "export", &alice.account, "--out", &file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("exported account {}", alice.account)),
        "{}",
        stderr(&out)
    );
    assert!(!std::path::Path::new(&format!("{file}.partial")).exists());
    let text = std::fs::read_to_string(&file).unwrap();
    // Key metadata, never a key or its hash; nothing of the pepper.
    assert!(text.contains("\"deploys\"") && text.contains("\"site\""));
    for secret in [secret.as_str(), "key_hash", "test-pepper", "tagged"] {
        assert!(!text.contains(secret), "{secret} is in the archive");
    }
    // Nothing of the audit log.
    assert!(!text.contains("\"principal_kind\""));
    let manifest: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let count = |section: &str| {
        manifest["manifest"]["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["section"] == section)
            .unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    let counts: Vec<u64> = [
        "members",
        "limits",
        "api_keys",
        "widget_keys",
        "tools",
        "playbooks",
        "faqs",
        "agents",
        "agent_tools",
        "agent_playbooks",
        "agent_faqs",
        "widget_settings",
    ]
    .into_iter()
    .map(count)
    .collect();
    assert_eq!(counts, [2, 1, 1, 1, 2, 2, 2, 3, 2, 2, 2, 1]);

    let copy = unique_slug("expcopy");
    let out = hub(&url, &["accounts", "import", copy.as_str(), &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "imported account {copy} from the export of {}",
            alice.account
        )),
        "{}",
        stdout(&out)
    );
    let imported = Client::in_account(&app, copy.as_str(), "alice");
    assert_same_but_ids(&alice, &imported).await;

    // No key is recreated: the copy has none until someone makes one.
    for keys in ["/api-keys", "/widget-keys"] {
        let resp = imported.elevated().get(keys).await;
        assert_eq!(resp.ok(200), &json!([]), "{keys}");
    }
    // The copy's display name and organisation are the original's.
    let account = app.state.catalog.account(&copy).await.unwrap().unwrap();
    assert_eq!(account.display_name, "expsrc Inc");
    assert_eq!(
        account.schema_version,
        app.provisioner().latest_tenant_version()
    );
    // Both sides are in the audit logs; the original's history is not in the copy's.
    let exported = audited(&alice, "export").await;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["actor"]["kind"], "operator");
    assert_eq!(exported[0]["resource_type"], "account");
    let log = imported.elevated().get("/audit-log").await;
    let items = log.ok(200)["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["action"], "import");
    assert_eq!(items[0]["resource_id"], copy.as_str());

    // The copy is an account like any other: it changes without touching the original.
    imported.agent("Only in the copy").await;
    assert_eq!(alice.agents().await.len(), 3);
    assert_eq!(imported.agents().await.len(), 4);
}

#[tokio::test]
async fn the_endpoint_streams_an_archive_to_elevated_admins_only() {
    let app = roomy_app().await;
    let (alice, secret) = populated(&app, "exphttp").await;
    let bob = alice.as_user("bob");
    let key = Client::api_key(&app, &secret);
    for (who, c) in [
        ("admin without X-Admin", alice.clone()),
        ("member", bob.clone()),
        ("elevated member", bob.elevated()),
        ("API key", key),
    ] {
        let resp = c.get("/export").await;
        resp.err(403, "admin_required", None, who);
    }
    assert!(audited(&alice, "export").await.is_empty());

    let resp = alice.elevated().get("/export").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.content_type, "application/x-ndjson");
    let disposition = resp.header("content-disposition").unwrap();
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"{}-", alice.account)),
        "{disposition}"
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert!(!resp.text.contains(&secret) && !resp.text.contains("key_hash"));
    let first: Value = serde_json::from_str(resp.text.lines().next().unwrap()).unwrap();
    assert_eq!(first["header"]["account"]["slug"], alice.account.as_str());
    assert!(
        resp.text
            .lines()
            .last()
            .unwrap()
            .starts_with("{\"manifest\":")
    );

    // The export is recorded, with the request that made it.
    let exported = audited(&alice, "export").await;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["actor"]["kind"], "user");
    assert_eq!(exported[0]["actor"]["id"], "alice");
    assert_eq!(
        exported[0]["request_id"].as_str(),
        resp.header("x-request-id")
    );

    // Every alias answers, and what the endpoint streams imports like the command's archive.
    for prefix in ["/api", "/v1", "/hub-api/api/v1"] {
        let rb = alice
            .elevated()
            .req(Method::GET, &format!("{prefix}/export"));
        assert_eq!(send(rb).await.status, 200, "{prefix}");
    }
    let copy = unique_slug("exphttpcopy");
    let imported = import(
        app.provisioner(),
        &copy,
        resp.text.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(imported.source.slug, alice.account);
    assert_same_but_ids(&alice, &Client::in_account(&app, copy.as_str(), "alice")).await;
}

/// The lines of an archive with line `index` passed through `f`.
fn edit_line(text: &str, index: usize, f: impl FnOnce(&str) -> String) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[index] = f(&lines[index]);
    lines.join("\n") + "\n"
}

/// Imports `text` with the command and asserts that it is refused with `message`, leaving
/// neither an account nor a database.
async fn assert_refused(app: &TestApp, dir: &tempfile::TempDir, text: &str, message: &str) {
    let file = archive_path(dir, "refused.jsonl");
    std::fs::write(&file, text).unwrap();
    let slug = unique_slug("exprefused");
    let out = hub(
        &system_url_of(app),
        &["accounts", "import", slug.as_str(), &file],
    );
    assert!(!out.status.success(), "{message}: accepted");
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
    assert!(app.state.catalog.account(&slug).await.unwrap().is_none());
    assert!(
        !database_exists(slug.as_str()).await,
        "{message}: database left"
    );
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_members WHERE account = $1")
            .bind(slug.as_str())
            .fetch_one(app.state.catalog.pool())
            .await
            .unwrap();
    assert_eq!(members, 0);
}

#[tokio::test]
async fn refused_archives_leave_no_account_and_no_database() {
    let app = roomy_app().await;
    let (alice, _) = populated(&app, "expbad").await;
    let dir = tempfile::tempdir().unwrap();
    let file = archive_path(&dir, "good.jsonl");
    let out = hub(
        &system_url_of(&app),
        &["accounts", "export", &alice.account, "--out", &file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.len() - 1;
    let newest = app.provisioner().latest_tenant_version();

    // A newer schema than the binary knows: refused before anything is created.
    let newer = edit_line(&text, 0, |l| {
        l.replace(
            &format!("\"schema_version\":{newest}"),
            &format!("\"schema_version\":{}", newest + 1),
        )
    });
    assert_refused(&app, &dir, &newer, "is newer than this binary's").await;
    // A version that is no migration of this binary.
    let unknown = edit_line(&text, 0, |l| {
        l.replace(
            &format!("\"schema_version\":{newest}"),
            "\"schema_version\":7",
        )
    });
    assert_refused(
        &app,
        &dir,
        &unknown,
        "is not one of this binary's tenant migrations",
    )
    .await;

    // One changed character in a row, found only at the manifest, after every row was loaded:
    // the rows and the members go with the database and the catalog row.
    let faq = lines
        .iter()
        .position(|l| l.contains("\"section\":\"faqs\"") && l.contains("Refunds"))
        .unwrap();
    let corrupted = edit_line(&text, faq, |l| l.replace("Refunds", "Refunde"));
    assert_refused(&app, &dir, &corrupted, "does not match its manifest").await;
    // A corrupted manifest.
    let manifest = edit_line(&text, last, |l| l.replacen("\"rows\":2", "\"rows\":3", 1));
    assert_refused(&app, &dir, &manifest, "does not match its manifest").await;
    // Cut off before the manifest (an interrupted download).
    let cut = lines[..last].join("\n") + "\n";
    assert_refused(&app, &dir, &cut, "ends before its manifest").await;
    // A row the database refuses (an agent category no agent may have), checksums fixed up:
    // the database's constraints stand.
    let agent = lines
        .iter()
        .position(|l| l.contains("\"section\":\"agents\""))
        .unwrap();
    let bad = edit_line(&text, agent, |l| {
        l.replacen("\"category\":\"", "\"category\":\"x", 1)
    });
    let bad = reseal(&bad);
    assert_refused(&app, &dir, &bad, "loading the rows of `agents`").await;
    // Not an archive at all.
    assert_refused(
        &app,
        &dir,
        "{\"hello\":1}\n",
        "not the header of an account export",
    )
    .await;

    // The original is untouched, and the good archive still imports.
    let slug = unique_slug("expgood");
    let out = hub(
        &system_url_of(&app),
        &["accounts", "import", slug.as_str(), &file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `text` with its manifest made to match it again (as someone editing an archive would).
fn reseal(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut lines: Vec<&str> = text.lines().collect();
    let manifest_line = lines.pop().unwrap();
    let mut manifest: Value = serde_json::from_str(manifest_line).unwrap();
    let mut total = Sha256::new();
    total.update(format!("{}\n", lines[0]));
    for section in manifest["manifest"]["sections"].as_array_mut().unwrap() {
        let name = format!("\"section\":{}", section["section"]);
        let mut sha = Sha256::new();
        for line in lines.iter().filter(|l| l.contains(&name)) {
            sha.update(format!("{line}\n"));
            total.update(format!("{line}\n"));
        }
        section["sha256"] = json!(hex::encode(sha.finalize()));
    }
    manifest["manifest"]["sha256"] = json!(hex::encode(total.finalize()));
    lines.join("\n") + "\n" + &manifest.to_string() + "\n"
}

#[tokio::test]
async fn an_older_archive_is_upgraded_through_the_tenant_migrations() {
    let migrations = crate::cli::tenant_migrations().len();
    let (_dir, older) = older_migrator(migrations - 1).await;
    // An older release: its provisioner, and an account at its schema with rows in it (written
    // with SQL: this release's handlers write the newest schema).
    let url = crate::support::system_db_url();
    let old = crate::support::provisioner(&url, Some(older)).await;
    let old_version = old.latest_tenant_version();
    let account = old
        .create_account(&unique_slug("expold"), "Old Co", None, None)
        .await
        .unwrap();
    let mut conn = crate::support::tenant_conn(&account.database_name).await;
    let agent = uuid::Uuid::now_v7();
    for (sql, id) in [
        (
            "INSERT INTO agents (id, name, created_by) VALUES ($1, 'Before the upgrade', 'user:alice')",
            agent,
        ),
        (
            "INSERT INTO faqs (id, name) VALUES ($1, 'old_faq')",
            uuid::Uuid::now_v7(),
        ),
    ] {
        sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap();
    }
    sqlx::query("INSERT INTO agent_faqs (agent_id, faq_id) SELECT $1, id FROM faqs")
        .bind(agent)
        .execute(&mut conn)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.jsonl");
    let summary = kataven_hub::export::to_path(&old, &account, Some(&file))
        .await
        .unwrap();
    assert_eq!(summary.manifest.schema_version, old_version);

    // This binary's provisioner, on the same system database.
    let current = crate::support::provisioner(&url, None).await;
    assert!(current.latest_tenant_version() > old_version);
    let slug = unique_slug("expnew");
    let imported =
        kataven_hub::export::import::from_path(&current, &slug, &file, ImportOptions::default())
            .await
            .unwrap();
    assert_eq!(imported.from_version, old_version);
    assert_eq!(
        imported.account.schema_version,
        current.latest_tenant_version()
    );
    let mut conn = crate::support::tenant_conn(slug.as_str()).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions.len(), migrations);
    // The newest migration's column exists, and the rows came through it.
    let (name, faqs): (String, i64) = sqlx::query_as(
        "SELECT (SELECT name FROM agents), (SELECT count(*) FROM faqs WHERE name = 'old_faq')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((name.as_str(), faqs), ("Before the upgrade", 1));
    let newest_ran: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'audit_log' AND column_name = 'request_id')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(newest_ran);
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM agents")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_ne!(id, agent);
    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_faqs WHERE agent_id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(linked, 1);
    assert_eq!(id.get_version_num(), 7);
}

/// A tenant table added by a migration is either exported or named as not: the export's list
/// cannot silently fall behind the schema.
#[tokio::test]
async fn every_tenant_table_is_exported_or_named_as_not() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "exptables", "alice").await;
    let mut conn = alice.db().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let known: HashSet<&str> = TENANT_TABLES
        .iter()
        .map(|t| t.table)
        .chain(NOT_EXPORTED)
        .collect();
    for table in &tables {
        assert!(
            known.contains(table.as_str()),
            "`{table}` is neither exported nor in NOT_EXPORTED"
        );
    }
    assert_eq!(tables.len(), known.len());
}

/// Runs `command` and returns its exit status, its peak resident memory (KiB, the kernel's
/// high-water mark `VmHWM`, read every few milliseconds until it exits) and how long it took.
/// (`wait4`'s `ru_maxrss` would not do: a spawned child's count starts from its parent's.)
fn run_measured(mut command: Command) -> (std::process::ExitStatus, u64, std::time::Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak, started.elapsed());
        }
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0);
        peak = peak.max(hwm);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Inserts `per_table` rows into each of tools, playbooks, FAQs and agents (about 500 bytes of
/// text each), plus links.
async fn bulk(conn: &mut sqlx::PgConnection, per_table: i64, offset: i64) {
    let filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                  incididunt ut labore et dolore magna aliqua. "
        .repeat(4);
    for sql in [
        "INSERT INTO tools (id, name, description, schema, tags)
         SELECT gen_random_uuid(), 'tool_' || g, $3, '{\"type\":\"object\"}', '{a,b}'
         FROM generate_series($2 + 1, $2 + $1) g",
        "INSERT INTO playbooks (id, name, description, tool_names)
         SELECT gen_random_uuid(), 'playbook_' || g, $3, '{tool_1}' FROM generate_series($2 + 1, $2 + $1) g",
        "INSERT INTO faqs (id, name, title, content)
         SELECT gen_random_uuid(), 'faq_' || g, 'FAQ ' || g, $3 FROM generate_series($2 + 1, $2 + $1) g",
        "INSERT INTO agents (id, name, system_prompt, created_by)
         SELECT gen_random_uuid(), 'Agent ' || g, $3, 'user:bulk' FROM generate_series($2 + 1, $2 + $1) g",
    ] {
        sqlx::query(sql)
            .bind(per_table)
            .bind(offset)
            .bind(&filler)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

/// The export of a large account streams: the command's peak memory is about the same for
/// 10,000 and 100,000 rows. Prints the numbers (`--nocapture`); asserts on memory only.
#[tokio::test]
async fn a_large_account_exports_and_imports_in_flat_memory() {
    let app = roomy_app().await;
    let alice = Client::new(&app, "expbig", "alice").await;
    let url = system_url_of(&app);
    let dir = tempfile::tempdir().unwrap();
    let mut conn = alice.db().await;
    let mut peaks = Vec::new();
    let mut offset = 0;
    for rows in [10_000i64, 100_000] {
        bulk(&mut conn, rows / 4 - offset, offset).await;
        offset = rows / 4;
        let file = archive_path(&dir, &format!("big-{rows}.jsonl"));
        let mut command = Command::new(BIN);
        command
            .args(["accounts", "export", &alice.account, "--out", &file])
            .env("KATAVEN_DATABASE_URL", &url)
            .env("KATAVEN_LOG_FORMAT", "json");
        let (status, export_kib, export_time) = run_measured(command);
        assert!(status.success());
        let bytes = std::fs::metadata(&file).unwrap().len();
        let slug = unique_slug("expbigcopy");
        let mut command = Command::new(BIN);
        command
            .args(["accounts", "import", slug.as_str(), &file])
            .env("KATAVEN_DATABASE_URL", &url)
            .env("KATAVEN_LOG_FORMAT", "json");
        let (status, import_kib, import_time) = run_measured(command);
        assert!(status.success());
        println!(
            "{rows} rows ({:.1} MB archive): export {:.2} s, peak RSS {:.1} MiB; \
             import {:.2} s, peak RSS {:.1} MiB",
            bytes as f64 / 1e6,
            export_time.as_secs_f64(),
            export_kib as f64 / 1024.0,
            import_time.as_secs_f64(),
            import_kib as f64 / 1024.0,
        );
        peaks.push((export_kib, import_kib));
        let mut copy = crate::support::tenant_conn(slug.as_str()).await;
        let count: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM tools) + (SELECT count(*) FROM playbooks)
                  + (SELECT count(*) FROM faqs) + (SELECT count(*) FROM agents)",
        )
        .fetch_one(&mut copy)
        .await
        .unwrap();
        assert_eq!(count, rows);
    }
    // Ten times the rows, not ten times the memory: within 16 MiB of the small account's.
    let ((small_export, small_import), (big_export, big_import)) = (peaks[0], peaks[1]);
    assert!(
        big_export < small_export + 16 * 1024,
        "export: {small_export} KiB for 10k rows, {big_export} KiB for 100k"
    );
    assert!(
        big_import < small_import + 16 * 1024,
        "import: {small_import} KiB for 10k rows, {big_import} KiB for 100k"
    );

    // The endpoint streams the same archive (timed here; its memory is the server's, shared
    // with the test, so not measured).
    let started = Instant::now();
    let mut resp = alice
        .elevated()
        .req(Method::GET, &format!("{V1}/export"))
        .timeout(std::time::Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0usize;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        received += chunk.len();
    }
    println!(
        "100000 rows over HTTP: {:.1} MB in {:.2} s",
        received as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // A client that goes away mid-archive ends the export: its snapshot is rolled back and the
    // connection goes back to the pool, healthy.
    let mut resp = alice
        .elevated()
        .req(Method::GET, &format!("{V1}/export"))
        .send()
        .await
        .unwrap();
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    let mut admin = crate::support::admin_conn().await;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND xact_start IS NOT NULL",
        )
        .bind(&alice.database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the snapshot stays open");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(alice.agents().await.len(), 25_000);
}

/// An instance older than the account's database (a deploy in progress) leaves the export to a
/// newer one: 503 with `Retry-After`, never a 500.
#[tokio::test]
async fn an_instance_older_than_the_database_answers_503() {
    let app = TestApp::spawn().await;
    let alice = Client::new(&app, "exnewer", "alice").await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99991231000000, 'from a newer binary', true, '\\x00', 0)",
    )
    .execute(&mut alice.db().await)
    .await
    .unwrap();
    let resp = alice.elevated().get("/export").await;
    resp.err(503, "unavailable", None, "a newer database");
    assert!(resp.header("retry-after").is_some());
}
