//! The gradient processor: projection settings plus per-module normalizers (Bergson's
//! `GradientProcessor`), saved as `processor_config.yaml` and `normalizers.pth`.

use serde::{Deserialize, Serialize};

use super::normalizer::Normalizer;
use crate::config::{IndexConfig, ProjectionScale, ProjectionTarget, ProjectionType};

/// Version of the projection matrices (Bergson's `PROJECTION_VERSION`).
pub const PROJECTION_VERSION: i64 = 2;

/// How gradients are projected and normalised.
#[derive(Debug, Default)]
pub struct GradientProcessor {
    /// Projection settings.
    pub settings: ProjectionSettings,
    /// Normalizers by module name (relative to the base model), in insertion order.
    pub normalizers: Vec<(String, Normalizer)>,
}

/// `processor_config.yaml`, field for field and in Bergson's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionSettings {
    /// p; `None` stores full gradients.
    pub projection_dim: Option<usize>,
    /// Recorded only.
    pub reshape_to_square: bool,
    /// Entry distribution.
    pub projection_type: ProjectionType,
    /// per_module or global (forced to per_module without a projection).
    pub projection_target: ProjectionTarget,
    /// jl or row_norm.
    pub projection_scale: ProjectionScale,
    /// Bias gradients appended.
    pub include_bias: bool,
    /// Seed suffix of the matrix identifiers.
    pub projection_seed: Option<i64>,
    /// Matrix generator version.
    pub projection_version: i64,
}

impl Default for ProjectionSettings {
    fn default() -> Self {
        ProjectionSettings {
            projection_dim: None,
            reshape_to_square: false,
            projection_type: ProjectionType::Rademacher,
            projection_target: ProjectionTarget::PerModule,
            projection_scale: ProjectionScale::Jl,
            include_bias: false,
            projection_seed: None,
            projection_version: PROJECTION_VERSION,
        }
    }
}

impl ProjectionSettings {
    /// The settings an [`IndexConfig`] describes (Bergson's `processor_for`).
    pub fn from_index_config(cfg: &IndexConfig) -> Self {
        let projection_dim = (cfg.projection_dim > 0).then_some(cfg.projection_dim);
        ProjectionSettings {
            projection_dim,
            reshape_to_square: cfg.reshape_to_square,
            projection_type: cfg.projection_type,
            projection_target: if projection_dim.is_some() {
                cfg.projection_target
            } else {
                ProjectionTarget::PerModule
            },
            projection_scale: cfg.projection_scale,
            include_bias: cfg.include_bias,
            projection_seed: cfg.projection_seed,
            projection_version: PROJECTION_VERSION,
        }
    }

    /// p of the two-sided per-module projection (`None` for global or no projection).
    pub fn per_module_dim(&self) -> Option<usize> {
        match self.projection_target {
            ProjectionTarget::Global => None,
            ProjectionTarget::PerModule => self.projection_dim,
        }
    }

    /// p of the global projection, if that is the target.
    pub fn global_dim(&self) -> Option<usize> {
        match self.projection_target {
            ProjectionTarget::Global => self.projection_dim,
            ProjectionTarget::PerModule => None,
        }
    }
}

impl GradientProcessor {
    /// A processor with these settings and no normalizers.
    pub fn new(settings: ProjectionSettings) -> Self {
        GradientProcessor {
            settings,
            normalizers: Vec::new(),
        }
    }

    /// The normalizer of module `name`, if any.
    pub fn normalizer(&self, name: &str) -> Option<&Normalizer> {
        self.normalizers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The same processor with its normalizers on the CPU (what `save` writes).
    pub fn on_cpu(&self) -> GradientProcessor {
        GradientProcessor {
            settings: self.settings.clone(),
            normalizers: self
                .normalizers
                .iter()
                .map(|(name, n)| (name.clone(), n.to_device(tch::Device::Cpu)))
                .collect(),
        }
    }
}

impl GradientProcessor {
    /// Writes Bergson's processor files into `dir`: processor_config.yaml, normalizers.pth,
    /// hessians.pth and hessians_eigen.pth (a build fits no Hessian: empty dicts).
    pub fn save(&self, dir: &std::path::Path) -> crate::Result<()> {
        use crate::error::IoContext;
        let yaml = serde_saphyr::to_string(&self.settings).map_err(|e| {
            crate::Error::internal(format!("cannot write processor_config.yaml: {e}"))
        })?;
        let path = dir.join("processor_config.yaml");
        std::fs::write(&path, yaml).at_path(&path)?;
        super::optimizer_state::save_normalizers(&dir.join("normalizers.pth"), &self.normalizers)?;
        crate::pickle::save_empty_dict(&dir.join("hessians.pth"))?;
        crate::pickle::save_empty_dict(&dir.join("hessians_eigen.pth"))
    }

    /// Reads `processor_config.yaml` (Bergson's, with its defaults for older files).
    pub fn read_settings(dir: &std::path::Path) -> crate::Result<ProjectionSettings> {
        use crate::error::IoContext;
        let path = dir.join("processor_config.yaml");
        let text = std::fs::read_to_string(&path).at_path(&path)?;
        serde_saphyr::from_str(&text).map_err(|e| {
            let why = crate::config::yaml_message(&e);
            crate::Error::input(format!(
                "{}: not a processor config ({why})",
                path.display()
            ))
        })
    }
}

impl ProjectionSettings {
    /// Refuses gradients projected with other settings (Bergson's `check_saved_projection`):
    /// `theirs` is the processor config saved with `what`. Without a projection only
    /// `projection_dim` matters.
    pub fn check_matches(&self, theirs: &ProjectionSettings, what: &str) -> crate::Result<()> {
        let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
        // As Python prints it: `None` or the number.
        let seed = |s: Option<i64>| s.map_or_else(|| "None".to_string(), |v| v.to_string());
        let mut fields: Vec<(&str, String, String)> = vec![(
            "projection_dim",
            show(&theirs.projection_dim.unwrap_or(0)),
            show(&self.projection_dim.unwrap_or(0)),
        )];
        if self.projection_dim.is_some() {
            fields.extend([
                (
                    "projection_type",
                    theirs.projection_type.to_string(),
                    self.projection_type.to_string(),
                ),
                (
                    "projection_scale",
                    theirs.projection_scale.to_string(),
                    self.projection_scale.to_string(),
                ),
                (
                    "projection_seed",
                    seed(theirs.projection_seed),
                    seed(self.projection_seed),
                ),
                (
                    "projection_target",
                    theirs.projection_target.to_string(),
                    self.projection_target.to_string(),
                ),
                (
                    "include_bias",
                    show(&theirs.include_bias),
                    show(&self.include_bias),
                ),
                (
                    "projection_version",
                    show(&theirs.projection_version),
                    show(&self.projection_version),
                ),
            ]);
        }
        let differences: Vec<String> = fields
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(name, a, b)| format!("{name}={a}, not {b}"))
            .collect();
        if differences.is_empty() {
            return Ok(());
        }
        Err(crate::Error::input(format!(
            "{what} was projected with different settings than this run: {}; rebuild it with \
             matching settings (or pass the same --projection_* flags here)",
            differences.join("; ")
        )))
    }

    /// [`check_matches`](Self::check_matches) against the processor saved in `dir`; a directory
    /// without one passes only when nothing is projected (its projection cannot be checked).
    pub fn check_saved(&self, dir: &std::path::Path, what: &str) -> crate::Result<()> {
        if !dir.exists() {
            return Err(crate::Error::input(format!(
                "{what} at {} does not exist; check the path (it is the run path of the command \
                 that wrote it)",
                dir.display()
            )));
        }
        if !dir.join("processor_config.yaml").exists() {
            if self.projection_dim.is_some() {
                return Err(crate::Error::input(format!(
                    "{what} at {} has no processor_config.yaml, so its random projections \
                     cannot be reproduced; rebuild it",
                    dir.display()
                )));
            }
            tracing::warn!(
                "{what} at {} has no processor_config.yaml, so its projection settings can't be checked",
                dir.display()
            );
            return Ok(());
        }
        self.check_matches(
            &GradientProcessor::read_settings(dir)?,
            &format!("{what} at {}", dir.display()),
        )
    }
}
