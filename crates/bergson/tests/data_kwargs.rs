//! `--data_kwargs` (`data_files`, `data_dir`) on a local dataset repository, against the rows
//! `datasets.load_dataset` reads (printed by tests/fixtures/scripts/check_data_kwargs.py).

use arrow::array::{Array, StringArray};
use bergson::data::kwargs::DataKwargs;
use bergson::data::source::load_dataset_with_kwargs;
use bergson::hub::HubSettings;

fn write(root: &std::path::Path, path: &str, texts: &[&str]) {
    let text: String = texts
        .iter()
        .map(|t| format!("{{\"text\": \"{t}\"}}\n"))
        .collect();
    std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
    std::fs::write(root.join(path), text).unwrap();
}

fn texts(root: &std::path::Path, kwargs: &str, split: &str) -> Vec<String> {
    let hub = HubSettings::cache_only(root.join("no-hub-cache"));
    let kwargs = DataKwargs::parse(kwargs).unwrap();
    let batch =
        load_dataset_with_kwargs(root.to_str().unwrap(), split, None, &hub, &kwargs).unwrap();
    let col = batch.column_by_name("text").unwrap();
    let col = col.as_any().downcast_ref::<StringArray>().unwrap();
    (0..col.len()).map(|i| col.value(i).to_string()).collect()
}

#[test]
fn data_files_and_data_dir_pick_the_rows_datasets_picks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    write(&root, "a.jsonl", &["a1", "a2"]);
    write(&root, "b.jsonl", &["b1", "b2", "b3"]);
    write(&root, "sub/train.jsonl", &["s1"]);
    write(&root, "sub/test.jsonl", &["s2", "s3"]);
    let cases: [(&str, &str, &[&str]); 7] = [
        ("", "train", &["s1"]),
        ("data_files=b.jsonl", "train", &["b1", "b2", "b3"]),
        (
            "data_files=a.jsonl|b.jsonl",
            "train",
            &["a1", "a2", "b1", "b2", "b3"],
        ),
        ("data_dir=sub", "train", &["s1"]),
        ("data_dir=sub", "test", &["s2", "s3"]),
        ("data_dir=sub,data_files=test.jsonl", "train", &["s2", "s3"]),
        (
            "data_files=*.jsonl",
            "train",
            &["a1", "a2", "b1", "b2", "b3"],
        ),
    ];
    for (kwargs, split, want) in cases {
        assert_eq!(
            texts(&root, kwargs, split),
            want,
            "--data_kwargs {kwargs} split {split}"
        );
    }
}

#[test]
fn data_files_that_match_nothing_are_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a.jsonl", &["a1"]);
    let hub = HubSettings::cache_only(tmp.path().join("no-hub-cache"));
    let kwargs = DataKwargs::parse("data_files=missing.jsonl").unwrap();
    let e = load_dataset_with_kwargs(tmp.path().to_str().unwrap(), "train", None, &hub, &kwargs)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("data_files=missing.jsonl matched no file"),
        "{e}"
    );
}
