//! Finding a checkpoint: a local directory as is, or a Hugging Face Hub id (`org/name`)
//! through the hub cache that `huggingface_hub` and the `hf-hub` crate share
//! (`models--org--name/refs/<revision>` -> `snapshots/<commit>/`), downloading what is missing
//! unless offline.

use super::checkpoint::{INDEX_FILE, SINGLE_FILE};
use crate::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Files fetched besides the weights when they exist (tokenizer and generation settings).
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
];

/// Where and how to look for Hub checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache directory, as `huggingface_hub` finds it: `HF_HUB_CACHE`, else
    /// `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: never download.
    pub offline: bool,
    /// `HF_ENDPOINT`, when set.
    pub endpoint: Option<String>,
}

impl HubSettings {
    /// Settings from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Settings from a variable look-up (testable without touching the environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        // huggingface_hub's order.
        let cache_dir = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(cache) => PathBuf::from(cache),
            None => var("HF_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    var("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| {
                            var("HOME")
                                .map(PathBuf::from)
                                .unwrap_or_else(|| PathBuf::from("."))
                                .join(".cache")
                        })
                        .join("huggingface")
                })
                .join("hub"),
        };
        let offline = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            cache_dir,
            offline,
            endpoint: var("HF_ENDPOINT"),
        }
    }
}

/// A local checkpoint directory for `id_or_path`: an existing directory is used as is;
/// otherwise a Hub id (`org/name`) is looked up in the hub cache and, unless `HF_HUB_OFFLINE`
/// is set, downloaded (config.json, tokenizer files, safetensors weights incl. shards).
pub fn resolve_model_dir(id_or_path: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_with(id_or_path, revision, &HubSettings::from_env())
}

/// [`resolve_model_dir`] with explicit settings.
pub fn resolve_with(
    id_or_path: &str,
    revision: Option<&str>,
    settings: &HubSettings,
) -> Result<PathBuf> {
    let path = Path::new(id_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(Error::input(format!(
            "--model {id_or_path} is a file; point it at a checkpoint directory (config.json + safetensors) or a Hub id"
        )));
    }
    if !is_hub_id(id_or_path) {
        return Err(Error::input(format!(
            "--model {id_or_path}: no such directory, and not a Hub id of the form org/name; point --model at a checkpoint directory (config.json + *.safetensors) or give a Hub id"
        )));
    }
    let revision = revision.unwrap_or("main");
    if let Some(dir) = cached_snapshot(&settings.cache_dir, id_or_path, revision) {
        if is_complete(&dir) {
            return Ok(dir);
        }
    }
    let fix = "download it on a machine with network access (e.g. `huggingface-cli download ...`) and copy the hub cache, or point --model at a local checkpoint directory";
    if settings.offline {
        return Err(Error::input(format!(
            "model {id_or_path} (revision {revision}) is not in the hub cache {} and HF_HUB_OFFLINE is set; {fix}",
            settings.cache_dir.display()
        )));
    }
    download(id_or_path, revision, settings).map_err(|e| {
        let e = e.replace('\n', " ");
        Error::input(format!(
            "model {id_or_path} (revision {revision}) is not cached in {} and downloading it failed ({e}); {fix}",
            settings.cache_dir.display()
        ))
    })
}

/// The tokenizer files of a Hub repository; `tokenizer.json` is required, the rest optional.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// A directory with `tokenizer.json` for `--tokenizer`: a local directory as is, or a Hub id
/// (a model repository or a tokenizer-only one) at its default revision, as Bergson loads it
/// (`--revision` applies to the model only). Only the tokenizer files are downloaded.
pub fn resolve_tokenizer_dir(id_or_path: &str) -> Result<PathBuf> {
    resolve_tokenizer_with(id_or_path, &HubSettings::from_env())
}

/// [`resolve_tokenizer_dir`] with explicit settings.
pub fn resolve_tokenizer_with(id_or_path: &str, settings: &HubSettings) -> Result<PathBuf> {
    let path = Path::new(id_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() || !is_hub_id(id_or_path) {
        return Err(Error::input(format!(
            "--tokenizer {id_or_path}: not a directory and not a Hub id of the form org/name; point it at a directory holding tokenizer.json, or give a Hub id"
        )));
    }
    let revision = "main";
    if let Some(dir) = cached_snapshot(&settings.cache_dir, id_or_path, revision) {
        if dir.join("tokenizer.json").is_file() {
            return Ok(dir);
        }
    }
    let fix = "download it where there is network access and copy the hub cache, or point --tokenizer at a local directory with tokenizer.json";
    if settings.offline {
        return Err(Error::input(format!(
            "tokenizer {id_or_path} is not in the hub cache {} and HF_HUB_OFFLINE is set; {fix}",
            settings.cache_dir.display()
        )));
    }
    download_tokenizer(id_or_path, revision, settings).map_err(|e| {
        Error::input(format!(
            "tokenizer {id_or_path} is not cached in {} and downloading it failed ({}); {fix}",
            settings.cache_dir.display(),
            e.replace('\n', " ")
        ))
    })
}

fn download_tokenizer(
    id: &str,
    revision: &str,
    settings: &HubSettings,
) -> std::result::Result<PathBuf, String> {
    let repo = hub_repo(id, revision, settings, true)?;
    let main = repo
        .get(TOKENIZER_FILES[0])
        .map_err(|e| format!("tokenizer.json: {e}"))?;
    for file in &TOKENIZER_FILES[1..] {
        // Most repositories lack some of these; a missing one is not an error.
        let _ = repo.get(file);
    }
    main.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "tokenizer.json has no parent directory".to_string())
}

/// `org/name` or `name`: letters, digits, `-`, `_`, `.`, at most one `/`.
fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// `models--org--name`: the repository folder in the hub cache.
fn repo_folder(id: &str) -> String {
    format!("models--{}", id.replace('/', "--"))
}

/// The snapshot directory for `revision` (a branch/tag under `refs/`, or a commit hash).
fn cached_snapshot(cache_dir: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = cache_dir.join(repo_folder(id));
    let commit = match std::fs::read_to_string(repo.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    if commit.is_empty() || commit.contains('/') || commit.contains("..") {
        return None;
    }
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// A snapshot with config.json and all its safetensors weights.
fn is_complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    if dir.join(SINGLE_FILE).is_file() {
        return true;
    }
    match shard_list(&dir.join(INDEX_FILE)) {
        Some(shards) => shards.iter().all(|s| dir.join(s).is_file()),
        None => false,
    }
}

/// Shard names from an index file (None when unreadable).
fn shard_list(index: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(index).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut shards: Vec<String> = value
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    Some(shards)
}

/// A handle on model repository `id` at `revision` that downloads into the settings' cache.
fn hub_repo(
    id: &str,
    revision: &str,
    settings: &HubSettings,
    progress: bool,
) -> std::result::Result<ApiRepo, String> {
    let mut builder =
        ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone())).with_progress(progress);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    Ok(api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    )))
}

/// Downloads config.json, the tokenizer files that exist and the safetensors weights into the
/// cache; returns the snapshot directory.
fn download(
    id: &str,
    revision: &str,
    settings: &HubSettings,
) -> std::result::Result<PathBuf, String> {
    let repo = hub_repo(id, revision, settings, true)?;
    let config = repo
        .get("config.json")
        .map_err(|e| format!("config.json: {e}"))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or("config.json has no parent directory")?;
    for file in OPTIONAL_FILES {
        // Most checkpoints lack some of these; a missing one is not an error.
        let _ = repo.get(file);
    }
    match repo.get(INDEX_FILE) {
        Ok(index) => {
            let shards = shard_list(&index).ok_or(format!("{INDEX_FILE} is not a valid index"))?;
            for shard in shards {
                repo.get(&shard).map_err(|e| format!("{shard}: {e}"))?;
            }
        }
        Err(_) => {
            repo.get(SINGLE_FILE).map_err(|e| {
                format!("{SINGLE_FILE}: {e} (bergson-rs needs safetensors weights)")
            })?;
        }
    }
    Ok(dir)
}

/// One file of a Hub model repository (e.g. an `optimizer.pt` for `hf://` optimizer states):
/// from the cache, else downloaded unless offline.
pub fn resolve_file(id: &str, revision: Option<&str>, file: &str) -> Result<PathBuf> {
    let settings = HubSettings::from_env();
    let revision = revision.unwrap_or("main");
    if let Some(dir) = cached_snapshot(&settings.cache_dir, id, revision) {
        if dir.join(file).is_file() {
            return Ok(dir.join(file));
        }
    }
    let fix =
        "download it where there is network access and copy the hub cache, or give a local path";
    if settings.offline {
        return Err(Error::input(format!(
            "{file} of {id} (revision {revision}) is not in the hub cache {} and HF_HUB_OFFLINE is set; {fix}",
            settings.cache_dir.display()
        )));
    }
    let fetched = hub_repo(id, revision, &settings, false)
        .and_then(|repo| repo.get(file).map_err(|e| e.to_string()));
    fetched.map_err(|e| {
        Error::input(format!(
            "{file} of {id} (revision {revision}) is not cached and downloading it failed ({}); {fix}",
            e.replace('\n', " ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake hub cache: `models--org--tiny/{refs/main, snapshots/<hash>/...}`.
    fn fake_cache(files: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        (cache, snap)
    }

    fn offline(cache: &Path) -> HubSettings {
        HubSettings {
            cache_dir: cache.to_path_buf(),
            offline: true,
            endpoint: None,
        }
    }

    #[test]
    fn settings_from_environment_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = HubSettings::from_vars(vars(&[
            ("HF_HUB_CACHE", "/c"),
            ("HF_HOME", "/h"),
            ("HF_HUB_OFFLINE", "1"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/c"));
        assert!(s.offline);
        let s = HubSettings::from_vars(vars(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!(s.cache_dir, PathBuf::from("/h/hub"));
        assert!(!s.offline);
        let s =
            HubSettings::from_vars(vars(&[("HOME", "/root"), ("HF_ENDPOINT", "http://mirror")]));
        assert_eq!(s.cache_dir, PathBuf::from("/root/.cache/huggingface/hub"));
        assert_eq!(s.endpoint.as_deref(), Some("http://mirror"));
    }

    #[test]
    fn resolves_local_dirs_and_cached_snapshots() {
        let (cache, snap) = fake_cache(&["config.json", "model.safetensors"]);
        let s = offline(cache.path());
        // A local directory wins whatever it looks like.
        assert_eq!(
            resolve_with(snap.to_str().unwrap(), None, &s).unwrap(),
            snap
        );
        assert_eq!(resolve_with("org/tiny", None, &s).unwrap(), snap);
        assert_eq!(resolve_with("org/tiny", Some("abc123"), &s).unwrap(), snap);
        // A revision that is not cached.
        let e = resolve_with("org/tiny", Some("v2"), &s).unwrap_err();
        assert!(e.is_user_error());
        let msg = e.to_string();
        assert!(
            msg.contains("org/tiny")
                && msg.contains("not in the hub cache")
                && msg.contains("HF_HUB_OFFLINE"),
            "{msg}"
        );
        assert!(
            msg.contains("local checkpoint directory") && !msg.contains('\n'),
            "{msg}"
        );
    }

    #[test]
    fn sharded_snapshots_need_every_shard() {
        let (cache, snap) = fake_cache(&["config.json"]);
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(snap.join(INDEX_FILE), index).unwrap();
        std::fs::write(snap.join("model-00001-of-00002.safetensors"), "x").unwrap();
        let s = offline(cache.path());
        assert!(resolve_with("org/tiny", None, &s).is_err());
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "x").unwrap();
        assert_eq!(resolve_with("org/tiny", None, &s).unwrap(), snap);
    }

    #[test]
    fn uncached_offline_and_failed_download_errors() {
        let cache = tempfile::tempdir().unwrap();
        let e = resolve_with("EleutherAI/pythia-14m", None, &offline(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("EleutherAI/pythia-14m") && e.contains("not in the hub cache"),
            "{e}"
        );
        // Online, but the endpoint refuses the connection at once: no network needed.
        let s = HubSettings {
            cache_dir: cache.path().to_path_buf(),
            offline: false,
            endpoint: Some("http://127.0.0.1:9".into()),
        };
        let e = resolve_with("EleutherAI/pythia-14m", None, &s).unwrap_err();
        assert!(e.is_user_error());
        let msg = e.to_string();
        assert!(
            msg.contains("downloading it failed") && msg.contains("local checkpoint directory"),
            "{msg}"
        );
        // Neither a directory nor a Hub id.
        let e = resolve_with("./no/such/dir/here", None, &offline(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such directory"), "{e}");
        let file = cache.path().join("f.txt");
        std::fs::write(&file, "x").unwrap();
        let e = resolve_with(file.to_str().unwrap(), None, &offline(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file"), "{e}");
    }

    #[test]
    fn tokenizer_only_repositories_resolve_from_the_cache() {
        let (cache, snap) = fake_cache(&["tokenizer.json", "tokenizer_config.json"]);
        let settings = offline(cache.path());
        assert_eq!(resolve_tokenizer_with("org/tiny", &settings).unwrap(), snap);
        // A model lookup of the same repository needs config.json and weights.
        assert!(resolve_with("org/tiny", None, &settings).is_err());
        let err = resolve_tokenizer_with("org/absent", &settings)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HF_HUB_OFFLINE") && err.contains("--tokenizer"),
            "{err}"
        );
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_order() {
        let with = |pairs: Vec<(&'static str, &'static str)>| {
            HubSettings::from_vars(move |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .cache_dir
        };
        assert_eq!(
            with(vec![("HUGGINGFACE_HUB_CACHE", "/o"), ("HF_HOME", "/h")]),
            PathBuf::from("/o")
        );
        assert_eq!(
            with(vec![("XDG_CACHE_HOME", "/x"), ("HOME", "/u")]),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            with(vec![("HOME", "/u")]),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
    }
}
