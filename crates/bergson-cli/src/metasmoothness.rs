//! `bergson metasmoothness`.

use bergson::config::MetasmoothnessConfig;
use clap::Args;

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson metasmoothness`: Bergson's `MetasmoothnessConfig` plus how to run it.
#[derive(Debug, Args)]
pub struct MetasmoothnessArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: MetasmoothnessConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs `bergson metasmoothness`.
pub fn run(config: &MetasmoothnessConfig, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = bergson::magic::metasmoothness::metasmoothness(config, opts.device)?;
    if !runtime.quiet {
        eprintln!(
            "metasmoothness score {:.4} (h = {}, three trainings of {} steps; total movement {:.6}); saved to {}",
            summary.result.score,
            summary.result.fd_step,
            summary.num_steps,
            summary.result.total_movement_l1,
            summary.run_path.join("metasmoothness.json").display()
        );
    }
    Ok(())
}
