//! [`DiagnoseConfig`]: the flags of `bergson test_model_configuration`, with Bergson 2.5.1's
//! names and defaults (its `DiagnoseConfig`).

use clap::Args;
use serde::{Deserialize, Serialize};

/// Base precision of the model parameters for the diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiagnosePrecision {
    /// bfloat16 (Bergson's default here).
    Bf16,
    /// float16.
    Fp16,
    /// float32.
    Fp32,
}

impl DiagnosePrecision {
    /// The flag value (`bf16`, `fp16`, `fp32`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
            Self::Fp32 => "fp32",
        }
    }

    /// The engine precision.
    pub fn precision(self) -> crate::engine::Precision {
        match self {
            Self::Bf16 => crate::engine::Precision::Bf16,
            Self::Fp16 => crate::engine::Precision::Fp16,
            Self::Fp32 => crate::engine::Precision::Fp32,
        }
    }
}

/// Test gradient consistency across padding and batch composition, and the chat template's
/// special tokens (Bergson's `DiagnoseConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(rename_all = "snake_case")]
pub struct DiagnoseConfig {
    /// Model to test (a checkpoint directory or a Hub id).
    #[arg(long, default_value = "EleutherAI/pythia-160m")]
    pub model: String,
    /// Dataset to sample document pairs from (its `text` column).
    #[arg(long, default_value = "NeelNanda/pile-10k")]
    pub dataset: String,
    /// Dataset split.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Number of random document pairs to test per configuration.
    #[arg(long, default_value_t = 100)]
    pub n_trials: usize,
    /// Random seed of the document draws (Python's `random.Random(seed)`, replayed exactly).
    #[arg(long, default_value_t = 42)]
    pub seed: i64,
    /// Base precision for model parameters.
    #[arg(long, value_enum, default_value = "bf16")]
    pub precision: DiagnosePrecision,
    /// Device to run the test on (`cuda` when one is there, else `cpu`).
    #[arg(long, default_value_t = default_device())]
    pub device: String,
    /// Truncate documents longer than this.
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Skip documents shorter than this.
    #[arg(long, default_value_t = 4)]
    pub min_len: usize,
    /// Cosine similarity below this is flagged as problematic.
    #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
    pub threshold: f64,
    /// Extra `from_pretrained` kwargs in Python; refused here unless empty.
    #[arg(long, default_value = "")]
    pub model_kwargs: String,
}

/// `cuda` when this binary sees a CUDA device, else `cpu` (Bergson's `get_device`).
pub fn default_device() -> String {
    if tch::Cuda::is_available() {
        "cuda".into()
    } else {
        "cpu".into()
    }
}
