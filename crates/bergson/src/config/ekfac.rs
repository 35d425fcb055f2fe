//! `bergson ekfac`: the Hessian-preconditioned influence pipeline's config, as Bergson 2.5.1's
//! `Ekfac` command holds it: `index_cfg` (model, training data, projection of the scored
//! index), `hessian_cfg` (the factored fit), `score_cfg`, `preprocess_cfg` and
//! `hessian_pipeline_cfg` ([`HessianPipelineConfig`]: the query set, the inversion and ASTRA).
//!
//! Flags are spelled as Bergson's parser spells them in this command, where several nested
//! configs share names: `--data.dataset` (training data) beside `--query.dataset` and
//! `--contrast.dataset`, `--index_cfg.precision` / `--score_cfg.precision`,
//! `--hessian_cfg.ev_correction` / `--preprocess_cfg.ev_correction`,
//! `--preprocess_cfg.inversion_cfg.*` / `--hessian_pipeline_cfg.inversion_cfg.*`,
//! `--astra.batch_size` / `--batch_size` (score's), `--astra.loss_reduction`.

use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::{DataConfig, IndexConfig, InversionConfig, PreprocessConfig};
use super::enums::LossReduction;
use super::flags::{clap_default, parse_bool};
use super::hessian::HessianConfig;
use super::query_set::QuerySetConfig;
use super::renamed::{augment_renamed, from_renamed, prefix_longs};
use super::score::ScoreConfig;

/// `--solver`: how ASTRA refines each inverse-Hessian-vector product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum AstraSolver {
    /// ASTRA's momentum SGD, preconditioned by the factored inverse.
    #[default]
    #[serde(rename = "sgd")]
    #[value(name = "sgd")]
    Sgd,
    /// Preconditioned conjugate gradients on one batch of documents.
    #[serde(rename = "cg")]
    #[value(name = "cg")]
    Cg,
}

/// ASTRA refinement of the factored solutions (Bergson's `AstraConfig`, Wang et al. 2025,
/// arXiv:2507.14740): each query's `x = (H + D)^-1 q` refined on `x^T (H + D) x / 2 - x^T q`,
/// `H` the Gauss-Newton Hessian on random training batches, `D` each module's damping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct AstraConfig {
    /// Steps per query; 0 scores the factored solution unchanged.
    #[arg(long, default_value_t = 0)]
    pub num_steps: usize,
    /// `sgd` (momentum SGD) or `cg` (conjugate gradients on one batch; ignores the step size,
    /// momentum and decay).
    #[arg(long, value_enum, default_value_t = AstraSolver::Sgd)]
    pub solver: AstraSolver,
    /// Overrides `--loss_reduction` in the Hessian-vector products.
    #[arg(long = "astra.loss_reduction", id = "astra_loss_reduction", value_enum)]
    pub loss_reduction: Option<LossReduction>,
    /// Step size.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Training documents per Hessian-vector product.
    #[arg(
        long = "astra.batch_size",
        id = "astra_batch_size",
        default_value_t = 16
    )]
    pub batch_size: usize,
    /// Documents per forward pass within a batch.
    #[arg(long, default_value_t = 16)]
    pub micro_batch_size: usize,
    /// Factor the step size is multiplied by every `--lr_decay_interval` steps.
    #[arg(long, default_value_t = 0.9)]
    pub lr_decay: f64,
    /// Steps between step-size decays.
    #[arg(long, default_value_t = 100)]
    pub lr_decay_interval: usize,
    /// Seeds the training batches, drawn separately for each query.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl AstraConfig {
    /// The solver's name (`sgd`, `cg`).
    pub fn solver_name(&self) -> &'static str {
        match self.solver {
            AstraSolver::Sgd => "sgd",
            AstraSolver::Cg => "cg",
        }
    }
}

impl Default for AstraConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// The pipeline's own settings (Bergson's `HessianPipelineConfig`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HessianPipelineConfig {
    /// The query dataset and aggregation.
    pub query: QuerySetConfig,
    /// How the fitted Hessian is inverted when applied to the query.
    pub inversion_cfg: InversionConfig,
    /// ASTRA refinement of the preconditioned queries.
    pub astra: AstraConfig,
    /// Skip the steps whose output directory already exists.
    pub resume: bool,
}

/// The `bergson ekfac` command: Bergson's `Ekfac(index_cfg, hessian_cfg, score_cfg,
/// preprocess_cfg, hessian_pipeline_cfg)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EkfacRunConfig {
    /// Model, training data, collection and the scored index's projection.
    pub index_cfg: IndexConfig,
    /// The factored Hessian fit.
    pub hessian_cfg: HessianConfig,
    /// Scoring settings.
    pub score_cfg: ScoreConfig,
    /// Preprocessing of the scoring step.
    pub preprocess_cfg: PreprocessConfig,
    /// Query set, inversion, ASTRA, resume.
    pub hessian_pipeline_cfg: HessianPipelineConfig,
}

const PIPELINE_INVERSION: &str = "hessian_pipeline_cfg.inversion_cfg";
const RESUME: &str = "resume";

/// The long flag of a `PreprocessConfig` argument in a pipeline command.
fn preprocess_long(l: &str) -> String {
    match l {
        "ev_correction" => "preprocess_cfg.ev_correction".into(),
        "inversion" | "damping_factor" | "apply_batch_size" => {
            format!("preprocess_cfg.inversion_cfg.{l}")
        }
        other => other.into(),
    }
}

/// Adds the flags every Hessian recipe shares: `index_cfg` (with `--data.*`,
/// `--index_cfg.precision`, `--index_cfg.modules`), `score_cfg` and `preprocess_cfg` (its long
/// flags named by `preprocess_long`).
pub(crate) fn augment_recipe_args(cmd: Command, preprocess_long: fn(&str) -> String) -> Command {
    let cmd = IndexConfig::augment_args(cmd)
        .mut_arg("precision", |a| a.long("index_cfg.precision"))
        .mut_arg("modules", |a| a.long("index_cfg.modules"));
    let cmd = prefix_longs::<DataConfig>(cmd, "data.");
    let cmd = ScoreConfig::augment_args(cmd);
    augment_renamed::<PreprocessConfig>(cmd, "preprocess_cfg", preprocess_long)
}

/// The shared recipe configs from the flags [`augment_recipe_args`] added.
pub(crate) fn recipe_from_matches(
    m: &ArgMatches,
) -> Result<(IndexConfig, ScoreConfig, PreprocessConfig), clap::Error> {
    Ok((
        IndexConfig::from_arg_matches(m)?,
        ScoreConfig::from_arg_matches(m)?,
        from_renamed::<PreprocessConfig>(m, "preprocess_cfg")?.0,
    ))
}

/// The `--resume` flag.
pub(crate) fn resume_arg() -> clap::Arg {
    clap::Arg::new(RESUME)
        .long("resume")
        .value_name("BOOL")
        .num_args(0..=1)
        .default_value("false")
        .default_missing_value("true")
        .value_parser(parse_bool)
        .action(clap::ArgAction::Set)
        .help("Skip the steps whose output directory already exists")
}

/// The value of `--resume`.
pub(crate) fn resume_from_matches(m: &ArgMatches) -> bool {
    m.get_one::<bool>(RESUME).copied().unwrap_or(false)
}

impl Args for EkfacRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = augment_recipe_args(cmd, preprocess_long);
        let cmd = HessianConfig::augment_args(cmd)
            .mut_arg("ev_correction", |a| a.long("hessian_cfg.ev_correction"));
        let cmd = QuerySetConfig::augment_args(cmd);
        let cmd = augment_renamed::<InversionConfig>(cmd, PIPELINE_INVERSION, |l| {
            format!("{PIPELINE_INVERSION}.{l}")
        });
        AstraConfig::augment_args(cmd).arg(resume_arg())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for EkfacRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (index_cfg, score_cfg, preprocess_cfg) = recipe_from_matches(m)?;
        Ok(EkfacRunConfig {
            index_cfg,
            hessian_cfg: HessianConfig::from_arg_matches(m)?,
            score_cfg,
            preprocess_cfg,
            hessian_pipeline_cfg: HessianPipelineConfig {
                query: QuerySetConfig::from_arg_matches(m)?,
                inversion_cfg: from_renamed::<InversionConfig>(m, PIPELINE_INVERSION)?.0,
                astra: AstraConfig::from_arg_matches(m)?,
                resume: resume_from_matches(m),
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
    use crate::config::{Aggregation, HessianMethod, Inversion, ScorePrecision};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ekfac: EkfacRunConfig,
    }

    #[test]
    fn flags_take_bergsons_prefixed_names() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/e",
            "--method",
            "kfac",
            "--hessian_cfg.ev_correction",
            "true",
            "--preprocess_cfg.ev_correction",
            "--data.dataset",
            "train.jsonl",
            "--query.dataset",
            "q.jsonl",
            "--query.split",
            "test",
            "--query.aggregation",
            "mean",
            "--contrast.dataset",
            "c.jsonl",
            "--index_cfg.precision",
            "fp64",
            "--score_cfg.precision",
            "bf16",
            "--hessian_pipeline_cfg.inversion_cfg.inversion",
            "pseudoinverse",
            "--hessian_pipeline_cfg.inversion_cfg.damping_factor",
            "0.05",
            "--preprocess_cfg.inversion_cfg.damping_factor",
            "0.3",
            "--num_steps",
            "4",
            "--solver",
            "cg",
            "--astra.batch_size",
            "8",
            "--batch_size",
            "7",
            "--astra.loss_reduction",
            "mean",
            "--projection_dim",
            "4",
            "--resume",
        ])
        .unwrap()
        .ekfac;
        assert_eq!(c.index_cfg.run_path, "runs/e");
        assert_eq!(c.index_cfg.data.dataset, "train.jsonl");
        assert_eq!(c.index_cfg.projection_dim, 4);
        assert_eq!(c.hessian_cfg.method, HessianMethod::Kfac);
        assert!(c.hessian_cfg.ev_correction);
        assert!(c.preprocess_cfg.ev_correction);
        assert_eq!(c.preprocess_cfg.inversion_cfg.damping_factor, 0.3);
        assert_eq!(c.score_cfg.precision, ScorePrecision::Bf16);
        assert_eq!(c.score_cfg.batch_size, 7);
        let p = &c.hessian_pipeline_cfg;
        assert_eq!(p.query.data.dataset, "q.jsonl");
        assert_eq!(p.query.data.split, "test");
        assert_eq!(p.query.aggregation, Aggregation::Mean);
        assert_eq!(p.query.contrast.as_ref().unwrap().dataset, "c.jsonl");
        assert_eq!(p.inversion_cfg.inversion, Inversion::Pseudoinverse);
        assert_eq!(p.inversion_cfg.damping_factor, 0.05);
        assert_eq!(p.astra.num_steps, 4);
        assert_eq!(p.astra.solver, AstraSolver::Cg);
        assert_eq!(p.astra.batch_size, 8);
        assert_eq!(p.astra.loss_reduction, Some(LossReduction::Mean));
        assert!(p.resume);

        let d = Cli::try_parse_from(["bergson", "r", "--method", "shampoo"])
            .unwrap()
            .ekfac;
        assert_eq!(d.hessian_pipeline_cfg, HessianPipelineConfig::default());
        assert!(d.hessian_pipeline_cfg.query.contrast.is_none());
        assert_eq!(d.index_cfg.data, DataConfig::default());
        // Bergson's spellings only: the bare names clash in this command.
        for bad in [
            ["--dataset", "x"],
            ["--ev_correction", "true"],
            ["--inversion", "pseudoinverse"],
            ["--method", "ekfac"],
        ] {
            let mut argv = vec!["bergson", "r", "--method", "kfac"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn saved_config_has_bergsons_sections_in_order_and_round_trips() {
        let mut c = EkfacRunConfig::default();
        c.index_cfg.run_path = "runs/e".into();
        c.hessian_pipeline_cfg.astra.num_steps = 2;
        let text = serde_saphyr::to_string(&c).unwrap();
        let top: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.trim_end_matches(':'))
            .collect();
        assert_eq!(
            top,
            [
                "index_cfg",
                "hessian_cfg",
                "score_cfg",
                "preprocess_cfg",
                "hessian_pipeline_cfg"
            ]
        );
        let back: EkfacRunConfig = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
