//! YAML run files: `{run_path?, steps: [{<command>: {...}}], metadata?}`, the format Bergson
//! reads with `bergson <file.yaml>` and writes as every run's `config.yaml`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{
    ApproxUnrollingRunConfig, BuildConfig, EkfacRunConfig, HessianRunConfig, LissaRunConfig,
    MagicConfig, MetasmoothnessConfig, ScoreRunConfig, TrackstarRunConfig, TrainingConfig,
    TrakRunConfig, ValidateConfig,
};
use crate::error::IoContext;
use crate::{Error, Result};

/// Bergson version whose config layout we write.
pub const BERGSON_COMPAT_VERSION: &str = "2.5.1";

/// One step of a run file.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `build: {index_cfg: ..., preprocess_cfg: ...}`.
    Build(Box<BuildConfig>),
    /// `reduce: {index_cfg: ..., preprocess_cfg: ...}`: the build pipeline, meant for
    /// `--aggregation mean|sum` (one row).
    Reduce(Box<BuildConfig>),
    /// `score: {score_cfg: ..., index_cfg: ..., preprocess_cfg: ...}`.
    Score(Box<ScoreRunConfig>),
    /// `hessian: {hessian_cfg: ..., index_cfg: ...}`.
    Hessian(Box<HessianRunConfig>),
    /// `trackstar: {index_cfg: ..., trackstar_cfg: ...}`: the whole TrackStar recipe.
    Trackstar(Box<TrackstarRunConfig>),
    /// `trak: {index_cfg: ..., trak_cfg: ...}`: the whole TRAK recipe.
    Trak(Box<TrakRunConfig>),
    /// `ekfac: {index_cfg: ..., hessian_cfg: ..., hessian_pipeline_cfg: ...}`: the EK-FAC
    /// influence recipe.
    Ekfac(Box<EkfacRunConfig>),
    /// `lissa: {...}`: the LiSSA influence recipe.
    Lissa(Box<LissaRunConfig>),
    /// `approxunrolling: {index_cfg: ..., hessian_cfg: ..., approx_unrolling_cfg: ...}`: the
    /// SOURCE recipe.
    ApproxUnrolling(Box<ApproxUnrollingRunConfig>),
    /// `train: {...}`: a training run.
    Train(Box<TrainingConfig>),
    /// `magic: {...}`: MAGIC (training, the query, the backward).
    Magic(Box<MagicConfig>),
    /// `metasmoothness: {...}`: three trainings along a weight direction.
    Metasmoothness(Box<MetasmoothnessConfig>),
    /// `validate: {...}`: retraining on subsets to validate scores.
    Validate(Box<ValidateConfig>),
}

impl Step {
    /// The command word (`build`, `reduce`, `score`).
    pub fn command(&self) -> &'static str {
        match self {
            Step::Build(_) => "build",
            Step::Reduce(_) => "reduce",
            Step::Score(_) => "score",
            Step::Hessian(_) => "hessian",
            Step::Trackstar(_) => "trackstar",
            Step::Trak(_) => "trak",
            Step::Ekfac(_) => "ekfac",
            Step::Lissa(_) => "lissa",
            Step::ApproxUnrolling(_) => "approxunrolling",
            Step::Train(_) => "train",
            Step::Magic(_) => "magic",
            Step::Metasmoothness(_) => "metasmoothness",
            Step::Validate(_) => "validate",
        }
    }

    /// The step's run path.
    pub fn run_path(&self) -> &str {
        match self {
            Step::Build(c) | Step::Reduce(c) => &c.index_cfg.run_path,
            Step::Score(c) => &c.index_cfg.run_path,
            Step::Hessian(c) => &c.index_cfg.run_path,
            Step::Trackstar(c) => &c.index_cfg.run_path,
            Step::Trak(c) => &c.index_cfg.run_path,
            Step::Ekfac(c) => &c.index_cfg.run_path,
            Step::Lissa(c) => &c.index_cfg.run_path,
            Step::ApproxUnrolling(c) => &c.index_cfg.run_path,
            Step::Train(c) => &c.run_path,
            Step::Magic(c) => &c.train.run_path,
            Step::Metasmoothness(c) => &c.train.run_path,
            Step::Validate(c) => &c.train.run_path,
        }
    }

    /// The same step with `overwrite` cleared (two runs that differ only in it are the same
    /// run, e.g. when resuming).
    pub fn without_overwrite(&self) -> Step {
        let mut s = self.clone();
        match &mut s {
            Step::Build(c) | Step::Reduce(c) => c.index_cfg.overwrite = false,
            Step::Score(c) => c.index_cfg.overwrite = false,
            Step::Hessian(c) => c.index_cfg.overwrite = false,
            Step::Trackstar(c) => c.index_cfg.overwrite = false,
            Step::Trak(c) => c.index_cfg.overwrite = false,
            Step::Ekfac(c) => c.index_cfg.overwrite = false,
            Step::Lissa(c) => c.index_cfg.overwrite = false,
            Step::ApproxUnrolling(c) => c.index_cfg.overwrite = false,
            Step::Train(c) => c.overwrite = false,
            Step::Magic(c) => c.train.overwrite = false,
            Step::Metasmoothness(c) => c.train.overwrite = false,
            Step::Validate(c) => c.train.overwrite = false,
        }
        s
    }
}

/// A parsed run file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFile {
    /// Top-level `run_path` of a multi-step pipeline.
    pub run_path: Option<String>,
    /// The steps, matrices expanded, in order.
    pub steps: Vec<Step>,
}

/// Reads a run file (or a run directory holding `config.yaml`).
pub fn read_run_file(path: &Path) -> Result<RunFile> {
    let file = if path.is_dir() {
        path.join("config.yaml")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).at_path(&file)?;
    parse_run_file(&text).map_err(|e| match e {
        Error::Input(msg) => Error::input(format!("{}: {msg}", file.display())),
        other => other,
    })
}

/// Parses run-file text.
pub fn parse_run_file(text: &str) -> Result<RunFile> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        Error::input(format!(
            "not valid YAML: {}; fix the file (a run file is a mapping with a `steps:` list)",
            yaml_problem(&e.to_string())
        ))
    })?;
    let Some(map) = doc.as_object() else {
        return Err(Error::input(
            "must be a mapping with a `steps:` list of `- command: {...}` entries",
        ));
    };
    let Some(Value::Array(raw_steps)) = map.get("steps") else {
        return Err(Error::input(
            "must be a mapping with a `steps:` list of `- command: {...}` entries",
        ));
    };
    let run_path = map
        .get("run_path")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let mut steps = Vec::new();
    for raw in raw_steps {
        let Some(step) = raw.as_object().filter(|m| m.len() == 1) else {
            return Err(Error::input(format!(
                "each step must be a single `- command: {{...}}` mapping, got {raw}"
            )));
        };
        let (name, body) = step.iter().next().expect("len checked");
        let body = if body.is_null() {
            Value::Object(Default::default())
        } else {
            body.clone()
        };
        for cell in expand_matrix(body)? {
            steps.push(parse_step(&name.to_lowercase(), cell)?);
        }
    }
    Ok(RunFile { run_path, steps })
}

/// The commands a run file may hold.
const RUN_FILE_COMMANDS: &str =
    "build, reduce, score, hessian, trackstar, trak, ekfac, lissa, approxunrolling, train, magic, metasmoothness, validate";

fn parse_step(name: &str, body: Value) -> Result<Step> {
    fn parse<T: DeserializeOwned>(name: &str, body: Value) -> Result<Box<T>> {
        serde_json::from_value(body)
            .map(Box::new)
            .map_err(|e| Error::input(format!("step `{name}`: {e}")))
    }
    match name {
        "build" => Ok(Step::Build(parse(name, body)?)),
        "reduce" => Ok(Step::Reduce(parse(name, body)?)),
        "score" => Ok(Step::Score(parse(name, body)?)),
        "hessian" => Ok(Step::Hessian(parse(name, body)?)),
        "trackstar" => Ok(Step::Trackstar(parse(name, body)?)),
        "trak" => Ok(Step::Trak(parse(name, body)?)),
        "ekfac" => Ok(Step::Ekfac(parse(name, body)?)),
        "lissa" => Ok(Step::Lissa(parse(name, body)?)),
        "approxunrolling" => Ok(Step::ApproxUnrolling(parse(name, body)?)),
        "train" => Ok(Step::Train(parse(name, body)?)),
        "magic" => Ok(Step::Magic(parse(name, body)?)),
        "metasmoothness" => Ok(Step::Metasmoothness(parse(name, body)?)),
        "validate" => Ok(Step::Validate(parse(name, body)?)),
        "mix" | "recall" | "test_model_configuration" => Err(Error::input(format!(
            "step `{name}` runs from the command line only in bergson-rs; run `bergson {name} ...` with flags"
        ))),
        "query" => Err(Error::input(
            "step `query` is interactive and cannot run from a run file; run `bergson query --index <run>`",
        )),
        other => Err(Error::input(format!(
            "unknown command `{other}`; supported: {RUN_FILE_COMMANDS}"
        ))),
    }
}

/// One config (`index_cfg`, `preprocess_cfg`, `score_cfg`, ...) of the run saved in `dir`
/// (its `config.yaml`): the first step that has the field, as Bergson's `load_subconfig`.
/// `None` when the directory has no config or no step has the field.
pub fn load_subconfig<T: DeserializeOwned>(dir: &Path, field: &str) -> Result<Option<T>> {
    let path = dir.join("config.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{}: not valid YAML: {}; fix the file or rebuild the run",
            path.display(),
            yaml_problem(&e.to_string())
        ))
    })?;
    let steps = doc.get("steps").and_then(Value::as_array);
    for step in steps.into_iter().flatten() {
        for body in step.as_object().into_iter().flat_map(|m| m.values()) {
            if let Some(sub) = body.get(field).filter(|v| !v.is_null()) {
                return serde_json::from_value(sub.clone())
                    .map(Some)
                    .map_err(|e| Error::input(format!("{}: `{field}`: {e}", path.display())));
            }
        }
    }
    Ok(None)
}

/// Expands a step's `matrix:` mapping into one config per cell of the Cartesian product,
/// substituting `{key}` in strings (a value exactly `"{key}"` takes the typed value).
fn expand_matrix(mut body: Value) -> Result<Vec<Value>> {
    let Some(matrix) = body.as_object_mut().and_then(|m| m.remove("matrix")) else {
        return Ok(vec![body]);
    };
    let Some(matrix) = matrix.as_object().filter(|m| {
        m.values()
            .all(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    }) else {
        return Err(Error::input(format!(
            "matrix must map keys to non-empty lists; got {matrix}"
        )));
    };
    let keys: Vec<&String> = matrix.keys().collect();
    let mut cells: Vec<Vec<&Value>> = vec![vec![]];
    for key in &keys {
        let values = matrix[*key].as_array().expect("checked");
        cells = cells
            .into_iter()
            .flat_map(|cell| values.iter().map(move |v| [cell.clone(), vec![v]].concat()))
            .collect();
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for cell in &cells {
        let pairs: Vec<(&String, &Value)> =
            keys.iter().copied().zip(cell.iter().copied()).collect();
        let expanded = substitute(&body, &pairs);
        let mut paths = vec![];
        collect_run_paths(&expanded, &mut paths);
        for p in &paths {
            if !seen.insert(p.clone()) {
                return Err(Error::input(format!(
                    "matrix cells both write {p}; vary run_path with a {{key}} substitution"
                )));
            }
        }
        out.push(expanded);
    }
    if cells.len() > 1 && seen.is_empty() {
        return Err(Error::input(
            "matrix step has no run_path; cells would collide",
        ));
    }
    Ok(out)
}

fn substitute(value: &Value, cell: &[(&String, &Value)]) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), substitute(v, cell)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, cell)).collect()),
        Value::String(s) => {
            let mut s = s.clone();
            for (key, cell_value) in cell {
                let pattern = format!("{{{key}}}");
                if s == pattern {
                    return (*cell_value).clone();
                }
                let text = match cell_value {
                    Value::String(t) => t.clone(),
                    other => python_str(other),
                };
                s = s.replace(&pattern, &text);
            }
            Value::String(s)
        }
        other => other.clone(),
    }
}

/// `str(value)` as Python prints YAML scalars (`True`, `None`, `1.0`).
fn python_str(v: &Value) -> String {
    match v {
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                format!("{f:.1}")
            } else {
                f.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn collect_run_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "run_path" {
                    out.push(
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    );
                } else {
                    collect_run_paths(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_run_paths(v, out)),
        _ => {}
    }
}

/// The first line of a YAML parser error (its position and problem), without the source
/// excerpt that follows it.
fn yaml_problem(s: &str) -> String {
    let first = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(s);
    one_line(&super::yaml_message(
        &first.strip_prefix("error:").unwrap_or(first).trim(),
    ))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Serialize)]
struct Metadata {
    bergson_version: &'static str,
    bergson_rs_version: &'static str,
    created: String,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum StepDoc<'a> {
    Build(&'a BuildConfig),
    Reduce(&'a BuildConfig),
    Score(&'a ScoreRunConfig),
    Hessian(&'a HessianRunConfig),
    Trackstar(&'a TrackstarRunConfig),
    Trak(&'a TrakRunConfig),
    Ekfac(&'a EkfacRunConfig),
    Lissa(&'a LissaRunConfig),
    Approxunrolling(&'a ApproxUnrollingRunConfig),
    Train(&'a TrainingConfig),
    Magic(&'a MagicConfig),
    Metasmoothness(&'a MetasmoothnessConfig),
    Validate(serde_json::Value),
}

#[derive(Serialize)]
struct Doc<'a> {
    steps: Vec<StepDoc<'a>>,
    metadata: Metadata,
}

/// The `config.yaml` text of a one-step build run (see [`config_yaml`]).
pub fn build_config_yaml(
    cfg: &BuildConfig,
    created: chrono::DateTime<chrono::Utc>,
) -> Result<String> {
    config_yaml(&Step::Build(Box::new(cfg.clone())), created)
}

/// The `config.yaml` text of a one-step run: `{steps: [{<command>: ...}], metadata: ...}` in
/// Bergson's key order. `metadata.bergson_version` names the Bergson release whose layout
/// this follows; `bergson_rs_version` says who wrote it.
pub fn config_yaml(step: &Step, created: chrono::DateTime<chrono::Utc>) -> Result<String> {
    let step = match step {
        Step::Build(c) => StepDoc::Build(c),
        Step::Reduce(c) => StepDoc::Reduce(c),
        Step::Score(c) => StepDoc::Score(c),
        Step::Hessian(c) => StepDoc::Hessian(c),
        Step::Trackstar(c) => StepDoc::Trackstar(c),
        Step::Trak(c) => StepDoc::Trak(c),
        Step::Ekfac(c) => StepDoc::Ekfac(c),
        Step::Lissa(c) => StepDoc::Lissa(c),
        Step::ApproxUnrolling(c) => StepDoc::Approxunrolling(c),
        Step::Train(c) => StepDoc::Train(c),
        Step::Magic(c) => StepDoc::Magic(c),
        Step::Metasmoothness(c) => StepDoc::Metasmoothness(c),
        Step::Validate(c) => StepDoc::Validate(c.to_yaml_value()),
    };
    let doc = Doc {
        steps: vec![step],
        metadata: Metadata {
            bergson_version: BERGSON_COMPAT_VERSION,
            bergson_rs_version: env!("CARGO_PKG_VERSION"),
            created: created.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        },
    };
    serde_saphyr::to_string(&doc)
        .map_err(|e| Error::internal(format!("cannot write config.yaml: {e}")))
}

/// The `config.yaml` text of a recipe run (`ekfac`, `lissa`, ...): `{steps: [{<command>:
/// cfg}], metadata: ...}`, as [`config_yaml`] writes a one-step run. Recipes are not run-file
/// steps yet; the file records how the run was made.
pub fn recipe_config_yaml<T: Serialize>(
    command: &str,
    cfg: &T,
    created: chrono::DateTime<chrono::Utc>,
) -> Result<String> {
    #[derive(Serialize)]
    struct RecipeDoc<'a, T: Serialize> {
        steps: Vec<std::collections::BTreeMap<&'a str, &'a T>>,
        metadata: Metadata,
    }
    let doc = RecipeDoc {
        steps: vec![std::iter::once((command, cfg)).collect()],
        metadata: Metadata {
            bergson_version: BERGSON_COMPAT_VERSION,
            bergson_rs_version: env!("CARGO_PKG_VERSION"),
            created: created.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        },
    };
    serde_saphyr::to_string(&doc)
        .map_err(|e| Error::internal(format!("cannot write config.yaml: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged saved config names the file and the fix, without serde's Rust hints.
    #[test]
    fn damaged_saved_config_is_one_plain_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), ": : :\n").unwrap();
        let e = load_subconfig::<crate::config::IndexConfig>(dir.path(), "index_cfg")
            .expect_err("a damaged config.yaml is an error")
            .to_string();
        assert!(e.contains("config.yaml: not valid YAML"), "{e}");
        assert!(e.contains("fix the file or rebuild the run"), "{e}");
        assert!(!e.contains("Option<") && !e.contains('\n'), "{e}");
    }

    /// The `config.yaml` Python Bergson 2.5.1 wrote for each recipe run in the fixtures reads
    /// as that recipe's step (so `bergson <run>/config.yaml` replays it), and writes back to the
    /// same steps.
    #[test]
    fn python_recipe_run_files_read_as_their_steps() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for (dir, command) in [
            ("bergson_ekfac/runs/ekfac", "ekfac"),
            ("bergson_ekfac/runs/astra_cg", "ekfac"),
            ("bergson_ekfac/runs/lissa", "lissa"),
            (
                "bergson_approxunrolling/runs/source_adam",
                "approxunrolling",
            ),
            ("bergson_trak/runs/ensemble", "trak"),
            ("bergson_trackstar/runs", "trackstar"),
        ] {
            let path = fixtures.join(dir);
            let path = if path.join("config.yaml").is_file() {
                path
            } else {
                // A recipe fixture directory holding several runs: its first one.
                let mut runs: Vec<_> = std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("config.yaml").is_file())
                    .collect();
                runs.sort();
                runs.remove(0)
            };
            let file = read_run_file(&path).unwrap_or_else(|e| panic!("{dir}: {e}"));
            assert_eq!(file.steps.len(), 1, "{dir}");
            let step = &file.steps[0];
            assert_eq!(step.command(), command, "{dir}");
            assert!(!step.run_path().is_empty(), "{dir}");
            let text = config_yaml(step, chrono::Utc::now()).unwrap();
            let back = parse_run_file(&text).unwrap();
            assert_eq!(
                back.steps, file.steps,
                "{dir}: our config.yaml of the step differs"
            );
        }
    }

    #[test]
    fn saved_config_round_trips() {
        let mut cfg = BuildConfig::default();
        cfg.index_cfg.run_path = "runs/x".into();
        cfg.index_cfg.projection_dim = 16;
        cfg.index_cfg.split_attention_modules = vec!["a".into()];
        cfg.index_cfg.data.subset = Some("s".into());
        let text = build_config_yaml(&cfg, chrono::Utc::now()).unwrap();
        let parsed = parse_run_file(&text).unwrap();
        assert_eq!(parsed.steps, vec![Step::Build(Box::new(cfg))]);
    }

    #[test]
    fn reads_bergsons_own_config() {
        let text = include_str!("../../../../tests/fixtures/config/bergson_build_config.yaml");
        let parsed = parse_run_file(text).unwrap();
        let Step::Build(cfg) = &parsed.steps[0] else {
            panic!("a build step")
        };
        assert_eq!(cfg.index_cfg.run_path, "run1");
        assert_eq!(cfg.index_cfg.projection_dim, 4);
        assert_eq!(cfg.index_cfg.data.dataset, "data.jsonl");
    }

    #[test]
    fn matrix_expands_cells() {
        let text = "steps:\n- build:\n    matrix: {p: [4, 8]}\n    index_cfg: {run_path: 'runs/p{p}', projection_dim: '{p}'}\n";
        let parsed = parse_run_file(text).unwrap();
        let dims: Vec<_> = parsed
            .steps
            .iter()
            .map(|s| match s {
                Step::Build(c) => (c.index_cfg.run_path.clone(), c.index_cfg.projection_dim),
                other => panic!("a build step, not {other:?}"),
            })
            .collect();
        assert_eq!(
            dims,
            [("runs/p4".to_string(), 4), ("runs/p8".to_string(), 8)]
        );
    }

    #[test]
    fn reduce_and_score_steps_round_trip() {
        let mut b = BuildConfig::default();
        b.preprocess_cfg.aggregation = crate::config::Aggregation::Mean;
        let mut s = ScoreRunConfig::default();
        s.score_cfg.query_path = "runs/q".into();
        s.score_cfg.candidates.higher_is_better = Some(false);
        for step in [Step::Reduce(Box::new(b)), Step::Score(Box::new(s))] {
            let text = config_yaml(&step, chrono::Utc::now()).unwrap();
            assert!(
                text.starts_with(&format!("steps:\n- {}:", step.command())),
                "{text}"
            );
            assert_eq!(parse_run_file(&text).unwrap().steps, vec![step]);
        }
    }

    #[test]
    fn reads_bergsons_own_score_config_and_subconfigs() {
        let dir = tempfile::tempdir().unwrap();
        let text = include_str!("../../../../tests/fixtures/config/bergson_score_config.yaml");
        std::fs::write(dir.path().join("config.yaml"), text).unwrap();
        let parsed = parse_run_file(text).unwrap();
        let Step::Score(cfg) = &parsed.steps[0] else {
            panic!("a score step")
        };
        assert_eq!(cfg.score_cfg.query_path, "q");
        assert_eq!(cfg.index_cfg.projection_dim, 16);
        let pre: crate::config::PreprocessConfig = load_subconfig(dir.path(), "preprocess_cfg")
            .unwrap()
            .unwrap();
        assert_eq!(pre, cfg.preprocess_cfg);
        let none: Option<crate::config::ScoreConfig> =
            load_subconfig(&dir.path().join("missing"), "score_cfg").unwrap();
        assert!(none.is_none());
    }

    /// `magic`, `metasmoothness` and `validate` (each method, with its nested block) write
    /// config.yaml files that read back as the same runs.
    #[test]
    fn training_command_steps_round_trip() {
        use crate::config::{ControlsKind, ValidationMethod};
        let text_of = |step: &Step| config_yaml(step, chrono::Utc::now()).unwrap();
        let mut magic = MagicConfig::default();
        magic.train.run_path = "runs/m".into();
        magic.train.batch_size = 3;
        magic.backward_save_every = 2;
        let step = Step::Magic(Box::new(magic));
        assert_eq!(parse_run_file(&text_of(&step)).unwrap().steps, vec![step]);

        let mut smooth = MetasmoothnessConfig::default();
        smooth.train.run_path = "runs/s".into();
        smooth.fd_step = 0.25;
        smooth.direction_seed = 7;
        let step = Step::Metasmoothness(Box::new(smooth));
        assert_eq!(parse_run_file(&text_of(&step)).unwrap().steps, vec![step]);

        for method in [
            ValidationMethod::Lds,
            ValidationMethod::Filter,
            ValidationMethod::WeightStep,
        ] {
            let mut v = ValidateConfig::default();
            v.train.run_path = "runs/v".into();
            v.method = method;
            v.scores = "runs/m/scores".into();
            v.controls = ControlsKind::Bank;
            v.paths = vec!["a".into(), "b".into()];
            v.lrs = vec![0.5, 2.0];
            v.stop = Some(4);
            let step = Step::Validate(Box::new(v.clone()));
            let parsed = parse_run_file(&text_of(&step)).unwrap();
            let [Step::Validate(back)] = parsed.steps.as_slice() else {
                panic!("{method:?}: not one validate step");
            };
            assert_eq!(back.to_yaml_value(), v.to_yaml_value(), "{method:?}");
            assert_eq!((back.count(), back.fraction()), (v.count(), v.fraction()));
        }
        // Bergson's own spelling of the method block.
        let text = "steps:\n- validate:\n    run_path: r\n    scores: s\n    method:\n      kind: filter\n      direction: detractors\n      fraction: 0.05\n      controls: {kind: none, count: 2, paths: []}\n";
        let parsed = parse_run_file(text).unwrap();
        let [Step::Validate(v)] = parsed.steps.as_slice() else {
            panic!("not one validate step");
        };
        assert_eq!(v.method, ValidationMethod::Filter);
        assert_eq!((v.fraction(), v.count()), (0.05, Some(2)));
        assert_eq!(v.controls, ControlsKind::None);
        assert!(parse_run_file(
            "steps:\n- validate: {run_path: r, method: {kind: lds, bogus: 1}}\n"
        )
        .is_err());
    }

    #[test]
    fn unknown_keys_and_commands_are_errors() {
        assert!(parse_run_file("steps:\n- build: {index_cfg: {bogus: 1}}\n").is_err());
        assert!(parse_run_file("steps:\n- frobnicate: {}\n").is_err());
        assert!(parse_run_file("- 1\n").is_err());
    }
}
