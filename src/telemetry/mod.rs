//! Log set-up: `tracing` with pretty or JSON output, filtered by `RUST_LOG`.
//!
//! Lines are written to stderr by a background thread (`tracing-appender`), not by the request
//! that logs them: a write system call per request line was the largest single cost of a cheap
//! request (see `docs/performance.md`). The buffer is not lossy: when it is full, logging waits.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub(crate) mod json;

/// Flushes the buffered log lines when dropped: keep it alive until the process ends.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

pub fn init(format: LogFormat) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("kataven-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        // The same shape as `tracing-subscriber`'s JSON format, at a fraction of its cost.
        LogFormat::Json => builder
            .fmt_fields(json::JsonFields)
            .event_format(json::JsonLine)
            .try_init(),
    };
    guard
}

/// A log output the tests read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl CapturedLog {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}
