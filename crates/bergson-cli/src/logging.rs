//! Logs through `tracing`, filtered by `RUST_LOG` (default: warnings only, so errors stay the
//! only thing on stderr).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once, and turns the library's progress output off with `--quiet`.
pub fn init(quiet: bool) {
    bergson::progress::set_quiet(quiet);
    let default = if quiet { "error" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
