//! CSV files, typed as the `datasets` csv loader types them (it reads with pandas, then
//! `pyarrow.Table.from_pandas`): a column of integers is int64, of numbers float64, of
//! `True`/`False` bool, anything else large_string. pandas' default missing-value markers (empty,
//! `NA`, `null`, `None`, `NaN`, ...) become nulls, and an integer column with a missing value
//! becomes float64, as in pandas.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, LargeStringBuilder, StringArray,
};
use arrow::csv::reader::Format;
use arrow::csv::ReaderBuilder;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::Counted;
use crate::error::IoContext;
use crate::progress::Phase;
use crate::{Error, Result};

/// pandas' `STR_NA_VALUES`: strings `read_csv` turns into NaN by default.
const NA_VALUES: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// Rows per batch the CSV parser hands over.
const BATCH_ROWS: usize = 8192;

/// Reads a CSV file (with a header row) into one table; `delimiter` is `b','` or `b'\t'`.
/// The file is streamed twice: once to find each column's type, once to fill the typed columns,
/// so memory holds the finished table and one batch of text, never the whole file.
pub fn read_csv(path: &Path, delimiter: u8) -> Result<RecordBatch> {
    let shown = path.display();
    let bad = |e: arrow::error::ArrowError| {
        Error::input(format!(
            "{shown}: malformed CSV: {e}; fix the file (a header row, then one row per line)"
        ))
    };
    let format = Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    let (header, _) = format
        .infer_schema(File::open(path).at_path(path)?, Some(0))
        .map_err(bad)?;
    let names: Vec<String> = header.fields().iter().map(|f| f.name().clone()).collect();
    if names.is_empty() || names.iter().all(String::is_empty) {
        return Err(Error::input(format!(
            "{shown}: the CSV file has no header row; add one naming the columns (e.g. text,label)"
        )));
    }
    if let Some(dup) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Err(Error::input(format!(
            "{shown}: the CSV header names column '{dup}' twice; give every column a distinct name"
        )));
    }
    // Every field is read as text, then typed per column as pandas would.
    let text_schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let size = std::fs::metadata(path).at_path(path)?.len();
    let mut phase = Phase::new("reading CSV", "bytes", Some(2 * size));
    let mut kinds = vec![ColumnKind::default(); names.len()];
    for_each_batch(
        path,
        &format,
        &text_schema,
        &mut |done| phase.set(done),
        &mut |batch| {
            for (kind, column) in kinds.iter_mut().zip(batch.columns()) {
                kind.observe(strings(column)?);
            }
            Ok(())
        },
    )?;
    let mut columns: Vec<TypedColumn> = kinds.iter().map(ColumnKind::column).collect();
    for_each_batch(
        path,
        &format,
        &text_schema,
        &mut |done| phase.set(size + done),
        &mut |batch| {
            for (column, text) in columns.iter_mut().zip(batch.columns()) {
                column.append(strings(text)?);
            }
            Ok(())
        },
    )?;
    let columns: Vec<ArrayRef> = columns.into_iter().map(TypedColumn::finish).collect();
    let fields: Vec<Field> = names
        .iter()
        .zip(&columns)
        .map(|(name, c)| Field::new(name, c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(bad)
}

/// Streams the file's rows as batches of text columns into `visit`, polling for Ctrl-C
/// ([`crate::interrupt`]) between batches and reporting the bytes read to `progress`.
fn for_each_batch(
    path: &Path,
    format: &Format,
    schema: &SchemaRef,
    progress: &mut dyn FnMut(u64),
    visit: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let shown = path.display();
    let bad = |e: arrow::error::ArrowError| {
        Error::input(format!(
            "{shown}: malformed CSV: {e}; fix the file (a header row, then one row per line)"
        ))
    };
    let (file, read) = Counted::new(File::open(path).at_path(path)?);
    let reader = ReaderBuilder::new(schema.clone())
        .with_format(format.clone())
        .with_batch_size(BATCH_ROWS)
        .build(file)
        .map_err(bad)?;
    for batch in reader {
        crate::interrupt::check()?;
        visit(&batch.map_err(bad)?)?;
        progress(read.get());
    }
    Ok(())
}

/// A text column of one batch.
fn strings(column: &ArrayRef) -> Result<&StringArray> {
    column
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::input("a CSV column could not be read as text"))
}

/// What one column's values allow, as pandas' parser decides a column's type.
#[derive(Debug, Clone, Copy)]
struct ColumnKind {
    /// Every present value parses as an integer / a float / a bool.
    ints: bool,
    floats: bool,
    bools: bool,
    /// Some value is missing (a pandas NA marker).
    missing: bool,
}

impl Default for ColumnKind {
    fn default() -> Self {
        ColumnKind {
            ints: true,
            floats: true,
            bools: true,
            missing: false,
        }
    }
}

impl ColumnKind {
    fn observe(&mut self, strings: &StringArray) {
        for value in strings.iter().map(present) {
            match value {
                None => self.missing = true,
                Some(s) => {
                    self.ints &= parse_int(s).is_some();
                    self.floats &= parse_float(s).is_some();
                    self.bools &= parse_bool(s).is_some();
                }
            }
        }
    }

    /// The column pandas would make: int64 without gaps, else float64 (all-missing columns
    /// and integer columns with gaps included), else bool, else large_string.
    fn column(&self) -> TypedColumn {
        if self.ints && !self.missing {
            TypedColumn::Int(Int64Builder::new())
        } else if self.floats {
            TypedColumn::Float(Float64Builder::new())
        } else if self.bools {
            TypedColumn::Bool(BooleanBuilder::new())
        } else {
            TypedColumn::Str(LargeStringBuilder::new())
        }
    }
}

/// One column being filled with its values typed.
enum TypedColumn {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Str(LargeStringBuilder),
}

impl TypedColumn {
    fn append(&mut self, strings: &StringArray) {
        let values = strings.iter().map(present);
        match self {
            TypedColumn::Int(b) => values.for_each(|v| b.append_option(v.and_then(parse_int))),
            TypedColumn::Float(b) => values.for_each(|v| b.append_option(v.and_then(parse_float))),
            TypedColumn::Bool(b) => values.for_each(|v| b.append_option(v.and_then(parse_bool))),
            TypedColumn::Str(b) => values.for_each(|v| b.append_option(v)),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            TypedColumn::Int(mut b) => Arc::new(b.finish()),
            TypedColumn::Float(mut b) => Arc::new(b.finish()),
            TypedColumn::Bool(mut b) => Arc::new(b.finish()),
            TypedColumn::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

/// A field's text, or `None` for pandas' missing-value markers.
fn present(value: Option<&str>) -> Option<&str> {
    value.filter(|s| !NA_VALUES.contains(s))
}

fn parse_int(s: &str) -> Option<i64> {
    s.trim().parse().ok()
}

fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    // Rust accepts "infinity"/"nan" spellings pandas also reads; reject Rust-only forms.
    if t.is_empty() || t.contains('_') {
        return None;
    }
    t.parse().ok()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "True" | "TRUE" | "true" => Some(true),
        "False" | "FALSE" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn column_types_see_every_batch() {
        // More rows than one parser batch; the value that decides each type comes last.
        let n = 3 * BATCH_ROWS + 5;
        let mut text = String::from("a,b,c,d\n");
        for i in 0..n {
            let last = i == n - 1;
            let a = if last { String::new() } else { i.to_string() };
            let b = if last { "word".into() } else { i.to_string() };
            let c = if i % 2 == 0 { "True" } else { "False" };
            text.push_str(&format!("{a},{b},{c},{}\n", i as f64 / 2.0));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, text).unwrap();
        let batch = read_csv(&path, b',').unwrap();
        assert_eq!(batch.num_rows(), n);
        let types: Vec<&DataType> = batch.columns().iter().map(|c| c.data_type()).collect();
        assert_eq!(
            types,
            [
                &DataType::Float64,
                &DataType::LargeUtf8,
                &DataType::Boolean,
                &DataType::Float64
            ]
        );
        let a = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(a.value(n - 2), (n - 2) as f64);
        assert!(a.is_null(n - 1));
        assert_eq!(batch.column(1).as_string::<i64>().value(n - 1), "word");
    }
}
