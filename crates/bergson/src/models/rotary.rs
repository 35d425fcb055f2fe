//! Rotary position embeddings (RoPE, Su et al. 2021) with transformers' frequency scalings,
//! and their settings in both config.json spellings: transformers 5's `rope_parameters`, and the
//! older `rope_theta` + `rope_scaling` (`type` or `rope_type`), `rotary_pct`, `rotary_emb_base`.

use super::config::ConfigJson;
use super::norm::compute_kind;
use crate::Result;
use std::f64::consts::PI;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// How the rotary frequencies are scaled (`rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `default`: `inv_freq = theta^(-2i/d)`.
    Default,
    /// `linear`: positions divided by `factor` (Kaiokendev's interpolation).
    Linear {
        /// Position divisor.
        factor: f64,
    },
    /// `dynamic`: NTK-aware base growth once the sequence exceeds `max_position_embeddings`.
    Dynamic {
        /// Growth factor.
        factor: f64,
    },
    /// `llama3`: Llama 3.1's wavelength-dependent interpolation.
    Llama3 {
        /// Divisor of low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
    },
    /// `yarn`: NTK-by-parts interpolation (Peng et al. 2023) with an attention temperature.
    Yarn {
        /// Interpolation factor.
        factor: f64,
        /// Multiplier of cos and sin (`attention_factor`, or derived from the mscales).
        attention_factor: f64,
        /// Rotations bounding the ramp (`beta_fast`, `beta_slow`).
        beta_fast: f64,
        /// See `beta_fast`.
        beta_slow: f64,
        /// Round the ramp bounds to whole dimensions (`truncate`).
        truncate: bool,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
    },
    /// `longrope` (Phi-3): each frequency divided by its own factor, `short_factor` while the
    /// batch fits the pre-training length and `long_factor` past it, with an attention
    /// temperature on cos and sin.
    LongRope {
        /// Divisors `[rotary_dim / 2]` up to the pre-training length.
        short_factor: Vec<f64>,
        /// Divisors past it.
        long_factor: Vec<f64>,
        /// Multiplier of cos and sin.
        attention_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
    },
}

/// The rotary settings of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base wavelength θ.
    pub theta: f64,
    /// Fraction of each head's dimensions that rotate (`partial_rotary_factor` / `rotary_pct`).
    pub partial_rotary_factor: f64,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

/// Which extra config.json keys an architecture uses for the rotary settings.
#[derive(Debug, Clone, Copy)]
pub struct RopeKeys {
    /// Keys for θ outside the rope dict, in priority order.
    pub theta: &'static [&'static str],
    /// Keys for the rotary fraction outside the rope dict, in priority order.
    pub partial: &'static [&'static str],
    /// Rotary fraction when no key gives one.
    pub default_partial: f64,
    /// Older `rope_type` names the architecture reads as `longrope` (Phi-3: `su`, `yarn`).
    pub longrope_aliases: &'static [&'static str],
}

/// The keys of the Llama family.
pub const LLAMA_ROPE_KEYS: RopeKeys = RopeKeys {
    theta: &["rope_theta"],
    partial: &["partial_rotary_factor"],
    default_partial: 1.0,
    longrope_aliases: &[],
};

/// The RoPE types we implement, for error messages.
pub const ROPE_TYPES: &str = "default, linear, dynamic, llama3, yarn, longrope";

impl RopeConfig {
    /// Reads the rotary settings of `cfg`, resolving the spellings as transformers 5's
    /// `convert_rope_params_to_dict` / `standardize_rope_params` do: a non-empty `rope_scaling`
    /// takes precedence over `rope_parameters`; inside it `rope_type` over `type` (default
    /// `default`); θ and the rotary fraction come from the dict, else the top-level keys.
    pub fn from_config(cfg: &ConfigJson, keys: RopeKeys) -> Result<Self> {
        let (dict, dict_name) = match cfg.object(&["rope_scaling"])? {
            Some(d) => (Some(d), "rope_scaling"),
            None => (cfg.object(&["rope_parameters"])?, "rope_parameters"),
        };
        let theta = match dict {
            Some(d) => cfg.nested_float(d, dict_name, "rope_theta")?,
            None => None,
        };
        let theta = match theta {
            Some(t) => t,
            None => cfg.float(keys.theta)?.unwrap_or(10_000.0),
        };
        Self::from_dict(cfg, keys, dict, dict_name, theta)
    }

    /// The rotary settings of each attention type of a model whose layers rotate differently
    /// (`[full_attention, sliding_attention]`), as OLMo-3's and Gemma-3's
    /// `convert_rope_params_to_dict` resolve them: `rope_parameters` keyed by layer type; an
    /// old-style `rope_scaling` applies to the full-attention layers only; θ comes from each
    /// type's dict, else `full_theta` / `sliding_theta` (the caller's top-level keys and
    /// defaults).
    pub fn per_layer_type(
        cfg: &ConfigJson,
        keys: RopeKeys,
        full_theta: f64,
        sliding_theta: f64,
    ) -> Result<[Self; 2]> {
        let by_type = cfg.object(&["rope_parameters"])?;
        let scaling = cfg.object(&["rope_scaling"])?;
        let read = |layer_type: &str, fallback_theta: f64| -> Result<Self> {
            let name = format!("rope_parameters.{layer_type}");
            let typed = match by_type.and_then(|d| d.get(layer_type)) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Object(m)) => Some(m),
                Some(v) => {
                    return Err(cfg.error(format!(
                        "{name} is {v}, expected an object of rotary settings; fix config.json"
                    )))
                }
            };
            let (dict, dict_name) = match (layer_type, scaling) {
                ("full_attention", Some(s)) => (Some(s), "rope_scaling"),
                _ => (typed, name.as_str()),
            };
            let theta = match typed {
                Some(d) => cfg.nested_float(d, &name, "rope_theta")?,
                None => None,
            };
            Self::from_dict(cfg, keys, dict, dict_name, theta.unwrap_or(fallback_theta))
        };
        Ok([
            read("full_attention", full_theta)?,
            read("sliding_attention", sliding_theta)?,
        ])
    }

    /// Checks the settings against heads of `head_dim`: `longrope` needs one factor per rotated
    /// frequency.
    pub fn check_dims(&self, cfg: &ConfigJson, head_dim: i64) -> Result<()> {
        if let RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        } = &self.scaling
        {
            let want = (head_dim as f64 * self.partial_rotary_factor) as usize / 2;
            for (key, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if f.len() != want {
                    return Err(cfg.error(format!(
                        "rope {key} has {} entries but the heads rotate {want} frequencies; fix config.json",
                        f.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The settings in `dict` (named `dict_name` in errors; `None`: the default rotation) with
    /// base wavelength `theta`.
    fn from_dict(
        cfg: &ConfigJson,
        keys: RopeKeys,
        dict: Option<&serde_json::Map<String, serde_json::Value>>,
        dict_name: &str,
        theta: f64,
    ) -> Result<Self> {
        let get = |key: &str| -> Result<Option<f64>> {
            match dict {
                Some(d) => cfg.nested_float(d, dict_name, key),
                None => Ok(None),
            }
        };
        let partial = match get("partial_rotary_factor")? {
            Some(p) => p,
            None => cfg.float(keys.partial)?.unwrap_or(keys.default_partial),
        };
        let valid = theta > 0.0 && partial > 0.0 && partial <= 1.0;
        if !valid {
            return Err(cfg.error(format!(
                "rope_theta {theta} must be > 0 and partial_rotary_factor {partial} in (0, 1]; fix config.json"
            )));
        }
        let rope_type = match dict {
            Some(d) => match cfg.nested_str(d, dict_name, "rope_type")? {
                Some(t) => t,
                None => cfg
                    .nested_str(d, dict_name, "type")?
                    .unwrap_or_else(|| "default".into()),
            },
            None => "default".into(),
        };
        let rope_type = match keys.longrope_aliases.contains(&rope_type.as_str()) {
            true => "longrope".to_string(),
            false => rope_type,
        };
        let need = |key: &str| -> Result<f64> {
            get(key)?.ok_or_else(|| {
                cfg.error(format!("{dict_name}.{key} is required for rope_type '{rope_type}'; add it to config.json"))
            })
        };
        // A top-level original_max_position_embeddings wins, then the dict's, then
        // max_position_embeddings (transformers' `standardize_rope_params`).
        let original = || -> Result<f64> {
            match cfg.float(&["original_max_position_embeddings"])? {
                Some(v) => Ok(v),
                None => match get("original_max_position_embeddings")? {
                    Some(v) => Ok(v),
                    None => cfg.float(&["max_position_embeddings"])?.ok_or_else(|| {
                        cfg.error(format!("rope_type '{rope_type}' needs original_max_position_embeddings; add it to config.json"))
                    }),
                },
            }
        };
        let scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: need("factor")? },
            "dynamic" => RopeScaling::Dynamic { factor: need("factor")? },
            "yarn" => {
                let original = original()?;
                let factor = match get("factor")? {
                    Some(f) => f,
                    None => {
                        let max = cfg.float(&["max_position_embeddings"])?.ok_or_else(|| {
                            cfg.error(format!("{dict_name}.factor is required for rope_type 'yarn'; add it to config.json"))
                        })?;
                        max / original
                    }
                };
                let mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor = match get("attention_factor")? {
                    Some(a) => a,
                    None => match (get("mscale")?, get("mscale_all_dim")?) {
                        (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                            mscale(factor, m) / mscale(factor, all)
                        }
                        _ => mscale(factor, 1.0),
                    },
                };
                // `get(..) or default`: a zero counts as missing, as in transformers.
                let or_default = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
                let truncate = match dict.and_then(|d| d.get("truncate")) {
                    None | Some(serde_json::Value::Null) => true,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        cfg.error(format!("{dict_name}.truncate is {v}, expected true or false; fix config.json"))
                    })?,
                };
                RopeScaling::Yarn {
                    factor,
                    attention_factor,
                    beta_fast: or_default(get("beta_fast")?, 32.0),
                    beta_slow: or_default(get("beta_slow")?, 1.0),
                    truncate,
                    original_max_position_embeddings: original,
                }
            }
            "longrope" => {
                let original = original()?;
                let factors = |key: &str| -> Result<Vec<f64>> {
                    let list = dict.and_then(|d| d.get(key)).and_then(|v| v.as_array());
                    list.and_then(|l| l.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| {
                            cfg.error(format!(
                                "{dict_name}.{key} must be a list of numbers for rope_type 'longrope'; fix config.json"
                            ))
                        })
                };
                let factor = match get("factor")? {
                    Some(f) => f,
                    None => cfg.float(&["max_position_embeddings"])?.unwrap_or(original) / original,
                };
                let attention_factor = match get("attention_factor")? {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    attention_factor,
                    original_max_position_embeddings: original,
                }
            }
            "llama3" => {
                let original = original()?;
                RopeScaling::Llama3 {
                    factor: need("factor")?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: original,
                }
            }
            other => {
                return Err(cfg.error(format!(
                    "rope_type '{other}' is not supported (supported: {ROPE_TYPES}); use a checkpoint with one of these"
                )))
            }
        };
        Ok(Self {
            theta,
            partial_rotary_factor: partial,
            scaling,
        })
    }
}

/// Cached cos/sin tables: `(length, cos, sin)`, each `[length, rotary_dim]` in the model dtype.
type Tables = (i64, Tensor, Tensor);

/// Rotary embedding of one model: the inverse frequencies and a cache of cos/sin tables that
/// grows with the longest sequence seen, so a forward pass only slices it.
#[derive(Debug)]
pub struct Rotary {
    config: RopeConfig,
    /// Dimensions that rotate (`int(head_dim * partial_rotary_factor)`).
    rotary_dim: i64,
    /// `max_position_embeddings` (dynamic scaling grows past it).
    max_positions: i64,
    /// Inverse frequencies `[rotary_dim / 2]` in [`compute_kind`] of the model dtype.
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
    cache: Mutex<Option<Tables>>,
}

impl Rotary {
    /// Rotary tables for heads of `head_dim`, in a model of dtype `kind` on `device`.
    pub fn new(
        config: &RopeConfig,
        head_dim: i64,
        max_positions: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        // transformers: dim = int(head_dim * partial_rotary_factor).
        let rotary_dim = (head_dim as f64 * config.partial_rotary_factor) as i64;
        // LongRoPE's cached tables use the short factors (transformers' `original_inv_freq`).
        let table_len = match config.scaling {
            RopeScaling::LongRope { .. } => 0,
            _ => max_positions,
        };
        let inv_freq = inv_freq(
            config,
            rotary_dim,
            max_positions,
            table_len,
            compute_kind(kind),
            device,
        );
        Self {
            config: config.clone(),
            rotary_dim,
            max_positions,
            inv_freq,
            kind,
            device,
            cache: Mutex::new(None),
        }
    }

    /// Dimensions of each head that rotate.
    pub fn rotary_dim(&self) -> i64 {
        self.rotary_dim
    }

    /// `(cos, sin)`, each `[seq_len, rotary_dim]` in the model dtype, for positions `0..seq_len`.
    pub fn cos_sin(&self, seq_len: i64) -> (Tensor, Tensor) {
        let past_trained = match &self.config.scaling {
            RopeScaling::Dynamic { .. } => seq_len > self.max_positions,
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => seq_len as f64 > *original_max_position_embeddings,
            _ => false,
        };
        if past_trained {
            // Dynamic NTK and LongRoPE: a batch longer than the trained length gets other
            // frequencies (transformers decides per batch, from its longest position).
            let inv = inv_freq(
                &self.config,
                self.rotary_dim,
                self.max_positions,
                seq_len,
                compute_kind(self.kind),
                self.device,
            );
            return self.tables(&inv, seq_len);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = match cache.as_ref() {
            Some((len, _, _)) => *len < seq_len,
            None => true,
        };
        if fresh {
            // Position p's row does not depend on the table length, so round up to reuse it.
            let len = (seq_len.max(64) as u64).next_power_of_two() as i64;
            let (cos, sin) = self.tables(&self.inv_freq, len);
            *cache = Some((len, cos, sin));
        }
        match cache.as_ref() {
            Some((_, cos, sin)) => (cos.narrow(0, 0, seq_len), sin.narrow(0, 0, seq_len)),
            None => self.tables(&self.inv_freq, seq_len),
        }
    }

    /// Tables as `LlamaRotaryEmbedding.forward`: `emb = cat(p·f, p·f)`, `cos(emb)`, `sin(emb)`.
    fn tables(&self, inv_freq: &Tensor, len: i64) -> (Tensor, Tensor) {
        let _guard = tch::no_grad_guard();
        let pos = Tensor::arange(len, (inv_freq.kind(), self.device));
        let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        match self.config.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            }
            | RopeScaling::LongRope {
                attention_factor, ..
            } => (
                (emb.cos() * attention_factor).to_kind(self.kind),
                (emb.sin() * attention_factor).to_kind(self.kind),
            ),
            _ => (emb.cos().to_kind(self.kind), emb.sin().to_kind(self.kind)),
        }
    }
}

/// `x · cos + rotate_half(x) · sin` on the first `rotary_dim` dimensions of `x` `[N, H, S, D]`,
/// the rest passing through (`apply_rotary_pos_emb`). `cos`, `sin`: `[S, rotary_dim]`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let rot = cos.size()[1];
    let d = x.size()[3];
    if rot == d {
        return x * cos + rotate_half(x) * sin;
    }
    let x_rot = x.narrow(-1, 0, rot);
    let x_pass = x.narrow(-1, rot, d - rot);
    let rotated = &x_rot * cos + rotate_half(&x_rot) * sin;
    Tensor::cat(&[rotated, x_pass], -1)
}

/// `cat(-x2, x1)` for the halves `x1`, `x2` of the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1)
}

/// Inverse frequencies `[dim / 2]` in `kind`, written op for op as transformers'
/// `modeling_rope_utils` so float32 results agree to the last bit or so. `seq_len` only
/// matters for dynamic scaling.
fn inv_freq(
    config: &RopeConfig,
    dim: i64,
    max_positions: i64,
    seq_len: i64,
    kind: Kind,
    device: Device,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let base = match config.scaling {
        RopeScaling::Dynamic { factor } => {
            let seq = seq_len.max(max_positions) as f64;
            let d = dim as f64;
            config.theta
                * ((factor * seq / max_positions as f64) - (factor - 1.0)).powf(d / (d - 2.0))
        }
        _ => config.theta,
    };
    let exponent =
        Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(kind) / dim as f64;
    let pos_freqs = Tensor::pow_scalar(base, &exponent);
    let inv = pos_freqs.reciprocal();
    match config.scaling {
        RopeScaling::Yarn {
            factor,
            beta_fast,
            beta_slow,
            truncate,
            original_max_position_embeddings,
            ..
        } => {
            let d = dim as f64;
            let correction_dim = |rotations: f64| {
                d * (original_max_position_embeddings / (rotations * 2.0 * PI)).ln()
                    / (2.0 * base.ln())
            };
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
            if low == high {
                high += 0.001;
            }
            let ramp = ((Tensor::arange(dim / 2, (Kind::Float, device)).to_kind(kind) - low)
                / (high - low))
                .clamp(0.0, 1.0);
            let extrapolation_factor = ramp.neg() + 1.0;
            let interpolation = (pos_freqs * factor).reciprocal();
            interpolation * (extrapolation_factor.neg() + 1.0) + inv * extrapolation_factor
        }
        RopeScaling::Default | RopeScaling::Dynamic { .. } => inv,
        RopeScaling::Linear { factor } => inv / factor,
        RopeScaling::LongRope {
            ref short_factor,
            ref long_factor,
            original_max_position_embeddings,
            ..
        } => {
            let ext = if seq_len as f64 > original_max_position_embeddings {
                long_factor
            } else {
                short_factor
            };
            let ext = Tensor::from_slice(ext).to_kind(kind).to_device(device);
            (ext * pos_freqs).reciprocal()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = inv.reciprocal() * (2.0 * PI);
            // tch's `a.where_self(cond, b)` is `torch.where(cond, a, b)`.
            let inv_llama = (&inv / factor).where_self(&wavelen.gt(low_wavelen), &inv);
            let smooth = (wavelen.reciprocal() * old - low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.neg() + 1.0) * &inv_llama / factor + &smooth * &inv_llama;
            let medium = wavelen
                .lt(high_wavelen)
                .logical_not()
                .logical_and(&wavelen.gt(low_wavelen).logical_not());
            smoothed.where_self(&medium, &inv_llama)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> ConfigJson {
        ConfigJson::parse(text, Path::new("config.json")).unwrap()
    }

    const NEOX_KEYS: RopeKeys = RopeKeys {
        theta: &["rotary_emb_base", "rope_theta"],
        partial: &["rotary_pct", "partial_rotary_factor"],
        default_partial: 0.25,
        longrope_aliases: &[],
    };

    #[test]
    fn old_and_new_spellings_agree() {
        let old =
            cfg(r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}"#);
        let new = cfg(
            r#"{"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}"#,
        );
        let a = RopeConfig::from_config(&old, LLAMA_ROPE_KEYS).unwrap();
        let b = RopeConfig::from_config(&new, LLAMA_ROPE_KEYS).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a,
            RopeConfig {
                theta: 500000.0,
                partial_rotary_factor: 1.0,
                scaling: RopeScaling::Linear { factor: 2.0 }
            }
        );

        let old = cfg(
            r#"{"rotary_pct": 0.5, "rotary_emb_base": 10000, "max_position_embeddings": 2048}"#,
        );
        let new = cfg(
            r#"{"rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rope_type": "default"}}"#,
        );
        let a = RopeConfig::from_config(&old, NEOX_KEYS).unwrap();
        assert_eq!(a, RopeConfig::from_config(&new, NEOX_KEYS).unwrap());
        assert_eq!(a.partial_rotary_factor, 0.5);
        // GPT-NeoX defaults to a quarter of each head rotating; Llama to all of it.
        assert_eq!(
            RopeConfig::from_config(&cfg("{}"), NEOX_KEYS)
                .unwrap()
                .partial_rotary_factor,
            0.25
        );
        let l =
            RopeConfig::from_config(&cfg(r#"{"rope_scaling": null}"#), LLAMA_ROPE_KEYS).unwrap();
        assert_eq!(
            l,
            RopeConfig {
                theta: 10000.0,
                partial_rotary_factor: 1.0,
                scaling: RopeScaling::Default
            }
        );
    }

    #[test]
    fn yarn_settings_as_transformers_derives_them() {
        // DeepSeek-style: attention factor from the two mscales, truncation off.
        let c = cfg(
            r#"{"max_position_embeddings": 163840, "rope_scaling": {"type": "yarn", "factor": 40.0,
            "mscale": 0.707, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "truncate": false}}"#,
        );
        let r = RopeConfig::from_config(&c, LLAMA_ROPE_KEYS).unwrap();
        let m = |k: f64| 0.1 * k * 40f64.ln() + 1.0;
        assert_eq!(
            r.scaling,
            RopeScaling::Yarn {
                factor: 40.0,
                attention_factor: m(0.707) / m(1.0),
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: false,
                original_max_position_embeddings: 4096.0
            }
        );
        // No factor: the ratio of the lengths; no mscales: 0.1 ln(factor) + 1; a top-level
        // original_max_position_embeddings wins over the dict's.
        let c = cfg(
            r#"{"max_position_embeddings": 32768, "original_max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "yarn", "original_max_position_embeddings": 1,
            "rope_theta": 1000000.0}}"#,
        );
        let r = RopeConfig::from_config(&c, LLAMA_ROPE_KEYS).unwrap();
        assert_eq!(r.theta, 1e6);
        assert_eq!(
            r.scaling,
            RopeScaling::Yarn {
                factor: 4.0,
                attention_factor: 0.1 * 4f64.ln() + 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                original_max_position_embeddings: 8192.0
            }
        );
        let bad = cfg(
            r#"{"max_position_embeddings": 64, "rope_scaling": {"type": "yarn", "factor": 2.0, "truncate": "yes"}}"#,
        );
        let e = RopeConfig::from_config(&bad, LLAMA_ROPE_KEYS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncate"), "{e}");
    }

    #[test]
    fn llama3_settings_and_errors() {
        let c = cfg(
            r#"{"rope_theta": 500000.0, "max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
        );
        let r = RopeConfig::from_config(&c, LLAMA_ROPE_KEYS).unwrap();
        assert_eq!(
            r.scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0
            }
        );
        // Phi-3's old name for LongRoPE means nothing to the Llama family.
        let bad = cfg(r#"{"rope_scaling": {"rope_type": "su", "factor": 4.0}}"#);
        let e = RopeConfig::from_config(&bad, LLAMA_ROPE_KEYS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'su'") && e.contains("longrope"), "{e}");
        let bad = cfg(r#"{"rope_scaling": {"type": "linear"}}"#);
        let e = RopeConfig::from_config(&bad, LLAMA_ROPE_KEYS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_scaling.factor"), "{e}");
        let bad = cfg(r#"{"rope_theta": "big"}"#);
        assert!(RopeConfig::from_config(&bad, LLAMA_ROPE_KEYS).is_err());
    }

    /// The llama3 frequencies against the formula evaluated per frequency in f64.
    #[test]
    fn llama3_inv_freq_matches_scalar_formula() {
        let config = RopeConfig {
            theta: 10000.0,
            partial_rotary_factor: 1.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 8.0,
                original_max_position_embeddings: 64.0,
            },
        };
        let got =
            Vec::<f64>::try_from(inv_freq(&config, 16, 2048, 2048, Kind::Double, Device::Cpu))
                .unwrap();
        for (i, g) in got.iter().enumerate() {
            let f = 1.0 / 10000f64.powf((2 * i) as f64 / 16.0);
            let wl = 2.0 * PI / f;
            let want = if wl < 8.0 {
                f
            } else if wl > 64.0 {
                f / 8.0
            } else {
                let s = (64.0 / wl - 1.0) / 7.0;
                (1.0 - s) * f / 8.0 + s * f
            };
            assert!(
                (g - want).abs() < 1e-15 * want.abs().max(1.0),
                "{i}: {g} vs {want}"
            );
        }
    }

    /// Dynamic scaling: unchanged within the trained length, a larger base past it.
    #[test]
    fn dynamic_grows_base_past_trained_length() {
        let config = RopeConfig {
            theta: 10000.0,
            partial_rotary_factor: 1.0,
            scaling: RopeScaling::Dynamic { factor: 2.0 },
        };
        let r = Rotary::new(&config, 8, 16, Kind::Double, Device::Cpu);
        let plain = Rotary::new(
            &RopeConfig {
                scaling: RopeScaling::Default,
                ..config.clone()
            },
            8,
            16,
            Kind::Double,
            Device::Cpu,
        );
        let (c1, _) = r.cos_sin(16);
        let (c2, _) = plain.cos_sin(16);
        assert_eq!((c1 - c2).abs().max().double_value(&[]), 0.0);
        let (c3, _) = r.cos_sin(32);
        // base' = 10000 * (2 * 32 / 16 - 1)^(8/6); slowest frequency at position 31.
        let base = 10000.0 * 3f64.powf(8.0 / 6.0);
        let want = (31.0 / base.powf(6.0 / 8.0)).cos();
        let got = c3.double_value(&[31, 3]);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    /// cos/sin rows from a grown cache equal freshly computed ones, and partial rotary leaves
    /// the pass-through dimensions alone.
    #[test]
    fn tables_and_partial_rotation() {
        let config = RopeConfig {
            theta: 100.0,
            partial_rotary_factor: 0.5,
            scaling: RopeScaling::Default,
        };
        let r = Rotary::new(&config, 8, 2048, Kind::Double, Device::Cpu);
        assert_eq!(r.rotary_dim(), 4);
        let (c5, s5) = r.cos_sin(5);
        let (c100, _) = r.cos_sin(100);
        assert_eq!(c5.size(), [5, 4]);
        assert_eq!(
            (c100.narrow(0, 0, 5) - &c5).abs().max().double_value(&[]),
            0.0
        );
        // position 3, frequency index 1: angle 3 / 100^(2/4)
        assert!((c5.double_value(&[3, 1]) - (3.0f64 / 10.0).cos()).abs() < 1e-15);
        assert!((s5.double_value(&[3, 3]) - (3.0f64 / 10.0).sin()).abs() < 1e-15);
        let x = Tensor::randn([1, 2, 5, 8], (Kind::Double, Device::Cpu));
        let y = apply_rotary(&x, &c5, &s5);
        assert_eq!(
            (y.narrow(-1, 4, 4) - x.narrow(-1, 4, 4))
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        // A rotation keeps the norm of each rotated pair (i, i + 2).
        let n = |t: &Tensor| t.narrow(-1, 0, 1).square() + t.narrow(-1, 2, 1).square();
        let err = (n(&y) - n(&x)).abs().max().double_value(&[]);
        assert!(err < 1e-12, "{err}");
    }
}
