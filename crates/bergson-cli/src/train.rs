//! `bergson train`.

use bergson::config::{CollectGradientsConfig, TrainingConfig};
use clap::Args;

use crate::build::{as_rank_shared, install_interrupt_handler, run_options, RuntimeArgs};
use bergson::config::run_file::Step;

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
    use bergson::dist::{self, launch::Role};
    let role = dist::launch::role(&config.distributed).map_err(bergson::Error::from)?;
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = match role {
        Role::Launcher(node) => {
            if collect.is_some_and(|c| c.collect_gradients) {
                return Err(bergson::Error::input(
                    "--collect_gradients runs in one process; drop --nproc_per_node, or collect with bergson build on the trained model",
                )
                .into());
            }
            bergson::train::run::check_training_config(&config)?;
            let step = Step::Train(Box::new(config));
            let program = std::env::current_exe()?;
            dist::launch::run_step(&program, &step, &runtime.flags(), &node)?;
            return Ok(());
        }
        Role::Worker => {
            match as_rank_shared(|group| {
                bergson::train::train_in(&config, collect, opts.device, group)
            })? {
                Some(summary) => summary,
                None => return Ok(()),
            }
        }
        Role::Single => bergson::train::train_collecting(&config, collect, opts.device)?,
    };
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
