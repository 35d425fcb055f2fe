//! `bergson lissa`.

use bergson::config::LissaRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson lissa`: Bergson's config plus how to run it (not saved in config.yaml).
#[derive(Debug, Args)]
pub struct LissaArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: LissaRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson lissa`.
pub fn run(config: LissaRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::recipes::lissa::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
