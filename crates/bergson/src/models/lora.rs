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
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// The adapter's settings file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// peft's name of the one adapter a saved directory holds.
const ADAPTER_NAME: &str = "default";
/// Prefix of every key in the adapter's weights (`PeftModel.base_model.model.`).
const KEY_PREFIX: &str = "base_model.model.";

/// The seed Bergson's `setup_reproducibility` gives torch under `--debug`.
const PYTHON_DEBUG_SEED: i64 = 42;

/// peft's draws for one module from torch's global generator, as `LoraLayer.update_layer`
/// makes them: `nn.Linear(in, r)` and `nn.Linear(r, out)` each initialise their weight
/// (`kaiming_uniform_(a=√5)`), then `reset_lora_parameters` draws `lora_A` again (the kept
/// one; `N(0, 1/r)` for gaussian) and zeroes `lora_B`. Float32, on the CPU.
fn python_lora_a(r: i64, in_features: i64, out_features: i64, gaussian: bool) -> Result<Tensor> {
    let opts = (Kind::Float, Device::Cpu);
    // torch.nn.init.kaiming_uniform_ with a=√5, computed in double as Python does.
    let kaiming = |mut t: Tensor, fan_in: i64| -> Result<Tensor> {
        let a = 5f64.sqrt();
        let gain = (2.0 / (1.0 + a.powi(2))).sqrt();
        let bound = 3f64.sqrt() * (gain / (fan_in as f64).sqrt());
        Ok(t.f_uniform_(-bound, bound)?)
    };
    // The constructors' draws only advance the generator.
    let _ = kaiming(Tensor::f_empty([r, in_features], opts)?, in_features)?;
    let _ = kaiming(Tensor::f_empty([out_features, r], opts)?, r)?;
    let mut a = Tensor::f_empty([r, in_features], opts)?;
    Ok(if gaussian {
        a.f_normal_(0.0, 1.0 / r as f64)?
    } else {
        kaiming(a, in_features)?
    })
}

/// The name peft's `PeftModel.named_parameters()` gives the weight of a LoRA half
/// (`model.<module>.lora_A.default`, as [`LoraAdapter`] names its Linears):
/// `base_model.model.<module>.lora_A.default.weight`.
pub fn peft_parameter_name(half_module: &str) -> String {
    format!("base_model.{half_module}.weight")
}

/// The adapted module (`model.layers.0.self_attn.q_proj`) of a `lora_A` weight as
/// [`peft_parameter_name`] names it; None for `lora_B` and anything else.
pub fn adapted_module(peft_name: &str) -> Option<String> {
    peft_name
        .strip_prefix(KEY_PREFIX)?
        .strip_suffix(&format!(".lora_A.{ADAPTER_NAME}.weight"))
        .map(str::to_string)
}

/// True when `name` is a LoRA weight as [`peft_parameter_name`] writes it.
pub fn is_peft_parameter(name: &str) -> bool {
    name.starts_with(KEY_PREFIX)
        && (name.ends_with(&format!(".lora_A.{ADAPTER_NAME}.weight"))
            || name.ends_with(&format!(".lora_B.{ADAPTER_NAME}.weight")))
}

/// The key `save_pretrained` stores a trained LoRA weight under in
/// `adapter_model.safetensors` (the adapter name dropped).
pub fn saved_key(peft_name: &str) -> String {
    peft_name.replace(&format!(".{ADAPTER_NAME}.weight"), ".weight")
}

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

/// Where an adapter's weights come from.
#[derive(Debug)]
enum AdapterWeights {
    /// `adapter_model.safetensors` of a saved adapter.
    Saved(Checkpoint),
    /// A fresh adapter (`--peft_init_kwargs`) on the modules `targets` selects: `lora_A` drawn
    /// as peft initialises it, `lora_B` zero.
    Fresh {
        targets: TargetModules,
        gaussian: bool,
        /// Replaying Python Bergson's `--debug` draws: each module's `lora_A` as drawn, in
        /// the order the modules were built (the draws are sequential, so made once).
        replay: Option<Mutex<Vec<(String, Tensor)>>>,
    },
    /// Tensors a trainer owns, by peft parameter name
    /// (`base_model.model.<module>.lora_A.default.weight`): gradients reach them.
    /// (Behind a Mutex only to be `Sync`: they are read, never changed.)
    Explicit(Mutex<HashMap<String, Tensor>>),
}

/// peft's `target_modules`: a list of names (a module matches one as its whole name or its
/// dotted suffix), a regular expression the whole name must match, or `all-linear`.
#[derive(Debug)]
enum TargetModules {
    Names(Vec<String>),
    Pattern(regex::Regex),
    AllLinear,
}

impl TargetModules {
    fn matches(&self, module: &str) -> bool {
        match self {
            TargetModules::Names(names) => names
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            TargetModules::Pattern(re) => re.is_match(module),
            TargetModules::AllLinear => true,
        }
    }
}

/// peft's default LoRA targets per `model_type` (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
fn default_targets(model_type: &str) -> Option<&'static [&'static str]> {
    Some(match model_type {
        "gpt2" => &["c_attn"],
        "gpt_neox" => &["query_key_value"],
        "phi" => &["q_proj", "v_proj", "fc1", "fc2"],
        "llama" | "mistral" | "mixtral" | "qwen2" | "qwen3" | "gemma" | "gemma2"
        | "gemma3_text" | "gpt_neo" => &["q_proj", "v_proj"],
        _ => return None,
    })
}

/// A loaded adapter: its settings and weights, applied while a model is built.
#[derive(Debug)]
pub struct Adapter {
    /// The adapter's directory (empty for a fresh adapter).
    dir: PathBuf,
    /// How messages name the adapter.
    origin: String,
    /// Where the base model is (`base_model_name_or_path`).
    pub base_model: String,
    /// The base model's revision, when the adapter names one.
    pub base_revision: Option<String>,
    r: i64,
    alpha: f64,
    rslora: bool,
    rank_pattern: Vec<(String, regex::Regex, i64)>,
    /// Seed of a fresh adapter's draws.
    seed: u64,
    alpha_pattern: Vec<(String, regex::Regex, f64)>,
    weights: AdapterWeights,
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
            origin: dir.join(ADAPTER_WEIGHTS).display().to_string(),
            base_model,
            base_revision: str_of("revision").map(str::to_string),
            r,
            alpha,
            rslora: cfg.get("use_rslora").and_then(Value::as_bool) == Some(true),
            rank_pattern,
            alpha_pattern,
            weights: AdapterWeights::Saved(weights),
            seed: 0,
        };
        adapter.check_keys()?;
        Ok(adapter)
    }

    /// A fresh LoRA adapter over a `model_type` model from `--peft_init_kwargs` (`k=v,...`,
    /// lists as `a|b`: Bergson's `simple_parse_kwargs_string` into peft's `LoraConfig`).
    /// peft draws `lora_A` from torch's unseeded generator, so Python Bergson's fresh adapters
    /// differ from run to run; here module `m`'s draw is seeded by `seed` and `m`'s name, so
    /// a run is reproducible. `lora_B` starts at zero, as in peft, so `lora_A`'s gradients are
    /// zero until the adapter is trained.
    pub fn fresh(kwargs: &str, model_type: &str, seed: u64) -> Result<Self> {
        let bad = |what: String| -> Error {
            Error::input(format!(
                "--peft_init_kwargs: {what}; give LoraConfig arguments as k=v,... (lists as a|b), e.g. r=8,lora_alpha=16,target_modules=q_proj|v_proj"
            ))
        };
        let mut r = 8i64;
        let mut alpha = 8.0f64;
        let mut rslora = false;
        let mut gaussian = false;
        let mut targets = None;
        for item in kwargs.split(',').filter(|i| !i.trim().is_empty()) {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| bad(format!("'{item}' is not key=value")))?;
            let number = |v: &str| -> Result<f64> {
                v.parse::<f64>()
                    .map_err(|_| bad(format!("{key}={v} is not a number")))
            };
            match key {
                "peft_type" if value.eq_ignore_ascii_case("lora") => {}
                "peft_type" => return Err(bad(format!("peft_type {value} is not supported (LORA only)"))),
                "r" => r = number(value)? as i64,
                "lora_alpha" => alpha = number(value)?,
                "use_rslora" => rslora = value.eq_ignore_ascii_case("true"),
                // Dropout is off in eval mode, where gradients are collected.
                "lora_dropout" | "task_type" | "inference_mode" => {}
                "init_lora_weights" => match value.to_ascii_lowercase().as_str() {
                    "true" => gaussian = false,
                    "gaussian" => gaussian = true,
                    other => return Err(bad(format!("init_lora_weights={other} is not supported (true or gaussian)"))),
                },
                "target_modules" if value == "all-linear" => targets = Some(TargetModules::AllLinear),
                "target_modules" if value.contains('|') => {
                    targets = Some(TargetModules::Names(value.split('|').map(str::to_string).collect()))
                }
                "target_modules" => {
                    // peft: a string is a regular expression the whole module name must match.
                    let re = regex::Regex::new(&format!("^(?:{value})$"))
                        .map_err(|e| bad(format!("target_modules '{value}' is not a regular expression ({e})")))?;
                    targets = Some(TargetModules::Pattern(re));
                }
                other => return Err(bad(format!("{other} is not supported by bergson-rs (r, lora_alpha, target_modules, use_rslora, init_lora_weights, lora_dropout)"))),
            }
        }
        if r <= 0 {
            return Err(bad(format!("r={r} must be positive")));
        }
        let targets = match targets {
            Some(t) => t,
            None => TargetModules::Names(
                default_targets(model_type)
                    .ok_or_else(|| bad(format!("peft has no default target_modules for model_type {model_type}; set target_modules")))?
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        };
        Ok(Self {
            dir: PathBuf::new(),
            origin: "--peft_init_kwargs".into(),
            base_model: String::new(),
            base_revision: None,
            r,
            alpha,
            rslora,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            weights: AdapterWeights::Fresh {
                targets,
                gaussian,
                replay: None,
            },
            seed,
        })
    }

    /// Every key must be a Linear's `lora_A`/`lora_B` weight: peft's embedding or
    /// convolution adapters are refused by name.
    fn check_keys(&self) -> Result<()> {
        let AdapterWeights::Saved(weights) = &self.weights else {
            return Ok(());
        };
        for name in weights.names() {
            let ok = name.starts_with(KEY_PREFIX)
                && (name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight"));
            if !ok {
                return Err(Error::input(format!(
                    "{}: tensor '{name}' is not a LoRA Linear weight (lora_A/lora_B); bergson-rs adapts Linear layers only",
                    self.origin
                )));
            }
        }
        Ok(())
    }

    /// Full names (`model.layers.0.self_attn.q_proj`) of the modules a saved adapter adapts
    /// (none for a fresh one, which adapts the modules its targets match).
    pub fn module_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.weights {
            AdapterWeights::Saved(weights) => weights
                .names()
                .filter_map(|n| n.strip_prefix(KEY_PREFIX)?.strip_suffix(".lora_A.weight"))
                .map(str::to_string)
                .collect(),
            AdapterWeights::Explicit(tensors) => tensors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .filter_map(|n| {
                    n.strip_prefix(KEY_PREFIX)?
                        .strip_suffix(&format!(".lora_A.{ADAPTER_NAME}.weight"))
                })
                .map(str::to_string)
                .collect(),
            AdapterWeights::Fresh { .. } => return Vec::new(),
        };
        names.sort();
        names
    }

    /// `lora_alpha / r` for `module`, with peft's per-module patterns and rsLoRA.
    fn scaling(&self, module: &str) -> f64 {
        let r = self.rank(module);
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
        let name = |half: &str| format!("model.{module}.lora_{half}.{ADAPTER_NAME}");
        let linear = |half: &str, weight: Tensor| Linear {
            name: name(half),
            weight,
            bias: None,
            adapter: None,
        };
        let (a, b) = match &self.weights {
            AdapterWeights::Saved(weights) => {
                match self.saved_weights(
                    weights,
                    module,
                    in_features,
                    out_features,
                    kind,
                    device,
                )? {
                    Some(ab) => ab,
                    None => return Ok(None),
                }
            }
            AdapterWeights::Explicit(tensors) => {
                let tensors = tensors.lock().unwrap_or_else(|e| e.into_inner());
                let key =
                    |half: &str| format!("{KEY_PREFIX}{module}.lora_{half}.{ADAPTER_NAME}.weight");
                match (tensors.get(&key("A")), tensors.get(&key("B"))) {
                    (Some(a), Some(b)) => (a.shallow_clone(), b.shallow_clone()),
                    _ => return Ok(None),
                }
            }
            AdapterWeights::Fresh {
                targets,
                gaussian,
                replay,
            } => {
                if !targets.matches(module) {
                    return Ok(None);
                }
                let r = self.rank(module);
                let a = match replay {
                    Some(drawn) => {
                        let mut drawn = drawn.lock().unwrap_or_else(|e| e.into_inner());
                        match drawn.iter().find(|(m, _)| m == module) {
                            Some((_, a)) => a.shallow_clone(),
                            None => {
                                if drawn.is_empty() {
                                    tch::manual_seed(PYTHON_DEBUG_SEED);
                                }
                                let a = python_lora_a(r, in_features, out_features, *gaussian)?;
                                drawn.push((module.to_string(), a.shallow_clone()));
                                a
                            }
                        }
                    }
                    None => self.fresh_lora_a(module, r, in_features, *gaussian)?,
                };
                (
                    a.f_to_kind(kind)?.f_to_device(device)?,
                    Tensor::f_zeros([out_features, r], (kind, device))?,
                )
            }
        };
        Ok(Some(LoraAdapter {
            a: linear("A", a),
            b: linear("B", b),
            scaling: self.scaling(module),
        }))
    }

    /// `lora_A` and `lora_B` of `module` in a saved adapter, checked against the base layer.
    fn saved_weights(
        &self,
        weights: &Checkpoint,
        module: &str,
        in_features: i64,
        out_features: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let key = |half: &str| format!("{KEY_PREFIX}{module}.lora_{half}.weight");
        let (key_a, key_b) = (key("A"), key("B"));
        if !weights.contains(&key_a) {
            return Ok(None);
        }
        let shape = |k: &str| weights.shape(k).map(<[i64]>::to_vec);
        let (Some(sa), Some(sb)) = (shape(&key_a), shape(&key_b)) else {
            return Err(Error::input(format!(
                "{}: '{key_a}' has no matching lora_B; re-save the adapter",
                self.origin
            )));
        };
        let r = sa.first().copied().unwrap_or(0);
        if sa != [r, in_features] || sb != [out_features, r] {
            return Err(Error::input(format!(
                "{}: LoRA weights of '{module}' have shapes {sa:?} and {sb:?}, but the base layer is [{out_features}, {in_features}]; the adapter belongs to another base model",
                self.origin
            )));
        }
        Ok(Some((
            weights.load(&key_a, kind, device)?,
            weights.load(&key_b, kind, device)?,
        )))
    }

    /// A fresh `lora_A` `[r, in]` in float32 on the CPU: peft's `kaiming_uniform_(a=√5)`, i.e.
    /// uniform in ±1/√in (or `N(0, 1/r)` for `init_lora_weights=gaussian`), seeded by the
    /// adapter's seed and the module's name so any build of the model draws the same values.
    fn fresh_lora_a(
        &self,
        module: &str,
        r: i64,
        in_features: i64,
        gaussian: bool,
    ) -> Result<Tensor> {
        let mut seed = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for byte in module.bytes() {
            seed = (seed ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        tch::manual_seed((seed >> 1) as i64);
        let opts = (Kind::Float, Device::Cpu);
        Ok(if gaussian {
            Tensor::f_randn([r, in_features], opts)? / (r as f64).sqrt()
        } else {
            let bound = 1.0 / (in_features as f64).sqrt();
            Tensor::f_rand([r, in_features], opts)? * (2.0 * bound) - bound
        })
    }

    /// peft's `adapter_config.json` for this adapter over `base_model`, adapting `modules`
    /// (full names, which peft's suffix matching finds exactly).
    pub fn peft_config(&self, base_model: &str, modules: &[String]) -> Value {
        let gaussian = matches!(self.weights, AdapterWeights::Fresh { gaussian: true, .. });
        let pattern = |p: &[(String, regex::Regex, f64)]| -> serde_json::Map<String, Value> {
            p.iter()
                .map(|(k, _, v)| (k.clone(), Value::from(*v)))
                .collect()
        };
        let ranks: serde_json::Map<String, Value> = self
            .rank_pattern
            .iter()
            .map(|(k, _, v)| (k.clone(), Value::from(*v)))
            .collect();
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "revision": self.base_revision,
            "r": self.r,
            "lora_alpha": self.alpha,
            "use_rslora": self.rslora,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "init_lora_weights": if gaussian { Value::from("gaussian") } else { Value::from(true) },
            "target_modules": modules,
            "rank_pattern": ranks,
            "alpha_pattern": pattern(&self.alpha_pattern),
            "modules_to_save": null,
            "inference_mode": true,
        })
    }

    /// This fresh adapter drawing `lora_A` as Python Bergson 2.5.1 does under `--debug`
    /// (torch seeded with 42 before the model loads, then peft's draws module by module), so
    /// the same flags give Python's adapter exactly. Saved adapters are unchanged.
    pub fn replaying_python_debug(mut self) -> Self {
        if let AdapterWeights::Fresh { replay, .. } = &mut self.weights {
            *replay = Some(Mutex::new(Vec::new()));
        }
        self
    }

    /// This adapter's settings over `tensors` (peft parameter names, as
    /// [`peft_parameter_name`] gives them) instead of its own weights: a trainer's adapter,
    /// whose gradients reach those tensors.
    pub fn with_weights(&self, tensors: HashMap<String, Tensor>) -> Adapter {
        Adapter {
            dir: self.dir.clone(),
            origin: self.origin.clone(),
            base_model: self.base_model.clone(),
            base_revision: self.base_revision.clone(),
            r: self.r,
            alpha: self.alpha,
            rslora: self.rslora,
            rank_pattern: self.rank_pattern.clone(),
            seed: self.seed,
            alpha_pattern: self.alpha_pattern.clone(),
            weights: AdapterWeights::Explicit(Mutex::new(tensors)),
        }
    }

    /// The rank of `module`, with peft's per-module pattern.
    fn rank(&self, module: &str) -> i64 {
        self.rank_pattern
            .iter()
            .find(|(_, re, _)| re.is_match(module))
            .map_or(self.r, |(_, _, r)| *r)
    }

    /// Whether this is a fresh adapter (`--peft_init_kwargs`).
    pub fn is_fresh(&self) -> bool {
        matches!(self.weights, AdapterWeights::Fresh { .. })
    }

    /// How messages name the adapter (its weights file, or `--peft_init_kwargs`).
    pub fn origin(&self) -> &str {
        &self.origin
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
