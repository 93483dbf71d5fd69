//! A PostgreSQL cluster of a test's own, and the faults a test injects into it: a restart, a
//! crash (`SIGKILL`), a freeze (`SIGSTOP`, as in a network partition) and a server full of
//! someone else's connections.

use std::str::FromStr;
use std::time::Duration;

use kataven_hub::tenancy::embedded_pg::EmbeddedPostgres;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use super::cluster::start_cluster;

pub struct FaultCluster {
    pub pg: EmbeddedPostgres,
}

impl FaultCluster {
    /// A cluster that keeps every acknowledged commit through a crash of its processes
    /// (`synchronous_commit` on; `fsync` may stay off: the kernel survives a process kill).
    pub fn start(max_connections: u32) -> Self {
        let max_connections = max_connections.to_string();
        let pg = start_cluster(&[
            ("fsync", "off"),
            ("synchronous_commit", "on"),
            ("full_page_writes", "off"),
            ("max_connections", &max_connections),
            ("superuser_reserved_connections", "0"),
            ("shared_buffers", "'32MB'"),
        ]);
        Self { pg }
    }

    pub fn url(&self, database: &str) -> String {
        self.pg.url(database)
    }

    pub async fn connect(&self, database: &str) -> sqlx::Result<PgConnection> {
        PgConnectOptions::from_str(&self.url(database))
            .unwrap()
            .connect()
            .await
    }

    /// `pg_ctl stop -m fast`: sessions are terminated (`57P01`), the server stops cleanly.
    pub fn stop(&self) {
        self.pg.stop_with("fast").expect("stop the server");
    }

    /// Starts the server again on its port; returns once it accepts connections.
    pub fn start_again(&self) {
        self.pg.start_again().expect("start the server again");
    }

    /// `SIGKILL` to the postmaster and every backend: no goodbye to any client, crash recovery
    /// at the next start.
    pub fn kill(&self) {
        let postmaster = self.postmaster();
        let processes = self.processes();
        // The postmaster first: killed children alone would make it restart them.
        for pid in processes.iter().rev() {
            signal(*pid, libc::SIGKILL);
        }
        for _ in 0..500 {
            if processes.iter().all(|pid| !alive(*pid)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            processes.iter().all(|pid| !alive(*pid)),
            "PostgreSQL processes survived SIGKILL"
        );
        // A dead postmaster that nobody has reaped yet (a zombie) still answers `kill(pid, 0)`,
        // which is how the next postmaster decides that the lock file is not stale. It holds
        // nothing any more: remove the lock file, as an operator would.
        if exists(postmaster) {
            std::fs::remove_file(self.pg.root().join("data").join("postmaster.pid"))
                .expect("remove the stale postmaster.pid");
        }
    }

    /// `SIGSTOP` to the postmaster and every backend: connections stay open and nothing
    /// answers, as in a network partition.
    pub fn freeze(&self) {
        let postmaster = self.postmaster();
        // The postmaster first, so that it forks nothing while its children are stopped.
        signal(postmaster, libc::SIGSTOP);
        for pid in children(postmaster) {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// `SIGCONT` to every process stopped by [`Self::freeze`].
    pub fn thaw(&self) {
        let postmaster = self.postmaster();
        for pid in children(postmaster) {
            signal(pid, libc::SIGCONT);
        }
        signal(postmaster, libc::SIGCONT);
    }

    fn postmaster(&self) -> i32 {
        self.pg.postmaster_pid().expect("postmaster.pid")
    }

    /// The postmaster's children, then the postmaster.
    fn processes(&self) -> Vec<i32> {
        let postmaster = self.postmaster();
        let mut all = children(postmaster);
        all.push(postmaster);
        all
    }
}

/// Thaws the cluster if the test ends (or panics) while it is frozen.
pub struct ThawOnDrop<'a>(pub &'a FaultCluster);

impl Drop for ThawOnDrop<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// One backend process stopped (`SIGSTOP`) until dropped: meanwhile it answers nothing (a
/// round trip on its connection waits) and handles no signal (a `DROP DATABASE … WITH (FORCE)`
/// waits for it to exit).
pub struct StoppedBackend(i32);

impl StoppedBackend {
    /// Stops the longest-connected backend of `database` (looked up through `conn`).
    pub async fn of(conn: &mut PgConnection, database: &str) -> Self {
        let pid: i32 = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 ORDER BY backend_start LIMIT 1",
        )
        .bind(database)
        .fetch_one(conn)
        .await
        .expect("a backend connected to the database");
        signal(pid, libc::SIGSTOP);
        Self(pid)
    }
}

impl Drop for StoppedBackend {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `kill(pid, 0)` finds the process (zombies included).
fn exists(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn alive(pid: i32) -> bool {
    // A zombie is gone for our purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|(state, _)| state != "Z"),
        Err(_) => false,
    }
}

/// `(state, parent pid)` from a `/proc/<pid>/stat` line (the command name may hold spaces
/// and parentheses, so fields are counted from its closing parenthesis).
fn stat_fields(stat: &str) -> Option<(&str, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The processes whose parent is `parent`.
fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat).map(|(_, p)| p))
                == Some(parent)
        })
        .collect()
}
