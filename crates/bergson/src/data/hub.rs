//! Dataset repositories: a Hugging Face hub dataset resolved from the local hub cache (no
//! downloads), or a local directory of data files laid out like one. Which files form which
//! split follows `datasets`' rules: the `configs:` list in README.md's YAML header when there is
//! one, else its default patterns (`data/{split}-00000-of-00001.*`, then split keywords in
//! directory names, then in file names, then everything as `train`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};
use serde_json::Value;

use crate::data::formats::Format;
use crate::{Error, Result};

/// The hub cache directory, as `huggingface_hub` finds it: `HF_HUB_CACHE`, else
/// `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    crate::models::hub::HubSettings::from_env().cache_dir
}

/// Whether `name` is shaped like a hub repo id (`name` or `org/name`, of `[A-Za-z0-9_.-]`).
pub fn is_repo_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && !p.starts_with('-')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        })
}

/// The snapshot directory of a cached hub dataset: the revision `refs/main` names, else the only
/// (or most recently modified) snapshot.
pub fn snapshot_dir(cache: &Path, repo_id: &str) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("datasets--{}", repo_id.replace('/', "--")));
    let not_cached = || {
        Error::input(format!(
            "dataset '{repo_id}' is not a local file or directory and is not in the Hugging Face \
             cache ({} not found); bergson does not download: fetch it with `hf download \
             {repo_id} --repo-type dataset` (or huggingface-cli download), point HF_HUB_CACHE or \
             HF_HOME at the cache that holds it, or pass a local path",
            repo_dir.display()
        ))
    };
    let snapshots = repo_dir.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let dir = snapshots.join(hash.trim());
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    let entries = std::fs::read_dir(&snapshots).map_err(|_| not_cached())?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .ok_or_else(not_cached)
}

/// The data files of each split of a dataset repository, in split order.
#[derive(Debug, Clone)]
pub struct RepoSplits {
    /// The format every file is read with (the most common one, as datasets infers it).
    pub format: Format,
    /// `(split, files)` pairs; files in the order datasets reads them.
    pub splits: Vec<(String, Vec<PathBuf>)>,
}

const DEFAULT_SPLITS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];
const IGNORED_FILES: [&str; 6] = [
    "README.md",
    "config.json",
    "dataset_info.json",
    "dataset_infos.json",
    "dummy_data.zip",
    "dataset_dict.json",
];

/// Resolves which files form which split of the repository checked out at `root`. `subset`
/// picks a README config (or, in a repo without configs, a `<subset>/` directory); `shown` names
/// the dataset in error messages.
pub fn resolve_repo(root: &Path, subset: Option<&str>, shown: &str) -> Result<RepoSplits> {
    let files = list_files(root);
    let configs = readme_configs(root, shown)?;
    let (patterns, base) = if configs.is_empty() {
        match subset {
            None | Some("default") => (None, String::new()),
            Some(dir) if root.join(dir).is_dir() => (None, format!("{dir}/")),
            Some(other) => {
                return Err(Error::input(format!(
                    "dataset '{shown}' has no subset '{other}': it declares no configs in its \
                     README.md and has no '{other}/' directory; drop --subset or pick a directory \
                     of the dataset"
                )))
            }
        }
    } else {
        let config = pick_config(&configs, subset, shown)?;
        let base = config
            .data_dir
            .as_ref()
            .map(|d| format!("{}/", d.trim_end_matches('/')))
            .unwrap_or_default();
        (config.data_files.clone(), base)
    };
    let patterns = match patterns {
        Some(p) => p,
        None => default_patterns(&files, &base).ok_or_else(|| no_files(shown, root))?,
    };
    let mut splits: Vec<(String, Vec<String>)> = Vec::new();
    for (split, split_patterns) in patterns {
        let mut matched: Vec<String> = Vec::new();
        for pattern in &split_patterns {
            for file in glob_files(&files, pattern) {
                if !matched.contains(file) {
                    matched.push(file.clone());
                }
            }
        }
        splits.push((split, matched));
    }
    // The most common format wins (parquet on a tie, then alphabetical), as datasets infers it.
    let mut counts: HashMap<Format, usize> = HashMap::new();
    for file in splits.iter().flat_map(|(_, f)| f) {
        if let Some(format) = Format::of(Path::new(file)) {
            *counts.entry(format).or_default() += 1;
        }
    }
    let format = counts
        .into_iter()
        .max_by_key(|&(format, count)| {
            (
                count,
                format == Format::Parquet,
                std::cmp::Reverse(format_ext(format)),
            )
        })
        .map(|(format, _)| format)
        .ok_or_else(|| no_files(shown, root))?;
    let splits: Vec<(String, Vec<PathBuf>)> = splits
        .into_iter()
        .map(|(split, files)| {
            let files = files
                .into_iter()
                .filter(|f| Format::of(Path::new(f)) == Some(format))
                .map(|f| root.join(f))
                .collect();
            (split, files)
        })
        .filter(|(_, files): &(String, Vec<PathBuf>)| !files.is_empty())
        .collect();
    if splits.is_empty() {
        return Err(no_files(shown, root));
    }
    Ok(RepoSplits { format, splits })
}

fn format_ext(format: Format) -> &'static str {
    match format {
        Format::Arrow => "arrow",
        Format::Csv => "csv",
        Format::Json => "json",
        Format::Parquet => "parquet",
        Format::Tsv => "tsv",
    }
}

fn no_files(shown: &str, root: &Path) -> Error {
    Error::input(format!(
        "dataset '{shown}' ({}) holds no data files bergson can read (.parquet, .jsonl, .json, \
         .csv, .tsv, .arrow); download the data files too, or pass a file directly",
        root.display()
    ))
}

/// Every file under `root`, as `/`-separated relative paths, sorted; hidden files and
/// directories and `__`-directories skipped (datasets ignores them unless asked for).
fn list_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with("__") {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let path = entry.path();
            if path.is_dir() {
                stack.push((path, format!("{rel}/")));
            } else if path.is_file() && !IGNORED_FILES.contains(&name.as_str()) {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

fn glob_files<'a>(files: &'a [String], pattern: &str) -> impl Iterator<Item = &'a String> {
    let options = MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let compiled = Pattern::new(pattern).ok();
    files.iter().filter(move |f| {
        compiled
            .as_ref()
            .is_some_and(|p| p.matches_with(f, options))
    })
}

type SplitPatterns = Vec<(String, Vec<String>)>;

/// datasets' `_get_data_files_patterns` under `base` (`""` or `dir/`).
fn default_patterns(files: &[String], base: &str) -> Option<SplitPatterns> {
    // 1. data/{split}-00000-of-00001.*: the split names come from the file names.
    let sharded: Vec<(&str, &String)> = files
        .iter()
        .filter_map(|f| {
            f.strip_prefix(base)?
                .strip_prefix("data/")
                .map(|name| (name, f))
        })
        .filter(|(name, _)| !name.contains('/'))
        .filter_map(|(name, f)| sharded_split(name).map(|split| (split, f)))
        .collect();
    if !sharded.is_empty() {
        let mut names: Vec<&str> = sharded.iter().map(|(s, _)| *s).collect();
        names.sort();
        names.dedup();
        let mut ordered: Vec<&str> = DEFAULT_SPLITS
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| names.contains(s))
            .collect();
        ordered.extend(
            names
                .iter()
                .filter(|n| !DEFAULT_SPLITS.iter().any(|(s, _)| s == *n)),
        );
        return Some(
            ordered
                .into_iter()
                .map(|split| {
                    let files = sharded
                        .iter()
                        .filter(|(s, _)| *s == split)
                        .map(|(_, f)| glob_escape(f))
                        .collect();
                    (split.to_string(), files)
                })
                .collect(),
        );
    }
    // 2. split keywords in directory names, 3. in file names, 4. everything is train.
    let in_dir = [
        "**/{k}/**",
        "**/{k}[-._ 0-9]*/**",
        "**/*[-._ 0-9]{k}/**",
        "**/*[-._ 0-9]{k}[-._ 0-9]*/**",
    ];
    let in_name = ["**/{k}[-._ 0-9]*", "**/*[-._ 0-9]{k}[-._ 0-9]*"];
    for templates in [&in_dir[..], &in_name[..]] {
        let mut found: SplitPatterns = Vec::new();
        for (split, keywords) in DEFAULT_SPLITS {
            let patterns: Vec<String> = keywords
                .iter()
                .flat_map(|k| {
                    templates
                        .iter()
                        .map(move |t| format!("{base}{}", t.replace("{k}", k)))
                })
                .collect();
            if patterns
                .iter()
                .any(|p| glob_files(files, p).next().is_some())
            {
                found.push((split.to_string(), patterns));
            }
        }
        if !found.is_empty() {
            return Some(found);
        }
    }
    let all = format!("{base}**");
    glob_files(files, &all)
        .next()
        .map(|_| vec![("train".to_string(), vec![all])])
}

/// The `{split}` of a file name `{split}-NNNNN-of-NNNNN*.*` (the longest such prefix).
fn sharded_split(name: &str) -> Option<&str> {
    let bytes = name.as_bytes();
    let shard = |at: usize| -> bool {
        let tail = &bytes[at..];
        tail.len() >= 15
            && tail[0] == b'-'
            && tail[1..6].iter().all(u8::is_ascii_digit)
            && &tail[6..10] == b"-of-"
            && tail[10..15].iter().all(u8::is_ascii_digit)
            && tail[15..].contains(&b'.')
    };
    (1..bytes.len())
        .rev()
        .find(|&at| shard(at))
        .map(|at| &name[..at])
}

fn glob_escape(path: &str) -> String {
    Pattern::escape(path)
}

/// One entry of README.md's `configs:` list.
#[derive(Debug, Clone)]
struct Config {
    name: String,
    default: bool,
    data_dir: Option<String>,
    data_files: Option<SplitPatterns>,
}

/// The `configs:` of the YAML header of README.md (empty without one).
fn readme_configs(root: &Path, shown: &str) -> Result<Vec<Config>> {
    let Ok(readme) = std::fs::read_to_string(root.join("README.md")) else {
        return Ok(Vec::new());
    };
    let mut lines = readme.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return Ok(Vec::new());
    }
    let header: Vec<&str> = lines.take_while(|l| l.trim_end() != "---").collect();
    let bad = |what: String| {
        Error::input(format!(
            "dataset '{shown}': README.md's YAML header {what}; fix the `configs:` list (see \
             https://huggingface.co/docs/hub/datasets-manual-configuration)"
        ))
    };
    let yaml: Value = serde_saphyr::from_str(&header.join("\n"))
        .map_err(|e| bad(format!("is not valid YAML ({e})")))?;
    let Some(list) = yaml.get("configs") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| bad("has a `configs` that is not a list".into()))?;
    list.iter()
        .map(|entry| {
            let name = entry
                .get("config_name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("has a config without `config_name`".into()))?
                .to_string();
            let data_files = entry.get("data_files").map(|d| {
                split_patterns(d).ok_or_else(|| {
                    bad(format!("has an unreadable `data_files` in config '{name}'"))
                })
            });
            Ok(Config {
                default: entry
                    .get("default")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                data_dir: entry
                    .get("data_dir")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                data_files: data_files.transpose()?,
                name,
            })
        })
        .collect()
}

/// datasets' `sanitize_patterns`: a string or list is `train`; a list of `{split, path}` maps
/// (path a string or list) names splits; a map is `{split: path(s)}`.
fn split_patterns(value: &Value) -> Option<SplitPatterns> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => None,
        }
    };
    match value {
        Value::String(_) => Some(vec![("train".into(), strings(value)?)]),
        Value::Array(items) if items.iter().any(Value::is_object) => items
            .iter()
            .map(|item| {
                Some((
                    item.get("split")?.as_str()?.to_string(),
                    strings(item.get("path")?)?,
                ))
            })
            .collect(),
        Value::Array(_) => Some(vec![("train".into(), strings(value)?)]),
        Value::Object(map) => map
            .iter()
            .map(|(split, paths)| Some((split.clone(), strings(paths)?)))
            .collect(),
        _ => None,
    }
}

fn pick_config<'a>(configs: &'a [Config], subset: Option<&str>, shown: &str) -> Result<&'a Config> {
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    match subset {
        Some(name) => configs.iter().find(|c| c.name == name).ok_or_else(|| {
            Error::input(format!(
                "dataset '{shown}' has no subset '{name}'; available subsets: {}. Pick one with --subset",
                names.join(", ")
            ))
        }),
        None => {
            // datasets' get_default_config_name: the only config, one named `default`, or the
            // one marked `default: true`.
            let defaults: Vec<&Config> =
                configs.iter().filter(|c| configs.len() == 1 || c.name == "default" || c.default).collect();
            match defaults.as_slice() {
                [one] => Ok(one),
                [] => Err(Error::input(format!(
                    "dataset '{shown}' has several subsets and no default; pick one with --subset \
                     (available: {})",
                    names.join(", ")
                ))),
                _ => Err(Error::input(format!(
                    "dataset '{shown}' marks several subsets as default ({}); pick one with --subset",
                    defaults.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sharded_names_give_splits() {
        assert_eq!(sharded_split("train-00000-of-00002.parquet"), Some("train"));
        assert_eq!(
            sharded_split("my-split-00001-of-00002-abc.jsonl"),
            Some("my-split")
        );
        assert_eq!(sharded_split("train-0000-of-00002.parquet"), None);
        assert_eq!(sharded_split("train-00000-of-00002"), None);
    }

    #[test]
    fn keyword_patterns_follow_datasets() {
        // Directory names win over file names; "dev" is validation; unmatched files drop out.
        let f = files(&[
            "a/train/x.parquet",
            "dev/y.parquet",
            "test.parquet",
            "other.parquet",
        ]);
        let p = default_patterns(&f, "").unwrap();
        let names: Vec<&str> = p.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["train", "validation"]);
        let f = files(&["train.jsonl", "my_test-1.jsonl", "notes.jsonl"]);
        let p = default_patterns(&f, "").unwrap();
        assert_eq!(
            glob_files(&f, &p[0].1[0]).collect::<Vec<_>>(),
            ["train.jsonl"]
        );
        assert_eq!(p[1].0, "test");
        assert!(p[1]
            .1
            .iter()
            .any(|pat| glob_files(&f, pat).any(|x| x == "my_test-1.jsonl")));
        let f = files(&["notes.jsonl", "sub/more.jsonl"]);
        let p = default_patterns(&f, "").unwrap();
        assert_eq!(glob_files(&f, &p[0].1[0]).count(), 2);
    }

    #[test]
    fn repo_ids() {
        assert!(is_repo_id("org/name") && is_repo_id("imdb") && is_repo_id("a-b/c.d_e"));
        assert!(
            !is_repo_id("./x") && !is_repo_id("a/b/c") && !is_repo_id("/abs") && !is_repo_id("x y")
        );
    }
}
