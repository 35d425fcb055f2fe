//! Helpers shared by the CLI's integration tests: where the repository and its fixtures are,
//! scratch copies of committed runs, the `bergson` binary, and the bad-input contract (exit
//! status 2, one `error:` line, at most one hint, never a panic). Tests that need Python
//! Bergson are `#[ignore]`d and read `BERGSON_PY` themselves.
//!
//! Each test binary includes this with `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bergson::index::score_store::ScoreStore;

pub mod ranks;

/// The `bergson` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_bergson");

/// The repository root (canonical).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// `tests/fixtures` of the repository.
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// A `bergson` command run from the repository root, never reaching the Hugging Face Hub.
pub fn bergson() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(repo_root()).env("HF_HUB_OFFLINE", "1");
    cmd
}

/// A committed JSON file (a parity fixture's manifest), parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A JSON list of strings (a case's flags).
pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// Replays the run at `run` from its `config.yaml` into `replay` (`bergson <file> --num_threads
/// 1 --quiet`, the file a copy of the config with its `run_path` rewritten) and asserts it
/// succeeded.
pub fn replay_config(run: &Path, replay: &Path) {
    let config = std::fs::read_to_string(run.join("config.yaml")).expect("config.yaml");
    let needle = format!("run_path: {}", run.display());
    assert!(config.contains(&needle), "{config}");
    let file = replay.with_extension("yaml");
    let edited = config.replace(&needle, &format!("run_path: {}", replay.display()));
    std::fs::write(&file, edited).expect("write the replay's run file");
    let out = bergson()
        .arg(&file)
        .args(["--num_threads", "1", "--quiet"])
        .output()
        .expect("run bergson");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Recursively copies `src` to `dst` (created).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create copy");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).expect("copy file");
        }
    }
}

/// The bad-input contract: exit status 2, one `error: ` line (and at most one `hint:`/`tip:`
/// line), no panic, backtrace or log noise, and every key in the message. Returns stderr.
#[track_caller]
pub fn assert_one_line_error(out: &Output, keys: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(2), "exit status; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        matches!(lines.len(), 1 | 2),
        "want one error line (+ one hint), got {} lines:\n{stderr}",
        lines.len()
    );
    assert!(lines[0].starts_with("error: "), "first line: {}", lines[0]);
    if let Some(second) = lines.get(1) {
        assert!(
            second.starts_with("hint: ") || second.starts_with("tip: "),
            "second line is neither a hint nor a tip: {second}"
        );
    }
    let lower = stderr.to_lowercase();
    for bad in ["panicked", "backtrace", "thread '"] {
        assert!(!lower.contains(bad), "stderr contains {bad:?}:\n{stderr}");
    }
    for key in keys {
        assert!(stderr.contains(key), "stderr lacks {key:?}:\n{stderr}");
    }
    stderr
}

/// Compares two score stores: the largest |ours − theirs| / max |theirs| over each column, and
/// how many entries both wrote; an error when their shapes or written entries differ.
pub fn compare_score_stores(ours: &Path, theirs: &Path) -> Result<(f64, usize), String> {
    let a = ScoreStore::open(ours).map_err(|e| e.to_string())?;
    let b = ScoreStore::open(theirs).expect("reference score store");
    if (a.num_rows(), a.num_scores()) != (b.num_rows(), b.num_scores()) {
        return Err(format!(
            "shape {}x{} vs {}x{}",
            a.num_rows(),
            a.num_scores(),
            b.num_rows(),
            b.num_scores()
        ));
    }
    let (mut worst, mut written) = (0f64, 0usize);
    for c in 0..b.num_scores() {
        let (x, y) = (a.column(c), b.column(c));
        let scale = y
            .iter()
            .flatten()
            .map(|v| v.abs() as f64)
            .fold(1e-30, f64::max);
        for (r, (p, q)) in x.iter().zip(&y).enumerate() {
            match (p, q) {
                (Some(p), Some(q)) => {
                    written += 1;
                    worst = worst.max((*p as f64 - *q as f64).abs() / scale);
                }
                (None, None) => {}
                _ => return Err(format!("row {r} column {c}: written by one side only")),
            }
        }
    }
    Ok((worst, written))
}

/// Every file of a run directory; config.yaml without the lines that name the run (its time,
/// path and process and node counts).
pub fn run_snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    snapshot_without(
        dir,
        &[
            "created:",
            "run_path:",
            "nproc_per_node:",
            "nnode:",
            "node_rank:",
        ],
    )
}

/// Every file of a run directory with its bytes; config.yaml without the lines starting with
/// one of `config_keys`.
pub fn snapshot_without(
    dir: &Path,
    config_keys: &[&str],
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            let mut bytes = std::fs::read(&p).unwrap();
            if rel == "config.yaml" {
                let text = String::from_utf8(bytes).unwrap();
                bytes = text
                    .lines()
                    .filter(|l| !config_keys.iter().any(|k| l.trim_start().starts_with(k)))
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes();
            }
            out.insert(rel, bytes);
        }
    }
    out
}

/// Two run directories hold the same files, byte for byte (config.yaml as [`run_snapshot`]).
#[track_caller]
pub fn assert_same_run(one: &Path, other: &Path) {
    let (a, b) = (run_snapshot(one), run_snapshot(other));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "file lists"
    );
    let differing: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert!(differing.is_empty(), "files differ: {differing:?}");
}
