//! Readers for single data files, one per format, each returning the whole file as one table.

pub mod csv;
pub mod json;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::IoContext;
use crate::{Error, Result};

/// A data file format `datasets` reads by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `.json`, `.jsonl`, `.ndjson`.
    Json,
    /// `.csv`.
    Csv,
    /// `.tsv` (tab-separated CSV).
    Tsv,
    /// `.parquet`.
    Parquet,
    /// `.arrow` (Arrow IPC, stream or file format).
    Arrow,
}

impl Format {
    /// The format of a file name, by extension (as datasets' `_EXTENSION_TO_MODULE`).
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?;
        Some(match ext {
            "json" | "jsonl" | "ndjson" => Format::Json,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "parquet" => Format::Parquet,
            "arrow" => Format::Arrow,
            _ => return None,
        })
    }
}

/// Reads one data file of the given format.
pub fn read_file(path: &Path, format: Format) -> Result<RecordBatch> {
    if !path.is_file() {
        return Err(Error::input(format!(
            "dataset file '{}' does not exist; check the path (or pass a save_to_disk directory or a \
             hub dataset id)",
            path.display()
        )));
    }
    match format {
        Format::Json => json::read_json(path),
        Format::Csv => csv::read_csv(path, b','),
        Format::Tsv => csv::read_csv(path, b'\t'),
        Format::Parquet => read_parquet(path),
        Format::Arrow => read_arrow(path),
    }
}

/// Reads a Parquet file.
pub fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::input(format!(
            "{}: not a readable Parquet file ({e}); re-export it (e.g. Dataset.to_parquet) or \
             pass it in another format",
            path.display()
        ))
    };
    let file = File::open(path).at_path(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| bad(&e))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    concat(path, &schema, &batches)
}

/// Reads an Arrow IPC file, in the stream format (what datasets writes) or the file format.
pub fn read_arrow(path: &Path) -> Result<RecordBatch> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::input(format!(
            "{}: not a readable Arrow IPC file ({e}); write it with pyarrow.ipc or \
             Dataset.save_to_disk, or pass another format",
            path.display()
        ))
    };
    let mut magic = [0u8; 6];
    let is_file_format = File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"ARROW1")
        .unwrap_or(false);
    let file = File::open(path).at_path(path)?;
    let (schema, batches) = if is_file_format {
        let reader = FileReader::try_new(file, None).map_err(|e| bad(&e))?;
        let schema = reader.schema();
        (
            schema,
            reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?,
        )
    } else {
        let reader = StreamReader::try_new(BufReader::new(file), None).map_err(|e| bad(&e))?;
        let schema = reader.schema();
        (
            schema,
            reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?,
        )
    };
    concat(path, &schema, &batches)
}

/// Concatenates a file's record batches into one table.
pub(crate) fn concat(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<RecordBatch> {
    concat_batches(schema, batches).map_err(|e| {
        Error::input(format!(
            "{}: record batches do not fit together ({e}); re-export the file",
            path.display()
        ))
    })
}
