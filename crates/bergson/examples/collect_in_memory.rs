//! Level 2 of the library (docs/library.md): per-document gradients of your own token
//! sequences, without a run directory: `collect_gradients_in_memory` (all blocks at the end)
//! and `collect_gradients` (each batch handed to a closure as it is computed).
//!
//! Runs in about a second on the tiny fixture model:
//! `cargo run -p bergson --example collect_in_memory`

use std::path::Path;

use bergson::collect::{
    collect_gradients, collect_gradients_in_memory, CollectConfig, Documents, GradientProcessor,
    ProjectionSettings,
};
use bergson::config::IndexConfig;
use bergson::data::tokenize::Tokenizer;
use bergson::engine::Precision;
use bergson::models::load_model;
use tch::Device;

fn main() -> bergson::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
    let model = load_model(&dir, Precision::Fp32, Device::Cpu)?;

    // Documents are token ids (plus labels for chat rows): tokenise them any way you like.
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let rows = tokenizer.encoder(None)?.encode_texts(&[
        "The quick brown fox jumps over it.",
        "Hello, world!",
        "a", // one token: no next-token loss, so its row stays zero
    ])?;
    let docs = Documents {
        rows: &rows,
        advantages: None,
    };

    // Settings come from the build config's fields; defaults are Bergson's.
    let settings = IndexConfig {
        projection_dim: 4,
        ..IndexConfig::default()
    };
    let processor = GradientProcessor::new(ProjectionSettings::from_index_config(&settings));
    let cfg = CollectConfig::from_index_config(&settings);

    // Everything at once: one [documents, size] tensor per module, in dataset order.
    let blocks = collect_gradients_in_memory(&*model, docs, &processor, &cfg)?;
    for (name, grads) in &blocks {
        println!("{name}: {:?}", grads.size());
    }

    // Batch by batch: the closure sees each batch's dataset indices, rows and losses.
    let grad_sizes = collect_gradients(&*model, docs, &processor, &cfg, |batch| {
        let rows = batch.gradients.concat()?; // [documents in batch, Σ sizes]
        println!(
            "batch of documents {:?}: rows {:?}, losses {:?}",
            batch.indices,
            rows.size(),
            batch.losses
        );
        Ok(())
    })?;
    println!("{} column blocks", grad_sizes.len());
    Ok(())
}
