//! The Hugging Face hub, for models, tokenizers and datasets alike: settings read from the
//! environment as `huggingface_hub` reads them, the cache layout it shares with the `hf-hub`
//! crate (`{models,datasets}--org--name/` holding `blobs/<etag>`, `snapshots/<commit>/<file>`
//! links into the blobs, and `refs/<branch>` naming a commit), repository listings, and
//! downloads with a progress bar that stop at Ctrl-C.
//!
//! Downloads go through `hf-hub`, which writes each file to `blobs/<etag>.part`, renames it
//! when complete and only then links it into the snapshot, so an interrupted download never
//! leaves a file that looks complete (the `.part` is resumed by the next download).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde_json::Value;

use crate::progress::Phase;
use crate::Error;

/// The public hub, when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the hub.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache directory, as `huggingface_hub` finds it: `HF_HUB_CACHE`, else
    /// `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`): never download models or tokenizers.
    pub offline: bool,
    /// Offline for datasets: `HF_DATASETS_OFFLINE` when set, else [`Self::offline`] (as
    /// `datasets` decides).
    pub datasets_offline: bool,
    /// `HF_ENDPOINT`, when set (a mirror, or a stand-in hub in tests).
    pub endpoint: Option<String>,
    /// `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), when set.
    pub token: Option<String>,
    /// The token file read when no token variable is set: `HF_TOKEN_PATH`, else
    /// `$HF_HOME/token` (where `hf auth login` writes it).
    pub token_file: Option<PathBuf>,
}

impl fmt::Debug for HubSettings {
    // By hand so that a token never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("datasets_offline", &self.datasets_offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl HubSettings {
    /// Settings from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Settings that read `cache_dir` only and never reach the network.
    pub fn cache_only(cache_dir: impl Into<PathBuf>) -> Self {
        HubSettings {
            cache_dir: cache_dir.into(),
            offline: true,
            datasets_offline: true,
            endpoint: None,
            token: None,
            token_file: None,
        }
    }

    /// Settings from a variable look-up (testable without touching the environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let is_true =
            |v: String| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE");
        // huggingface_hub's order.
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    var("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("."))
                        .join(".cache")
                })
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = var("HF_HUB_OFFLINE")
            .or_else(|| var("TRANSFORMERS_OFFLINE"))
            .is_some_and(is_true);
        let datasets_offline = var("HF_DATASETS_OFFLINE").map_or(offline, is_true);
        Self {
            cache_dir,
            offline,
            datasets_offline,
            endpoint: var("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()),
            token: var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")),
            token_file: Some(
                var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token")),
            ),
        }
    }

    /// The hub URL requests go to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    /// The access token: [`Self::token`], else the token file's contents.
    fn resolved_token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            let text = std::fs::read_to_string(self.token_file.as_ref()?).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        })
    }
}

/// Whether `name` is a valid hub repository id (`name` or `org/name`), as `huggingface_hub`'s
/// `validate_repo_id`: letters, digits, `-`, `_`, `.`; no `--` or `..`; no part starting or
/// ending with `-` or `.`; at most 96 characters.
pub fn is_repo_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    name.len() <= 96
        && parts.len() <= 2
        && !name.contains("--")
        && !name.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && !p.ends_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        })
}

/// The two kinds of repository bergson reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model (or tokenizer) repository.
    Model,
    /// A dataset repository.
    Dataset,
}

impl RepoKind {
    fn repo_type(self) -> RepoType {
        match self {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        }
    }

    /// `model` or `dataset`, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}

/// The cache folder of a repository: `<cache>/{models,datasets}--org--name`.
pub fn repo_folder(cache_dir: &Path, kind: RepoKind, id: &str) -> PathBuf {
    cache_dir.join(Repo::new(id.to_string(), kind.repo_type()).folder_name())
}

/// The cached snapshot of `revision` (a branch or tag under `refs/`, or a commit hash), when
/// its directory exists.
pub fn cached_snapshot(
    cache_dir: &Path,
    kind: RepoKind,
    id: &str,
    revision: &str,
) -> Option<PathBuf> {
    let folder = repo_folder(cache_dir, kind, id);
    let commit = match std::fs::read_to_string(folder.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    if commit.is_empty() || commit.contains('/') || commit.contains("..") {
        return None;
    }
    let dir = folder.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Why talking to the hub failed, in the terms a message to the user needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The repository does not exist, or is private and no valid token was sent (the hub
    /// answers both with 401/404).
    RepoNotFound,
    /// The revision does not exist in the repository.
    RevisionNotFound,
    /// The repository exists but this token may not read it (gated or restricted: 403).
    AccessDenied,
    /// One file is not in the repository.
    FileNotFound(String),
    /// The endpoint could not be reached (DNS, refused connection, TLS, timeout, proxy).
    Unreachable(String),
    /// The repository moved to another commit while its files were being downloaded.
    Changed,
    /// Ctrl-C: stopped between or inside downloads (a partial file stays as `.part`).
    Interrupted,
    /// Anything else (a server error, an unexpected answer, local I/O).
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::RepoNotFound => write!(f, "repository not found"),
            Failure::RevisionNotFound => write!(f, "revision not found"),
            Failure::AccessDenied => write!(f, "access denied"),
            Failure::FileNotFound(file) => write!(f, "{file} is not in the repository"),
            Failure::Unreachable(why) => write!(f, "hub not reachable: {why}"),
            Failure::Changed => write!(f, "the repository changed during the download"),
            Failure::Interrupted => write!(f, "interrupted"),
            Failure::Other(why) => write!(f, "{why}"),
        }
    }
}

impl Failure {
    /// From a failed HTTP request; `file` is the repository file asked for (None: the listing).
    fn from_ureq(e: &ureq::Error, file: Option<&str>) -> Self {
        match e {
            ureq::Error::Status(code, response) => {
                match (response.header("x-error-code"), *code, file) {
                    (Some("RepoNotFound"), ..) | (None, 401, _) | (None, 404, None) => {
                        Failure::RepoNotFound
                    }
                    (Some("RevisionNotFound"), ..) => Failure::RevisionNotFound,
                    (Some("GatedRepo"), ..) | (None, 403, _) => Failure::AccessDenied,
                    (Some("EntryNotFound"), _, Some(f)) | (None, 404, Some(f)) => {
                        Failure::FileNotFound(f.to_string())
                    }
                    (_, code, _) => {
                        Failure::Other(format!("HTTP {code} from {}", response.get_url()))
                    }
                }
            }
            ureq::Error::Transport(t) => Failure::Unreachable(one_line(&t.to_string())),
        }
    }

    fn from_api(e: ApiError, file: &str) -> Self {
        match e {
            ApiError::RequestError(e) => Failure::from_ureq(&e, Some(file)),
            ApiError::LockAcquisition(lock) => Failure::Other(format!(
                "another process holds the download lock {}; wait for it or remove the lock file",
                lock.display()
            )),
            ApiError::MissingHeader(h) => Failure::Other(format!(
                "the hub's answer for {file} lacks the {h} header (is HF_ENDPOINT a hub?)"
            )),
            other => Failure::Other(format!("{file}: {}", one_line(&other.to_string()))),
        }
    }
}

/// The error for a failed hub request about `what` (e.g. "model org/name (revision main)"):
/// [`Error::Interrupted`] after Ctrl-C, else one line naming the problem, ending with `fix`
/// (what to do instead, e.g. "pass a local path").
pub fn hub_error(failure: Failure, what: &str, settings: &HubSettings, fix: &str) -> Error {
    let at = format!("HF_ENDPOINT={}", settings.endpoint());
    Error::input(match failure {
        Failure::Interrupted => return Error::Interrupted,
        Failure::RepoNotFound => format!(
            "{what} was not found on the hub ({at}); check the name, set HF_TOKEN if it is \
             private, or {fix}"
        ),
        Failure::RevisionNotFound => {
            format!("{what}: no such revision on the hub ({at}); check the revision, or {fix}")
        }
        Failure::AccessDenied => format!(
            "{what} is gated or restricted on the hub ({at}); accept its conditions on its hub \
             page and set HF_TOKEN (or run `hf auth login`), or {fix}"
        ),
        Failure::FileNotFound(file) => format!("{what} has no {file} on the hub ({at}); {fix}"),
        Failure::Unreachable(why) => format!(
            "{what} is not in the hub cache {} and the hub could not be reached ({at}: {why}); \
             check the network and HF_ENDPOINT, or {fix}",
            settings.cache_dir.display()
        ),
        Failure::Changed => format!(
            "{what} changed on the hub while it was being downloaded ({at}); run the command \
             again"
        ),
        Failure::Other(why) => format!("downloading {what} failed ({why}); {fix}"),
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One file of a repository listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The `/`-separated path inside the repository.
    pub path: String,
    /// Its size in bytes, when the hub said.
    pub size: Option<u64>,
}

/// What a repository holds at one commit.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The commit the revision points at.
    pub commit: String,
    /// Every file, in the hub's order.
    pub files: Vec<RemoteFile>,
}

/// A repository on the hub at a revision, downloading into the settings' cache.
pub struct HubRepo {
    api: Api,
    repo: Repo,
    kind: RepoKind,
    id: String,
    cache_dir: PathBuf,
}

/// How often a download in progress looks at the Ctrl-C flag and updates its bar.
const POLL: Duration = Duration::from_millis(50);

impl HubRepo {
    /// A handle on repository `id` of `kind` at `revision`.
    pub fn new(
        kind: RepoKind,
        id: &str,
        revision: &str,
        settings: &HubSettings,
    ) -> Result<Self, Failure> {
        let mut builder = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
            .with_progress(false)
            .with_endpoint(settings.endpoint().to_string())
            .with_token(settings.resolved_token())
            .with_user_agent("bergson-rs", env!("CARGO_PKG_VERSION"));
        // Retries resume the `.part` file where the connection dropped.
        builder = builder.with_retries(2);
        let api = builder
            .build()
            .map_err(|e| Failure::Other(format!("cannot set up the hub client: {e}")))?;
        Ok(HubRepo {
            api,
            repo: Repo::with_revision(id.to_string(), kind.repo_type(), revision.to_string()),
            kind,
            id: id.to_string(),
            cache_dir: settings.cache_dir.clone(),
        })
    }

    /// The repository's files and the commit its revision points at (one request).
    pub fn list(&self) -> Result<Listing, Failure> {
        let api = self.api.repo(self.repo.clone());
        let response = api
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| Failure::from_ureq(&e, None))?;
        let info: Value = response
            .into_json()
            .map_err(|e| Failure::Other(format!("unreadable repository listing: {e}")))?;
        let commit = info
            .get("sha")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Other("the repository listing has no `sha`".into()))?
            .to_string();
        let files = info
            .get("siblings")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::Other("the repository listing has no `siblings`".into()))?
            .iter()
            .filter_map(|s| {
                Some(RemoteFile {
                    path: s.get("rfilename")?.as_str()?.to_string(),
                    size: s.get("size").and_then(Value::as_u64),
                })
            })
            .collect();
        Ok(Listing { commit, files })
    }

    /// The snapshot directory of `commit` in the cache (it may not exist yet).
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        repo_folder(&self.cache_dir, self.kind, &self.id)
            .join("snapshots")
            .join(commit)
    }

    /// The local paths of `files`: from snapshot `commit` when cached there, else downloaded
    /// (a bar labelled `label` counts the bytes). With `commit` given, files must come from
    /// that commit ([`Failure::Changed`] otherwise); without, from whatever the revision
    /// points at now. Ctrl-C stops within [`POLL`] ([`Failure::Interrupted`]).
    pub fn fetch(
        &self,
        files: &[RemoteFile],
        commit: Option<&str>,
        label: &'static str,
    ) -> Result<Vec<PathBuf>, Failure> {
        let cached = |f: &RemoteFile| {
            commit
                .map(|c| self.snapshot(c).join(&f.path))
                .filter(|p| p.is_file())
        };
        let missing: Vec<&RemoteFile> = files.iter().filter(|f| cached(f).is_none()).collect();
        let total = missing
            .iter()
            .map(|f| f.size)
            .sum::<Option<u64>>()
            .filter(|_| !missing.is_empty());
        let mut phase = (!missing.is_empty()).then(|| Phase::new(label, "bytes", total));
        let mut done = 0u64;
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            if let Some(path) = cached(file) {
                out.push(path);
                continue;
            }
            if crate::interrupt::requested() {
                return Err(Failure::Interrupted);
            }
            let path = self.download(file, &mut phase, done)?;
            if let Some(c) = commit {
                if !path.starts_with(self.snapshot(c)) {
                    return Err(Failure::Changed);
                }
            }
            let got = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if let Some(want) = file.size.filter(|&want| want != got) {
                // Never leave a short file that looks complete.
                let blob = std::fs::canonicalize(&path).ok();
                let _ = std::fs::remove_file(&path);
                if let Some(blob) = blob {
                    let _ = std::fs::remove_file(blob);
                }
                return Err(Failure::Other(format!(
                    "{} arrived with {got} of its {want} bytes",
                    file.path
                )));
            }
            done += got;
            out.push(path);
        }
        Ok(out)
    }

    /// Downloads one file on a worker thread while this one updates the bar and watches for
    /// Ctrl-C: hf-hub's download cannot be cancelled, so an interrupted download is left to
    /// finish (or to die with the process) in the background, writing only its `.part` file
    /// until it is complete.
    fn download(
        &self,
        file: &RemoteFile,
        phase: &mut Option<Phase>,
        before: u64,
    ) -> Result<PathBuf, Failure> {
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = ByteCounter(bytes.clone());
        let repo = self.api.repo(self.repo.clone());
        let name = file.path.clone();
        let worker = std::thread::Builder::new()
            .name("hub-download".into())
            .spawn(move || repo.download_with_progress(&name, counter))
            .map_err(|e| Failure::Other(format!("cannot start a download thread: {e}")))?;
        while !worker.is_finished() {
            if crate::interrupt::requested() {
                return Err(Failure::Interrupted);
            }
            if let Some(phase) = phase.as_mut() {
                phase.set(before + bytes.load(Ordering::Relaxed));
            }
            std::thread::sleep(POLL);
        }
        worker
            .join()
            .map_err(|_| Failure::Other(format!("the download of {} panicked", file.path)))?
            .map_err(|e| Failure::from_api(e, &file.path))
    }
}

/// hf-hub's progress callbacks, counted into an atomic the polling thread reads.
struct ByteCounter(Arc<AtomicU64>);

impl hf_hub::api::Progress for ByteCounter {
    fn init(&mut self, _size: usize, _filename: &str) {
        // A resumed download reports the bytes it already has through `update`; start over.
        self.0.store(0, Ordering::Relaxed);
    }

    fn update(&mut self, size: usize) {
        self.0.fetch_add(size as u64, Ordering::Relaxed);
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_from_environment_variables() {
        let s = HubSettings::from_vars(vars(&[
            ("HF_HUB_CACHE", "/c"),
            ("HF_HOME", "/h"),
            ("HF_HUB_OFFLINE", "1"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/c"));
        assert!(s.offline && s.datasets_offline);
        assert_eq!(s.token_file, Some(PathBuf::from("/h/token")));
        let s = HubSettings::from_vars(vars(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!(s.cache_dir, PathBuf::from("/h/hub"));
        assert!(!s.offline && !s.datasets_offline);
        let s = HubSettings::from_vars(vars(&[
            ("HOME", "/root"),
            ("HF_ENDPOINT", "http://mirror/"),
            ("HF_TOKEN", "hf_x"),
            ("HF_DATASETS_OFFLINE", "yes"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/root/.cache/huggingface/hub"));
        assert_eq!(s.endpoint(), "http://mirror");
        assert_eq!(s.resolved_token().as_deref(), Some("hf_x"));
        assert!(!s.offline && s.datasets_offline);
        assert!(!format!("{s:?}").contains("hf_x"));
        let s = HubSettings::from_vars(vars(&[("TRANSFORMERS_OFFLINE", "TRUE")]));
        assert!(s.offline);
        assert_eq!(s.endpoint(), DEFAULT_ENDPOINT);
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_order() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            HubSettings::from_vars(vars(pairs)).cache_dir
        };
        assert_eq!(
            with(&[("HUGGINGFACE_HUB_CACHE", "/o"), ("HF_HOME", "/h")]),
            PathBuf::from("/o")
        );
        assert_eq!(
            with(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/u")]),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            with(&[("HOME", "/u")]),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
    }

    #[test]
    fn token_file_is_read_when_no_variable_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "hf_file\n").unwrap();
        let mut s = HubSettings::cache_only(dir.path());
        assert_eq!(s.resolved_token(), None);
        s.token_file = Some(file);
        assert_eq!(s.resolved_token().as_deref(), Some("hf_file"));
        s.token = Some("hf_var".into());
        assert_eq!(s.resolved_token().as_deref(), Some("hf_var"));
    }

    #[test]
    fn repo_ids_follow_huggingface_hub() {
        for ok in ["org/name", "imdb", "a-b/c.d_e", "EleutherAI/pythia-14m"] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "./x", "a/b/c", "/abs", "x y", "a--b/c", "a/b..c", "-a/b", "a/b.", "", "a/",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn cache_layout_names() {
        let cache = Path::new("/c");
        assert_eq!(
            repo_folder(cache, RepoKind::Dataset, "org/name"),
            PathBuf::from("/c/datasets--org--name")
        );
        assert_eq!(
            repo_folder(cache, RepoKind::Model, "gpt2"),
            PathBuf::from("/c/models--gpt2")
        );
    }
}
