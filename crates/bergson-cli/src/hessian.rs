//! `bergson hessian`.

use bergson::config::run_file::Step;
use bergson::config::HessianRunConfig;
use clap::Args;

use crate::build::{as_rank, install_interrupt_handler, run_options, RuntimeArgs};

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

/// Runs `bergson hessian`: in this process, as one rank of a job (`WORLD_SIZE` set by torchrun
/// or our launcher), or, with `--nproc_per_node N`, as the launcher of N workers.
pub fn run(config: HessianRunConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    use bergson::dist::{self, launch::Role};
    let role = dist::launch::role(&config.index_cfg.distributed).map_err(bergson::Error::from)?;
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = match role {
        Role::Launcher(node) => {
            let step = Step::Hessian(Box::new(config));
            let program = std::env::current_exe()?;
            dist::launch::run_step(&program, &step, &runtime.flags(), &node)?;
            return Ok(());
        }
        Role::Worker => match as_rank(|c| bergson::hessians::run_in(&config, &opts, c))? {
            Some(summary) => summary,
            None => return Ok(()),
        },
        Role::Single => bergson::hessians::run(&config, &opts)?,
    };
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
