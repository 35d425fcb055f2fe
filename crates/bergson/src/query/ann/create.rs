//! Building a FAISS index from a gradient index (Bergson's `FaissIndex.create_index`): the rows
//! are split into `num_shards` consecutive shards; each shard is made by FAISS's index
//! factory (inner-product metric), trained on its first `max_train_examples` rows (all by
//! default) and filled with all its rows, unit-normalised first for cosine search (divided by
//! their norm with no epsilon, as Bergson; a zero row stays zero where Bergson's would be
//! NaN).
//!
//! Unlike Bergson, only the training rows are held in memory: the others are added from the
//! memory-mapped index `batch_size` rows at a time, so an index whose training set fits in
//! memory can be built however large its shards are (with a compressing factory such as
//! `IVF...,PQ...` or `...,SQ8`, the built index is smaller than the gradients too).
//!
//! The directory is built as `<dir>.part` and renamed into place once complete. Each shard is
//! written as `<i>.faiss.tmp` and renamed, so an interrupted build resumes from its finished
//! shards when it is rerun with the same factory, shard count and training rows (a `.part`
//! left by other settings is deleted).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::faiss::Faiss;
use super::layout::{config_text, read_config, shard_file, shard_sizes, CONFIG_FILE};
use crate::config::FaissConfig;
use crate::error::IoContext;
use crate::index::GradientIndex;
use crate::progress::Phase;
use crate::units::human_bytes;
use crate::{Error, Result};

/// The `.part` directory a FAISS index at `dir` is built in.
pub fn part_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dir.with_file_name(name)
}

/// A dense Hessian power the index rows are multiplied by before insertion (Bergson's
/// `precondition_flat_grads` with the `DensePreconditioner`'s `h_inv`), and a stamp of it
/// saved as `precondition.json` so a FAISS index built for one Hessian is never searched
/// with another.
pub struct RowPreconditioning<'a> {
    /// `(module, H^p)`; modules it lacks are inserted unchanged. Empty for a joint Hessian,
    /// whose rows Bergson inserts as they are.
    pub h_inv: &'a [(String, Tensor)],
    /// Identifies the Hessian power (see [`super::precondition_stamp`]).
    pub stamp: String,
}

/// The file recording which Hessian power a preconditioned FAISS index was built with.
pub const PRECONDITION_FILE: &str = "precondition.json";

/// Builds the FAISS index of `index` at `dir` (which must not exist yet), its rows
/// preconditioned after normalisation when `precondition` is given.
pub fn create(
    index: &GradientIndex,
    dir: &Path,
    cfg: &FaissConfig,
    unit_norm: bool,
    precondition: Option<&RowPreconditioning>,
) -> Result<()> {
    let total = index.num_rows();
    let dim = index.row_len();
    if cfg.num_shards == 0 || cfg.num_shards > total {
        return Err(Error::input(format!(
            "--num_shards {} must be between 1 and the index's {total} rows",
            cfg.num_shards
        )));
    }
    if cfg.batch_size == 0 {
        return Err(Error::input("--batch_size must be at least 1"));
    }
    // A factory string FAISS cannot parse fails here, before anything is written.
    Faiss::from_factory(dim, &cfg.index_factory).map(|_| ())?;
    let sizes = shard_sizes(total, cfg.num_shards);
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let train_rows = cfg.max_train_examples.map_or(largest, |m| m.min(largest));
    check_memory(train_rows, dim)?;

    let modules: Vec<String> = index
        .info
        .grad_sizes
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let part = part_dir(dir);
    let stamp = precondition.map(|p| p.stamp.clone());
    let resumable = part.join(CONFIG_FILE).is_file()
        && read_config(&part).is_ok_and(|d| d.builds_like(cfg, unit_norm, &modules))
        && std::fs::read_to_string(part.join(PRECONDITION_FILE)).ok() == stamp;
    if part.exists() && !resumable {
        crate::index::removal::remove_scratch(&part)?;
    }
    std::fs::create_dir_all(&part).at_path(&part)?;
    let config = config_text(cfg, index.dir(), unit_norm, &modules)?;
    std::fs::write(part.join(CONFIG_FILE), config).at_path(part.join(CONFIG_FILE))?;
    if let Some(stamp) = &stamp {
        let path = part.join(PRECONDITION_FILE);
        std::fs::write(&path, stamp).at_path(&path)?;
    }
    let h_inv = precondition.map(|p| p.h_inv);

    tracing::info!(
        "building the FAISS index {} ({} shards of {} rows)",
        dir.display(),
        sizes.len(),
        largest
    );
    let mut phase = Phase::new("building the FAISS index", "rows", Some(total as u64));
    let mut start = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let path = shard_file(&part, i);
        if !path.is_file() {
            let shard = build_shard(
                index,
                start..start + size,
                cfg,
                (unit_norm, h_inv),
                &mut phase,
            )?;
            let mut tmp = path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            shard.write(&tmp)?;
            sync_file(&tmp);
            std::fs::rename(&tmp, &path).at_path(&path)?;
        }
        start += size;
        phase.set(start as u64);
    }
    phase.finish();
    crate::index::run_dir::finish(&part, dir)
}

/// One shard over index rows `rows`: trained on the first training rows, then filled.
fn build_shard(
    index: &GradientIndex,
    rows: std::ops::Range<usize>,
    cfg: &FaissConfig,
    (unit_norm, h_inv): (bool, Option<&[(String, Tensor)]>),
    phase: &mut Phase,
) -> Result<Faiss> {
    let dim = index.row_len();
    let mut shard = Faiss::from_factory(dim, &cfg.index_factory)?;
    let train_end = rows.start
        + cfg
            .max_train_examples
            .map_or(rows.len(), |m| m.min(rows.len()));
    let batch = cfg.batch_size;
    let mut train = Vec::with_capacity((train_end - rows.start) * dim);
    for start in (rows.start..train_end).step_by(batch) {
        crate::interrupt::check()?;
        train.extend(prepared_rows(
            index,
            start..(start + batch).min(train_end),
            unit_norm,
            h_inv,
        )?);
    }
    shard.train(&train)?;
    // The training rows are the shard's first rows: add them from memory, the rest from the
    // map, one batch at a time (FAISS gives added rows consecutive ids either way).
    for chunk in train.chunks(batch * dim.max(1)) {
        crate::interrupt::check()?;
        shard.add(chunk)?;
        phase.inc((chunk.len() / dim.max(1)) as u64);
    }
    drop(train);
    for start in (train_end..rows.end).step_by(batch) {
        crate::interrupt::check()?;
        let end = (start + batch).min(rows.end);
        shard.add(&prepared_rows(index, start..end, unit_norm, h_inv)?)?;
        phase.inc((end - start) as u64);
    }
    Ok(shard)
}

/// Index rows `rows` as row-major float32, unit-normalised when asked, then multiplied by each
/// module's `H^p` in `h_inv`. Both happen in the stored dtype, as Bergson normalises and
/// preconditions the memory-mapped rows (the product in `H^p`'s dtype, stored back) before
/// FAISS converts them.
pub fn prepared_rows(
    index: &GradientIndex,
    rows: std::ops::Range<usize>,
    unit_norm: bool,
    h_inv: Option<&[(String, Tensor)]>,
) -> Result<Vec<f32>> {
    let mut t = index.rows(rows)?;
    if unit_norm {
        let norm = t.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
        t = t.f_div(&norm)?.f_nan_to_num(0.0, 0.0, 0.0)?;
    }
    if let Some(h_inv) = h_inv.filter(|h| !h.is_empty()) {
        let stored = t.kind();
        let mut blocks = Vec::new();
        let mut col = 0i64;
        for (name, width) in &index.info.grad_sizes {
            let block = t.f_narrow(1, col, *width as i64)?;
            col += *width as i64;
            blocks.push(match h_inv.iter().find(|(n, _)| n == name) {
                Some((_, h)) => block.f_to_kind(h.kind())?.f_matmul(h)?.f_to_kind(stored)?,
                None => block,
            });
        }
        t = Tensor::f_cat(&blocks, 1)?;
    }
    let t = t.f_to_kind(Kind::Float)?.f_contiguous()?;
    Ok(Vec::<f32>::try_from(t.f_view([-1i64])?)?)
}

/// Refuses a build whose training rows (held in memory as float32) cannot fit in the memory
/// available now (Bergson checks the largest shard the same way).
fn check_memory(train_rows: usize, dim: usize) -> Result<()> {
    let need = (train_rows * dim * 4) as f64;
    let Some(available) = crate::units::memory_available() else {
        return Ok(());
    };
    if need > available as f64 {
        return Err(Error::input(format!(
            "training the FAISS index holds {train_rows} rows of {dim} float32 values ({}) in \
             memory, but only {} is available; raise --num_shards or lower \
             --max_train_examples",
            human_bytes(need),
            human_bytes(available as f64)
        )));
    }
    Ok(())
}

/// Flushes a written shard to disk before it is renamed into place (best effort).
fn sync_file(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
    }
}
