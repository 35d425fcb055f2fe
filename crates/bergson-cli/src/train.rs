//! `bergson train`.

use bergson::config::TrainingConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson train`: Bergson's `TrainingConfig` plus how to run it.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: TrainingConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson train`.
pub fn run(config: TrainingConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::train::train(&config, opts.device)?;
    if !runtime.quiet {
        let last = summary
            .losses
            .last()
            .map_or("no step taken".to_string(), |(i, l)| {
                format!("loss {l:.6} at step {i}")
            });
        eprintln!(
            "trained {} steps into {} ({last})",
            summary.num_steps,
            summary.run_path.display()
        );
    }
    Ok(())
}
