//! An embedded PostgreSQL cluster started from the installed server binaries.
//!
//! Used by `kataven-hub dev` (cluster in `./.kataven/postgres`, kept between runs) and by the
//! test harness (a throwaway cluster per test run). PostgreSQL refuses to run as root, so when
//! the effective uid is 0 every server command runs as the `postgres` user through `runuser`,
//! in a working directory that user can enter (the cluster's own), and `dev` keeps the cluster
//! where that user can reach it (see [`dev_cluster_dir`]).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

pub const SUPERUSER: &str = "kataven";

/// Where `dev` keeps the clusters of data directories that the `postgres` user cannot reach.
pub const DEV_STATE_ROOT: &str = "/var/lib/kataven-dev";

pub struct EmbeddedPostgres {
    root: PathBuf,
    bin_dir: PathBuf,
    password: String,
    port: u16,
    /// `true` when we started the server (and so stop it); `false` when it was already running.
    started_here: bool,
}

/// Finds the directory holding `initdb` and `pg_ctl`: the configured one, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else whatever `PATH` has.
pub fn find_bin_dir(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = configured {
        return Ok(dir.to_owned());
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .context(
            "no PostgreSQL server binaries found (initdb, pg_ctl): install PostgreSQL \
             (Debian: `apt-get install postgresql`), set KATAVEN_PG_BIN, or set KATAVEN_DATABASE_URL",
        )
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where `dev` keeps the cluster of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDir {
    /// The cluster's directory (what [`EmbeddedPostgres::start`] takes).
    pub path: PathBuf,
    /// `true` when it is outside the data directory, under [`DEV_STATE_ROOT`], because the
    /// `postgres` user cannot reach the data directory; `<data dir>/postgres` links to it.
    pub relocated: bool,
}

/// The cluster directory of `dev` for the (existing) data directory `data_dir`.
///
/// Normally `<data_dir>/postgres`. As root the server runs as the `postgres` user, which
/// cannot reach a data directory below a `0700` directory of root's (root's home, a
/// `mktemp -d`): then the cluster lives in `/var/lib/kataven-dev/<checkout>-<hash>`, named
/// after the directory holding `data_dir` and a hash of `data_dir`'s path, and
/// `<data_dir>/postgres` is made a symbolic link to it. Every later run follows that link (or
/// finds the same hashed directory), so it finds the same cluster. The data directory itself
/// (secrets, widget key) stays where it is, readable by root only.
pub fn dev_cluster_dir(data_dir: &Path) -> anyhow::Result<ClusterDir> {
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let link = data_dir.join("postgres");
    if !running_as_root() {
        return Ok(ClusterDir {
            path: link,
            relocated: false,
        });
    }
    if let Ok(meta) = fs::symlink_metadata(&link) {
        if meta.file_type().is_symlink() {
            // An earlier run placed the cluster elsewhere (or someone pointed it there).
            return Ok(ClusterDir {
                path: fs::read_link(&link)?,
                relocated: true,
            });
        }
    }
    if postgres_can_enter(&data_dir) {
        return Ok(ClusterDir {
            path: link,
            relocated: false,
        });
    }
    let path = Path::new(DEV_STATE_ROOT).join(relocated_name(&data_dir));
    if link.is_dir() {
        if link.join("data").join("PG_VERSION").exists() {
            bail!(
                "{} holds a PostgreSQL cluster that the `postgres` user cannot reach; \
                 move it to {} and make {} a link to it, or remove it",
                link.display(),
                path.display(),
                link.display()
            );
        }
        // What a failed first run left behind (initdb could not reach it): nothing to keep.
        fs::remove_dir_all(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    fs::create_dir_all(DEV_STATE_ROOT).with_context(|| format!("creating {DEV_STATE_ROOT}"))?;
    // Traversable by `postgres` whatever the umask; only root creates entries in it.
    fs::set_permissions(DEV_STATE_ROOT, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink(&path, &link)
        .with_context(|| format!("linking {} to {}", link.display(), path.display()))?;
    Ok(ClusterDir {
        path,
        relocated: true,
    })
}

/// `<name of the directory holding data_dir>-<12 hex digits of the SHA-256 of data_dir>`.
fn relocated_name(data_dir: &Path) -> String {
    let checkout: String = data_dir
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = hex::encode(Sha256::digest(data_dir.as_os_str().as_encoded_bytes()));
    let checkout = if checkout.is_empty() {
        "root".into()
    } else {
        checkout
    };
    format!("{checkout}-{}", &hash[..12])
}

/// Whether the `postgres` user may enter `dir` (search permission on it and every ancestor).
fn postgres_can_enter(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .current_dir("/")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EmbeddedPostgres {
    /// Opens the cluster under `root` (creating it with `initdb` on first use) and starts it.
    /// `settings` are appended to `postgresql.conf` when the cluster is created.
    pub fn start(root: &Path, bin_dir: PathBuf, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = root.canonicalize()?;
        let data = root.join("data");
        let password_file = root.join("superuser-password");

        if !data.join("PG_VERSION").exists() {
            let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
            write_private(&password_file, &password)?;
            if running_as_root() {
                chown_postgres(&root)?;
            }
            let out = run(
                &bin_dir.join("initdb"),
                &root,
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-U".as_ref(),
                    SUPERUSER.as_ref(),
                    "--auth=scram-sha-256".as_ref(),
                    format!("--pwfile={}", password_file.display()).as_ref(),
                    "--encoding=UTF8".as_ref(),
                    "--locale=C".as_ref(),
                    "--no-instructions".as_ref(),
                ],
            )?;
            check(&out, "initdb")?;
            let mut conf = String::from(
                "\n# added by kataven-hub\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n",
            );
            for (k, v) in settings {
                conf.push_str(&format!("{k} = {v}\n"));
            }
            let conf_path = data.join("postgresql.conf");
            let mut existing = fs::read_to_string(&conf_path)?;
            existing.push_str(&conf);
            fs::write(&conf_path, existing)?;
        }
        let password = fs::read_to_string(&password_file)
            .with_context(|| format!("reading {}", password_file.display()))?
            .trim()
            .to_owned();

        let mut pg = Self {
            root,
            bin_dir,
            password,
            port: 0,
            started_here: false,
        };
        if let Some(port) = pg.running_port() {
            // Another process (a second `dev`) already runs this cluster: share it.
            pg.port = port;
            return Ok(pg);
        }
        pg.port = free_port()?;
        pg.pg_ctl_start()?;
        pg.started_here = true;
        Ok(pg)
    }

    /// `pg_ctl start` on [`Self::port`], waiting until the server accepts connections.
    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let data = self.root.join("data");
        let log = self.root.join("postgres.log");
        let out = run(
            &self.bin_dir.join("pg_ctl"),
            &self.root,
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                format!("-p {}", self.port).as_ref(),
                "start".as_ref(),
            ],
        )?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            bail!(
                "pg_ctl start failed: {}\n{}\nlast log lines:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Starts a server of this cluster again, on the same port, after [`Self::stop_with`] or
    /// a crash (fault tests).
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }

    /// The postmaster's process id, from `postmaster.pid` (fault tests).
    pub fn postmaster_pid(&self) -> Option<i32> {
        let pid_file = fs::read_to_string(self.root.join("data").join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// The port of a postmaster already running on this data directory, if any.
    fn running_port(&self) -> Option<u16> {
        let data = self.root.join("data");
        let status = run(
            &self.bin_dir.join("pg_ctl"),
            &self.root,
            &["-D".as_ref(), data.as_os_str(), "status".as_ref()],
        )
        .ok()?;
        if !status.status.success() {
            return None;
        }
        // postmaster.pid: line 4 is the port.
        let pid_file = fs::read_to_string(data.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A connection URL for `database` as the cluster's superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Stops the server if this process started it (fast shutdown: sessions are ended cleanly).
    pub fn stop(&self) -> anyhow::Result<()> {
        if !self.started_here {
            return Ok(());
        }
        self.stop_with("fast")
    }

    /// `pg_ctl stop -m <mode>` (`smart`, `fast` or `immediate`), waiting until it has stopped.
    pub fn stop_with(&self, mode: &str) -> anyhow::Result<()> {
        let data = self.root.join("data");
        let out = run(
            &self.bin_dir.join("pg_ctl"),
            &self.root,
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )?;
        check(&out, "pg_ctl stop")
    }
}

/// Runs a server binary in `cwd` (the cluster's directory: the caller's own working directory
/// may be one the `postgres` user cannot enter), as `postgres` through `runuser` when we are
/// root.
fn run(program: &Path, cwd: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .current_dir(cwd)
        .output()
        .with_context(|| format!("running {}", program.display()))
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a secret readable and writable by its owner only (mode 0600 from the start).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open: make sure it is private too.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn chown_postgres(root: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(root)
        .status()
        .context("running chown")?;
    if !status.success() {
        bail!(
            "chown postgres {} failed: is there a `postgres` user?",
            root.display()
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
