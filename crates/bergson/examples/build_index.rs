//! Level 1 of the library (docs/library.md): a whole `bergson build` from Rust, then the index
//! read back through the memory-mapped reader.
//!
//! Runs in about a second on the tiny fixture model:
//! `cargo run -p bergson --example build_index`

use std::path::Path;

use bergson::build::{run, RunOptions};
use bergson::config::BuildConfig;
use bergson::index::GradientIndex;

fn main() -> bergson::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let tmp = tempfile::tempdir().map_err(|e| bergson::Error::io(std::env::temp_dir(), e))?;

    // The same fields as the CLI flags (and config.yaml keys); unset fields keep Bergson's
    // defaults.
    let mut cfg = BuildConfig::default();
    let icfg = &mut cfg.index_cfg;
    icfg.run_path = tmp.path().join("index").display().to_string();
    icfg.model = fixtures.join("models/gpt_neox").display().to_string();
    icfg.data.dataset = fixtures
        .join("bergson/data/text.jsonl")
        .display()
        .to_string();
    icfg.projection_dim = 4;
    icfg.token_batch_size = 64;

    // CPU, no progress output, no Ctrl-C handling.
    let summary = run(&cfg, &RunOptions::default())?;
    println!("{summary}");

    let index = GradientIndex::open(&summary.run_path)?;
    let (name, size) = index.info.grad_sizes[0].clone();
    let block = index.module_rows(&name, 0..index.num_rows())?; // [documents, p * p]
    println!(
        "{} rows of {} values; {name}: {size} columns, block shape {:?}",
        index.num_rows(),
        index.row_len(),
        block.size()
    );
    Ok(())
}
