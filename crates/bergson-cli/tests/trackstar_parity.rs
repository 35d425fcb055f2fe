//! `bergson trackstar` against Python Bergson 2.5.1's own runs
//! (tests/fixtures/scripts/make_trackstar_refs.py, fixtures in tests/fixtures/bergson_trackstar).
//!
//! Each case reruns the manifest's flags with our binary (inputs by the same relative paths,
//! the run in a scratch directory) and compares every step's output with Python's:
//! * `value_hessian/`, `query_hessian/`, `mixed_hessian/`: each module's dense Hessian within
//!   1e-4 of its max |value|, and its eigenvalues (basis-independent) within 1e-4 of the largest;
//! * `query/`: every query row within 1e-4 of its max |value|;
//! * `scores/`: every score column within 1e-4 of its max |value|;
//! * `config.yaml`: the saved `trackstar_cfg` equal to Python's, and `index_cfg` equal but for
//!   the run path.

mod common;

use std::path::Path;

use bergson::config::run_file::{read_run_file, Step};
use bergson::config::TrackstarRunConfig;
use bergson::index::hessian_store::{read_dense, DenseHessian};
use bergson::index::GradientIndex;
use serde_json::Value as Json;
use tch::Kind;

use common::compare_score_stores;

const RTOL: f64 = 1e-4;

fn refs() -> std::path::PathBuf {
    common::fixtures().join("bergson_trackstar")
}

/// The manifest's flags of `case`.
fn case_args(case: &str) -> Vec<String> {
    let text = std::fs::read_to_string(refs().join("manifest.json")).expect("manifest.json");
    let m: Json = serde_json::from_str(&text).expect("manifest is JSON");
    let entry = m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == case)
        .unwrap_or_else(|| panic!("no case {case} in the manifest"));
    assert!(entry.get("error").is_none(), "{case} is a refused case");
    entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Max over modules of max |ours − theirs| / max |theirs|, for the matrices and for the sorted
/// eigenvalues (when both sides have them).
fn compare_hessians(ours: &Path, theirs: &Path) -> (f64, f64) {
    let a = read_dense(ours).expect("our Hessian");
    let b = read_dense(theirs).expect("reference Hessian");
    let names =
        |d: &DenseHessian| -> Vec<String> { d.hessians.iter().map(|(n, _)| n.clone()).collect() };
    assert_eq!(names(&a), names(&b), "modules of {}", ours.display());
    assert!(!b.hessians.is_empty(), "reference has no modules");
    let mut worst = 0f64;
    for ((_, x), (_, y)) in a.hessians.iter().zip(&b.hessians) {
        assert_eq!(x.size(), y.size());
        let scale = y.abs().max().double_value(&[]).max(1e-30);
        worst = worst.max((x - y).abs().max().double_value(&[]) / scale);
    }
    assert_eq!(
        a.eigen.len(),
        b.eigen.len(),
        "eigendecompositions of {}",
        ours.display()
    );
    let mut worst_eig = 0f64;
    for ((n, (x, _)), (m, (y, _))) in a.eigen.iter().zip(&b.eigen) {
        assert_eq!(n, m);
        let sorted = |t: &tch::Tensor| t.to_kind(Kind::Double).sort(0, false).0;
        let (x, y) = (sorted(x), sorted(y));
        let scale = y.abs().max().double_value(&[]).max(1e-30);
        worst_eig = worst_eig.max((x - y).abs().max().double_value(&[]) / scale);
    }
    (worst, worst_eig)
}

/// Max over rows of max |ours − theirs| / max |theirs| in the row.
fn compare_rows(ours: &Path, theirs: &Path) -> f64 {
    let a = GradientIndex::open(ours).expect("our query index");
    let b = GradientIndex::open(theirs).expect("reference query index");
    assert_eq!(a.info.grad_sizes, b.info.grad_sizes, "query modules");
    assert_eq!(a.num_rows(), b.num_rows(), "query rows");
    let x = a.rows(0..a.num_rows()).unwrap().to_kind(Kind::Double);
    let y = b.rows(0..b.num_rows()).unwrap().to_kind(Kind::Double);
    let scale = y.abs().amax([1i64].as_slice(), true).clamp_min(1e-30);
    ((x - &y).abs() / scale).max().double_value(&[])
}

fn saved_config(run: &Path) -> TrackstarRunConfig {
    match read_run_file(run).expect("config.yaml").steps.as_slice() {
        [Step::Trackstar(c)] => (**c).clone(),
        other => panic!("not a trackstar config: {other:?}"),
    }
}

/// The reference run's path as Python recorded it (relative to the repository root).
fn theirs_rel(case: &str) -> String {
    format!("tests/fixtures/bergson_trackstar/runs/{case}")
}

/// A step's `config.yaml` without its metadata, with the run path replaced by `<run>`.
fn config_value(dir: &Path, run: &Path) -> Json {
    fn strip(v: &mut Json, run: &str) {
        match v {
            Json::String(s) if s.starts_with(run) => *s = s.replacen(run, "<run>", 1),
            Json::Array(a) => a.iter_mut().for_each(|v| strip(v, run)),
            Json::Object(m) => m.values_mut().for_each(|v| strip(v, run)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(dir.join("config.yaml")).expect("config.yaml");
    let mut v: Json = serde_saphyr::from_str(&text).expect("YAML");
    v.as_object_mut().unwrap().remove("metadata");
    strip(&mut v, &run.to_string_lossy());
    v
}

/// Runs `case` with our binary and compares each step with Python's run.
fn check_case(case: &str, mixed: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join(case);
    let theirs = refs().join("runs").join(case);
    let out = common::bergson()
        .arg("trackstar")
        .arg(&ours)
        .args(case_args(case))
        .args(["--quiet"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut report = vec![];
    let mut hessians = vec!["value_hessian"];
    if mixed {
        hessians.extend(["query_hessian", "mixed_hessian"]);
    } else {
        for skipped in ["query_hessian", "mixed_hessian"] {
            assert!(!ours.join(skipped).exists(), "{case}: {skipped} written");
        }
    }
    for h in hessians {
        let (matrix, eigen) = compare_hessians(&ours.join(h), &theirs.join(h));
        report.push(format!("{h} {matrix:.2e} (eigenvalues {eigen:.2e})"));
        assert!(matrix <= RTOL, "{case}/{h}: Hessian off by {matrix:e}");
        assert!(eigen <= RTOL, "{case}/{h}: eigenvalues off by {eigen:e}");
    }
    let query = compare_rows(&ours.join("query"), &theirs.join("query"));
    report.push(format!("query {query:.2e}"));
    assert!(query <= RTOL, "{case}/query: rows off by {query:e}");
    let (scores, written) =
        compare_score_stores(&ours.join("scores"), &theirs.join("scores")).unwrap();
    assert!(written > 0, "no scores compared");
    report.push(format!("scores {scores:.2e}"));
    assert!(scores <= RTOL, "{case}/scores: off by {scores:e}");
    eprintln!("{case}: {}", report.join(", "));

    for step in [
        "",
        "value_hessian",
        "query_hessian",
        "mixed_hessian",
        "query",
        "scores",
    ] {
        if !mixed && matches!(step, "query_hessian" | "mixed_hessian") {
            continue;
        }
        let (x, y) = (
            config_value(&ours.join(step), &ours),
            config_value(&theirs.join(step), Path::new(&theirs_rel(case))),
        );
        assert_eq!(x, y, "{case}: {step}/config.yaml differs from Python's");
    }
    let (mut a, mut b) = (saved_config(&ours), saved_config(&theirs));
    assert_eq!(a.trackstar_cfg, b.trackstar_cfg, "{case}: trackstar_cfg");
    a.index_cfg.run_path.clear();
    b.index_cfg.run_path.clear();
    assert_eq!(a.index_cfg, b.index_cfg, "{case}: index_cfg");
}

#[test]
fn default_mixes_query_and_value_hessians() {
    check_case("default", true);
}

#[test]
fn without_mixing_the_value_hessian_preconditions() {
    check_case("no_mix", false);
}

#[test]
fn aggregated_query_is_preconditioned_at_build_time() {
    check_case("mean_query", true);
}

#[test]
fn unit_normalize_preconditions_both_sides() {
    check_case("unit_norm", true);
}
