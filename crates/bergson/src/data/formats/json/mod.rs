//! JSON Lines and JSON files, read as the `datasets` json loader does: one JSON object per row,
//! either one after another (JSON Lines; objects may span lines) or as a top-level list. A list
//! of non-objects becomes a `text` column. Column types follow pyarrow's JSON inference (see
//! [`types`]); columns and struct fields in first-seen order.
//!
//! The file is streamed twice, record by record ([`records`]): the first pass checks it and
//! infers the column types, the second appends every row to Arrow builders. Time is linear in
//! the file and memory holds the finished columns plus one record, never the whole file.
//! Errors name the line of the record at fault; which error is reported when a file has
//! several follows a reader of the whole file: not UTF-8 first, then the first malformed or
//! non-record row, then a list mixing records and values, then the first type conflict.

mod arrays;
mod records;
mod specials;
mod types;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::{Map, Value};

use self::arrays::ColumnBuilder;
use self::records::{Layout, Position, Record, RecordReader, ScanError};
use self::specials::Specials;
use self::types::{struct_fields, Conflict, Ty};
use crate::error::IoContext;
use crate::progress::Phase;
use crate::{Error, Result};

/// Rows between progress updates.
const PROGRESS_EVERY: u64 = 256;

/// Reads a `.json` / `.jsonl` file into one table.
pub fn read_json(path: &Path) -> Result<RecordBatch> {
    let size = std::fs::metadata(path).at_path(path)?.len();
    // Two passes over the file.
    let mut phase = Phase::new("reading JSON", "bytes", Some(2 * size));
    let columns = infer_columns(path, &mut phase)?;
    build_table(path, &columns, &mut |done| phase.set(size + done))
}

/// One row: the line it is reported at, its fields, and its special-number markers.
struct Row {
    line: usize,
    object: Map<String, Value>,
    specials: Specials,
    /// A non-object item of a top-level list, held as `{"text": item}`.
    wrapped: bool,
}

/// Pass 1: checks every row and infers the columns.
fn infer_columns(path: &Path, phase: &mut Phase) -> Result<Vec<(String, Ty)>> {
    let mut schema = Ty::Struct(Vec::new());
    let mut conflict: Option<Error> = None;
    let (mut objects, mut others) = (0usize, 0usize);
    let layout = for_each_row(path, true, &mut |done| phase.set(done), &mut |row| {
        if row.wrapped {
            others += 1;
        } else {
            objects += 1;
        }
        if conflict.is_none() {
            // Types merge row by row so a conflict can name the line where it appears; it is
            // reported once the whole file is known to parse.
            let merged = Ty::of_fields(&row.object, &row.specials)
                .and_then(|ty| std::mem::replace(&mut schema, Ty::Null).merge(ty));
            match merged {
                Ok(ty) => schema = ty,
                Err(c) => conflict = Some(conflict_error(path, &c, row.line)),
            }
        }
        Ok(())
    })?;
    if matches!(layout, Layout::List { .. }) && objects > 0 && others > 0 {
        return Err(Error::input(format!(
            "{}: the top-level list mixes JSON objects and other values; make every item \
             a record such as {{\"text\": ...}}",
            path.display()
        )));
    }
    if let Some(e) = conflict {
        return Err(e);
    }
    match schema {
        Ty::Struct(columns) => Ok(columns),
        _ => Err(Error::input(format!(
            "{}: no records found",
            path.display()
        ))),
    }
}

/// Pass 2: every row appended to the columns' builders.
fn build_table(
    path: &Path,
    columns: &[(String, Ty)],
    progress: &mut dyn FnMut(u64),
) -> Result<RecordBatch> {
    let mut builders: Vec<(&str, ColumnBuilder)> = columns
        .iter()
        .map(|(name, ty)| (name.as_str(), ColumnBuilder::new(ty)))
        .collect();
    let mut rows = 0usize;
    for_each_row(path, false, progress, &mut |row| {
        for (name, builder) in &mut builders {
            builder.append(row.object.get(*name), &row.specials);
        }
        rows += 1;
        Ok(())
    })?;
    let schema = Arc::new(Schema::new(struct_fields(columns)));
    let arrays = builders.into_iter().map(|(_, b)| b.finish()).collect();
    RecordBatch::try_new_with_options(
        schema,
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| Error::input(format!("{}: cannot build the table ({e})", path.display())))
}

/// Streams the rows of `path` into `visit`, polling for Ctrl-C ([`crate::interrupt`]) at
/// every row and reporting the bytes scanned to `progress`. Returns the file's layout.
fn for_each_row(
    path: &Path,
    check_utf8: bool,
    progress: &mut dyn FnMut(u64),
    visit: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<Layout> {
    let file = File::open(path).at_path(path)?;
    let mut reader = RecordReader::new(file, check_utf8).map_err(|e| scan_error(path, e))?;
    let layout = reader.layout();
    let mut count = 0u64;
    loop {
        crate::interrupt::check()?;
        let parsed = match reader.next_record() {
            Ok(Some(record)) => parse_row(path, layout, record),
            Ok(None) => break,
            Err(e) => Err(scan_error(path, e)),
        };
        match parsed {
            Ok(row) => visit(row)?,
            Err(e) => return Err(first_error(&mut reader, path, e)),
        }
        count += 1;
        if count.is_multiple_of(PROGRESS_EVERY) {
            progress(reader.consumed());
        }
    }
    progress(reader.consumed());
    Ok(layout)
}

/// `err`, unless the rest of the file is not UTF-8: that is reported first.
fn first_error<R: Read>(reader: &mut RecordReader<R>, path: &Path, err: Error) -> Error {
    match reader.check_rest() {
        Err(e @ ScanError::Utf8 { .. }) => scan_error(path, e),
        _ => err,
    }
}

fn scan_error(path: &Path, e: ScanError) -> Error {
    match e {
        ScanError::Io(e) => Error::io(path, e),
        ScanError::Utf8 { offset } => Error::input(format!(
            "{}: not UTF-8 text (invalid byte at offset {offset}); save the file as UTF-8",
            path.display()
        )),
        ScanError::Syntax { message, at } => list_syntax_error(
            path,
            at.line,
            &format!("{message} at line {} column {}", at.line, at.column),
        ),
    }
}

fn list_syntax_error(path: &Path, line: usize, detail: &str) -> Error {
    Error::input(format!(
        "{}: malformed JSON at line {line} ({detail}); fix the file (a .json file holds one \
         list of records, a .jsonl file one JSON object per line)",
        path.display()
    ))
}

/// Parses one record into a row.
fn parse_row(path: &Path, layout: Layout, record: Record<'_>) -> Result<Row> {
    let shown = path.display();
    let (value, specials) = if record.has_specials {
        let text = std::str::from_utf8(record.bytes).map_err(|_| {
            Error::input(format!(
                "{shown}: not UTF-8 text (line {}); save the file as UTF-8",
                record.start.line
            ))
        })?;
        let (text, specials) = Specials::replace(text);
        (serde_json::from_str::<Value>(&text), specials)
    } else {
        (
            serde_json::from_slice::<Value>(record.bytes),
            Specials::none(),
        )
    };
    let value = value.map_err(|e| {
        let (detail, line) = located(&e, record.start);
        match layout {
            Layout::Lines => Error::input(format!(
                "{shown}: malformed JSON in the record at line {} ({detail}); fix that line \
                 (JSON Lines files hold one complete JSON object per line)",
                record.start.line
            )),
            Layout::List { .. } => list_syntax_error(path, line, &detail),
        }
    })?;
    let line = match layout {
        Layout::Lines => record.start.line,
        // Rows of a list are reported at the line the list starts on.
        Layout::List { start } => start.line,
    };
    match (layout, value) {
        (_, Value::Object(object)) => Ok(Row {
            line,
            object,
            specials,
            wrapped: false,
        }),
        (Layout::Lines, other) => Err(Error::input(format!(
            "{shown}: line {line} holds a JSON {} ({}), not a record; every row must be a \
             JSON object such as {{\"text\": \"...\"}}",
            json_kind(&other),
            truncate(&other.to_string(), 40),
        ))),
        // A list of plain values is a `text` column, as datasets reads it.
        (Layout::List { .. }, other) => Ok(Row {
            line,
            object: [("text".to_string(), other)].into_iter().collect(),
            specials,
            wrapped: true,
        }),
    }
}

/// serde_json's error for a record, with its line and column counted in the file.
fn located(e: &serde_json::Error, start: Position) -> (String, usize) {
    let line = start.line + e.line().saturating_sub(1);
    let column = if e.line() <= 1 {
        start.column + e.column().saturating_sub(1)
    } else {
        e.column()
    };
    let text = e.to_string();
    let what = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    (format!("{what} at line {line} column {column}"), line)
}

fn conflict_error(path: &Path, c: &Conflict, line: usize) -> Error {
    let field = c.field();
    Error::input(format!(
        "{}: field '{field}' mixes {} and {} values (line {line}); a column must hold one \
         type: make every row use the same type for '{field}' (e.g. quote the numbers)",
        path.display(),
        c.a,
        c.b,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, ListArray, StringArray};
    use arrow::datatypes::DataType;

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

    /// A JSON Lines file of `n` two-line records (`{"i": k,\n "text": "..."}`), over several
    /// read chunks.
    fn deep_file(n: usize) -> String {
        (0..n)
            .map(|k| {
                format!(
                    "{{\"i\": {k},\n \"text\": \"row {k} {}\"}}\n",
                    "x".repeat(40)
                )
            })
            .collect()
    }

    #[test]
    fn errors_deep_in_a_file_name_their_line() {
        let n = 40_000; // ~2.5 MB: the scan crosses read chunks
        let body = deep_file(n);
        // A record cut short: record k starts on line 2k + 1.
        let text = format!("{body}{{\"i\": 1,\n \"text\": \"cut\n");
        let (_d, path) = write(&text);
        let err = read_json(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("record at line {}", 2 * n + 1)),
            "{err}"
        );
        // The parser's message and position are those of serde_json reading the whole file.
        let whole = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .find_map(std::result::Result::err)
            .unwrap();
        assert!(err.contains(&format!("({whole})")), "{err} vs {whole}");
        // A type conflict.
        let (_d, path) = write(&format!("{body}{{\"i\": \"seven\"}}\n"));
        let err = read_json(&path).unwrap_err().to_string();
        assert!(
            err.contains("'i'") && err.contains(&format!("line {}", 2 * n + 1)),
            "{err}"
        );
        // A non-record.
        let (_d, path) = write(&format!("{body}\n\n[1]\n"));
        let err = read_json(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("line {} holds a JSON list", 2 * n + 3)),
            "{err}"
        );
        // And the rows of a good file all arrive.
        let (_d, path) = write(&body);
        let batch = read_json(&path).unwrap();
        assert_eq!(batch.num_rows(), n);
        let text = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(text.value(n - 1).starts_with(&format!("row {}", n - 1)));
    }

    #[test]
    fn error_precedence_follows_a_whole_file_reader() {
        // Not UTF-8 wins over an earlier malformed record ...
        let (_d, path) = write("{\"a\": 1}\n{\"a\": \n{\"a\": \"\u{e9}\"}\n");
        std::fs::write(&path, b"{\"a\": 1}\n{\"a\" \n{\"a\": \"\xe9\"}\n").unwrap();
        let err = read_json(&path).unwrap_err().to_string();
        assert!(
            err.contains("not UTF-8") && err.contains("offset 22"),
            "{err}"
        );
        // ... and a malformed record wins over an earlier type conflict.
        let (_d, path) = write("{\"a\": 1}\n{\"a\": \"x\"}\n{\"a\" 2}\n");
        let err = read_json(&path).unwrap_err().to_string();
        assert!(err.contains("malformed") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn top_level_lists_are_rows() {
        let (_d, path) = write("\n[{\"a\": 1, \"b\": NaN},\n {\"a\": 2.5}]\n");
        let batch = read_json(&path).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema().field(0).data_type(), &DataType::Float64);
        let (_d, path) = write("[\"one\", \"two\"]");
        let batch = read_json(&path).unwrap();
        assert_eq!(batch.schema().field(0).name(), "text");
        for (text, want) in [
            ("[{\"a\": 1}, 2]", "mixes JSON objects"),
            ("\n[{\"a\": 1},\n {\"a\": }]", "malformed JSON at line 3"),
            (
                "[{\"a\": 1}\n {\"a\": 2}]",
                "expected `,` or `]` at line 2 column 2",
            ),
            (
                "[{\"a\": 1}, {\"a\": \"x\"}]",
                "'a' mixes int and string values (line 1)",
            ),
        ] {
            let (_d, path) = write(text);
            let err = read_json(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn syntax_errors_match_a_whole_file_parse() {
        for text in [
            "{\"a\": 1}\n  {\"b\": x}",
            "{\"a\": 1}\n{\"b\":\n  tru}\n",
            "{\"a\": 1}}\n",
            "{\"a\": [1}\n",
            "\u{feff}  {\"a\": \"\\q\"}",
            "{\"a\": 1} {\"a\": 2,}",
            "{\"a\": -}",
        ] {
            let (_d, path) = write(text);
            let err = read_json(&path).unwrap_err().to_string();
            let whole = serde_json::Deserializer::from_str(text.trim_start_matches('\u{feff}'))
                .into_iter::<Value>()
                .find_map(std::result::Result::err)
                .unwrap();
            assert!(
                err.contains(&format!("({whole})")),
                "{text:?}: {err} vs {whole}"
            );
        }
    }
}
