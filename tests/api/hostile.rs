//! Hostile traffic: what a stranger, without any credentials, can make the service hold on to.
//!
//! The flood runs in a process of its own (this test binary, started again for one ignored
//! test), so that its memory figures are not blurred by the other tests running alongside.

use std::process::Command;
use std::time::Instant;

use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::TestApp;

const FLOOD_REQUESTS: usize = 10_000;
const FLOOD_CONNECTIONS: usize = 8;
/// Longest random method, in bytes.
const MAX_METHOD_LEN: usize = 3_000;
/// How much the `/metrics` answer may grow during the flood (counts get more digits).
const METRICS_GROWTH_MAX: usize = 4 * 1024;
/// How much the process may grow during the flood. Generous: allocator arenas, connection
/// buffers and the runtime's threads move by a few MB; the bug grew it by hundreds.
const RSS_GROWTH_MAX_KIB: u64 = 20 * 1024;
const CHILD_ENV: &str = "KATAVEN_HOSTILE_FLOOD_CHILD";

/// Characters of an HTTP token (RFC 9110 `tchar`): anything hyper accepts as a method.
const TCHAR: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_method(rng: &mut impl Rng) -> String {
    // A unique prefix, so that no random method is a standard one.
    let len = rng.random_range(1..=MAX_METHOD_LEN);
    let mut method = format!("X{}", Alphanumeric.sample_string(rng, 12));
    method.extend((0..len).map(|_| TCHAR[rng.random_range(0..TCHAR.len())] as char));
    method
}

fn random_path(rng: &mut impl Rng) -> String {
    let unique = Alphanumeric.sample_string(rng, 24);
    match rng.random_range(0..6) {
        0 => format!("/{unique}"),
        1 => format!("/hub-api/api/v1/{unique}/x"),
        2 => format!("/api/v1/agents/{unique}"),
        3 => format!("/hub-api/api/accounts/validate/{unique}"),
        4 => format!("/{unique}?q={}", Alphanumeric.sample_string(rng, 16)),
        _ => format!("/api/{}/{unique}", "deep/".repeat(rng.random_range(1..20))),
    }
}

/// The resident set of this process, in KiB.
fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// One HTTP/1.1 request on a kept-alive connection; the response status.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
) -> std::io::Result<u16> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: hub\r\nContent-Length: 0\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut status = 0;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some(rest) = trimmed.strip_prefix("HTTP/1.1 ") {
            status = rest[..3].parse().unwrap_or(0);
        } else if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(status)
}

async fn connect(app: &TestApp) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(app.addr).await.expect("connect"))
}

async fn metrics_body(app: &TestApp) -> String {
    app.get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// 10,000 requests with unique random methods (valid tokens, up to 3 KB) and unique random
/// paths leave `/metrics` and the process's memory where they were.
#[test]
fn a_flood_of_random_methods_and_paths_leaves_metrics_and_memory_bounded() {
    let exe = std::env::current_exe().expect("test binary");
    let output = Command::new(exe)
        .args([
            "hostile::flood_in_own_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the flood");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The numbers, for the record (shown with --nocapture).
    for line in stdout
        .lines()
        .filter_map(|l| l.find("flood:").map(|at| &l[at..]))
    {
        println!("{line}");
    }
    assert!(
        output.status.success(),
        "the flood failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the flood did not run:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a process of its own by a_flood_of_random_methods_and_paths_leaves_metrics_and_memory_bounded"]
async fn flood_in_own_process() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run through a_flood_of_random_methods_and_paths_leaves_metrics_and_memory_bounded"
    );
    let app = TestApp::spawn().await;

    // Warm up: one request of every kind the flood sends, so that the series it may create
    // legitimately (method `other` on each route it reaches) exist before the first count.
    let mut conn = connect(&app).await;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let path = random_path(&mut rng);
        exchange(&mut conn, "XWARMUP", &path).await.unwrap();
    }
    // Twice: the first scrape creates the series of `GET /metrics` itself.
    metrics_body(&app).await;
    let metrics_before = metrics_body(&app).await.len();
    let rss_before = vm_rss_kib();

    let started = Instant::now();
    let per_connection = FLOOD_REQUESTS / FLOOD_CONNECTIONS;
    let mut tasks = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let mut conn = connect(&app).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::from_rng(&mut rand::rng());
            // A sample of what was sent, to look for in the metrics afterwards.
            let mut sample = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            let mut sent_bytes = 0usize;
            for i in 0..per_connection {
                let method = random_method(&mut rng);
                let path = random_path(&mut rng);
                sent_bytes += method.len() + path.len();
                let status = exchange(&mut conn, &method, &path)
                    .await
                    .expect("the server answers");
                *statuses.entry(status).or_default() += 1;
                if i % 50 == 0 {
                    sample.push((method, path));
                }
            }
            (sample, statuses, sent_bytes)
        }));
    }
    let mut sample = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut sent_bytes = 0;
    for task in tasks {
        let (s, st, bytes) = task.await.unwrap();
        sample.extend(s);
        for (status, n) in st {
            *statuses.entry(status).or_default() += n;
        }
        sent_bytes += bytes;
    }
    let elapsed = started.elapsed();
    let rss_after = vm_rss_kib();
    let metrics = metrics_body(&app).await;

    println!(
        "flood: {FLOOD_REQUESTS} requests ({} KiB of methods and paths) in {:.1} s, statuses {statuses:?}",
        sent_bytes / 1024,
        elapsed.as_secs_f64()
    );
    println!(
        "flood: VmRSS {rss_before} KiB before, {rss_after} KiB after ({:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    println!(
        "flood: /metrics {metrics_before} bytes before, {} bytes after ({:+} bytes)",
        metrics.len(),
        metrics.len() as i64 - metrics_before as i64
    );

    assert_eq!(
        statuses.values().sum::<usize>(),
        per_connection * FLOOD_CONNECTIONS
    );
    assert!(
        metrics.len() < metrics_before + METRICS_GROWTH_MAX,
        "/metrics grew from {metrics_before} to {} bytes",
        metrics.len()
    );
    for (method, path) in &sample {
        let path = path.split('?').next().unwrap();
        assert!(
            !metrics.contains(&method[..13]),
            "a method reached /metrics"
        );
        assert!(
            !metrics.contains(path),
            "a raw path reached /metrics: {path}"
        );
    }
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    assert!(
        rss_after < rss_before + RSS_GROWTH_MAX_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
