//! `bergson hessian`.

use bergson::config::HessianRunConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson hessian`: Bergson's config plus how to run it (not saved in config.yaml).
#[derive(Debug, Args)]
pub struct HessianArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: HessianRunConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson hessian`.
pub fn run(config: HessianRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::hessians::run(&config, &opts)?;
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
