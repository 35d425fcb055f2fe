//! `bergson trak`: [`TrakConfig`] (the query set, preprocessing, scoring and the ensemble) with
//! [`IndexConfig`] in [`TrakRunConfig`], as Bergson 2.5.1's `Trak` command holds them.
//!
//! Bergson's parser prefixes the flags whose names occur twice in the command: the training
//! data's are `--data.<field>`, the query set's `--query.<field>` (and `--query.aggregation`),
//! its control set's `--contrast.<field>`, the preprocessing aggregation
//! `--preprocess_cfg.aggregation`. The same spellings are accepted here. Two defaults differ
//! from `build`'s: `--projection_dim` 16 and `--damping_factor` 0.0.

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::{IndexConfig, PreprocessConfig};
use super::flags::{clap_default, parse_bool};
use super::query_set::{prefix_training_data, QuerySetConfig};
use super::score::ScoreConfig;

/// The TRAK pipeline's settings (Bergson's `TrakConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrakConfig {
    /// The query set.
    pub query: QuerySetConfig,
    /// Preprocessing (`unit_normalize` is ignored; `hessian_path` is set to the Gram).
    pub preprocess_cfg: PreprocessConfig,
    /// Scoring settings (`query_path` and `higher_is_better` are set by the pipeline).
    pub score_cfg: ScoreConfig,
    /// Independently trained checkpoints to ensemble; member `i` is projected with seed
    /// `projection_seed + i` (`i` when no seed is set). Empty: `--model` alone.
    pub checkpoints: Vec<String>,
    /// Training documents the Gram is fitted on (the first ones); all when unset.
    pub stats_sample_size: Option<usize>,
    /// Documents per forward pass when computing the label probabilities `p_i`.
    pub loss_batch_size: usize,
    /// Skip pipeline steps whose output directory already exists.
    pub resume: bool,
}

/// The `bergson trak` command: Bergson's `Trak(index_cfg, trak_cfg)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrakRunConfig {
    /// Model, training data and collection settings.
    pub index_cfg: IndexConfig,
    /// The pipeline's settings.
    pub trak_cfg: TrakConfig,
}

impl Default for TrakConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for TrakRunConfig {
    fn default() -> Self {
        clap_default()
    }
}

const CHECKPOINTS: &str = "checkpoints";
const STATS_SAMPLE_SIZE: &str = "stats_sample_size";
const LOSS_BATCH_SIZE: &str = "loss_batch_size";
const RESUME: &str = "resume";

impl Args for TrakConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = QuerySetConfig::augment_args(cmd);
        let cmd = PreprocessConfig::augment_args(cmd)
            .mut_arg("aggregation", |a| a.long("preprocess_cfg.aggregation"))
            .mut_arg("damping_factor", |a| a.default_value("0.0"));
        ScoreConfig::augment_args(cmd)
            .arg(
                Arg::new(CHECKPOINTS)
                    .long(CHECKPOINTS)
                    .help("Independently trained checkpoints to ensemble (member i gets projection seed + i)")
                    .value_name("CHECKPOINT")
                    .num_args(0..),
            )
            .arg(
                Arg::new(STATS_SAMPLE_SIZE)
                    .long(STATS_SAMPLE_SIZE)
                    .help("Fit the Gram on the first N training documents (default: all)")
                    .value_name("N")
                    .value_parser(clap::value_parser!(usize)),
            )
            .arg(
                Arg::new(LOSS_BATCH_SIZE)
                    .long(LOSS_BATCH_SIZE)
                    .help("Documents per forward pass when computing the label probabilities p_i")
                    .value_parser(clap::value_parser!(usize))
                    .default_value("32"),
            )
            .arg(
                Arg::new(RESUME)
                    .long(RESUME)
                    .help("Skip pipeline steps whose output directory already exists")
                    .value_name("BOOL")
                    .num_args(0..=1)
                    .default_value("false")
                    .default_missing_value("true")
                    .value_parser(parse_bool)
                    .action(clap::ArgAction::Set),
            )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TrakConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(TrakConfig {
            query: QuerySetConfig::from_arg_matches(m)?,
            preprocess_cfg: PreprocessConfig::from_arg_matches(m)?,
            score_cfg: ScoreConfig::from_arg_matches(m)?,
            checkpoints: m
                .get_many::<String>(CHECKPOINTS)
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            stats_sample_size: m.get_one::<usize>(STATS_SAMPLE_SIZE).copied(),
            loss_batch_size: m.get_one::<usize>(LOSS_BATCH_SIZE).copied().unwrap_or(32),
            resume: m.get_one::<bool>(RESUME).copied().unwrap_or(false),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for TrakRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = IndexConfig::augment_args(cmd);
        cmd = prefix_training_data(cmd);
        // TRAK scores random-projected gradients: Bergson's TrackstarIndexConfig default.
        cmd = cmd.mut_arg("projection_dim", |a| a.default_value("16"));
        TrakConfig::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TrakRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(TrakRunConfig {
            index_cfg: IndexConfig::from_arg_matches(m)?,
            trak_cfg: TrakConfig::from_arg_matches(m)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Aggregation, DataConfig, Inversion, ProjectionTarget, ScorePrecision};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        trak: TrakRunConfig,
    }

    #[test]
    fn defaults_are_bergsons() {
        let c = TrakRunConfig::default();
        assert_eq!(c.index_cfg.projection_dim, 16);
        assert_eq!(c.index_cfg.data.dataset, "NeelNanda/pile-10k");
        let t = &c.trak_cfg;
        assert_eq!(t.preprocess_cfg.inversion_cfg.damping_factor, 0.0);
        assert_eq!(
            t.preprocess_cfg.inversion_cfg.inversion,
            Inversion::DampedInverse
        );
        assert!(!t.preprocess_cfg.unit_normalize);
        assert_eq!(t.loss_batch_size, 32);
        assert_eq!(t.stats_sample_size, None);
        assert!(!t.resume && t.checkpoints.is_empty());
        assert_eq!(t.query.aggregation, Aggregation::None);
        assert_eq!(t.query.data, DataConfig::default());
        assert_eq!(t.query.contrast, None);
        assert!(t.query.path.is_empty());
        assert!(t.score_cfg.higher_is_better);
    }

    #[test]
    fn flags_take_bergsons_prefixed_names() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/t",
            "--model",
            "m",
            "--data.dataset",
            "train.jsonl",
            "--data.split",
            "train[:10]",
            "--query.dataset",
            "q.jsonl",
            "--query.prompt_column",
            "prompt",
            "--query.truncation",
            "--query.aggregation",
            "mean",
            "--preprocess_cfg.aggregation",
            "sum",
            "--projection_target",
            "global",
            "--damping_factor",
            "0.5",
            "--checkpoints",
            "a",
            "b",
            "--stats_sample_size",
            "8",
            "--loss_batch_size",
            "3",
            "--resume",
            "--score_cfg.precision",
            "bf16",
            "--contrast.dataset",
            "c.jsonl",
        ])
        .unwrap()
        .trak;
        assert_eq!(c.index_cfg.run_path, "runs/t");
        assert_eq!(c.index_cfg.data.dataset, "train.jsonl");
        assert_eq!(c.index_cfg.data.split, "train[:10]");
        assert_eq!(c.index_cfg.projection_target, ProjectionTarget::Global);
        let t = &c.trak_cfg;
        assert_eq!(t.query.data.dataset, "q.jsonl");
        assert_eq!(t.query.data.prompt_column, "prompt");
        assert!(t.query.data.truncation);
        assert_eq!(t.query.data.split, "train");
        assert_eq!(t.query.aggregation, Aggregation::Mean);
        assert_eq!(t.preprocess_cfg.aggregation, Aggregation::Sum);
        assert_eq!(t.preprocess_cfg.inversion_cfg.damping_factor, 0.5);
        assert_eq!(t.checkpoints, ["a", "b"]);
        assert_eq!(t.stats_sample_size, Some(8));
        assert_eq!(t.loss_batch_size, 3);
        assert!(t.resume);
        assert_eq!(t.score_cfg.precision, ScorePrecision::Bf16);
        assert_eq!(t.query.contrast.as_ref().unwrap().dataset, "c.jsonl");
        // Bergson's trak spells the training data `--data.dataset`.
        assert!(Cli::try_parse_from(["bergson", "r", "--dataset", "x"]).is_err());
    }

    #[test]
    fn serialises_in_bergsons_layout() {
        let v = serde_json::to_value(TrakRunConfig::default()).unwrap();
        let q = &v["trak_cfg"]["query"];
        assert_eq!(q["dataset"], "NeelNanda/pile-10k");
        assert_eq!(q["aggregation"], "none");
        assert!(q["contrast"].is_null());
        let keys: Vec<&str> = v["trak_cfg"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "query",
                "preprocess_cfg",
                "score_cfg",
                "checkpoints",
                "stats_sample_size",
                "loss_batch_size",
                "resume"
            ]
        );
    }
}
