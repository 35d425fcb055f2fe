//! Hessian directories as Python Bergson 2.5.1 writes them, read (and, for dense ones, written).
//!
//! Two layouts:
//! - **factored** (kfac / tkfac / shampoo, optionally EK-FAC corrected): one directory per
//!   tensor family, each `shard_<rank>.safetensors` holding every module's rows
//!   `[start, end)` of dim 0 (rank 0 takes the remainder), so the full tensor is the shards
//!   concatenated in rank order: `eigen_activation_sharded/` (Q_A `[I, I]`),
//!   `eigen_gradient_sharded/` (Q_G `[O, O]`), `eigenvalue_sharded/` (Λ `[O, I]`),
//!   `eigenvalue_correction_sharded/` (EK-FAC Λ), `factor_eig_a/` (λ_A `[I]`, replicated in
//!   every shard), `factor_eig_g/` (λ_G `[O]`, row-sharded), plus `total_processed.pt`.
//!   Recognised by its `eigen_activation_sharded/` directory.
//! - **dense** (autocorrelation): a saved gradient processor, `hessians.pth` (`{module: H}`,
//!   or `{"joint": H}` over all modules concatenated) and `hessians_eigen.pth`
//!   (`{module: (λ, V)}`), with `processor_config.yaml`.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::collect::{GradientProcessor, ProjectionSettings};
use crate::config::run_file::load_subconfig;
use crate::pickle::{self, Value};
use crate::{Error, Result};

/// Key of a joint (all modules concatenated) dense Hessian.
pub const JOINT: &str = "joint";

/// Whether `dir` holds a factored (K-FAC family) Hessian (Bergson's `is_factored_hessian`).
pub fn is_factored(dir: &Path) -> bool {
    dir.join("eigen_activation_sharded").is_dir()
}

/// One module's factored Hessian, full (shards concatenated), float32.
pub struct FactoredModule {
    /// Q_A `[I, I]`: eigenvectors of the activation covariance (columns).
    pub eigen_a: Tensor,
    /// Q_G `[O, O]`: eigenvectors of the gradient covariance.
    pub eigen_g: Tensor,
    /// Λ `[O, I]`: the eigenvalue grid (uncorrected or EK-FAC corrected).
    pub lambdas: Tensor,
    /// λ_A `[I]` and λ_G `[O]`, read only for `factored_tikhonov`.
    pub factor_eigs: Option<(Tensor, Tensor)>,
}

/// A factored Hessian directory, read.
pub struct FactoredHessian {
    /// Per module, in the store's order.
    pub modules: Vec<(String, FactoredModule)>,
    /// The model it was fitted on (its `config.yaml`), if recorded.
    pub model: Option<String>,
}

/// A dense Hessian directory, read.
pub struct DenseHessian {
    /// `(module, H)` in the file's order; one `"joint"` entry for a joint Gram.
    pub hessians: Vec<(String, Tensor)>,
    /// `(module, (λ, V))`, empty for a mixed Hessian.
    pub eigen: Vec<(String, (Tensor, Tensor))>,
    /// Its projection settings (`processor_config.yaml`), if saved.
    pub settings: Option<ProjectionSettings>,
    /// Its `hessian_cfg.method` (e.g. `autocorrelation`), if recorded.
    pub method: Option<String>,
}

fn bad(dir: &Path, why: impl std::fmt::Display) -> Error {
    Error::input(format!(
        "Hessian at {} is incomplete or damaged: {why}; refit it with `bergson hessian`",
        dir.display()
    ))
}

/// Every `shard_<rank>.safetensors` of `dir/sub`, in rank order.
fn shard_files(dir: &Path, sub: &str) -> Result<Vec<PathBuf>> {
    let shard_dir = dir.join(sub);
    let entries =
        std::fs::read_dir(&shard_dir).map_err(|_| bad(dir, format!("{sub}/ is missing")))?;
    let mut shards: Vec<(usize, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rank) = name
            .strip_prefix("shard_")
            .and_then(|s| s.strip_suffix(".safetensors"))
        {
            let rank: usize = rank
                .parse()
                .map_err(|_| bad(dir, format!("{sub}/{name} is not named shard_<rank>")))?;
            shards.push((rank, e.path()));
        }
    }
    shards.sort_by_key(|(r, _)| *r);
    if shards.is_empty() {
        return Err(bad(dir, format!("{sub}/ has no shard_*.safetensors")));
    }
    if shards.iter().enumerate().any(|(i, (r, _))| i != *r) {
        return Err(bad(
            dir,
            format!("{sub}/ is missing a shard (ranks must be 0..n)"),
        ));
    }
    Ok(shards.into_iter().map(|(_, p)| p).collect())
}

fn read_shard(dir: &Path, path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| {
        let shown = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        bad(dir, format!("{shown} cannot be read ({e})"))
    })
}

/// The full float32 tensors of `dir/sub`: each module's shards concatenated on dim 0.
pub fn read_sharded(dir: &Path, sub: &str) -> Result<Vec<(String, Tensor)>> {
    let shards = shard_files(dir, sub)?;
    let loaded: Vec<Vec<(String, Tensor)>> = shards
        .iter()
        .map(|p| read_shard(dir, p))
        .collect::<Result<_>>()?;
    let mut names: Vec<String> = loaded[0].iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let parts: Vec<&Tensor> = loaded
                .iter()
                .map(|shard| {
                    shard
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, t)| t)
                        .ok_or_else(|| {
                            bad(
                                dir,
                                format!("module '{name}' is missing from a shard of {sub}/"),
                            )
                        })
                })
                .collect::<Result<_>>()?;
            let full = Tensor::f_cat(&parts, 0).map_err(|e| {
                bad(
                    dir,
                    format!("shards of '{name}' in {sub}/ do not fit ({e})"),
                )
            })?;
            Ok((name, full.f_to_kind(Kind::Float)?))
        })
        .collect()
}

/// Shard 0 of `dir/sub` (a tensor every shard holds in full, such as λ_A), float32.
fn read_replicated(dir: &Path, sub: &str) -> Result<Vec<(String, Tensor)>> {
    let shards = shard_files(dir, sub)?;
    read_shard(dir, &shards[0])?
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_to_kind(Kind::Float)?)))
        .collect()
}

fn take(dir: &Path, map: &mut Vec<(String, Tensor)>, name: &str, sub: &str) -> Result<Tensor> {
    let i = map
        .iter()
        .position(|(n, _)| n == name)
        .ok_or_else(|| bad(dir, format!("module '{name}' has no entry in {sub}/")))?;
    Ok(map.remove(i).1)
}

fn check_finite(dir: &Path, name: &str, what: &str, t: &Tensor) -> Result<()> {
    if t.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
        return Err(Error::input(format!(
            "the Hessian at {} has NaN or infinite values in {what} of module '{name}'; refit it \
             (a higher --hessian_dtype, or fewer/cleaner documents)",
            dir.display()
        )));
    }
    Ok(())
}

/// Reads a factored Hessian: eigenvectors, the eigenvalue grid (`ev_correction`: the EK-FAC
/// corrected one) and, with `factor_eigs`, λ_A and λ_G; every shape checked against the others
/// and every value checked finite.
pub fn read_factored(
    dir: &Path,
    ev_correction: bool,
    factor_eigs: bool,
) -> Result<FactoredHessian> {
    let lambda_dir = if ev_correction {
        "eigenvalue_correction_sharded"
    } else {
        "eigenvalue_sharded"
    };
    if ev_correction && !dir.join(lambda_dir).is_dir() {
        return Err(Error::input(format!(
            "--ev_correction needs the EK-FAC corrected eigenvalues, but the Hessian at {} has no \
             {lambda_dir}/; refit it with `bergson hessian --ev_correction true`, or drop \
             --ev_correction",
            dir.display()
        )));
    }
    let eigen_a = read_sharded(dir, "eigen_activation_sharded")?;
    let mut eigen_g = read_sharded(dir, "eigen_gradient_sharded")?;
    let mut lambdas = read_sharded(dir, lambda_dir)?;
    let (mut fa, mut fg) = if factor_eigs {
        (
            read_replicated(dir, "factor_eig_a")?,
            read_sharded(dir, "factor_eig_g")?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut modules = Vec::with_capacity(eigen_a.len());
    for (name, q_a) in eigen_a {
        let q_g = take(dir, &mut eigen_g, &name, "eigen_gradient_sharded")?;
        let lam = take(dir, &mut lambdas, &name, lambda_dir)?;
        let (i, o) = (q_a.size()[0], q_g.size()[0]);
        let square = |t: &Tensor, n: i64| t.size() == [n, n];
        if !square(&q_a, i) || !square(&q_g, o) || lam.size() != [o, i] {
            return Err(bad(
                dir,
                format!(
                    "module '{name}' has Q_A {:?}, Q_G {:?} and eigenvalues {:?}, which do not fit \
                     together",
                    q_a.size(),
                    q_g.size(),
                    lam.size()
                ),
            ));
        }
        for (what, t) in [
            ("its activation eigenvectors", &q_a),
            ("its gradient eigenvectors", &q_g),
            ("its eigenvalues", &lam),
        ] {
            check_finite(dir, &name, what, t)?;
        }
        let factor_eigs = if factor_eigs {
            let a = take(dir, &mut fa, &name, "factor_eig_a")?;
            let g = take(dir, &mut fg, &name, "factor_eig_g")?;
            if a.size() != [i] || g.size() != [o] {
                return Err(bad(
                    dir,
                    format!("module '{name}' has factor eigenvalues of the wrong length"),
                ));
            }
            check_finite(dir, &name, "its factor eigenvalues", &a)?;
            check_finite(dir, &name, "its factor eigenvalues", &g)?;
            Some((a, g))
        } else {
            None
        };
        modules.push((
            name,
            FactoredModule {
                eigen_a: q_a,
                eigen_g: q_g,
                lambdas: lam,
                factor_eigs,
            },
        ));
    }
    let model = load_subconfig::<crate::config::IndexConfig>(dir, "index_cfg")
        .ok()
        .flatten()
        .map(|c| c.model);
    Ok(FactoredHessian { modules, model })
}

/// `hessian_cfg.method` from the directory's `config.yaml`, if recorded.
pub fn hessian_method(dir: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Method {
        method: Option<String>,
    }
    load_subconfig::<Method>(dir, "hessian_cfg")
        .ok()
        .flatten()
        .and_then(|m| m.method)
}

/// Reads a dense Hessian directory (a saved gradient processor). A directory without a
/// Hessian (e.g. a build's run directory, whose `hessians.pth` is empty) is refused.
pub fn read_dense(dir: &Path) -> Result<DenseHessian> {
    let path = dir.join("hessians.pth");
    if !dir.is_dir() {
        return Err(Error::input(format!(
            "--hessian_path {} does not exist; fit one with `bergson hessian {} --method ...`",
            dir.display(),
            dir.display()
        )));
    }
    if !path.is_file() {
        return Err(Error::input(format!(
            "{} is not a Hessian: it has neither hessians.pth (dense) nor \
             eigen_activation_sharded/ (factored); fit one with `bergson hessian`",
            dir.display()
        )));
    }
    let hessians = tensor_dict(&pickle::load(&path)?, &path)?;
    if hessians.is_empty() {
        return Err(Error::input(format!(
            "{} holds no Hessian (hessians.pth is empty: a build or score run?); fit one with \
             `bergson hessian --method autocorrelation`",
            dir.display()
        )));
    }
    for (name, h) in &hessians {
        let s = h.size();
        if s.len() != 2 || s[0] != s[1] {
            return Err(bad(
                dir,
                format!("the Hessian of '{name}' has shape {s:?}, not square"),
            ));
        }
        check_finite(dir, name, "its Hessian", h)?;
    }
    let eigen_path = dir.join("hessians_eigen.pth");
    let eigen = if eigen_path.is_file() {
        eigen_dict(&pickle::load(&eigen_path)?, &eigen_path)?
    } else {
        Vec::new()
    };
    let settings = if dir.join("processor_config.yaml").is_file() {
        Some(GradientProcessor::read_settings(dir)?)
    } else {
        None
    };
    Ok(DenseHessian {
        hessians,
        eigen,
        settings,
        method: hessian_method(dir),
    })
}

fn tensor_dict(v: &Value, path: &Path) -> Result<Vec<(String, Tensor)>> {
    let wrong = || {
        Error::input(format!(
            "{} is not a dict of module names to tensors",
            path.display()
        ))
    };
    v.as_dict()
        .ok_or_else(wrong)?
        .iter()
        .map(|(k, t)| {
            let name = k.as_str().ok_or_else(wrong)?;
            let t = t.as_tensor().ok_or_else(wrong)?;
            Ok((name.to_string(), t.f_to_kind(Kind::Float)?))
        })
        .collect()
}

fn eigen_dict(v: &Value, path: &Path) -> Result<Vec<(String, (Tensor, Tensor))>> {
    let wrong = || {
        Error::input(format!(
            "{} is not a dict of module names to (eigenvalues, eigenvectors)",
            path.display()
        ))
    };
    v.as_dict()
        .ok_or_else(wrong)?
        .iter()
        .map(|(k, pair)| {
            let name = k.as_str().ok_or_else(wrong)?;
            let pair = pair.as_seq().ok_or_else(wrong)?;
            match pair {
                [l, vecs] => Ok((
                    name.to_string(),
                    (
                        l.as_tensor().ok_or_else(wrong)?.shallow_clone(),
                        vecs.as_tensor().ok_or_else(wrong)?.shallow_clone(),
                    ),
                )),
                _ => Err(wrong()),
            }
        })
        .collect()
}

/// Writes `hessians.pth` and `hessians_eigen.pth` into `dir` as Bergson's processor does.
pub fn write_dense(
    dir: &Path,
    hessians: &[(String, Tensor)],
    eigen: &[(String, (Tensor, Tensor))],
) -> Result<()> {
    let h = Value::str_dict(
        hessians
            .iter()
            .map(|(n, t)| (n.clone(), Value::Tensor(t.shallow_clone()))),
    );
    pickle::save(&dir.join("hessians.pth"), &h)?;
    let e = Value::str_dict(eigen.iter().map(|(n, (l, v))| {
        (
            n.clone(),
            Value::Tuple(vec![
                Value::Tensor(l.shallow_clone()),
                Value::Tensor(v.shallow_clone()),
            ]),
        )
    }));
    pickle::save(&dir.join("hessians_eigen.pth"), &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_shards(dir: &Path, sub: &str, shards: &[Vec<(&str, Tensor)>]) {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for (r, tensors) in shards.iter().enumerate() {
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
            Tensor::write_safetensors(&refs, dir.join(sub).join(format!("shard_{r}.safetensors")))
                .unwrap();
        }
    }

    #[test]
    fn shards_concatenate_in_rank_order_not_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let full = Tensor::arange(5 * 3, (Kind::Float, tch::Device::Cpu)).reshape([5, 3]);
        // Rank 0 takes the remainder: rows [0, 3), then [3, 5).
        let parts: Vec<Vec<(&str, Tensor)>> = (0..12)
            .map(|r| {
                let (s, n) = match r {
                    0 => (0, 3),
                    1 => (3, 2),
                    _ => (5, 0),
                };
                vec![("m", full.narrow(0, s, n))]
            })
            .collect();
        write_shards(dir.path(), "x", &parts);
        let got = read_sharded(dir.path(), "x").unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].1.equal(&full), "shard_10 must come after shard_2");
    }

    #[test]
    fn a_missing_shard_or_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu));
        write_shards(
            dir.path(),
            "x",
            &[vec![("m", t.shallow_clone())], vec![("m", t)]],
        );
        std::fs::remove_file(dir.path().join("x/shard_0.safetensors")).unwrap();
        let e = read_sharded(dir.path(), "x").err().unwrap().to_string();
        assert!(e.contains("missing a shard"), "{e}");
        let e = read_sharded(dir.path(), "y").err().unwrap().to_string();
        assert!(e.contains("y/ is missing"), "{e}");
        std::fs::write(dir.path().join("x/shard_0.safetensors"), b"garbage").unwrap();
        let e = read_sharded(dir.path(), "x").err().unwrap().to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn dense_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let h = Tensor::eye(3, (Kind::Float, tch::Device::Cpu));
        let l = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
        write_dense(
            dir.path(),
            &[("a".into(), h.shallow_clone())],
            &[("a".into(), (l, h.shallow_clone()))],
        )
        .unwrap();
        let d = read_dense(dir.path()).unwrap();
        assert_eq!(d.hessians[0].0, "a");
        assert!(d.hessians[0].1.equal(&h));
        assert_eq!(d.eigen.len(), 1);
        assert!(d.settings.is_none());
        let mut nan = h.copy();
        let _ = nan.fill_diagonal_(f64::NAN, false);
        write_dense(dir.path(), &[("a".into(), nan)], &[]).unwrap();
        let e = read_dense(dir.path()).err().unwrap().to_string();
        assert!(e.contains("module 'a'") && e.contains("NaN"), "{e}");
    }
}
