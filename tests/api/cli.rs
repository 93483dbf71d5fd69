//! The binary: `accounts …`, `migrate`, `serve` with SIGTERM, and `dev` with its embedded
//! PostgreSQL. Also graceful draining of in-flight requests.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{TestApp, admin_conn, database_exists, system_db_url, unique_slug};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_kataven-hub");

pub(crate) fn hub(database_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("KATAVEN_DATABASE_URL", database_url)
        .env("KATAVEN_LOG_FORMAT", "json")
        .output()
        .expect("run kataven-hub")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn accounts_commands_round_trip() {
    let url = system_db_url();
    let slug = unique_slug("cli");
    let slug = slug.as_str();

    let out = hub(
        &url,
        &[
            "accounts", "create", slug, "--name", "Cli Co", "--org-id", "org-9",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("created account {slug}")));
    assert!(database_exists_blocking(slug));

    let out = hub(&url, &["accounts", "create", slug]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    for bad in ["Bad", "kataven-admin", "postgres", "template1", "-x", ""] {
        let out = hub(&url, &["accounts", "create", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
    }

    let out = hub(
        &url,
        &[
            "accounts", "members", "add", slug, "alice", "--role", "admin",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hub(&url, &["accounts", "suspend", slug]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hub(&url, &["accounts", "list"]);
    let listing = stdout(&out);
    let line = listing
        .lines()
        .find(|l| l.starts_with(slug))
        .expect("listed");
    assert!(
        line.contains("suspended") && line.contains("main") && line.contains("Cli Co"),
        "{line}"
    );
    let out = hub(&url, &["accounts", "resume", slug]);
    assert!(out.status.success());
    let out = hub(&url, &["accounts", "list"]);
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with(slug) && l.contains("active"))
    );

    let out = hub(&url, &["accounts", "members", "remove", slug, "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hub(&url, &["accounts", "members", "remove", slug, "alice"]);
    assert!(!out.status.success());

    // Limit overrides: set, show, clear one, clear all.
    let out = hub(
        &url,
        &[
            "accounts",
            "limits",
            slug,
            "--per-minute",
            "7",
            "--concurrent",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "per-minute 7, per-hour 1000, per-day 10000, concurrent 0, daily minutes 1440"
        ),
        "{}",
        stdout(&out)
    );
    let out = hub(
        &url,
        &["accounts", "limits", slug, "--per-minute", "default"],
    );
    assert!(
        stdout(&out).contains("per-minute 60, per-hour 1000, per-day 10000, concurrent 0"),
        "{}",
        stdout(&out)
    );
    let out = hub(&url, &["accounts", "limits", slug, "--clear"]);
    assert!(
        stdout(&out).contains("per-minute 60, per-hour 1000, per-day 10000, concurrent 20"),
        "{}",
        stdout(&out)
    );
    for bad in [&["--per-minute", "-1"][..], &["--per-hour", "lots"][..]] {
        let mut args = vec!["accounts", "limits", slug];
        args.extend_from_slice(bad);
        assert!(!hub(&url, &args).status.success(), "{bad:?}");
    }

    let out = hub(&url, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("tenant {slug}: at version ")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("0 migrated, 1 already current, 0 failed"),
        "{}",
        stdout(&out)
    );

    let out = hub(&url, &["accounts", "delete", slug, "--purge"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!database_exists_blocking(slug));
    let out = hub(&url, &["accounts", "suspend", slug]);
    assert!(!out.status.success());
}

/// `POST /api/login` as the seeded dev user; returns the token.
fn login(port: u16, password: &str) -> String {
    use std::io::{Read, Write};
    let body = format!(
        r#"{{"account":"acme","email":"admin@acme.test","password":"{}"}}"#,
        password.trim()
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let json = response.split("\r\n\r\n").nth(1).unwrap();
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|_| panic!("{response}"));
    value["token"].as_str().unwrap().to_owned()
}

fn database_exists_blocking(name: &str) -> bool {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(database_exists(name))
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_healthy(port: u16, child: &mut std::process::Child) {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited early: {status}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server did not start listening");
}

pub(crate) fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

pub(crate) fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("process did not exit after the signal");
}

#[test]
fn serve_refuses_to_start_without_a_pepper() {
    let out = Command::new(BIN)
        .arg("serve")
        .env("KATAVEN_DATABASE_URL", system_db_url())
        .env_remove("KATAVEN_KEY_PEPPER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("KATAVEN_KEY_PEPPER"));
}

/// A public URL that is not a URL would be the `iss` of every widget session token: refused at
/// start-up, as `doctor` says.
#[test]
fn serve_refuses_a_public_url_that_is_not_a_url() {
    let out = Command::new(BIN)
        .arg("serve")
        .env("KATAVEN_DATABASE_URL", system_db_url())
        .env("KATAVEN_KEY_PEPPER", "a-pepper-for-tests-only")
        .env("KATAVEN_LISTEN", "127.0.0.1:0")
        .env("KATAVEN_PUBLIC_URL", "hub.example.com/no-scheme")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("KATAVEN_PUBLIC_URL `hub.example.com/no-scheme` is not a URL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_exits_zero_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("KATAVEN_DATABASE_URL", system_db_url())
        .env("KATAVEN_KEY_PEPPER", "a-pepper-for-tests-only")
        .env("KATAVEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes: a full pipe would make the non-blocking log writer drop lines.
    let mut stderr = child.stderr.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        log
    });
    wait_healthy(port, &mut child);
    let body = raw_http::get(&format!("http://127.0.0.1:{port}/readyz"), &[]);
    assert_eq!(body.0, 200, "{}", body.1);
    // Credentials sent to a protected route are refused and never logged.
    let (status, _) = raw_http::get(
        &format!("http://127.0.0.1:{port}/api/v1/members"),
        &[
            ("X-Account-ID", "acme"),
            (
                "Authorization",
                "Bearer eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.sig-secret",
            ),
        ],
    );
    assert_eq!(status, 401);
    let (status, _) = raw_http::get(
        &format!("http://127.0.0.1:{port}/api/v1/members"),
        &[("Authorization", "Bearer sk_live_acme_SECRETSECRETSECRET")],
    );
    assert_eq!(status, 401);
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child);
    let log = reading.join().unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("stopped"), "{log}");
    // Neither the pepper nor the tokens reach the logs (which did log the requests).
    assert!(log.contains("/api/v1/members"), "{log}");
    for secret in [
        "a-pepper-for-tests-only",
        "c2VjcmV0LXRva2Vu",
        "sig-secret",
        "SECRETSECRET",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the logs");
    }
}

pub(crate) mod raw_http {
    /// A tiny blocking GET over a raw socket (the async client needs a runtime).
    pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(host).unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, buf)
    }
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let mut app = TestApp::spawn().await;
    let in_flight = {
        let req = app.get("/test/slow?sleep_ms=800");
        tokio::spawn(async move { req.send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = app.addr;
    app.shutdown().await.unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    // After shutdown nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Removes a cluster `dev` placed outside its data directory (stopping it first if a failed
/// assertion left it running).
struct RemoveRelocated(Option<std::path::PathBuf>);

impl Drop for RemoveRelocated {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        if dir.join("data/postmaster.pid").exists() {
            let bin = kataven_hub::tenancy::embedded_pg::find_bin_dir(None).unwrap();
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("pg_ctl"))
                .args(["-m", "immediate", "-w", "stop", "-D"])
                .arg(dir.join("data"))
                .current_dir("/")
                .output();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `dev` run from a fresh `0700` directory (a checkout in root's home, a `mktemp -d`) with the
/// default data directory, then again from another directory with `KATAVEN_DATA_DIR` naming
/// the same data directory: both find the same cluster. As root the server runs as `postgres`,
/// which cannot enter the `0700` directory, so the cluster is kept under
/// `/var/lib/kataven-dev`, linked from the data directory, and the start-up output says so.
#[test]
fn dev_starts_embedded_postgres_seeds_acme_once_and_stops_cleanly() {
    let checkout = tempfile::tempdir().unwrap();
    std::fs::set_permissions(checkout.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = checkout.path().join(".kataven");
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut relocated = RemoveRelocated(None);

    for run in 0..2 {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("dev")
            .env_remove("KATAVEN_DATABASE_URL")
            .env_remove("KATAVEN_KEY_PEPPER")
            .env("KATAVEN_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if run == 0 {
            cmd.current_dir(checkout.path())
                .env_remove("KATAVEN_DATA_DIR");
        } else {
            cmd.current_dir("/").env("KATAVEN_DATA_DIR", &data_dir);
        }
        let mut child = cmd.spawn().unwrap();
        // Known as soon as `dev` has placed it, so that it is removed even if this run fails.
        if as_root && relocated.0.is_none() {
            for _ in 0..100 {
                if let Ok(target) = std::fs::read_link(data_dir.join("postgres")) {
                    relocated.0 = Some(target);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        wait_healthy(port, &mut child);
        let (status, body) = raw_http::get(&format!("http://127.0.0.1:{port}/api/accounts"), &[]);
        assert_eq!(status, 200);
        assert!(
            body.contains(r#"[{"account":"acme","name":"Acme Corp"}]"#),
            "run {run}: {body}"
        );
        // The seeded dev user logs in, and its token opens a protected endpoint.
        let password = std::fs::read_to_string(data_dir.join("dev-user-password")).unwrap();
        let token = login(port, &password);
        let auth = format!("Bearer {token}");
        let (status, body) = raw_http::get(
            &format!("http://127.0.0.1:{port}/api/v1/agents"),
            &[("X-Account-ID", "acme"), ("Authorization", &auth)],
        );
        assert_eq!(status, 200, "{body}");
        // The demo agents, newest first, with their knowledge joined in.
        let front_desk = body.find("Front desk").expect("seeded agent");
        let sales = body.find("Sales assistant").expect("seeded agent");
        assert!(sales < front_desk, "{body}");
        assert!(
            body.contains("refund_policy") && body.contains("opening_hours"),
            "{body}"
        );
        // The seeded widget key works from a local page.
        let widget_key = std::fs::read_to_string(data_dir.join("widget-key")).unwrap();
        let (status, body) = raw_http::get(
            &format!(
                "http://127.0.0.1:{port}/api/v1/widget/config?client_key={}",
                widget_key.trim()
            ),
            &[("Origin", "http://localhost:5173")],
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Front desk"), "{body}");
        signal(&child, libc::SIGINT);
        let exit = wait_exit(&mut child);
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let mut log = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert!(exit.success(), "run {run} exit {exit}: {log}");
        assert!(out.contains(&format!("http://127.0.0.1:{port}")), "{out}");
        assert!(
            out.contains("admin@acme.test") && out.contains("/api/login"),
            "{out}"
        );
        // Where the cluster is: in the data directory, or (root) where `postgres` reaches it.
        let cluster = std::fs::canonicalize(data_dir.join("postgres")).unwrap();
        assert!(
            out.contains(&format!("PostgreSQL: {}", cluster.display())),
            "run {run}: {out}"
        );
        if as_root {
            assert_eq!(relocated.0.as_deref(), Some(cluster.as_path()));
            assert!(
                cluster.starts_with(kataven_hub::tenancy::embedded_pg::DEV_STATE_ROOT),
                "{}",
                cluster.display()
            );
            let name = cluster.file_name().unwrap().to_str().unwrap();
            let checkout_name = checkout.path().file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with(&format!("{checkout_name}-")), "{name}");
            assert!(out.contains("links to it"), "{out}");
        } else {
            assert_eq!(
                cluster,
                std::fs::canonicalize(&data_dir).unwrap().join("postgres")
            );
        }
        // The printed password is the dev user's; the password is never in the logs.
        assert!(
            !log.contains(password.trim()),
            "the dev password leaked into the logs"
        );
        assert_eq!(
            log.contains("seeded demo account"),
            run == 0,
            "run {run}: {log}"
        );
        assert!(log.contains("embedded PostgreSQL stopped"), "{log}");
        // The cluster is really down: its pid file is gone.
        assert!(!cluster.join("data/postmaster.pid").exists());
        // Secrets are readable by their owner only.
        for secret in [
            data_dir.join("key-pepper"),
            data_dir.join("dev-user-password"),
            cluster.join("superuser-password"),
        ] {
            assert_eq!(mode(&secret), 0o600, "{}", secret.display());
        }
    }
}

/// A data directory the `postgres` user can reach (an explicit `KATAVEN_DATA_DIR` in a `0755`
/// directory) keeps its cluster inside it.
#[test]
fn dev_keeps_a_reachable_cluster_in_its_data_directory() {
    use kataven_hub::tenancy::embedded_pg::{ClusterDir, dev_cluster_dir};
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("state");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        dev_cluster_dir(&data_dir).unwrap(),
        ClusterDir {
            path: std::fs::canonicalize(&data_dir).unwrap().join("postgres"),
            relocated: false
        }
    );
}

/// A migrator with only the first `n` embedded tenant migrations, as an older release had.
pub(crate) async fn older_migrator(n: usize) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    let dir = tempfile::tempdir().unwrap();
    let files = tenant_migrations();
    assert!(files.len() > n, "no newer migration to leave out");
    for f in &files[..n] {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    (dir, migrator)
}

/// The tenant migration files, oldest first.
pub(crate) fn tenant_migrations() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/tenant"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    files
}

/// `migrate` over a few hundred tenants, not on a terminal: a progress line every 5 % on
/// stderr, the per-tenant report and a summary that tells migrated, already current and
/// failed tenants apart; then a re-run once the broken tenant is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_over_many_tenants_shows_progress_and_a_summary() {
    use futures::StreamExt;
    const BEHIND: usize = 80;
    const CURRENT: usize = 120;
    let url = system_db_url();
    // An older release (without the newest migration) made the template and the first
    // tenants ...
    let (_dir, old_migrator) = older_migrator(tenant_migrations().len() - 1).await;
    let old = crate::support::provisioner(&url, Some(old_migrator)).await;
    let create = |p: kataven_hub::tenancy::provision::Provisioner, prefix: &'static str, n| async move {
        futures::stream::iter(0..n)
            .map(|_| {
                let p = p.clone();
                async move {
                    let slug = unique_slug(prefix);
                    p.create_account(&slug, prefix, None, None).await.unwrap();
                    slug
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await
    };
    let started = std::time::Instant::now();
    create(old, "old", BEHIND).await;
    // ... the newest release made the rest: its template is current.
    let new = crate::support::provisioner(&url, None).await;
    new.prepare_template(new.system_options()).await.unwrap();
    let current = create(new.clone(), "new", CURRENT).await;
    eprintln!(
        "created {} accounts in {:.1} s",
        BEHIND + CURRENT,
        started.elapsed().as_secs_f64()
    );
    // One tenant's database is gone underneath its catalog row.
    let broken = current[0].clone();
    let mut admin = admin_conn().await;
    sqlx::query(&format!("DROP DATABASE \"{broken}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();

    let total = BEHIND + CURRENT;
    let run = |url: String| async move {
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || hub(&url, &["migrate"]))
            .await
            .unwrap();
        eprintln!(
            "migrate over the tenants took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        out
    };
    let out = run(url.clone()).await;
    assert!(!out.status.success(), "a tenant failed: {}", stdout(&out));
    let (out_text, err_text) = (stdout(&out), stderr(&out));
    // Progress: every 5 % (10 tenants of 200), then the last line.
    let progress: Vec<&str> = err_text
        .lines()
        .filter(|l| l.starts_with("migrate: ") && l.contains(&format!("/{total} tenants")))
        .collect();
    assert_eq!(progress.len(), 20, "{err_text}");
    assert!(
        progress[0].starts_with(&format!("migrate: 10/{total} tenants (5%), ")),
        "{err_text}"
    );
    assert!(
        progress[19].starts_with(&format!(
            "migrate: {total}/{total} tenants (100%), 1 failed, "
        )),
        "{err_text}"
    );
    // The per-tenant report is still there, one line per tenant.
    let tenant_lines = out_text
        .lines()
        .filter(|l| l.starts_with("tenant ") && !l.starts_with("tenant template: "))
        .count();
    assert_eq!(tenant_lines, total, "{out_text}");
    assert!(
        out_text.contains(&format!("tenant {broken}: FAILED: ")),
        "{out_text}"
    );
    assert_eq!(
        out_text.matches("(1 applied)").count(),
        BEHIND,
        "{out_text}"
    );
    let summary = out_text
        .lines()
        .find(|l| l.starts_with(&format!("migrate: {total} tenants in ")))
        .unwrap_or_else(|| panic!("{out_text}"));
    assert!(
        summary.ends_with(&format!(
            ": {BEHIND} migrated, {} already current, 1 failed",
            CURRENT - 1
        )),
        "{summary}"
    );

    // Without the broken tenant every tenant is now current.
    let out = hub(&url, &["accounts", "delete", broken.as_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(url.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            ": 0 migrated, {} already current, 0 failed",
            total - 1
        )),
        "{}",
        stdout(&out)
    );
}

/// Runs `doctor` with exactly `env` among the `KATAVEN_*` settings; returns (success, stdout).
async fn doctor(env: Vec<(&'static str, String)>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.arg("doctor");
        for (k, _) in std::env::vars() {
            if k.starts_with("KATAVEN_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env).output().expect("run doctor")
    })
    .await
    .unwrap();
    let text = stdout(&out);
    eprintln!("{text}");
    (out.status.success(), text)
}

/// The line of check `name`.
fn check_line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| {
            l.get(9..)
                .is_some_and(|rest| rest.starts_with(&format!("{name}: ")))
        })
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{report}"))
}

const PEPPER: &str = "a-pepper-for-the-doctor-test-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_setup() {
    let url = system_db_url();
    let p = crate::support::provisioner(&url, None).await;
    p.prepare_template(p.system_options()).await.unwrap();
    for _ in 0..3 {
        p.create_account(&unique_slug("doc"), "Doc", None, None)
            .await
            .unwrap();
    }
    let redis = crate::support::redis::TestRedis::start();
    let issuer = crate::support::TestIssuer::start().await;
    let (ok, report) = doctor(vec![
        ("KATAVEN_DATABASE_URL", url.clone()),
        ("KATAVEN_KEY_PEPPER", PEPPER.into()),
        ("KATAVEN_REDIS_URL", redis.url()),
        ("KATAVEN_OIDC_ISSUER", issuer.issuer()),
        ("KATAVEN_OIDC_AUDIENCES", crate::support::AUDIENCE.into()),
    ])
    .await;
    assert!(ok, "{report}");
    for name in [
        "configuration",
        "key pepper",
        "system database",
        "system migrations",
        "tenant template",
        "database servers",
        "tenants",
        "redis",
        "oidc issuer",
    ] {
        assert!(check_line(&report, name).starts_with("ok "), "{report}");
    }
    assert!(
        check_line(&report, "database servers").contains("reachable: `main`"),
        "{report}"
    );
    assert!(
        check_line(&report, "tenants").contains("3 account(s), 0 behind"),
        "{report}"
    );
    assert!(
        check_line(&report, "oidc issuer").contains("2 usable key(s)"),
        "{report}"
    );
    assert!(
        report.contains("doctor: 9 ok, 0 warning(s), 0 failure(s)"),
        "{report}"
    );
    // Secrets are never printed.
    assert!(!report.contains(PEPPER));
    let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(!report.contains(password), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_what_is_broken_and_what_to_do() {
    // Nothing listens at the database URL, and there is no pepper.
    let port = free_port();
    let (ok, report) = doctor(vec![(
        "KATAVEN_DATABASE_URL",
        format!("postgres://kataven:hunter2@127.0.0.1:{port}/kataven-admin"),
    )])
    .await;
    assert!(!ok, "{report}");
    let line = check_line(&report, "system database");
    assert!(
        line.starts_with("failure ")
            && line.contains("connection refused")
            && line.contains(&format!("-> start PostgreSQL at 127.0.0.1:{port}")),
        "{report}"
    );
    assert!(
        check_line(&report, "key pepper").starts_with("failure "),
        "{report}"
    );
    assert!(!report.contains("hunter2"), "{report}");
    // The checks that need the system database are left out.
    assert!(!report.contains("tenants:"), "{report}");

    // A system database that does not exist: doctor says how to create it, and creates nothing.
    let url = system_db_url();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let (ok, report) = doctor(vec![
        ("KATAVEN_DATABASE_URL", url.clone()),
        ("KATAVEN_KEY_PEPPER", PEPPER.into()),
    ])
    .await;
    assert!(!ok, "{report}");
    assert!(
        check_line(&report, "system database")
            .contains("does not exist -> run `kataven-hub migrate`"),
        "{report}"
    );
    assert!(!database_exists(&name).await, "doctor created the database");

    // An older release made the template and a tenant: both are behind this binary (by its
    // newest migration). That is a warning (they are migrated by `migrate`, or on first use),
    // not a failure.
    let newest_left_out = tenant_migrations().len() - 1;
    let (_dir, old_migrator) = older_migrator(newest_left_out).await;
    let old = crate::support::provisioner(&url, Some(old_migrator)).await;
    let behind = unique_slug("behind");
    old.create_account(&behind, "Behind", None, None)
        .await
        .unwrap();
    let env = || {
        vec![
            ("KATAVEN_DATABASE_URL", url.clone()),
            ("KATAVEN_KEY_PEPPER", PEPPER.into()),
        ]
    };
    let (ok, report) = doctor(env()).await;
    assert!(ok, "warnings only: {report}");
    let template = check_line(&report, "tenant template");
    assert!(
        template.starts_with("warning ") && template.contains("1 migration(s) behind"),
        "{report}"
    );
    let tenants = check_line(&report, "tenants");
    assert!(
        tenants.starts_with("warning ")
            && tenants.contains("1 account(s), 1 behind")
            && tenants.contains(&format!("behind: {behind}"))
            && tenants.contains("-> run `kataven-hub migrate`"),
        "{report}"
    );

    // `migrate` fixes both.
    let out = hub(&url, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ok, report) = doctor(env()).await;
    assert!(ok, "{report}");
    assert!(
        check_line(&report, "tenants").starts_with("ok "),
        "{report}"
    );
    assert!(
        check_line(&report, "tenant template").starts_with("ok "),
        "{report}"
    );

    // A tenant database missing under its catalog row, Redis down, the issuer down: failures.
    let mut admin = admin_conn().await;
    sqlx::query(&format!("DROP DATABASE \"{behind}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    // A server nothing listens on (its account gone, the server left in the catalog).
    let mut catalog =
        sqlx::ConnectOptions::connect(&url.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap();
    sqlx::query("INSERT INTO servers (id, url) VALUES ('gone', 'postgres://127.0.0.1:1')")
        .execute(&mut catalog)
        .await
        .unwrap();
    let issuer = crate::support::TestIssuer::start().await;
    issuer.set_down(true);
    let mut env = env();
    env.extend([
        (
            "KATAVEN_REDIS_URL",
            format!("redis://127.0.0.1:{}/", free_port()),
        ),
        ("KATAVEN_OIDC_ISSUER", issuer.issuer()),
        ("KATAVEN_OIDC_AUDIENCES", crate::support::AUDIENCE.into()),
    ]);
    let (ok, report) = doctor(env).await;
    assert!(!ok, "{report}");
    let tenants = check_line(&report, "tenants");
    assert!(
        tenants.starts_with("failure ")
            && tenants.contains(&format!(
                "unreachable: {behind} (the database does not exist"
            )),
        "{report}"
    );
    assert!(
        check_line(&report, "redis").starts_with("failure "),
        "{report}"
    );
    let oidc = check_line(&report, "oidc issuer");
    assert!(
        oidc.starts_with("failure ") && oidc.contains("503"),
        "{report}"
    );
    let servers = check_line(&report, "database servers");
    assert!(
        servers.starts_with("failure ") && servers.contains("not reachable: `gone`"),
        "{report}"
    );
    assert!(report.contains("0 warning(s), 4 failure(s)"), "{report}");
}
