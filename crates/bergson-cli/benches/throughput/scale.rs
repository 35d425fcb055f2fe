//! The scaling workload (`--workload scale`): how `bergson build` grows with the number of rows.
//!
//! One corpus family of short documents (see [`ShortDocuments`]) at each of `--sizes` (default
//! 10k, 100k and 1M rows), written as JSON Lines and as Parquet (`--formats`), indexed by the
//! release `bergson build` with the tiny fixture model `tests/fixtures/models/gpt_neox`
//! (`--projection_dim 16`), so the model costs little and the data pipeline shows. Per run:
//! seconds per million tokens (wall, start-up included), peak RSS, and the phases that
//! `bergson build --profile` reports.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::measure::{profile_phases, run};
use crate::workload::ShortDocuments;

/// A dataset file format the corpus is written in.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Format {
    Jsonl,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Format {
        match s {
            "jsonl" => Format::Jsonl,
            "parquet" => Format::Parquet,
            other => panic!("--formats: unknown format '{other}'; use jsonl and/or parquet"),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }
}

/// What to run.
pub struct Options {
    pub sizes: Vec<usize>,
    pub formats: Vec<Format>,
    pub threads: Option<String>,
    pub root: PathBuf,
    pub keep: bool,
}

/// One measured build.
struct Row {
    docs: usize,
    format: Format,
    tokens: usize,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_mb: f64,
    phases: Vec<(String, f64)>,
}

/// Rows per Parquet row group (and Arrow batch) when writing the corpus.
const PARQUET_ROWS_PER_GROUP: usize = 65_536;

pub fn run_scale(opts: &Options) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
    let largest = opts.sizes.iter().copied().max().unwrap_or(0);
    std::fs::create_dir_all(&opts.root).expect("workload dir");
    println!(
        "workload scale: short documents (median ~12 words), sizes {:?}, formats {:?}; model \
         tests/fixtures/models/gpt_neox (GPT-NeoX 2x32, vocab 512), --projection_dim 16",
        opts.sizes, opts.formats
    );
    let docs: Vec<String> = ShortDocuments::new(0).take(largest).collect();
    // Tokens of every prefix, from the model's own tokenizer (as the build counts them).
    let tokenizer = bergson::data::tokenize::Tokenizer::from_dir(&model).expect("tokenizer");
    let lengths: Vec<usize> = tokenizer
        .encoder(None)
        .expect("encoder")
        .encode_texts(&docs)
        .expect("tokenise")
        .iter()
        .map(|r| r.len())
        .collect();
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        let tokens: usize = lengths[..n].iter().sum();
        for &format in &opts.formats {
            let data = opts.root.join(format!("corpus-{n}.{}", format.extension()));
            write_corpus(&docs[..n], format, &data);
            let out = opts.root.join(format!("index-{n}-{}", format.extension()));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
            cmd.arg("build")
                .arg(&out)
                .arg("--model")
                .arg(&model)
                .arg("--dataset")
                .arg(&data)
                .args([
                    "--projection_dim",
                    "16",
                    "--overwrite",
                    "--quiet",
                    "--profile",
                ]);
            if let Some(t) = &opts.threads {
                cmd.args(["--num_threads", t]);
            }
            let r = run(&cmd);
            let phases = profile_phases(&r.stderr);
            assert!(
                !phases.is_empty(),
                "no phase table in `bergson build --profile` output:\n{}",
                r.stderr
            );
            let row = Row {
                docs: n,
                format,
                tokens,
                seconds: r.seconds,
                cpu_seconds: r.cpu_seconds,
                peak_rss_mb: r.peak_rss_mb,
                phases,
            };
            println!("  {}", summary(&row));
            rows.push(row);
            if !opts.keep {
                let _ = std::fs::remove_dir_all(&out);
                let _ = std::fs::remove_file(&data);
            }
        }
    }
    print_table(&rows);
}

fn summary(r: &Row) -> String {
    format!(
        "{:>9} rows {:<7} {:>10} tokens  {:>8.2} s  {:>7.2} s per M tokens  {:>7.2} CPU s per M tokens  peak RSS {:>6.0} MiB",
        r.docs,
        r.format.extension(),
        r.tokens,
        r.seconds,
        per_million(r.seconds, r.tokens),
        per_million(r.cpu_seconds, r.tokens),
        r.peak_rss_mb
    )
}

fn per_million(seconds: f64, tokens: usize) -> f64 {
    seconds * 1e6 / tokens.max(1) as f64
}

/// The results as a Markdown table (for docs/benchmarks.md): one row per size and format, one
/// column per profile phase.
fn print_table(rows: &[Row]) {
    let Some(first) = rows.first() else { return };
    let phases: Vec<&str> = first.phases.iter().map(|(n, _)| n.as_str()).collect();
    println!();
    println!(
        "| rows | format | tokens | wall | s per M tokens | CPU s per M tokens | peak RSS | {} |",
        phases.join(" | ")
    );
    println!("|{}", "---|".repeat(7 + phases.len()));
    for r in rows {
        let cells: Vec<String> = phases
            .iter()
            .map(|p| {
                r.phases
                    .iter()
                    .find(|(n, _)| n == p)
                    .map_or("-".into(), |(_, s)| format!("{s:.2} s"))
            })
            .collect();
        println!(
            "| {} | {} | {} | {:.2} s | {:.2} | {:.2} | {:.0} MiB | {} |",
            r.docs,
            r.format.extension(),
            r.tokens,
            r.seconds,
            per_million(r.seconds, r.tokens),
            per_million(r.cpu_seconds, r.tokens),
            r.peak_rss_mb,
            cells.join(" | ")
        );
    }
}

/// Writes `docs` as a one-column (`text`) dataset file.
fn write_corpus(docs: &[String], format: Format, path: &Path) {
    match format {
        Format::Jsonl => {
            let mut w = BufWriter::new(File::create(path).expect("corpus file"));
            for d in docs {
                serde_json::to_writer(&mut w, &serde_json::json!({ "text": d })).unwrap();
                w.write_all(b"\n").unwrap();
            }
            w.flush().unwrap();
        }
        Format::Parquet => {
            let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
            // Snappy, as `datasets.Dataset.to_parquet` (pyarrow's default) writes.
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(PARQUET_ROWS_PER_GROUP))
                .build();
            let file = File::create(path).expect("corpus file");
            let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
            for chunk in docs.chunks(PARQUET_ROWS_PER_GROUP) {
                let column = StringArray::from_iter_values(chunk.iter());
                let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(column)]).unwrap();
                w.write(&batch).unwrap();
            }
            w.close().unwrap();
        }
    }
}
