//! `bergson train`.

use bergson::config::{CollectGradientsConfig, TrainingConfig};
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson train`: Bergson's `TrainingConfig` plus how to run it.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: TrainingConfig,
    /// Training-time gradient collection (`--collect_gradients`; not saved in config.yaml).
    #[command(flatten)]
    pub collect: CollectGradientsConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson train` (a run-file step: no gradient collection).
pub fn run(config: TrainingConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    run_collecting(config, None, runtime)
}

/// Runs `bergson train`, collecting training gradients when `collect` asks for them.
pub fn run_collecting(
    config: TrainingConfig,
    collect: Option<&CollectGradientsConfig>,
    runtime: &RuntimeArgs,
) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::train::train_collecting(&config, collect, opts.device)?;
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
