//! Each segment's `ηK` (learning rate times steps) and what SOURCE reads from the training run
//! (Bergson 2.5.1's `compute_lr_times_steps_per_segment` and `train_cfg_io.resolve`).
//!
//! `ηK_l` is `lr_list[l] · step_size_list[l]` when both are given; otherwise the learning rates
//! of steps `b_l + 1 ..= b_{l+1}` summed, `b_l` the training step of the segment's last
//! checkpoint (read from its name: `checkpoint-<N>`, `step_<N>[.ckpt]` or `<N>`), from the
//! learning-rate history: the training run's `log_history.json` (or
//! `checkpoints/log_history.json`), else one beside the first checkpoint, else the last
//! checkpoint's `trainer_state.json` (HF Trainer). With momentum β every `ηK` is scaled by
//! `1/(1−β)` (App. D.2).
//!
//! The training run is the directory above the checkpoints (`<run>/checkpoint-N`) or above
//! their folder (`<run>/exported/checkpoint-N`) that holds a `config.yaml`; its training
//! config fills an unset `momentum` (`adam_beta1` for SGD, 0 for AdamW) and `model_path`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::config::ApproxUnrollingConfig;
use crate::{Error, Result};

/// The learning-rate history's file name (Bergson's `LR_HISTORY_FILENAME`).
pub const LR_HISTORY: &str = "log_history.json";

/// The training step of a checkpoint from its directory name.
pub fn checkpoint_step(path: &str) -> Result<u64> {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let step = name
        .strip_prefix("checkpoint-")
        .and_then(digits)
        .or_else(|| {
            let rest = name.strip_prefix("step_")?;
            digits(rest.strip_suffix(".ckpt").unwrap_or(rest))
        })
        .or_else(|| digits(&name));
    step.ok_or_else(|| {
        Error::input(format!(
            "cannot infer a training step from checkpoint '{path}': expected a path ending in \
             'checkpoint-<N>', 'step_<N>[.ckpt]' or a bare '<N>'; pass --lr_list and \
             --step_size_list to give each segment's learning rate and steps instead"
        ))
    })
}

/// The training run the checkpoints came from: `<run>/exported/checkpoint-N` or
/// `<run>/checkpoint-N` with a `config.yaml` in `<run>`.
pub fn infer_trainer_run(checkpoints: &[String]) -> Option<PathBuf> {
    let first = Path::new(checkpoints.first()?);
    let parent = first.parent()?;
    [parent.parent(), Some(parent)]
        .into_iter()
        .flatten()
        .find(|c| c.join("config.yaml").is_file())
        .map(Path::to_path_buf)
}

/// The training config (`optimizer`, `adam_beta1`, `model`) of a run's `config.yaml`: the
/// first step's payload; `None` when it is not a training run's.
fn training_config(run: &Path) -> Option<serde_json::Map<String, Json>> {
    let text = std::fs::read_to_string(run.join("config.yaml")).ok()?;
    let doc: Json = serde_saphyr::from_str(&text).ok()?;
    let steps = doc.get("steps").cloned().unwrap_or(doc);
    let first = match steps {
        Json::Array(a) => a.into_iter().next()?,
        other => other,
    };
    let payload = first.as_object()?.values().next()?.as_object()?.clone();
    // A training config names its optimizer; an attribution run's does not.
    payload.contains_key("optimizer").then_some(payload)
}

/// Fills `momentum` and `model_path` from the training run, never overriding a given value;
/// an unset momentum is 0 without a run.
pub fn resolve(cfg: &mut ApproxUnrollingConfig) {
    let run = infer_trainer_run(&cfg.checkpoints);
    let training = run.as_deref().and_then(training_config);
    let Some(t) = training else {
        if let Some(run) = &run {
            tracing::warn!(
                "ignoring {} as a trainer run: its config.yaml is not a training config",
                run.display()
            );
        }
        cfg.momentum.get_or_insert(0.0);
        return;
    };
    let optimizer = t.get("optimizer").and_then(Json::as_str).unwrap_or("");
    if optimizer == "adamw" && !cfg.use_adam_preconditioner {
        tracing::warn!(
            "the run trained with adamw but --use_adam_preconditioner is not set; scores will \
             use the SGD variant"
        );
    }
    if cfg.model_path.is_none() {
        cfg.model_path = t.get("model").and_then(Json::as_str).map(str::to_string);
    }
    if cfg.momentum.is_none() {
        cfg.momentum = Some(match optimizer {
            "sgd" => t.get("adam_beta1").and_then(Json::as_f64).unwrap_or(0.9),
            "adamw" => 0.0,
            other => {
                tracing::warn!(
                    "cannot derive a SOURCE momentum for optimizer '{other}'; using 0.0 (pass \
                     --momentum if that is wrong)"
                );
                0.0
            }
        });
    }
}

/// Where the learning-rate history is: the run's, else beside the first checkpoint, else the
/// last checkpoint's `trainer_state.json` (whose `log_history` it reads).
fn lr_history(checkpoints: &[String]) -> Result<Vec<Json>> {
    let from_run = infer_trainer_run(checkpoints).and_then(|run| {
        [
            run.join(LR_HISTORY),
            run.join("checkpoints").join(LR_HISTORY),
        ]
        .into_iter()
        .find(|p| p.is_file())
    });
    let beside = Path::new(&checkpoints[0])
        .parent()
        .map(|p| p.join(LR_HISTORY))
        .filter(|p| p.exists());
    let read = |path: &Path| -> Result<Json> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input(format!(
                "cannot read the learning-rate history {}: {e}; pass --lr_list and \
                 --step_size_list instead",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::input(format!(
                "{} is not JSON ({e}); pass --lr_list and --step_size_list instead",
                path.display()
            ))
        })
    };
    let history = match from_run.or(beside) {
        Some(path) => read(&path)?,
        None => {
            let path = Path::new(checkpoints.last().expect("checkpoints checked non-empty"))
                .join("trainer_state.json");
            if !path.is_file() {
                return Err(Error::input(format!(
                    "no learning-rate history: neither {LR_HISTORY} beside the checkpoints or in \
                     their training run, nor {}; pass --lr_list and --step_size_list",
                    path.display()
                )));
            }
            read(&path)?
                .get("log_history")
                .cloned()
                .unwrap_or(Json::Null)
        }
    };
    match history {
        Json::Array(a) => Ok(a),
        _ => Err(Error::input(
            "the learning-rate history is not a list of {step, learning_rate} entries; pass \
             --lr_list and --step_size_list instead",
        )),
    }
}

/// `ηK` of every segment, momentum-scaled.
pub fn lr_times_steps(cfg: &ApproxUnrollingConfig) -> Result<Vec<f64>> {
    let segments = cfg.segments;
    let momentum = cfg.momentum.unwrap_or(0.0);
    if !(0.0..1.0).contains(&momentum) {
        return Err(Error::input(format!(
            "--momentum must be in [0, 1), got {momentum}"
        )));
    }
    let scale = 1.0 / (1.0 - momentum);
    if !cfg.lr_list.is_empty() && !cfg.step_size_list.is_empty() {
        if cfg.lr_list.len() != segments || cfg.step_size_list.len() != segments {
            return Err(Error::input(format!(
                "--lr_list ({}) and --step_size_list ({}) need one value per segment ({segments})",
                cfg.lr_list.len(),
                cfg.step_size_list.len()
            )));
        }
        return Ok(cfg
            .lr_list
            .iter()
            .zip(&cfg.step_size_list)
            .map(|(&lr, &k)| lr * k as f64 * scale)
            .collect());
    }
    let per_segment = cfg.checkpoints.len() / segments;
    let steps = cfg
        .checkpoints
        .iter()
        .map(|c| checkpoint_step(c))
        .collect::<Result<Vec<_>>>()?;
    let mut bounds = vec![0u64];
    bounds.extend((0..segments).map(|l| steps[(l + 1) * per_segment - 1]));
    let step_lr: HashMap<u64, f64> = lr_history(&cfg.checkpoints)?
        .iter()
        .filter_map(|e| Some((e.get("step")?.as_u64()?, e.get("learning_rate")?.as_f64()?)))
        .collect();
    Ok((0..segments)
        .map(|l| {
            let sum: f64 = (bounds[l] + 1..=bounds[l + 1])
                .map(|s| step_lr.get(&s).copied().unwrap_or(0.0))
                .sum();
            scale * sum
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_from_the_three_checkpoint_names() {
        assert_eq!(checkpoint_step("runs/x/checkpoint-12").unwrap(), 12);
        assert_eq!(checkpoint_step("ck/step_7.ckpt").unwrap(), 7);
        assert_eq!(checkpoint_step("ck/step_7").unwrap(), 7);
        assert_eq!(checkpoint_step("ck/30").unwrap(), 30);
        for bad in [
            "ck/final",
            "ck/checkpoint-",
            "ck/step_x.ckpt",
            "ck/checkpoint-3a",
        ] {
            let e = checkpoint_step(bad).unwrap_err().to_string();
            assert!(e.contains("--lr_list"), "{e}");
        }
    }

    /// Segment sums of the history's rates between checkpoint steps, momentum-scaled, and the
    /// explicit lists.
    #[test]
    fn lr_times_steps_sums_the_history_per_segment() {
        let dir = tempfile::tempdir().unwrap();
        let ck: Vec<String> = [2, 4, 6, 8]
            .iter()
            .map(|s| {
                dir.path()
                    .join(format!("checkpoint-{s}"))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let history: Vec<Json> = (1..=8)
            .map(|s| serde_json::json!({"step": s, "learning_rate": s as f64 / 10.0}))
            .collect();
        std::fs::write(
            dir.path().join(LR_HISTORY),
            serde_json::to_string(&history).unwrap(),
        )
        .unwrap();
        let mut cfg = ApproxUnrollingConfig {
            checkpoints: ck,
            segments: 2,
            momentum: Some(0.5),
            ..ApproxUnrollingConfig::default()
        };
        let got = lr_times_steps(&cfg).unwrap();
        let want = [2.0 * (0.1 + 0.2 + 0.3 + 0.4), 2.0 * (0.5 + 0.6 + 0.7 + 0.8)];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        cfg.lr_list = vec![0.3, 0.1];
        cfg.step_size_list = vec![4, 2];
        assert_eq!(lr_times_steps(&cfg).unwrap(), vec![2.4, 0.4]);
        cfg.step_size_list = vec![4];
        assert!(lr_times_steps(&cfg).is_err());
        cfg.momentum = Some(1.0);
        assert!(lr_times_steps(&cfg)
            .unwrap_err()
            .to_string()
            .contains("[0, 1)"));
    }
}
