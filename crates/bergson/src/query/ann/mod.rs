//! Approximate search with FAISS (Bergson's `FaissIndex`, `bergson query --faiss`): a sharded
//! FAISS index built once inside the gradient index (see [`layout`] for the files, [`create`]
//! for how it is built) and reused by every later search. Needs the `faiss` cargo feature;
//! without it, [`AnnIndex::open_or_build`] returns an error naming the fix.
//!
//! Queries are searched in every shard and the shards' results merged ([`merge`]). A reverse
//! (lowest scores first) search fetches every row of every shard and keeps the lowest, as
//! Bergson does; on an IVF index that is every row in the `nprobe` lists nearest the query.

pub mod create;
pub mod faiss;
pub mod layout;
pub mod merge;

use std::path::{Path, PathBuf};

use self::faiss::Faiss;
use self::merge::{merge, ShardResults};
use crate::config::FaissConfig;
use crate::hessians::preconditioner::Preconditioner;
use crate::index::GradientIndex;
use crate::query::search::Hits;
use crate::{Error, Result};

/// A sharded FAISS index over a gradient index's rows, open for searching.
pub struct AnnIndex {
    dir: PathBuf,
    shards: Vec<Faiss>,
    /// Index row of each shard's first vector.
    offsets: Vec<usize>,
    ordered_modules: Vec<String>,
    unit_norm: bool,
    dim: usize,
    ntotal: usize,
}

impl AnnIndex {
    /// Opens `index`'s FAISS index for these settings
    /// (`<index>/faiss_<factory>[_cosine][_precondition]`), building it first when it does not
    /// exist. With a `preconditioner`, as Bergson 2.5.1: a dense per-module Hessian power
    /// multiplies the rows before insertion (after normalisation), a joint one leaves them as
    /// they are, a factored one is refused.
    pub fn open_or_build(
        index: &GradientIndex,
        cfg: &FaissConfig,
        unit_norm: bool,
        preconditioner: Option<&Preconditioner>,
    ) -> Result<Self> {
        faiss::available()?;
        let factory = cfg.index_factory.as_str();
        if factory.trim().is_empty() || factory.contains(['/', '\\', '\0']) {
            return Err(Error::input(format!(
                "--index_factory {factory:?} is not a FAISS index factory string (e.g. Flat, \
                 IVF1024,SQfp16, PQ64)"
            )));
        }
        let rows =
            match preconditioner {
                None => None,
                Some(Preconditioner::Factored(_)) => return Err(Error::input(
                    "FAISS search cannot be preconditioned by a factored (K-FAC/EK-FAC) Hessian, \
                     as in Bergson; drop --faiss to search exactly, or use a dense \
                     (autocorrelation) Hessian",
                )),
                Some(p) => Some(create::RowPreconditioning {
                    h_inv: match p {
                        Preconditioner::Dense(h) => h.as_slice(),
                        _ => &[],
                    },
                    stamp: precondition_stamp(p)?,
                }),
            };
        let dir = index
            .dir()
            .join(layout::dir_name(factory, unit_norm, rows.is_some()));
        if !dir.join(layout::CONFIG_FILE).is_file() {
            if dir.exists() {
                return Err(Error::input(format!(
                    "{} is an unfinished FAISS index (it has no {}); delete it to rebuild it",
                    dir.display(),
                    layout::CONFIG_FILE
                )));
            }
            create::create(index, &dir, cfg, unit_norm, rows.as_ref())?;
        }
        if let Some(rows) = &rows {
            // Bergson names the directory after the search settings only; the stamp keeps an
            // index built for one Hessian from answering for another. (One Python built has no
            // stamp and is taken as it is.)
            let saved = std::fs::read_to_string(dir.join(create::PRECONDITION_FILE)).ok();
            if saved.is_some_and(|s| s != rows.stamp) {
                return Err(Error::input(format!(
                    "the FAISS index {} was built for another Hessian or inversion; delete it to \
                     rebuild it for this one",
                    dir.display()
                )));
            }
        }
        let ann = Self::open(&dir, cfg.mmap_index, cfg.nprobe)?;
        ann.check_matches(index)?;
        Ok(ann)
    }

    /// Opens the FAISS index directory `dir`: its shards are read whole, or with their
    /// inverted lists memory-mapped (`mmap`, for IVF indexes), and `nprobe` lists are searched
    /// per query.
    pub fn open(dir: &Path, mmap: bool, nprobe: usize) -> Result<Self> {
        faiss::available()?;
        if nprobe == 0 {
            return Err(Error::input("--nprobe must be at least 1"));
        }
        let described = layout::read_config(dir)?;
        let files = layout::shard_files(dir)?;
        if files.is_empty() {
            return Err(Error::input(format!(
                "{} has no shards (<n>.faiss); delete it to rebuild it",
                dir.display()
            )));
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut offsets = Vec::with_capacity(files.len());
        let mut ntotal = 0;
        let mut dim = None;
        for file in &files {
            let mut shard = Faiss::read(file, mmap)?;
            if !shard.is_inner_product() {
                return Err(Error::input(format!(
                    "{} does not score by inner product, as Bergson's FAISS indexes do; delete \
                     {} to rebuild it",
                    file.display(),
                    dir.display()
                )));
            }
            if *dim.get_or_insert(shard.dim()) != shard.dim() {
                return Err(Error::input(format!(
                    "the shards of {} have different widths; delete it to rebuild it",
                    dir.display()
                )));
            }
            shard.set_nprobe(nprobe)?;
            offsets.push(ntotal);
            ntotal += shard.ntotal();
            shards.push(shard);
        }
        Ok(AnnIndex {
            dir: dir.to_path_buf(),
            shards,
            offsets,
            ordered_modules: described.ordered_modules,
            unit_norm: described.unit_norm,
            dim: dim.unwrap_or(0),
            ntotal,
        })
    }

    /// Errors unless this FAISS index holds `index`'s rows (a rebuilt index replaces its
    /// directory, so a mismatch means files were moved or edited by hand).
    fn check_matches(&self, index: &GradientIndex) -> Result<()> {
        let modules: Vec<String> = index
            .info
            .grad_sizes
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        if self.ntotal != index.num_rows()
            || self.dim != index.row_len()
            || self.ordered_modules != modules
        {
            return Err(Error::input(format!(
                "the FAISS index {} ({} rows of {} columns) does not match its gradient index \
                 ({} rows of {} columns); delete it to rebuild it",
                self.dir.display(),
                self.ntotal,
                self.dim,
                index.num_rows(),
                index.row_len()
            )));
        }
        Ok(())
    }

    /// The directory of the FAISS index.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rows in the index (all shards).
    pub fn num_rows(&self) -> usize {
        self.ntotal
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// The modules whose concatenated gradients the rows hold, in column order.
    pub fn ordered_modules(&self) -> &[String] {
        &self.ordered_modules
    }

    /// Whether rows were unit-normalised before insertion (a cosine index).
    pub fn unit_norm(&self) -> bool {
        self.unit_norm
    }

    /// The best `k` rows per query (`queries`: row-major `[Q, dim]` float32), highest scores
    /// first (`top`) and/or lowest first (`bottom`). A row FAISS did not find is -1 (score
    /// -FLT_MAX); an IVF index finds only rows in its `nprobe` searched lists.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        (top, bottom): (bool, bool),
    ) -> Result<(Option<Hits>, Option<Hits>)> {
        if self.dim == 0 || !queries.len().is_multiple_of(self.dim) {
            return Err(Error::internal(format!(
                "{} query values for an index of {} columns",
                queries.len(),
                self.dim
            )));
        }
        let q = queries.len() / self.dim;
        let top = top.then(|| self.ranked(queries, q, k, false)).transpose()?;
        let bottom = bottom
            .then(|| self.ranked(queries, q, k, true))
            .transpose()?;
        Ok((top, bottom))
    }

    /// One direction of [`search`](Self::search): each shard's best `k` (every row of each
    /// shard for `reverse`), merged.
    fn ranked(&self, queries: &[f32], q: usize, k: usize, reverse: bool) -> Result<Hits> {
        let mut parts = Vec::with_capacity(self.shards.len());
        for (shard, &offset) in self.shards.iter().zip(&self.offsets) {
            crate::interrupt::check()?;
            let n = shard.ntotal();
            let fetch = if reverse { n } else { k.min(n) };
            if fetch == 0 {
                continue;
            }
            let (scores, labels) = shard.search(queries, fetch)?;
            parts.push(ShardResults {
                scores,
                labels,
                k: fetch,
                offset,
            });
        }
        merge(&parts, q, k, reverse)
    }
}

/// An MD5 digest of a (non-factored) Hessian power: its module names and float32 values.
pub fn precondition_stamp(p: &Preconditioner) -> Result<String> {
    use md5::{Digest, Md5};
    let mut digest = Md5::new();
    let mut feed = |name: &str, t: &tch::Tensor| -> Result<()> {
        digest.update(name.as_bytes());
        let t = t.f_to_kind(tch::Kind::Float)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(t.f_view([-1i64])?)?;
        for v in values {
            digest.update(v.to_le_bytes());
        }
        Ok(())
    };
    match p {
        Preconditioner::Dense(h) => {
            for (name, t) in h {
                feed(name, t)?;
            }
        }
        Preconditioner::JointDense(t) => feed("joint", t)?,
        Preconditioner::Factored(_) => {
            return Err(Error::internal("a factored Hessian has no FAISS stamp"))
        }
    }
    Ok(digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
