//! `bergson lissa`: LiSSA influence's config, as Bergson 2.5.1's `Lissa` command holds it:
//! `index_cfg`, `score_cfg`, `preprocess_cfg` and [`LissaConfig`] (the query set and the
//! series).
//!
//! Flags as Bergson's parser spells them in this command: `--data.*` (training data) beside
//! `--query.*` and `--contrast.*`, `--lissa_cfg.batch_size` beside `--score_cfg.batch_size`,
//! `--index_cfg.precision` / `--score_cfg.precision`; the preprocessing flags keep their bare
//! names (`--ev_correction`, `--inversion`, ...), which nothing else in the command uses.

use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::{IndexConfig, PreprocessConfig};
use super::ekfac::{augment_recipe_args, recipe_from_matches, resume_arg, resume_from_matches};
use super::query_set::QuerySetConfig;
use super::score::ScoreConfig;

/// The LiSSA estimator (Bergson's `LissaConfig`): each query's `(G + damping·I)⁻¹ q` as the
/// truncated series `Σ_t (I − (G + damping·I)/scale)^t q / scale`, averaged over `repeats`,
/// `G` the Gauss-Newton Hessian on a random batch of training documents per term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LissaConfig {
    /// Query dataset and aggregation.
    pub query: QuerySetConfig,
    /// Added to every eigenvalue of `G`.
    pub damping: f64,
    /// Divides the damped Hessian; the series converges only when it exceeds half the largest
    /// eigenvalue of the damped Hessian.
    pub scale: f64,
    /// Terms of the series.
    pub depth: usize,
    /// Independent estimates averaged per query.
    pub repeats: usize,
    /// Training documents per Hessian-vector product.
    pub batch_size: usize,
    /// Documents per forward pass within a batch.
    pub micro_batch_size: usize,
    /// Seeds the training batches, drawn separately for each query.
    pub seed: u64,
    /// Skip the steps whose output directory already exists.
    pub resume: bool,
}

impl Default for LissaConfig {
    fn default() -> Self {
        LissaConfig {
            query: QuerySetConfig::default(),
            damping: 0.01,
            scale: 100.0,
            depth: 5000,
            repeats: 5,
            batch_size: 16,
            micro_batch_size: 16,
            seed: 0,
            resume: false,
        }
    }
}

/// The series flags (the query set, `--resume` and the recipe flags are added beside them).
#[derive(Debug, Clone, PartialEq, Args)]
#[command(rename_all = "snake_case")]
struct SeriesArgs {
    /// Added to every eigenvalue of G.
    #[arg(long, default_value_t = 0.01)]
    damping: f64,
    /// Divides the damped Hessian (must exceed half its largest eigenvalue).
    #[arg(long, default_value_t = 100.0)]
    scale: f64,
    /// Terms of the series.
    #[arg(long, default_value_t = 5000)]
    depth: usize,
    /// Independent estimates averaged per query.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Training documents per Hessian-vector product.
    #[arg(
        long = "lissa_cfg.batch_size",
        id = "lissa_batch_size",
        default_value_t = 16
    )]
    batch_size: usize,
    /// Documents per forward pass within a batch.
    #[arg(long, default_value_t = 16)]
    micro_batch_size: usize,
    /// Seeds the training batches, drawn separately for each query.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The `bergson lissa` command: Bergson's `Lissa(index_cfg, score_cfg, preprocess_cfg,
/// lissa_cfg)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LissaRunConfig {
    /// Model, training data and collection settings.
    pub index_cfg: IndexConfig,
    /// Scoring settings.
    pub score_cfg: ScoreConfig,
    /// Preprocessing of the scoring step.
    pub preprocess_cfg: PreprocessConfig,
    /// Query set and series.
    pub lissa_cfg: LissaConfig,
}

impl Args for LissaRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = augment_recipe_args(cmd, |l| l.to_string())
            .mut_arg("batch_size", |a| a.long("score_cfg.batch_size"));
        let cmd = SeriesArgs::augment_args(cmd);
        QuerySetConfig::augment_args(cmd).arg(resume_arg())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for LissaRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (index_cfg, score_cfg, preprocess_cfg) = recipe_from_matches(m)?;
        let s = SeriesArgs::from_arg_matches(m)?;
        Ok(LissaRunConfig {
            index_cfg,
            score_cfg,
            preprocess_cfg,
            lissa_cfg: LissaConfig {
                query: QuerySetConfig::from_arg_matches(m)?,
                damping: s.damping,
                scale: s.scale,
                depth: s.depth,
                repeats: s.repeats,
                batch_size: s.batch_size,
                micro_batch_size: s.micro_batch_size,
                seed: s.seed,
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lissa: LissaRunConfig,
    }

    #[test]
    fn flags_take_bergsons_names_and_defaults() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/l",
            "--data.dataset",
            "t.jsonl",
            "--query.dataset",
            "q.jsonl",
            "--depth",
            "3",
            "--repeats",
            "2",
            "--lissa_cfg.batch_size",
            "4",
            "--score_cfg.batch_size",
            "8",
            "--damping",
            "0.5",
            "--scale",
            "10",
            "--seed",
            "7",
            "--ev_correction",
            "--inversion",
            "pseudoinverse",
        ])
        .unwrap()
        .lissa;
        assert_eq!(c.index_cfg.data.dataset, "t.jsonl");
        let l = &c.lissa_cfg;
        assert_eq!(l.query.data.dataset, "q.jsonl");
        assert_eq!((l.depth, l.repeats, l.batch_size, l.seed), (3, 2, 4, 7));
        assert_eq!((l.damping, l.scale), (0.5, 10.0));
        assert_eq!(c.score_cfg.batch_size, 8);
        assert!(c.preprocess_cfg.ev_correction);
        assert_eq!(
            c.preprocess_cfg.inversion_cfg.inversion,
            crate::config::Inversion::Pseudoinverse
        );
        let d = Cli::try_parse_from(["bergson", "r"]).unwrap().lissa;
        assert_eq!(d.lissa_cfg, LissaConfig::default());
        assert!(Cli::try_parse_from(["bergson", "r", "--batch_size", "3"]).is_err());
    }
}
