//! `bergson demo`: the embedded demo. A tiny GPT-NeoX trained on a corpus that plants made-up
//! facts among filler documents (made by `tests/fixtures/scripts/make_demo.py`) is indexed, and
//! each held-out question about a planted fact is attributed to the training documents whose
//! projected gradients are most cosine-similar to the question's gradient.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bergson::config::BuildConfig;
use bergson::index::GradientIndex;
use bergson::similarity::{cosine_scores, rank_of, top_k};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::build::RuntimeArgs;

/// The demo's files, compiled into the binary so that it runs from anywhere.
const ASSETS: [(&str, &[u8]); 6] = [
    (
        "model/config.json",
        include_bytes!("../../../demo/model/config.json"),
    ),
    (
        "model/model.safetensors",
        include_bytes!("../../../demo/model/model.safetensors"),
    ),
    (
        "model/tokenizer.json",
        include_bytes!("../../../demo/model/tokenizer.json"),
    ),
    (
        "model/tokenizer_config.json",
        include_bytes!("../../../demo/model/tokenizer_config.json"),
    ),
    ("train.jsonl", include_bytes!("../../../demo/train.jsonl")),
    (
        "queries.jsonl",
        include_bytes!("../../../demo/queries.jsonl"),
    ),
];

/// libtorch intra-op threads the demo uses unless `--num_threads` says otherwise. Its model is
/// so small (3 layers, hidden size 128, vocabulary 1,024) that a second thread saves little on an idle machine, while on a
/// busy one libtorch's spinning OpenMP threads made the demo 3-5x slower (docs/benchmarks.md).
const DEMO_THREADS: i32 = 1;

/// Flags of `bergson demo`.
#[derive(Debug, Args)]
#[command(rename_all = "snake_case")]
#[command(mut_arg("num_threads", |a| a.help("libtorch intra-op threads (default: 1; the demo's model is too small to gain from more)")))]
pub struct DemoArgs {
    /// Directory for the demo's model, data, indexes and attribution.json (default:
    /// `bergson-demo` under the system's temporary directory). Its demo files are replaced.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Random projection dimension of the gradients.
    #[arg(long, default_value_t = 16)]
    pub projection_dim: usize,
    /// Training documents shown per question.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A held-out question (a row of demo/queries.jsonl).
#[derive(Debug, Deserialize)]
struct Query {
    prompt: String,
    completion: String,
    /// Row of the planted fact in train.jsonl.
    source: usize,
}

/// What the demo measured, written to `<out>/attribution.json`.
#[derive(Debug, Serialize)]
pub struct Attribution {
    /// Projection dimension used.
    pub projection_dim: usize,
    /// Share of questions whose planted fact ranks first.
    pub top1_share: f64,
    /// Share of questions whose planted fact is among the first five.
    pub top5_share: f64,
    /// Per question.
    pub queries: Vec<QueryResult>,
}

/// One question's attribution.
#[derive(Debug, Serialize)]
pub struct QueryResult {
    /// The question.
    pub prompt: String,
    /// Row of the planted fact in train.jsonl.
    pub source: usize,
    /// 0-based rank of the planted fact.
    pub source_rank: usize,
    /// The five best training rows, best first.
    pub top5: Vec<usize>,
    /// Their cosine similarities.
    pub top5_scores: Vec<f64>,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("bergson-demo"));
    write_assets(&out)?;
    let device = bergson::engine::parse_device(&args.runtime.device)?;
    tch::set_num_threads(args.runtime.num_threads.unwrap_or(DEMO_THREADS));
    let quiet = args.runtime.quiet;
    let say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    let train_text = read_lines(&out.join("train.jsonl"), |v: serde_json::Value| {
        v["text"].as_str().unwrap_or_default().to_string()
    })?;
    let queries: Vec<Query> = read_lines(&out.join("queries.jsonl"), |q| q)?;
    say(&format!(
        "bergson demo: a tiny GPT-NeoX trained on {} documents in which made-up facts hide among filler text.\n\
         Indexing its training corpus (per-document loss gradients, projected to {} dimensions):",
        train_text.len(),
        args.projection_dim
    ));
    let opts = bergson::build::RunOptions { device, quiet };
    let train_index = out.join("train_index");
    let summary = bergson::build::run(
        &demo_config(&out, &train_index, "train.jsonl", args, false),
        &opts,
    )?;
    say(&summary.to_string());
    say(&format!(
        "Indexing {} held-out questions (loss on the answer only)...",
        queries.len()
    ));
    let query_index = out.join("query_index");
    let quiet_opts = bergson::build::RunOptions {
        quiet: true,
        ..opts
    };
    bergson::build::run(
        &demo_config(&out, &query_index, "queries.jsonl", args, true),
        &quiet_opts,
    )?;

    let train = GradientIndex::open(&train_index)?;
    let query = GradientIndex::open(&query_index)?;
    let scores = cosine_scores(
        &query.rows(0..query.num_rows())?,
        &train.rows(0..train.num_rows())?,
    )?;
    let best = top_k(&scores, 5.max(args.top_k))?;
    let mut results = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let rank = rank_of(&scores, i, q.source)?;
        say(&format!("\nQ: {}  A: {}", q.prompt, q.completion));
        for (n, &(row, score)) in best[i].iter().take(args.top_k).enumerate() {
            let mark = if row == q.source {
                "  <- the planted fact"
            } else {
                ""
            };
            say(&format!(
                "  {}. {score:.3}  #{row:<3} {}{mark}",
                n + 1,
                shorten(&train_text[row], 72)
            ));
        }
        if rank >= args.top_k {
            say(&format!(
                "  (the planted fact #{} \"{}\" ranks {})",
                q.source,
                shorten(&train_text[q.source], 48),
                rank + 1
            ));
        }
        results.push(QueryResult {
            prompt: q.prompt.clone(),
            source: q.source,
            source_rank: rank,
            top5: best[i].iter().take(5).map(|p| p.0).collect(),
            top5_scores: best[i].iter().take(5).map(|p| p.1).collect(),
        });
    }
    let n = results.len().max(1) as f64;
    let top1 = results.iter().filter(|r| r.source_rank == 0).count();
    let top5 = results.iter().filter(|r| r.source_rank < 5).count();
    let report = Attribution {
        projection_dim: args.projection_dim,
        top1_share: top1 as f64 / n,
        top5_share: top5 as f64 / n,
        queries: results,
    };
    let json = out.join("attribution.json");
    fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!(
        "\nThe planted fact ranks first for {top1} of {} questions ({:.0}%), in the top 5 for {top5}.",
        report.queries.len(),
        100.0 * report.top1_share
    );
    say(&format!(
        "Indexes and attribution.json are in {}",
        out.display()
    ));
    Ok(())
}

/// The build of one demo dataset: the train corpus with its `text`, or the questions with the
/// loss on the answer only (the tokenizer's chat template renders "Q: ...\nA: answer").
fn demo_config(
    out: &Path,
    run: &Path,
    dataset: &str,
    args: &DemoArgs,
    questions: bool,
) -> BuildConfig {
    let mut cfg = BuildConfig::default();
    let icfg = &mut cfg.index_cfg;
    icfg.run_path = run.display().to_string();
    icfg.overwrite = true;
    icfg.model = out.join("model").display().to_string();
    icfg.data.dataset = out.join(dataset).display().to_string();
    icfg.projection_dim = args.projection_dim;
    if questions {
        icfg.data.prompt_column = "prompt".into();
        icfg.data.completion_column = "completion".into();
    }
    cfg
}

pub(crate) fn write_assets(out: &Path) -> anyhow::Result<()> {
    let unwritable = |path: &Path, e: std::io::Error| {
        bergson::Error::input(format!(
            "cannot write {}: {e}; pass --out with a writable directory",
            path.display()
        ))
    };
    for (name, bytes) in ASSETS {
        let path = out.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
        }
        fs::write(&path, bytes).map_err(|e| unwritable(&path, e))?;
    }
    Ok(())
}

fn read_lines<T: serde::de::DeserializeOwned, U>(
    path: &Path,
    f: impl Fn(T) -> U,
) -> anyhow::Result<Vec<U>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(f(serde_json::from_str(l)?)))
        .collect()
}

/// The first `n` characters of `text` on one line, with "..." when cut.
fn shorten(text: &str, n: usize) -> String {
    let one_line = text.replace('\n', " / ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        one_line.chars().take(n - 3).collect::<String>() + "..."
    }
}
