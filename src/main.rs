use clap::Parser;

/// mimalloc rather than the system allocator: glibc's malloc and free were about 15% of the
/// service's CPU under load (see `docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kataven_hub::cli::{self, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before any token is signed or verified.
    kataven_hub::auth::crypto::install();
    let _logs = kataven_hub::telemetry::init(cli.config.log_format);
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            drop(_logs);
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
