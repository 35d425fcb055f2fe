//! Hugging Face split syntax (`train`, `train[:100]`, `train[10%:]`, `train[:5]+test`), parsed and
//! resolved exactly as `datasets.ReadInstruction.from_spec(spec).to_absolute(lengths)` does, and
//! Bergson's `select_split` rule for data saved with `save_to_disk`.

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;

use crate::{Error, Result};

/// How slice boundaries are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Row indices (`train[10:20]`).
    Abs,
    /// Percentages of the split (`train[10%:20%]`); a `%` on either bound makes both percent.
    Percent,
}

/// How a percent boundary becomes a row index (datasets' two rounding modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// `round(pct * n / 100)` with Python's round-half-to-even; the default for percent slices.
    Closest,
    /// `pct * trunc(n / 100)`: every percent is the same number of rows; needs `n >= 100`.
    Pct1DropRemainder,
}

/// One `+`-separated part of a split spec, before the split lengths are known
/// (datasets' `_RelativeInstruction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelativeInstruction {
    /// The split name (`train`).
    pub split: String,
    /// Start boundary; negative counts from the end; `None` = start of the split.
    pub from: Option<i64>,
    /// End boundary (exclusive); negative counts from the end; `None` = end of the split.
    pub to: Option<i64>,
    /// Rows or percent.
    pub unit: Unit,
    /// Set (to `Closest` by default) exactly when `unit` is percent.
    pub rounding: Option<Rounding>,
}

/// A resolved part: rows `from..to` of `split` (datasets' `_AbsoluteInstruction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteInstruction {
    /// The split name.
    pub split: String,
    /// First row.
    pub from: usize,
    /// One past the last row; `to <= from` selects nothing.
    pub to: usize,
}

/// A parsed split spec: its parts, to be concatenated in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadInstruction {
    /// The `+`-separated parts.
    pub parts: Vec<RelativeInstruction>,
}

const SPLIT_HELP: &str =
    "use NAME, NAME[FROM:TO] or NAME[FROM%:TO%], joined with '+' (e.g. train[:100]+test[10%:])";

impl ReadInstruction {
    /// Parses a split spec as `datasets.ReadInstruction.from_spec`, with the same validation.
    pub fn from_spec(spec: &str) -> Result<Self> {
        let mut parts: Vec<RelativeInstruction> = Vec::new();
        for sub in split_on_plus(spec) {
            let part = parse_part(spec, sub)?;
            // datasets compares each added part's rounding with the FIRST part's, and only
            // when both are percent slices.
            if let Some(first) = parts.first() {
                if first.unit != Unit::Abs
                    && part.unit != Unit::Abs
                    && first.rounding != part.rounding
                {
                    return Err(Error::input(format!(
                        "--split '{spec}': all percent slices must use the same rounding \
                         ((closest) or (pct1_dropremainder)); make them agree"
                    )));
                }
            }
            parts.push(part);
        }
        Ok(ReadInstruction { parts })
    }

    /// Resolves every part against the split lengths (`(name, rows)` pairs), as datasets'
    /// `to_absolute`: negative bounds count from the end, bounds are clamped to the split.
    pub fn to_absolute(&self, lengths: &[(String, usize)]) -> Result<Vec<AbsoluteInstruction>> {
        self.parts
            .iter()
            .map(|part| part.to_absolute(lengths))
            .collect()
    }
}

impl RelativeInstruction {
    /// Resolves this part against the split lengths (datasets' `_rel_to_abs_instr`).
    pub fn to_absolute(&self, lengths: &[(String, usize)]) -> Result<AbsoluteInstruction> {
        let Some(&(_, n)) = lengths.iter().find(|(name, _)| *name == self.split) else {
            return Err(unknown_split(
                &self.split,
                lengths.iter().map(|(name, _)| name.as_str()),
            ));
        };
        let n_i = n as i64;
        let (from, to) = match self.unit {
            Unit::Percent => {
                let rounding = self.rounding.unwrap_or(Rounding::Closest);
                let from = self
                    .from
                    .map(|b| pct_to_abs(b, n, rounding))
                    .transpose()?
                    .unwrap_or(0);
                let to = self
                    .to
                    .map(|b| pct_to_abs(b, n, rounding))
                    .transpose()?
                    .unwrap_or(n_i);
                (from, to)
            }
            Unit::Abs => (self.from.unwrap_or(0), self.to.unwrap_or(n_i)),
        };
        let wrap = |b: i64| if b < 0 { (n_i + b).max(0) } else { b };
        let from = wrap(from).min(n_i) as usize;
        let to = wrap(to).min(n_i) as usize;
        Ok(AbsoluteInstruction {
            split: self.split.clone(),
            from,
            to,
        })
    }
}

/// datasets' `_pct_to_abs_closest` / `_pct_to_abs_pct1`.
fn pct_to_abs(boundary: i64, n: usize, rounding: Rounding) -> Result<i64> {
    match rounding {
        // Python: int(round(boundary * n / 100.0)); the product is exact, the division is f64,
        // and round() on a float rounds half to even.
        Rounding::Closest => Ok(((boundary as f64 * n as f64) / 100.0).round_ties_even() as i64),
        Rounding::Pct1DropRemainder => {
            if n < 100 {
                return Err(Error::input(format!(
                    "(pct1_dropremainder) rounding needs a split of at least 100 rows, but this one \
                     has {n} (it would always select nothing); drop the rounding suffix to use \
                     (closest) rounding"
                )));
            }
            Ok(boundary * (n / 100) as i64)
        }
    }
}

/// The error for a split name that does not exist, listing the ones that do.
pub fn unknown_split<'a>(split: &str, available: impl IntoIterator<Item = &'a str>) -> Error {
    let available: Vec<&str> = available.into_iter().collect();
    Error::input(format!(
        "split '{split}' does not exist in the dataset; available splits: {}. Pick one with --split",
        available.join(", ")
    ))
}

/// datasets' `_ADDITION_SEP_RE.split`: `+` with any whitespace around it.
fn split_on_plus(spec: &str) -> Vec<&str> {
    let pieces: Vec<&str> = spec.split('+').collect();
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let piece = if i > 0 { piece.trim_start() } else { piece };
            if i < last {
                piece.trim_end()
            } else {
                piece
            }
        })
        .collect()
}

/// Parses one part against datasets' `_SUB_SPEC_RE`:
/// `^\w+(\.\w+)*(\[((-?[\d_]+)(%)?)?:((-?[\d_]+)(%)?)?\])?(\(([^)]*)\))?$`.
fn parse_part(spec: &str, sub: &str) -> Result<RelativeInstruction> {
    let bad = || {
        Error::input(format!(
            "--split '{spec}': unrecognized split instruction '{sub}'; {SPLIT_HELP}"
        ))
    };
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let name_end = sub
        .find(|c: char| !(is_word(c) || c == '.'))
        .unwrap_or(sub.len());
    let name = &sub[..name_end];
    if name.is_empty() || name.split('.').any(|piece| piece.is_empty()) {
        return Err(bad());
    }
    let mut rest = &sub[name_end..];
    let (mut from, mut to, mut percent) = (None, None, false);
    if let Some(inner_and_rest) = rest.strip_prefix('[') {
        let close = inner_and_rest.find(']').ok_or_else(bad)?;
        let inner = &inner_and_rest[..close];
        rest = &inner_and_rest[close + 1..];
        let (lo, hi) = inner.split_once(':').ok_or_else(bad)?;
        let mut bound = |text: &str| -> Result<Option<i64>> {
            if text.is_empty() {
                return Ok(None);
            }
            let (digits, pct) = match text.strip_suffix('%') {
                Some(d) => (d, true),
                None => (text, false),
            };
            let body = digits.strip_prefix('-').unwrap_or(digits);
            if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit() || c == '_') {
                return Err(bad());
            }
            percent |= pct;
            parse_python_int(digits).map(Some).ok_or_else(|| {
                Error::input(format!(
                    "--split '{spec}': '{digits}' is not a valid integer in '{sub}'; {SPLIT_HELP}"
                ))
            })
        };
        from = bound(lo)?;
        to = bound(hi)?;
    }
    let mut rounding = None;
    if let Some(inner_and_rest) = rest.strip_prefix('(') {
        let close = inner_and_rest.find(')').ok_or_else(bad)?;
        rounding = Some(&inner_and_rest[..close]);
        rest = &inner_and_rest[close + 1..];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    let unit = if percent { Unit::Percent } else { Unit::Abs };
    // datasets' _RelativeInstruction.__post_init__ checks.
    let rounding = match rounding {
        None => None,
        Some("closest") => Some(Rounding::Closest),
        Some("pct1_dropremainder") => Some(Rounding::Pct1DropRemainder),
        Some(other) => {
            return Err(Error::input(format!(
            "--split '{spec}': unknown rounding '({other})'; use (closest) or (pct1_dropremainder)"
        )))
        }
    };
    if unit == Unit::Abs && rounding.is_some() {
        return Err(Error::input(format!(
            "--split '{spec}': a rounding suffix only applies to percent slices such as train[:10%]; \
             remove it from '{sub}'"
        )));
    }
    if unit == Unit::Percent && [from, to].iter().flatten().any(|b| b.abs() > 100) {
        return Err(Error::input(format!(
            "--split '{spec}': percent slice boundaries must lie within -100%..100% in '{sub}'"
        )));
    }
    let rounding = if unit == Unit::Percent {
        Some(rounding.unwrap_or(Rounding::Closest))
    } else {
        None
    };
    Ok(RelativeInstruction {
        split: name.to_string(),
        from,
        to,
        unit,
        rounding,
    })
}

/// Python's `int(text)` for `-?[0-9_]+`: underscores only singly between digits.
fn parse_python_int(text: &str) -> Option<i64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    if body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    let value: i64 = body.replace('_', "").parse().ok()?;
    Some(if neg { -value } else { value })
}

/// The tables a dataset source offers, which decides how a split spec is applied.
#[derive(Debug, Clone)]
pub enum SplitTables {
    /// Named splits from a file or hub loader (`datasets.load_dataset`): every spec, plain
    /// names included, is resolved against these names (a local file has one split, `train`).
    Builder(Vec<(String, RecordBatch)>),
    /// A `save_to_disk` DatasetDict: a plain name picks that split; a sliced or `+` spec is
    /// resolved against the splits it names.
    DiskDict(Vec<(String, RecordBatch)>),
    /// A `save_to_disk` Dataset: it has no split names, so a plain name returns it whole and
    /// every part of a sliced spec slices the whole table, whatever its name (Bergson's
    /// `select_split`).
    DiskDataset(RecordBatch),
}

/// Whether Bergson's `select_split` treats `spec` as a plain split name (no `[` and no `+`).
pub fn is_plain_split(spec: &str) -> bool {
    !spec.contains('[') && !spec.contains('+')
}

/// The rows `spec` selects from `tables`, concatenated in spec order.
pub fn select_split(tables: &SplitTables, spec: &str) -> Result<RecordBatch> {
    let names = |splits: &[(String, RecordBatch)]| -> Vec<String> {
        splits.iter().map(|(name, _)| name.clone()).collect()
    };
    let lookup = |splits: &[(String, RecordBatch)], name: &str| -> Result<RecordBatch> {
        splits
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| unknown_split(name, splits.iter().map(|(n, _)| n.as_str())))
    };
    match tables {
        SplitTables::DiskDataset(batch) if is_plain_split(spec) => Ok(batch.clone()),
        SplitTables::DiskDict(splits) if is_plain_split(spec) => lookup(splits, spec),
        SplitTables::DiskDataset(batch) => {
            let instruction = ReadInstruction::from_spec(spec)?;
            let lengths: Vec<(String, usize)> = instruction
                .parts
                .iter()
                .map(|p| (p.split.clone(), batch.num_rows()))
                .collect();
            let parts = instruction.to_absolute(&lengths)?;
            concat_parts(batch.schema(), parts.iter().map(|p| slice(batch, p)))
        }
        SplitTables::DiskDict(splits) => {
            let instruction = ReadInstruction::from_spec(spec)?;
            // Bergson looks up each named split first, so a missing one is a KeyError.
            for part in &instruction.parts {
                lookup(splits, &part.split)?;
            }
            resolve(splits, &instruction, &names(splits))
        }
        SplitTables::Builder(splits) => {
            let instruction = ReadInstruction::from_spec(spec)?;
            resolve(splits, &instruction, &names(splits))
        }
    }
}

fn resolve(
    splits: &[(String, RecordBatch)],
    instruction: &ReadInstruction,
    names: &[String],
) -> Result<RecordBatch> {
    let lengths: Vec<(String, usize)> = splits
        .iter()
        .map(|(name, batch)| (name.clone(), batch.num_rows()))
        .collect();
    let parts = instruction.to_absolute(&lengths)?;
    let tables: Vec<&RecordBatch> = parts
        .iter()
        .map(|p| {
            splits
                .iter()
                .find(|(n, _)| *n == p.split)
                .map(|(_, b)| b)
                .ok_or_else(|| unknown_split(&p.split, names.iter().map(String::as_str)))
        })
        .collect::<Result<_>>()?;
    let schema = tables
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::input("empty split spec"))?;
    concat_parts(schema, parts.iter().zip(&tables).map(|(p, b)| slice(b, p)))
}

fn slice(batch: &RecordBatch, part: &AbsoluteInstruction) -> RecordBatch {
    let len = part.to.saturating_sub(part.from);
    batch.slice(part.from.min(batch.num_rows()), len)
}

fn concat_parts(
    schema: arrow::datatypes::SchemaRef,
    parts: impl Iterator<Item = RecordBatch>,
) -> Result<RecordBatch> {
    let parts: Vec<RecordBatch> = parts.collect();
    if parts.len() == 1 {
        return Ok(parts
            .into_iter()
            .next()
            .unwrap_or_else(|| RecordBatch::new_empty(schema)));
    }
    concat_batches(&schema, &parts).map_err(|e| {
        Error::input(format!(
            "the splits joined with '+' have different columns or types ({e}); join splits with \
             the same columns"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// `[spec, rows in "train", [[split, from, to], ...] | "error"]` from Python's
    /// `ReadInstruction.from_spec(spec).to_absolute({"train": n, "test": 17, "a.b": n})`
    /// (tests/fixtures/scripts/make_datasets.py).
    #[test]
    fn resolution_matches_python_datasets() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/datasets/split_cases.json"
        );
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(cases.len() > 1000);
        let (mut errors, mut resolved) = (0, 0);
        for case in &cases {
            let spec = case[0].as_str().unwrap();
            let n = case[1].as_u64().unwrap() as usize;
            let lengths = [
                ("train".to_string(), n),
                ("test".to_string(), 17),
                ("a.b".to_string(), n),
            ];
            let ours = ReadInstruction::from_spec(spec).and_then(|r| r.to_absolute(&lengths));
            match &case[2] {
                Value::String(_) => {
                    let err = ours
                        .err()
                        .unwrap_or_else(|| panic!("{spec} (n={n}): Python raised, we resolved"));
                    assert!(
                        err.is_user_error() && !err.to_string().contains('\n'),
                        "{err}"
                    );
                    errors += 1;
                }
                Value::Array(parts) => {
                    let ours = ours.unwrap_or_else(|e| panic!("{spec} (n={n}): {e}"));
                    let theirs: Vec<AbsoluteInstruction> = parts
                        .iter()
                        .map(|p| AbsoluteInstruction {
                            split: p[0].as_str().unwrap().to_string(),
                            from: p[1].as_u64().unwrap() as usize,
                            to: p[2].as_u64().unwrap() as usize,
                        })
                        .collect();
                    assert_eq!(ours, theirs, "{spec} (n={n})");
                    resolved += 1;
                }
                other => panic!("bad fixture entry {other}"),
            }
        }
        assert!(
            errors > 100 && resolved > 500,
            "{errors} errors, {resolved} resolved"
        );
    }

    #[test]
    fn closest_rounding_is_half_to_even() {
        // 25% of 10 = 2.5 -> 2, 35% of 10 = 3.5 -> 4, 5% of 10 = 0.5 -> 0, 15% of 10 = 1.5 -> 2.
        let lengths = [("train".to_string(), 10)];
        let to = |spec: &str| {
            ReadInstruction::from_spec(spec)
                .unwrap()
                .to_absolute(&lengths)
                .unwrap()[0]
                .to
        };
        assert_eq!(
            [
                to("train[:25%]"),
                to("train[:35%]"),
                to("train[:5%]"),
                to("train[:15%]")
            ],
            [2, 4, 0, 2]
        );
    }

    fn table(ids: std::ops::Range<i64>) -> RecordBatch {
        let array = arrow::array::Int64Array::from_iter_values(ids);
        RecordBatch::try_from_iter([("id", std::sync::Arc::new(array) as arrow::array::ArrayRef)])
            .unwrap()
    }

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        use arrow::array::AsArray;
        batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn saved_dataset_ignores_split_names() {
        // Bergson's select_split: a plain name returns the whole saved Dataset; every part of a
        // sliced spec slices the whole table, whatever the name.
        let tables = SplitTables::DiskDataset(table(0..5));
        assert_eq!(
            ids(&select_split(&tables, "validation").unwrap()),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            ids(&select_split(&tables, "a[-2:]+b[:1]").unwrap()),
            [3, 4, 0]
        );
        let builder = SplitTables::Builder(vec![("train".into(), table(0..5))]);
        assert!(select_split(&builder, "validation").is_err());
        let dict = SplitTables::DiskDict(vec![
            ("train".into(), table(0..3)),
            ("test".into(), table(10..12)),
        ]);
        assert_eq!(
            ids(&select_split(&dict, "test+train[:1]").unwrap()),
            [10, 11, 0]
        );
        let err = select_split(&dict, "dev").unwrap_err().to_string();
        assert!(err.contains("available splits: train, test"), "{err}");
    }
}
