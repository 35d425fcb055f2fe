//! `bergson train`: [`TrainingConfig`] and its [`LrScheduleConfig`], as Python Bergson 2.5.1's
//! `TrainingConfig` (`config/config.py`) holds them: the same flags (nested configs flattened),
//! defaults and YAML keys.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::build::{DataConfig, DistributedConfig};
use super::enums::PrecisionChoice;
use super::flags::{clap_default, parse_bool};

macro_rules! choice_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? } default $default:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
        pub enum $name {
            $(
                $(#[$vdoc])*
                #[serde(rename = $text)]
                #[value(name = $text)]
                $variant,
            )+
        }

        impl $name {
            /// The spelling Bergson uses.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl Default for $name {
            fn default() -> Self { $name::$default }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice_enum! {
    /// `--lr_scheduler_type`, as transformers' `get_scheduler` names them.
    LrSchedulerType {
        /// Linear decay to 0 after warmup.
        Linear = "linear",
        /// Cosine decay (`num_cycles` cycles, 0.5 = one half-cosine).
        Cosine = "cosine",
        /// Cosine with hard restarts.
        CosineWithRestarts = "cosine_with_restarts",
        /// Polynomial decay to `lr_end` with `power`.
        Polynomial = "polynomial",
        /// Constant, no warmup.
        Constant = "constant",
        /// Constant after warmup.
        ConstantWithWarmup = "constant_with_warmup",
    } default Linear
}

choice_enum! {
    /// `--loss_reduction` of the training loss.
    TrainLossReduction {
        /// Mean over every supervised token of the batch.
        Mean = "mean",
        /// Each row's token mean, summed over the batch (MAGIC paper, App. D).
        SumOfMeans = "sum_of_means",
    } default Mean
}

choice_enum! {
    /// `--optimizer`.
    OptimizerKind {
        /// torchopt's functional AdamW with `eps_root` (decoupled weight decay).
        Adamw = "adamw",
        /// Functional Muon: Newton-Schulz-orthogonalised Nesterov momentum for 2-D
        /// parameters, AdamW for the others.
        Muon = "muon",
        /// SGD with momentum `adam_beta1` and coupled weight decay.
        Sgd = "sgd",
    } default Adamw
}

choice_enum! {
    /// `--save_optimizer_state`: which optimizer second moments are written as `optimizer.pt`.
    SaveOptimizerState {
        /// None.
        None = "none",
        /// The final state's, as `<run>/optimizer.pt`.
        Last = "last",
        /// The final state's and every checkpoint's (`checkpoints/step_i.ckpt/optimizer.pt`).
        All = "all",
    } default None
}

choice_enum! {
    /// `--save_mode`: which trainer states are checkpointed (for resuming and for MAGIC's
    /// backward through training).
    SaveMode {
        /// Every step.
        All = "all",
        /// Every isqrt(n) steps, then every step of the last chunk.
        Sqrt = "sqrt",
        /// Halving the remaining steps each time.
        Log = "log",
        /// Every `save_interval` steps, plus the final state.
        Interval = "interval",
        /// Only the final state.
        Final = "final",
    } default Sqrt
}

/// The learning-rate schedule (Bergson's `LRScheduleConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct LrScheduleConfig {
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Schedule shape.
    #[arg(long, value_enum, default_value_t = LrSchedulerType::Linear)]
    pub lr_scheduler_type: LrSchedulerType,
    /// Learning rate at the start of warmup.
    #[arg(long, default_value_t = 0.0)]
    pub lr_start: f64,
    /// Final learning rate (polynomial only).
    #[arg(long, default_value_t = 0.0)]
    pub lr_end: f64,
    /// Warmup steps: a count when >= 1, else a fraction of the steps (rounded up).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_steps: f64,
    /// Cosine cycles (0.5 = one half-cosine decay).
    #[arg(long, default_value_t = 0.5)]
    pub num_cycles: f64,
    /// Polynomial decay exponent.
    #[arg(long, default_value_t = 1.0)]
    pub power: f64,
}

/// `bergson train` (Bergson's `TrainingConfig`: `ModelConfig` + `AttributionConfig` + the
/// trainer's settings), in Python's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct TrainingConfig {
    /// Output directory of the run.
    #[arg(default_value = "")]
    pub run_path: String,
    /// Replace an existing run directory.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub overwrite: bool,
    /// Model: a local directory or a Hugging Face hub id.
    #[arg(long, default_value = "EleutherAI/pythia-160m")]
    pub model: String,
    /// Model dtype (Bergson's trainer default: fp32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Fp32)]
    pub precision: PrecisionChoice,
    /// Model revision on the hub.
    #[arg(long)]
    pub revision: Option<String>,
    /// Multi-node settings.
    #[command(flatten)]
    pub distributed: DistributedConfig,
    /// Shard the model across ranks (FSDP).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub fsdp: bool,
    /// LoRA arguments for a fresh PEFT adapter, `k=v,k=v`.
    #[arg(long, default_value = "")]
    pub peft_init_kwargs: String,
    /// Extra model-loading arguments, `k=v,k=v`.
    #[arg(long, default_value = "")]
    pub model_kwargs: String,
    /// Globs of fused MoE expert modules.
    #[arg(long, default_value = "")]
    pub moe_experts: String,
    /// Multiply the output logits by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub logit_scale: f64,
    /// Dataset settings.
    #[command(flatten)]
    pub data: DataConfig,
    /// Tokenizer directory or hub id (default: the model's).
    #[arg(long, default_value = "")]
    pub tokenizer: String,
    /// Keep only the new dataset columns.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub drop_columns: bool,
    /// Keep (or tile) the dataset to this many tokens.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Allow TF32 matmuls on GPUs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub use_tf32_matmuls: bool,
    /// Extra logging.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub debug: bool,
    /// Learning-rate schedule.
    #[command(flatten)]
    pub lr_schedule: LrScheduleConfig,
    /// Rows per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Passes over the data, each shuffled with seed `seed + epoch`.
    #[arg(long, default_value_t = 1)]
    pub num_epochs: usize,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// AdamW β1 (also SGD's momentum).
    #[arg(long, default_value_t = 0.95)]
    pub adam_beta1: f64,
    /// AdamW β2.
    #[arg(long, default_value_t = 0.975)]
    pub adam_beta2: f64,
    /// AdamW epsilon inside the square root.
    #[arg(long, default_value_t = 1e-17)]
    pub eps_root: f64,
    /// AdamW epsilon outside the square root.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Reduction of the per-token training losses.
    #[arg(long, value_enum, default_value_t = TrainLossReduction::Mean)]
    pub loss_reduction: TrainLossReduction,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    pub optimizer: OptimizerKind,
    /// Train mode (dropout); bergson-rs models have no dropout.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub train_mode: bool,
    /// Which optimizer second moments to write as optimizer.pt (AdamW only).
    #[arg(long, value_enum, default_value_t = SaveOptimizerState::None)]
    pub save_optimizer_state: SaveOptimizerState,
    /// Save the trained model as a Hugging Face checkpoint in `<run_path>/model`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub save_models: bool,
    /// Which trainer states to checkpoint.
    #[arg(long, value_enum, default_value_t = SaveMode::Sqrt)]
    pub save_mode: SaveMode,
    /// Checkpoint interval for `--save_mode interval`.
    #[arg(long, default_value_t = 0)]
    pub save_interval: usize,
    /// Weight decay (AdamW: decoupled; SGD: added to the gradient), on every parameter.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0 or unset: no clipping).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Gradient checkpointing (not needed by bergson-rs; accepted and ignored).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub grad_checkpointing: bool,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum_steps: usize,
    /// Rows per double-backward graph in MAGIC's backward.
    #[arg(long)]
    pub double_backward_batch_size: Option<usize>,
    /// Resume from the newest checkpoint in `<run_path>/checkpoints`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub resume: bool,
    /// Weights & Biases project ("" disables; bergson-rs never logs to W&B).
    #[arg(long, default_value = "bergson")]
    pub wandb_project: String,
}

impl Default for LrScheduleConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        clap_default()
    }
}
