//! `bergson ekfac`.

use bergson::config::EkfacRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson ekfac`: Bergson's config plus how to run it (not saved in config.yaml).
#[derive(Debug, Args)]
pub struct EkfacArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: EkfacRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson ekfac`.
pub fn run(config: EkfacRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::recipes::ekfac::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
