//! `Dockerfile` and `docker-compose.yml`, checked without a Docker engine: every `KATAVEN_*`
//! variable they set is one the binary knows; the image builds the binary the way this test
//! suite's binary is built (one bin target, `--locked`) and runs it as its entrypoint; and the
//! compose services' commands (the demo bootstrap, `serve`, the health check) are run here with
//! the compose file's own environment against a real PostgreSQL and Redis, the hosts swapped
//! for the test's own. `.ci/run` also validates the compose file with `docker-compose config`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

use crate::cli::{free_port, raw_http, signal, wait_exit, wait_healthy};
use crate::support::system_db_url;

const BIN: &str = env!("CARGO_BIN_EXE_kataven-hub");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The environment variables the binary reads (the clap `env` names of its settings).
fn known_variables() -> BTreeSet<String> {
    kataven_hub::cli::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// Every `KATAVEN_*` name mentioned in `text` (a bare `KATAVEN_*` in prose is no name).
fn mentioned_variables(text: &str) -> BTreeSet<String> {
    text.match_indices("KATAVEN_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "KATAVEN_".len())
        .collect()
}

#[test]
fn compose_and_dockerfile_set_only_variables_the_binary_knows() {
    let known = known_variables();
    assert!(
        known.contains("KATAVEN_DATABASE_URL") && known.len() > 30,
        "{known:?}"
    );
    let mut seen = BTreeSet::new();
    for file in ["docker-compose.yml", "Dockerfile", "docker/init-demo.sh"] {
        for name in mentioned_variables(&read(file)) {
            assert!(
                known.contains(&name),
                "{file} sets {name}, which kataven-hub does not read (known: {known:?})"
            );
            seen.insert(name);
        }
    }
    // What `serve` needs is there.
    for needed in [
        "KATAVEN_DATABASE_URL",
        "KATAVEN_KEY_PEPPER",
        "KATAVEN_LISTEN",
        "KATAVEN_REDIS_URL",
    ] {
        assert!(seen.contains(needed), "{needed} is not set: {seen:?}");
    }
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("not an exec-form array: {args}"))
}

#[test]
fn dockerfile_builds_and_runs_the_binary_the_tests_run() {
    let dockerfile = read("Dockerfile");
    let steps = instructions(&dockerfile);
    let bin = Path::new(BIN).file_name().unwrap().to_str().unwrap();
    let runs: Vec<&str> = steps
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    // The binary is built from the locked dependencies, in release, as the one bin target.
    let build = format!("cargo build --release --locked --bin {bin}");
    assert!(runs.contains(&build.as_str()), "{runs:#?}");
    // The cached dependency layer is cooked with the same profile, lock file and target.
    let cook = runs
        .iter()
        .find(|r| r.starts_with("cargo chef cook"))
        .expect("a cargo-chef dependency layer");
    for flag in ["--release", "--locked", &format!("--bin {bin}")] {
        assert!(cook.contains(flag), "{cook}");
    }
    // cargo-chef's recipe leaves out crates patched in by path: each is copied into the
    // builder stage before the dependency layer is cooked, or the cook cannot find it.
    let patched: Vec<String> = read("Cargo.toml")
        .lines()
        .skip_while(|l| l.trim() != "[patch.crates-io]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| {
            l.split_once("path = \"")?
                .1
                .split_once('"')
                .map(|(p, _)| p.to_owned())
        })
        .collect();
    let builder = steps
        .iter()
        .position(|(op, a)| op == "FROM" && a.ends_with("AS builder"))
        .expect("a builder stage");
    let cook_at = steps
        .iter()
        .position(|(op, a)| op == "RUN" && a.starts_with("cargo chef cook"))
        .unwrap();
    for path in &patched {
        let top = path.split('/').next().unwrap();
        assert!(
            steps[builder..cook_at].iter().any(|(op, a)| op == "COPY"
                && (a == &format!("{path} {path}") || a == &format!("{top} {top}"))),
            "{path} is not copied into the builder stage before `cargo chef cook`"
        );
    }
    // The toolchain is at least the crate's minimum.
    let rust_version = |s: &str| -> (u32, u32) {
        let mut parts = s.split('.').map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    let image_rust = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    let crate_rust = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"')
        .to_owned();
    assert!(rust_version(image_rust) >= rust_version(&crate_rust));

    // The runtime stage: the built binary is the entrypoint, `serve` the command, not as root.
    let runtime = steps
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a runtime stage");
    let runtime = &steps[runtime..];
    let get = |name: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(op, _)| op == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(
        get("FROM")[0].contains("-slim") || get("FROM")[0].contains("distroless"),
        "{:?}",
        get("FROM")
    );
    let installed = format!("/usr/local/bin/{bin}");
    assert!(
        get("COPY")
            .contains(&format!("--from=builder /src/target/release/{bin} {installed}").as_str()),
        "{:?}",
        get("COPY")
    );
    assert_eq!(exec_form(get("ENTRYPOINT")[0]), vec![installed]);
    assert_eq!(exec_form(get("CMD")[0]), vec!["serve"]);
    let user = get("USER")[0];
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(get("HEALTHCHECK")[0].contains("/readyz"));
}

fn compose() -> Yaml {
    YamlLoader::load_from_str(&read("docker-compose.yml"))
        .expect("valid YAML")
        .remove(0)
}

/// `${NAME:-default}` → `default` (what compose substitutes when `NAME` is unset).
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closed ${…}") + at;
        let inner = &rest[at + 2..end];
        let (_, default) = inner.split_once(":-").unwrap_or_else(|| {
            panic!("${{{inner}}} has no default: `docker compose up` needs one")
        });
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .expect("an environment map")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                other => panic!("{other:?}"),
            };
            (k.as_str().unwrap().to_owned(), interpolate(&value))
        })
        .collect()
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// A command with exactly `env` among the `KATAVEN_*` variables.
fn with_env(mut cmd: Command, env: &BTreeMap<String, String>) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("KATAVEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env);
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn compose_services_run_with_the_compose_environment() {
    let compose = compose();
    let services = &compose["services"];
    for name in ["postgres", "redis", "init", "hub"] {
        assert!(!services[name].is_badvalue(), "no `{name}` service");
    }
    let hub = &services["hub"];
    let init = &services["init"];
    assert_eq!(
        hub["depends_on"]["init"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    assert_eq!(
        hub["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(hub["ports"][0].as_str(), Some("127.0.0.1:8080:8080"));

    // The compose environment, with the test's own PostgreSQL and Redis and a free port.
    let mut env = environment(hub);
    assert_eq!(env, environment(init), "init and hub share one environment");
    assert_eq!(env["KATAVEN_LISTEN"], "0.0.0.0:8080");
    assert!(env["KATAVEN_DATABASE_URL"].ends_with("@postgres:5432/kataven-admin"));
    let redis = crate::support::redis::TestRedis::start();
    let port = free_port();
    env.insert("KATAVEN_DATABASE_URL".into(), system_db_url());
    env.insert("KATAVEN_REDIS_URL".into(), redis.url());
    env.insert("KATAVEN_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert(
        "KATAVEN_PUBLIC_URL".into(),
        format!("http://127.0.0.1:{port}"),
    );

    // The image's programs, on PATH under their names in the image.
    let image_bin = tempfile::tempdir().unwrap();
    let dockerfile = instructions(&read("Dockerfile"));
    let entrypoint = strings(&init["entrypoint"]);
    let script = dockerfile
        .iter()
        .filter(|(op, _)| op == "COPY")
        .find_map(|(_, a)| {
            let mut parts = a.split_whitespace().filter(|p| !p.starts_with("--"));
            let (from, to) = (parts.next()?, parts.next()?);
            (to == entrypoint[0]).then(|| PathBuf::from(ROOT).join(from))
        })
        .expect("the init entrypoint is copied into the image");
    assert!(std::fs::metadata(&script).unwrap().permissions().mode() & 0o111 != 0);
    std::os::unix::fs::symlink(BIN, image_bin.path().join("kataven-hub")).unwrap();
    let path = format!(
        "{}:{}",
        image_bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // The one-shot init service, twice: the second run creates nothing and prints the same key.
    let state = tempfile::tempdir().unwrap();
    let run_init = || {
        let mut cmd = with_env(Command::new(&script), &env);
        cmd.env("PATH", &path).env("DEMO_STATE_DIR", state.path());
        let out = cmd.output().expect("run the init script");
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let first = run_init();
    assert!(first.contains("created account demo"), "{first}");
    let key_file = state.path().join("demo-api-key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("sk_live_demo_"), "{key}");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let second = run_init();
    assert!(second.contains("account demo exists"), "{second}");
    assert!(!second.contains("created account"), "{second}");
    assert!(second.contains(&format!("API key:      {key}")), "{second}");

    // The hub: the image's entrypoint with the compose command.
    let command = strings(&hub["command"]);
    assert_eq!(command, vec!["serve"]);
    let mut hub_cmd = with_env(Command::new(BIN), &env);
    let mut child = hub_cmd
        .args(&command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port, &mut child);
    // The image's health check, pointed at this port.
    let healthcheck = dockerfile
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, a)| {
            a.split_once("CMD ")
                .unwrap()
                .1
                .replace(":8080", &format!(":{port}"))
        })
        .unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        let status = Command::new("sh")
            .args(["-c", &healthcheck])
            .status()
            .unwrap();
        if status.success() {
            healthy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(healthy, "`{healthcheck}` never succeeded");
    let (status, body) = raw_http::get(&format!("http://127.0.0.1:{port}/readyz"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""redis":"up""#), "{body}");
    // The key the init service printed works.
    let auth = format!("Bearer {key}");
    let (status, body) = raw_http::get(
        &format!("http://127.0.0.1:{port}/api/v1/agents"),
        &[("X-Account-ID", "demo"), ("Authorization", &auth)],
    );
    assert_eq!(status, 200, "{body}");
    signal(&child, libc::SIGTERM);
    let exit = wait_exit(&mut child);
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "{exit}: {log}");
    // The pepper of the compose file never reaches the logs.
    assert!(!log.contains(&env["KATAVEN_KEY_PEPPER"]), "{log}");
}
