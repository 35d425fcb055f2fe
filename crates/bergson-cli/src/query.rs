//! `bergson query`.

use bergson::config::QueryConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson query`: Bergson's config plus how to run it.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The session's config (Bergson's flags).
    #[command(flatten)]
    pub config: QueryConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs an interactive query session on standard input and output.
pub fn run(config: QueryConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let interactive = bergson::query::stdin_is_terminal();
    bergson::query::run(&config, &opts, &mut input, interactive, &mut out)?;
    Ok(())
}
