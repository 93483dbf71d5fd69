//! The log lines of the database outage logic, captured for tests that count them.
//!
//! One process-wide subscriber (installed on first use) keeps the lines of
//! `kataven_hub::tenancy::gate` only, which name the database they are about, so tests running
//! at the same time tell theirs apart by it.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Buffer> = OnceLock::new();

/// Starts capturing (if no test did yet).
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("kataven_hub::tenancy::gate=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other global subscriber in the test binary");
        buffer
    });
}

/// The captured lines that contain every one of `needles`.
pub fn lines_with(needles: &[&str]) -> Vec<String> {
    let buffer = LOGS.get().expect("capture() first");
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}
