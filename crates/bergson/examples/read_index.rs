//! Reading an index directory from Rust (docs/index-format.md): gradients, module blocks,
//! per-token rows, data.hf, the processor files and total_processed.pt. Works on indexes from
//! bergson-rs and from Python Bergson alike.
//!
//! `cargo run -p bergson --example read_index -- <run_dir>`; without an argument it first builds
//! a small per-token index from the test fixtures (about a second).

use std::path::{Path, PathBuf};

use bergson::build::{run, RunOptions};
use bergson::collect::optimizer_state::read_normalizers;
use bergson::collect::GradientProcessor;
use bergson::config::BuildConfig;
use bergson::index::hf_dataset::read_hf_dataset;
use bergson::index::GradientIndex;

fn main() -> bergson::Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| bergson::Error::io(std::env::temp_dir(), e))?;
    let dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => tiny_token_index(tmp.path())?,
    };

    let index = GradientIndex::open(&dir)?; // reads info.json (and offsets.npy)
    let (n, width) = (index.num_rows(), index.row_len()); // num_grads, Σ grad_sizes
    let kind = index.kind(); // tch::Kind of base_dtype
    println!("{n} rows × {width} values of {kind:?}");
    for (name, size) in &index.info.grad_sizes {
        let cols = index.module_columns(name); // Some(start..start + size)
        println!("  {name}: {size} values, columns {cols:?}");
    }
    let rows = index.rows(0..n)?; // [n, width] Tensor (a copy)
    let (first, _) = &index.info.grad_sizes[0];
    let block = index.module_rows(first, 0..n)?; // [n, size]
    let bytes = index.rows_bytes(0..n)?; // &[u8] straight from the map
    println!(
        "rows {:?}, {first} {:?}, {} bytes",
        rows.size(),
        block.size(),
        bytes.len()
    );
    if let Some(r) = index.token_rows(2) {
        // Per-token index: document 2's rows, [length - 1, width].
        let doc = index.rows(r.clone())?;
        println!("document 2: rows {r:?} -> {:?}", doc.size());
    }

    let data = read_hf_dataset(&dir.join("data.hf"))?; // an Arrow RecordBatch
    let columns: Vec<String> = data
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    println!("data.hf: {} rows, columns {columns:?}", data.num_rows());

    let settings = GradientProcessor::read_settings(&dir)?; // processor_config.yaml
    let normalizers = read_normalizers(&dir.join("normalizers.pth"))?;
    let total = bergson::pickle::load_scalar_i64(&dir.join("total_processed.pt"))?;
    println!(
        "projection_dim {:?}, {} normalizers, total_processed {total}",
        settings.projection_dim,
        normalizers.len()
    );
    Ok(())
}

/// `bergson build <tmp>/index --attribute_tokens --projection_dim 4` on the fixtures.
fn tiny_token_index(tmp: &Path) -> bergson::Result<PathBuf> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut cfg = BuildConfig::default();
    cfg.index_cfg.run_path = tmp.join("index").display().to_string();
    cfg.index_cfg.model = fixtures.join("models/gpt_neox").display().to_string();
    cfg.index_cfg.data.dataset = fixtures
        .join("bergson/data/text.jsonl")
        .display()
        .to_string();
    cfg.index_cfg.projection_dim = 4;
    cfg.index_cfg.token_batch_size = 64;
    cfg.index_cfg.attribute_tokens = true;
    Ok(run(&cfg, &RunOptions::default())?.run_path)
}
