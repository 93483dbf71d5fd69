//! `bench/run.sh`: the hub against a bare handler, `pgbench` and PostgreSQL's own
//! new-connection ceiling, all in one run on one machine, so that the ratios mean something.
//!
//! It starts a PostgreSQL cluster of its own, provisions the accounts, starts `kataven-hub
//! serve` (the default configuration, and a second instance with a small connection budget for
//! the many-tenant storm) and the bare baseline (`examples/bench_bare.rs`), drives them with
//! `wrk` (reads, then writes without and with an `Idempotency-Key`, each pair interleaved),
//! runs `pgbench` on the same query, and prints one Markdown table. Nothing here asserts
//! a time: the numbers are for people (README, `docs/performance.md`).
//!
//! Settings (environment): `BENCH_SECS` (per case, default 8), `BENCH_ROUNDS` (the hub and
//! bare request cases run interleaved in this many rounds of `BENCH_SECS / BENCH_ROUNDS`
//! seconds, default 4), `BENCH_CONNECTIONS` (wrk
//! connections, default 64), `BENCH_THREADS` (wrk threads, default 2), `BENCH_STORM_ACCOUNTS`
//! (117), `BENCH_STORM_BUDGET` (24), `BENCH_STORM_CLIENTS` (16), `BENCH_COLD_ACCOUNTS` (100),
//! `BENCH_MEMORY=1` to also measure memory (2,000 idle pools; 100,000 cached credentials),
//! `BENCH_HUB_ENV` (extra `KEY=VALUE,…` for the hub under test), `BENCH_PERF=<case>` to record
//! `perf` profiles of the hub during that case (`jwt`, `api_key`, `list`, `create`,
//! `create_keyed`, `storm`); its working
//! directory is then kept for them, and removed otherwise. `BENCH_READS_ONLY=1` runs only the
//! interleaved reads, `BENCH_SKIP=api_key,list` leaves reads out of them, `BENCH_COMPARE` adds
//! another binary's JWT read (see below).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kataven_hub::auth::keys::KeyHasher;
use kataven_hub::tenancy::catalog::{Catalog, Role};
use kataven_hub::tenancy::embedded_pg::{self, EmbeddedPostgres};
use kataven_hub::tenancy::provision::{self, Provisioner};
use kataven_hub::tenancy::slug::AccountSlug;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

fn setting<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.name);
    }
}

/// `KEY=VALUE,…` from the environment variable `name`.
fn env_list(name: &str) -> Vec<(String, String)> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One measured case.
#[derive(Default, Clone)]
struct Row {
    case: String,
    rate: Option<f64>,
    unit: &'static str,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    ratio: Option<(f64, &'static str)>,
    cpu: Option<Cpu>,
    note: String,
}

fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// An interleaved request case: its name, URL, headers and the server's pid (its CPU time is
/// measured; `perf` records it when asked for).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<u32>);

#[derive(Clone, Copy)]
struct Wrk {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests completed in the run.
    requests: f64,
    /// CPU time per request of the server under test and of PostgreSQL (µs), when measured.
    cpu_us: Option<Cpu>,
}

/// CPU time per request (µs): what the rate on two shared cores is made of.
#[derive(Clone, Copy)]
struct Cpu {
    server: f64,
    postgres: f64,
}

/// The fields of `/proc/<pid>/stat` from the state (field 3) on, 0-based, as numbers (the
/// state reads 0): the parent is `[1]`, utime, stime, cutime, cstime are `[11]`–`[14]`.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command, in parentheses, may hold spaces.
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU time (µs) used so far by process `pid`, all its threads (utime + stime), and with
/// `children`, by the children it has reaped (cutime + cstime).
fn cpu_us(pid: u32, children: bool) -> u64 {
    let Some(f) = stat_fields(pid).filter(|f| f.len() > 14) else {
        return 0;
    };
    let ticks = f[11] + f[12] + if children { f[13] + f[14] } else { 0 };
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / per_sec
}

/// CPU time (µs) used so far by a PostgreSQL cluster: the postmaster, the backends it has
/// reaped, and those running.
fn cluster_cpu_us(postmaster: u32) -> u64 {
    let backends = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.get(1) == Some(&(postmaster as u64))));
    cpu_us(postmaster, true) + backends.map(|pid| cpu_us(pid, false)).sum::<u64>()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The round with the median rate (its latencies belong to it).
fn median_run(rounds: &[Wrk]) -> Wrk {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    sorted[sorted.len() / 2]
}

/// The median CPU time per request over the rounds, the server's and PostgreSQL's each.
fn median_cpu(rounds: &[Wrk]) -> Option<Cpu> {
    let cpu: Vec<Cpu> = rounds.iter().filter_map(|w| w.cpu_us).collect();
    (!cpu.is_empty()).then(|| Cpu {
        server: median(cpu.iter().map(|c| c.server).collect()),
        postgres: median(cpu.iter().map(|c| c.postgres).collect()),
    })
}

/// The median over the rounds of `a`'s rate over `b`'s in the same round.
fn paired_ratio(a: &[Wrk], b: &[Wrk]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a.rate / b.rate).collect())
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut wrk = Wrk {
        rate: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
        requests: 0.0,
        cpu_us: None,
    };
    for line in out.lines() {
        let line = line.trim();
        if let Some((count, _)) = line.split_once(" requests in ") {
            wrk.requests = count.trim().parse()?;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            wrk.rate = rest.trim().parse()?;
        } else if let Some(rest) = line.strip_prefix("50%") {
            wrk.p50_ms = parse_duration_ms(rest).context("p50")?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            wrk.p99_ms = parse_duration_ms(rest).context("p99")?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.errors += rest.trim().parse::<u64>()?;
        } else if line.starts_with("Socket errors:") {
            wrk.errors += line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if wrk.rate == 0.0 {
        bail!("could not read wrk's output:\n{out}");
    }
    Ok(wrk)
}

struct Bench {
    work: PathBuf,
    secs: u64,
    /// Rounds of the interleaved request cases (each `secs / rounds` long, at least 2 s).
    rounds: u64,
    connections: u32,
    threads: u32,
    perf_case: Option<String>,
    /// The cluster's postmaster, whose CPU time is measured with each case.
    postmaster: Option<u32>,
}

impl Bench {
    /// `wrk` against `url` with `headers`, or a Lua `script`; the CPU time of `server` (and
    /// `perf`'s profile of it, when asked for this case) and of PostgreSQL is measured.
    fn wrk(
        &self,
        case: &str,
        url: &str,
        headers: &[(&str, &str)],
        script: Option<&Path>,
        connections: u32,
        server: Option<u32>,
    ) -> anyhow::Result<Wrk> {
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{}", self.threads.min(connections)))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", self.secs))
            .arg("--latency");
        for (name, value) in headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(script) = script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(url);
        let perf = match (server, &self.perf_case) {
            (Some(pid), Some(wanted)) if wanted == case => Some(self.perf_record(case, pid)?),
            _ => None,
        };
        let cpu = || {
            server
                .zip(self.postmaster)
                .map(|(s, pm)| (cpu_us(s, false), cluster_cpu_us(pm)))
        };
        let before = cpu();
        let out = cmd
            .output()
            .context("running wrk (Debian: apt-get install wrk)")?;
        let after = cpu();
        if let Some(mut perf) = perf {
            // SIGINT makes perf write its data and exit.
            unsafe {
                libc::kill(perf.id() as i32, libc::SIGINT);
            }
            let _ = perf.wait();
            eprintln!(
                "perf data: {}",
                self.work.join(format!("perf-{case}.data")).display()
            );
        }
        if !out.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut wrk = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
        if let (Some((s0, p0)), Some((s1, p1))) = (before, after) {
            let n = wrk.requests.max(1.0);
            wrk.cpu_us = Some(Cpu {
                server: (s1 - s0) as f64 / n,
                postgres: (p1 - p0) as f64 / n,
            });
        }
        Ok(wrk)
    }

    /// One round of an interleaved case: `secs / rounds` seconds (at least 2) of `url` (or
    /// the requests of a Lua `script`); `perf`, when asked for, records the first round.
    #[allow(clippy::too_many_arguments)]
    fn round(
        &self,
        case: &str,
        round: u64,
        url: &str,
        headers: &[(&str, &str)],
        script: Option<&Path>,
        connections: u32,
        server: Option<u32>,
    ) -> anyhow::Result<Wrk> {
        let this = Bench {
            work: self.work.clone(),
            secs: (self.secs / self.rounds).max(2),
            rounds: 1,
            connections,
            threads: self.threads,
            perf_case: self.perf_case.clone().filter(|_| round == 0),
            postmaster: self.postmaster,
        };
        this.wrk(case, url, headers, script, connections, server)
    }

    /// Two seconds of the same load, not measured, so that the cases measure the steady state:
    /// the server has opened its database connections and filled its caches.
    fn warm_up(&self, url: &str, headers: &[(&str, &str)], connections: u32) -> anyhow::Result<()> {
        let warm = Bench {
            work: self.work.clone(),
            secs: 2,
            rounds: 1,
            connections,
            threads: self.threads,
            perf_case: None,
            postmaster: None,
        };
        warm.wrk("warm-up", url, headers, None, connections, None)?;
        Ok(())
    }

    fn perf_record(&self, case: &str, pid: u32) -> anyhow::Result<Child> {
        Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "--call-graph",
                "dwarf,32768",
                "-o",
            ])
            .arg(self.work.join(format!("perf-{case}.data")))
            .arg("-p")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running perf (Debian: apt-get install linux-perf)")
    }

    /// `pgbench` on `script` with `clients`; `new_connections`: one connection per transaction.
    fn pgbench(
        &self,
        pg: &EmbeddedPostgres,
        bin: &Path,
        database: &str,
        script: &Path,
        clients: u32,
        new_connections: bool,
    ) -> anyhow::Result<f64> {
        let url = url::Url::parse(&pg.url(database))?;
        let mut cmd = Command::new(bin.join("pgbench"));
        cmd.env("PGPASSWORD", url.password().unwrap_or_default())
            .args(["-n", "-h", "127.0.0.1", "-U", url.username()])
            .arg("-p")
            .arg(pg.port().to_string())
            .arg(format!("-c{clients}"))
            .arg(format!("-j{}", self.threads.min(clients)))
            .arg(format!("-T{}", self.secs))
            .arg("-f")
            .arg(script);
        if new_connections {
            cmd.arg("-C");
        } else {
            cmd.args(["-M", "prepared"]);
        }
        cmd.arg(database);
        let out = cmd.output().context("running pgbench")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("tps = ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .with_context(|| {
                format!(
                    "pgbench output:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(resp) = client.get(format!("{base}/readyz")).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{base} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kataven-hub serve` on `port` with the benchmark's settings plus `extra`. Every instance
/// has the same public URL, so that they trust the same dev issuer's tokens (like instances
/// behind one load balancer).
#[allow(clippy::too_many_arguments)]
fn start_hub(
    bin: &Path,
    work: &Path,
    name: &'static str,
    system_url: &str,
    pepper: &str,
    port: u16,
    public_url: &str,
    extra: &[(String, String)],
) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(work.join(format!("{name}.log")))?;
    let child = Command::new(bin.join("kataven-hub"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KATAVEN_DATABASE_URL", system_url)
        .env("KATAVEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("KATAVEN_PUBLIC_URL", public_url)
        .env("KATAVEN_KEY_PEPPER", pepper)
        .env("KATAVEN_DEV_LOGIN", "true")
        .env("KATAVEN_LOG_FORMAT", "json")
        // Limits far above what the load can reach: only the cost of checking them counts.
        .env("KATAVEN_LIMIT_PER_MINUTE", "4000000000")
        .env("KATAVEN_LIMIT_PER_HOUR", "4000000000")
        .env("KATAVEN_LIMIT_PER_DAY", "4000000000")
        .env("KATAVEN_LIMIT_CONCURRENT", "1000000")
        .env("KATAVEN_PUBLIC_LIMIT_PER_MINUTE", "4000000000")
        .env("KATAVEN_AUTH_FAILURE_LIMIT_PER_MINUTE", "4000000000")
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting kataven-hub")?;
    Ok(Proc { name, child })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = setting("BENCH_SECS", 8);
    let connections: u32 = setting("BENCH_CONNECTIONS", 64);
    let threads: u32 = setting("BENCH_THREADS", 2);
    let storm_accounts: usize = setting("BENCH_STORM_ACCOUNTS", 117);
    let storm_budget: u32 = setting("BENCH_STORM_BUDGET", 24);
    let storm_clients: u32 = setting("BENCH_STORM_CLIENTS", 16);
    let cold_accounts: usize = setting("BENCH_COLD_ACCOUNTS", 100);
    let memory = std::env::var("BENCH_MEMORY").is_ok_and(|v| v == "1");
    let hub_extra = env_list("BENCH_HUB_ENV");
    let bin_dir = PathBuf::from(std::env::var("BENCH_BIN_DIR").unwrap_or("target/release".into()));

    let work = tempfile::Builder::new()
        .prefix("kataven-bench-")
        .tempdir()?
        .keep();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    }
    eprintln!("working in {}", work.display());
    let pg_bin = embedded_pg::find_bin_dir(None)?;
    let pg = {
        let (root, bin) = (work.join("pg"), pg_bin.clone());
        tokio::task::spawn_blocking(move || {
            EmbeddedPostgres::start(
                &root,
                bin,
                &[
                    ("max_connections", "400"),
                    ("shared_buffers", "'128MB'"),
                    ("fsync", "off"),
                    ("synchronous_commit", "off"),
                ],
            )
        })
        .await??
    };
    let pg = Arc::new(pg);
    let result = run(
        &pg,
        &pg_bin,
        &bin_dir,
        Bench {
            work: work.clone(),
            secs,
            rounds: setting("BENCH_ROUNDS", 4),
            connections,
            threads,
            perf_case: std::env::var("BENCH_PERF").ok(),
            postmaster: pg.postmaster_pid().map(|p| p as u32),
        },
        storm_accounts,
        storm_budget,
        storm_clients,
        cold_accounts,
        memory,
        &hub_extra,
    )
    .await;
    let _ = pg.stop();
    // The cluster holds thousands of databases after a memory run (gigabytes): keep the
    // directory only when it holds perf data someone asked for, or the servers' logs of a
    // failed run (`hub.log`, `hub-storm.log`).
    if std::env::var("BENCH_PERF").is_ok() {
        eprintln!("kept {} (perf data)", work.display());
    } else if result.is_err() {
        eprintln!(
            "kept {} (the servers' logs of the failed run)",
            work.display()
        );
    } else if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("could not remove {}: {e}", work.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    pg: &EmbeddedPostgres,
    pg_bin: &Path,
    bin_dir: &Path,
    bench: Bench,
    storm_accounts: usize,
    storm_budget: u32,
    storm_clients: u32,
    cold_accounts: usize,
    memory: bool,
    hub_extra: &[(String, String)],
) -> anyhow::Result<()> {
    let work = &bench.work;
    let system_url = pg.url("kataven-admin");
    let system = PgConnectOptions::from_str(&system_url)?;
    let pool = provision::prepare_system_database(&system).await?;
    let provisioner = Provisioner::new(
        Catalog::new(pool.clone()),
        system.clone(),
        Arc::new(provision::tenant_migrator()),
    );
    provisioner.prepare_template(&system).await?;
    let pepper = "bench-pepper-0123456789-0123456789-0123456789";
    let hasher = KeyHasher::new(SecretString::from(pepper.to_owned()));

    let account = AccountSlug::parse("bench")?;
    provisioner
        .create_account(&account, "Bench", None, None)
        .await?;
    let subject = kataven_hub::auth::dev_issuer::upsert_dev_user(
        &pool,
        &account,
        "bench@bench.test",
        "bench-password",
        Role::Admin,
    )
    .await?;
    let api_key = kataven_hub::keys::api::create_key(
        &mut *pool.acquire().await?,
        &hasher,
        account.as_str(),
        "bench",
        kataven_hub::keys::api::Expiry::Never,
        "bench",
    )
    .await?
    .key;
    let mut storm = Vec::new();
    for i in 0..storm_accounts {
        let slug = AccountSlug::parse(&format!("storm-{i:04}"))?;
        provisioner
            .create_account(&slug, "Storm", None, None)
            .await?;
        provisioner
            .catalog()
            .upsert_member(&slug, &subject, Role::Member)
            .await?;
        storm.push(slug);
    }
    eprintln!("provisioned 1 + {storm_accounts} accounts");

    let (hub_port, storm_port, bare_port) = (free_port(), free_port(), free_port());
    let hub_url = format!("http://127.0.0.1:{hub_port}");
    let hub = start_hub(
        bin_dir,
        work,
        "hub",
        &system_url,
        pepper,
        hub_port,
        &hub_url,
        hub_extra,
    )?;
    let mut storm_env = hub_extra.to_vec();
    storm_env.push((
        "KATAVEN_DB_CONNECTION_BUDGET".into(),
        storm_budget.to_string(),
    ));
    let storm_hub = start_hub(
        bin_dir,
        work,
        "hub-storm",
        &system_url,
        pepper,
        storm_port,
        &hub_url,
        &storm_env,
    )?;
    let bare = Proc {
        name: "bare",
        child: Command::new(bin_dir.join("examples/bench_bare"))
            .env("BARE_DATABASE_URL", pg.url("bench"))
            .env("BARE_LISTEN", format!("127.0.0.1:{bare_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bench_bare")?,
    };
    let client = reqwest::Client::new();
    let storm_url = format!("http://127.0.0.1:{storm_port}");
    wait_ready(&client, &hub_url).await?;
    wait_ready(&client, &storm_url).await?;

    let login: Value = client
        .post(format!("{hub_url}/api/login"))
        .json(
            &json!({"account": "bench", "email": "bench@bench.test", "password": "bench-password"}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["token"].as_str().context("login token")?.to_owned();
    let bearer = format!("Bearer {token}");
    let mut agent_id = String::new();
    for i in 0..20 {
        let created: Value = client
            .post(format!("{hub_url}/api/v1/agents"))
            .header("Authorization", &bearer)
            .header("X-Account-ID", "bench")
            .json(&json!({"name": format!("Agent {i}"), "description": "A benchmark agent", "system_prompt": "You help."}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        agent_id = created["id"].as_str().context("agent id")?.to_owned();
    }
    // The bare baseline is up by now.
    let bare_url = format!("http://127.0.0.1:{bare_port}");
    client
        .get(format!("{bare_url}/agents/{agent_id}"))
        .send()
        .await?
        .error_for_status()?;

    let mut rows: Vec<Row> = Vec::new();
    let c = bench.connections;
    let one = format!("{hub_url}/api/v1/agents/{agent_id}");
    bench.warm_up(
        &one,
        &[("Authorization", &bearer), ("X-Account-ID", "bench")],
        c,
    )?;
    bench.warm_up(&format!("{bare_url}/agents/{agent_id}"), &[], c)?;
    // The four request cases run interleaved, in rounds (jwt, api_key, list, bare, jwt, …), so
    // that a drift of the shared machine (the scheduler's split of two cores between wrk, the
    // servers and PostgreSQL) hits every case alike; each case reports its median round, and
    // each ratio is the median of the rounds' ratios.
    let key_bearer = format!("Bearer {api_key}");
    let (list_url, bare_url_one) = (
        format!("{hub_url}/api/v1/agents"),
        format!("{bare_url}/agents/{agent_id}"),
    );
    let user = [
        ("Authorization", bearer.as_str()),
        ("X-Account-ID", "bench"),
    ];
    let cases: [Case; 4] = [
        ("jwt", &one, &user, Some(hub.pid())),
        (
            "api_key",
            &one,
            &[("Authorization", &key_bearer)],
            Some(hub.pid()),
        ),
        ("list", &list_url, &user, Some(hub.pid())),
        ("bare", &bare_url_one, &[], Some(bare.pid())),
    ];
    // `BENCH_COMPARE=<directory holding another kataven-hub>`: that binary's JWT read too, in
    // the same rounds, against this one's (trying a change: build, keep the old binary, compare).
    // `BENCH_COMPARE_ENV`: extra `KEY=VALUE,…` for that hub (this binary again to compare a
    // setting).
    let other = match std::env::var_os("BENCH_COMPARE") {
        Some(dir) => {
            let mut env = hub_extra.to_vec();
            env.extend(env_list("BENCH_COMPARE_ENV"));
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let other = start_hub(
                Path::new(&dir),
                work,
                "hub-compare",
                &system_url,
                pepper,
                port,
                // The tokens' issuer is the first hub's.
                &hub_url,
                &env,
            )?;
            wait_ready(&client, &url).await?;
            let one = format!("{url}/api/v1/agents/{agent_id}");
            bench.warm_up(&one, &user, c)?;
            Some((other, one))
        }
        None => None,
    };
    let mut rounds: [Vec<Wrk>; 4] = Default::default();
    let mut compare_rounds = Vec::new();
    let reads_only = std::env::var("BENCH_READS_ONLY").is_ok_and(|v| v == "1");
    // `BENCH_SKIP=api_key,list` (reads only): leave those cases out, so that the hub under
    // test serves nothing but the JWT read (as the compare hub does).
    let skip: Vec<String> = std::env::var("BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !skip.is_empty() && !reads_only {
        bail!("BENCH_SKIP needs BENCH_READS_ONLY=1 (the full table has every case)");
    }
    for round in 0..bench.rounds {
        // The other binary's read runs next to this one's JWT read, before it in even rounds
        // and after it in odd ones, so that neither has the better place in the round. (The
        // compare hub still measures up to 20 % better when the hub under test also serves the
        // list case: `BENCH_SKIP=list`; docs/performance.md, item 13.)
        let compare = |rounds: &mut Vec<Wrk>| -> anyhow::Result<()> {
            if let Some((other, url)) = &other {
                let pid = Some(other.pid());
                rounds.push(bench.round("compare", round, url, &user, None, c, pid)?);
            }
            Ok(())
        };
        for (i, (case, url, headers, pid)) in cases.iter().enumerate() {
            if skip.iter().any(|s| s == case) {
                continue;
            }
            if i == 0 && round % 2 == 0 {
                compare(&mut compare_rounds)?;
            }
            rounds[i].push(bench.round(case, round, url, headers, None, c, *pid)?);
            if i == 0 && round % 2 == 1 {
                compare(&mut compare_rounds)?;
            }
        }
    }
    if reads_only {
        // Trying a change: the reads' ratios and CPU per request, nothing else.
        let [jwt, key, list, bare] = &rounds;
        for (case, r, base, base_name) in [
            ("jwt", jwt, bare, "bare"),
            ("api_key", key, jwt, "jwt"),
            ("list", list, bare, "bare"),
            ("bare", bare, bare, "bare"),
        ] {
            if r.is_empty() || base.is_empty() {
                continue;
            }
            let (run, cpu) = (median_run(r), median_cpu(r));
            println!(
                "{case}: {:.0} req/s, p99 {:.1} ms, {:.2}× ({}), CPU {:.0} + {:.0} µs",
                run.rate,
                run.p99_ms,
                paired_ratio(r, base),
                base_name,
                cpu.map_or(0.0, |c| c.server),
                cpu.map_or(0.0, |c| c.postgres)
            );
        }
        if !compare_rounds.is_empty() {
            let (run, cpu) = (median_run(&compare_rounds), median_cpu(&compare_rounds));
            println!(
                "jwt of BENCH_COMPARE: {:.0} req/s, p99 {:.1} ms, {:.2}× this jwt, {:.2}× bare, CPU {:.0} + {:.0} µs",
                run.rate,
                run.p99_ms,
                paired_ratio(&compare_rounds, jwt),
                paired_ratio(&compare_rounds, bare),
                cpu.map_or(0.0, |c| c.server),
                cpu.map_or(0.0, |c| c.postgres)
            );
        }
        return Ok(());
    }
    // Writes: `POST /api/v1/agents` without and with an `Idempotency-Key` (a new one per
    // request), interleaved in rounds like the reads: the ratio is what keeping the answer for
    // retries costs a write.
    let write_script = |round: u64, keyed: bool| -> anyhow::Result<PathBuf> {
        let path = work.join(format!("create-{round}-{keyed}.lua"));
        let key = if keyed {
            format!("headers[\"Idempotency-Key\"] = \"r{round}-\" .. id .. \"-\" .. n")
        } else {
            String::new()
        };
        std::fs::write(
            &path,
            format!(
                "local threads = 0\nfunction setup(thread)\n  threads = threads + 1\n  thread:set(\"id\", threads)\nend\n\
                 local n = 0\nrequest = function()\n  n = n + 1\n\
                 local headers = {{[\"Authorization\"] = \"{bearer}\", [\"X-Account-ID\"] = \"bench\", [\"Content-Type\"] = \"application/json\"}}\n\
                 {key}\n  return wrk.format(\"POST\", \"/api/v1/agents\", headers, '{{\"name\": \"Load\"}}')\nend\n"
            ),
        )?;
        Ok(path)
    };
    // How many connections the hub holds to the account's database after the reads (its
    // elastic pool) against the bare baseline's 16: more backends, more switching on two cores.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench' AND application_name <> 'pgbench'",
    )
    .fetch_one(&pool)
    .await?;
    eprintln!("connections to the account's database after the reads (hub + bare): {held}");
    let mut write_rounds: [Vec<Wrk>; 2] = Default::default();
    for round in 0..bench.rounds {
        for (i, keyed) in [false, true].into_iter().enumerate() {
            let script = write_script(round, keyed)?;
            let case = if keyed { "create_keyed" } else { "create" };
            write_rounds[i].push(bench.round(
                case,
                round,
                &list_url,
                &[],
                Some(&script),
                c,
                Some(hub.pid()),
            )?);
        }
    }
    let [create_rounds, keyed_rounds] = &write_rounds;
    let errors: u64 = rounds
        .iter()
        .chain(&write_rounds)
        .flatten()
        .map(|w| w.errors)
        .sum();
    let (create, create_keyed) = (median_run(create_rounds), median_run(keyed_rounds));
    let [jwt_rounds, key_rounds, list_rounds, bare_rounds] = &rounds;
    let (jwt, key, list, bare_run) = (
        median_run(jwt_rounds),
        median_run(key_rounds),
        median_run(list_rounds),
        median_run(bare_rounds),
    );

    // pgbench on the hub's own query for one agent.
    let select = format!(
        "{} WHERE a.id = '{agent_id}';\n",
        kataven_hub::agents::store::SELECT_AGENTS.trim()
    );
    let select_script = work.join("select.sql");
    std::fs::write(&select_script, select.replace('\n', " ") + "\n")?;
    let pgbench_tps = bench.pgbench(pg, pg_bin, "bench", &select_script, 16, false)?;
    let trivial_script = work.join("trivial.sql");
    std::fs::write(&trivial_script, "SELECT 1;\n")?;
    let pgbench_c = bench.pgbench(pg, pg_bin, "bench", &trivial_script, storm_clients, true)?;

    // The storm: every request to another account, over a budget far below the accounts.
    let lua = work.join("storm.lua");
    let accounts_lua: Vec<String> = storm.iter().map(|s| format!("\"{s}\"")).collect();
    std::fs::write(
        &lua,
        format!(
            "local accounts = {{{}}}\nlocal i = math.random(#accounts)\nrequest = function()\n  i = i % #accounts + 1\n  return wrk.format(\"GET\", \"/api/v1/agents\", {{[\"X-Account-ID\"] = accounts[i], [\"Authorization\"] = \"{bearer}\"}})\nend\n",
            accounts_lua.join(", ")
        ),
    )?;
    let storm_run = bench.wrk(
        "storm",
        &format!("{storm_url}/api/v1/agents"),
        &[],
        Some(&lua),
        storm_clients,
        Some(storm_hub.pid()),
    )?;

    // The first request to each of many freshly provisioned accounts (a cold pool each).
    let mut cold = Vec::new();
    let mut slugs = Vec::new();
    for i in 0..cold_accounts {
        let slug = AccountSlug::parse(&format!("cold-{i:04}"))?;
        provisioner
            .create_account(&slug, "Cold", None, None)
            .await?;
        provisioner
            .catalog()
            .upsert_member(&slug, &subject, Role::Member)
            .await?;
        slugs.push(slug);
    }
    for slug in &slugs {
        let started = Instant::now();
        client
            .get(format!("{hub_url}/api/v1/agents"))
            .header("Authorization", &bearer)
            .header("X-Account-ID", slug.as_str())
            .send()
            .await?
            .error_for_status()?;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    cold.sort_by(f64::total_cmp);
    // The same without the hub: PostgreSQL's first connection to a freshly created database
    // and the list query on it (the floor under the hub's cold first request).
    let mut raw = Vec::new();
    for i in 0..cold_accounts {
        let slug = AccountSlug::parse(&format!("raw-{i:04}"))?;
        provisioner.create_account(&slug, "Raw", None, None).await?;
        let list = format!(
            "{} ORDER BY a.created_at DESC, a.id DESC",
            kataven_hub::agents::store::SELECT_AGENTS.trim()
        );
        let started = Instant::now();
        let mut conn = PgConnectOptions::from_str(&pg.url(slug.as_str()))?
            .connect()
            .await?;
        sqlx::query(&list).fetch_all(&mut conn).await?;
        raw.push(started.elapsed().as_secs_f64() * 1000.0);
        sqlx::Connection::close(conn).await?;
    }
    raw.sort_by(f64::total_cmp);

    let ratio = |a: f64, b: f64| a / b;
    rows.push(Row {
        case: "hub `GET /api/v1/agents/{id}`, JWT".into(),
        rate: Some(jwt.rate),
        unit: "req/s",
        p50_ms: Some(jwt.p50_ms),
        p99_ms: Some(jwt.p99_ms),
        ratio: Some((paired_ratio(jwt_rounds, bare_rounds), "× bare")),
        cpu: median_cpu(jwt_rounds),
        note: "target ≥ 1.0× bare".into(),
    });
    rows.push(Row {
        case: "hub `GET /api/v1/agents/{id}`, `sk_live_` key".into(),
        rate: Some(key.rate),
        unit: "req/s",
        p50_ms: Some(key.p50_ms),
        p99_ms: Some(key.p99_ms),
        ratio: Some((paired_ratio(key_rounds, jwt_rounds), "× JWT")),
        cpu: median_cpu(key_rounds),
        note: "target ≥ 1.0× JWT".into(),
    });
    rows.push(Row {
        case: "hub `GET /api/v1/agents` (20 agents), JWT".into(),
        rate: Some(list.rate),
        unit: "req/s",
        p50_ms: Some(list.p50_ms),
        p99_ms: Some(list.p99_ms),
        ratio: Some((paired_ratio(list_rounds, bare_rounds), "× bare")),
        cpu: median_cpu(list_rounds),
        note: String::new(),
    });
    rows.push(Row {
        case: "hub `POST /api/v1/agents`, JWT".into(),
        rate: Some(create.rate),
        unit: "req/s",
        p50_ms: Some(create.p50_ms),
        p99_ms: Some(create.p99_ms),
        cpu: median_cpu(create_rounds),
        ..Row::default()
    });
    rows.push(Row {
        case: "the same with an `Idempotency-Key` (a new one per request)".into(),
        rate: Some(create_keyed.rate),
        unit: "req/s",
        p50_ms: Some(create_keyed.p50_ms),
        p99_ms: Some(create_keyed.p99_ms),
        ratio: Some((paired_ratio(keyed_rounds, create_rounds), "× without")),
        cpu: median_cpu(keyed_rounds),
        note: "the cost of keeping the answer".into(),
    });
    rows.push(Row {
        case: "bare axum + sqlx (`PgPool` of 16), same query".into(),
        rate: Some(bare_run.rate),
        unit: "req/s",
        p50_ms: Some(bare_run.p50_ms),
        p99_ms: Some(bare_run.p99_ms),
        ratio: Some((1.0, "× bare")),
        cpu: median_cpu(bare_rounds),
        note: String::new(),
    });
    rows.push(Row {
        case: "`pgbench`, the same query, 16 clients, prepared".into(),
        rate: Some(pgbench_tps),
        unit: "tps",
        ratio: Some((ratio(pgbench_tps, bare_run.rate), "× bare")),
        ..Row::default()
    });
    rows.push(Row {
        case: format!(
            "storm: {storm_accounts} accounts, budget {storm_budget}, {storm_clients} clients, `GET /api/v1/agents`"
        ),
        rate: Some(storm_run.rate),
        unit: "req/s",
        p50_ms: Some(storm_run.p50_ms),
        p99_ms: Some(storm_run.p99_ms),
        ratio: Some((ratio(storm_run.rate, pgbench_c), "× pgbench -C")),
        cpu: storm_run.cpu_us,
        note: "target ≥ 0.7× pgbench -C".into(),
    });
    rows.push(Row {
        case: format!("`pgbench -C` (a new connection per query), {storm_clients} clients"),
        rate: Some(pgbench_c),
        unit: "tps",
        ..Row::default()
    });
    rows.push(Row {
        case: format!("cold first request of a provisioned account ({cold_accounts} accounts)"),
        p50_ms: Some(percentile(&cold, 0.5)),
        p99_ms: Some(percentile(&cold, 0.99)),
        note: "target p99 ≤ 20 ms".into(),
        ..Row::default()
    });
    rows.push(Row {
        case: format!(
            "PostgreSQL alone: first connection to a fresh database + the list query ({cold_accounts} databases)"
        ),
        p50_ms: Some(percentile(&raw, 0.5)),
        p99_ms: Some(percentile(&raw, 0.99)),
        ..Row::default()
    });

    let mut memory_rows = BTreeMap::new();
    if memory {
        memory_rows = measure_memory(
            &provisioner,
            &hasher,
            &subject,
            &client,
            &hub_url,
            &bearer,
            &agent_id,
            hub.pid(),
        )
        .await?;
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    println!(
        "\nOne run, {} s per case, wrk {} threads × {} connections, on {} ({} cores); {}.\n",
        bench.secs,
        bench.threads,
        bench.connections,
        cpu,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!("| case | rate | p50 | p99 | ratio | CPU per request: server + PostgreSQL | target |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let f =
            |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.case,
            row.rate
                .map_or("–".to_owned(), |r| format!("{r:.0} {}", row.unit)),
            f(row.p50_ms, 2) + if row.p50_ms.is_some() { " ms" } else { "" },
            f(row.p99_ms, 2) + if row.p99_ms.is_some() { " ms" } else { "" },
            row.ratio
                .map_or("–".to_owned(), |(r, what)| format!("{r:.2}{what}")),
            row.cpu.map_or("–".to_owned(), |c| format!(
                "{:.0} + {:.0} µs",
                c.server, c.postgres
            )),
            row.note
        );
    }
    for (what, value) in &memory_rows {
        println!("| {what} | {value} | | | | | |");
    }
    if errors > 0 || storm_run.errors > 0 {
        println!(
            "\nWARNING: {} non-2xx answers or socket errors during the runs (see {}/*.log)",
            errors + storm_run.errors,
            work.display()
        );
    }
    drop((hub, storm_hub, bare));
    Ok(())
}

/// RSS of the hub with 2,000 accounts' pools opened once (and idle), and with 100,000 cached
/// credentials (each used once to read `agent_id`: by then the write cases have given the
/// bench account tens of thousands of agents, and listing them all would take seconds).
#[allow(clippy::too_many_arguments)]
async fn measure_memory(
    provisioner: &Provisioner,
    hasher: &KeyHasher,
    subject: &str,
    client: &reqwest::Client,
    hub_url: &str,
    bearer: &str,
    agent_id: &str,
    pid: u32,
) -> anyhow::Result<BTreeMap<String, String>> {
    use futures::StreamExt;
    let mut rows = BTreeMap::new();
    let before = rss_kb(pid);
    let slugs: Vec<AccountSlug> = (0..2_000)
        .map(|i| AccountSlug::parse(&format!("mem-{i:05}")).unwrap())
        .collect();
    futures::stream::iter(slugs.iter())
        .map(|slug| async move {
            provisioner.create_account(slug, "Mem", None, None).await?;
            provisioner
                .catalog()
                .upsert_member(slug, subject, Role::Member)
                .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    futures::stream::iter(slugs.iter())
        .map(|slug| async move {
            client
                .get(format!("{hub_url}/api/v1/agents"))
                .header("Authorization", bearer)
                .header("X-Account-ID", slug.as_str())
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pools = rss_kb(pid);
    rows.insert(
        "memory: RSS after 2,000 accounts' first requests (pools opened, then idle)".into(),
        format!("{} MB (was {} MB)", pools / 1024, before / 1024),
    );

    // 100,000 API keys of one account, each used once: the key cache is full.
    let pool = provisioner.catalog().pool();
    let keys: Vec<String> = (0..100_000).map(|_| hasher.new_api_key("bench")).collect();
    for chunk in keys.chunks(5_000) {
        let hashes: Vec<Vec<u8>> = chunk.iter().map(|k| hasher.hash(k).to_vec()).collect();
        sqlx::query(
            "INSERT INTO api_keys (id, account, name, key_hash, last8, created_by, tagged)
             SELECT gen_random_uuid(), 'bench', 'mem', h, 'memkey00', 'bench', true
             FROM unnest($1::bytea[]) AS h",
        )
        .bind(&hashes)
        .execute(pool)
        .await?;
    }
    futures::stream::iter(keys.iter())
        .map(|key| async move {
            client
                .get(format!("{hub_url}/api/v1/agents/{agent_id}"))
                .header("Authorization", format!("Bearer {key}"))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys_rss = rss_kb(pid);
    rows.insert(
        "memory: RSS after 100,000 distinct API keys were used once (key cache full)".into(),
        format!("{} MB", keys_rss / 1024),
    );
    Ok(rows)
}
