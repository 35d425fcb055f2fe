//! `bergson magic`: [`MagicConfig`], as Python Bergson 2.5.1's `MagicConfig`
//! (`magic/config.py`, over `ValidationConfig` and `TrainingConfig`) holds it. Bergson's
//! parser (simple_parsing) prefixes the flags of a nested dataset only where two nested
//! configs share a name: the training data, the query set and the contrast set all have a
//! `dataset`, so they are `--data.dataset` (our `--dataset`, both spellings accepted by the
//! CLI), `--query.dataset` and `--contrast.dataset`; the query set's own fields are unique and
//! keep their bare names (`--aggregation`, `--path`).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::flags::{clap_default, parse_bool};
use super::query_set::QuerySetConfig;
use super::train::TrainingConfig;

macro_rules! magic_choice {
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
    };
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

/// The query set of `magic`: the recipes' [`QuerySetConfig`] with its flags as Bergson spells
/// them in this command (`--query.<field>` and `--contrast.<field>` for the datasets, but
/// bare `--aggregation` (alias `--query.aggregation`) and `--path`, since nothing else in
/// `MagicConfig` has those names).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MagicQuerySet(pub QuerySetConfig);

impl std::ops::Deref for MagicQuerySet {
    type Target = QuerySetConfig;

    fn deref(&self) -> &QuerySetConfig {
        &self.0
    }
}

impl Args for MagicQuerySet {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        QuerySetConfig::augment_args(cmd).mut_arg("query.aggregation", |a| {
            a.long("aggregation").alias("query.aggregation")
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for MagicQuerySet {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        QuerySetConfig::from_arg_matches(m).map(MagicQuerySet)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// `bergson magic` (Bergson's `MagicConfig`): training settings, the query set, and the
/// backward's settings, in Python's field order. As a run-file step it is Bergson's flat
/// mapping: the training fields beside MAGIC's own (unknown keys are errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
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
    pub query: MagicQuerySet,
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

impl Default for MagicConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// MAGIC's own keys are taken out, the rest is a strict `TrainingConfig` (serde's `flatten`
/// would ignore unknown keys).
impl TryFrom<serde_json::Map<String, serde_json::Value>> for MagicConfig {
    type Error = String;

    fn try_from(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        use super::flags::take_key as take;
        let mut c = MagicConfig::default();
        take(&mut map, "ckpt_avg_k", &mut c.ckpt_avg_k)?;
        take(&mut map, "query", &mut c.query)?;
        take(&mut map, "subset_weight", &mut c.subset_weight)?;
        take(&mut map, "exclude_zero_scores", &mut c.exclude_zero_scores)?;
        // Bergson writes the validation method as its config block (`{kind: lds, count: ...}`);
        // magic runs no validation, so only its kind is read.
        if let Some(serde_json::Value::Object(mut block)) = map.remove("method") {
            if let Some(kind) = block.remove("kind") {
                map.insert("method".into(), kind);
            }
        }
        take(&mut map, "method", &mut c.method)?;
        take(&mut map, "backward_save_every", &mut c.backward_save_every)?;
        take(&mut map, "cleanup_ckpts", &mut c.cleanup_ckpts)?;
        take(&mut map, "attribute_tokens", &mut c.attribute_tokens)?;
        take(&mut map, "skip_validation", &mut c.skip_validation)?;
        take(&mut map, "per_token", &mut c.per_token)?;
        c.train =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Aggregation;
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
        assert_eq!(c.query.aggregation, Aggregation::None);
        assert_eq!(
            (c.query.data.dataset.as_str(), c.query.data.split.as_str()),
            ("NeelNanda/pile-10k", "train")
        );
        assert!(c.cleanup_ckpts && c.skip_validation && !c.attribute_tokens);
        assert_eq!((c.backward_save_every, c.ckpt_avg_k), (0, 1));
        assert_eq!(c.query.contrast, None);
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
        assert_eq!(c.query.data.dataset, "q.jsonl");
        assert_eq!(c.query.data.split, "test");
        assert_eq!(c.query.aggregation, Aggregation::Sum);
        assert_eq!(c.query.contrast.as_ref().unwrap().dataset, "c.jsonl");
        assert_eq!(c.train.data.dataset, "t.jsonl");
        assert_eq!(c.train.run_path, "run");
        assert!(!c.cleanup_ckpts);
        assert_eq!(
            parse(&["run", "--query.aggregation", "mean"])
                .query
                .aggregation,
            Aggregation::Mean
        );
    }
}
