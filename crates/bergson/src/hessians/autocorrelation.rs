//! The dense autocorrelation Hessian (Bergson's `AutocorrelationCollector` and
//! `JointAutocorrelationCollector`, used by TrackStar and TRAK): per module the Gram of the
//! per-example (normalised, projected) gradients the index would store, `H = Σ_n P_nᵀ P_n / N`,
//! with `N` the dataset's documents (or gradient-carrying tokens with `--attribute_tokens`).
//! Under `--projection_target global` one Gram, `"joint"`, over the single projected vector.
//! Gradients come from the index's own capture and loss, so dataset labels are always used.

use tch::{Kind, Tensor};

use super::eigen::Eigen;
use crate::collect::{Collection, Documents};
use crate::dist::{all_reduce_anywhere, Collective, ReduceOp};
use crate::progress::Phase;
use crate::{interrupt, Result};

/// The key of the joint Gram under a global projection.
pub const JOINT: &str = "joint";

/// The fitted Grams (float32) and their float64 eigendecompositions (stored in float32).
pub struct DenseHessians {
    /// `(key, H)`.
    pub hessians: Vec<(String, Tensor)>,
    /// `(key, eigenvalues, eigenvectors)`.
    pub eigen: Vec<(String, Tensor, Tensor)>,
    /// Gradient-carrying positions seen.
    pub positions: i64,
}

/// The unnormalised Grams of one process's batches, before they are summed over a job's ranks
/// ([`Grams::all_reduce`]) and finished ([`Grams::finish`]).
pub struct Grams {
    keys: Vec<(String, usize)>,
    grams: Vec<Tensor>,
    /// Gradient-carrying positions seen.
    pub positions: i64,
}

/// Sums `Pᵀ P` over every batch of `collection` (`global`: its one block is the global
/// projection).
pub fn accumulate(
    collection: &Collection<'_>,
    docs: Documents<'_>,
    global: bool,
    device: tch::Device,
) -> Result<Grams> {
    let keys: Vec<(String, usize)> = if global {
        vec![(JOINT.to_string(), collection.grad_sizes()[0].1)]
    } else {
        collection.grad_sizes()
    };
    let mut grams: Vec<Tensor> = keys
        .iter()
        .map(|(_, size)| Tensor::f_zeros([*size as i64, *size as i64], (Kind::Float, device)))
        .collect::<std::result::Result<_, _>>()?;
    let mut positions = 0i64;
    let mut phase = Phase::new(
        "fitting the autocorrelation Hessian",
        "batches",
        Some(collection.batches().len() as u64),
    );
    for batch in collection.batches() {
        interrupt::check()?;
        let out = collection.run_batch_blocks(docs, batch)?;
        positions += out.positions as i64;
        for (gram, (_, block)) in grams.iter_mut().zip(&out.blocks) {
            let p = block.materialize()?.f_to_kind(Kind::Float)?;
            let _ = gram.f_addmm_(&p.f_tr()?, &p)?;
        }
        phase.inc(1);
    }
    phase.finish();
    Ok(Grams {
        keys,
        grams,
        positions,
    })
}

impl Grams {
    /// Grams (keys) held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Sums the Grams and positions over the ranks of `job`, onto every rank.
    pub fn all_reduce(&mut self, job: &dyn Collective) -> Result<()> {
        if job.world_size() == 1 {
            return Ok(());
        }
        for gram in &mut self.grams {
            all_reduce_anywhere(job, gram, ReduceOp::Sum)?;
        }
        let mut positions = Tensor::from_slice(&[self.positions]);
        job.all_reduce(&mut positions, ReduceOp::Sum)?;
        self.positions = positions.f_int64_value(&[0])?;
        Ok(())
    }

    /// The Grams divided by `num_rows`, with their eigendecompositions, in Bergson's order.
    pub fn finish(self, num_rows: usize) -> Result<DenseHessians> {
        let mut hessians = Vec::with_capacity(self.keys.len());
        let mut eigen = Vec::with_capacity(self.keys.len());
        let fitted: Vec<((String, usize), Tensor)> =
            self.keys.into_iter().zip(self.grams).collect();
        // Bergson's dicts are filled by its backward hooks: last module first, a split module's
        // heads in order.
        let fitted = backward_hook_order(fitted, |((key, _), _)| key.as_str());
        for ((key, _), gram) in fitted {
            let h = gram
                .f_div_scalar(num_rows.max(1) as f64)?
                .f_to_device(tch::Device::Cpu)?;
            let Eigen { values, vectors } = eigh(&h)?;
            eigen.push((key.clone(), values, vectors));
            hessians.push((key, h));
        }
        Ok(DenseHessians {
            hessians,
            eigen,
            positions: self.positions,
        })
    }
}

/// `items` (in module order, a split module's heads `<module>.head_<h>` together) reordered as
/// backward hooks see them: modules last to first, each module's heads in order.
fn backward_hook_order<T>(items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<T> {
    let module = |k: &str| -> String {
        match k.rsplit_once(".head_") {
            Some((m, h)) if h.parse::<usize>().is_ok() => m.to_string(),
            _ => k.to_string(),
        }
    };
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for item in items {
        let m = module(key(&item));
        match groups.last_mut() {
            Some((last, group)) if *last == m => group.push(item),
            _ => groups.push((m, vec![item])),
        }
    }
    groups.into_iter().rev().flat_map(|(_, g)| g).collect()
}

/// Bergson's `process_autocorrelation._eigh`: float64 `eigh` of `H` as it is (no
/// symmetrisation), returned in `H`'s dtype.
fn eigh(h: &Tensor) -> Result<Eigen> {
    let (values, vectors) = h.f_to_kind(Kind::Double)?.f_linalg_eigh("L")?;
    Ok(Eigen {
        values: values.f_to_kind(h.kind())?.f_contiguous()?,
        vectors: vectors.f_to_kind(h.kind())?.f_contiguous()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_backward_hooks() {
        let keys = ["a", "b.head_0", "b.head_1", "c"];
        let got = backward_hook_order(keys.to_vec(), |k| k);
        assert_eq!(got, ["c", "b.head_0", "b.head_1", "a"]);
    }
}
