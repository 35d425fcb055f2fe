//! `bergson trak` against Python Bergson 2.5.1's own runs
//! (tests/fixtures/scripts/make_trak_refs.py): a single model, a 2-checkpoint ensemble, and a
//! seeded single run with the Gram on 8 documents and a mean-aggregated query.
//!
//! Our binary reruns every case of the manifest with the same flags and must give, for the
//! final `scores/` and for every ensemble member's (`checkpoint_<i>/`):
//! * the scores: every column within 1e-4 of its max |value|, the same rows written;
//! * `trak_weights.npy` (`1 - p_i`) within 1e-6 and `trak_scale.npy` within 1e-4 relative;
//! * the joint Gram `train_hessian/hessians.pth` within 1e-4 of its max |entry|;
//! * the run's `config.yaml` steps equal to Bergson's (paths aside).

mod common;

use std::path::{Path, PathBuf};

use bergson::index::hessian_store::read_dense;
use bergson::recipes::trak::scores::read_npy;
use common::{bergson, compare_score_stores, fixtures, repo_root};
use serde_json::Value as Json;
use tch::Kind;

const RTOL: f64 = 1e-4;

struct Case {
    name: String,
    path: String,
    args: Vec<String>,
    members: usize,
}

fn refs() -> PathBuf {
    fixtures().join("bergson_trak")
}

fn manifest() -> (Vec<String>, Vec<Case>) {
    let m = common::read_json(&refs().join("manifest.json"));
    let cases = m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            path: c["path"].as_str().unwrap().to_string(),
            args: common::json_strings(&c["args"]),
            members: c["members"].as_u64().unwrap() as usize,
        })
        .collect();
    (common::json_strings(&m["path_flags"]), cases)
}

/// Flags with repository paths made absolute (`--checkpoints` takes several).
fn absolute(args: &[String], path_flags: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_paths = false;
    for a in args {
        if a.starts_with("--") {
            in_paths = path_flags.contains(a);
            out.push(a.clone());
        } else if in_paths {
            out.push(repo_root().join(a).to_string_lossy().into_owned());
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Max |ours − theirs| / max |theirs| of two `.npy` files.
fn compare_npy(ours: &Path, theirs: &Path) -> Result<f64, String> {
    let a = read_npy(ours).map_err(|e| e.to_string())?;
    let b = read_npy(theirs).expect("reference .npy");
    if a.len() != b.len() {
        return Err(format!("{} values vs {}", a.len(), b.len()));
    }
    let scale = b.iter().map(|v| v.abs()).fold(1e-300, f64::max);
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max))
}

/// Max |ours − theirs| / max |theirs| of the joint Grams.
fn compare_gram(ours: &Path, theirs: &Path) -> Result<f64, String> {
    let joint = |dir: &Path| -> Result<tch::Tensor, String> {
        let d = read_dense(dir).map_err(|e| e.to_string())?;
        d.hessians
            .into_iter()
            .find(|(k, _)| k == "joint")
            .map(|(_, h)| h.to_kind(Kind::Double))
            .ok_or_else(|| format!("{} has no joint Gram", dir.display()))
    };
    let (a, b) = (joint(ours)?, joint(theirs).expect("reference Gram"));
    if a.size() != b.size() {
        return Err(format!("shape {:?} vs {:?}", a.size(), b.size()));
    }
    let scale = b.abs().max().double_value(&[]);
    Ok((a - &b).abs().max().double_value(&[]) / scale)
}

/// Every comparison of one score directory and (for a member) its Gram; failures collected.
fn check_member(case: &str, ours: &Path, theirs: &Path, gram: bool, failures: &mut Vec<String>) {
    let mut check = |what: &str, got: Result<f64, String>, tol: f64| match got {
        Ok(e) if e <= tol => eprintln!("  {case} {what}: {e:.2e}"),
        Ok(e) => failures.push(format!("{case} {what}: error {e:.3e} > {tol:e}")),
        Err(e) => failures.push(format!("{case} {what}: {e}")),
    };
    let (s, r) = (ours.join("scores"), theirs.join("scores"));
    check(
        "scores",
        compare_score_stores(&s, &r).map(|(worst, _)| worst),
        RTOL,
    );
    check(
        "trak_weights",
        compare_npy(&s.join("trak_weights.npy"), &r.join("trak_weights.npy")),
        1e-6,
    );
    check(
        "trak_scale",
        compare_npy(&s.join("trak_scale.npy"), &r.join("trak_scale.npy")),
        RTOL,
    );
    if gram {
        check(
            "Gram",
            compare_gram(&ours.join("train_hessian"), &theirs.join("train_hessian")),
            RTOL,
        );
    }
}

/// The `steps` of a run's config.yaml with `run` replaced by `<run>` and the repository
/// prefix dropped from paths.
fn config_steps(dir: &Path, run: &str) -> Json {
    fn normalise(v: Json, run: &str, root: &str) -> Json {
        match v {
            Json::String(s) => {
                let s = s.replace(run, "<run>");
                Json::String(s.strip_prefix(root).unwrap_or(&s).to_string())
            }
            Json::Array(a) => Json::Array(a.into_iter().map(|v| normalise(v, run, root)).collect()),
            Json::Object(o) => Json::Object(
                o.into_iter()
                    .map(|(k, v)| (k, normalise(v, run, root)))
                    .collect(),
            ),
            other => other,
        }
    }
    let text = std::fs::read_to_string(dir.join("config.yaml")).expect("config.yaml");
    let doc: Json = serde_saphyr::from_str(&text).expect("config.yaml is YAML");
    assert!(
        doc["steps"][0]["trak"]["trak_cfg"].is_object(),
        "{}: no trak step",
        dir.display()
    );
    let root = format!("{}/", repo_root().display());
    normalise(doc["steps"].clone(), run, &root)
}

#[test]
fn trak_matches_bergson_2_5_1() {
    let (path_flags, cases) = manifest();
    assert!(
        cases.len() >= 2,
        "the manifest has the single and ensemble cases"
    );
    assert!(cases.iter().any(|c| c.members == 2));
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let ours = tmp.path().join(&case.name);
        let out = bergson()
            .env("OMP_NUM_THREADS", "1")
            .arg("trak")
            .arg(&ours)
            .args(absolute(&case.args, &path_flags))
            .arg("--quiet")
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}: bergson trak failed: {}",
                case.name,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let theirs = repo_root().join(&case.path);
        let ours_config = config_steps(&ours, &ours.to_string_lossy());
        if ours_config != config_steps(&theirs, &case.path) {
            failures.push(format!(
                "{}: config.yaml steps differ from Bergson's: {ours_config}",
                case.name
            ));
        }
        if case.members == 0 {
            check_member(&case.name, &ours, &theirs, true, &mut failures);
        } else {
            check_member(&case.name, &ours, &theirs, false, &mut failures);
            for i in 0..case.members {
                let m = format!("checkpoint_{i}");
                check_member(
                    &format!("{}/{m}", case.name),
                    &ours.join(&m),
                    &theirs.join(&m),
                    true,
                    &mut failures,
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
