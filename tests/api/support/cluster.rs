//! Throwaway PostgreSQL clusters started from the installed server binaries: one shared by
//! the whole test run, and private ones for tests that stop, kill or freeze their server.
//!
//! A watchdog process stops a cluster and removes its directory when the test process is
//! gone, however it ended (success, panic, kill).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kataven_hub::tenancy::embedded_pg::{self, EmbeddedPostgres};

pub struct Cluster {
    pub pg: EmbeddedPostgres,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster shared by every test that leaves its server alone.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| Cluster {
        pg: start_cluster(&[
            // Durability is irrelevant for a throwaway cluster; speed is not.
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "400"),
            ("shared_buffers", "'64MB'"),
        ]),
    })
}

/// A new cluster of the test's own, stopped and removed when the test process ends.
pub fn start_cluster(settings: &[(&str, &str)]) -> EmbeddedPostgres {
    let bin = embedded_pg::find_bin_dir(
        std::env::var_os("KATAVEN_PG_BIN")
            .as_deref()
            .map(std::path::Path::new),
    )
    .expect("PostgreSQL server binaries");
    let root = tempfile::Builder::new()
        .prefix("kataven-test-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pg = EmbeddedPostgres::start(&root, bin.clone(), settings)
        .expect("start a test PostgreSQL cluster");
    spawn_watchdog(&root, &bin);
    pg
}

fn spawn_watchdog(root: &std::path::Path, bin: &std::path::Path) {
    let as_postgres = if unsafe { libc::geteuid() } == 0 {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         pm=$(head -1 {data}/postmaster.pid 2>/dev/null); \
         if [ -n \"$pm\" ]; then kill -CONT $pm; pkill -CONT -P $pm; fi >/dev/null 2>&1; \
         {as_postgres}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {root}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = root.join("data").display(),
        root = root.display(),
    );
    // Deliberately not waited for: the watchdog must outlive this process.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        // The test's own directory (the checkout) may be one `postgres` cannot enter.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the cluster watchdog");
}
