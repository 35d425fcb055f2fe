//! `bergson recall` and `bergson recall_generate`.

use bergson::config::{RecallConfig, RecallDataConfig};
use clap::Args;

/// Flags of `bergson recall`: Bergson's `RecallConfig` plus `--quiet`.
#[derive(Debug, Args)]
pub struct RecallArgs {
    /// The evaluation (Bergson's flags).
    #[command(flatten)]
    pub config: RecallConfig,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of `bergson recall_generate` (Python's `python -m bergson.recall.generate`).
#[derive(Debug, Args)]
pub struct RecallGenerateArgs {
    /// Which fact set to generate.
    #[command(flatten)]
    pub data: RecallDataConfig,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `bergson recall`.
pub fn run(args: &RecallArgs) -> anyhow::Result<()> {
    let s = bergson::recall::run_recall(&args.config)?;
    if !args.quiet {
        let k = args.config.k;
        eprintln!(
            "MRR: {:.4}  Recall@{k}: {:.4}  (N={} questions, {} statements); wrote {}/recall.csv and summary.csv",
            s.mrr, s.recall_at_k, s.questions, s.statements, args.config.run_path
        );
    }
    Ok(())
}

/// Runs `bergson recall_generate`.
pub fn generate(args: &RecallGenerateArgs) -> anyhow::Result<()> {
    let (statements, questions, made) = bergson::recall::ensure_datasets(&args.data)?;
    if !args.quiet {
        let verb = if made { "generated" } else { "reusing cached" };
        eprintln!(
            "{verb} {} and {}",
            statements.display(),
            questions.display()
        );
    }
    Ok(())
}
