//! `bergson query --record`: results appended to a CSV (`query, direction, result,
//! result_index, score`), the header written only to a new or empty file, each row flushed as
//! it is written so an interrupted session keeps what it found. Written as Python's `csv`
//! module writes (minimal quoting, `\r\n` line ends, scores as Python prints floats).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::data::pyvalue::float_repr;
use crate::error::IoContext;
use crate::{Error, Result};

/// An open query record.
pub struct Recorder {
    writer: csv::Writer<File>,
    path: PathBuf,
}

impl Recorder {
    /// Opens (creating it and its directory if needed) the CSV at `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).at_path(parent)?;
        }
        let needs_header = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .at_path(path)?;
        let writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(file);
        let mut r = Recorder {
            writer,
            path: path.to_path_buf(),
        };
        if needs_header {
            r.row(&["query", "direction", "result", "result_index", "score"])?;
        }
        Ok(r)
    }

    fn row(&mut self, fields: &[&str]) -> Result<()> {
        self.writer
            .write_record(fields)
            .map_err(|e| Error::input(format!("{}: {e}", self.path.display())))?;
        self.writer.flush().at_path(&self.path)
    }

    /// Appends one result.
    pub fn append(
        &mut self,
        query: &str,
        direction: &str,
        result: &str,
        index: i64,
        score: f32,
    ) -> Result<()> {
        let index = index.to_string();
        let score = float_repr(score as f64);
        self.row(&[query, direction, result, &index, &score])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_like_pythons_csv_module() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/r.csv");
        let mut r = Recorder::open(&path).unwrap();
        r.append("q, one", "Top", "say \"hi\"\nthere", 3, 0.1)
            .unwrap();
        drop(r);
        let mut r = Recorder::open(&path).unwrap();
        r.append("q", "Bottom", "x", 0, -1e-5).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "query,direction,result,result_index,score\r\n\
             \"q, one\",Top,\"say \"\"hi\"\"\nthere\",3,0.10000000149011612\r\n\
             q,Bottom,x,0,-9.999999747378752e-06\r\n"
        );
    }
}
