//! Readers for single data files, one per format, each returning the whole file as one table.
//! Every reader streams its file (time linear in its size), reports progress as a
//! [`Phase`] and stops at a Ctrl-C ([`crate::interrupt`]) within one batch of rows.

pub mod csv;
pub mod json;

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::IoContext;
use crate::progress::Phase;
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

/// Rows per batch decoded from Parquet (between Ctrl-C checks).
const PARQUET_BATCH_ROWS: usize = 16_384;

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
    let rows = builder.metadata().file_metadata().num_rows();
    let reader = builder
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| bad(&e))?;
    let mut phase = Phase::new("reading Parquet", "rows", u64::try_from(rows).ok());
    let batches = read_batches(reader, |_, batch| phase.inc(batch.num_rows() as u64))
        .map_err(|e| e.or_input(|e| bad(&e)))?;
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
    let size = file.metadata().at_path(path)?.len();
    let mut phase = Phase::new("reading Arrow", "bytes", Some(size));
    let (schema, batches) = if is_file_format {
        let reader = FileReader::try_new(file, None).map_err(|e| bad(&e))?;
        let schema = reader.schema();
        let per_batch = size / reader.num_batches().max(1) as u64;
        let batches = read_batches(reader, |i, _| phase.set((i as u64 + 1) * per_batch));
        (schema, batches)
    } else {
        let (file, read) = Counted::new(file);
        let reader = StreamReader::try_new(BufReader::new(file), None).map_err(|e| bad(&e))?;
        let schema = reader.schema();
        (schema, read_batches(reader, |_, _| phase.set(read.get())))
    };
    let batches = batches.map_err(|e| e.or_input(|e| bad(&e)))?;
    concat(path, &schema, &batches)
}

/// A batch reader's failure: the reader's own error, or Ctrl-C.
enum BatchError {
    Arrow(arrow::error::ArrowError),
    Interrupted,
}

impl BatchError {
    /// The library error, with a reader error turned into the user's input error by `bad`.
    fn or_input(self, bad: impl FnOnce(arrow::error::ArrowError) -> Error) -> Error {
        match self {
            BatchError::Arrow(e) => bad(e),
            BatchError::Interrupted => Error::Interrupted,
        }
    }
}

/// Every batch of `reader`, calling `progress` after each and polling for Ctrl-C
/// ([`crate::interrupt`]) before each.
fn read_batches(
    reader: impl Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>,
    mut progress: impl FnMut(usize, &RecordBatch),
) -> std::result::Result<Vec<RecordBatch>, BatchError> {
    let mut batches = Vec::new();
    for (i, batch) in reader.enumerate() {
        if crate::interrupt::requested() {
            return Err(BatchError::Interrupted);
        }
        let batch = batch.map_err(BatchError::Arrow)?;
        progress(i, &batch);
        batches.push(batch);
    }
    Ok(batches)
}

/// A reader that counts the bytes read through it, for progress in bytes.
pub(crate) struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R> Counted<R> {
    /// `inner` counted, and the count.
    pub(crate) fn new(inner: R) -> (Counted<R>, Rc<Cell<u64>>) {
        let read = Rc::new(Cell::new(0));
        (
            Counted {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
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
