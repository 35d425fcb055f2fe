//! Dataset repositories: a Hugging Face hub dataset, whose data files are downloaded into the
//! hub cache (only those of the splits asked for), or a local directory of data files laid out
//! like one. Which files form which split follows `datasets`' rules: the `configs:` list in
//! README.md's YAML header when there is one, else its default patterns
//! (`data/{split}-00000-of-00001.*`, then split keywords in directory names, then in file names,
//! then everything as `train`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};
use serde_json::Value;

use crate::data::formats::Format;
use crate::data::kwargs::DataKwargs;
use crate::data::split::ReadInstruction;
use crate::hub::{hub_error, repo_folder, Failure, HubRepo, HubSettings, RemoteFile, RepoKind};
use crate::{Error, Result};

/// The splits of hub dataset `repo_id` (config `subset`), with the data files of the splits
/// that `split` (HF split syntax) names in the hub cache, as `datasets.load_dataset(repo_id,
/// subset, split=split)` finds them: the repository is listed at its default branch, README.md
/// fetched for its `configs:`, and only the needed data files downloaded (a second run finds
/// them cached). Offline (`HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE`), or when the hub cannot be
/// reached, the cached snapshot is read as it is.
pub fn fetch_repo(
    repo_id: &str,
    subset: Option<&str>,
    split: &str,
    settings: &HubSettings,
    kwargs: &DataKwargs,
) -> Result<RepoSplits> {
    let needed = needed_splits(split)?;
    let revision = kwargs.revision.as_deref().unwrap_or("main");
    if settings.datasets_offline {
        return cached_repo(repo_id, subset, &needed, settings, None, kwargs);
    }
    let what = format!("dataset '{repo_id}'");
    let fix = "pass a local file or directory";
    let fail = |failure: Failure| hub_error(failure, &what, settings, fix);
    // Datasets are read at their default branch unless --data_kwargs names a revision.
    let token_settings;
    let settings = match &kwargs.token {
        Some(token) => {
            token_settings = HubSettings {
                token: token.clone(),
                token_file: None,
                ..settings.clone()
            };
            &token_settings
        }
        None => settings,
    };
    let repo = HubRepo::new(RepoKind::Dataset, repo_id, revision, settings).map_err(fail)?;
    let listing = match repo.list() {
        Ok(listing) => listing,
        Err(Failure::Unreachable(why))
            if cached_snapshot(settings, repo_id, revision).is_some() =>
        {
            tracing::warn!(
                "the hub ({}) could not be reached ({why}); reading dataset '{repo_id}' from the \
                 hub cache",
                settings.endpoint()
            );
            return cached_repo(repo_id, subset, &needed, settings, Some(&why), kwargs);
        }
        Err(failure) => return Err(fail(failure)),
    };
    let commit = listing.commit.as_str();
    let mut files: Vec<String> = listing
        .files
        .iter()
        .map(|f| f.path.clone())
        .filter(|f| is_data_candidate(f))
        .collect();
    files.sort();
    let readme = match listing.files.iter().find(|f| f.path == "README.md") {
        Some(readme) => {
            let local = repo
                .fetch(
                    std::slice::from_ref(readme),
                    Some(commit),
                    "downloading README.md",
                )
                .map_err(fail)?;
            Some(std::fs::read_to_string(&local[0]).map_err(|e| Error::io(&local[0], e))?)
        }
        None => None,
    };
    let location = format!("{} at commit {commit}", settings.endpoint());
    let layout = resolve_layout(
        &files,
        readme.as_deref(),
        subset,
        repo_id,
        &location,
        kwargs,
    )?;
    let wanted: Vec<RemoteFile> = layout
        .splits
        .iter()
        .filter(|(name, _)| needed.contains(name))
        .flat_map(|(_, files)| files)
        .filter_map(|f| listing.files.iter().find(|l| l.path == *f).cloned())
        .collect();
    repo.fetch(&wanted, Some(commit), "downloading dataset")
        .map_err(fail)?;
    Ok(layout.under(&repo.snapshot(commit)))
}

/// The split names a split spec reads (`train[:10]+test` reads `train` and `test`).
fn needed_splits(split: &str) -> Result<Vec<String>> {
    Ok(ReadInstruction::from_spec(split)?
        .parts
        .into_iter()
        .map(|p| p.split)
        .collect())
}

/// The cached snapshot of a hub dataset: the commit `refs/<revision>` names, else (at `main`)
/// the most recently written snapshot.
fn cached_snapshot(settings: &HubSettings, repo_id: &str, revision: &str) -> Option<PathBuf> {
    if let Some(dir) =
        crate::hub::cached_snapshot(&settings.cache_dir, RepoKind::Dataset, repo_id, revision)
    {
        return Some(dir);
    }
    if revision != "main" {
        return None;
    }
    let snapshots = repo_folder(&settings.cache_dir, RepoKind::Dataset, repo_id).join("snapshots");
    std::fs::read_dir(snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// A hub dataset from the cache alone (offline, or the hub unreachable: `unreachable` says
/// why). Only the files already there are known, so a needed split must be there in full.
fn cached_repo(
    repo_id: &str,
    subset: Option<&str>,
    needed: &[String],
    settings: &HubSettings,
    unreachable: Option<&str>,
    kwargs: &DataKwargs,
) -> Result<RepoSplits> {
    let revision = kwargs.revision.as_deref().unwrap_or("main");
    let folder = repo_folder(&settings.cache_dir, RepoKind::Dataset, repo_id);
    let (why, fix) = match unreachable {
        None => (
            "HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set".to_string(),
            format!(
                "unset it to download, or fetch the dataset where there is network (`hf download \
                 {repo_id} --repo-type dataset`) and copy the cache, or point HF_HUB_CACHE or \
                 HF_HOME at a cache that holds it"
            ),
        ),
        Some(e) => (
            format!(
                "the hub ({}) could not be reached: {e}",
                settings.endpoint()
            ),
            "check the network and HF_ENDPOINT, or pass a local file or directory".to_string(),
        ),
    };
    let snapshot = cached_snapshot(settings, repo_id, revision).ok_or_else(|| {
        Error::input(format!(
            "dataset '{repo_id}' is not in the Hugging Face cache ({} not found) and {why}; {fix}",
            folder.display()
        ))
    })?;
    let repo = resolve_repo(&snapshot, subset, repo_id, kwargs)?;
    for name in needed {
        let Some((_, files)) = repo.splits.iter().find(|(s, _)| s == name) else {
            let available: Vec<&str> = repo.splits.iter().map(|(s, _)| s.as_str()).collect();
            return Err(Error::input(format!(
                "split '{name}' of dataset '{repo_id}' is not in the hub cache (available splits: \
                 {}) and {why}; pick one with --split, or {fix}",
                available.join(", ")
            )));
        };
        if let Some((have, of)) = missing_shards(files) {
            return Err(Error::input(format!(
                "split '{name}' of dataset '{repo_id}' is only partly in the hub cache ({have} of \
                 {of} shards) and {why}; {fix}"
            )));
        }
    }
    Ok(repo)
}

/// `(present, expected)` for the first group of `name-NNNNN-of-MMMMM.ext` shards that lacks
/// some of its `MMMMM` files (an interrupted download), None when every group is whole.
fn missing_shards(files: &[PathBuf]) -> Option<(usize, usize)> {
    let mut groups: HashMap<(PathBuf, String, usize), usize> = HashMap::new();
    for file in files {
        let name = file.file_name()?.to_string_lossy();
        let Some(prefix) = sharded_split(&name) else {
            continue;
        };
        let tail = &name[prefix.len()..];
        let Ok(of) = tail[10..15].parse::<usize>() else {
            continue;
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        *groups.entry((dir, prefix.to_string(), of)).or_default() += 1;
    }
    groups
        .into_iter()
        .find(|((_, _, of), have)| have < of)
        .map(|((_, _, of), have)| (have, of))
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
/// picks a README config (or, in a repo without configs, a `<subset>/` directory); `shown`
/// names the dataset in error messages; `kwargs` may replace the layout (`data_files`,
/// `data_dir`).
pub fn resolve_repo(
    root: &Path,
    subset: Option<&str>,
    shown: &str,
    kwargs: &DataKwargs,
) -> Result<RepoSplits> {
    let files = list_files(root);
    let readme = std::fs::read_to_string(root.join("README.md")).ok();
    let location = root.display().to_string();
    Ok(resolve_layout(&files, readme.as_deref(), subset, shown, &location, kwargs)?.under(root))
}

/// The splits of a repository, as paths inside it.
struct Layout {
    format: Format,
    splits: Vec<(String, Vec<String>)>,
}

impl Layout {
    /// The splits with their files under `root`.
    fn under(self, root: &Path) -> RepoSplits {
        RepoSplits {
            format: self.format,
            splits: self
                .splits
                .into_iter()
                .map(|(split, files)| (split, files.iter().map(|f| root.join(f)).collect()))
                .collect(),
        }
    }
}

/// The splits formed by a repository's `files` (sorted, `/`-separated, as [`is_data_candidate`]
/// keeps them) and README.md text; `location` says where the repository is, in messages.
/// `data_files` (one `train` split) or `data_dir` (the default layout under it) replace the
/// README's configs, as `load_dataset(..., data_files=, data_dir=)` does; the subset is still
/// checked against the configs.
fn resolve_layout(
    files: &[String],
    readme: Option<&str>,
    subset: Option<&str>,
    shown: &str,
    location: &str,
    kwargs: &DataKwargs,
) -> Result<Layout> {
    let configs = readme_configs(readme, shown)?;
    let (patterns, base) = if kwargs.overrides_layout() {
        if !configs.is_empty() {
            pick_config(&configs, subset, shown)?;
        }
        let base = kwargs
            .data_dir
            .as_ref()
            .map(|d| format!("{d}/"))
            .unwrap_or_default();
        let patterns = kwargs.data_files.as_ref().map(|files| {
            let under_base = files.iter().map(|f| format!("{base}{f}")).collect();
            vec![("train".to_string(), under_base)]
        });
        (patterns, base)
    } else if configs.is_empty() {
        match subset {
            None | Some("default") => (None, String::new()),
            Some(dir) if files.iter().any(|f| f.starts_with(&format!("{dir}/"))) => {
                (None, format!("{dir}/"))
            }
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
        None => default_patterns(files, &base).ok_or_else(|| no_files(shown, location))?,
    };
    let mut splits: Vec<(String, Vec<String>)> = Vec::new();
    for (split, split_patterns) in patterns {
        let mut matched: Vec<String> = Vec::new();
        for pattern in &split_patterns {
            for file in glob_files(files, pattern) {
                if !matched.contains(file) {
                    matched.push(file.clone());
                }
            }
        }
        splits.push((split, matched));
    }
    if let Some(wanted) = &kwargs.data_files {
        if splits.iter().all(|(_, f)| f.is_empty()) {
            return Err(Error::input(format!(
                "--data_kwargs data_files={} matched no file of dataset '{shown}' ({location}); patterns are relative to data_dir, else the dataset's root",
                wanted.join("|")
            )));
        }
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
        .ok_or_else(|| no_files(shown, location))?;
    let splits: Vec<(String, Vec<String>)> = splits
        .into_iter()
        .map(|(split, files)| {
            let files = files
                .into_iter()
                .filter(|f| Format::of(Path::new(f)) == Some(format))
                .collect();
            (split, files)
        })
        .filter(|(_, files): &(String, Vec<String>)| !files.is_empty())
        .collect();
    if splits.is_empty() {
        return Err(no_files(shown, location));
    }
    Ok(Layout { format, splits })
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

fn no_files(shown: &str, location: &str) -> Error {
    Error::input(format!(
        "dataset '{shown}' ({location}) holds no data files bergson can read (.parquet, .jsonl, \
         .json, .csv, .tsv, .arrow); convert its data to one of these, or pass a file directly"
    ))
}

/// Whether a repository file (a `/`-separated path) can hold data: not hidden, not under a
/// `__`-directory (datasets ignores both unless asked for) and not one of the metadata files.
fn is_data_candidate(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts
        .iter()
        .all(|p| !p.starts_with('.') && !p.starts_with("__"))
        && parts
            .last()
            .is_some_and(|name| !IGNORED_FILES.contains(name))
}

/// Every data file under `root` ([`is_data_candidate`]), as `/`-separated relative paths,
/// sorted.
fn list_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let path = entry.path();
            if name.starts_with('.') || name.starts_with("__") {
                continue;
            }
            if path.is_dir() {
                stack.push((path, format!("{rel}/")));
            } else if path.is_file() && is_data_candidate(&rel) {
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
fn readme_configs(readme: Option<&str>, shown: &str) -> Result<Vec<Config>> {
    let Some(readme) = readme else {
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
}
