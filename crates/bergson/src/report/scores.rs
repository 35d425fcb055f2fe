//! Reading a score store as Python Bergson 2.5.1's `bergson score` writes it (its
//! `MemmapSequenceScoreWriter` / `MemmapTokenScoreWriter`, read back by `load_scores`).
//!
//! `scores.bin` is a numpy structured array with one record per row. Record field `score_i` (the
//! score against query column `i`, float32, float16 or bfloat16) sits at byte `i * P` and
//! `written_i` (a bool) right after it, where `P` is the score and flag size rounded up to a
//! power of two; `info.json` holds the exact names, formats and offsets, which we read rather
//! than recompute. A per-token store (`attribute_tokens`) has one row per token and
//! `offsets.npy` saying which rows belong to which document; a store scored over candidates has
//! `candidates.npy`, the training row of each store row.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;

use crate::error::IoContext;
use crate::index::reader::read_offsets;
use crate::{Error, Result};

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
                "{}: not the info.json of a score store ({e}); point bergson report at a \
                 directory `bergson score` wrote",
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

        Ok(ScoreStore {
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

    fn record(&self, row: usize) -> &[u8] {
        assert!(row < self.num_rows, "row {row} of {}", self.num_rows);
        let bytes = self.mmap.as_deref().unwrap_or(&[]);
        &bytes[row * self.itemsize..(row + 1) * self.itemsize]
    }
}

#[cfg(test)]
mod tests {
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
