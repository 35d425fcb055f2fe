//! `bergson magic`.

use bergson::config::MagicConfig;
use clap::Args;

use crate::build::{as_rank_shared, install_interrupt_handler, run_options, RuntimeArgs};
use bergson::config::run_file::Step;

/// Flags of `bergson magic`: Bergson's `MagicConfig` plus how to run it.
#[derive(Debug, Args)]
pub struct MagicArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: MagicConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Bergson spells the training set's flags `--data.dataset`, `--data.split`, ... in `magic`
/// and `validate`
/// (its parser prefixes them next to `--query.*`); ours are `--dataset`, `--split`, ...:
/// both spellings are taken.
pub fn python_flag_spellings(argv: Vec<String>) -> Vec<String> {
    if !matches!(argv.get(1).map(String::as_str), Some("magic" | "validate")) {
        return argv;
    }
    argv.into_iter()
        .map(|a| match a.strip_prefix("--data.") {
            Some(rest) => format!("--{rest}"),
            None => a,
        })
        .collect()
}

/// Runs `bergson magic`.
/// In this process, as one rank of a job (`WORLD_SIZE` set by torchrun or our launcher), or,
/// with `--nproc_per_node N`, as the launcher of N data-parallel workers.
pub fn run(config: &MagicConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    use bergson::dist::{self, launch::Role};
    let role = dist::launch::role(&config.train.distributed).map_err(bergson::Error::from)?;
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = match role {
        Role::Launcher(node) => {
            bergson::magic::check_magic_config(config)?;
            let step = Step::Magic(Box::new(config.clone()));
            let program = std::env::current_exe()?;
            dist::launch::run_step(&program, &step, &runtime.flags(), &node)?;
            return Ok(());
        }
        Role::Worker => {
            match as_rank_shared(|group| bergson::magic::magic_in(config, opts.device, group))? {
                Some(summary) => summary,
                None => return Ok(()),
            }
        }
        Role::Single => bergson::magic::magic(config, opts.device)?,
    };
    if !runtime.quiet {
        eprintln!(
            "trained {} steps and differentiated the query loss ({:.6}) through them: scores of shape {:?} in {}",
            summary.num_steps,
            summary.query_loss,
            summary.scores.size(),
            summary.scores_path.display()
        );
        eprintln!(
            "time: training {:.2} s, query {:.2} s, backward {:.2} s",
            summary.train_seconds, summary.query_seconds, summary.backward_seconds
        );
    }
    Ok(())
}
