//! What a run directory's `config.yaml` tells the report: the index settings (model, dataset,
//! columns), the score settings of a score run, and the directory Bergson ran from, against
//! which the relative paths it recorded resolve.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::config::{Aggregation, IndexConfig};

/// Bergson's `ScoreConfig`, the fields the report reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScoreSettings {
    /// The query index the scores were computed against.
    pub query_path: String,
    /// `individual` (one column per query) or `nearest` (one column, the best query).
    pub score: String,
    /// False for MAGIC-style loss differences, where low scores are the proponents.
    pub higher_is_better: bool,
    /// With `attribute_tokens`: `gradient` (row `t` is position `t`'s gradient) or `output`
    /// (row `t` is the loss on token `t + 1`).
    pub token_influence: String,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            query_path: String::new(),
            score: "individual".into(),
            higher_is_better: true,
            token_influence: "gradient".into(),
        }
    }
}

/// The parts of a run's `config.yaml` the report uses.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The step's command word (`score`, `build`, `reduce`).
    pub command: String,
    /// Model, data and collection settings.
    pub index_cfg: IndexConfig,
    /// `preprocess_cfg.aggregation`: queries folded into one gradient before scoring.
    pub aggregation: Aggregation,
    /// `score_cfg`, for a score run.
    pub score: Option<ScoreSettings>,
    /// The working directory of the run, when the recorded `run_path` reveals it.
    pub base: Option<PathBuf>,
}

impl RunConfig {
    /// Reads `dir/config.yaml`. `Ok(None)` when there is none; `Err` carries a one-line reason
    /// when it cannot be read (the report then goes on without what it would have told).
    pub fn read(dir: &Path) -> std::result::Result<Option<Self>, String> {
        let path = dir.join("config.yaml");
        if !path.is_file() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value = serde_saphyr::from_str(&text)
            .map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
        let step = doc
            .get("steps")
            .and_then(Value::as_array)
            .and_then(|steps| steps.first())
            .and_then(Value::as_object)
            .and_then(|step| step.iter().next())
            .ok_or_else(|| format!("{}: no `steps:` entry", path.display()))?;
        let (command, body) = step;
        let field = |name: &str| body.get(name).cloned().unwrap_or(Value::Null);
        let index_cfg: IndexConfig = serde_json::from_value(field("index_cfg"))
            .map_err(|e| format!("{}: index_cfg: {e}", path.display()))?;
        let aggregation = field("preprocess_cfg")
            .get("aggregation")
            .cloned()
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or(Aggregation::None);
        let score = match field("score_cfg") {
            Value::Null => None,
            v => Some(
                serde_json::from_value(v)
                    .map_err(|e| format!("{}: score_cfg: {e}", path.display()))?,
            ),
        };
        let base = run_base(dir, &index_cfg.run_path);
        Ok(Some(RunConfig {
            command: command.clone(),
            index_cfg,
            aggregation,
            score,
            base,
        }))
    }

    /// A path recorded in the config: relative to the run's working directory when that is
    /// known and the path exists there, else as recorded (relative to ours, or a hub id).
    pub fn resolve(&self, recorded: &str) -> String {
        let path = Path::new(recorded);
        if recorded.is_empty() || path.is_absolute() {
            return recorded.to_string();
        }
        match &self.base {
            Some(base) if base.join(path).exists() => base.join(path).to_string_lossy().into(),
            _ => recorded.to_string(),
        }
    }

    /// The index settings with every recorded local path resolved (see [`Self::resolve`]).
    pub fn resolved_index_cfg(&self) -> IndexConfig {
        let mut cfg = self.index_cfg.clone();
        cfg.data.dataset = self.resolve(&cfg.data.dataset);
        cfg.data.format_template = self.resolve(&cfg.data.format_template);
        cfg.model = self.resolve(&cfg.model);
        cfg.tokenizer = self.resolve(&cfg.tokenizer);
        cfg
    }
}

/// The directory Bergson ran in: `dir` with the recorded relative `run_path` taken off its end
/// (a run written to `runs/a` from `/home/x` lives at `/home/x/runs/a`). `None` when the run was
/// moved, or the path is absolute (its other paths then need no base).
fn run_base(dir: &Path, run_path: &str) -> Option<PathBuf> {
    let recorded = Path::new(run_path);
    if run_path.is_empty() || recorded.is_absolute() {
        return None;
    }
    let mut parts = Vec::new();
    for c in recorded.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let mut base = dir.canonicalize().ok()?;
    for part in parts.iter().rev() {
        if base.file_name() != Some(part) {
            return None;
        }
        base.pop();
    }
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report")
    }

    #[test]
    fn score_run_config_is_read() {
        let cfg = RunConfig::read(&fixtures().join("runs/bf16"))
            .unwrap()
            .unwrap();
        assert_eq!(cfg.command, "score");
        let score = cfg.score.as_ref().unwrap();
        assert!(!score.higher_is_better);
        assert_eq!(score.query_path, "tests/fixtures/report/runs/query");
        assert_eq!(score.score, "individual");
        assert!(!cfg.index_cfg.drop_columns);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert_eq!(cfg.base, Some(root.canonicalize().unwrap()));
        let dataset = cfg.resolve(&cfg.index_cfg.data.dataset);
        assert!(Path::new(&dataset).is_file(), "{dataset}");
    }

    #[test]
    fn moved_run_has_no_base() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("elsewhere");
        std::fs::create_dir(&run).unwrap();
        assert_eq!(run_base(&run, "tests/fixtures/report/runs/doc"), None);
        assert_eq!(
            run_base(&run, "./elsewhere"),
            Some(dir.path().canonicalize().unwrap())
        );
        assert_eq!(run_base(&run, "../elsewhere"), None);
    }

    #[test]
    fn missing_config_is_none_and_bad_one_is_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RunConfig::read(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("config.yaml"), "steps: [").unwrap();
        let err = RunConfig::read(dir.path()).unwrap_err();
        assert!(err.contains("not valid YAML"), "{err}");
    }
}
