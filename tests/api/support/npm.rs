//! The npm packages of the browser and typed-client tests (`tests/browser`, `tests/client`),
//! installed on first use like cargo fetches crates: `npm ci` from the committed lock file when
//! `node_modules` is missing or older than the lock file, once per directory and test run.
//! So `cargo test` needs no set-up step of its own beyond Node.js; without network or npm the
//! tests that need the packages say what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Installs the packages of `dir` if need be. `Err` carries what npm said.
pub fn ensure_installed(dir: &Path) -> Result<(), String> {
    static DONE: OnceLock<Mutex<HashMap<PathBuf, Result<(), String>>>> = OnceLock::new();
    // One install per directory at a time: tests run in parallel threads.
    let mut done = DONE.get_or_init(Default::default).lock().unwrap();
    if let Some(result) = done.get(dir) {
        return result.clone();
    }
    let result = if is_current(dir) {
        Ok(())
    } else {
        install(dir)
    };
    done.insert(dir.to_owned(), result.clone());
    result
}

/// `node_modules` was installed from the current lock file (npm writes its own copy,
/// `node_modules/.package-lock.json`, at install time).
fn is_current(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(dir.join("node_modules/.package-lock.json")),
        modified(dir.join("package-lock.json")),
    ) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    }
}

fn install(dir: &Path) -> Result<(), String> {
    eprintln!("npm ci --prefix {} (first use)", dir.display());
    let out = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(dir)
        .output()
        .map_err(|e| format!("npm: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "npm ci --prefix {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
