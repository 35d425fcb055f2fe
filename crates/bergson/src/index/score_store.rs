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
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::error::IoContext;
use crate::index::reader::read_offsets;
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

/// The floating-point type of the stored scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreDtype {
    /// IEEE single precision (`float32`).
    F32,
    /// IEEE half precision (`float16`).
    F16,
    /// Brain float (`bfloat16`, through ml_dtypes).
    BF16,
}

impl ScoreDtype {
    /// Parses a numpy format string as `info.json` holds it (`str(np.dtype)`: `float32`, ...,
    /// or a type code such as `<f4`).
    fn parse(format: &str) -> Option<Self> {
        match format {
            "float32" | "<f4" | "f4" | "=f4" => Some(ScoreDtype::F32),
            "float16" | "<f2" | "f2" | "=f2" => Some(ScoreDtype::F16),
            "bfloat16" => Some(ScoreDtype::BF16),
            _ => None,
        }
    }

    /// Bytes per score.
    pub fn size(self) -> usize {
        match self {
            ScoreDtype::F32 => 4,
            ScoreDtype::F16 | ScoreDtype::BF16 => 2,
        }
    }

    /// The numpy name.
    pub fn name(self) -> &'static str {
        match self {
            ScoreDtype::F32 => "float32",
            ScoreDtype::F16 => "float16",
            ScoreDtype::BF16 => "bfloat16",
        }
    }

    /// Decodes one little-endian score.
    fn decode(self, bytes: &[u8]) -> f32 {
        match self {
            ScoreDtype::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            ScoreDtype::F16 => half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
            ScoreDtype::BF16 => half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
        }
    }
}

/// `info.json` of a score store.
#[derive(Debug, Clone, Deserialize)]
struct InfoJson {
    #[serde(default)]
    attribute_tokens: bool,
    num_items: usize,
    num_rows: usize,
    num_scores: usize,
    dtype: StructDtype,
}

/// numpy's dict form of a structured dtype.
#[derive(Debug, Clone, Deserialize)]
struct StructDtype {
    names: Vec<String>,
    formats: Vec<String>,
    offsets: Vec<usize>,
    itemsize: usize,
}

/// Where query column `i`'s score and written flag sit in a record.
#[derive(Debug, Clone, Copy)]
struct Field {
    score: usize,
    written: usize,
}

/// A score store opened for reading; `scores.bin` is memory-mapped, never loaded whole.
pub struct ScoreStore {
    /// `info.json`.
    pub info: ScoreInfo,
    /// The record layout.
    pub layout: RecordLayout,
    dir: PathBuf,
    attribute_tokens: bool,
    num_items: usize,
    num_rows: usize,
    dtype: ScoreDtype,
    itemsize: usize,
    fields: Vec<Field>,
    mmap: Option<Mmap>,
    offsets: Option<Vec<i64>>,
    candidates: Option<Vec<i64>>,
}

impl std::fmt::Debug for ScoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreStore")
            .field("dir", &self.dir)
            .field("attribute_tokens", &self.attribute_tokens)
            .field("num_items", &self.num_items)
            .field("num_rows", &self.num_rows)
            .field("num_scores", &self.fields.len())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// True when `dir` looks like a score store (`info.json` beside `scores.bin`).
pub fn is_score_store(dir: &Path) -> bool {
    dir.join("scores.bin").is_file() && dir.join("info.json").is_file()
}

impl ScoreStore {
    /// Opens the store in `dir`, checking `info.json` against `scores.bin` and `offsets.npy`.
    pub fn open(dir: &Path) -> Result<Self> {
        let info_path = dir.join("info.json");
        let text = std::fs::read_to_string(&info_path).at_path(&info_path)?;
        let info: InfoJson = serde_json::from_str(&text).map_err(|e| {
            Error::input(format!(
                "{}: not the info.json of a score store ({e}); pass a directory \
                 `bergson score` wrote",
                info_path.display()
            ))
        })?;
        let bad = |what: String| {
            Error::input(format!(
                "{}: {what}; the score store is damaged or not from Bergson 2.5.1",
                info_path.display()
            ))
        };
        let d = &info.dtype;
        if d.names.len() != d.formats.len() || d.names.len() != d.offsets.len() {
            return Err(bad(
                "dtype names, formats and offsets differ in length".into()
            ));
        }
        let find = |name: &str| d.names.iter().position(|n| n == name);
        let mut dtype = None;
        let mut fields = Vec::with_capacity(info.num_scores);
        for i in 0..info.num_scores {
            let (Some(s), Some(w)) = (find(&format!("score_{i}")), find(&format!("written_{i}")))
            else {
                return Err(bad(format!("dtype lacks score_{i} or written_{i}")));
            };
            let kind = ScoreDtype::parse(&d.formats[s])
                .ok_or_else(|| bad(format!("unsupported score format '{}'", d.formats[s])))?;
            if dtype.is_some_and(|k| k != kind) {
                return Err(bad("score fields of different formats".into()));
            }
            dtype = Some(kind);
            if !matches!(d.formats[w].as_str(), "bool" | "?" | "|b1" | "b1") {
                return Err(bad(format!("written_{i} has format '{}'", d.formats[w])));
            }
            let field = Field {
                score: d.offsets[s],
                written: d.offsets[w],
            };
            if field.score + kind.size() > d.itemsize || field.written + 1 > d.itemsize {
                return Err(bad(format!(
                    "field {i} lies outside the {}-byte record",
                    d.itemsize
                )));
            }
            fields.push(field);
        }
        let dtype = dtype.unwrap_or(ScoreDtype::F32);

        let bin = dir.join("scores.bin");
        let file = File::open(&bin).at_path(&bin)?;
        let want = (info.num_rows * d.itemsize) as u64;
        let have = file.metadata().at_path(&bin)?.len();
        if have < want {
            return Err(Error::input(format!(
                "{}: {have} bytes, but info.json describes {} rows of {} bytes; the score store \
                 is truncated",
                bin.display(),
                info.num_rows,
                d.itemsize
            )));
        }
        // SAFETY: opened read-only and only read through copies of its bytes; a concurrent
        // writer could change values but not the memory safety of the u8 slice.
        let mmap = if want == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.at_path(&bin)?)
        };

        let offsets = if info.attribute_tokens {
            let path = dir.join("offsets.npy");
            let offsets = read_offsets(&path)?;
            let monotone = offsets.windows(2).all(|w| w[0] <= w[1]);
            if offsets.len() != info.num_items + 1
                || offsets.first() != Some(&0)
                || offsets.last().copied() != Some(info.num_rows as i64)
                || !monotone
            {
                return Err(Error::input(format!(
                    "{}: expected {} rising offsets from 0 to {} (num_items + 1, num_rows in \
                     info.json); the score store is damaged",
                    path.display(),
                    info.num_items + 1,
                    info.num_rows
                )));
            }
            Some(offsets)
        } else {
            if info.num_rows != info.num_items {
                return Err(bad(format!(
                    "num_rows {} differs from num_items {} in a per-document store",
                    info.num_rows, info.num_items
                )));
            }
            None
        };
        let candidates_path = dir.join("candidates.npy");
        let candidates = if candidates_path.is_file() {
            let c = read_offsets(&candidates_path)?;
            if c.len() != info.num_items || c.iter().any(|&r| r < 0) {
                return Err(Error::input(format!(
                    "{}: expected {} non-negative training rows (num_items in info.json)",
                    candidates_path.display(),
                    info.num_items
                )));
            }
            Some(c)
        } else {
            None
        };

        let parsed: ScoreInfo = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a score store's info.json ({e})")))?;
        let layout = RecordLayout::from_info(&parsed)?;
        Ok(ScoreStore {
            info: parsed,
            layout,
            dir: dir.to_path_buf(),
            attribute_tokens: info.attribute_tokens,
            num_items: info.num_items,
            num_rows: info.num_rows,
            dtype,
            itemsize: d.itemsize,
            fields,
            mmap,
            offsets,
            candidates,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether rows are tokens (`--attribute_tokens`) rather than documents.
    pub fn attribute_tokens(&self) -> bool {
        self.attribute_tokens
    }

    /// Documents scored (rows of the scored dataset).
    pub fn num_items(&self) -> usize {
        self.num_items
    }

    /// Records in `scores.bin`: documents, or tokens of a per-token store.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// Score columns: one per query, or one for `nearest` and aggregated queries.
    pub fn num_scores(&self) -> usize {
        self.fields.len()
    }

    /// The stored score type.
    pub fn dtype(&self) -> ScoreDtype {
        self.dtype
    }

    /// `offsets.npy` of a per-token store: document `i`'s rows are `offsets[i]..offsets[i+1]`.
    pub fn offsets(&self) -> Option<&[i64]> {
        self.offsets.as_deref()
    }

    /// `candidates.npy`: the training row of each store item, when only candidates were scored.
    pub fn candidates(&self) -> Option<&[i64]> {
        self.candidates.as_deref()
    }

    /// The training-dataset row that store item `item` scores.
    pub fn training_row(&self, item: usize) -> usize {
        self.candidates.as_ref().map_or(item, |c| c[item] as usize)
    }

    /// The rows of document `item`: its token rows in a per-token store, else just `item`.
    pub fn item_rows(&self, item: usize) -> Range<usize> {
        match &self.offsets {
            Some(o) => o[item] as usize..o[item + 1] as usize,
            None => item..item + 1,
        }
    }

    /// Row `row`'s score against column `column`, or `None` where it was never written.
    pub fn score(&self, row: usize, column: usize) -> Option<f32> {
        let record = self.record(row);
        let field = self.fields[column];
        (record[field.written] != 0).then(|| {
            self.dtype
                .decode(&record[field.score..field.score + self.dtype.size()])
        })
    }

    /// Every row's score against `column` (`None` where not written).
    pub fn column(&self, column: usize) -> Vec<Option<f32>> {
        (0..self.num_rows).map(|r| self.score(r, column)).collect()
    }

    /// Each document's score against `column`: the stored score, or in a per-token store the sum
    /// of its token rows (both kinds of row sum to the per-document score). `None` where a row
    /// was not written, or a document has no rows (fewer than two tokens).
    pub fn item_scores(&self, column: usize) -> Vec<Option<f64>> {
        (0..self.num_items)
            .map(|item| {
                let rows = self.item_rows(item);
                if rows.is_empty() {
                    return None;
                }
                rows.map(|r| self.score(r, column).map(f64::from)).sum()
            })
            .collect()
    }

    /// All scores as float64, `[num_rows][num_scores]` row-major (0 where not written), and
    /// whether each was written.
    pub fn values(&self) -> Result<(Vec<f64>, Vec<bool>)> {
        let cols = self.num_scores();
        let mut values = vec![0f64; self.num_rows * cols];
        let mut written = vec![false; self.num_rows * cols];
        for r in 0..self.num_rows {
            for c in 0..cols {
                if let Some(v) = self.score(r, c) {
                    values[r * cols + c] = v as f64;
                    written[r * cols + c] = true;
                }
            }
        }
        Ok((values, written))
    }

    fn record(&self, row: usize) -> &[u8] {
        assert!(row < self.num_rows, "row {row} of {}", self.num_rows);
        let bytes = self.mmap.as_deref().unwrap_or(&[]);
        &bytes[row * self.itemsize..(row + 1) * self.itemsize]
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

#[cfg(test)]
mod reader_tests {
    use super::*;

    use serde_json::Value;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report")
    }

    fn expected() -> Value {
        let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn ints(v: &Value) -> Option<Vec<i64>> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_i64().unwrap()).collect())
    }

    /// Every store the fixture script wrote reads back as Python's `load_scores` does: the same
    /// shape, offsets, candidates, scores (bit for bit, in all three dtypes) and written flags.
    #[test]
    fn stores_read_as_python_reads_them() {
        let expected = expected();
        let stores = expected.as_object().unwrap();
        assert!(
            stores.len() >= 5,
            "expected.json lists {} stores",
            stores.len()
        );
        let mut dtypes = Vec::new();
        for (name, want) in stores {
            let store = ScoreStore::open(&fixtures().join("runs").join(name)).unwrap();
            let info = &want["info"];
            assert_eq!(
                store.num_items(),
                info["num_items"].as_u64().unwrap() as usize,
                "{name}"
            );
            assert_eq!(
                store.num_rows(),
                info["num_rows"].as_u64().unwrap() as usize,
                "{name}"
            );
            assert_eq!(
                store.num_scores(),
                info["num_scores"].as_u64().unwrap() as usize
            );
            assert_eq!(
                store.attribute_tokens(),
                info["attribute_tokens"].as_bool().unwrap()
            );
            assert_eq!(
                store.dtype().name(),
                info["dtype"]["formats"][0].as_str().unwrap()
            );
            assert_eq!(
                store.offsets().map(<[i64]>::to_vec),
                ints(&want["offsets"]),
                "{name}"
            );
            assert_eq!(
                store.candidates().map(<[i64]>::to_vec),
                ints(&want["candidates"]),
                "{name}"
            );
            let scores = want["scores"].as_array().unwrap();
            let written = want["written"].as_array().unwrap();
            assert_eq!(scores.len(), store.num_rows(), "{name}");
            for (row, (values, flags)) in scores.iter().zip(written).enumerate() {
                for column in 0..store.num_scores() {
                    let value = values[column].as_f64().unwrap() as f32;
                    let got = store.score(row, column);
                    if flags[column].as_bool().unwrap() {
                        assert_eq!(got.map(f32::to_bits), Some(value.to_bits()), "{name} {row}");
                    } else {
                        assert_eq!(got, None, "{name} row {row} column {column} is not written");
                    }
                }
            }
            dtypes.push(store.dtype());
        }
        for dtype in [ScoreDtype::F32, ScoreDtype::F16, ScoreDtype::BF16] {
            assert!(
                dtypes.contains(&dtype),
                "no {dtype:?} store among the fixtures"
            );
        }
    }

    /// A per-token store's document scores are the sums of its token rows.
    #[test]
    fn token_store_items_sum_their_rows() {
        let expected = expected();
        let want = &expected["tokens"];
        let store = ScoreStore::open(&fixtures().join("runs/tokens")).unwrap();
        let offsets = ints(&want["offsets"]).unwrap();
        let scores = want["scores"].as_array().unwrap();
        for column in 0..store.num_scores() {
            let items = store.item_scores(column);
            for (item, got) in items.iter().enumerate() {
                let rows = offsets[item] as usize..offsets[item + 1] as usize;
                let sum: f64 = rows
                    .map(|r| scores[r].get(column).and_then(Value::as_f64).unwrap())
                    .sum();
                let got = got.unwrap();
                assert!(
                    (got - sum).abs() <= 1e-9 * sum.abs().max(1.0),
                    "{got} vs {sum}"
                );
            }
        }
    }

    #[test]
    fn candidates_map_items_to_training_rows() {
        let store = ScoreStore::open(&fixtures().join("runs/candidates")).unwrap();
        let candidates = store.candidates().unwrap().to_vec();
        for (item, &row) in candidates.iter().enumerate() {
            assert_eq!(store.training_row(item), row as usize);
        }
    }

    #[test]
    fn truncated_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join("runs/doc");
        std::fs::copy(src.join("info.json"), dir.path().join("info.json")).unwrap();
        let bytes = std::fs::read(src.join("scores.bin")).unwrap();
        std::fs::write(dir.path().join("scores.bin"), &bytes[..bytes.len() - 1]).unwrap();
        let err = ScoreStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join("runs/doc");
        let info = std::fs::read_to_string(src.join("info.json")).unwrap();
        std::fs::write(
            dir.path().join("info.json"),
            info.replace("float32", "float64"),
        )
        .unwrap();
        std::fs::copy(src.join("scores.bin"), dir.path().join("scores.bin")).unwrap();
        let err = ScoreStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unsupported score format 'float64'"), "{err}");
    }
}
