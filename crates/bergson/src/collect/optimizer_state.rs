//! Normalizers from a `torch.save`d optimizer state (Bergson's `load_from_optimizer`): Adam's
//! `exp_avg_sq` (raw: no bias correction, no learning rate) or Adafactor's row/column factors,
//! mapped to module names relative to the base model.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::normalizer::Normalizer;
use crate::models::CausalLm;
use crate::pickle::{self, Value};
use crate::{Error, Result};

/// Where an `--optimizer_state` lives: a file, a directory holding `optimizer.pt`, or
/// `hf://repo[@revision][/path]` (resolved by `resolve_hub`).
pub fn resolve_optimizer_path(
    spec: &str,
    resolve_hub: impl Fn(&str, Option<&str>, &str) -> Result<PathBuf>,
) -> Result<PathBuf> {
    if let Some(rest) = spec.strip_prefix("hf://") {
        let (repo_rev, path) = split_repo_path(rest);
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (repo_rev, None),
        };
        let file = if path.ends_with(".pt") || path.ends_with(".pth") {
            path.to_string()
        } else if path.is_empty() {
            "optimizer.pt".to_string()
        } else {
            format!("{}/optimizer.pt", path.trim_end_matches('/'))
        };
        return resolve_hub(repo, revision, &file);
    }
    let local = Path::new(spec);
    if !local.exists() {
        return Err(Error::input(format!(
            "--optimizer_state '{spec}' does not exist: give an optimizer.pt file, a checkpoint directory holding one, or hf://<repo>[@rev][/path]"
        )));
    }
    let file = if local.is_dir() {
        local.join("optimizer.pt")
    } else {
        local.to_path_buf()
    };
    if !file.is_file() {
        return Err(Error::input(format!(
            "--optimizer_state: {} has no optimizer.pt; point it at the optimizer state file",
            local.display()
        )));
    }
    Ok(file)
}

/// `org/name/sub/path` → (`org/name`, `sub/path`); a revision may follow the name (`@rev`).
fn split_repo_path(rest: &str) -> (&str, &str) {
    let mut slashes = rest.match_indices('/').map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(second)) => (&rest[..second], &rest[second + 1..]),
        _ => (rest, ""),
    }
}

/// Loads the optimizer state at `path` and maps it onto `model`'s modules.
pub fn load_normalizers(
    model: &dyn CausalLm,
    path: &Path,
    include_bias: bool,
) -> Result<Vec<(String, Normalizer)>> {
    let state = pickle::load(path)?;
    normalizers_from_state(model, &state, include_bias).map_err(|e| match e {
        Error::Input(msg) => Error::input(format!("--optimizer_state {}: {msg}", path.display())),
        other => other,
    })
}

/// The parameters an optimizer state covers, in `named_parameters()` order with their shapes:
/// every parameter, or for a PEFT model the adapter's LoRA weights under the keys peft saves
/// them with (`get_peft_model_state_dict`, as Bergson indexes a PEFT model's state).
fn parameter_shapes(model: &dyn CausalLm) -> Vec<(String, Vec<i64>)> {
    let adapter = model.adapter_parameters();
    if !adapter.is_empty() {
        return adapter
            .into_iter()
            .map(|(n, t)| (crate::models::lora::saved_key(&n), t.size()))
            .collect();
    }
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect()
}

/// The collector's module of a PEFT parameter (`base_model.model.<module>.lora_A[.default].weight`
/// → `model.<module>.lora_A.default`). Bergson appends the adapter name to the saved key's
/// layer, so a `param_name` that already carries it (as Bergson's own trainer writes them)
/// finds no module there and the build fails; we accept both spellings.
fn adapter_module(param: &str) -> Option<String> {
    let layer = param.strip_suffix(".weight")?;
    let layer = layer.strip_prefix("base_model.").unwrap_or(layer);
    let layer = layer.strip_suffix(".default").unwrap_or(layer);
    Some(format!("{layer}.default"))
}

/// Whether a parameter belongs to an `nn.LayerNorm` (excluded from weight decay by HF's Trainer;
/// the Llama family's RMSNorms are not LayerNorms).
fn in_layer_norm(model_type: &str, name: &str) -> bool {
    matches!(model_type, "gpt_neox" | "gpt2")
        && name.split('.').any(|part| {
            part.contains("layernorm") || part.contains("layer_norm") || part.starts_with("ln_")
        })
}

/// transformers' `Trainer.get_decay_parameter_names` name patterns: `bias`, `layernorm`,
/// `rmsnorm`, a `norm` segment, or a segment ending in `_norm`.
fn trainer_no_decay_name(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower.contains("bias")
        || lower.contains("layernorm")
        || lower.contains("rmsnorm")
        || lower
            .split('.')
            .any(|seg| seg == "norm" || seg.ends_with("_norm"))
}

/// State index → parameter name, as Bergson's `optimizer_param_index_to_name`: one group follows
/// `named_parameters()`; two groups are HF Trainer's decay / no-decay split.
pub(crate) fn index_to_name(model: &dyn CausalLm, state: &Value) -> Result<Vec<(i64, String)>> {
    let params = parameter_shapes(model);
    let groups = state
        .get("param_groups")
        .and_then(Value::as_seq)
        .unwrap_or(&[]);
    let mapping: Vec<(i64, String)> = if groups.len() <= 1 {
        params
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (i as i64, n.clone()))
            .collect()
    } else {
        let sizes: Vec<usize> = groups
            .iter()
            .map(|g| {
                g.get("params")
                    .and_then(Value::as_seq)
                    .map_or(0, <[Value]>::len)
            })
            .collect();
        // Bergson rebuilds HF Trainer's split with LayerNorms and biases excluded from decay;
        // transformers 5's Trainer also excludes parameters named like norms. Either may have
        // written the file: take the one whose group sizes fit.
        let model_type = model.model_type();
        let rules: [&dyn Fn(&str) -> bool; 2] = [
            &|n: &str| !in_layer_norm(model_type, n) && !n.contains("bias"),
            &|n: &str| !in_layer_norm(model_type, n) && !trainer_no_decay_name(n),
        ];
        let mut chosen = None;
        let mut expected = Vec::new();
        for decay in rules {
            let n_decay = params.iter().filter(|(n, _)| decay(n)).count();
            let want = [n_decay, params.len() - n_decay];
            if groups.len() == 2 && sizes == want {
                chosen = Some(decay);
                break;
            }
            if !expected.contains(&want) {
                expected.push(want);
            }
        }
        let Some(decay) = chosen else {
            return Err(Error::input(format!(
                "{} parameter groups of sizes {sizes:?} do not match HF Trainer's decay/no-decay split ({}) for this model; it is not this model's optimizer state: pass the optimizer.pt saved with this checkpoint, or drop --optimizer_state",
                groups.len(),
                expected.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(" or ")
            )));
        };
        let ordered: Vec<&String> = params
            .iter()
            .map(|(n, _)| n)
            .filter(|n| decay(n))
            .chain(params.iter().map(|(n, _)| n).filter(|n| !decay(n)))
            .collect();
        let flat: Vec<i64> = groups
            .iter()
            .flat_map(|g| {
                g.get("params")
                    .and_then(Value::as_seq)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(Value::as_int)
            })
            .collect();
        flat.into_iter().zip(ordered.into_iter().cloned()).collect()
    };
    // Every Adam moment must have its parameter's shape.
    let entries = state.get("state").and_then(Value::as_dict).unwrap_or(&[]);
    for (idx, entry) in entries {
        let (Some(idx), Some(sq)) = (
            idx.as_int(),
            entry.get("exp_avg_sq").and_then(Value::as_tensor),
        ) else {
            continue;
        };
        if entry.get("param_name").is_some() {
            continue;
        }
        let Some((_, name)) = mapping.iter().find(|(i, _)| *i == idx) else {
            continue;
        };
        let want = params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        if sq.size() != want {
            return Err(Error::input(format!(
                "state entry {idx} has second-moment shape {:?} but maps to {name} of shape {want:?}; it does not fit this model: pass the optimizer.pt saved with this checkpoint, or drop --optimizer_state",
                sq.size()
            )));
        }
    }
    Ok(mapping)
}

/// The unfactored second moment of an entry (`exp_avg_sq`, or bitsandbytes' `state2`).
fn unfactored(entry: &Value) -> Option<&Tensor> {
    entry
        .get("exp_avg_sq")
        .and_then(Value::as_tensor)
        .or_else(|| {
            entry
                .get("__bnb_optimizer_quant_state__")
                .and_then(|q| q.get("state2"))
                .and_then(Value::as_tensor)
        })
}

/// Builds Bergson's normalizers from an optimizer `state_dict` value.
pub fn normalizers_from_state(
    model: &dyn CausalLm,
    state: &Value,
    include_bias: bool,
) -> Result<Vec<(String, Normalizer)>> {
    let entries = state
        .get("state")
        .and_then(Value::as_dict)
        .ok_or_else(|| Error::input("not an optimizer state_dict (no `state` dict)"))?;
    let mapping = index_to_name(model, state)?;
    let name_of = |idx: i64, entry: &Value| -> Option<String> {
        entry
            .get("param_name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                mapping
                    .iter()
                    .find(|(i, _)| *i == idx)
                    .map(|(_, n)| n.clone())
            })
    };
    let prefix = format!("{}.", model.base_model_prefix());
    let is_adapter = !model.adapter_parameters().is_empty();
    // LoRA halves are nn.Linear even over GPT-2's Conv1D layers.
    let transposed = model.model_type() == "gpt2" && !is_adapter;
    let linears = model.linear_modules();
    let device = model.device();
    let bias_moment = |layer: &str| -> Option<Tensor> {
        if !include_bias {
            return None;
        }
        let bias_name = format!("{layer}.bias");
        entries
            .iter()
            .find(|(idx, e)| {
                idx.as_int().and_then(|i| name_of(i, e)).as_deref() == Some(bias_name.as_str())
            })
            .and_then(|(_, e)| unfactored(e))
            .map(|t| t.to_device(device))
    };
    let mut out = Vec::new();
    for (idx, entry) in entries {
        let Some(idx) = idx.as_int() else { continue };
        let Some(param) = name_of(idx, entry) else {
            continue;
        };
        let Some(layer) = param.strip_suffix(".weight") else {
            continue;
        };
        let module = if is_adapter {
            match adapter_module(&param) {
                Some(m) => m,
                None => continue,
            }
        } else {
            let module = layer.strip_prefix("base_model.").unwrap_or(layer);
            module.strip_prefix(&prefix).unwrap_or(module).to_string()
        };
        // The collector's [out, in] orientation; HF Conv1D stores [in, out].
        let linear = linears.iter().find(|l| l.name == module);
        if is_adapter && linear.is_none() {
            // Bergson keeps only the adapter's target modules.
            continue;
        }
        let is_conv1d = transposed && linear.is_some();
        if let Some(sq) = unfactored(entry) {
            if sq.dim() != 2 {
                continue;
            }
            let mut sq = sq.shallow_clone();
            if let Some(l) = linear {
                let oriented = if is_conv1d {
                    sq.tr()
                } else {
                    sq.shallow_clone()
                };
                if oriented.size() == [l.out_features, l.in_features] {
                    sq = oriented.contiguous();
                }
            }
            out.push((
                module,
                Normalizer::Adam {
                    weight_avg_sq: sq.to_device(device),
                    bias_avg_sq: bias_moment(layer),
                },
            ));
        } else if let Some(row) = entry.get("exp_avg_sq_row").and_then(Value::as_tensor) {
            let Some(col) = entry.get("exp_avg_sq_col").and_then(Value::as_tensor) else {
                continue;
            };
            if row.dim() != 1 {
                continue;
            }
            let (row, col) = if is_conv1d { (col, row) } else { (row, col) };
            out.push((
                module,
                Normalizer::Adafactor {
                    row: row.to_device(device),
                    col: col.to_device(device),
                    bias_avg_sq: bias_moment(layer),
                },
            ));
        }
    }
    if out.is_empty() {
        return Err(Error::input(
            "no optimizer second moments found; save the state of an Adam-family or Adafactor optimizer",
        ));
    }
    Ok(out)
}

/// Writes `normalizers.pth` as Bergson's `GradientProcessor.save`:
/// `{module: {"__class__": "AdamNormalizer", "weight_avg_sq": ..., ...}}`.
pub fn save_normalizers(path: &Path, normalizers: &[(String, Normalizer)]) -> Result<()> {
    let dict = Value::str_dict(normalizers.iter().map(|(name, n)| {
        let mut fields: Vec<(String, Value)> =
            vec![("__class__".into(), Value::from(n.class_name()))];
        for (field, t) in n.tensors() {
            fields.push((field.into(), Value::Tensor(t.shallow_clone())));
        }
        (name.clone(), Value::str_dict(fields))
    }));
    pickle::save(path, &dict)
}

/// Reads `normalizers.pth` (Bergson's layout, incl. the legacy `avg_sq` key).
pub fn read_normalizers(path: &Path) -> Result<Vec<(String, Normalizer)>> {
    let v = pickle::load(path)?;
    let dict = v
        .as_dict()
        .ok_or_else(|| Error::input(format!("{}: not a dict of normalizers", path.display())))?;
    let mut out = Vec::new();
    for (k, state) in dict {
        let name = k.as_str().unwrap_or_default().to_string();
        let t = |f: &str| {
            state
                .get(f)
                .and_then(Value::as_tensor)
                .map(Tensor::shallow_clone)
        };
        let n = match state.get("__class__").and_then(Value::as_str) {
            Some("AdamNormalizer") => Normalizer::Adam {
                weight_avg_sq: t("weight_avg_sq")
                    .or_else(|| t("avg_sq"))
                    .ok_or_else(|| bad(path, &name))?,
                bias_avg_sq: t("bias_avg_sq"),
            },
            Some("AdafactorNormalizer") => Normalizer::Adafactor {
                row: t("row").ok_or_else(|| bad(path, &name))?,
                col: t("col").ok_or_else(|| bad(path, &name))?,
                bias_avg_sq: t("bias_avg_sq"),
            },
            other => {
                return Err(Error::input(format!(
                    "{}: unknown normalizer class {other:?} for {name}",
                    path.display()
                )))
            }
        };
        out.push((name, n));
    }
    Ok(out)
}

fn bad(path: &Path, name: &str) -> Error {
    Error::input(format!(
        "{}: normalizer {name} is missing its tensors",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_uris_split_like_bergson() {
        let got = std::cell::RefCell::new(Vec::new());
        let hub = |repo: &str, rev: Option<&str>, file: &str| {
            got.borrow_mut()
                .push((repo.to_string(), rev.map(str::to_string), file.to_string()));
            Ok(PathBuf::from("x"))
        };
        resolve_optimizer_path("hf://org/model", hub).unwrap();
        resolve_optimizer_path("hf://org/model@v1/checkpoint-10", hub).unwrap();
        resolve_optimizer_path("hf://org/model/ckpt/opt.pth", hub).unwrap();
        assert_eq!(
            got.borrow().clone(),
            [
                ("org/model".into(), None, "optimizer.pt".into()),
                (
                    "org/model".into(),
                    Some("v1".into()),
                    "checkpoint-10/optimizer.pt".into()
                ),
                ("org/model".into(), None, "ckpt/opt.pth".into()),
            ]
        );
        assert!(resolve_optimizer_path("/no/such/file", hub).is_err());
    }
}
