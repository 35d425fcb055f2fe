//! Exact search streamed from the memory-mapped index: the index is never loaded whole. Rows
//! are read once, in blocks, straight from the page cache (float32 blocks in place; float16 and
//! bfloat16 blocks converted to float32 one cache-sized block at a time), each block meets every
//! query in the [`super::kernel`] (one pass, every core on its own share of the rows), and each
//! thread keeps a running top-k (and bottom-k) per query, merged at the end. With unit norm,
//! each row's score is divided by the row's norm (cached next to the index, or computed in the
//! same pass), which equals Bergson's normalising the rows first.

use std::cmp::Ordering;
use std::ops::Range;

use tch::{Kind, Tensor};

use super::kernel::{dot_block, QueryMatrix};
use crate::index::GradientIndex;
use crate::{Error, Result};

/// Index bytes of one block (read, converted and scored while in cache).
const BLOCK_BYTES: usize = 64 << 10;

/// The best `k` rows per query: `scores` `[Q, k]` (float32) and `indices` `[Q, k]` (int64),
/// best first.
#[derive(Debug)]
pub struct Hits {
    /// Scores, best first.
    pub scores: Tensor,
    /// Row indices of the index.
    pub indices: Tensor,
}

impl Hits {
    /// The hits of query `q` as `(row, score)` pairs, best first.
    pub fn of_query(&self, q: usize) -> Result<Vec<(i64, f32)>> {
        let s = Vec::<f32>::try_from(self.scores.f_get(q as i64)?)?;
        let i = Vec::<i64>::try_from(self.indices.f_get(q as i64)?)?;
        Ok(i.into_iter().zip(s).collect())
    }
}

/// How rows are normalised before scoring.
pub enum RowNorms<'a> {
    /// Raw inner products.
    None,
    /// Divide by these norms (one per row).
    Given(&'a [f32]),
    /// Divide by norms computed during the scan (returned for caching).
    Compute,
}

/// What one scan produced.
pub struct ScanResult {
    /// The highest-scoring rows, when asked for.
    pub top: Option<Hits>,
    /// The lowest-scoring rows, when asked for.
    pub bottom: Option<Hits>,
    /// The row norms computed during the scan (with [`RowNorms::Compute`]).
    pub norms: Option<Vec<f32>>,
}

/// The best `k` `(score, row)` pairs seen for one query, kept loosely: candidates accumulate up
/// to `2k` and are cut back to the best `k`, so each row costs one comparison with the current
/// threshold.
struct Best {
    k: usize,
    largest: bool,
    items: Vec<(f32, u64)>,
    threshold: Option<(f32, u64)>,
}

impl Best {
    fn new(k: usize, largest: bool) -> Self {
        Best {
            k,
            largest,
            items: Vec::with_capacity(2 * k),
            threshold: None,
        }
    }

    /// Whether `a` ranks before `b`: a better score, then the lower row.
    fn before(largest: bool, a: &(f32, u64), b: &(f32, u64)) -> Ordering {
        let by_score = if largest {
            b.0.total_cmp(&a.0)
        } else {
            a.0.total_cmp(&b.0)
        };
        by_score.then(a.1.cmp(&b.1))
    }

    fn push(&mut self, score: f32, row: u64) {
        let item = (score, row);
        if let Some(t) = &self.threshold {
            if Self::before(self.largest, &item, t) != Ordering::Less {
                return;
            }
        }
        self.items.push(item);
        if self.items.len() >= 2 * self.k {
            self.cut();
        }
    }

    /// Keeps the best `k`, best first.
    fn cut(&mut self) {
        let largest = self.largest;
        self.items
            .sort_unstable_by(|a, b| Self::before(largest, a, b));
        self.items.truncate(self.k);
        if self.items.len() == self.k {
            self.threshold = self.items.last().copied();
        }
    }

    fn merge(&mut self, other: Best) {
        for (s, r) in other.items {
            self.push(s, r);
        }
    }
}

/// Scans `index` once, scoring every row against `queries` `[Q, Σ columns]` (float32; the
/// columns of the blocks in `columns`, in that order) and keeping the best `k` rows per query
/// from the top and/or the bottom.
pub fn scan(
    index: &GradientIndex,
    queries: &Tensor,
    columns: &[Range<usize>],
    k: usize,
    (top, bottom): (bool, bool),
    norms: RowNorms<'_>,
) -> Result<ScanResult> {
    let n = index.num_rows();
    let d = index.row_len();
    let width: usize = columns.iter().map(Range::len).sum();
    let nq = queries.size()[0] as usize;
    if queries.size() != [nq as i64, width as i64] {
        return Err(Error::internal(format!(
            "queries of shape {:?} for {width} index columns",
            queries.size()
        )));
    }
    if n == 0 || k == 0 {
        return Err(Error::input(format!(
            "cannot search {} for {k} results: the index has {n} rows",
            index.dir().display()
        )));
    }
    if let RowNorms::Given(v) = &norms {
        if v.len() != n {
            return Err(Error::internal("cached row norms do not match the index"));
        }
    }
    // Full-width queries, zero outside the searched columns: a row's dot product with them is
    // its score over those modules.
    let selected = Vec::<f32>::try_from(
        queries
            .f_to_kind(Kind::Float)?
            .f_contiguous()?
            .f_reshape([-1])?,
    )?;
    let mut full = vec![0f32; nq * d];
    for qi in 0..nq {
        let mut at = 0;
        for c in columns {
            full[qi * d + c.start..qi * d + c.end]
                .copy_from_slice(&selected[qi * width + at..qi * width + at + c.len()]);
            at += c.len();
        }
    }
    let q = QueryMatrix::new(&full, nq, d);
    let k = k.min(n);
    let compute = matches!(norms, RowNorms::Compute);
    let given = match &norms {
        RowNorms::Given(v) => Some(*v),
        _ => None,
    };
    let unit = !matches!(norms, RowNorms::None);
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.div_ceil(1024).max(1));
    let share = n.div_ceil(threads);
    let mut computed = if compute { vec![0f32; n] } else { Vec::new() };
    let mut norm_slices: Vec<&mut [f32]> = if compute {
        computed.chunks_mut(share).collect()
    } else {
        (0..threads).map(|_| &mut [][..]).collect()
    };
    let results: Vec<Result<(Vec<Best>, Vec<Best>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = norm_slices
            .iter_mut()
            .enumerate()
            .map(|(t, out_norms)| {
                let range = t * share..((t + 1) * share).min(n);
                let q = &q;
                s.spawn(move || {
                    scan_rows(index, q, range, k, (top, bottom), unit, given, out_norms)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::internal("a search thread panicked")))
            })
            .collect()
    });
    let mut best: Vec<Best> = (0..nq).map(|_| Best::new(k, true)).collect();
    let mut worst: Vec<Best> = (0..nq).map(|_| Best::new(k, false)).collect();
    for r in results {
        let (b, w) = r?;
        for (acc, part) in best.iter_mut().zip(b) {
            acc.merge(part);
        }
        for (acc, part) in worst.iter_mut().zip(w) {
            acc.merge(part);
        }
    }
    Ok(ScanResult {
        top: top.then(|| hits(best, k)).transpose()?,
        bottom: bottom.then(|| hits(worst, k)).transpose()?,
        norms: compute.then_some(computed),
    })
}

/// Scores rows `range` and keeps each query's best and worst; with `unit`, divides scores by
/// the `given` norms or by norms computed here into `out_norms` (indexed from `range.start`).
#[allow(clippy::too_many_arguments)]
fn scan_rows(
    index: &GradientIndex,
    q: &QueryMatrix,
    range: Range<usize>,
    k: usize,
    (top, bottom): (bool, bool),
    unit: bool,
    given: Option<&[f32]>,
    out_norms: &mut [f32],
) -> Result<(Vec<Best>, Vec<Best>)> {
    let d = q.dim();
    let nq = q.count();
    let kind = index.kind();
    let block_rows = (BLOCK_BYTES / (d * 4).max(1)).max(4);
    let mut best: Vec<Best> = if top {
        (0..nq).map(|_| Best::new(k, true)).collect()
    } else {
        Vec::new()
    };
    let mut worst: Vec<Best> = if bottom {
        (0..nq).map(|_| Best::new(k, false)).collect()
    } else {
        Vec::new()
    };
    let mut converted = Vec::<f32>::new();
    let mut scores = vec![0f32; block_rows * nq];
    let mut sq = vec![0f32; block_rows];
    let mut start = range.start;
    while start < range.end {
        crate::interrupt::check()?;
        let end = (start + block_rows).min(range.end);
        let rows = end - start;
        let bytes = index.rows_bytes(start..end)?;
        let values: &[f32] = match kind {
            Kind::Float => {
                // SAFETY: the map is page-aligned and every row starts at a multiple of 4
                // bytes, so the bytes are aligned float32 values; they are only read.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, rows * d) }
            }
            Kind::Half | Kind::BFloat16 => {
                converted.resize(rows * d, 0.0);
                for (dst, src) in converted.iter_mut().zip(bytes.chunks_exact(2)) {
                    let bits = u16::from_le_bytes([src[0], src[1]]);
                    *dst = if kind == Kind::Half {
                        half::f16::from_bits(bits).to_f32()
                    } else {
                        f32::from_bits((bits as u32) << 16)
                    };
                }
                &converted
            }
            other => {
                return Err(Error::input(format!(
                    "cannot search an index of {other:?} values; rebuild it in float32, float16 or bfloat16"
                )))
            }
        };
        let out = &mut scores[..rows * nq];
        let compute = unit && given.is_none();
        dot_block(values, q, out, compute.then(|| &mut sq[..rows]));
        for r in 0..rows {
            let row = start + r;
            let norm = if !unit {
                1.0
            } else if let Some(g) = given {
                g[row]
            } else {
                let v = sq[r].sqrt();
                out_norms[row - range.start] = v;
                v
            };
            for j in 0..nq {
                let raw = out[r * nq + j];
                let mut s = if unit { raw / norm } else { raw };
                if unit && !s.is_finite() {
                    // Bergson maps the NaN/inf of its normalised zero rows to 0.
                    s = 0.0;
                }
                if top {
                    best[j].push(s, row as u64);
                }
                if bottom {
                    worst[j].push(s, row as u64);
                }
            }
        }
        start = end;
    }
    Ok((best, worst))
}

/// The `[Q, k]` hits of each query's kept rows, best first.
fn hits(mut per_query: Vec<Best>, k: usize) -> Result<Hits> {
    let nq = per_query.len() as i64;
    let mut scores = Vec::with_capacity(per_query.len() * k);
    let mut rows = Vec::with_capacity(per_query.len() * k);
    for b in &mut per_query {
        b.cut();
        if b.items.len() != k {
            return Err(Error::internal("search kept fewer rows than asked"));
        }
        for &(s, r) in &b.items {
            scores.push(s);
            rows.push(r as i64);
        }
    }
    Ok(Hits {
        scores: Tensor::f_from_slice(&scores)?.f_reshape([nq, k as i64])?,
        indices: Tensor::f_from_slice(&rows)?.f_reshape([nq, k as i64])?,
    })
}

#[cfg(test)]
// Column lists of one block are what `scan` takes here, not ranges to expand.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::index::{GradientFile, IndexInfo};
    use tch::Device;

    /// A float16 index of `rows` random rows in two blocks of widths 3 and 5.
    fn index(rows: usize, kind: Kind) -> (tempfile::TempDir, Tensor) {
        let dir = tempfile::tempdir().unwrap();
        tch::manual_seed(7);
        let g = Tensor::randn([rows as i64, 8], (Kind::Float, Device::Cpu)).to_kind(kind);
        if rows > 3 {
            let _ = g.get(3).fill_(0.0);
        }
        let f = GradientFile::create(dir.path(), rows, 8, kind, false).unwrap();
        f.write_rows(0, &g).unwrap();
        f.sync().unwrap();
        IndexInfo {
            attribute_tokens: false,
            num_items: rows,
            num_grads: rows,
            grad_sizes: vec![("a".into(), 3), ("b".into(), 5)],
            base_dtype: crate::engine::numpy_name(kind).to_string(),
        }
        .write(dir.path())
        .unwrap();
        (dir, g.to_kind(Kind::Float))
    }

    /// The dense reference: all scores, then topk.
    fn reference(g: &Tensor, q: &Tensor, cols: &[Range<usize>], unit: bool) -> Tensor {
        let sel: Vec<Tensor> = cols
            .iter()
            .map(|c| g.narrow(1, c.start as i64, c.len() as i64))
            .collect();
        let mut s = q.matmul(&Tensor::cat(&sel, 1).tr());
        if unit {
            let n = g
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .sqrt();
            s = (s / n.unsqueeze(0)).nan_to_num(0.0, 0.0, 0.0);
        }
        s
    }

    #[test]
    fn streamed_search_equals_dense_topk() {
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            // Enough rows for several chunks of one-row-per-32KiB blocks.
            let rows = 70_000;
            let (dir, g) = index(rows, kind);
            let idx = GradientIndex::open(dir.path()).unwrap();
            let q = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
            let cols = [3..8];
            for unit in [false, true] {
                let norms = if unit {
                    RowNorms::Compute
                } else {
                    RowNorms::None
                };
                let r = scan(&idx, &q, &cols, 7, (true, true), norms).unwrap();
                let dense = reference(&g, &q, &cols, unit);
                let (want_top, _) = dense.topk(7, 1, true, true);
                let (want_bottom, _) = dense.topk(7, 1, false, true);
                let top = r.top.unwrap();
                let diff = (&top.scores - want_top).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "{kind:?} unit={unit}: {diff}");
                let bottom = r.bottom.unwrap();
                assert!((&bottom.scores - want_bottom).abs().max().double_value(&[]) < 1e-4);
                // The indices point at rows with those scores.
                let picked = dense.gather(1, &top.indices, false);
                assert!((picked - &top.scores).abs().max().double_value(&[]) < 1e-4);
                if unit {
                    let n = r.norms.unwrap();
                    assert_eq!(n.len(), rows);
                    assert_eq!(n[3], 0.0);
                }
            }
        }
    }

    #[test]
    fn k_beyond_the_rows_returns_every_row() {
        let (dir, g) = index(5, Kind::Float);
        let idx = GradientIndex::open(dir.path()).unwrap();
        let q = Tensor::randn([2, 8], (Kind::Float, Device::Cpu));
        let r = scan(&idx, &q, &[0..8], 50, (true, false), RowNorms::None).unwrap();
        let top = r.top.unwrap();
        assert_eq!(top.scores.size(), [2, 5]);
        let dense = reference(&g, &q, &[0..8], false);
        let (want, _) = dense.topk(5, 1, true, true);
        assert!((top.scores - want).abs().max().double_value(&[]) < 1e-5);
    }
}
