//! `bergson report`: one self-contained HTML page of a score run or a query record.

use std::path::PathBuf;

use bergson::report::{write_report, ReportOptions};
use clap::Args;

/// Flags of `bergson report`.
#[derive(Debug, Args)]
#[command(rename_all = "snake_case")]
pub struct ReportArgs {
    /// A score run directory (what `bergson score` writes) or the CSV of `bergson query --record`.
    pub input: PathBuf,
    /// The HTML file to write (replaced if it exists).
    #[arg(long, default_value = "report.html")]
    pub output: PathBuf,
    /// Training rows listed at each end (top and bottom) of every query's ranking.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
    /// Dataset column holding the texts (default: the columns the run tokenised).
    #[arg(long)]
    pub text_field: Option<String>,
    /// Characters of each text shown; the rest is counted, not shown.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_chars: u64,
    /// No summary line.
    #[arg(long)]
    pub quiet: bool,
}

/// Writes the report.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let opts = ReportOptions {
        top_k: args.top_k as usize,
        text_field: args.text_field.clone(),
        max_chars: args.max_chars as usize,
    };
    let page = write_report(&args.input, &args.output, &opts)?;
    if !args.quiet {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let notes = match page.notes.len() {
            0 => String::new(),
            n => format!(", {} on the page", plural(n, "note", "notes")),
        };
        eprintln!(
            "wrote {} ({}{notes})",
            args.output.display(),
            plural(page.sections.len(), "query", "queries"),
        );
    }
    Ok(())
}
