//! The `datasets.Dataset.save_to_disk` directory format: how Bergson stores `data.hf` (per-row
//! metadata beside the gradients) and how users hand over tokenised or saved datasets.
//!
//! A directory holds `data-00000-of-00001.arrow` (Arrow IPC *stream*, with the Hugging Face
//! `features` JSON under the schema metadata key `huggingface`), `dataset_info.json` and
//! `state.json`, byte-for-byte as `datasets` 5 writes them (the fingerprint aside: ours is a hash
//! of the data). A DatasetDict is a directory of such directories plus `dataset_dict.json`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

use crate::data::formats::{concat, read_arrow};
use crate::error::IoContext;
use crate::{Error, Result};

/// The only data file [`write_hf_dataset`] writes (datasets picks one shard below 500 MB).
pub const DATA_FILE: &str = "data-00000-of-00001.arrow";
/// The Arrow schema metadata key holding `{"info": {"features": ...}}`.
pub const SCHEMA_METADATA_KEY: &str = "huggingface";
/// Rows per IPC record batch (datasets' default `writer_batch_size`).
const WRITER_BATCH_SIZE: usize = 1000;

/// The Hugging Face `features` JSON (as `Features.to_dict()`) of an Arrow schema: `Value` dtypes
/// (`int64`, `float32`, `string`, `bool`, ...), `List` / `LargeList` (with `length` when fixed
/// size) and nested structs as plain objects, in column order.
pub fn features_json(schema: &Schema) -> Result<Value> {
    let mut features = Map::new();
    for field in schema.fields() {
        features.insert(
            field.name().clone(),
            feature_of(field.name(), field.data_type())?,
        );
    }
    Ok(Value::Object(features))
}

fn feature_of(column: &str, data_type: &DataType) -> Result<Value> {
    let value = |dtype: String| json!({"dtype": dtype, "_type": "Value"});
    Ok(match data_type {
        DataType::List(item) => {
            json!({"feature": feature_of(column, item.data_type())?, "_type": "List"})
        }
        DataType::LargeList(item) => {
            json!({"feature": feature_of(column, item.data_type())?, "_type": "LargeList"})
        }
        DataType::FixedSizeList(item, length) => {
            json!({"feature": feature_of(column, item.data_type())?, "length": length, "_type": "List"})
        }
        DataType::Struct(fields) => {
            let mut map = Map::new();
            for field in fields {
                map.insert(field.name().clone(), feature_of(column, field.data_type())?);
            }
            Value::Object(map)
        }
        other => value(value_dtype(other).ok_or_else(|| {
            Error::input(format!(
                "column '{column}' has Arrow type {other}, which has no Hugging Face datasets \
                 equivalent here; cast it to a number, string, bool or list column first"
            ))
        })?),
    })
}

/// The `Value(dtype)` name datasets uses for a primitive Arrow type (`_arrow_to_datasets_dtype`).
fn value_dtype(data_type: &DataType) -> Option<String> {
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    };
    Some(
        match data_type {
            DataType::Null => "null",
            DataType::Boolean => "bool",
            DataType::Int8 => "int8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::UInt8 => "uint8",
            DataType::UInt16 => "uint16",
            DataType::UInt32 => "uint32",
            DataType::UInt64 => "uint64",
            DataType::Float16 => "float16",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
            DataType::Utf8 => "string",
            DataType::LargeUtf8 => "large_string",
            DataType::Utf8View => "string_view",
            DataType::Binary => "binary",
            DataType::LargeBinary => "large_binary",
            DataType::BinaryView => "binary_view",
            DataType::Date32 => "date32",
            DataType::Date64 => "date64",
            DataType::Time32(u) | DataType::Time64(u) => {
                let bits = if matches!(data_type, DataType::Time32(_)) {
                    32
                } else {
                    64
                };
                return Some(format!("time{bits}[{}]", unit(u)));
            }
            DataType::Duration(u) => return Some(format!("duration[{}]", unit(u))),
            DataType::Timestamp(u, None) => return Some(format!("timestamp[{}]", unit(u))),
            DataType::Timestamp(u, Some(tz)) => {
                return Some(format!("timestamp[{}, tz={tz}]", unit(u)))
            }
            DataType::Decimal128(p, s) => return Some(format!("decimal128({p}, {s})")),
            DataType::Decimal256(p, s) => return Some(format!("decimal256({p}, {s})")),
            _ => return None,
        }
        .to_string(),
    )
}

/// `schema` with its metadata replaced by datasets' `huggingface` entry, as `ArrowWriter` writes.
pub fn hf_schema(schema: &Schema) -> Result<Schema> {
    let features = features_json(schema)?;
    let metadata = python_json(&json!({"info": {"features": features}}), None);
    let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    Ok(Schema::new(fields)
        .with_metadata(arrow::datatypes::Metadata::new().with(SCHEMA_METADATA_KEY, metadata)))
}

/// Writes `batch` as a `datasets.Dataset.save_to_disk` directory that Python's
/// `datasets.load_from_disk` reads back with the same columns, dtypes and values.
pub fn write_hf_dataset(batch: &RecordBatch, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).at_path(dir)?;
    let schema = Arc::new(hf_schema(&batch.schema())?);
    // A fresh batch on the new schema: `with_schema` would refuse to drop metadata the table
    // carried over from its source (say, the input dataset's own `huggingface` entry).
    let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| {
        Error::internal(format!(
            "cannot attach the datasets schema to the table ({e})"
        ))
    })?;
    let data_path = dir.join(DATA_FILE);
    let write_err = |e: arrow::error::ArrowError| Error::io(&data_path, std::io::Error::other(e));
    let file = File::create(&data_path).at_path(&data_path)?;
    let mut writer = StreamWriter::try_new(BufWriter::new(file), &schema).map_err(write_err)?;
    let mut start = 0;
    while start < batch.num_rows() {
        let len = WRITER_BATCH_SIZE.min(batch.num_rows() - start);
        writer.write(&batch.slice(start, len)).map_err(write_err)?;
        start += len;
    }
    writer.finish().map_err(write_err)?;
    let mut out = writer.into_inner().map_err(write_err)?;
    out.flush().at_path(&data_path)?;
    drop(out);

    let digest = Md5::digest(std::fs::read(&data_path).at_path(&data_path)?);
    let fingerprint: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let state = json!({
        "_data_files": [{"filename": DATA_FILE}],
        "_fingerprint": fingerprint,
        "_format_columns": null,
        "_format_kwargs": {},
        "_format_type": null,
        "_output_all_columns": false,
        "_split": null,
    });
    let state_path = dir.join("state.json");
    std::fs::write(&state_path, python_json(&state, Some(2))).at_path(&state_path)?;
    let info = json!({
        "citation": "",
        "description": "",
        "features": features_json(&batch.schema())?,
        "homepage": "",
        "license": "",
    });
    let info_path = dir.join("dataset_info.json");
    std::fs::write(&info_path, python_json(&info, Some(2))).at_path(&info_path)
}

/// Reads a `datasets.Dataset.save_to_disk` directory (the data files `state.json` lists).
pub fn read_hf_dataset(dir: &Path) -> Result<RecordBatch> {
    let state_path = dir.join("state.json");
    if !state_path.is_file() {
        let hint = if dir.join("dataset_dict.json").is_file() {
            " (it is a DatasetDict: read one of its split directories)"
        } else {
            ""
        };
        return Err(Error::input(format!(
            "'{}' is not a datasets save_to_disk directory: state.json is missing{hint}; save the \
             dataset with Dataset.save_to_disk",
            dir.display()
        )));
    }
    let state: Value = read_json_file(&state_path)?;
    let files: Vec<&str> = state
        .get("_data_files")
        .and_then(Value::as_array)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| f.get("filename").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(Error::input(format!(
            "{}: lists no data files under _data_files; save the dataset again with \
             Dataset.save_to_disk",
            state_path.display()
        )));
    }
    let tables = files
        .iter()
        .map(|name| read_arrow(&dir.join(name)))
        .collect::<Result<Vec<_>>>()?;
    let schema = tables[0].schema();
    concat(dir, &schema, &tables)
}

/// Reads a `datasets.DatasetDict.save_to_disk` directory: `(split, table)` in the order
/// `dataset_dict.json` lists them.
pub fn read_hf_dataset_dict(dir: &Path) -> Result<Vec<(String, RecordBatch)>> {
    let dict_path = dir.join("dataset_dict.json");
    let dict: Value = read_json_file(&dict_path)?;
    let splits: Vec<String> = dict
        .get("splits")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .ok_or_else(|| {
            Error::input(format!(
                "{}: has no \"splits\" list; save the DatasetDict again with save_to_disk",
                dict_path.display()
            ))
        })?;
    splits
        .into_iter()
        .map(|split| Ok((split.clone(), read_hf_dataset(&dir.join(&split))?)))
        .collect()
}

fn read_json_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).at_path(path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{}: malformed JSON ({e}); save the dataset again",
            path.display()
        ))
    })
}

/// `json.dumps(value, indent=indent)` as Python writes it: `", "` / `": "` separators when
/// compact, non-ASCII escaped as `\uXXXX` (`ensure_ascii`), keys in insertion order.
pub fn python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_python_json(&mut out, value, indent, 0);
    out
}

fn write_python_json(out: &mut String, value: &Value, indent: Option<usize>, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_string(out, key);
                out.push_str(": ");
                write_python_json(out, item, indent, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(out, item, indent, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        Value::String(s) => write_python_string(out, s),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
    }
}

fn write_python_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        // Expected strings from Python: json.dumps(v) and json.dumps(v, indent=2).
        let v = json!({"é": "ü😀\n\"\\", "a": [], "b": {}, "c": [1, {"d": null, "e": true}]});
        assert_eq!(
            python_json(&v, None),
            r#"{"\u00e9": "\u00fc\ud83d\ude00\n\"\\", "a": [], "b": {}, "c": [1, {"d": null, "e": true}]}"#
        );
        assert_eq!(
            python_json(&json!({"a": [1, 2], "b": {}}), Some(2)),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"
        );
        assert_eq!(
            python_json(&json!("\u{7f}\u{1}"), None),
            r#""\u007f\u0001""#
        );
    }

    #[test]
    fn a_table_read_back_with_its_metadata_writes_again_with_new_columns() {
        // A build from a `save_to_disk` dataset writes the input's table (which carries the
        // input's `huggingface` schema metadata) plus its own columns.
        let dir = tempfile::tempdir().unwrap();
        let text: arrow::array::ArrayRef =
            Arc::new(arrow::array::StringArray::from(vec!["a", "b"]));
        let first = RecordBatch::try_from_iter([("text", text)]).unwrap();
        write_hf_dataset(&first, &dir.path().join("in")).unwrap();
        let read = read_hf_dataset(&dir.path().join("in")).unwrap();
        assert!(!read.schema().metadata().is_empty());
        let length: arrow::array::ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1, 2]));
        let mut fields: Vec<Field> = read
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            "length",
            arrow::datatypes::DataType::Int64,
            true,
        ));
        let mut columns = read.columns().to_vec();
        columns.push(length);
        let schema = Schema::new(fields).with_metadata(read.schema().metadata().clone());
        let second = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        write_hf_dataset(&second, &dir.path().join("out")).unwrap();
        let back = read_hf_dataset(&dir.path().join("out")).unwrap();
        assert_eq!(back.num_columns(), 2);
        assert!(back.schema().metadata()[SCHEMA_METADATA_KEY].contains("length"));
    }
}
