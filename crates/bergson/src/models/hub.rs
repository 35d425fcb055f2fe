//! Finding a checkpoint: a local directory as is, or a Hugging Face Hub id (`org/name`)
//! through the hub cache ([`crate::hub`]: `models--org--name/refs/<revision>` ->
//! `snapshots/<commit>/`), downloading what is missing unless offline.

use super::checkpoint::{INDEX_FILE, SINGLE_FILE};
use crate::hub::{
    cached_snapshot, hub_error, is_repo_id, Failure, HubRepo, HubSettings, RemoteFile, RepoKind,
};
use crate::{Error, Result};
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
    if !is_repo_id(id_or_path) {
        return Err(Error::input(format!(
            "--model {id_or_path}: no such directory, and not a Hub id of the form org/name; point --model at a checkpoint directory (config.json + *.safetensors) or give a Hub id"
        )));
    }
    let revision = revision.unwrap_or("main");
    if let Some(dir) = cached_snapshot(&settings.cache_dir, RepoKind::Model, id_or_path, revision) {
        if is_complete(&dir) {
            return Ok(dir);
        }
    }
    let fix = format!(
        "{}download it on a machine with network access (e.g. `hf download ...`) and copy the hub cache, or point --model at a local checkpoint directory",
        local_look_alike(path)
    );
    let fix = fix.as_str();
    if settings.offline {
        return Err(Error::input(format!(
            "model {id_or_path} (revision {revision}) is not in the hub cache {} and HF_HUB_OFFLINE is set; {fix}",
            settings.cache_dir.display()
        )));
    }
    download(id_or_path, revision, settings).map_err(|failure| {
        let what = format!("model {id_or_path} (revision {revision})");
        hub_error(failure, &what, settings, fix)
    })
}

/// A hint for a Hub id that looks like a mistyped local path (`models/tiny` where `models/`
/// exists here): empty otherwise.
fn local_look_alike(path: &Path) -> String {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && parent.is_dir() => format!(
            "there is no local directory {} either (though {} exists: check the path), or ",
            path.display(),
            parent.display()
        ),
        _ => String::new(),
    }
}

/// The tokenizer files of a Hub repository; `tokenizer.json` (or GPT-2's `vocab.json` and
/// `merges.txt`) is required, the rest optional.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
];

/// Whether `dir` holds a tokenizer we can load: `tokenizer.json`, or GPT-2's two files.
fn has_tokenizer(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file() || crate::data::bpe_files::has_files(dir)
}

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
    if path.exists() || !is_repo_id(id_or_path) {
        return Err(Error::input(format!(
            "--tokenizer {id_or_path}: not a directory and not a Hub id of the form org/name; point it at a directory holding tokenizer.json, or give a Hub id"
        )));
    }
    let revision = "main";
    if let Some(dir) = cached_snapshot(&settings.cache_dir, RepoKind::Model, id_or_path, revision) {
        if has_tokenizer(&dir) {
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
    let fetched = HubRepo::new(RepoKind::Model, id_or_path, revision, settings).and_then(|repo| {
        let listing = repo.list()?;
        let wanted = present(&listing.files, TOKENIZER_FILES);
        let has = |name: &str| wanted.iter().any(|f| f.path == name);
        let loadable = has("tokenizer.json") || (has("vocab.json") && has("merges.txt"));
        if !loadable {
            return Err(Failure::FileNotFound(TOKENIZER_FILES[0].into()));
        }
        repo.fetch(&wanted, Some(&listing.commit), "downloading tokenizer")?;
        Ok(repo.snapshot(&listing.commit))
    });
    fetched.map_err(|failure| hub_error(failure, &format!("tokenizer {id_or_path}"), settings, fix))
}

/// The listed files among `names`, in the order of `names`.
fn present(files: &[RemoteFile], names: &[&str]) -> Vec<RemoteFile> {
    names
        .iter()
        .filter_map(|n| files.iter().find(|f| f.path == *n).cloned())
        .collect()
}

/// A snapshot with config.json and all its safetensors weights.
fn is_complete(dir: &Path) -> bool {
    if super::lora::is_adapter_dir(dir) {
        return dir.join(super::lora::ADAPTER_WEIGHTS).is_file();
    }
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

/// Downloads config.json, the tokenizer files that exist and the safetensors weights (one file,
/// or the index and its shards) into the cache; returns the snapshot directory.
fn download(
    id: &str,
    revision: &str,
    settings: &HubSettings,
) -> std::result::Result<PathBuf, Failure> {
    let repo = HubRepo::new(RepoKind::Model, id, revision, settings)?;
    let listing = repo.list()?;
    let commit = listing.commit.as_str();
    let label = "downloading model";
    let mut wanted = present(&listing.files, &["config.json"]);
    if wanted.is_empty() {
        // A PEFT adapter repository: its settings and weights (the base model is resolved
        // from adapter_config.json afterwards).
        let adapter = [super::lora::ADAPTER_CONFIG, super::lora::ADAPTER_WEIGHTS];
        let mut files = present(&listing.files, &adapter);
        if files.len() < adapter.len() {
            return Err(Failure::FileNotFound(
                "config.json (or adapter_config.json + adapter_model.safetensors)".into(),
            ));
        }
        files.extend(present(&listing.files, OPTIONAL_FILES));
        repo.fetch(&files, Some(commit), "downloading adapter")?;
        return Ok(repo.snapshot(commit));
    }
    wanted.extend(present(&listing.files, OPTIONAL_FILES));
    if let Some(index) = present(&listing.files, &[INDEX_FILE]).pop() {
        let local = repo.fetch(std::slice::from_ref(&index), Some(commit), label)?;
        let shards = shard_list(&local[0])
            .ok_or_else(|| Failure::Other(format!("{INDEX_FILE} is not a valid index")))?;
        for shard in shards {
            let listed = listing.files.iter().find(|f| f.path == shard);
            wanted.push(listed.cloned().unwrap_or(RemoteFile {
                path: shard,
                size: None,
            }));
        }
    } else {
        match present(&listing.files, &[SINGLE_FILE]).pop() {
            Some(weights) => wanted.push(weights),
            None => {
                return Err(Failure::FileNotFound(format!(
                    "{SINGLE_FILE} (bergson-rs needs safetensors weights)"
                )))
            }
        }
    }
    repo.fetch(&wanted, Some(commit), label)?;
    Ok(repo.snapshot(commit))
}

/// One file of a Hub model repository (e.g. an `optimizer.pt` for `hf://` optimizer states):
/// from the cache, else downloaded unless offline.
pub fn resolve_file(id: &str, revision: Option<&str>, file: &str) -> Result<PathBuf> {
    let settings = HubSettings::from_env();
    let revision = revision.unwrap_or("main");
    if let Some(dir) = cached_snapshot(&settings.cache_dir, RepoKind::Model, id, revision) {
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
    let remote = RemoteFile {
        path: file.to_string(),
        size: None,
    };
    let fetched = HubRepo::new(RepoKind::Model, id, revision, &settings)
        .and_then(|repo| repo.fetch(&[remote], None, "downloading"));
    match fetched {
        Ok(mut paths) => Ok(paths.remove(0)),
        Err(failure) => {
            let what = format!("{id} (revision {revision})");
            Err(hub_error(failure, &what, &settings, fix))
        }
    }
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
        HubSettings::cache_only(cache)
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
            offline: false,
            endpoint: Some("http://127.0.0.1:9".into()),
            ..HubSettings::cache_only(cache.path())
        };
        let e = resolve_with("EleutherAI/pythia-14m", None, &s).unwrap_err();
        assert!(e.is_user_error());
        let msg = e.to_string();
        assert!(
            msg.contains("could not be reached")
                && msg.contains("http://127.0.0.1:9")
                && msg.contains("local checkpoint directory"),
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
}
