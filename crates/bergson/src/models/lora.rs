//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), as Python Bergson
//! 2.5.1 loads them (`PeftModel.from_pretrained` over the base model named in the config).
//!
//! An adapted Linear computes `y = base(x) + scaling · B(A(x))` (peft's `lora.Linear.forward`,
//! dropout off in eval), where `A` `[r, in]` and `B` `[out, r]` are Linear modules of their own.
//! Bergson collects gradients of exactly those modules, named as peft names them relative to
//! the `PeftModel`'s base model: `model.<full module name>.lora_A.default` (and `lora_B`).
//! Adapter weights take the base model's dtype (Bergson loads adapters with
//! `autocast_adapter_dtype=False`).

use super::checkpoint::Checkpoint;
use super::Linear;
use crate::error::IoContext;
use crate::{Error, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// The adapter's settings file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// peft's name of the one adapter a saved directory holds.
const ADAPTER_NAME: &str = "default";
/// Prefix of every key in the adapter's weights (`PeftModel.base_model.model.`).
const KEY_PREFIX: &str = "base_model.model.";

/// True when `dir` holds a PEFT adapter rather than a full checkpoint.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// The LoRA half of an adapted Linear: `scaling · B(A(x))`.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `lora_A` `[r, in]`, no bias.
    pub a: Linear,
    /// `lora_B` `[out, r]`, no bias.
    pub b: Linear,
    /// `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    pub scaling: f64,
}

/// A loaded adapter: its settings and weights, applied while a model is built.
#[derive(Debug)]
pub struct Adapter {
    dir: PathBuf,
    /// Where the base model is (`base_model_name_or_path`).
    pub base_model: String,
    /// The base model's revision, when the adapter names one.
    pub base_revision: Option<String>,
    r: i64,
    alpha: f64,
    rslora: bool,
    rank_pattern: Vec<(String, regex::Regex, i64)>,
    alpha_pattern: Vec<(String, regex::Regex, f64)>,
    weights: Checkpoint,
}

impl Adapter {
    /// Reads `adapter_config.json` and memory-maps `adapter_model.safetensors` in `dir`,
    /// refusing the peft options Bergson's LoRA path would not reproduce here.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).at_path(&path)?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| {
            Error::input(format!(
                "{}: not valid JSON ({e}); re-save the adapter with peft's save_pretrained",
                path.display()
            ))
        })?;
        let bad = |what: String| -> Error {
            Error::input(format!(
                "{}: {what}; bergson-rs reads plain LoRA adapters (peft_type LORA, bias none, no DoRA, no modules_to_save)",
                path.display()
            ))
        };
        let str_of = |key: &str| cfg.get(key).and_then(Value::as_str);
        let peft_type = str_of("peft_type").unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!("peft_type {peft_type} is not supported")));
        }
        if cfg.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(bad("use_dora true (DoRA) is not supported".into()));
        }
        if cfg.get("lora_bias").and_then(Value::as_bool) == Some(true) {
            return Err(bad("lora_bias true is not supported".into()));
        }
        if let Some(bias) = str_of("bias").filter(|b| *b != "none") {
            return Err(bad(format!("bias '{bias}' is not supported")));
        }
        for key in ["modules_to_save", "trainable_token_indices"] {
            if cfg
                .get(key)
                .is_some_and(|v| !v.is_null() && v != &Value::Array(vec![]))
            {
                return Err(bad(format!("{key} is set")));
            }
        }
        let base_model = str_of("base_model_name_or_path")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                bad("base_model_name_or_path is missing; set it to the base model's directory or Hub id".into())
            })?
            .to_string();
        let r = cfg
            .get("r")
            .and_then(Value::as_i64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r (the LoRA rank) is missing or not a positive integer".into()))?;
        let alpha = cfg
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("lora_alpha is missing".into()))?;
        let pattern = |key: &str| -> Result<Vec<(String, regex::Regex, f64)>> {
            let Some(map) = cfg.get(key).and_then(Value::as_object) else {
                return Ok(Vec::new());
            };
            map.iter()
                .map(|(k, v)| {
                    // peft's `get_pattern_key`: the key matches a module name's dotted suffix.
                    let re = regex::Regex::new(&format!(r"^(.*\.)?({k})$")).map_err(|e| {
                        bad(format!("{key} key '{k}' is not a regular expression ({e})"))
                    })?;
                    let value = v
                        .as_f64()
                        .ok_or_else(|| bad(format!("{key}['{k}'] is not a number")))?;
                    Ok((k.clone(), re, value))
                })
                .collect()
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, re, v)| (k, re, v as i64))
            .collect();
        let alpha_pattern = pattern("alpha_pattern")?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                " (it has adapter_model.bin: re-save it with save_pretrained(..., safe_serialization=True))"
            } else {
                ""
            };
            return Err(Error::input(format!(
                "{}: no {ADAPTER_WEIGHTS}{hint}; bergson-rs reads safetensors adapters only",
                dir.display()
            )));
        }
        let weights = Checkpoint::open_file(&weights_path)?;
        let adapter = Self {
            dir: dir.to_path_buf(),
            base_model,
            base_revision: str_of("revision").map(str::to_string),
            r,
            alpha,
            rslora: cfg.get("use_rslora").and_then(Value::as_bool) == Some(true),
            rank_pattern,
            alpha_pattern,
            weights,
        };
        adapter.check_keys()?;
        Ok(adapter)
    }

    /// Every key must be a Linear's `lora_A`/`lora_B` weight: peft's embedding or
    /// convolution adapters are refused by name.
    fn check_keys(&self) -> Result<()> {
        for name in self.weights.names() {
            let ok = name.starts_with(KEY_PREFIX)
                && (name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight"));
            if !ok {
                return Err(Error::input(format!(
                    "{}: tensor '{name}' is not a LoRA Linear weight (lora_A/lora_B); bergson-rs adapts Linear layers only",
                    self.dir.join(ADAPTER_WEIGHTS).display()
                )));
            }
        }
        Ok(())
    }

    /// Full names (`model.layers.0.self_attn.q_proj`) of the adapted modules.
    pub fn module_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .weights
            .names()
            .filter_map(|n| n.strip_prefix(KEY_PREFIX)?.strip_suffix(".lora_A.weight"))
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// `lora_alpha / r` for `module`, with peft's per-module patterns and rsLoRA.
    fn scaling(&self, module: &str) -> f64 {
        let r = self
            .rank_pattern
            .iter()
            .find(|(_, re, _)| re.is_match(module))
            .map_or(self.r, |(_, _, r)| *r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(_, re, _)| re.is_match(module))
            .map_or(self.alpha, |(_, _, a)| *a);
        if self.rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The adapter of the Linear with full name `module` (`[out, in]`), if it is adapted,
    /// loaded as `kind` (the base model's dtype).
    pub fn for_module(
        &self,
        module: &str,
        in_features: i64,
        out_features: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Option<LoraAdapter>> {
        let key = |half: &str| format!("{KEY_PREFIX}{module}.lora_{half}.weight");
        let (key_a, key_b) = (key("A"), key("B"));
        if !self.weights.contains(&key_a) {
            return Ok(None);
        }
        let file = self.dir.join(ADAPTER_WEIGHTS);
        let shape = |k: &str| self.weights.shape(k).map(<[i64]>::to_vec);
        let (Some(sa), Some(sb)) = (shape(&key_a), shape(&key_b)) else {
            return Err(Error::input(format!(
                "{}: '{key_a}' has no matching lora_B; re-save the adapter",
                file.display()
            )));
        };
        let r = sa.first().copied().unwrap_or(0);
        if sa != [r, in_features] || sb != [out_features, r] {
            return Err(Error::input(format!(
                "{}: LoRA weights of '{module}' have shapes {sa:?} and {sb:?}, but the base layer is [{out_features}, {in_features}]; the adapter belongs to another base model",
                file.display()
            )));
        }
        let name = |half: &str| format!("model.{module}.lora_{half}.{ADAPTER_NAME}");
        let linear = |key: &str, half: &str| -> Result<Linear> {
            Ok(Linear {
                name: name(half),
                weight: self.weights.load(key, kind, device)?,
                bias: None,
                adapter: None,
            })
        };
        Ok(Some(LoraAdapter {
            a: linear(&key_a, "A")?,
            b: linear(&key_b, "B")?,
            scaling: self.scaling(module),
        }))
    }

    /// The adapter's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Full names of the modules an adapter adapts that no Linear of the model took: the adapter
/// targets something bergson-rs does not adapt (an embedding, the LM head) or another model.
pub fn unused_modules(adapter: &Adapter, used: &HashSet<String>) -> Vec<String> {
    adapter
        .module_names()
        .into_iter()
        .filter(|m| !used.contains(m))
        .collect()
}
