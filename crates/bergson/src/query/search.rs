//! Exact search streamed from the memory-mapped index: the index is never loaded whole. Rows
//! are read in blocks straight from the page cache (float32 blocks without a copy; float16 and
//! bfloat16 blocks converted to float32 one cache-sized block at a time), each block meets
//! every query in one GEMM, and a running top-k (and bottom-k) per query is merged chunk by
//! chunk. With unit norm, each row's score is divided by the row's norm (cached next to the
//! index, or computed in the same pass), which equals Bergson's normalising the rows first.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::index::GradientIndex;
use crate::{Error, Result};

/// Float32 bytes of one block: converted and multiplied while it is in cache.
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks scored between merges of the running top-k.
const BLOCKS_PER_CHUNK: usize = 16;

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

/// A running best-k per query.
struct Running {
    largest: bool,
    k: i64,
    scores: Option<Tensor>,
    indices: Option<Tensor>,
}

impl Running {
    fn new(k: i64, largest: bool) -> Self {
        Running {
            largest,
            k,
            scores: None,
            indices: None,
        }
    }

    /// Merges a chunk's scores `[Q, rows]` whose first row is `first`.
    fn merge(&mut self, chunk: &Tensor, first: i64) -> Result<()> {
        let rows = chunk.size()[1];
        let (s, i) = chunk.f_topk(self.k.min(rows), 1, self.largest, false)?;
        let i = i.f_add_scalar(first)?;
        let (s, i) = match (self.scores.take(), self.indices.take()) {
            (Some(rs), Some(ri)) => {
                let s = Tensor::f_cat(&[rs, s], 1)?;
                let i = Tensor::f_cat(&[ri, i], 1)?;
                let (best, at) = s.f_topk(self.k.min(s.size()[1]), 1, self.largest, false)?;
                (best, i.f_gather(1, &at, false)?)
            }
            _ => (s, i),
        };
        self.scores = Some(s);
        self.indices = Some(i);
        Ok(())
    }

    fn finish(self) -> Result<Hits> {
        let (s, i) = match (self.scores, self.indices) {
            (Some(s), Some(i)) => (s, i),
            _ => return Err(Error::internal("search over an empty index")),
        };
        let (sorted, order) = s.f_sort(1, self.largest)?;
        Ok(Hits {
            scores: sorted,
            indices: i.f_gather(1, &order, false)?,
        })
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
    let row_len = index.row_len();
    let kind = index.kind();
    let width: usize = columns.iter().map(Range::len).sum();
    if queries.size() != [queries.size()[0], width as i64] {
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
    let q_t = queries.f_to_kind(Kind::Float)?.f_tr()?.f_contiguous()?;
    // Each selected block's rows of the transposed queries.
    let mut q_blocks = Vec::with_capacity(columns.len());
    let mut at = 0i64;
    for c in columns {
        q_blocks.push((c.clone(), q_t.f_narrow(0, at, c.len() as i64)?));
        at += c.len() as i64;
    }
    let whole = columns.len() == 1 && columns[0] == (0..row_len);
    let block_rows = (BLOCK_BYTES / (row_len * 4).max(1)).max(1);
    let chunk_rows = block_rows * BLOCKS_PER_CHUNK;
    let k = k.min(n) as i64;
    let mut best = top.then(|| Running::new(k, true));
    let mut worst = bottom.then(|| Running::new(k, false));
    let compute_norms = matches!(norms, RowNorms::Compute);
    let mut computed: Vec<f32> = if compute_norms {
        Vec::with_capacity(n)
    } else {
        Vec::new()
    };
    let mut chunk_start = 0;
    while chunk_start < n {
        crate::interrupt::check()?;
        let chunk_end = (chunk_start + chunk_rows).min(n);
        let mut parts = Vec::new();
        let mut start = chunk_start;
        while start < chunk_end {
            let end = (start + block_rows).min(chunk_end);
            let bytes = index.rows_bytes(start..end)?;
            let rows = (end - start) as i64;
            // SAFETY: `bytes` is a live slice of the memory map holding exactly
            // `rows * row_len` elements of `kind`; the view is dropped before this iteration
            // ends, and nothing writes through it.
            let view = unsafe {
                Tensor::f_from_blob(
                    bytes.as_ptr(),
                    &[rows, row_len as i64],
                    &[row_len as i64, 1],
                    kind,
                    Device::Cpu,
                )?
            };
            let block = if kind == Kind::Float {
                view
            } else {
                view.f_to_kind(Kind::Float)?
            };
            let mut s = if whole {
                block.f_matmul(&q_t)?
            } else {
                let mut acc: Option<Tensor> = None;
                for (c, q) in &q_blocks {
                    let part = block
                        .f_narrow(1, c.start as i64, c.len() as i64)?
                        .f_matmul(q)?;
                    acc = Some(match acc {
                        Some(mut a) => a.f_add_(&part)?,
                        None => part,
                    });
                }
                acc.ok_or_else(|| Error::internal("no columns to search"))?
            };
            let block_norms = match &norms {
                RowNorms::None => None,
                RowNorms::Given(v) => Some(Tensor::f_from_slice(&v[start..end])?),
                RowNorms::Compute => {
                    let nrm = block.f_square()?.f_sum_dim_intlist(
                        [1i64].as_slice(),
                        false,
                        Kind::Float,
                    )?;
                    let nrm = nrm.f_sqrt()?;
                    computed.extend(Vec::<f32>::try_from(&nrm)?);
                    Some(nrm)
                }
            };
            if let Some(nrm) = block_norms {
                // A zero row scores 0 (Bergson maps the 0/0 of its normalised rows to 0).
                s = s.f_div(&nrm.f_unsqueeze(1)?)?.f_nan_to_num(0.0, 0.0, 0.0)?;
            }
            drop(block);
            parts.push(s);
            start = end;
        }
        let scores = Tensor::f_cat(&parts, 0)?.f_tr()?.f_contiguous()?;
        if let Some(r) = &mut best {
            r.merge(&scores, chunk_start as i64)?;
        }
        if let Some(r) = &mut worst {
            r.merge(&scores, chunk_start as i64)?;
        }
        chunk_start = chunk_end;
    }
    Ok(ScanResult {
        top: best.map(Running::finish).transpose()?,
        bottom: worst.map(Running::finish).transpose()?,
        norms: compute_norms.then_some(computed),
    })
}

#[cfg(test)]
// Column lists of one block are what `scan` takes here, not ranges to expand.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::index::{GradientFile, IndexInfo};

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
