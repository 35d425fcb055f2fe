//! `bergson metasmoothness`: [`MetasmoothnessConfig`], as Python Bergson 2.5.1's
//! `MetasmoothnessConfig` (`config/config.py`): the training settings plus the finite-difference
//! step and the seed of the perturbation direction.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::flags::clap_default;
use super::train::TrainingConfig;

/// `bergson metasmoothness` (Bergson's `MetasmoothnessConfig`, a `TrainingConfig` with two more
/// fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
#[command(rename_all = "snake_case")]
pub struct MetasmoothnessConfig {
    /// The training run (Bergson's `TrainingConfig`).
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainingConfig,
    /// Finite-difference step h of the data-weight perturbation `w = 1 + k·h·v`.
    #[arg(long, default_value_t = 0.1)]
    pub fd_step: f64,
    /// Seed of the random perturbation direction `v ~ N(0, I)` over the training documents.
    #[arg(long, default_value_t = 0)]
    pub direction_seed: u64,
}

impl Default for MetasmoothnessConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// A run-file step: the two own keys taken out, the rest a strict `TrainingConfig`.
impl TryFrom<serde_json::Map<String, serde_json::Value>> for MetasmoothnessConfig {
    type Error = String;

    fn try_from(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut c = MetasmoothnessConfig::default();
        super::flags::take_key(&mut map, "fd_step", &mut c.fd_step)?;
        super::flags::take_key(&mut map, "direction_seed", &mut c.direction_seed)?;
        c.train =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    /// Bergson 2.5.1's defaults (`fd_step` 0.1, `direction_seed` 0, the trainer's) and flags.
    #[test]
    fn defaults_and_flags_match_bergson() {
        let c = MetasmoothnessConfig::default();
        assert_eq!((c.fd_step, c.direction_seed), (0.1, 0));
        assert_eq!(c.train, TrainingConfig::default());
        let cmd = MetasmoothnessConfig::augment_args(Command::new("m").no_binary_name(true));
        let m = cmd
            .try_get_matches_from([
                "run",
                "--fd_step",
                "0.5",
                "--direction_seed",
                "7",
                "--lr",
                "1e-3",
            ])
            .unwrap();
        let c = MetasmoothnessConfig::from_arg_matches(&m).unwrap();
        assert_eq!((c.fd_step, c.direction_seed), (0.5, 7));
        assert_eq!(
            (c.train.run_path.as_str(), c.train.lr_schedule.lr),
            ("run", 1e-3)
        );
        // Saved flat, as Bergson's dataclass subclass.
        let yaml = serde_saphyr::to_string(&c).unwrap();
        assert!(
            yaml.contains("fd_step: 0.5") && yaml.contains("direction_seed: 7"),
            "{yaml}"
        );
        assert!(yaml.contains("\nbatch_size: 16"), "{yaml}");
    }
}
