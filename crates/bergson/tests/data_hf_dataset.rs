//! The `save_to_disk` format: Python's fixture read back, our writer against Python's bytes, and
//! (opt-in, `scripts/test-python.sh`) Python's `load_from_disk` reading what we write.

mod data_support;
mod python_support;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, Int64Array, ListArray, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use bergson::index::hf_dataset::{
    features_json, read_hf_dataset, write_hf_dataset, SCHEMA_METADATA_KEY,
};
use data_support::{fixtures, rows, same};
use serde_json::Value;

fn expected(source: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected_loads.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    cases
        .into_iter()
        .find(|c| c["source"] == source && c["split"] == "train")
        .unwrap()
}

fn metadata_of(path: &std::path::Path) -> String {
    let file = std::fs::File::open(path).unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(file, None).unwrap();
    reader
        .schema()
        .metadata()
        .get(SCHEMA_METADATA_KEY)
        .unwrap()
        .clone()
}

#[test]
fn python_saved_dataset_reads_back() {
    let batch = read_hf_dataset(&fixtures().join("saved_dataset")).unwrap();
    let case = expected("saved_dataset");
    assert_eq!(features_json(&batch.schema()).unwrap(), case["features"]);
    let ours = rows(&batch);
    assert!(
        ours.iter()
            .zip(case["rows"].as_array().unwrap())
            .all(|(a, b)| same(a, b)),
        "{ours:?}"
    );
    assert_eq!(
        batch.schema().field_with_name("loss").unwrap().data_type(),
        &DataType::Float32
    );
}

#[test]
fn writer_matches_python_bytes_for_metadata_files() {
    let python = fixtures().join("saved_dataset");
    let batch = read_hf_dataset(&python).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data.hf");
    write_hf_dataset(&batch, &out).unwrap();
    let read = |dir: &std::path::Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(
        read(&out, "dataset_info.json"),
        read(&python, "dataset_info.json")
    );
    // state.json differs only in the fingerprint.
    let strip = |s: String| {
        s.lines()
            .filter(|l| !l.contains("_fingerprint"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(read(&out, "state.json")),
        strip(read(&python, "state.json"))
    );
    let data = "data-00000-of-00001.arrow";
    assert_eq!(
        metadata_of(&out.join(data)),
        metadata_of(&python.join(data))
    );
    let back = read_hf_dataset(&out).unwrap();
    assert_eq!(rows(&back), rows(&batch));
    // Writing again gives identical bytes (the fingerprint is a hash of the data).
    let again = dir.path().join("again.hf");
    write_hf_dataset(&batch, &again).unwrap();
    assert_eq!(read(&out, "state.json"), read(&again, "state.json"));
}

/// A table with every column kind Bergson writes plus nested and non-ASCII ones, 2500 rows (so
/// the IPC stream holds several record batches).
fn bergson_table() -> RecordBatch {
    let n = 2500;
    let labels = ListArray::from_iter_primitive::<Int64Type, _, _>((0..n).map(|i| {
        Some(
            (0..(i % 4) as i64)
                .map(|t| Some(if t == 0 { -100 } else { t * 7 + i as i64 }))
                .collect::<Vec<_>>(),
        )
    }));
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "length",
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| (i % 97) as i64),
            )),
        ),
        ("labels", Arc::new(labels)),
        (
            "advantage",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 / 3.0 - 100.0),
            )),
        ),
        (
            "text",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("row {i} — ünï 🙂")),
            )),
        ),
        (
            "loss",
            Arc::new(Float32Array::from_iter_values(
                (0..n).map(|i| (i as f32).sqrt() - 1.5),
            )),
        ),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

#[test]
fn written_tables_read_back_with_types() {
    let batch = bergson_table();
    let dir = tempfile::tempdir().unwrap();
    write_hf_dataset(&batch, dir.path()).unwrap();
    let back = read_hf_dataset(dir.path()).unwrap();
    assert_eq!(back.num_rows(), 2500);
    for (a, b) in back.columns().iter().zip(batch.columns()) {
        assert_eq!(a.as_ref(), b.as_ref());
    }
    let features = features_json(&back.schema()).unwrap();
    assert_eq!(features["loss"]["dtype"], "float32");
    assert_eq!(features["labels"]["feature"]["dtype"], "int64");
}

#[test]
#[ignore = "needs Python Bergson: scripts/test-python.sh"]
fn python_load_from_disk_reads_our_output() {
    let python = python_support::bergson_py();
    let batch = bergson_table();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data.hf");
    write_hf_dataset(&batch, &out).unwrap();
    let script = r#"
import json, sys
from datasets import load_from_disk
ds = load_from_disk(sys.argv[1])
print(json.dumps({"features": ds.features.to_dict(), "rows": ds.to_list(),
                  "arrow": [str(f.type) for f in ds.data.schema]}))
"#;
    let loaded = python_support::run_json(
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&out),
    );
    assert_eq!(loaded["features"], features_json(&batch.schema()).unwrap());
    assert_eq!(
        loaded["arrow"],
        serde_json::json!(["int64", "list<item: int64>", "double", "string", "float"])
    );
    let ours = rows(&batch);
    let theirs = loaded["rows"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        // float32 values go through Python floats and back: compare as f32.
        let (la, lb) = (
            a["loss"].as_f64().unwrap() as f32,
            b["loss"].as_f64().unwrap() as f32,
        );
        assert_eq!(la, lb, "row {i} loss");
        let drop_loss = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("loss");
            v
        };
        assert!(same(&drop_loss(a), &drop_loss(b)), "row {i}: {a} vs {b}");
    }
}
