//! `bergson test_model_configuration`: gradient consistency across padding and batch
//! composition, and the chat template's special tokens (Bergson's diagnosis).

use bergson::diagnose::DiagnoseConfig;
use clap::Args;

/// Flags of `bergson test_model_configuration` (Bergson's `DiagnoseConfig`).
#[derive(Debug, Args)]
pub struct TestModelConfigurationArgs {
    /// The diagnosis (Bergson's flags).
    #[command(flatten)]
    pub config: DiagnoseConfig,
}

/// Runs the diagnosis, printing its report on stdout; fails only on bad input, not on a
/// failed check (the report says which checks failed, as Bergson's does).
pub fn run(args: &TestModelConfigurationArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    bergson::diagnose::diagnose(&args.config, &mut stdout)?;
    Ok(())
}
