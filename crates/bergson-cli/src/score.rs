//! `bergson score`.

use bergson::config::ScoreRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson score`: Bergson's config plus how to run it (not saved in config.yaml).
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: ScoreRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson score`.
pub fn run(config: ScoreRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::score::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
