//! Every source format and split spec against what Python loads (tests/fixtures/datasets/
//! expected_loads.json, made by tests/fixtures/scripts/make_datasets.py with bergson's
//! load_data_string / datasets.load_dataset), plus the rejected inputs.

mod data_support;

use bergson::data::source::load_dataset_with_cache;
use bergson::index::hf_dataset::features_json;
use data_support::{fixture, fixtures, rows, same};
use serde_json::Value;

fn load(
    source: &str,
    split: &str,
    subset: Option<&str>,
) -> bergson::Result<arrow::record_batch::RecordBatch> {
    // Hub ids resolve in the fixture hub cache; everything else is a fixture path.
    let dataset = if source.starts_with("org/") {
        source.to_string()
    } else {
        fixture(source)
    };
    load_dataset_with_cache(&dataset, split, subset, &fixtures().join("hub"))
}

#[test]
fn every_source_and_split_matches_python() {
    let text = std::fs::read_to_string(fixtures().join("expected_loads.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() > 40);
    for case in &cases {
        let source = case["source"].as_str().unwrap();
        let split = case["split"].as_str().unwrap();
        let subset = case["subset"].as_str();
        let label = format!("{source} split={split} subset={subset:?}");
        let got = load(source, split, subset);
        if let Some(error) = case.get("error") {
            let err = got
                .err()
                .unwrap_or_else(|| panic!("{label}: Python raised {error}, we loaded rows"));
            assert!(err.is_user_error(), "{label}: {err}");
            let message = err.to_string();
            assert!(
                !message.contains('\n'),
                "{label}: multi-line error {message}"
            );
            continue;
        }
        let batch = got.unwrap_or_else(|e| panic!("{label}: {e}"));
        let features = features_json(&batch.schema()).unwrap();
        assert_eq!(features, case["features"], "{label}: features");
        let ours = rows(&batch);
        let theirs = case["rows"].as_array().unwrap();
        assert!(
            ours.len() == theirs.len() && ours.iter().zip(theirs).all(|(a, b)| same(a, b)),
            "{label}: rows differ\nours:   {ours:?}\npython: {theirs:?}"
        );
    }
}

fn error_of(source: &str, split: &str) -> String {
    let err = load(source, split, None).expect_err("must be rejected");
    assert!(err.is_user_error(), "{err}");
    let message = err.to_string();
    assert!(!message.contains('\n'), "multi-line error: {message}");
    message
}

#[test]
fn missing_file_and_directory_say_so() {
    let e = error_of("no_such.jsonl", "train");
    assert!(
        e.contains("no_such.jsonl") && e.contains("does not exist"),
        "{e}"
    );
    let e = error_of("no_such_dir/", "train");
    assert!(e.contains("does not exist"), "{e}");
    let e = error_of("./relative/thing", "train");
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn empty_datasets_are_rejected() {
    for name in ["bad/empty.jsonl", "bad/empty.csv"] {
        let e = error_of(name, "train");
        assert!(e.contains("no rows"), "{name}: {e}");
    }
    let e = error_of("prompts.jsonl", "train[3:1]");
    assert!(
        e.contains("selects no rows") && e.contains("train[3:1]"),
        "{e}"
    );
}

#[test]
fn malformed_json_names_the_line() {
    let e = error_of("bad/malformed.jsonl", "train");
    assert!(e.contains("malformed.jsonl") && e.contains("line 3"), "{e}");
}

#[test]
fn json_that_is_not_records_is_rejected() {
    // Records nested under a field load as one row (as `datasets` reads them); the build
    // refuses them once it looks for its column (see the CLI's error tests).
    let nested = load("bad/not_records.json", "train", None).unwrap();
    assert_eq!(nested.num_rows(), 1);
    assert!(nested.column_by_name("data").is_some());
    let e = error_of("bad/scalar.json", "train");
    assert!(e.contains("line 1") && e.contains("not a record"), "{e}");
    let e = error_of("bad/mixed_types.jsonl", "train");
    assert!(e.contains("'v'") && e.contains("line 2"), "{e}");
}

#[test]
fn unreadable_binary_files_are_rejected() {
    let e = error_of("bad/garbage.parquet", "train");
    assert!(
        e.contains("garbage.parquet") && e.contains("Parquet"),
        "{e}"
    );
    let e = error_of("bad/garbage.arrow", "train");
    assert!(e.contains("garbage.arrow") && e.contains("Arrow"), "{e}");
}

#[test]
fn unknown_splits_list_the_available_ones() {
    let e = error_of("prompts.jsonl", "test");
    assert!(
        e.contains("'test'") && e.contains("available splits: train") && e.contains("--split"),
        "{e}"
    );
    let e = error_of("saved_dict", "validation");
    assert!(e.contains("available splits: train, test"), "{e}");
    let e = error_of("org/plain", "validation[:5]");
    assert!(e.contains("available splits: train, test"), "{e}");
    let e = error_of("prompts.jsonl", "train[:5");
    assert!(e.contains("unrecognized split instruction"), "{e}");
}

#[test]
fn subsets_and_uncached_hub_ids() {
    let err = load("org/configs", "train", Some("third"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("available subsets: first, second") && err.contains("--subset"),
        "{err}"
    );
    let err = load("org/not-downloaded", "train", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("hf download"),
        "{err}"
    );
}

#[test]
fn hub_cache_layouts_beyond_python_reference() {
    // A real cache stores snapshot files as symlinks into blobs/; `<subset>/<split>/` without
    // README configs is read through the subset directory; `refs/main` may be missing.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("datasets--someone--layouts");
    let snap = repo.join("snapshots/abc");
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(snap.join("en/train")).unwrap();
    std::fs::create_dir_all(snap.join("en/test")).unwrap();
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(fixtures().join("prompts.parquet"), blobs.join("b1")).unwrap();
    std::os::unix::fs::symlink(blobs.join("b1"), snap.join("en/train/0000.parquet")).unwrap();
    std::fs::write(
        snap.join("en/test/0000.jsonl"),
        "{\"id\": 9, \"prompt\": \"p\", \"completion\": \"c\"}\n",
    )
    .unwrap();
    std::fs::write(
        snap.join("en/test/0001.jsonl"),
        "{\"id\": 10, \"prompt\": \"q\", \"completion\": \"d\"}\n",
    )
    .unwrap();
    std::fs::write(
        snap.join("en/test/0002.jsonl"),
        "{\"id\": 11, \"prompt\": \"r\", \"completion\": \"e\"}\n",
    )
    .unwrap();
    let batch =
        load_dataset_with_cache("someone/layouts", "test[1:]", Some("en"), dir.path()).unwrap();
    let ids: Vec<i64> = rows(&batch)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [10, 11]);
    // jsonl (3 files) outnumbers parquet (1 file), so datasets would read only the jsonl files:
    // train has none left and does not exist.
    let err =
        load_dataset_with_cache("someone/layouts", "train", Some("en"), dir.path()).unwrap_err();
    assert!(err.to_string().contains("available splits: test"), "{err}");
    std::fs::remove_file(snap.join("en/test/0001.jsonl")).unwrap();
    std::fs::remove_file(snap.join("en/test/0002.jsonl")).unwrap();
    std::fs::rename(
        snap.join("en/test/0000.jsonl"),
        snap.join("en/test/0000.parquet.txt"),
    )
    .unwrap();
    let batch =
        load_dataset_with_cache("someone/layouts", "train[-1:]", Some("en"), dir.path()).unwrap();
    assert_eq!(rows(&batch)[0]["id"], 5);
}
