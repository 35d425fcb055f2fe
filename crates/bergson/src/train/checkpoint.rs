//! What a training run writes: trainer-state checkpoints on Bergson's schedule
//! (`next_save_index`), the learning-rate history (`log_history.json`), the AdamW second
//! moments as a PyTorch `optimizer.pt` (which `bergson build --optimizer_state` reads), and
//! the trained model as a Hugging Face checkpoint.
//!
//! Checkpoints are `checkpoints/step_{i}.ckpt/` directories, as in Bergson, but hold
//! `state.safetensors` (parameters under their names, optimizer moments under
//! `opt_state/mu.<name>`, `opt_state/nu.<name>` and `opt_state/trace.<name>`, as
//! [`OptState::keys`] names them) and
//! `state.json` (step, update count, and the settings that determine the trajectory), not
//! PyTorch distributed-checkpoint files. `state.json` is written last: a directory without it
//! is incomplete and is removed on resume, as Bergson does with a missing `.metadata`.

use super::optimizer::OptState;
use super::schedule::LrSchedule;
use super::trainer::TrainerState;
use crate::config::SaveMode;
use crate::error::IoContext;
use crate::pickle::{self, Value};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The checkpoint after `current`, for a run of `n` steps (Bergson's `next_save_index`).
pub fn next_save_index(current: usize, n: usize, mode: SaveMode, interval: usize) -> Result<usize> {
    Ok(match mode {
        SaveMode::Final => n,
        SaveMode::All => current + 1,
        SaveMode::Interval => {
            if interval == 0 {
                return Err(Error::input(
                    "--save_mode interval needs --save_interval of at least 1",
                ));
            }
            current + interval
        }
        SaveMode::Sqrt => {
            let chunk = n.isqrt();
            if current + chunk >= n {
                current + 1
            } else {
                current + chunk
            }
        }
        SaveMode::Log => current + ((n.saturating_sub(current)) / 2).max(1),
    })
}

/// The steps whose states a run of `n` steps checkpoints (before the step), plus `n` itself
/// for `interval`/`final` when the schedule lands on it.
pub fn save_schedule(n: usize, mode: SaveMode, interval: usize) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    let mut next = if mode == SaveMode::Final { n } else { 0 };
    while next < n {
        out.push(next);
        next = next_save_index(next, n, mode, interval)?;
    }
    if matches!(mode, SaveMode::Interval | SaveMode::Final) && next == n {
        out.push(n);
    }
    Ok(out)
}

/// What a checkpoint's `state.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateInfo {
    /// Steps taken.
    pub batch_index: usize,
    /// Optimizer updates applied.
    pub count: usize,
    /// The settings that determine the trajectory (a resumed run must have the same).
    pub trajectory: serde_json::Value,
}

/// The directory of step `i`'s checkpoint.
pub fn checkpoint_dir(checkpoints: &Path, step: usize) -> PathBuf {
    checkpoints.join(format!("step_{step}.ckpt"))
}

/// Writes `state` as `step_{batch_index}.ckpt`.
pub fn save_state(
    checkpoints: &Path,
    names: &[String],
    state: &TrainerState,
    trajectory: &serde_json::Value,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(checkpoints, state.batch_index);
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let mut tensors: Vec<(String, Tensor)> = names
        .iter()
        .zip(&state.params)
        // GPT-2's Conv1D weights are transposed views (safetensors needs contiguous data).
        .map(|(n, t)| (n.clone(), t.detach().contiguous()))
        .collect();
    let keys = state.opt.keys(names, &state.params);
    for (key, t) in keys.into_iter().zip(state.opt.tensors()) {
        tensors.push((format!("opt_state/{key}"), t.detach().contiguous()));
    }
    let file = dir.join("state.safetensors");
    Tensor::write_safetensors(&tensors, &file)?;
    let info = StateInfo {
        batch_index: state.batch_index,
        count: state.opt.count(),
        trajectory: trajectory.clone(),
    };
    let json = dir.join("state.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&info).unwrap_or_default()).at_path(&json)?;
    Ok(dir)
}

/// Complete checkpoints under `checkpoints`, by step; incomplete ones (no `state.json`) are
/// deleted.
pub fn complete_checkpoints(checkpoints: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry.at_path(checkpoints)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(step) = name
            .strip_prefix("step_")
            .and_then(|s| s.strip_suffix(".ckpt"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if path.join("state.json").is_file() {
            out.push((step, path));
        } else {
            std::fs::remove_dir_all(&path).at_path(&path)?;
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the checkpoint in `dir` into a state shaped like `like`, refusing one written with
/// other trajectory settings.
pub fn load_state(
    dir: &Path,
    names: &[String],
    like: &TrainerState,
    trajectory: &serde_json::Value,
    device: Device,
) -> Result<TrainerState> {
    let json = dir.join("state.json");
    let info: StateInfo =
        serde_json::from_slice(&std::fs::read(&json).at_path(&json)?).map_err(|e| {
            Error::input(format!(
                "{}: not a bergson-rs trainer checkpoint ({e}); delete it or run without --resume",
                json.display()
            ))
        })?;
    if &info.trajectory != trajectory {
        return Err(Error::input(format!(
            "{} was written by a run with other training settings ({}); resume with the same settings, or start over with --overwrite",
            dir.display(),
            differing_keys(&info.trajectory, trajectory)
        )));
    }
    let file = dir.join("state.safetensors");
    let tensors = Tensor::read_safetensors(&file)?;
    let get = |name: &str, shape: &[i64]| -> Result<Tensor> {
        let t = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                Error::input(format!(
                    "{}: '{name}' is missing; the checkpoint belongs to another model: start over with --overwrite",
                    file.display()
                ))
            })?;
        if t.size() != shape {
            return Err(Error::input(format!(
                "{}: '{name}' has shape {:?}, this model needs {shape:?}; the checkpoint belongs to another model: start over with --overwrite",
                file.display(),
                t.size()
            )));
        }
        Ok(t.to_device(device))
    };
    let params = names
        .iter()
        .zip(&like.params)
        .map(|(n, p)| get(n, &p.size()).map(|t| t.to_kind(p.kind())))
        .collect::<Result<Vec<_>>>()?;
    let keys = like.opt.keys(names, &like.params);
    let moments = keys
        .iter()
        .zip(like.opt.tensors())
        .map(|(k, t)| get(&format!("opt_state/{k}"), &t.size()).map(|m| m.to_kind(t.kind())))
        .collect::<Result<Vec<_>>>()?;
    let opt = like.opt.with_tensors(moments).with_count(info.count);
    Ok(TrainerState {
        params,
        opt,
        batch_index: info.batch_index,
    })
}

fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return "unknown settings".into();
    };
    let keys: Vec<String> = b
        .iter()
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "--{k} was {} and is now {v}",
                a.get(k).map_or("unset".to_string(), |x| x.to_string())
            )
        })
        .collect();
    if keys.is_empty() {
        "different settings".into()
    } else {
        keys.join(", ")
    }
}

/// `checkpoints/log_history.json`: `[{"step": s + 1, "learning_rate": lr(s)}, ...]`, as
/// Bergson's `write_lr_history` (HF `log_history` shape).
pub fn write_lr_history(checkpoints: &Path, schedule: &LrSchedule, num_steps: usize) -> Result<()> {
    std::fs::create_dir_all(checkpoints).at_path(checkpoints)?;
    let history: Vec<serde_json::Value> = (0..num_steps)
        .map(|s| serde_json::json!({"step": s + 1, "learning_rate": schedule.lr(s)}))
        .collect();
    let path = checkpoints.join("log_history.json");
    std::fs::write(&path, serde_json::to_string(&history).unwrap_or_default()).at_path(&path)
}

/// Writes AdamW's second moments as PyTorch's `optimizer.pt` (Bergson's
/// `save_second_moments_as_optimizer_pt`): `{"state": {i: {"exp_avg_sq": ν, "param_name":
/// name, ["step"]}}, "param_groups": [{"params": [i...], ["betas", "eps", "eps_root"]}]}` with
/// `i` the parameter's index in `named_parameters()`.
pub fn save_optimizer_pt(
    path: &Path,
    names: &[String],
    state: &TrainerState,
    tagged: Option<(f64, f64, f64, f64)>,
) -> Result<usize> {
    let OptState::AdamW { nu, .. } = &state.opt else {
        return Err(Error::input(
            "--save_optimizer_state needs --optimizer adamw (only AdamW keeps a second moment per parameter)",
        ));
    };
    let mut entries = Vec::new();
    for (i, (name, v)) in names.iter().zip(nu).enumerate() {
        let mut fields = vec![
            (
                "exp_avg_sq",
                Value::Tensor(v.detach().to_device(Device::Cpu)),
            ),
            ("param_name", Value::Str(name.clone())),
        ];
        if tagged.is_some() {
            fields.push((
                "step",
                Value::Tensor(Tensor::from(state.batch_index as i64)),
            ));
        }
        entries.push((Value::Int(i as i64), Value::str_dict(fields)));
    }
    let ids = (0..names.len() as i64).map(Value::Int).collect();
    let mut group = vec![("params", Value::List(ids))];
    if let Some((b1, b2, eps, eps_root)) = tagged {
        group.push((
            "betas",
            Value::Tuple(vec![Value::Float(b1), Value::Float(b2)]),
        ));
        group.push(("eps", Value::Float(eps)));
        group.push(("eps_root", Value::Float(eps_root)));
    }
    let value = Value::str_dict([
        ("state", Value::Dict(entries)),
        ("param_groups", Value::List(vec![Value::str_dict(group)])),
    ]);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at_path(parent)?;
    }
    pickle::save(path, &value)?;
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bergson's docstring example (n = 100, sqrt: 0, 10, ..., 90, 91, ..., 99) and the other
    /// modes, as `next_save_index` iterates them.
    #[test]
    fn schedules_match_bergson() {
        let sqrt = save_schedule(100, SaveMode::Sqrt, 0).unwrap();
        let mut want: Vec<usize> = (0..10).map(|i| i * 10).collect();
        want.extend(91..100);
        assert_eq!(sqrt, want);
        assert_eq!(save_schedule(3, SaveMode::All, 0).unwrap(), vec![0, 1, 2]);
        assert_eq!(
            save_schedule(16, SaveMode::Log, 0).unwrap(),
            vec![0, 8, 12, 14, 15]
        );
        assert_eq!(
            save_schedule(7, SaveMode::Interval, 3).unwrap(),
            vec![0, 3, 6]
        );
        assert_eq!(
            save_schedule(6, SaveMode::Interval, 3).unwrap(),
            vec![0, 3, 6]
        );
        assert_eq!(save_schedule(5, SaveMode::Final, 0).unwrap(), vec![5]);
        assert!(save_schedule(5, SaveMode::Interval, 0).is_err());
    }
}
