//! `bergson mix`.

use bergson::config::MixConfig;
use clap::Args;

/// Flags of `bergson mix`: Bergson's config plus `--quiet`.
#[derive(Debug, Args)]
pub struct MixArgs {
    /// The mix (Bergson's flags).
    #[command(flatten)]
    pub config: MixConfig,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `bergson mix`.
pub fn run(args: &MixArgs) -> anyhow::Result<()> {
    let summary = bergson::mix::run(&args.config)?;
    if !args.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
