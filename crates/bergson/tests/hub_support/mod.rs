//! A local stand-in for the Hugging Face hub: an HTTP server on 127.0.0.1 serving repositories
//! from directories through the endpoints `hf-hub` and `huggingface_hub` use, so that download
//! tests never touch the network (point `HF_ENDPOINT` at [`StandIn::endpoint`]):
//! - `GET /api/{models,datasets}/{id}[/revision/{rev}][?blobs=true]`: the listing (`sha`,
//!   `siblings` with `rfilename`, and `size` with `blobs=true`);
//! - `GET /api/{models,datasets}/{id}/tree/{rev}[/{path}][?recursive=true]`: a folder's entries;
//! - `POST /api/{models,datasets}/{id}/paths-info/{rev}`: entries for `paths=` form fields;
//! - `GET|HEAD /[datasets/]{id}/resolve/{rev}/{path}`: a file, with `x-repo-commit`, `etag`,
//!   `content-length` and `Range` support (206 + `content-range`).
//!
//! Unknown repositories answer 404 with `x-error-code: RepoNotFound`, unknown files 404 with
//! `EntryNotFound`, as the hub does. Every request is logged; file bodies can be slowed down.
//! Shared by the library's and the CLI's tests (`#[path]` include).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// The repository folder of the tests' fixture hub (`tests/fixtures/hub`).
pub fn hub_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hub")
}

/// A fixture model directory (`tests/fixtures/models/<name>`).
pub fn model_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// One repository the stand-in serves.
struct Repository {
    sha: String,
    /// path -> bytes, every file of the directory (hidden ones too, as a git repo has them).
    files: BTreeMap<String, Vec<u8>>,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `GET`, `HEAD` or `POST`.
    pub method: String,
    /// The path and query.
    pub target: String,
    /// The `Range` header, when sent.
    pub range: Option<String>,
}

struct State {
    /// `(kind, id)` -> repository; kind is `models` or `datasets`.
    repos: BTreeMap<(String, String), Repository>,
    log: Mutex<Vec<Logged>>,
    /// Bytes per second for file bodies (0 = unlimited).
    rate: AtomicU64,
    /// Bodies started (GETs of a file beyond the first byte).
    bodies_started: AtomicU64,
    /// Files are served cut to this many bytes (0 = whole), the listing still giving their
    /// full size: a hub whose answers disagree.
    cut_files_to: AtomicU64,
    stop: AtomicBool,
}

/// A running stand-in hub; stops when dropped.
pub struct StandIn {
    addr: std::net::SocketAddr,
    state: Arc<State>,
}

impl StandIn {
    /// Serves `repos`: `(kind, id, directory)` with kind `models` or `datasets`.
    pub fn start(repos: &[(&str, &str, &Path)]) -> Self {
        let repos = repos
            .iter()
            .map(|(kind, id, dir)| ((kind.to_string(), id.to_string()), load_repository(dir)))
            .collect();
        let state = Arc::new(State {
            repos,
            log: Mutex::new(Vec::new()),
            rate: AtomicU64::new(0),
            bodies_started: AtomicU64::new(0),
            cut_files_to: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in hub");
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        StandIn { addr, state }
    }

    /// The URL to put in `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The commit every revision of repository `(kind, id)` points at.
    pub fn sha(&self, kind: &str, id: &str) -> String {
        self.state.repos[&(kind.to_string(), id.to_string())]
            .sha
            .clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// The repository files whose contents were sent (GETs of a file, other than the one-byte
    /// metadata probe), in order, as `path` (or `path@<range>` for a resumed download).
    pub fn downloads(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.range.as_deref() != Some("bytes=0-0"))
            .filter_map(|r| {
                let path = r.target.split('?').next()?;
                let (_, rest) = path.split_once("/resolve/")?;
                let (_, file) = rest.split_once('/')?;
                Some(match r.range.as_deref() {
                    None | Some("bytes=0-") => file.to_string(),
                    Some(range) => format!("{file}@{range}"),
                })
            })
            .collect()
    }

    /// Forgets the logged requests.
    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Sends file bodies at `bytes_per_second` (0: as fast as possible).
    pub fn throttle(&self, bytes_per_second: u64) {
        self.state.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// Serves every file cut to `bytes` bytes (0: whole) while listing its full size.
    pub fn cut_files_to(&self, bytes: u64) {
        self.state.cut_files_to.store(bytes, Ordering::SeqCst);
    }

    /// How many file bodies have started to be sent.
    pub fn bodies_started(&self) -> u64 {
        self.state.bodies_started.load(Ordering::SeqCst)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and closes the listener.
        let _ = TcpStream::connect(self.addr);
    }
}

fn load_repository(dir: &Path) -> Repository {
    let mut files = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            if entry.path().is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else {
                files.insert(rel, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    let mut summary = Vec::new();
    for (path, bytes) in &files {
        summary.extend_from_slice(path.as_bytes());
        summary.extend_from_slice(&fnv(bytes).to_le_bytes());
    }
    let sha = format!(
        "{:016x}{:016x}{:08x}",
        fnv(&summary),
        fnv(&[&summary[..], b"2"].concat()),
        fnv(&[&summary[..], b"3"].concat()) as u32
    );
    Repository { sha, files }
}

/// FNV-1a, 64 bits: a stable content hash for commits and etags.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn etag(bytes: &[u8]) -> String {
    format!("{:016x}{:016x}", fnv(bytes), fnv(&[bytes, b"x"].concat()))
}

/// What a request asked for.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        target,
        headers,
        body,
    })
}

/// A response about to be written.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the body is a file's (and may be throttled).
    file_body: bool,
}

impl Response {
    fn json(status: u16, value: &Value) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap(),
            file_body: false,
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut r = Response::json(status, &json!({ "error": message }));
        r.headers.push(("x-error-code".into(), code.into()));
        r.headers.push(("x-error-message".into(), message.into()));
        r
    }
}

fn serve(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let request = read_request(&stream)?;
    state.log.lock().unwrap().push(Logged {
        method: request.method.clone(),
        target: request.target.clone(),
        range: request.header("range").map(str::to_string),
    });
    let response = route(&request, state);
    let reason = match response.status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\ncontent-length: {}\r\n",
        response.status,
        response.body.len()
    );
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if request.method == "HEAD" {
        return stream.flush();
    }
    let rate = state.rate.load(Ordering::SeqCst);
    if response.file_body && response.body.len() > 1 {
        state.bodies_started.fetch_add(1, Ordering::SeqCst);
    }
    if response.file_body && rate > 0 {
        // Ten chunks a second at the set rate.
        let chunk = (rate / 10).max(1) as usize;
        for piece in response.body.chunks(chunk) {
            stream.write_all(piece)?;
            stream.flush()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(request: &Request, state: &State) -> Response {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    let query: Vec<(String, String)> = query
        .split('&')
        .filter(|q| !q.is_empty())
        .map(|q| {
            let (k, v) = q.split_once('=').unwrap_or((q, ""));
            (decode(k), decode(v))
        })
        .collect();
    let flag = |name: &str| {
        query
            .iter()
            .any(|(k, v)| k == name && matches!(v.to_ascii_lowercase().as_str(), "true" | "1"))
    };
    if let Some(rest) = path.strip_prefix("/api/") {
        let Some((kind, rest)) = rest.split_once('/') else {
            return Response::error(404, "NotFound", "no such endpoint");
        };
        for action in ["revision", "tree", "paths-info"] {
            let marker = format!("/{action}/");
            let Some(at) = rest.find(&marker) else {
                continue;
            };
            let id = decode(&rest[..at]);
            let tail = decode(&rest[at + marker.len()..]);
            let Some(repo) = state.repos.get(&(kind.to_string(), id.clone())) else {
                return Response::error(404, "RepoNotFound", "Repository not found");
            };
            let (rev, sub) = tail.split_once('/').unwrap_or((tail.as_str(), ""));
            if rev != "main" && rev != repo.sha {
                return Response::error(404, "RevisionNotFound", "Invalid rev id");
            }
            return match action {
                "revision" => listing(&id, repo, flag("blobs")),
                "tree" => tree(repo, sub.trim_end_matches('/'), flag("recursive")),
                _ => paths_info(repo, &request.body),
            };
        }
        // `/api/{kind}/{id}`: the listing at the default branch.
        return match state.repos.get(&(kind.to_string(), decode(rest))) {
            Some(repo) => listing(&decode(rest), repo, flag("blobs")),
            None => Response::error(404, "RepoNotFound", "Repository not found"),
        };
    }
    // /{datasets/}?{id}/resolve/{rev}/{file}
    let Some((repo_part, rest)) = path.split_once("/resolve/") else {
        return Response::error(404, "NotFound", "no such endpoint");
    };
    let repo_part = repo_part.trim_start_matches('/');
    let (kind, id) = match repo_part.strip_prefix("datasets/") {
        Some(id) => ("datasets", decode(id)),
        None => ("models", decode(repo_part)),
    };
    let Some(repo) = state.repos.get(&(kind.to_string(), id)) else {
        return Response::error(404, "RepoNotFound", "Repository not found");
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return Response::error(404, "EntryNotFound", "no file named");
    };
    let rev = decode(rev);
    if rev != "main" && rev != repo.sha {
        return Response::error(404, "RevisionNotFound", "Invalid rev id");
    }
    let Some(bytes) = repo.files.get(&decode(file)) else {
        return Response::error(404, "EntryNotFound", "Entry not found");
    };
    let cut = state.cut_files_to.load(Ordering::SeqCst) as usize;
    let bytes = if cut > 0 {
        &bytes[..cut.min(bytes.len())]
    } else {
        &bytes[..]
    };
    file_response(repo, bytes, request.header("range"))
}

fn file_response(repo: &Repository, bytes: &[u8], range: Option<&str>) -> Response {
    let total = bytes.len();
    let mut headers = vec![
        ("x-repo-commit".to_string(), repo.sha.clone()),
        ("etag".to_string(), format!("\"{}\"", etag(bytes))),
        ("accept-ranges".to_string(), "bytes".to_string()),
        (
            "content-type".to_string(),
            "application/octet-stream".to_string(),
        ),
    ];
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Response {
            status: 200,
            headers,
            body: bytes.to_vec(),
            file_body: true,
        };
    };
    let (from, to) = spec.split_once('-').unwrap_or((spec, ""));
    let from: usize = from.parse().unwrap_or(0);
    let to: usize = to
        .parse()
        .map(|t: usize| t.min(total.saturating_sub(1)))
        .unwrap_or(total.saturating_sub(1));
    if from >= total || from > to {
        headers.push(("content-range".into(), format!("bytes */{total}")));
        return Response {
            status: 416,
            headers,
            body: Vec::new(),
            file_body: false,
        };
    }
    headers.push(("content-range".into(), format!("bytes {from}-{to}/{total}")));
    Response {
        status: 206,
        headers,
        body: bytes[from..=to].to_vec(),
        file_body: true,
    }
}

fn listing(id: &str, repo: &Repository, blobs: bool) -> Response {
    let siblings: Vec<Value> = repo
        .files
        .iter()
        .map(|(path, bytes)| {
            if blobs {
                json!({ "rfilename": path, "size": bytes.len(), "blobId": etag(bytes) })
            } else {
                json!({ "rfilename": path })
            }
        })
        .collect();
    let (author, _) = id.split_once('/').unwrap_or(("", id));
    Response::json(
        200,
        &json!({
            "_id": format!("{:024x}", fnv(id.as_bytes()) as u128),
            "id": id,
            "author": author,
            "sha": repo.sha,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "private": false,
            "gated": false,
            "disabled": false,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": {},
            "siblings": siblings,
        }),
    )
}

fn file_entry(path: &str, bytes: &[u8]) -> Value {
    json!({ "type": "file", "oid": etag(bytes), "size": bytes.len(), "path": path })
}

fn dir_entry(path: &str) -> Value {
    json!({ "type": "directory", "oid": format!("{:040x}", fnv(path.as_bytes()) as u128), "size": 0, "path": path })
}

/// The entries under folder `sub` (`""`: the root): its direct children, or with `recursive`
/// everything below it (folders included).
fn tree(repo: &Repository, sub: &str, recursive: bool) -> Response {
    let prefix = if sub.is_empty() {
        String::new()
    } else {
        format!("{sub}/")
    };
    if !sub.is_empty() && !repo.files.keys().any(|p| p.starts_with(&prefix)) {
        return Response::error(404, "EntryNotFound", "Entry not found");
    }
    let mut dirs: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    for (path, bytes) in &repo.files {
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        for depth in 1..parts.len() {
            if depth > 1 && !recursive {
                break;
            }
            let dir = format!("{prefix}{}", parts[..depth].join("/"));
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        if recursive || parts.len() == 1 {
            entries.push(file_entry(path, bytes));
        }
    }
    let mut out: Vec<Value> = dirs.iter().map(|d| dir_entry(d)).collect();
    out.extend(entries);
    Response::json(200, &Value::Array(out))
}

/// `paths-info`: the entries for the `paths` form fields (files, or folders).
fn paths_info(repo: &Repository, body: &[u8]) -> Response {
    let body = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    // The body is a form (`paths=a&paths=b&expand=...`) or JSON (`{"paths": [...]}`).
    let paths: Vec<String> = match serde_json::from_str::<Value>(&body) {
        Ok(v) => v["paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| decode(k) == "paths")
            .map(|(_, v)| decode(v))
            .collect(),
    };
    for path in paths {
        let path = path.trim_matches('/').to_string();
        if let Some(bytes) = repo.files.get(&path) {
            out.push(file_entry(&path, bytes));
        } else if path.is_empty()
            || repo
                .files
                .keys()
                .any(|p| p.starts_with(&format!("{path}/")))
        {
            out.push(dir_entry(&path));
        }
    }
    Response::json(200, &Value::Array(out))
}
