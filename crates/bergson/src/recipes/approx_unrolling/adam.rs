//! The Adam/AdamW-preconditioned SOURCE variant's per-segment diagonal preconditioners (Bergson
//! 2.5.1's `adam_preconditioner.py`, Bae et al. 2024 App. C): each checkpoint's `optimizer.pt`
//! second moments, bias-corrected (`v̂ = ν / (1 − β₂^step)`), averaged over the segment's
//! checkpoints, give `P = 1 / (sqrt(v̂ + eps_root) + eps)`, written per module in the
//! gradients' `[out, in]` layout to `segment_<l>/preconditioner.safetensors`.
//!
//! Entries are named by their `param_name` (what `bergson train --save_optimizer_state`
//! writes), else by their index as Bergson's `optimizer_param_index_to_name` (one group:
//! `named_parameters()` order; two: HF Trainer's decay / no-decay split), and matched to the
//! factors' modules as `<...>.<module>.weight`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::index::factor_store::{self as store, read_store};
use crate::pickle::{self, Value};
use crate::{Error, Result};

/// The optimizer state file in a checkpoint directory.
pub const OPTIMIZER_STATE: &str = "optimizer.pt";
/// A segment's preconditioner file.
pub const PRECONDITIONER: &str = "preconditioner.safetensors";

/// `(β₂, eps, eps_root)` from the first param group.
fn adam_hparams(state: &Value, path: &Path) -> Result<(f64, f64, f64)> {
    let group = state
        .get("param_groups")
        .and_then(Value::as_seq)
        .and_then(|g| g.first());
    let betas = group
        .and_then(|g| g.get("betas"))
        .and_then(Value::as_seq)
        .and_then(|b| b.get(1))
        .and_then(Value::as_float);
    let eps = group.and_then(|g| g.get("eps")).and_then(Value::as_float);
    let (Some(beta2), Some(eps)) = (betas, eps) else {
        return Err(Error::input(format!(
            "{} has no param_groups betas/eps; save it with `bergson train \
             --save_optimizer_state all`",
            path.display()
        )));
    };
    let eps_root = group
        .and_then(|g| g.get("eps_root"))
        .and_then(Value::as_float)
        .unwrap_or(0.0);
    Ok((beta2, eps, eps_root))
}

/// Maps an `optimizer.pt`'s state indices to parameter names (for entries without
/// `param_name`).
pub type IndexNames<'a> = dyn FnMut(&Value) -> Result<Vec<(i64, String)>> + 'a;

/// Bias-corrected second moments by parameter name.
fn bias_corrected(
    state: &Value,
    beta2: f64,
    path: &Path,
    index_names: &mut IndexNames,
) -> Result<Vec<(String, Tensor)>> {
    let entries = state.get("state").and_then(Value::as_dict).unwrap_or(&[]);
    let unnamed = entries.iter().any(|(_, e)| e.get("param_name").is_none());
    let mapping = if unnamed {
        index_names(state).map_err(|e| match e {
            Error::Input(msg) => Error::input(format!("{}: {msg}", path.display())),
            other => other,
        })?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(entries.len());
    for (idx, entry) in entries {
        let by_index = || {
            let i = idx.as_int()?;
            mapping
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, n)| n.as_str())
        };
        let Some(name) = entry
            .get("param_name")
            .and_then(Value::as_str)
            .or_else(by_index)
        else {
            continue;
        };
        let step = match entry.get("step") {
            Some(Value::Tensor(t)) => t.f_double_value(&[])?,
            Some(v) => v.as_float().unwrap_or(f64::NAN),
            None => {
                return Err(Error::input(format!(
                    "{}: state entry {name} has no step; save it with `bergson train \
                     --save_optimizer_state all`",
                    path.display()
                )))
            }
        } as i64;
        let Some(nu) = entry.get("exp_avg_sq").and_then(Value::as_tensor) else {
            return Err(Error::input(format!(
                "{}: state entry {name} has no exp_avg_sq (Adam's second moments)",
                path.display()
            )));
        };
        let nu = nu.f_to_kind(Kind::Float)?;
        let v = if step > 0 {
            nu.f_div_scalar(1.0 - beta2.powi(step as i32))?
        } else {
            nu.f_zeros_like()?
        };
        out.push((name.to_string(), v));
    }
    Ok(out)
}

/// Writes each segment's preconditioner under `run/segment_<l>/`; `segment_dirs[l]` holds the
/// segment's factors (their `[out, in]` grids). `transposed` says the model stores weights as
/// `[in, out]` (GPT-2's Conv1D); `index_names` names unnamed entries.
pub fn build_segment_preconditioners(
    segment_dirs: &[PathBuf],
    segment_checkpoints: &[Vec<String>],
    transposed: bool,
    index_names: &mut IndexNames,
) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(segment_dirs.len());
    for (dir, ckpts) in segment_dirs.iter().zip(segment_checkpoints) {
        let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
        let (mut eps, mut eps_root) = (0.0, 0.0);
        for ckpt in ckpts {
            let path = Path::new(ckpt).join(OPTIMIZER_STATE);
            if !path.is_file() {
                return Err(missing_state(&path));
            }
            let state = pickle::load(&path)?;
            let (beta2, e, er) = adam_hparams(&state, &path)?;
            (eps, eps_root) = (e, er);
            for (name, v) in bias_corrected(&state, beta2, &path, index_names)? {
                let sum = match sums.remove(&name) {
                    Some(s) => s.f_add(&v)?,
                    None => v,
                };
                sums.insert(name, sum);
            }
        }
        let q_a = read_store(dir, store::EIGEN_ACTIVATION)?.unwrap_or_default();
        let q_g = read_store(dir, store::EIGEN_GRADIENT)?.unwrap_or_default();
        let mut grids = Vec::with_capacity(q_a.len());
        for ((module, a), (_, g)) in q_a.iter().zip(&q_g) {
            let (o, i) = (g.size()[1], a.size()[1]);
            let suffix = format!("{module}.weight");
            let found: Vec<&String> = sums
                .keys()
                .filter(|n| **n == suffix || n.ends_with(&format!(".{suffix}")))
                .collect();
            let [param] = found.as_slice() else {
                return Err(Error::input(format!(
                    "module '{module}' matched {} parameters of the checkpoints' optimizer.pt \
                     ({}); expected exactly one *.{suffix}",
                    found.len(),
                    found
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let v_bar = sums[*param].f_div_scalar(ckpts.len() as f64)?;
            let p = v_bar
                .f_add_scalar(eps_root)?
                .f_sqrt()?
                .f_add_scalar(eps)?
                .f_reciprocal()?;
            let p = if transposed { p.f_tr()? } else { p };
            if p.size() != [o, i] {
                return Err(Error::input(format!(
                    "the second moments of '{module}' have shape {:?}; expected [{o}, {i}] (a \
                     bias column, --include_bias, has no second moment here: drop it)",
                    p.size()
                )));
            }
            grids.push((module.clone(), p.f_contiguous()?));
        }
        let out = dir
            .parent()
            .map(|p| p.join(PRECONDITIONER))
            .ok_or_else(|| Error::internal("a segment directory without a parent"))?;
        Tensor::write_safetensors(&grids, &out)
            .map_err(|e| Error::io(&out, std::io::Error::other(e.to_string())))?;
        paths.push(out);
    }
    Ok(paths)
}

/// The error for a checkpoint without its optimizer state.
pub fn missing_state(path: &Path) -> Error {
    Error::input(format!(
        "--use_adam_preconditioner needs {}; save it during training with `bergson train \
         --save_optimizer_state all`, or drop --use_adam_preconditioner",
        path.display()
    ))
}
