//! `bergson trackstar`.

use bergson::config::TrackstarRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson trackstar`: Bergson's config plus how to run it (not saved in
/// config.yaml).
#[derive(Debug, Args)]
pub struct TrackstarArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: TrackstarRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson trackstar`.
pub fn run(config: TrackstarRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::recipes::trackstar::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
