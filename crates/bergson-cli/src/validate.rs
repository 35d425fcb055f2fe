//! `bergson validate`.

use bergson::config::ValidateConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson validate`: Bergson's `Validate` config plus how to run it.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: ValidateConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson validate`.
pub fn run(config: &ValidateConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::validate::validate(config, opts.device)?;
    if !runtime.quiet {
        for line in &summary.report {
            eprintln!("{line}");
        }
        for p in &summary.outputs {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}
