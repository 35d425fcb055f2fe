//! CSV files, typed as the `datasets` csv loader types them (it reads with pandas, then
//! `pyarrow.Table.from_pandas`): a column of integers is int64, of numbers float64, of
//! `True`/`False` bool, anything else large_string. pandas' default missing-value markers (empty,
//! `NA`, `null`, `None`, `NaN`, ...) become nulls, and an integer column with a missing value
//! becomes float64, as in pandas.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, LargeStringArray, StringArray,
};
use arrow::compute::concat_batches;
use arrow::csv::reader::Format;
use arrow::csv::ReaderBuilder;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::error::IoContext;
use crate::{Error, Result};

/// pandas' `STR_NA_VALUES`: strings `read_csv` turns into NaN by default.
const NA_VALUES: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// Reads a CSV file (with a header row) into one table; `delimiter` is `b','` or `b'\t'`.
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
    // Read every field as text first, then type each column as pandas would.
    let text_schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = ReaderBuilder::new(text_schema.clone())
        .with_format(format)
        .build(File::open(path).at_path(path)?)
        .map_err(bad)?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    let text = concat_batches(&text_schema, &batches).map_err(bad)?;
    let mut fields = Vec::with_capacity(names.len());
    let mut columns = Vec::with_capacity(names.len());
    for (name, column) in names.iter().zip(text.columns()) {
        let strings = column
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                Error::input(format!(
                    "{shown}: column '{name}' could not be read as text"
                ))
            })?;
        let typed = type_column(strings);
        fields.push(Field::new(name, typed.data_type().clone(), true));
        columns.push(typed);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(bad)
}

/// One CSV column's values typed as pandas' parser would.
fn type_column(strings: &StringArray) -> ArrayRef {
    let values: Vec<Option<&str>> = strings
        .iter()
        .map(|v| v.filter(|s| !NA_VALUES.contains(s)))
        .collect();
    let present = || values.iter().flatten();
    let has_missing = values.iter().any(Option::is_none);
    if present().all(|s| parse_int(s).is_some()) && !has_missing {
        return Arc::new(
            values
                .iter()
                .map(|v| v.and_then(parse_int))
                .collect::<Int64Array>(),
        );
    }
    if present().all(|s| parse_float(s).is_some()) {
        // Includes all-missing columns and integer columns with gaps: float64 with nulls.
        return Arc::new(
            values
                .iter()
                .map(|v| v.and_then(parse_float))
                .collect::<Float64Array>(),
        );
    }
    if present().all(|s| parse_bool(s).is_some()) {
        return Arc::new(
            values
                .iter()
                .map(|v| v.and_then(parse_bool))
                .collect::<BooleanArray>(),
        );
    }
    Arc::new(values.iter().copied().collect::<LargeStringArray>())
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
