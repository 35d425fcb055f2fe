//! JSON Lines and JSON files, read as the `datasets` json loader does: one JSON object per row,
//! either one after another (JSON Lines; objects may span lines) or as a top-level list. A list
//! of non-objects becomes a `text` column. Column types follow pyarrow's JSON inference: ints ->
//! int64, any float -> float64, strings -> string, bools -> bool, lists -> list, objects ->
//! struct, fields only ever null -> null; columns and struct fields in first-seen order.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, NullArray, StringArray,
    StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::Value;

use crate::error::IoContext;
use crate::{Error, Result};

/// An inferred JSON type; `Null` widens to anything, `Int` widens to `Float`.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<Ty>),
    Struct(Vec<(String, Ty)>),
}

impl Ty {
    fn of(value: &Value, specials: &Specials) -> std::result::Result<Ty, Conflict> {
        Ok(match value {
            Value::Null => Ty::Null,
            Value::String(s) if specials.value(s).is_some() => Ty::Float,
            Value::Bool(_) => Ty::Bool,
            // Integers beyond int64 fall back to float64 rather than failing.
            Value::Number(n) if n.is_i64() => Ty::Int,
            Value::Number(_) => Ty::Float,
            Value::String(_) => Ty::Str,
            Value::Array(items) => {
                let mut ty = Ty::Null;
                for item in items {
                    ty = ty
                        .merge(Ty::of(item, specials)?)
                        .map_err(|c| c.inside("[]"))?;
                }
                Ty::List(Box::new(ty))
            }
            Value::Object(map) => Ty::Struct(
                map.iter()
                    .map(|(k, v)| {
                        Ty::of(v, specials)
                            .map(|t| (k.clone(), t))
                            .map_err(|c| c.inside(k))
                    })
                    .collect::<std::result::Result<_, _>>()?,
            ),
        })
    }

    /// The common type of two values of one field, or the conflict.
    fn merge(self, other: Ty) -> std::result::Result<Ty, Conflict> {
        Ok(match (self, other) {
            (Ty::Null, t) | (t, Ty::Null) => t,
            (Ty::Int, Ty::Float) | (Ty::Float, Ty::Int) => Ty::Float,
            (Ty::List(a), Ty::List(b)) => {
                Ty::List(Box::new(a.merge(*b).map_err(|c| c.inside("[]"))?))
            }
            (Ty::Struct(mut a), Ty::Struct(b)) => {
                for (name, ty) in b {
                    match a.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, existing)) => {
                            let merged = std::mem::replace(existing, Ty::Null)
                                .merge(ty)
                                .map_err(|c| c.inside(&name))?;
                            *existing = merged;
                        }
                        None => a.push((name, ty)),
                    }
                }
                Ty::Struct(a)
            }
            (a, b) if a == b => a,
            (a, b) => {
                return Err(Conflict {
                    path: Vec::new(),
                    a: a.name(),
                    b: b.name(),
                })
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Str => "string",
            Ty::List(_) => "list",
            Ty::Struct(_) => "object",
        }
    }

    fn arrow(&self) -> DataType {
        match self {
            Ty::Null => DataType::Null,
            Ty::Bool => DataType::Boolean,
            Ty::Int => DataType::Int64,
            Ty::Float => DataType::Float64,
            Ty::Str => DataType::Utf8,
            Ty::List(item) => DataType::List(Arc::new(Field::new("item", item.arrow(), true))),
            Ty::Struct(fields) => DataType::Struct(struct_fields(fields)),
        }
    }
}

fn struct_fields(fields: &[(String, Ty)]) -> Fields {
    fields
        .iter()
        .map(|(name, ty)| Field::new(name, ty.arrow(), true))
        .collect()
}

/// Two different types met in one field (`path` from the row down).
#[derive(Debug)]
struct Conflict {
    path: Vec<String>,
    a: &'static str,
    b: &'static str,
}

impl Conflict {
    fn inside(mut self, key: &str) -> Conflict {
        self.path.insert(0, key.to_string());
        self
    }
}

/// Reads a `.json` / `.jsonl` file into one table.
pub fn read_json(path: &Path) -> Result<RecordBatch> {
    let bytes = std::fs::read(path).at_path(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::input(format!(
            "{}: not UTF-8 text (invalid byte at offset {}); save the file as UTF-8",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let specials = Specials::new(text);
    let replaced = specials.replace(text);
    let rows = parse_rows(path, replaced.as_deref().unwrap_or(text))?;
    rows_to_batch(path, &rows, &specials)
}

/// Python's non-standard JSON numbers `NaN`, `Infinity` and `-Infinity` (`json.dumps` writes
/// them, pyarrow reads them as float64) are swapped for marker strings before parsing, since
/// serde_json rejects them. The marker starts with a character absent from the file, so no real
/// string can be mistaken for one.
struct Specials {
    marker: String,
}

const SPECIAL_TOKENS: [(&str, f64); 3] = [
    ("NaN", f64::NAN),
    ("Infinity", f64::INFINITY),
    ("-Infinity", f64::NEG_INFINITY),
];

impl Specials {
    fn new(text: &str) -> Specials {
        let unused = ('\u{e000}'..='\u{f8ff}')
            .find(|c| !text.contains(*c))
            .unwrap_or('\u{f8ff}');
        Specials {
            marker: format!("{unused}special:"),
        }
    }

    /// `text` with the special tokens outside strings quoted as markers; `None` if it has none.
    fn replace(&self, text: &str) -> Option<String> {
        if !text.contains("NaN") && !text.contains("Infinity") {
            return None;
        }
        let mut out = String::with_capacity(text.len() + 64);
        let (mut in_string, mut escaped) = (false, false);
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
            } else if c == '"' {
                in_string = true;
            } else if let Some((token, _)) = SPECIAL_TOKENS
                .iter()
                .rev()
                .find(|(t, _)| rest.starts_with(t))
            {
                out.push('"');
                out.push_str(&self.marker);
                out.push_str(token);
                out.push('"');
                rest = &rest[token.len()..];
                continue;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        Some(out)
    }

    /// The float a marker string stands for.
    fn value(&self, s: &str) -> Option<f64> {
        let token = s.strip_prefix(&self.marker)?;
        SPECIAL_TOKENS
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, v)| *v)
    }
}

/// A row with the 1-based line it starts on (for error messages).
struct Row {
    line: usize,
    object: serde_json::Map<String, Value>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_rows(path: &Path, text: &str) -> Result<Vec<Row>> {
    let shown = path.display();
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        // One JSON document holding a list (datasets converts it to JSON Lines).
        let start_line = line_of(text, text.len() - trimmed.len());
        let items: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            Error::input(format!(
                "{shown}: malformed JSON at line {} ({e}); fix the file (a .json file holds one \
                 list of records, a .jsonl file one JSON object per line)",
                e.line()
            ))
        })?;
        let all_objects = items.iter().all(Value::is_object);
        let no_objects = !items.iter().any(Value::is_object);
        if !all_objects && !no_objects {
            return Err(Error::input(format!(
                "{shown}: the top-level list mixes JSON objects and other values; make every item \
                 a record such as {{\"text\": ...}}"
            )));
        }
        return Ok(items
            .into_iter()
            .map(|item| Row {
                line: start_line,
                object: match item {
                    Value::Object(map) => map,
                    // A list of plain values is a `text` column, as datasets reads it.
                    other => [("text".to_string(), other)].into_iter().collect(),
                },
            })
            .collect());
    }
    // JSON Lines: a stream of objects, usually one per line.
    let mut rows = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    loop {
        let offset = stream.byte_offset();
        let skipped = text[offset..].len() - text[offset..].trim_start().len();
        // The line the record starts on: an unterminated record fails further down.
        let line = line_of(text, offset + skipped);
        let Some(next) = stream.next() else { break };
        let value = next.map_err(|e| {
            Error::input(format!(
                "{shown}: malformed JSON in the record at line {line} ({e}); fix that line (JSON \
                 Lines files hold one complete JSON object per line)"
            ))
        })?;
        match value {
            Value::Object(object) => rows.push(Row { line, object }),
            other => {
                return Err(Error::input(format!(
                    "{shown}: line {line} holds a JSON {} ({}), not a record; every row must be a \
                     JSON object such as {{\"text\": \"...\"}}",
                    json_kind(&other),
                    truncate(&other.to_string(), 40),
                )))
            }
        }
    }
    Ok(rows)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn rows_to_batch(path: &Path, rows: &[Row], specials: &Specials) -> Result<RecordBatch> {
    // Infer the schema row by row so a conflict can name the line where it appears.
    let mut schema_ty = Ty::Struct(Vec::new());
    for row in rows {
        let conflict = |c: Conflict| {
            let field = c.path.join(".").replace(".[]", "[]");
            Error::input(format!(
                "{}: field '{field}' mixes {} and {} values (line {}); a column must hold one \
                 type: make every row use the same type for '{field}' (e.g. quote the numbers)",
                path.display(),
                c.a,
                c.b,
                row.line
            ))
        };
        let fields = row
            .object
            .iter()
            .map(|(key, value)| {
                Ty::of(value, specials)
                    .map(|t| (key.clone(), t))
                    .map_err(|c| c.inside(key))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(conflict)?;
        schema_ty = schema_ty.merge(Ty::Struct(fields)).map_err(conflict)?;
    }
    let Ty::Struct(columns) = schema_ty else {
        return Err(Error::input(format!(
            "{}: no records found",
            path.display()
        )));
    };
    let schema = Arc::new(Schema::new(struct_fields(&columns)));
    let arrays = columns
        .iter()
        .map(|(name, ty)| {
            let values: Vec<Option<&Value>> = rows.iter().map(|r| r.object.get(name)).collect();
            build(ty, &values, specials)
        })
        .collect::<Vec<_>>();
    RecordBatch::try_new_with_options(
        schema,
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )
    .map_err(|e| Error::input(format!("{}: cannot build the table ({e})", path.display())))
}

/// A value that is there and not `null`.
fn present<'a>(value: &Option<&'a Value>) -> Option<&'a Value> {
    value.filter(|v| !v.is_null())
}

/// The Arrow array of values of an inferred type (missing and `null` values are nulls).
fn build(ty: &Ty, values: &[Option<&Value>], specials: &Specials) -> ArrayRef {
    match ty {
        Ty::Null => Arc::new(NullArray::new(values.len())),
        Ty::Bool => Arc::new(
            values
                .iter()
                .map(|v| present(v).and_then(Value::as_bool))
                .collect::<BooleanArray>(),
        ),
        Ty::Int => Arc::new(
            values
                .iter()
                .map(|v| present(v).and_then(Value::as_i64))
                .collect::<Int64Array>(),
        ),
        Ty::Float => Arc::new(
            values
                .iter()
                .map(|v| match present(v)? {
                    Value::String(s) => specials.value(s),
                    other => other.as_f64(),
                })
                .collect::<Float64Array>(),
        ),
        Ty::Str => Arc::new(
            values
                .iter()
                .map(|v| present(v).and_then(Value::as_str))
                .collect::<StringArray>(),
        ),
        Ty::List(item) => {
            let mut offsets = Vec::with_capacity(values.len() + 1);
            offsets.push(0i32);
            let mut children: Vec<Option<&Value>> = Vec::new();
            let mut valid = Vec::with_capacity(values.len());
            for v in values {
                let items = present(v).and_then(Value::as_array);
                valid.push(items.is_some());
                children.extend(items.into_iter().flatten().map(Some));
                offsets.push(children.len() as i32);
            }
            let field = Arc::new(Field::new("item", item.arrow(), true));
            Arc::new(ListArray::new(
                field,
                OffsetBuffer::new(offsets.into()),
                build(item, &children, specials),
                Some(NullBuffer::from(valid)),
            ))
        }
        Ty::Struct(fields) => {
            let objects: Vec<Option<&serde_json::Map<String, Value>>> = values
                .iter()
                .map(|v| present(v).and_then(Value::as_object))
                .collect();
            let nulls = NullBuffer::from(objects.iter().map(Option::is_some).collect::<Vec<_>>());
            if fields.is_empty() {
                return Arc::new(StructArray::new_empty_fields(values.len(), Some(nulls)));
            }
            let children = fields
                .iter()
                .map(|(name, ty)| {
                    let child: Vec<Option<&Value>> = objects
                        .iter()
                        .map(|o| o.and_then(|o| o.get(name)))
                        .collect();
                    build(ty, &child, specials)
                })
                .collect();
            Arc::new(StructArray::new(
                struct_fields(fields),
                children,
                Some(nulls),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn multi_line_objects_and_blank_lines_are_rows() {
        let (_d, path) = write("{\"a\": 1,\n \"b\": \"x\"}\n\n{\"a\": 2, \"b\": \"y\"}\n");
        let batch = read_json(&path).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema().field(0).data_type(), &DataType::Int64);
    }

    #[test]
    fn python_nan_and_infinity_are_floats() {
        // Python's json.dumps writes these; pyarrow reads them (values checked against datasets).
        let (_d, path) = write(
            "{\"r\": NaN, \"s\": \"NaN\"}\n{\"r\": 1, \"s\": \"Infinity\"}\n{\"r\": [Infinity][0], \"s\": \"x\"}\n",
        );
        assert!(read_json(&path).is_err());
        let (_d, path) = write(
            "{\"r\": NaN, \"s\": \"NaN\", \"l\": [-Infinity]}\n{\"r\": 1, \"s\": \"\\\"Infinity\", \"l\": []}\n",
        );
        let batch = read_json(&path).unwrap();
        let r = batch
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert!(r.value(0).is_nan() && r.value(1) == 1.0);
        let s = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!([s.value(0), s.value(1)], ["NaN", "\"Infinity"]);
        let l = batch
            .column(2)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        let first = l.value(0);
        let first = first.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(first.value(0), f64::NEG_INFINITY);
    }

    #[test]
    fn conflicts_name_the_field_and_line() {
        let (_d, path) = write("{\"a\": {\"b\": [1]}}\n{\"a\": {\"b\": [\"x\"]}}\n");
        let err = read_json(&path).unwrap_err().to_string();
        assert!(err.contains("'a.b[]'") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn non_object_lines_are_rejected_with_their_line() {
        let (_d, path) = write("{\"a\": 1}\n\n[1, 2]\n");
        let err = read_json(&path).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("list"), "{err}");
    }
}
