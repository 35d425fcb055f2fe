//! Helpers shared by the data_* integration tests: fixture paths and table -> JSON rows.

#![allow(dead_code)]

use std::path::PathBuf;

use arrow::array::Float64Array;
use arrow::json::writer::{JsonArray, WriterBuilder};
use arrow::record_batch::RecordBatch;
use serde_json::Value;

/// tests/fixtures/datasets/ in the repository.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/datasets")
}

/// A fixture path as a string.
pub fn fixture(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

/// The rows of a table as JSON objects (nulls explicit), like Python's `Dataset.to_list()`.
pub fn rows(batch: &RecordBatch) -> Vec<Value> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut rows = serde_json::from_slice::<Vec<Value>>(&bytes).unwrap();
    // JSON has no NaN/inf (Arrow writes null); the Python fixtures spell them "nan"/"inf"/"-inf".
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if let Some(floats) = column.as_any().downcast_ref::<Float64Array>() {
            for (row, v) in floats.iter().enumerate() {
                if let Some(v) = v.filter(|v| !v.is_finite()) {
                    let text = if v.is_nan() {
                        "nan"
                    } else if v > 0.0 {
                        "inf"
                    } else {
                        "-inf"
                    };
                    rows[row][field.name()] = Value::from(text);
                }
            }
        }
    }
    rows
}

/// JSON equality with numbers compared as f64 (Python writes 1.0 where Arrow writes 1).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}
