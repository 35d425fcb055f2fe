//! `bergson train` checkpoints as the HF model directories SOURCE loads (Bergson 2.5.1's
//! `ensure_exported` / `export_checkpoints`): a checkpoint given as
//! `<run>/checkpoints/step_<n>.ckpt` is exported once to `<run>/exported/checkpoint-<n>/`
//! (the trained parameters over the run's base model's files, and the checkpoint's
//! `optimizer.pt` when it has one) and replaced by that directory; an existing export is
//! reused. Other paths pass through.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tch::Tensor;

use crate::error::IoContext;
use crate::train::run::save_hf_model;
use crate::{Error, Result};

/// The folder exports land in, beside `checkpoints/`.
pub const EXPORT_DIR: &str = "exported";

/// `checkpoints` with every trainer state replaced by its (possibly new) export.
pub fn ensure_exported(checkpoints: &[String]) -> Result<Vec<String>> {
    checkpoints
        .iter()
        .map(|c| {
            let path = Path::new(c);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(step) = name
                .strip_suffix(".ckpt")
                .and_then(|s| s.strip_prefix("step_"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return Ok(c.clone());
            };
            let run = path
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| Error::input(format!("{c} is not inside a training run")))?;
            let dst = run.join(EXPORT_DIR).join(format!("checkpoint-{step}"));
            if !dst.is_dir() {
                export(path, run, &dst)?;
            }
            Ok(dst.to_string_lossy().into_owned())
        })
        .collect()
}

/// The base model of a training run (its `config.yaml`'s `model`).
fn base_model(run: &Path) -> Result<PathBuf> {
    let path = run.join("config.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::input(format!(
            "{} cannot be read ({e}); a step_<n>.ckpt checkpoint must sit in a `bergson train` \
             run's checkpoints/ folder",
            path.display()
        ))
    })?;
    let doc: Json = serde_saphyr::from_str(&text)
        .map_err(|e| Error::input(format!("{} is not YAML: {e}", path.display())))?;
    let steps = doc.get("steps").cloned().unwrap_or(doc);
    let model = steps
        .get(0)
        .and_then(|s| s.as_object())
        .and_then(|s| s.values().next())
        .and_then(|t| t.get("model"))
        .and_then(Json::as_str)
        .ok_or_else(|| {
            Error::input(format!(
                "{} is not a training run's config (no model); export the checkpoints first",
                path.display()
            ))
        })?;
    crate::models::hub::resolve_model_dir(model, None)
}

/// Writes the HF directory of the trainer state at `ckpt` to `dst` (via `<dst>.part`).
fn export(ckpt: &Path, run: &Path, dst: &Path) -> Result<()> {
    if !ckpt.join("state.json").is_file() {
        return Err(Error::input(format!(
            "{} is not a finished `bergson train` checkpoint (no state.json)",
            ckpt.display()
        )));
    }
    tracing::info!("exporting {} to {}", ckpt.display(), dst.display());
    let model_dir = base_model(run)?;
    let state = ckpt.join("state.safetensors");
    let tensors = Tensor::read_safetensors(&state)
        .map_err(|e| Error::input(format!("{} cannot be read: {e}", state.display())))?;
    let (names, params): (Vec<String>, Vec<Tensor>) = tensors
        .into_iter()
        .filter(|(n, _)| !n.starts_with("opt_state/"))
        .unzip();
    let part = PathBuf::from(format!("{}.part", dst.display()));
    if part.exists() {
        crate::index::removal::remove_scratch(&part)?;
    }
    save_hf_model(&model_dir, &part, &names, &params)?;
    let opt = ckpt.join(super::adam::OPTIMIZER_STATE);
    if opt.is_file() {
        let to = part.join(super::adam::OPTIMIZER_STATE);
        std::fs::copy(&opt, &to).at_path(&to)?;
    }
    crate::index::run_dir::finish(&part, dst)
}
