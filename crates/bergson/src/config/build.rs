//! `bergson build`: [`IndexConfig`] (model, data, collection) and [`PreprocessConfig`] (what
//! happens to each row before it is written), as Bergson's `Build` command holds them.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::enums::*;
use super::flags::{clap_default, parse_bool};

/// Declares a struct whose `Default` comes from its clap definition.
macro_rules! clap_defaults {
    ($($t:ty),+) => {$(
        impl Default for $t {
            fn default() -> Self {
                clap_default()
            }
        }
    )+};
}

/// Which rows to read and how to turn them into token sequences (Bergson's `DataConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct DataConfig {
    /// Dataset: a .jsonl/.json/.csv/.parquet/.arrow file, a `save_to_disk` directory or a hub id.
    #[arg(long, default_value = "NeelNanda/pile-10k")]
    pub dataset: String,
    /// Split, with Hugging Face slice syntax (`train[:100]`, `train[10%:]`, `a+b`).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Dataset configuration name on the hub.
    #[arg(long)]
    pub subset: Option<String>,
    /// Column holding the text (or the prompt when a completion column is given).
    #[arg(long, default_value = "text")]
    pub prompt_column: String,
    /// Column holding completions: the loss covers the completion only.
    #[arg(long, default_value = "")]
    pub completion_column: String,
    /// Column holding chat conversations: the loss covers assistant turns only.
    #[arg(long, default_value = "")]
    pub conversation_column: String,
    /// Column holding rewards: Dr. GRPO advantages `reward - mean reward of the prompt`.
    #[arg(long, default_value = "")]
    pub reward_column: String,
    /// Column holding precomputed advantages.
    #[arg(long, default_value = "")]
    pub advantage_column: String,
    /// Drop rows whose reward or advantage is NaN instead of failing.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub skip_nan_rewards: bool,
    /// Truncate documents to min(model max length, token_batch_size).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub truncation: bool,
    /// YAML file with Jinja2 `doc_to_text` (+ `doc_to_target`, `doc_to_choice`) templates.
    #[arg(long, default_value = "")]
    pub format_template: String,
    /// Extra dataset-loading arguments, `k=v,k=v`.
    #[arg(long, default_value = "")]
    pub data_kwargs: String,
    /// When positive, concatenate documents with EOS and cut them into chunks of this length.
    #[arg(long, default_value_t = 0)]
    pub chunk_length: usize,
}

/// Multi-node settings (Bergson's `DistributedConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct DistributedConfig {
    /// Number of nodes.
    #[arg(long, default_value_t = 1)]
    pub nnode: usize,
    /// Processes per node.
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: usize,
    /// This node's rank (else SLURM_NODEID, GROUP_RANK or NODE_RANK).
    #[arg(long)]
    pub node_rank: Option<usize>,
}

/// How to split attention modules into heads (Bergson's `AttentionConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct AttentionConfig {
    /// Number of heads.
    #[arg(long, default_value_t = 0)]
    pub num_heads: i64,
    /// Output features per head.
    #[arg(long, default_value_t = 0)]
    pub head_size: i64,
    /// Axis of the output gradient `[N, S, O]` the heads are cut along (2).
    #[arg(long, default_value_t = 0)]
    pub head_dim: i64,
}

/// Model, data and gradient-collection settings (Bergson's `IndexConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct IndexConfig {
    /// Output directory of the index.
    #[arg(default_value = "")]
    pub run_path: String,
    /// Replace an existing index (and `<run_path>.part`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub overwrite: bool,
    /// Model: a local directory or a Hugging Face hub id.
    #[arg(long, default_value = "EleutherAI/pythia-160m")]
    pub model: String,
    /// Model dtype.
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
    /// Globs of fused MoE expert modules to expand.
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
    /// Save only the new columns (length, labels, advantage, loss) in data.hf.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub drop_columns: bool,
    /// Keep (or tile) the dataset to this many tokens.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Allow TF32 matmuls on GPUs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub use_tf32_matmuls: bool,
    /// Deterministic algorithms and extra logging.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub debug: bool,
    /// Projection size p per module (p² values per module); 0 stores full gradients.
    #[arg(long, default_value_t = 0)]
    pub projection_dim: usize,
    /// Append bias gradients as an extra input column.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub include_bias: bool,
    /// Recorded in processor_config.yaml; unused by the collector (as in Bergson).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub reshape_to_square: bool,
    /// Projection entries: rademacher or normal.
    #[arg(long, value_enum, default_value_t = ProjectionType::Rademacher)]
    pub projection_type: ProjectionType,
    /// Projection scaling: jl or row_norm.
    #[arg(long, value_enum, default_value_t = ProjectionScale::Jl)]
    pub projection_scale: ProjectionScale,
    /// per_module (two-sided, p² per module) or global (one p-vector).
    #[arg(long, value_enum, default_value_t = ProjectionTarget::PerModule)]
    pub projection_target: ProjectionTarget,
    /// Seed appended to projection identifiers (`/seed<k>`).
    #[arg(long)]
    pub projection_seed: Option<i64>,
    /// Padded-token budget per batch (`max length × documents`).
    #[arg(long, default_value_t = 2048)]
    pub token_batch_size: usize,
    /// Cap on documents per batch.
    #[arg(long)]
    pub max_batch_size: Option<usize>,
    /// Probe for the largest token batch that fits.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub auto_batch_size: bool,
    /// Optimizer state for Adam/Adafactor normalizers: a file, a directory with optimizer.pt,
    /// or `hf://repo[@rev][/path]`.
    #[arg(long, default_value = "")]
    pub optimizer_state: String,
    /// Per-token loss.
    #[arg(long, value_enum, default_value_t = LossFn::Ce)]
    pub loss_fn: LossFn,
    /// Per-document reduction of token losses.
    #[arg(long, value_enum, default_value_t = LossReduction::Sum)]
    pub loss_reduction: LossReduction,
    /// Cross-entropy label smoothing.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Modules whose gradients are split into heads.
    #[arg(long, num_args = 0..)]
    pub split_attention_modules: Vec<String>,
    /// Head layout for `split_attention_modules`.
    #[command(flatten)]
    pub attention: AttentionConfig,
    /// Profile the first steps.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub profile: bool,
    /// Comma-separated fnmatch globs of module names to exclude.
    #[arg(long)]
    pub filter_modules: Option<String>,
    /// Use the math attention kernel.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub force_math_sdp: bool,
    /// One row per token instead of per document (with offsets.npy).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub attribute_tokens: bool,
    /// Collect exactly these modules (fnmatch globs); empty collects every Linear.
    #[arg(long, num_args = 0..)]
    pub modules: Vec<String>,
}

/// Hessian inversion settings (Bergson's `InversionConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct InversionConfig {
    /// Eigenvalue function used to invert the Hessian.
    #[arg(long, value_enum, default_value_t = Inversion::DampedInverse)]
    pub inversion: Inversion,
    /// Damping / truncation strength.
    #[arg(long, default_value_t = 0.1)]
    pub damping_factor: f64,
    /// Query gradients preconditioned at a time.
    #[arg(long, default_value_t = 2)]
    pub apply_batch_size: usize,
}

impl InversionConfig {
    /// Refuses a damping that no inversion can use (NaN, infinite or negative: the scores
    /// would be NaN or meaningless) and an empty apply batch.
    pub fn check(&self) -> crate::Result<()> {
        let c = self.damping_factor;
        if !(c.is_finite() && c >= 0.0) {
            return Err(crate::Error::input(format!(
                "--damping_factor {c} is invalid: it must be a finite number, 0 or more (default 0.1)"
            )));
        }
        if self.apply_batch_size == 0 {
            return Err(crate::Error::input("--apply_batch_size must be at least 1"));
        }
        Ok(())
    }
}

/// What happens to each row before it is written (Bergson's `PreprocessConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct PreprocessConfig {
    /// Scale each row to unit L2 norm.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub unit_normalize: bool,
    /// Hessian to precondition rows with.
    #[arg(long)]
    pub hessian_path: Option<String>,
    /// Use EK-FAC corrected eigenvalues.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub ev_correction: bool,
    /// How to invert the Hessian.
    #[command(flatten)]
    pub inversion_cfg: InversionConfig,
    /// Combine all rows into one: mean, sum or none.
    #[arg(long, value_enum, default_value_t = Aggregation::None)]
    pub aggregation: Aggregation,
    /// Unit-normalise the aggregated row.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub normalize_aggregated_grad: bool,
}

/// The `bergson build` command: Bergson's `Build(index_cfg, preprocess_cfg)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct BuildConfig {
    /// Model, data and collection settings.
    #[command(flatten)]
    pub index_cfg: IndexConfig,
    /// Row preprocessing.
    #[command(flatten)]
    pub preprocess_cfg: PreprocessConfig,
}

clap_defaults!(
    DataConfig,
    DistributedConfig,
    AttentionConfig,
    IndexConfig,
    InversionConfig,
    PreprocessConfig,
    BuildConfig
);

impl IndexConfig {
    /// `<run_path>.part`, where the index is written until it is complete.
    pub fn partial_run_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}.part", self.run_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        build: BuildConfig,
    }

    #[test]
    fn defaults_are_bergsons() {
        let c = BuildConfig::default();
        assert_eq!(c.index_cfg.model, "EleutherAI/pythia-160m");
        assert_eq!(c.index_cfg.token_batch_size, 2048);
        assert_eq!(c.index_cfg.projection_type, ProjectionType::Rademacher);
        assert!(c.index_cfg.drop_columns);
        assert_eq!(c.index_cfg.data.prompt_column, "text");
        assert_eq!(c.preprocess_cfg.inversion_cfg.damping_factor, 0.1);
    }

    #[test]
    fn flags_parse_like_simple_parsing() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/x",
            "--overwrite",
            "--projection_dim",
            "16",
            "--drop_columns",
            "false",
            "--split_attention_modules",
            "a",
            "b",
            "--num_heads",
            "2",
            "--projection_seed",
            "7",
            "--precision",
            "bf16",
            "--aggregation",
            "mean",
        ])
        .unwrap()
        .build;
        assert_eq!(c.index_cfg.run_path, "runs/x");
        assert!(c.index_cfg.overwrite);
        assert_eq!(c.index_cfg.projection_dim, 16);
        assert!(!c.index_cfg.drop_columns);
        assert_eq!(c.index_cfg.split_attention_modules, ["a", "b"]);
        assert_eq!(c.index_cfg.attention.num_heads, 2);
        assert_eq!(c.index_cfg.projection_seed, Some(7));
        assert_eq!(c.index_cfg.precision, PrecisionChoice::Bf16);
        assert_eq!(c.preprocess_cfg.aggregation, Aggregation::Mean);
    }
}
