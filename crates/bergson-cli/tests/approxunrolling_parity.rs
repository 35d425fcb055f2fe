//! `bergson approxunrolling` (SOURCE) against Python Bergson 2.5.1's own runs
//! (tests/fixtures/scripts/make_approxunrolling_refs.py) on four tiny GPT-NeoX checkpoints:
//! each case of the manifest is rerun by our binary with the same flags, and must give
//! * every checkpoint's scores of every segment (`segment_<l>/scores_ckpt_<c>/`, the training
//!   data against the segment's `F_segment`-transformed query) and the summed SOURCE scores
//!   (`scores/`): every column within 1e-4 of the column's max |value|;
//! * a case Bergson refuses: exit status 2, one line on stderr, no scores.
//!
//! The fits use the dataset's labels (Bergson's sampled labels cannot be replayed), so both
//! sides are deterministic.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

const RTOL: f64 = 1e-4;

fn refs() -> PathBuf {
    common::fixtures().join("bergson_approxunrolling")
}

struct Case {
    path: String,
    args: Vec<String>,
    error: Option<String>,
}

fn case(name: &str) -> (Vec<String>, Case) {
    let m = common::read_json(&refs().join("manifest.json"));
    let case = m["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| Case {
            path: s["path"].as_str().unwrap().to_string(),
            args: common::json_strings(&s["args"]),
            error: s.get("error").and_then(Json::as_str).map(str::to_string),
        })
        .find(|c| Path::new(&c.path).file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("no case {name} in the manifest"));
    (common::json_strings(&m["path_flags"]), case)
}

/// Flags with repository paths made absolute (every value after a path flag up to the next
/// flag: `--checkpoints` takes several).
fn absolute(args: &[String], path_flags: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_path = false;
    for a in args {
        if a.starts_with("--") {
            in_path = path_flags.contains(a);
            out.push(a.clone());
        } else if in_path {
            out.push(common::repo_root().join(a).to_string_lossy().into_owned());
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Runs case `name` into a fresh directory and compares every score store of the reference.
fn check(name: &str) {
    let (path_flags, case) = case(name);
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join(name);
    let out = common::bergson()
        .arg("approxunrolling")
        .arg(&run)
        .args(absolute(&case.args, &path_flags))
        .args(["--num_threads", "1", "--quiet"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run bergson");
    if let Some(err) = &case.error {
        common::assert_one_line_error(&out, &[]);
        eprintln!("Bergson: {err}");
        assert!(!run.join("scores").exists());
        return;
    }
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = common::repo_root().join(&case.path);
    let mut stores = vec![PathBuf::from("scores")];
    for seg in std::fs::read_dir(&theirs).unwrap() {
        let seg = seg.unwrap().path();
        if !seg.is_dir() || seg.file_name().unwrap() == "scores" {
            continue;
        }
        for s in std::fs::read_dir(&seg).unwrap() {
            let s = s.unwrap().path();
            stores.push(s.strip_prefix(&theirs).unwrap().to_path_buf());
        }
    }
    assert!(
        stores.len() > 2,
        "{name}: the reference has per-checkpoint scores"
    );
    for rel in &stores {
        let (err, _) = common::compare_score_stores(&run.join(rel), &theirs.join(rel))
            .unwrap_or_else(|e| panic!("{name}/{}: {e}", rel.display()));
        eprintln!(
            "{name}/{}: max error {err:.2e} of the column's max",
            rel.display()
        );
        assert!(err <= RTOL, "{name}/{}: {err:.2e}", rel.display());
    }
}

#[test]
fn source_with_two_segments_and_the_lr_history() {
    check("source");
}

#[test]
fn source_with_explicit_lrs_momentum_and_a_mean_query() {
    check("source_momentum");
}

#[test]
fn source_adam_preconditioned() {
    check("source_adam");
}

#[test]
fn source_with_one_segment() {
    check("source_one_segment");
}

#[test]
fn segments_not_dividing_the_checkpoints_are_refused() {
    check("segments_not_dividing");
}

#[test]
fn source_per_token_scores_one_query_per_pass() {
    check("source_tokens");
}
