//! `bergson recall` against Python Bergson 2.5.1's own outputs
//! (`tests/fixtures/bergson_recall`, made by `tests/fixtures/scripts/make_recall_refs.py`):
//! the generated statements and questions datasets row for row, and `recall.csv` /
//! `summary.csv` byte for byte; then the cache, `recall_generate`, and bad input.

mod common;

use std::path::Path;

use common::{assert_one_line_error, bergson, copy_dir, fixtures};
use serde_json::Value;

fn recall_fixtures() -> std::path::PathBuf {
    fixtures().join("bergson_recall")
}

/// A scratch data directory holding only the committed source lists.
fn scratch_data() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&recall_fixtures().join("data"), tmp.path());
    tmp
}

/// The rows of a `save_to_disk` dataset as JSON objects (column order kept).
fn dataset_rows(dir: &Path) -> Vec<Value> {
    let table = bergson::index::hf_dataset::read_hf_dataset(dir).unwrap();
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    w.write(&table).unwrap();
    w.finish().unwrap();
    serde_json::from_slice(&w.into_inner()).unwrap()
}

fn case_args(name: &str) -> (Vec<String>, Value) {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(recall_fixtures().join("cases.json")).unwrap(),
    )
    .unwrap();
    let c = cases[name].clone();
    let args = vec![
        "--num_people".to_string(),
        c["num_people"].to_string(),
        "--seed".into(),
        c["seed"].to_string(),
        "--single_paraphrase".into(),
        c["single_paraphrase"].to_string(),
        "--k".into(),
        c["k"].to_string(),
    ];
    (args, c)
}

fn run_case(name: &str, data: &Path, out: &Path) -> std::process::Output {
    let (args, _) = case_args(name);
    bergson()
        .arg("recall")
        .arg(out)
        .arg("--scores")
        .arg(recall_fixtures().join(name).join("scores"))
        .arg("--data_dir")
        .arg(data)
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap()
}

fn check_case(name: &str) {
    let data = scratch_data();
    let out = tempfile::tempdir().unwrap();
    let run = run_case(name, data.path(), out.path());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (_, c) = case_args(name);
    let suffix = if c["single_paraphrase"].as_bool().unwrap() {
        "_single"
    } else {
        ""
    };
    let tag = format!("{}p_seed{}{suffix}", c["num_people"], c["seed"]);
    for kind in ["statements", "questions"] {
        let ours = dataset_rows(&data.path().join(format!("{kind}_{tag}.hf")));
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(recall_fixtures().join(name).join(format!("{kind}.json")))
                .unwrap(),
        )
        .unwrap();
        let theirs = theirs.as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: {kind} rows");
        for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
            let okeys: Vec<&String> = o.as_object().unwrap().keys().collect();
            let tkeys: Vec<&String> = t.as_object().unwrap().keys().collect();
            assert_eq!(okeys, tkeys, "{name}: {kind} columns");
            assert_eq!(o, t, "{name}: {kind} row {i}");
        }
    }
    for csv in ["recall.csv", "summary.csv"] {
        let ours = std::fs::read_to_string(out.path().join(csv)).unwrap();
        let theirs =
            std::fs::read_to_string(recall_fixtures().join(name).join("recall").join(csv)).unwrap();
        assert_eq!(ours, theirs, "{name}: {csv}");
    }
}

#[test]
fn equals_python_bergson_with_paraphrases_and_ties() {
    check_case("plain");
}

#[test]
fn equals_python_bergson_single_paraphrase_loss_signed_scores() {
    // The score run's saved `score_cfg.higher_is_better: false` flips the ranking.
    check_case("single_loss_signed");
}

#[test]
fn the_orientation_flag_overrides_the_saved_one_and_changes_the_result() {
    let data = scratch_data();
    let saved = tempfile::tempdir().unwrap();
    assert!(run_case("single_loss_signed", data.path(), saved.path())
        .status
        .success());
    let flipped = tempfile::tempdir().unwrap();
    let (args, _) = case_args("single_loss_signed");
    let run = bergson()
        .arg("recall")
        .arg(flipped.path())
        .arg("--scores")
        .arg(recall_fixtures().join("single_loss_signed/scores"))
        .arg("--data_dir")
        .arg(data.path())
        .args(args)
        .args(["--higher_is_better", "true", "--quiet"])
        .output()
        .unwrap();
    assert!(run.status.success());
    let a = std::fs::read_to_string(saved.path().join("recall.csv")).unwrap();
    let b = std::fs::read_to_string(flipped.path().join("recall.csv")).unwrap();
    assert_ne!(a, b);
}

#[test]
fn recall_generate_caches_the_datasets_recall_then_reuses() {
    let data = scratch_data();
    let gen = bergson()
        .args([
            "recall_generate",
            "--num_people",
            "6",
            "--seed",
            "3",
            "--data_dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    assert!(String::from_utf8_lossy(&gen.stderr).contains("generated"));
    let again = bergson()
        .args([
            "recall_generate",
            "--num_people",
            "6",
            "--seed",
            "3",
            "--data_dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("reusing"));
    let theirs: Value = serde_json::from_str(
        &std::fs::read_to_string(recall_fixtures().join("plain/statements.json")).unwrap(),
    )
    .unwrap();
    let ours = dataset_rows(&data.path().join("statements_6p_seed3.hf"));
    assert_eq!(Value::Array(ours), theirs);
}

#[test]
fn bad_input_is_one_line() {
    let data = scratch_data();
    let out = tempfile::tempdir().unwrap();
    let missing = bergson()
        .arg("recall")
        .arg(out.path())
        .arg("--data_dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_one_line_error(&missing, &["--scores"]);

    // Scores of the 6-person set against the 5-person single-paraphrase datasets.
    let mismatch = bergson()
        .arg("recall")
        .arg(out.path())
        .arg("--scores")
        .arg(recall_fixtures().join("plain/scores"))
        .arg("--data_dir")
        .arg(data.path())
        .args(["--num_people", "5", "--seed", "11", "--single_paraphrase"])
        .output()
        .unwrap();
    assert_one_line_error(&mismatch, &["statements", "items"]);

    let too_many = bergson()
        .arg("recall")
        .arg(out.path())
        .arg("--scores")
        .arg(recall_fixtures().join("plain/scores"))
        .arg("--data_dir")
        .arg(data.path())
        .args(["--num_people", "50"])
        .output()
        .unwrap();
    assert_one_line_error(&too_many, &["--num_people", "names"]);

    let no_lists = bergson()
        .arg("recall")
        .arg(out.path())
        .arg("--scores")
        .arg(recall_fixtures().join("plain/scores"))
        .arg("--data_dir")
        .arg(out.path().join("nowhere"))
        .output()
        .unwrap();
    assert_one_line_error(&no_lists, &["source lists", "--data_dir"]);
}

#[test]
fn generated_statements_build_score_and_recall_end_to_end() {
    // The documented workflow on the tiny fixture model: the generated `save_to_disk`
    // datasets feed `build` and `score` directly, and gradient similarity finds the gold
    // statements far above chance (MRR about 0.1 for ~2 gold rows among 48).
    let data = scratch_data();
    let work = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/gpt_neox");
    let d = data.path();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(bergson()
        .args([
            "recall_generate",
            "--num_people",
            "6",
            "--seed",
            "3",
            "--data_dir",
        ])
        .arg(d)
        .output()
        .unwrap());
    ok(bergson()
        .arg("build")
        .arg(work.path().join("questions"))
        .arg("--model")
        .arg(&model)
        .arg("--dataset")
        .arg(d.join("questions_6p_seed3.hf"))
        .args([
            "--prompt_column",
            "text",
            "--projection_dim",
            "16",
            "--quiet",
        ])
        .output()
        .unwrap());
    ok(bergson()
        .arg("score")
        .arg(work.path().join("scores"))
        .arg("--query_path")
        .arg(work.path().join("questions"))
        .arg("--model")
        .arg(&model)
        .arg("--dataset")
        .arg(d.join("statements_6p_seed3.hf"))
        .args([
            "--prompt_column",
            "fact",
            "--projection_dim",
            "16",
            "--quiet",
        ])
        .output()
        .unwrap());
    ok(bergson()
        .arg("recall")
        .arg(work.path().join("recall"))
        .arg("--scores")
        .arg(work.path().join("scores"))
        .args([
            "--num_people",
            "6",
            "--seed",
            "3",
            "--k",
            "3",
            "--quiet",
            "--data_dir",
        ])
        .arg(d)
        .output()
        .unwrap());
    let summary = std::fs::read_to_string(work.path().join("recall/summary.csv")).unwrap();
    let values: Vec<&str> = summary.lines().nth(1).unwrap().split(',').collect();
    let mrr: f64 = values[0].parse().unwrap();
    assert_eq!(values[3], "24", "{summary}");
    assert!(mrr > 0.3, "{summary}");
}
