//! `bergson magic`: [`MagicConfig`], as Python Bergson 2.5.1's `MagicConfig`
//! (`magic/config.py`, over `ValidationConfig` and `TrainingConfig`) holds it. Bergson's
//! parser (simple_parsing) prefixes the flags of a nested dataset only where two nested
//! configs share a name: the training data, the query set and the contrast set all have a
//! `dataset`, so they are `--data.dataset` (our `--dataset`, both spellings accepted by the
//! CLI), `--query.dataset` and `--contrast.dataset`; the query set's own fields are unique and
//! keep their bare names (`--aggregation`, `--path`).

use clap::Args;
use serde::Serialize;

use super::build::DataConfig;
use super::flags::{clap_default, parse_bool};
use super::train::TrainingConfig;

macro_rules! magic_choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? } default $default:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
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
    };
}

magic_choice! {
    /// `--aggregation` of the query set.
    QueryAggregation {
        /// One target: the mean token loss of the whole query set.
        Mean = "mean",
        /// One target: the summed token loss of the query set.
        Sum = "sum",
        /// One score column per query document (one backward each).
        None = "none",
    } default None
}

magic_choice! {
    /// `--method` of the validation step (`--skip_validation false`; `bergson validate`).
    ValidationMethod {
        /// Linear datamodeling score.
        Lds = "lds",
        /// Filtering.
        Filter = "filter",
        /// One weighted step.
        WeightStep = "weight_step",
    } default Lds
}

/// The query set (Bergson's `QuerySetConfig`: a `DataConfig` plus how the query gradients
/// combine), flags `--query.*` for its dataset fields.
#[derive(Debug, Clone, PartialEq, Serialize, Args)]
#[command(rename_all = "snake_case")]
pub struct QuerySetConfig {
    /// Query dataset (default: Bergson's default dataset, NeelNanda/pile-10k).
    #[arg(
        id = "query.dataset",
        long = "query.dataset",
        default_value = "NeelNanda/pile-10k"
    )]
    pub dataset: String,
    /// Query split.
    #[arg(id = "query.split", long = "query.split", default_value = "train")]
    pub split: String,
    /// Query dataset configuration name on the hub.
    #[arg(id = "query.subset", long = "query.subset")]
    pub subset: Option<String>,
    /// Column holding the query text (or prompt).
    #[arg(
        id = "query.prompt_column",
        long = "query.prompt_column",
        default_value = "text"
    )]
    pub prompt_column: String,
    /// Column holding the query completions.
    #[arg(
        id = "query.completion_column",
        long = "query.completion_column",
        default_value = ""
    )]
    pub completion_column: String,
    /// Column holding query conversations.
    #[arg(
        id = "query.conversation_column",
        long = "query.conversation_column",
        default_value = ""
    )]
    pub conversation_column: String,
    /// Column holding rewards.
    #[arg(
        id = "query.reward_column",
        long = "query.reward_column",
        default_value = ""
    )]
    pub reward_column: String,
    /// Column holding advantages.
    #[arg(
        id = "query.advantage_column",
        long = "query.advantage_column",
        default_value = ""
    )]
    pub advantage_column: String,
    /// Drop query rows whose reward is NaN.
    #[arg(id = "query.skip_nan_rewards", long = "query.skip_nan_rewards", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub skip_nan_rewards: bool,
    /// Truncate long query documents.
    #[arg(id = "query.truncation", long = "query.truncation", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub truncation: bool,
    /// Jinja2 template YAML for the query rows.
    #[arg(
        id = "query.format_template",
        long = "query.format_template",
        default_value = ""
    )]
    pub format_template: String,
    /// Extra dataset-loading arguments, `k=v,k=v`.
    #[arg(
        id = "query.data_kwargs",
        long = "query.data_kwargs",
        default_value = ""
    )]
    pub data_kwargs: String,
    /// When positive, chunk the query documents (not with `--aggregation none`).
    #[arg(
        id = "query.chunk_length",
        long = "query.chunk_length",
        default_value_t = 0
    )]
    pub chunk_length: usize,
    /// How the query gradients combine: one column per query (`none`), or one target
    /// gradient (`mean`, `sum`).
    #[arg(long, alias = "query.aggregation", value_enum, default_value_t = QueryAggregation::None)]
    pub aggregation: QueryAggregation,
    /// Control set subtracted from the aggregated query (`--contrast.*`).
    #[command(flatten)]
    pub contrast: ContrastConfig,
    /// An existing query index instead of the dataset fields (not used by `magic`).
    #[arg(long, alias = "query.path", default_value = "")]
    pub path: String,
}

/// The contrast set (Bergson's optional `QuerySetConfig.contrast`): unset unless
/// `--contrast.dataset` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Args)]
#[command(rename_all = "snake_case")]
pub struct ContrastConfig {
    /// Contrast dataset; scores then measure query loss minus contrast loss.
    #[arg(id = "contrast.dataset", long = "contrast.dataset")]
    pub dataset: Option<String>,
    /// Contrast split.
    #[arg(
        id = "contrast.split",
        long = "contrast.split",
        default_value = "train"
    )]
    pub split: String,
    /// Contrast dataset configuration name on the hub.
    #[arg(id = "contrast.subset", long = "contrast.subset")]
    pub subset: Option<String>,
    /// Column holding the contrast text.
    #[arg(
        id = "contrast.prompt_column",
        long = "contrast.prompt_column",
        default_value = "text"
    )]
    pub prompt_column: String,
    /// Column holding contrast completions.
    #[arg(
        id = "contrast.completion_column",
        long = "contrast.completion_column",
        default_value = ""
    )]
    pub completion_column: String,
    /// Column holding contrast conversations.
    #[arg(
        id = "contrast.conversation_column",
        long = "contrast.conversation_column",
        default_value = ""
    )]
    pub conversation_column: String,
    /// Truncate long contrast documents.
    #[arg(id = "contrast.truncation", long = "contrast.truncation", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub truncation: bool,
    /// Chunk the contrast documents to this length.
    #[arg(
        id = "contrast.chunk_length",
        long = "contrast.chunk_length",
        default_value_t = 0
    )]
    pub chunk_length: usize,
}

impl QuerySetConfig {
    /// The query set's dataset fields as a `DataConfig`.
    pub fn to_data(&self) -> DataConfig {
        DataConfig {
            dataset: self.dataset.clone(),
            split: self.split.clone(),
            subset: self.subset.clone(),
            prompt_column: self.prompt_column.clone(),
            completion_column: self.completion_column.clone(),
            conversation_column: self.conversation_column.clone(),
            reward_column: self.reward_column.clone(),
            advantage_column: self.advantage_column.clone(),
            skip_nan_rewards: self.skip_nan_rewards,
            truncation: self.truncation,
            format_template: self.format_template.clone(),
            data_kwargs: self.data_kwargs.clone(),
            chunk_length: self.chunk_length,
        }
    }
}

impl ContrastConfig {
    /// The contrast set as a `DataConfig`, if one is given.
    pub fn to_data(&self) -> Option<DataConfig> {
        let dataset = self.dataset.clone()?;
        Some(DataConfig {
            dataset,
            split: self.split.clone(),
            subset: self.subset.clone(),
            prompt_column: self.prompt_column.clone(),
            completion_column: self.completion_column.clone(),
            conversation_column: self.conversation_column.clone(),
            truncation: self.truncation,
            chunk_length: self.chunk_length,
            ..DataConfig::default()
        })
    }
}

/// `bergson magic` (Bergson's `MagicConfig`): training settings, the query set, and the
/// backward's settings, in Python's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Args)]
#[command(rename_all = "snake_case")]
pub struct MagicConfig {
    /// The training run (Bergson's `TrainingConfig`).
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainingConfig,
    /// Average the query gradient over the last k checkpoints (only 1 is supported).
    #[arg(long, default_value_t = 1)]
    pub ckpt_avg_k: usize,
    /// What to attribute to.
    #[command(flatten)]
    pub query: QuerySetConfig,
    /// Validation: the training weight of a left-out subset.
    #[arg(long, default_value_t = 0.0)]
    pub subset_weight: f64,
    /// Validation: drop zero scores from the permutation.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub exclude_zero_scores: bool,
    /// Validation method.
    #[arg(long, value_enum, default_value_t = ValidationMethod::Lds)]
    pub method: ValidationMethod,
    /// Save the backward's state every this many steps (0: never), so an interrupted backward
    /// resumes with `--resume`.
    #[arg(long, default_value_t = 0)]
    pub backward_save_every: usize,
    /// Delete every checkpoint but the last as the backward consumes them.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub cleanup_ckpts: bool,
    /// One score per training token (a per-token weight grid) instead of per document.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub attribute_tokens: bool,
    /// Skip the leave-k-out validation (false: not in `magic`; see `bergson validate`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub skip_validation: bool,
    /// Old spelling of `--attribute_tokens`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub per_token: bool,
}

impl Default for QuerySetConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for ContrastConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for MagicConfig {
    fn default() -> Self {
        clap_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    fn parse(args: &[&str]) -> MagicConfig {
        let cmd = MagicConfig::augment_args(Command::new("magic").no_binary_name(true));
        let m = cmd.try_get_matches_from(args).unwrap();
        MagicConfig::from_arg_matches(&m).unwrap()
    }

    /// Bergson 2.5.1's defaults (`bergson magic --help`) and its flag spellings.
    #[test]
    fn defaults_and_flags_match_bergson() {
        let c = MagicConfig::default();
        assert_eq!(c.query.aggregation, QueryAggregation::None);
        assert_eq!(
            (c.query.dataset.as_str(), c.query.split.as_str()),
            ("NeelNanda/pile-10k", "train")
        );
        assert!(c.cleanup_ckpts && c.skip_validation && !c.attribute_tokens);
        assert_eq!((c.backward_save_every, c.ckpt_avg_k), (0, 1));
        assert_eq!(c.query.contrast.to_data(), None);
        let c = parse(&[
            "run",
            "--query.dataset",
            "q.jsonl",
            "--query.split",
            "test",
            "--aggregation",
            "sum",
            "--contrast.dataset",
            "c.jsonl",
            "--dataset",
            "t.jsonl",
            "--cleanup_ckpts",
            "false",
        ]);
        assert_eq!(c.query.to_data().dataset, "q.jsonl");
        assert_eq!(c.query.to_data().split, "test");
        assert_eq!(c.query.aggregation, QueryAggregation::Sum);
        assert_eq!(c.query.contrast.to_data().unwrap().dataset, "c.jsonl");
        assert_eq!(c.train.data.dataset, "t.jsonl");
        assert_eq!(c.train.run_path, "run");
        assert!(!c.cleanup_ckpts);
        assert_eq!(
            parse(&["run", "--query.aggregation", "mean"])
                .query
                .aggregation,
            QueryAggregation::Mean
        );
    }
}
