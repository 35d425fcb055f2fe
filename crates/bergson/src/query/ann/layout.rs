//! Where a FAISS index lives and what describes it, as Bergson 2.5.1 lays it out: the
//! directory `faiss_<factory, commas as underscores>[_cosine][_precondition]` inside the
//! gradient index,
//! shards `0.faiss`, `1.faiss`, ... (sorted by number), and `config.yaml`, which holds JSON
//! (`faiss_cfg`, `gradients_path`, `device`, `unit_norm`, `ordered_modules`) and is written
//! last: an index directory without it is unfinished.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::FaissConfig;
use crate::error::IoContext;
use crate::index::hf_dataset::python_json;
use crate::{Error, Result};

/// The description file of a FAISS index directory.
pub const CONFIG_FILE: &str = "config.yaml";

/// The FAISS index directory's name for a factory string (Bergson's
/// `faiss_{factory.replace(',', '_')}` + `_cosine` with unit norm + `_precondition` when a
/// Hessian preconditions the search).
pub fn dir_name(index_factory: &str, unit_norm: bool, precondition: bool) -> String {
    format!(
        "faiss_{}{}{}",
        index_factory.replace(',', "_"),
        if unit_norm { "_cosine" } else { "" },
        if precondition { "_precondition" } else { "" }
    )
}

/// Rows per shard: `total / shards` each, the remainder going to the last (as Bergson).
pub fn shard_sizes(total: usize, shards: usize) -> Vec<usize> {
    let mut sizes = vec![total / shards; shards];
    if let Some(last) = sizes.last_mut() {
        *last += total % shards;
    }
    sizes
}

/// The file of shard `i`.
pub fn shard_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i}.faiss"))
}

/// The shard files in `dir` (`<digits>.faiss`), in numeric order.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).at_path(dir)? {
        let path = entry.at_path(dir)?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".faiss"))
            .filter(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(n) = number {
            shards.push((n, path));
        }
    }
    shards.sort();
    Ok(shards.into_iter().map(|(_, p)| p).collect())
}

/// What `config.yaml` says about a FAISS index (the fields searches need; others are kept by
/// Bergson for the record).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Described {
    /// Whether rows were unit-normalised before insertion.
    pub unit_norm: bool,
    /// The gradient index's modules, in column order.
    pub ordered_modules: Vec<String>,
    /// The settings the index was built with.
    #[serde(default)]
    pub faiss_cfg: Value,
}

impl Described {
    /// Whether an unfinished build described by `self` builds the same shards as `cfg` would
    /// (the factory, the shard count and the training rows; search settings do not matter).
    pub fn builds_like(&self, cfg: &FaissConfig, unit_norm: bool, modules: &[String]) -> bool {
        let c = &self.faiss_cfg;
        self.unit_norm == unit_norm
            && self.ordered_modules == modules
            && c["index_factory"] == json!(cfg.index_factory)
            && c["num_shards"] == json!(cfg.num_shards)
            && c["max_train_examples"] == json!(cfg.max_train_examples)
    }
}

/// `config.yaml`'s text as Bergson writes it (`json.dump(..., indent=2)`).
pub fn config_text(
    cfg: &FaissConfig,
    gradients_path: &Path,
    unit_norm: bool,
    ordered_modules: &[String],
) -> Result<String> {
    let value = json!({
        "faiss_cfg": serde_json::to_value(cfg)
            .map_err(|e| Error::internal(format!("FaissConfig as JSON: {e}")))?,
        "gradients_path": gradients_path.display().to_string(),
        // FAISS runs on the CPU here (Debian's FAISS has no GPU support).
        "device": "cpu",
        "unit_norm": unit_norm,
        "ordered_modules": ordered_modules,
    });
    Ok(python_json(&value, Some(2)))
}

/// Reads `<dir>/config.yaml`.
pub fn read_config(dir: &Path) -> Result<Described> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).at_path(&path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{} does not describe a FAISS index ({e}); delete {} to rebuild it",
            path.display(),
            dir.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shards_follow_bergson() {
        assert_eq!(
            dir_name("IVF1,SQfp16", true, false),
            "faiss_IVF1_SQfp16_cosine"
        );
        assert_eq!(dir_name("Flat", false, false), "faiss_Flat");
        assert_eq!(
            dir_name("Flat", true, true),
            "faiss_Flat_cosine_precondition"
        );
        assert_eq!(shard_sizes(10, 3), [3, 3, 4]);
        assert_eq!(shard_sizes(7, 1), [7]);
        assert_eq!(shard_sizes(5, 5), [1, 1, 1, 1, 1]);
    }

    #[test]
    fn shard_files_are_numbered_faiss_files_in_numeric_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "10.faiss",
            "2.faiss",
            "0.faiss",
            "x.faiss",
            "1.faiss.tmp",
            ".faiss",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = shard_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0.faiss", "2.faiss", "10.faiss"]);
    }

    #[test]
    fn config_is_bergsons_json_and_reads_back() {
        let cfg = FaissConfig {
            index_factory: "IVF4,SQfp16".into(),
            max_train_examples: Some(100),
            ..FaissConfig::default()
        };
        let modules = vec!["a".to_string(), "b".to_string()];
        let text = config_text(&cfg, Path::new("runs/idx"), true, &modules).unwrap();
        // What Python's json.dump(indent=2) writes for Bergson's dict.
        let want = r#"{
  "faiss_cfg": {
    "index_factory": "IVF4,SQfp16",
    "mmap_index": false,
    "max_train_examples": 100,
    "batch_size": 1024,
    "num_shards": 1,
    "nprobe": 10
  },
  "gradients_path": "runs/idx",
  "device": "cpu",
  "unit_norm": true,
  "ordered_modules": [
    "a",
    "b"
  ]
}"#;
        assert_eq!(text, want);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), &text).unwrap();
        let d = read_config(dir.path()).unwrap();
        assert!(d.unit_norm);
        assert_eq!(d.ordered_modules, modules);
        assert!(d.builds_like(&cfg, true, &modules));
        let other_search = FaissConfig {
            nprobe: 3,
            mmap_index: true,
            ..cfg.clone()
        };
        assert!(d.builds_like(&other_search, true, &modules));
        let other_shards = FaissConfig {
            num_shards: 2,
            ..cfg.clone()
        };
        assert!(!d.builds_like(&other_shards, true, &modules));
        assert!(!d.builds_like(&cfg, false, &modules));
    }
}
