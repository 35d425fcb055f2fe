//! What `bergson magic` writes (Python Bergson 2.5.1's `save_magic_scores` and the per-query
//! files): the metagradients as a score store `<run>/scores/` (`scores.bin` + `info.json`,
//! float32, one column per query; per token with `offsets.npy` and `doc_ids.npy`), and with
//! `--aggregation none` each query's column as `<run>/per_query/q{i}.pt` (a float32 PyTorch
//! tensor). Scores are raw d(query loss)/d(weight): a negative score marks a proponent (more
//! weight on it lowers the query loss).

use crate::error::IoContext;
use crate::index::reader::write_offsets;
use crate::index::score_store::ScoreWriter;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Writes per-document scores `[num_docs, num_queries]` to `<run>/scores` (through
/// `scores.part`).
pub fn write_document_scores(run: &Path, scores: &Tensor) -> Result<PathBuf> {
    let (n, q) = scores
        .size2()
        .map_err(|_| Error::internal("document scores are not a matrix"))?;
    let (n, q) = (n as usize, q as usize);
    publish(run, |dir| {
        let mut w = ScoreWriter::create(dir, n, n, q, Kind::Float, false, false)?;
        let rows: Vec<usize> = (0..n).collect();
        w.write(&rows, scores, 0)?;
        w.sync()
    })
}

/// Writes per-token scores: `grid` `[num_examples, seq_len, num_queries]`, of which example
/// `r` keeps its first `max(length_r - 1, 0)` positions (the positions that predict a
/// token), with `offsets.npy` and each example's `doc_ids` (`[num_examples, width]`).
pub fn write_token_scores(
    run: &Path,
    grid: &Tensor,
    lengths: &[usize],
    doc_ids: &[Vec<i64>],
) -> Result<PathBuf> {
    let (e, _, q) = grid
        .size3()
        .map_err(|_| Error::internal("token scores are not [examples, positions, queries]"))?;
    if e as usize != lengths.len() {
        return Err(Error::internal(format!(
            "{e} rows of token scores for {} examples",
            lengths.len()
        )));
    }
    let counts: Vec<i64> = lengths
        .iter()
        .map(|&l| l.saturating_sub(1) as i64)
        .collect();
    let mut offsets = vec![0i64; counts.len() + 1];
    for (i, c) in counts.iter().enumerate() {
        offsets[i + 1] = offsets[i] + c;
    }
    let total = offsets[counts.len()] as usize;
    let flat = Tensor::cat(
        &counts
            .iter()
            .enumerate()
            .map(|(r, &c)| grid.get(r as i64).narrow(0, 0, c))
            .collect::<Vec<_>>(),
        0,
    );
    let width = doc_ids.iter().map(Vec::len).max().unwrap_or(0);
    publish(run, |dir| {
        let mut w =
            ScoreWriter::create(dir, e as usize, total, q as usize, Kind::Float, true, false)?;
        let rows: Vec<usize> = (0..total).collect();
        w.write(&rows, &flat, 0)?;
        w.sync()?;
        write_offsets(&dir.join("offsets.npy"), &offsets)?;
        write_doc_ids(&dir.join("doc_ids.npy"), doc_ids, width)
    })
}

/// Writes `per_query/q{i}.pt` for each column of `scores` (documents, or `[examples,
/// positions]` grids per token).
pub fn write_per_query(run: &Path, columns: &[Tensor]) -> Result<()> {
    let dir = run.join("per_query");
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    for (i, c) in columns.iter().enumerate() {
        let path = dir.join(format!("q{i}.pt"));
        let tmp = dir.join(format!("q{i}.pt.tmp"));
        let value = crate::pickle::Value::Tensor(c.detach().to_device(Device::Cpu).contiguous());
        crate::pickle::save(&tmp, &value)?;
        std::fs::rename(&tmp, &path).at_path(&path)?;
    }
    Ok(())
}

/// `np.save` of an int64 matrix.
fn write_doc_ids(path: &Path, doc_ids: &[Vec<i64>], width: usize) -> Result<()> {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).at_path(path)?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[doc_ids.len() as u64, width as u64])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .at_path(path)?;
    for row in doc_ids {
        for k in 0..width {
            w.push(&row.get(k).copied().unwrap_or(0)).at_path(path)?;
        }
    }
    w.finish().at_path(path)
}

/// Writes the store into `<run>/scores.part` with `fill`, then renames it to `<run>/scores`
/// (replacing an older one): a reader never sees half a store.
fn publish(run: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let part = run.join("scores.part");
    let done = run.join("scores");
    if part.exists() {
        std::fs::remove_dir_all(&part).at_path(&part)?;
    }
    std::fs::create_dir_all(&part).at_path(&part)?;
    fill(&part)?;
    if done.exists() {
        std::fs::remove_dir_all(&done).at_path(&done)?;
    }
    std::fs::rename(&part, &done).at_path(&done)?;
    Ok(done)
}
