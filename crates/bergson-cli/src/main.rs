//! The `bergson` command-line tool: parses flags into the library's config structs and calls
//! the library. Every error is one line on stderr (plus at most a one-line hint) and exit
//! status 2 for the user's mistakes.

mod approx_unrolling;
mod build;
mod demo;
mod ekfac;
mod errors;
mod hessian;
mod leaderboard;
mod lissa;
mod logging;
mod magic;
mod metasmoothness;
mod mix;
mod query;
mod recall;
mod report;
mod score;
mod test_model_configuration;
mod trackstar;
mod train;
mod trak;
mod validate;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::build::{BuildArgs, RuntimeArgs};

/// Data attribution for large language models (a Rust implementation of EleutherAI's Bergson).
#[derive(Debug, Parser)]
#[command(name = "bergson", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a gradient index of a dataset: per-example (projected) loss gradients.
    #[command(allow_negative_numbers = true)]
    Build(BuildArgs),
    /// The same pipeline as build, meant for `--aggregation mean|sum` (one row).
    #[command(allow_negative_numbers = true)]
    Reduce(BuildArgs),
    /// Score a dataset against a query index: one score per (document, query), gradients
    /// computed on the fly.
    #[command(allow_negative_numbers = true)]
    Score(score::ScoreArgs),
    /// Fit a Hessian approximation (K-FAC, EK-FAC, TK-FAC, Shampoo or a dense autocorrelation)
    /// of the model's loss over a dataset.
    #[command(allow_negative_numbers = true)]
    Hessian(hessian::HessianArgs),
    /// The EK-FAC influence pipeline end to end: query gradients, a factored Hessian fit, its
    /// inverse applied to the query, and the training data scored against it.
    #[command(allow_negative_numbers = true)]
    Ekfac(Box<ekfac::EkfacArgs>),
    /// LiSSA influence end to end: query gradients, their damped Gauss-Newton
    /// inverse-Hessian-vector products estimated by LiSSA, and the training data scored.
    #[command(allow_negative_numbers = true)]
    Lissa(Box<lissa::LissaArgs>),
    /// SOURCE (approximate unrolling) end to end: EK-FAC factors averaged over each segment
    /// of the training checkpoints, the query carried back through the segments, and the
    /// training data scored at every checkpoint.
    #[command(name = "approxunrolling", allow_negative_numbers = true)]
    ApproxUnrolling(Box<approx_unrolling::ApproxUnrollingArgs>),
    /// Search an index interactively: prompts from standard input, their most and least
    /// similar training rows printed (and appended to a CSV with --record).
    Query(query::QueryArgs),
    /// Train a model as Bergson's MAGIC trainer does (functional AdamW, SGD or Muon, data weights,
    /// checkpoints for resuming and for metagradients).
    #[command(allow_negative_numbers = true)]
    Train(train::TrainArgs),
    /// TRAK: a global-projection log-odds Gram, the Gram-whitened query index, scores weighted
    /// by 1 - p per document; averaged over --checkpoints.
    #[command(allow_negative_numbers = true)]
    Trak(Box<trak::TrakArgs>),
    /// MAGIC attribution: train with a weight on every document, then differentiate the
    /// query loss through the whole training run (exact metagradients per document or token).
    /// A flag given twice takes its last value, as in Bergson.
    #[command(allow_negative_numbers = true, args_override_self = true)]
    Magic(Box<magic::MagicArgs>),
    /// Empirical metasmoothness (MAGIC paper, Def. 2) of a training setup: three trainings
    /// with data weights 1 + k·h·v along a seeded random direction v, scored by how linearly
    /// the final parameters move (near 1: metagradients predict retraining well).
    #[command(allow_negative_numbers = true)]
    Metasmoothness(Box<metasmoothness::MetasmoothnessArgs>),
    /// Mix a query and an index autocorrelation Hessian into one (TrackStar's mixing):
    /// H = λ·H_query + (1 − λ)·H_index, λ chosen by --target_downweight_components.
    #[command(allow_negative_numbers = true)]
    Mix(mix::MixArgs),
    /// TrackStar (Chang et al. 2024): autocorrelation Hessians of the training and query data,
    /// mixed, a preconditioned query index, and the training data scored against it.
    // As Bergson's argparse: a repeated flag's last value wins.
    #[command(allow_negative_numbers = true, args_override_self = true)]
    Trackstar(Box<trackstar::TrackstarArgs>),
    /// The embedded demo: index a tiny model's training corpus and attribute held-out facts
    /// to the documents that planted them.
    Demo(demo::DemoArgs),
    /// A self-contained HTML page of a score run or a `query --record` CSV: each query's top
    /// and bottom training rows, per-token heat maps, score histograms.
    Report(report::ReportArgs),
    /// Judge a score store by synthetic factual recall: for each question about a synthetic
    /// person, where its gold statements rank (MRR, Recall@k, strict Recall@k).
    #[command(allow_negative_numbers = true)]
    Recall(recall::RecallArgs),
    /// Generate (or reuse) the synthetic-facts statements and questions datasets that
    /// `recall` evaluates, to train, build and score on first.
    #[command(name = "recall_generate", allow_negative_numbers = true)]
    RecallGenerate(recall::RecallGenerateArgs),
    /// Test gradient consistency across padding and batch composition, and the chat
    /// template's special tokens; recommends --force_math_sdp / --precision fp32 when needed.
    #[command(name = "test_model_configuration", allow_negative_numbers = true)]
    TestModelConfiguration(Box<test_model_configuration::TestModelConfigurationArgs>),
    /// Bergson's leaderboard at CPU size: every attribution method on a tiny fine-tuned GPT,
    /// ranked by LDS over leave-1%-out retrains and by proponent QLD (with BERGSON_PY, Python
    /// Bergson's scores beside ours); writes leaderboard.md, .csv and .png
    Leaderboard(Box<leaderboard::LeaderboardArgs>),
    /// Leave-k-out validation of attribution scores: retrain without subsets of the training
    /// data and correlate the query loss change with the scores (LDS), filter the top
    /// proponents, or step the data weights along the scores.
    #[command(allow_negative_numbers = true, args_override_self = true)]
    Validate(Box<validate::ValidateArgs>),
}

fn main() -> ExitCode {
    ignore_file_size_signal();
    let argv: Vec<String> = magic::python_flag_spellings(std::env::args().collect());
    if let Some((path, flags)) = run_file_argument(&argv[1..]) {
        let runtime = match RunFileCli::try_parse_from(&flags) {
            Ok(cli) => cli.runtime,
            Err(e) => return errors::clap_error(e, None),
        };
        return errors::finish(run_file(&path, &runtime));
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let command = Cli::command();
            let sub = argv
                .get(1)
                .filter(|a| command.find_subcommand(a.as_str()).is_some());
            return errors::clap_error(e, sub.map(String::as_str));
        }
    };
    match cli.command {
        Command::Build(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(build::run(args.config, &args.runtime, false))
        }
        Command::Reduce(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(build::run(args.config, &args.runtime, true))
        }
        Command::Score(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(score::run(args.config, &args.runtime))
        }
        Command::Hessian(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(hessian::run(args.config, &args.runtime))
        }
        Command::Ekfac(args) => {
            let args = *args;
            logging::init(args.runtime.quiet);
            errors::finish(ekfac::run(args.config, &args.runtime))
        }
        Command::Lissa(args) => {
            let args = *args;
            logging::init(args.runtime.quiet);
            errors::finish(lissa::run(args.config, &args.runtime))
        }
        Command::ApproxUnrolling(args) => {
            let args = *args;
            logging::init(args.runtime.quiet);
            errors::finish(approx_unrolling::run(args.config, &args.runtime))
        }
        Command::Query(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(query::run(args.config, &args.runtime))
        }
        Command::Train(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(train::run_collecting(
                args.config,
                Some(&args.collect),
                &args.runtime,
            ))
        }
        Command::Trak(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(trak::run(args.config, &args.runtime))
        }
        Command::Magic(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(magic::run(&args.config, &args.runtime))
        }
        Command::Metasmoothness(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(metasmoothness::run(&args.config, &args.runtime))
        }
        Command::Mix(args) => {
            logging::init(args.quiet);
            errors::finish(mix::run(&args))
        }
        Command::Trackstar(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(trackstar::run(args.config, &args.runtime))
        }
        Command::Demo(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(demo::run(&args))
        }
        Command::Report(args) => {
            logging::init(args.quiet);
            errors::finish(report::run(&args))
        }
        Command::Recall(args) => {
            logging::init(args.quiet);
            errors::finish(recall::run(&args))
        }
        Command::RecallGenerate(args) => {
            logging::init(args.quiet);
            errors::finish(recall::generate(&args))
        }
        Command::Leaderboard(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(leaderboard::run(&args))
        }
        Command::Validate(args) => {
            logging::init(args.runtime.quiet);
            errors::finish(validate::run(&args.config, &args.runtime))
        }
        Command::TestModelConfiguration(args) => {
            logging::init(false);
            errors::finish(test_model_configuration::run(&args))
        }
    }
}

/// Past the file size limit (`ulimit -f`), the kernel sends SIGXFSZ, which kills the process
/// without a word; ignored, the write fails with EFBIG and is reported like any full disk.
fn ignore_file_size_signal() {
    // SAFETY: installs the predefined SIG_IGN disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Bergson's rule: one argument (or a command word and one argument) that ends in .yaml/.yml
/// or contains a path separator is a run file. Ours also takes the runtime flags after it
/// (`--device`, `--quiet`, `--num_threads`), which do not change the index.
fn run_file_argument(args: &[String]) -> Option<(String, Vec<String>)> {
    let at = match args {
        [] => return None,
        [first, ..] if is_run_file(first) => 0,
        // `report` takes a path, never a run file.
        [first, second, ..] if first != "report" && is_run_file(second) => 1,
        _ => return None,
    };
    let rest = &args[at + 1..];
    let mut i = 0;
    while i < rest.len() {
        match rest[i].split('=').next().unwrap_or_default() {
            "--quiet" => i += 1,
            "--device" | "--num_threads" if rest[i].contains('=') => i += 1,
            "--device" | "--num_threads" => i += 2,
            _ => return None,
        }
    }
    Some((args[at].clone(), rest.to_vec()))
}

fn is_run_file(arg: &str) -> bool {
    (arg.ends_with(".yaml") || arg.ends_with(".yml") || arg.contains('/')) && !arg.starts_with('-')
}

/// The runtime flags of run-file mode.
#[derive(Debug, Parser)]
#[command(name = "bergson <run_file.yaml>", no_binary_name = true)]
struct RunFileCli {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn run_file(path: &str, runtime: &RuntimeArgs) -> anyhow::Result<()> {
    logging::init(runtime.quiet);
    let p = std::path::Path::new(path);
    if !p.exists() {
        return Err(bergson::Error::input(format!(
            "no such run file: {path}; check the path (a run file is a YAML mapping with a `steps:` list), or give flags: `bergson build <run_path> --model ... --dataset ...`"
        )).into());
    }
    use bergson::config::run_file::Step;
    let file = bergson::config::run_file::read_run_file(p)?;
    for step in file.steps {
        match step {
            Step::Build(cfg) => build::run(*cfg, runtime, false)?,
            Step::Reduce(cfg) => build::run(*cfg, runtime, true)?,
            Step::Score(cfg) => score::run(*cfg, runtime)?,
            Step::Hessian(cfg) => hessian::run(*cfg, runtime)?,
            Step::Trackstar(cfg) => trackstar::run(*cfg, runtime)?,
            Step::Trak(cfg) => trak::run(*cfg, runtime)?,
            Step::Ekfac(cfg) => ekfac::run(*cfg, runtime)?,
            Step::Lissa(cfg) => lissa::run(*cfg, runtime)?,
            Step::ApproxUnrolling(cfg) => approx_unrolling::run(*cfg, runtime)?,
            Step::Train(cfg) => train::run(*cfg, runtime)?,
            Step::Magic(cfg) => magic::run(&cfg, runtime)?,
            Step::Metasmoothness(cfg) => metasmoothness::run(&cfg, runtime)?,
            Step::Validate(cfg) => validate::run(&cfg, runtime)?,
        }
    }
    Ok(())
}
