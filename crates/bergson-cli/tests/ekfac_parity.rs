//! `bergson ekfac` and `bergson lissa` against Python Bergson 2.5.1's own pipeline runs
//! (tests/fixtures/scripts/make_ekfac_refs.py): each case of the manifest is rerun by our
//! binary with the same flags, and must give
//! * the preconditioned query (`<method>_query/`: `H^-1 G`, projected per module or globally
//!   when the case projects; `astra_query/`: its ASTRA refinement; `lissa_query/`: the LiSSA
//!   estimates; the random training batches of both replay Bergson's seeded draws): the same
//!   modules and widths, every row within 1e-4 of the row's max |value|;
//! * the scores (`scores/`): every column within 1e-4 of the column's max |value|;
//! * a case Bergson refuses: exit status 2, one line on stderr, no scores.
//!
//! The fits use the dataset's labels (Bergson's sampled labels cannot be replayed), so the
//! whole pipeline is deterministic on both sides.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use bergson::index::score_store::ScoreStore;
use bergson::index::GradientIndex;
use serde_json::Value as Json;
use tch::Kind;

const RTOL: f64 = 1e-4;

fn refs() -> PathBuf {
    common::fixtures().join("bergson_ekfac")
}

struct Case {
    command: String,
    path: String,
    args: Vec<String>,
    error: Option<String>,
}

fn manifest() -> (Vec<String>, Vec<Case>) {
    let m = common::read_json(&refs().join("manifest.json"));
    let cases = m["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| Case {
            command: s["command"].as_str().unwrap().to_string(),
            path: s["path"].as_str().unwrap().to_string(),
            args: common::json_strings(&s["args"]),
            error: s.get("error").and_then(Json::as_str).map(str::to_string),
        })
        .collect();
    (common::json_strings(&m["path_flags"]), cases)
}

fn case(name: &str) -> (Vec<String>, Case) {
    let (path_flags, cases) = manifest();
    let case = cases
        .into_iter()
        .find(|c| Path::new(&c.path).file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("no case {name} in the manifest"));
    (path_flags, case)
}

/// Flags with repository paths made absolute.
fn absolute(args: &[String], path_flags: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if path_flags.contains(a) {
            let v = it.next().expect("a path flag has a value");
            out.push(common::repo_root().join(v).to_string_lossy().into_owned());
        }
    }
    out
}

/// Max over columns of max |ours − theirs| / max |theirs| in the column.
fn compare_scores(ours: &Path, theirs: &Path) -> Result<f64, String> {
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
    let mut worst = 0f64;
    for c in 0..b.num_scores() {
        let (x, y) = (a.column(c), b.column(c));
        let scale = y
            .iter()
            .flatten()
            .map(|v| v.abs() as f64)
            .fold(1e-30, f64::max);
        for (r, (p, q)) in x.iter().zip(&y).enumerate() {
            match (p, q) {
                (Some(p), Some(q)) => worst = worst.max((*p as f64 - *q as f64).abs() / scale),
                (None, None) => {}
                _ => return Err(format!("row {r} column {c}: written differs")),
            }
        }
    }
    Ok(worst)
}

/// Max over rows of max |ours − theirs| / max |theirs| in the row; same modules and widths.
fn compare_rows(ours: &Path, theirs: &Path) -> Result<f64, String> {
    let a = GradientIndex::open(ours).map_err(|e| e.to_string())?;
    let b = GradientIndex::open(theirs).expect("reference index");
    if a.info.grad_sizes != b.info.grad_sizes || a.num_rows() != b.num_rows() {
        return Err(format!(
            "modules {:?} x {} rows vs {:?} x {}",
            a.info.grad_sizes,
            a.num_rows(),
            b.info.grad_sizes,
            b.num_rows()
        ));
    }
    let x = a.rows(0..a.num_rows()).unwrap().to_kind(Kind::Double);
    let y = b.rows(0..b.num_rows()).unwrap().to_kind(Kind::Double);
    let scale = y.abs().amax([1i64].as_slice(), true).clamp_min(1e-30);
    Ok(((x - &y).abs() / scale).max().double_value(&[]))
}

/// Runs our `bergson <command>` into `run` with case `case`'s command and flags plus `extra`.
fn run_case(run: &Path, case: &Case, path_flags: &[String], extra: &[&str]) -> Output {
    common::bergson()
        .arg(&case.command)
        .arg(run)
        .args(absolute(&case.args, path_flags))
        .args(["--num_threads", "1", "--quiet"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run bergson")
}

/// Compares our steps in `run` with the reference run of `case`; returns how many.
fn compare_steps(name: &str, run: &Path, case: &Case) -> usize {
    let theirs = common::repo_root().join(&case.path);
    let mut compared = 0;
    for entry in std::fs::read_dir(&theirs).unwrap() {
        let step = entry.unwrap().file_name().to_string_lossy().into_owned();
        let result = if step == "scores" {
            compare_scores(&run.join(&step), &theirs.join(&step))
        } else if step.ends_with("_query") {
            compare_rows(&run.join(&step), &theirs.join(&step))
        } else {
            continue;
        };
        compared += 1;
        match result {
            Ok(err) => {
                eprintln!("{name} {step:12} max relative error {err:.2e}");
                assert!(
                    err <= RTOL,
                    "{name} {step}: max relative error {err:.2e} > {RTOL}"
                );
            }
            Err(e) => panic!("{name} {step}: {e}"),
        }
    }
    compared
}

/// Reruns case `name` and compares every step Bergson's run kept.
fn check(name: &str) {
    let (path_flags, case) = case(name);
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join(name);
    let out = run_case(&run, &case, &path_flags, &[]);
    if let Some(theirs) = &case.error {
        eprintln!("Bergson refuses {name}: {theirs}");
        common::assert_one_line_error(&out, &[]);
        assert!(!run.join("scores").exists(), "{name}: scores written");
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed: {stderr}");
    let compared = compare_steps(name, &run, &case);
    assert!(
        compared >= 2,
        "{name}: the reference has no query and scores"
    );
}

#[test]
fn ekfac_with_eigenvalue_correction_per_query() {
    check("ekfac");
}

#[test]
fn kfac_query_projected_per_module() {
    check("kfac_p4");
}

#[test]
fn kfac_query_projected_globally_with_a_seed() {
    check("kfac_global");
}

#[test]
fn ekfac_mean_query_pseudoinverse() {
    check("ekfac_mean");
}

#[test]
fn kfac_factored_tikhonov_summed_query() {
    check("kfac_tikhonov_sum");
}

#[test]
fn refused_as_by_bergson() {
    for name in ["unit_normalize", "ev_projected", "tikhonov_with_ev"] {
        let (_, c) = case(name);
        assert!(c.error.is_some(), "{name}: Bergson accepted it");
        check(name);
    }
}

#[test]
fn resume_keeps_finished_steps_and_redoes_the_rest() {
    let (path_flags, case) = case("kfac_p4");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_case(&run, &case, &path_flags, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fitted = run.join("hessian/kfac/total_processed.pt");
    let modified = || std::fs::metadata(&fitted).unwrap().modified().unwrap();
    let before = modified();
    // A finished step is refused without --resume (or --overwrite), as by Bergson.
    let again = run_case(&run, &case, &path_flags, &[]);
    common::assert_one_line_error(&again, &["--resume", "query"]);
    // An interrupted pipeline: the preconditioned query and the scores are gone.
    std::fs::remove_dir_all(run.join("kfac_query")).unwrap();
    std::fs::remove_dir_all(run.join("scores")).unwrap();
    let out = run_case(&run, &case, &path_flags, &["--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(modified(), before, "the finished fit was redone");
    assert_eq!(compare_steps("kfac_p4 resumed", &run, &case), 2);
}

#[test]
fn lissa_per_query() {
    check("lissa");
}

#[test]
fn lissa_mean_query_with_bias_and_mean_loss() {
    check("lissa_mean_bias");
}

#[test]
fn lissa_refuses_a_projection_as_bergson_does() {
    let (_, c) = case("lissa_projected");
    assert!(c.error.is_some(), "Bergson accepted it");
    check("lissa_projected");
}

#[test]
fn astra_conjugate_gradients_on_ekfac() {
    check("astra_cg");
}

#[test]
fn astra_momentum_sgd_with_decay_on_kfac() {
    check("astra_sgd");
}

#[test]
fn kfac_mean_query_minus_a_contrast_set() {
    check("kfac_contrast");
}

#[test]
fn an_existing_query_index_replaces_step_one() {
    let (path_flags, case) = case("ekfac");
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let out = run_case(&first, &case, &path_flags, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let query = first.join("query");
    let second = tmp.path().join("second");
    let out = run_case(
        &second,
        &case,
        &path_flags,
        &["--path", query.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!second.join("query").exists(), "the query was built again");
    assert_eq!(compare_steps("ekfac --path", &second, &case), 2);
}
