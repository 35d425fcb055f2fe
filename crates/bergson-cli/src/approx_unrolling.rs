//! `bergson approxunrolling`.

use bergson::config::ApproxUnrollingRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson approxunrolling`: Bergson's config plus how to run it (not saved in
/// config.yaml).
#[derive(Debug, Args)]
pub struct ApproxUnrollingArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: ApproxUnrollingRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson approxunrolling`.
pub fn run(config: ApproxUnrollingRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::recipes::approx_unrolling::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
