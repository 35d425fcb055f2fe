//! `bergson mix`: [`MixConfig`] (two autocorrelation Hessians mixed into one), with Bergson
//! 2.5.1's flag names and defaults.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::flags::clap_default;

/// Mix a query and an index autocorrelation Hessian (Bergson's `MixConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct MixConfig {
    /// The query autocorrelation Hessian (a `bergson hessian --method autocorrelation` run).
    #[arg(long, default_value = "")]
    pub query_path: String,
    /// The index autocorrelation Hessian.
    #[arg(long, default_value = "")]
    pub index_path: String,
    /// Where the mixed Hessian is written.
    #[arg(long, default_value = "")]
    pub output_path: String,
    /// Gradient components to downweight: the mixing coefficient makes the sorted eigenvalue
    /// curves of the two Hessians cross at this component (Chang et al. 2024, §A.1.3).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    pub target_downweight_components: i64,
}

impl Default for MixConfig {
    fn default() -> Self {
        clap_default()
    }
}
