//! `bergson metasmoothness`: [`MetasmoothnessConfig`], as Python Bergson 2.5.1's
//! `MetasmoothnessConfig` (`config/config.py`): the training settings plus the finite-difference
//! step and the seed of the perturbation direction.

use clap::Args;
use serde::Serialize;

use super::flags::clap_default;
use super::train::TrainingConfig;

/// `bergson metasmoothness` (Bergson's `MetasmoothnessConfig`, a `TrainingConfig` with two more
/// fields).
#[derive(Debug, Clone, PartialEq, Serialize, Args)]
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
