//! `bergson mix`: a query and an index autocorrelation Hessian mixed into one,
//! `H = λ·H_query + (1 − λ)·H_index` (Bergson 2.5.1's `mix_autocorrelation_matrices`), the
//! TrackStar recipe of Chang et al. 2024, §A.1.3. The output is a dense gradient processor
//! (the query's projection settings and normalizers, the mixed `hessians.pth`, an empty
//! `hessians_eigen.pth`) that Python Bergson and `--hessian_path` read.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::config::MixConfig;
use crate::error::IoContext;
use crate::index::hessian_store::{self, DenseHessian};
use crate::{Error, Result};

/// What a finished mix did.
#[derive(Debug, Clone)]
pub struct MixSummary {
    /// The mixed Hessian's directory.
    pub output_path: PathBuf,
    /// λ, the query Hessian's weight.
    pub mixing_coefficient: f64,
    /// Modules mixed.
    pub modules: usize,
}

impl std::fmt::Display for MixSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mixed {} module Hessians with λ = {:.6} (query weight); written to {}",
            self.modules,
            self.mixing_coefficient,
            self.output_path.display()
        )
    }
}

/// The mixing coefficient λ (Bergson's `compute_lambda`): every module's eigenvalues (clamped
/// at 0, float64) pooled and sorted descending, separately for the query and the index
/// Hessian; at `k = target − 1` (the target capped at the pool's size),
/// `λ·σ_query[k] = (1 − λ)·σ_index[k]`, so `λ = σ_index[k] / (σ_query[k] + σ_index[k])`,
/// clipped to [0, 1]. No common module or a zero denominator gives 0.99, a target ≤ 0 gives 1.
pub fn mixing_coefficient(
    query_eigen: &[(String, (Tensor, Tensor))],
    index_eigen: &[(String, (Tensor, Tensor))],
    target_components: i64,
) -> Result<f64> {
    let mut query = Vec::new();
    let mut index = Vec::new();
    for (name, (q, _)) in query_eigen {
        let Some((_, (i, _))) = index_eigen.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let pool = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(Vec::<f64>::try_from(
                t.f_to_kind(Kind::Double)?
                    .f_clamp_min(0.0)?
                    .f_flatten(0, -1)?,
            )?)
        };
        query.extend(pool(q)?);
        index.extend(pool(i)?);
    }
    if query.is_empty() {
        return Ok(0.99);
    }
    if target_components <= 0 {
        return Ok(1.0);
    }
    let descending = |v: &mut Vec<f64>| v.sort_by(|a, b| b.total_cmp(a));
    descending(&mut query);
    descending(&mut index);
    let k = (target_components as usize).min(query.len()) - 1;
    let (sigma_query, sigma_index) = (query[k], index[k]);
    let denom = sigma_query + sigma_index;
    if denom == 0.0 {
        return Ok(0.99);
    }
    Ok((sigma_index / denom).clamp(0.0, 1.0))
}

/// Reads one side, refusing anything but an autocorrelation Hessian.
fn read_autocorrelation(path: &str, flag: &str) -> Result<DenseHessian> {
    if path.is_empty() {
        return Err(Error::input(
            "mix needs --query_path, --index_path and --output_path",
        ));
    }
    let dir = Path::new(path);
    if !dir.exists() {
        return Err(Error::input(format!(
            "{flag} {path} does not exist; fit it with `bergson hessian {path} --method autocorrelation ...`"
        )));
    }
    let method = hessian_store::hessian_method(dir);
    if method.as_deref() != Some("autocorrelation") {
        let what = match &method {
            Some(m) => format!("was fitted with --method {m}"),
            None => "records no hessian_cfg (not a `bergson hessian` run?)".to_string(),
        };
        return Err(Error::input(format!(
            "{flag} {path} {what}; mix only mixes autocorrelation Hessians (`bergson hessian \
             --method autocorrelation`)"
        )));
    }
    hessian_store::read_dense(dir)
}

/// `config.yaml` of a mix run: `steps: [{mix: {...}}]`, as Bergson's `save_run_config`.
fn config_yaml(cfg: &MixConfig) -> Result<String> {
    #[derive(Serialize)]
    struct Step<'a> {
        mix: &'a MixConfig,
    }
    #[derive(Serialize)]
    struct Doc<'a> {
        steps: Vec<Step<'a>>,
    }
    serde_saphyr::to_string(&Doc {
        steps: vec![Step { mix: cfg }],
    })
    .map_err(|e| Error::internal(format!("cannot write config.yaml: {e}")))
}

/// Runs `bergson mix`.
pub fn run(cfg: &MixConfig) -> Result<MixSummary> {
    if cfg.output_path.is_empty() {
        return Err(Error::input(
            "mix needs --query_path, --index_path and --output_path",
        ));
    }
    mix_into(cfg, Path::new(&cfg.output_path))
}

/// Mixes as [`run`] does, writing the files into `out` instead of `cfg.output_path` (which the
/// saved config still names): the TrackStar recipe writes a `.part` directory and renames it.
pub fn mix_into(cfg: &MixConfig, out: &Path) -> Result<MixSummary> {
    let query = read_autocorrelation(&cfg.query_path, "--query_path")?;
    let index = read_autocorrelation(&cfg.index_path, "--index_path")?;
    if let (Some(q), Some(i)) = (&query.settings, &index.settings) {
        q.check_matches(i, &format!("The index Hessian at {}", cfg.index_path))?;
    } else if query.settings.is_some() != index.settings.is_some() {
        return Err(Error::input(format!(
            "only one of {} and {} has a processor_config.yaml, so their projections cannot be \
             compared; refit the one without it",
            cfg.query_path, cfg.index_path
        )));
    }
    let lambda = mixing_coefficient(&query.eigen, &index.eigen, cfg.target_downweight_components)?;
    let mixed: Vec<(String, Tensor)> = query
        .hessians
        .iter()
        .map(|(name, hq)| {
            let (_, hi) = index
                .hessians
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| {
                    Error::input(format!(
                        "the query Hessian has module '{name}' but the index Hessian at {} does \
                         not; fit both on the same modules",
                        cfg.index_path
                    ))
                })?;
            if hi.size() != hq.size() {
                return Err(Error::input(format!(
                    "module '{name}' has a {:?} Hessian in the query but {:?} in the index; fit \
                     both with the same model and projection",
                    hq.size(),
                    hi.size()
                )));
            }
            Ok((
                name.clone(),
                hq.f_mul_scalar(lambda)?
                    .f_add(&hi.f_mul_scalar(1.0 - lambda)?)?,
            ))
        })
        .collect::<Result<_>>()?;

    let out = out.to_path_buf();
    std::fs::create_dir_all(&out).at_path(&out)?;
    let path = out.join("config.yaml");
    std::fs::write(&path, config_yaml(cfg)?).at_path(&path)?;
    // The query's processor, with the mixed Hessians and no eigendecompositions.
    let qdir = Path::new(&cfg.query_path);
    for file in ["processor_config.yaml", "normalizers.pth"] {
        let src = qdir.join(file);
        if src.is_file() {
            std::fs::copy(&src, out.join(file)).at_path(out.join(file))?;
        } else if file == "normalizers.pth" {
            crate::pickle::save_empty_dict(&out.join(file))?;
        }
    }
    hessian_store::write_dense(&out, &mixed, &[])?;
    Ok(MixSummary {
        output_path: out,
        mixing_coefficient: lambda,
        modules: mixed.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eig(name: &str, v: &[f64]) -> (String, (Tensor, Tensor)) {
        (name.into(), (Tensor::from_slice(v), Tensor::new()))
    }

    #[test]
    fn lambda_is_where_the_sorted_spectra_cross() {
        let q = vec![
            eig("a", &[4.0, 1.0]),
            eig("b", &[-1.0, 2.0]),
            eig("only_q", &[9.0]),
        ];
        let i = vec![eig("b", &[3.0, 0.5]), eig("a", &[6.0, 1.0])];
        // Pooled and sorted: query 4, 2, 1, 0 (clamped); index 6, 3, 1, 0.5.
        let at = |k| mixing_coefficient(&q, &i, k).unwrap();
        assert!((at(1) - 6.0 / 10.0).abs() < 1e-15);
        assert!((at(2) - 3.0 / 5.0).abs() < 1e-15);
        assert!((at(100) - 0.5 / 0.5).abs() < 1e-15, "capped at the pool");
        assert_eq!(at(0), 1.0);
        assert_eq!(mixing_coefficient(&q, &[], 3).unwrap(), 0.99);
        let zero = vec![eig("a", &[0.0])];
        assert_eq!(mixing_coefficient(&zero, &zero, 1).unwrap(), 0.99);
    }
}
