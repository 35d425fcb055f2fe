//! The score store of `bergson score` (Bergson's `MemmapSequenceScoreWriter` /
//! `MemmapTokenScoreWriter`): `scores.bin` is a numpy structured array with one record per row
//! (document, or token with `attribute_tokens`), interleaving `score_i` and a `written_i` flag
//! per query column so an interrupted run can tell what it finished, and `info.json` holds the
//! dtype spec numpy reopens it with. Python's `bergson.load_scores` reads it.
//!
//! Layout: the pair `(score_i, written_i)` sits at offset `i * P` of the record, with
//! `P = next_power_of_two(itemsize + 1)` (8 bytes for float32, 4 for float16/bfloat16); the
//! record is `num_scores * P` bytes rounded up to a multiple of 8.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::error::IoContext;
use crate::{Error, Result};

/// `info.json` of a score store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreInfo {
    /// Rows are tokens (with `offsets.npy`) rather than documents.
    pub attribute_tokens: bool,
    /// Documents scored.
    pub num_items: usize,
    /// Records in scores.bin.
    pub num_rows: usize,
    /// Query columns.
    pub num_scores: usize,
    /// The numpy structured dtype: `{names, formats, offsets, itemsize}`.
    pub dtype: Value,
}

/// The record layout for `num_scores` columns of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLayout {
    /// Columns.
    pub num_scores: usize,
    /// The score dtype.
    pub kind: Kind,
    /// Bytes of one score.
    pub elem: usize,
    /// Bytes of one `(score, written)` pair, a power of two.
    pub pair: usize,
    /// Bytes of one record.
    pub itemsize: usize,
}

impl RecordLayout {
    /// The layout Bergson's `_score_struct_dtype` makes.
    pub fn new(num_scores: usize, kind: Kind) -> Result<Self> {
        let elem: usize = match kind {
            Kind::Float => 4,
            Kind::Half | Kind::BFloat16 => 2,
            other => {
                return Err(Error::internal(format!(
                    "score stores hold float32, float16 or bfloat16, not {other:?}"
                )))
            }
        };
        let pair = (elem + 1).next_power_of_two();
        let itemsize = (num_scores * pair).div_ceil(8) * 8;
        Ok(RecordLayout {
            num_scores,
            kind,
            elem,
            pair,
            itemsize,
        })
    }

    /// The numpy name of the score dtype.
    pub fn format(&self) -> &'static str {
        match self.kind {
            Kind::Half => "float16",
            Kind::BFloat16 => "bfloat16",
            _ => "float32",
        }
    }

    /// The structured dtype as Bergson writes it into info.json.
    pub fn dtype_json(&self) -> Value {
        let mut names = Vec::new();
        let mut formats = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..self.num_scores {
            names.push(Value::from(format!("score_{i}")));
            formats.push(Value::from(self.format()));
            offsets.push(Value::from(i * self.pair));
            names.push(Value::from(format!("written_{i}")));
            formats.push(Value::from("bool"));
            offsets.push(Value::from(i * self.pair + self.elem));
        }
        serde_json::json!({
            "names": names,
            "formats": formats,
            "offsets": offsets,
            "itemsize": self.itemsize,
        })
    }

    /// Reads the layout back from an info.json dtype spec (ours or Bergson's).
    pub fn from_info(info: &ScoreInfo) -> Result<Self> {
        let bad = |why: &str| Error::input(format!("score store info.json: {why}"));
        let formats = info
            .dtype
            .get("formats")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("dtype has no formats"))?;
        let first = formats.first().and_then(Value::as_str).unwrap_or("float32");
        let kind = match first.trim_start_matches(['<', '>', '=', '|']) {
            "float32" | "f4" => Kind::Float,
            "float16" | "f2" => Kind::Half,
            "bfloat16" => Kind::BFloat16,
            other => return Err(bad(&format!("unsupported score dtype '{other}'"))),
        };
        let layout = RecordLayout::new(info.num_scores, kind)?;
        let itemsize = info.dtype.get("itemsize").and_then(Value::as_u64);
        if itemsize != Some(layout.itemsize as u64) {
            return Err(bad(&format!(
                "itemsize {itemsize:?} does not match {} {} columns",
                info.num_scores, first
            )));
        }
        Ok(layout)
    }
}

/// A score store being written, memory-mapped.
pub struct ScoreWriter {
    path: PathBuf,
    map: Option<MmapMut>,
    layout: RecordLayout,
    num_rows: usize,
}

impl ScoreWriter {
    /// Creates `scores.bin` (zero-filled: nothing written) and `info.json` in `dir`, or reopens
    /// them when `resume` (checking that they describe the same store).
    pub fn create(
        dir: &Path,
        num_items: usize,
        num_rows: usize,
        num_scores: usize,
        kind: Kind,
        attribute_tokens: bool,
        resume: bool,
    ) -> Result<Self> {
        let layout = RecordLayout::new(num_scores, kind)?;
        let info = ScoreInfo {
            attribute_tokens,
            num_items,
            num_rows,
            num_scores,
            dtype: layout.dtype_json(),
        };
        let path = dir.join("scores.bin");
        let want = (num_rows * layout.itemsize) as u64;
        if resume {
            let existing = read_info(dir)?;
            let have = std::fs::metadata(&path).at_path(&path)?.len();
            if existing != info || have != want {
                return Err(Error::input(format!(
                    "{} holds scores of another shape; pass --overwrite to start over",
                    dir.display()
                )));
            }
        } else {
            let text =
                serde_json::to_string_pretty(&info).map_err(|e| Error::internal(e.to_string()))?;
            let info_path = dir.join("info.json");
            std::fs::write(&info_path, text).at_path(&info_path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resume)
            .open(&path)
            .at_path(&path)?;
        file.set_len(want).at_path(&path)?;
        // SAFETY: the file is ours (inside the run's `.part` directory) and sized above; no
        // other process maps it while the run holds it.
        let map = if want == 0 {
            None
        } else {
            Some(unsafe { MmapMut::map_mut(&file) }.at_path(&path)?)
        };
        Ok(ScoreWriter {
            path,
            map,
            layout,
            num_rows,
        })
    }

    /// The record layout.
    pub fn layout(&self) -> RecordLayout {
        self.layout
    }

    /// Writes `scores` `[rows.len(), width]` into columns `first_column..first_column+width` of
    /// the records `rows`, marking them written.
    pub fn write(&mut self, rows: &[usize], scores: &Tensor, first_column: usize) -> Result<()> {
        let size = scores.size();
        let (n, width) = (size[0] as usize, size[1] as usize);
        if n != rows.len() || first_column + width > self.layout.num_scores {
            return Err(Error::internal(format!(
                "{n} score rows of width {width} at column {first_column} do not fit {} ({} rows, {} columns)",
                self.path.display(),
                rows.len(),
                self.layout.num_scores
            )));
        }
        let values = scores
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(self.layout.kind)?
            .f_contiguous()?;
        let elem = self.layout.elem;
        let mut bytes = vec![0u8; values.numel() * elem];
        values.f_copy_data_u8(&mut bytes, values.numel())?;
        let Some(map) = self.map.as_mut() else {
            return Ok(());
        };
        let (pair, itemsize) = (self.layout.pair, self.layout.itemsize);
        for (r, &row) in rows.iter().enumerate() {
            if row >= self.num_rows {
                return Err(Error::internal(format!(
                    "score row {row} beyond {} rows of {}",
                    self.num_rows,
                    self.path.display()
                )));
            }
            let record = &mut map[row * itemsize..(row + 1) * itemsize];
            for c in 0..width {
                let at = (first_column + c) * pair;
                let src = &bytes[(r * width + c) * elem..(r * width + c + 1) * elem];
                record[at..at + elem].copy_from_slice(src);
                record[at + elem] = 1;
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        match &self.map {
            Some(m) => m.flush().at_path(&self.path),
            None => Ok(()),
        }
    }
}

/// Reads a store's `info.json`.
pub fn read_info(dir: &Path) -> Result<ScoreInfo> {
    let path = dir.join("info.json");
    let text = std::fs::read_to_string(&path).at_path(&path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{}: not a score store's info.json ({e}); pass a `bergson score` run directory",
            path.display()
        ))
    })
}

/// A finished score store, memory-mapped for reading.
pub struct ScoreStore {
    /// `info.json`.
    pub info: ScoreInfo,
    /// The record layout.
    pub layout: RecordLayout,
    /// `offsets.npy` of a per-token store.
    pub offsets: Option<Vec<i64>>,
    /// `candidates.npy`: the training row of each store row, when only candidates were scored.
    pub candidates: Option<Vec<i64>>,
    map: Option<Mmap>,
}

impl ScoreStore {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let info = read_info(dir)?;
        let layout = RecordLayout::from_info(&info)?;
        let path = dir.join("scores.bin");
        let file = File::open(&path).at_path(&path)?;
        let want = (info.num_rows * layout.itemsize) as u64;
        let have = file.metadata().at_path(&path)?.len();
        if have != want {
            return Err(Error::input(format!(
                "{}: {have} bytes, but info.json describes {want}; the store is damaged or incomplete",
                path.display()
            )));
        }
        // SAFETY: read-only map of a file we only read; values are copied out.
        let map = if want == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.at_path(&path)?)
        };
        let offsets = if info.attribute_tokens {
            Some(super::reader::read_offsets(&dir.join("offsets.npy"))?)
        } else {
            None
        };
        let candidates_path = dir.join("candidates.npy");
        let candidates = if candidates_path.exists() {
            Some(super::reader::read_offsets(&candidates_path)?)
        } else {
            None
        };
        Ok(ScoreStore {
            info,
            layout,
            offsets,
            candidates,
            map,
        })
    }

    /// All scores as float64, `[num_rows][num_scores]` row-major, and whether each was written.
    pub fn values(&self) -> Result<(Vec<f64>, Vec<bool>)> {
        let (rows, cols) = (self.info.num_rows, self.info.num_scores);
        let mut values = vec![0f64; rows * cols];
        let mut written = vec![false; rows * cols];
        let Some(map) = &self.map else {
            return Ok((values, written));
        };
        let l = self.layout;
        for r in 0..rows {
            let record = &map[r * l.itemsize..(r + 1) * l.itemsize];
            for c in 0..cols {
                let at = c * l.pair;
                let b = &record[at..at + l.elem];
                values[r * cols + c] = match l.kind {
                    Kind::Float => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                    Kind::Half => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
                    _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
                };
                written[r * cols + c] = record[at + l.elem] != 0;
            }
        }
        Ok((values, written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_bergsons_struct_dtype() {
        let f32l = RecordLayout::new(3, Kind::Float).unwrap();
        assert_eq!((f32l.pair, f32l.itemsize), (8, 24));
        let bf = RecordLayout::new(3, Kind::BFloat16).unwrap();
        assert_eq!((bf.pair, bf.itemsize), (4, 16));
        let one = RecordLayout::new(1, Kind::Half).unwrap();
        assert_eq!(one.itemsize, 8);
        let d = f32l.dtype_json();
        assert_eq!(d["offsets"], serde_json::json!([0, 4, 8, 12, 16, 20]));
        assert_eq!(d["names"][1], "written_0");
    }

    #[test]
    fn written_columns_read_back_and_others_stay_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ScoreWriter::create(dir.path(), 4, 4, 3, Kind::BFloat16, false, false).unwrap();
        let s = Tensor::from_slice(&[1.5f32, -2.0, 0.25, 8.0]).reshape([2, 2]);
        w.write(&[3, 1], &s, 1).unwrap();
        w.sync().unwrap();
        drop(w);
        let store = ScoreStore::open(dir.path()).unwrap();
        let (v, written) = store.values().unwrap();
        assert_eq!(&v[9..12], &[0.0, 1.5, -2.0]);
        assert_eq!(&written[9..12], &[false, true, true]);
        assert_eq!(&v[3..6], &[0.0, 0.25, 8.0]);
        assert!(!written[0] && !written[6]);
        // Reopening for resume with another shape is refused.
        assert!(ScoreWriter::create(dir.path(), 4, 4, 2, Kind::BFloat16, false, true).is_err());
        assert!(ScoreWriter::create(dir.path(), 4, 4, 3, Kind::BFloat16, false, true).is_ok());
    }
}
