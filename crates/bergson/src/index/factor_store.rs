//! The factored Hessian stores of a `bergson hessian` run (Bergson 2.5.1's layout): one folder
//! per store, each holding `shard_<rank>.safetensors` with one tensor per module, row-sharded on
//! dim 0 across ranks (rank 0 takes the remainder; concatenating the shards in rank order gives
//! the full tensors). A single process writes `shard_0.safetensors`. `total_processed.pt`
//! beside them is the number of gradient-carrying positions the factors summed. A dense
//! (autocorrelation) Hessian is saved as a gradient processor instead ([`write_dense_hessians`]).

use std::path::Path;

use tch::Tensor;

use crate::error::IoContext;
use crate::pickle::{load_scalar_i64, save_scalar_i64};
use crate::pickle::{save, Value};
use crate::{Error, Result};

/// Raw sums of `a aᵀ` over positions (`A`, `[I(+1), I(+1)]` per module).
pub const ACTIVATION: &str = "activation_sharded";
/// Raw sums of `g gᵀ` over positions (`S`, `[O, O]`).
pub const GRADIENT: &str = "gradient_sharded";
/// Eigenvectors `Q_A` of `A / T` (columns).
pub const EIGEN_ACTIVATION: &str = "eigen_activation_sharded";
/// Eigenvectors `Q_G` of `S / T`.
pub const EIGEN_GRADIENT: &str = "eigen_gradient_sharded";
/// The uncorrected eigenvalue grid `outer(λ_G, λ_A) · T / N` `[O, I(+1)]`.
pub const EIGENVALUE: &str = "eigenvalue_sharded";
/// `λ_A · sqrt(T / N)` `[I(+1)]` (for factored Tikhonov damping).
pub const FACTOR_EIG_A: &str = "factor_eig_a";
/// `λ_G · sqrt(T / N)` `[O]`.
pub const FACTOR_EIG_G: &str = "factor_eig_g";
/// EK-FAC's corrected eigenvalues `Σ_n (Q_Gᵀ G_n Q_A)² / N` `[O, I(+1)]`.
pub const EIGENVALUE_CORRECTION: &str = "eigenvalue_correction_sharded";

/// Every store, in Bergson's `FACTOR_SUBDIRS` order.
pub const FACTOR_STORES: [&str; 8] = [
    ACTIVATION,
    GRADIENT,
    EIGEN_ACTIVATION,
    EIGEN_GRADIENT,
    EIGENVALUE,
    FACTOR_EIG_A,
    FACTOR_EIG_G,
    EIGENVALUE_CORRECTION,
];

/// The file of the count of gradient-carrying positions.
pub const TOTAL_PROCESSED: &str = "total_processed.pt";

/// Writes `store` of the run at `run` as one process's shard (`shard_0.safetensors`), one
/// contiguous CPU tensor per module.
pub fn write_store(run: &Path, store: &str, tensors: &[(String, Tensor)]) -> Result<()> {
    write_store_shard(run, store, tensors, 0, 1)
}

/// Rows `[start, end)` of dim 0 that `rank` of `world_size` holds of a dimension of size `dim`
/// (Bergson's `shard_bounds`): near-equal blocks in rank order, rank 0 taking the remainder.
pub fn shard_bounds(dim: usize, rank: usize, world_size: usize) -> (usize, usize) {
    let (base, remainder) = (dim / world_size.max(1), dim % world_size.max(1));
    if rank == 0 {
        (0, base + remainder)
    } else {
        let start = remainder + rank * base;
        (start, start + base)
    }
}

/// Writes `rank`'s shard (`shard_<rank>.safetensors`) of `store`: its rows ([`shard_bounds`])
/// of every module's full tensor, except [`FACTOR_EIG_A`], which every rank holds in full (as
/// Bergson's `save_uncorrected_eigenvalues`).
pub fn write_store_shard(
    run: &Path,
    store: &str,
    tensors: &[(String, Tensor)],
    rank: usize,
    world_size: usize,
) -> Result<()> {
    let dir = run.join(store);
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let path = dir.join(format!("shard_{rank}.safetensors"));
    let replicated = store == FACTOR_EIG_A;
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.f_to_device(tch::Device::Cpu)?;
            let t = if replicated || world_size <= 1 {
                t
            } else {
                let (start, end) = shard_bounds(t.size()[0] as usize, rank, world_size);
                t.f_narrow(0, start as i64, (end - start) as i64)?
            };
            Ok((name.clone(), t.f_contiguous()?))
        })
        .collect::<Result<_>>()?;
    // A failed write (full disk, permissions) is reported on the file, as any other I/O error.
    Tensor::write_safetensors(&cpu, &path)
        .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))
}

/// Reads `store` of the run at `run`: every module's full tensor, its shards concatenated in
/// rank order (for [`FACTOR_EIG_A`], which every shard holds in full, shard 0's), modules in
/// name order. `None` when the run has no such store.
pub fn read_store(run: &Path, store: &str) -> Result<Option<Vec<(String, Tensor)>>> {
    let dir = run.join(store);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut shards: Vec<Vec<(String, Tensor)>> = Vec::new();
    for rank in 0.. {
        let path = dir.join(format!("shard_{rank}.safetensors"));
        if !path.exists() {
            break;
        }
        let mut tensors = Tensor::read_safetensors(&path).map_err(|e| {
            Error::input(format!(
                "{} is not a readable safetensors file ({e}); refit the Hessian",
                path.display()
            ))
        })?;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        shards.push(tensors);
        if store == FACTOR_EIG_A {
            break;
        }
    }
    let Some(first) = shards.first() else {
        return Err(Error::input(format!(
            "{} has no shard_0.safetensors; refit the Hessian",
            dir.display()
        )));
    };
    let mut out = Vec::with_capacity(first.len());
    for (i, (name, _)) in first.iter().enumerate() {
        let parts: Vec<&Tensor> = shards
            .iter()
            .map(|s| match s.get(i) {
                Some((n, t)) if n == name => Ok(t),
                _ => Err(Error::input(format!(
                    "the shards of {} disagree on their modules ({name} is missing from one); refit the Hessian",
                    dir.display()
                ))),
            })
            .collect::<Result<_>>()?;
        out.push((name.clone(), Tensor::f_cat(&parts, 0)?));
    }
    Ok(Some(out))
}

/// Writes `total_processed.pt` (a 0-d int64 tensor, `torch.save`d).
pub fn write_total_processed(run: &Path, total: i64) -> Result<()> {
    save_scalar_i64(&run.join(TOTAL_PROCESSED), total)
}

/// Reads `total_processed.pt`.
pub fn read_total_processed(run: &Path) -> Result<i64> {
    load_scalar_i64(&run.join(TOTAL_PROCESSED))
}

/// Writes a dense (autocorrelation) Hessian's `hessians.pth` (`{module: H}`) and
/// `hessians_eigen.pth` (`{module: (eigenvalues, eigenvectors)}`), as Bergson's
/// `GradientProcessor.save`; the processor's other files are [`GradientProcessor::save`]'s.
///
/// [`GradientProcessor::save`]: crate::collect::GradientProcessor::save
pub fn write_dense_hessians(
    dir: &Path,
    hessians: &[(String, Tensor)],
    eigen: &[(String, Tensor, Tensor)],
) -> Result<()> {
    let dict = Value::Dict(
        hessians
            .iter()
            .map(|(name, h)| (Value::Str(name.clone()), Value::Tensor(h.shallow_clone())))
            .collect(),
    );
    save(&dir.join("hessians.pth"), &dict)?;
    let dict = Value::Dict(
        eigen
            .iter()
            .map(|(name, values, vectors)| {
                (
                    Value::Str(name.clone()),
                    Value::Tuple(vec![
                        Value::Tensor(values.shallow_clone()),
                        Value::Tensor(vectors.shallow_clone()),
                    ]),
                )
            })
            .collect(),
    );
    save(&dir.join("hessians_eigen.pth"), &dict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn stores_round_trip_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).reshape([2, 3]);
        let b = Tensor::from_slice(&[1.5f64, -2.0]);
        write_store(
            dir.path(),
            EIGENVALUE,
            &[
                ("z.b".to_string(), b.shallow_clone()),
                ("a.a".to_string(), a.shallow_clone()),
            ],
        )
        .unwrap();
        let back = read_store(dir.path(), EIGENVALUE).unwrap().unwrap();
        assert_eq!(back[0].0, "a.a");
        assert!(back[0].1.equal(&a));
        assert_eq!(back[1].0, "z.b");
        assert!(back[1].1.equal(&b));
        assert!(read_store(dir.path(), GRADIENT).unwrap().is_none());
        write_total_processed(dir.path(), 142).unwrap();
        assert_eq!(read_total_processed(dir.path()).unwrap(), 142);
    }
}
