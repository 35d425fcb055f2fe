//! `bergson approxunrolling`: SOURCE (Bae et al. 2024, approximate unrolled differentiation),
//! as Bergson 2.5.1's `ApproxUnrolling` command holds it: `index_cfg` (model, training data,
//! collection), `hessian_cfg` (the factored fit at each checkpoint) and `approx_unrolling_cfg`
//! ([`ApproxUnrollingConfig`]: the checkpoints, segments, learning rates, the Adam variant, the
//! inversion and the query set).
//!
//! Flags as Bergson's parser spells them in this command: the training data's are `--data.*`
//! beside `--query.*` and `--contrast.*`; everything else keeps its bare name (`--precision`,
//! `--ev_correction`, `--inversion`, `--damping_factor`, `--aggregation`, `--path`), since
//! nothing else in the command shares it.

use clap::builder::EnumValueParser;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::{IndexConfig, InversionConfig};
use super::enums::Aggregation;
use super::flags::parse_bool;
use super::hessian::HessianConfig;
use super::query_set::{prefix_training_data, QuerySetConfig};

/// SOURCE's settings (Bergson's `ApproxUnrollingConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApproxUnrollingConfig {
    /// Training checkpoints (HF model directories) in training order.
    pub checkpoints: Vec<String>,
    /// The model the checkpoints were trained from (filled from the training run if unset).
    pub model_path: Option<String>,
    /// Segments the trajectory is split into; must divide the number of checkpoints.
    pub segments: usize,
    /// Learning rate (kept for Bergson's config; the pipeline uses `lr_list` or the run's
    /// learning-rate history).
    pub lr: f64,
    /// Per-segment learning rate; with `step_size_list`, replaces the run's history.
    pub lr_list: Vec<f64>,
    /// Per-segment optimizer steps.
    pub step_size_list: Vec<i64>,
    /// SGD heavy-ball momentum β: scales `lr·K` by `1/(1−β)`; unset: from the run, else 0.
    pub momentum: Option<f64>,
    /// The Adam/AdamW-preconditioned variant; needs `optimizer.pt` in every checkpoint.
    pub use_adam_preconditioner: bool,
    /// The EK-FAC inverse of the Adam variant (the SGD variant inverts nothing).
    pub inversion_cfg: InversionConfig,
    /// The query set, its gradients taken at the final checkpoint.
    pub query: QuerySetConfig,
    /// Queries scored per pass over the training data (all at once when unset).
    pub query_batch_size: Option<usize>,
}

impl Default for ApproxUnrollingConfig {
    fn default() -> Self {
        ApproxUnrollingConfig {
            checkpoints: Vec::new(),
            model_path: None,
            segments: 3,
            lr: 1e-5,
            lr_list: Vec::new(),
            step_size_list: Vec::new(),
            momentum: None,
            use_adam_preconditioner: false,
            inversion_cfg: InversionConfig::default(),
            query: QuerySetConfig::default(),
            query_batch_size: None,
        }
    }
}

/// The `bergson approxunrolling` command: Bergson's `ApproxUnrolling(index_cfg, hessian_cfg,
/// approx_unrolling_cfg)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApproxUnrollingRunConfig {
    /// Model, training data and collection settings.
    pub index_cfg: IndexConfig,
    /// The factored Hessian fitted at each checkpoint.
    pub hessian_cfg: HessianConfig,
    /// Checkpoints, segments, learning rates and the query set.
    pub approx_unrolling_cfg: ApproxUnrollingConfig,
}

const CHECKPOINTS: &str = "checkpoints";
const MODEL_PATH: &str = "model_path";
const SEGMENTS: &str = "segments";
const LR: &str = "lr";
const LR_LIST: &str = "lr_list";
const STEP_SIZE_LIST: &str = "step_size_list";
const MOMENTUM: &str = "momentum";
const ADAM: &str = "use_adam_preconditioner";
const QUERY_BATCH_SIZE: &str = "query_batch_size";
const HEADING: &str = "SOURCE (approximate unrolling)";

fn source_args(cmd: Command) -> Command {
    let arg = |id: &'static str, help: &'static str| {
        Arg::new(id).long(id).help(help).help_heading(HEADING)
    };
    cmd.arg(
        arg(
            CHECKPOINTS,
            "Training checkpoints (HF model directories), in training order",
        )
        .value_name("CHECKPOINT")
        .num_args(0..),
    )
    .arg(arg(MODEL_PATH, "The model the checkpoints were trained from").value_name("PATH"))
    .arg(
        arg(
            SEGMENTS,
            "Segments of the trajectory; must divide the number of checkpoints",
        )
        .value_name("N")
        .value_parser(clap::value_parser!(usize))
        .default_value("3"),
    )
    .arg(
        arg(
            LR,
            "Learning rate (Bergson's field; not used by the pipeline)",
        )
        .value_name("LR")
        .value_parser(clap::value_parser!(f64))
        .default_value("1e-05"),
    )
    .arg(
        arg(LR_LIST, "Per-segment learning rate (with --step_size_list)")
            .value_name("LR")
            .value_parser(clap::value_parser!(f64))
            .num_args(0..),
    )
    .arg(
        arg(
            STEP_SIZE_LIST,
            "Per-segment optimizer steps (with --lr_list)",
        )
        .value_name("STEPS")
        .value_parser(clap::value_parser!(i64))
        .num_args(0..),
    )
    .arg(
        arg(
            MOMENTUM,
            "SGD heavy-ball momentum beta (default: from the training run, else 0)",
        )
        .value_name("BETA")
        .value_parser(clap::value_parser!(f64)),
    )
    .arg(
        arg(
            ADAM,
            "The Adam-preconditioned variant (needs optimizer.pt in every checkpoint)",
        )
        .value_name("BOOL")
        .num_args(0..=1)
        .default_value("false")
        .default_missing_value("true")
        .value_parser(parse_bool)
        .action(ArgAction::Set),
    )
    .arg(
        arg(
            QUERY_BATCH_SIZE,
            "Queries scored per pass over the training data",
        )
        .value_name("N")
        .value_parser(clap::value_parser!(usize)),
    )
}

impl Args for ApproxUnrollingRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = prefix_training_data(IndexConfig::augment_args(cmd));
        let cmd = HessianConfig::augment_args(cmd);
        let cmd = InversionConfig::augment_args(source_args(cmd));
        // No preprocessing config here: the query set's flags take Bergson's bare names.
        QuerySetConfig::augment_args(cmd).mut_arg("query.aggregation", |a| {
            a.long("aggregation")
                .value_parser(EnumValueParser::<Aggregation>::new())
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ApproxUnrollingRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let many = |id: &str| -> Vec<String> {
            m.get_many::<String>(id)
                .map(|v| v.cloned().collect())
                .unwrap_or_default()
        };
        Ok(ApproxUnrollingRunConfig {
            index_cfg: IndexConfig::from_arg_matches(m)?,
            hessian_cfg: HessianConfig::from_arg_matches(m)?,
            approx_unrolling_cfg: ApproxUnrollingConfig {
                checkpoints: many(CHECKPOINTS),
                model_path: m.get_one::<String>(MODEL_PATH).cloned(),
                segments: m.get_one::<usize>(SEGMENTS).copied().unwrap_or(3),
                lr: m.get_one::<f64>(LR).copied().unwrap_or(1e-5),
                lr_list: m
                    .get_many::<f64>(LR_LIST)
                    .map(|v| v.copied().collect())
                    .unwrap_or_default(),
                step_size_list: m
                    .get_many::<i64>(STEP_SIZE_LIST)
                    .map(|v| v.copied().collect())
                    .unwrap_or_default(),
                momentum: m.get_one::<f64>(MOMENTUM).copied(),
                use_adam_preconditioner: m.get_one::<bool>(ADAM).copied().unwrap_or(false),
                inversion_cfg: InversionConfig::from_arg_matches(m)?,
                query: QuerySetConfig::from_arg_matches(m)?,
                query_batch_size: m.get_one::<usize>(QUERY_BATCH_SIZE).copied(),
            },
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
    use crate::config::{DataConfig, HessianMethod, Inversion};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        source: ApproxUnrollingRunConfig,
    }

    #[test]
    fn flags_take_bergsons_names() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/s",
            "--method",
            "kfac",
            "--ev_correction",
            "true",
            "--data.dataset",
            "train.jsonl",
            "--query.dataset",
            "q.jsonl",
            "--aggregation",
            "mean",
            "--checkpoints",
            "c/checkpoint-2",
            "c/checkpoint-4",
            "--segments",
            "2",
            "--lr_list",
            "0.3",
            "0.1",
            "--step_size_list",
            "4",
            "4",
            "--momentum",
            "0.5",
            "--use_adam_preconditioner",
            "--inversion",
            "pseudoinverse",
            "--damping_factor",
            "0.05",
            "--query_batch_size",
            "3",
            "--precision",
            "fp64",
        ])
        .unwrap()
        .source;
        assert_eq!(c.index_cfg.run_path, "runs/s");
        assert_eq!(c.index_cfg.data.dataset, "train.jsonl");
        assert_eq!(c.hessian_cfg.method, HessianMethod::Kfac);
        assert!(c.hessian_cfg.ev_correction);
        let s = &c.approx_unrolling_cfg;
        assert_eq!(s.checkpoints, ["c/checkpoint-2", "c/checkpoint-4"]);
        assert_eq!(s.segments, 2);
        assert_eq!(s.lr_list, [0.3, 0.1]);
        assert_eq!(s.step_size_list, [4, 4]);
        assert_eq!(s.momentum, Some(0.5));
        assert!(s.use_adam_preconditioner);
        assert_eq!(s.inversion_cfg.inversion, Inversion::Pseudoinverse);
        assert_eq!(s.inversion_cfg.damping_factor, 0.05);
        assert_eq!(s.query.data.dataset, "q.jsonl");
        assert_eq!(s.query.aggregation, Aggregation::Mean);
        assert_eq!(s.query_batch_size, Some(3));

        let d = Cli::try_parse_from(["bergson", "r", "--method", "kfac"])
            .unwrap()
            .source;
        assert_eq!(d.approx_unrolling_cfg, ApproxUnrollingConfig::default());
        assert_eq!(d.index_cfg.data, DataConfig::default());
        assert!(
            Cli::try_parse_from(["bergson", "r", "--method", "kfac", "--dataset", "x"]).is_err()
        );
    }

    #[test]
    fn saved_config_has_bergsons_sections_and_round_trips() {
        let mut c = ApproxUnrollingRunConfig::default();
        c.approx_unrolling_cfg.checkpoints = vec!["a".into(), "b".into()];
        c.approx_unrolling_cfg.momentum = Some(0.9);
        let text = serde_saphyr::to_string(&c).unwrap();
        let top: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.trim_end_matches(':'))
            .collect();
        assert_eq!(top, ["index_cfg", "hessian_cfg", "approx_unrolling_cfg"]);
        let back: ApproxUnrollingRunConfig = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
