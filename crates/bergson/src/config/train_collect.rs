//! `bergson train --collect_gradients`: the arguments of Python Bergson 2.5.1's
//! `GradientCollectorCallback` (`bergson/huggingface.py`), with its defaults. They are runtime
//! flags of `bergson train`, not fields of the run's `TrainingConfig` (Bergson's run files have
//! no such keys).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::build::AttentionConfig;
use super::flags::{clap_default, parse_bool};

/// `--dtype` of the gradient store: the numpy dtypes the callback accepts
/// (`convert_dtype_to_torch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum GradientStoreDtype {
    /// Half precision (the callback's default).
    #[value(name = "float16")]
    #[serde(rename = "float16")]
    Float16,
    /// Single precision.
    #[value(name = "float32")]
    #[serde(rename = "float32")]
    Float32,
    /// Double precision.
    #[value(name = "float64")]
    #[serde(rename = "float64")]
    Float64,
}

impl GradientStoreDtype {
    /// The numpy name (`info.json`'s `base_dtype`).
    pub fn as_str(self) -> &'static str {
        match self {
            GradientStoreDtype::Float16 => "float16",
            GradientStoreDtype::Float32 => "float32",
            GradientStoreDtype::Float64 => "float64",
        }
    }

    /// The tensor kind rows are stored in.
    pub fn kind(self) -> tch::Kind {
        match self {
            GradientStoreDtype::Float16 => tch::Kind::Half,
            GradientStoreDtype::Float32 => tch::Kind::Float,
            GradientStoreDtype::Float64 => tch::Kind::Double,
        }
    }
}

impl std::fmt::Display for GradientStoreDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Training-time gradient collection (`GradientCollectorCallback`'s arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct CollectGradientsConfig {
    /// Write each step's per-example projected gradients of the training loss into
    /// `<run_path>/train/epoch_<e>` (or `<run_path>/train` with --accumulate_grads).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub collect_gradients: bool,
    /// Random projection dimension per module side (0: store full gradients).
    #[arg(long, default_value_t = 16, requires = "collect_gradients")]
    pub projection_dim: usize,
    /// Append bias gradients of modules that have a bias.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, requires = "collect_gradients")]
    pub include_bias: bool,
    /// dtype of the stored gradients.
    #[arg(long, value_enum, default_value_t = GradientStoreDtype::Float16, requires = "collect_gradients")]
    pub dtype: GradientStoreDtype,
    /// One index, `<run_path>/train`, for all epochs: an example's row holds the gradient of
    /// its last visit (Bergson 2.5.1 overwrites the row, despite its docstring's "sum").
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, requires = "collect_gradients")]
    pub accumulate_grads: bool,
    /// Normalise by the optimizer's second moments (AdamW), updated after every step.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, requires = "collect_gradients")]
    pub use_optimizer_state: bool,
    /// Divide the second moments by lr², so a stored gradient is `lr · g / sqrt(v)`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, requires = "collect_gradients")]
    pub scale_by_lr: bool,
    /// Record the training order as `<run_path>/order.hf` (`_idx`, `global_step`, `epoch`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, requires = "collect_gradients")]
    pub track_order: bool,
    /// Modules whose gradients are split into per-head blocks (the callback's
    /// `attention_cfgs`, with one head layout shared by all).
    #[arg(long, num_args = 0.., requires = "collect_gradients")]
    pub split_attention_modules: Vec<String>,
    /// Head layout for `--split_attention_modules` (`--num_heads`, `--head_size`, `--head_dim`).
    #[command(flatten)]
    pub attention: AttentionConfig,
}

impl Default for CollectGradientsConfig {
    fn default() -> Self {
        clap_default()
    }
}
