//! One throwaway PostgreSQL cluster per test run, started from the installed server binaries.
//!
//! A watchdog process stops the cluster and removes its directory when the test process is
//! gone, however it ended (success, panic, kill).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kataven_hub::tenancy::embedded_pg::{self, EmbeddedPostgres};

pub struct Cluster {
    pub pg: EmbeddedPostgres,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
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
        let pg = EmbeddedPostgres::start(
            &root,
            bin.clone(),
            &[
                // Durability is irrelevant for a throwaway cluster; speed is not.
                ("fsync", "off"),
                ("synchronous_commit", "off"),
                ("full_page_writes", "off"),
                ("max_connections", "400"),
                ("shared_buffers", "'64MB'"),
            ],
        )
        .expect("start the test PostgreSQL cluster");
        spawn_watchdog(&root, &bin);
        Cluster { pg }
    })
}

fn spawn_watchdog(root: &std::path::Path, bin: &std::path::Path) {
    let as_postgres = if unsafe { libc::geteuid() } == 0 {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the cluster watchdog");
}
