//! `bergson trak`.

use bergson::config::TrakRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson trak`: Bergson's config plus how to run it (not saved in config.yaml).
#[derive(Debug, Args)]
pub struct TrakArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: TrakRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson trak`.
pub fn run(config: TrakRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::recipes::trak::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
