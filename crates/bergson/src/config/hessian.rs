//! `bergson hessian`: [`HessianConfig`] (which approximation, in which dtype, on which labels)
//! composed with [`IndexConfig`] into [`HessianRunConfig`], as Bergson's `Hessian` command
//! holds them (`hessian_cfg` first, then `index_cfg`, in its saved `config.yaml`).

use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::IndexConfig;
use super::enums::{HessianDtype, HessianMethod};
use super::flags::parse_bool;

/// How the Hessian is approximated (Bergson's `HessianConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct HessianConfig {
    /// The approximation: kfac, tkfac, shampoo or autocorrelation (required).
    #[arg(long, value_enum)]
    pub method: HessianMethod,
    /// Also fit EK-FAC's eigenvalue correction (a second pass; needs --projection_dim 0).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub ev_correction: bool,
    /// Dtype the factors accumulate and are stored in (eigendecompositions run in float64).
    #[arg(long, value_enum, default_value_t = HessianDtype::Fp32)]
    pub hessian_dtype: HessianDtype,
    /// Use the dataset's labels (empirical Fisher) instead of labels sampled from the model
    /// (true Fisher).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub use_dataset_labels: bool,
    /// Fit the factored methods in this many groups of modules, one pass each, to bound
    /// memory.
    #[arg(long, default_value_t = 1)]
    pub module_partitions: i64,
}

impl Default for HessianConfig {
    fn default() -> Self {
        HessianConfig {
            method: HessianMethod::Kfac,
            ev_correction: false,
            hessian_dtype: HessianDtype::Fp32,
            use_dataset_labels: false,
            module_partitions: 1,
        }
    }
}

/// The `bergson hessian` command: Bergson's `Hessian(hessian_cfg, index_cfg)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HessianRunConfig {
    /// The approximation.
    pub hessian_cfg: HessianConfig,
    /// Model, data and collection settings.
    pub index_cfg: IndexConfig,
}

impl Args for HessianRunConfig {
    fn augment_args(cmd: Command) -> Command {
        IndexConfig::augment_args(HessianConfig::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for HessianRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(HessianRunConfig {
            hessian_cfg: HessianConfig::from_arg_matches(m)?,
            index_cfg: IndexConfig::from_arg_matches(m)?,
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
        hessian: HessianRunConfig,
    }

    #[test]
    fn flags_parse_with_bergsons_names_and_defaults() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/h",
            "--method",
            "kfac",
            "--ev_correction",
            "--hessian_dtype",
            "fp64",
            "--use_dataset_labels",
            "true",
            "--module_partitions",
            "3",
            "--projection_dim",
            "0",
        ])
        .unwrap()
        .hessian;
        assert_eq!(c.index_cfg.run_path, "runs/h");
        assert_eq!(c.hessian_cfg.method, HessianMethod::Kfac);
        assert!(c.hessian_cfg.ev_correction);
        assert_eq!(c.hessian_cfg.hessian_dtype, HessianDtype::Fp64);
        assert!(c.hessian_cfg.use_dataset_labels);
        assert_eq!(c.hessian_cfg.module_partitions, 3);
        let d = Cli::try_parse_from(["bergson", "r", "--method", "shampoo"])
            .unwrap()
            .hessian;
        assert_eq!(d.hessian_cfg.hessian_dtype, HessianDtype::Fp32);
        assert!(!d.hessian_cfg.use_dataset_labels && !d.hessian_cfg.ev_correction);
        assert_eq!(d.hessian_cfg.module_partitions, 1);
        // Bergson requires --method.
        assert!(Cli::try_parse_from(["bergson", "r"]).is_err());
        assert!(Cli::try_parse_from(["bergson", "r", "--method", "ekfac"]).is_err());
    }
}
