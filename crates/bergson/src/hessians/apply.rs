//! A fitted factored Hessian's inverse applied to a stored query index, written as a new index
//! (Bergson 2.5.1's `apply_hessian.py`, step 3 of `bergson ekfac`).
//!
//! Each query row's module gradients `G` `[O, I]` become `H^-1 G = Q_G (m(Λ) ⊙ (Q_Gᵀ G Q_A))
//! Q_Aᵀ` under the inversion config ([`Preconditioner`], power -1). The training index the
//! query is scored against may be randomly projected; the preconditioned query is then
//! projected the same way, so the scores are `<P(H^-1 g_q), P(g_train)>`:
//! - per module (`--projection_target per_module`): `P_S (H^-1 G) P_Aᵀ`, the left and right
//!   matrices the collector uses for that module (`p²` values a module);
//! - global: each module's flattened `H^-1 G` through its own `"<module>/single"` matrix,
//!   summed over modules into one `p`-vector (`grad_sizes = {"gradients": p}`).
//!
//! The output holds only the modules the Hessian has factors for, in the store's (sorted)
//! order, as float32, with the projection recorded in `processor_config.yaml` so the score step
//! checks it against the index it computes.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::preconditioner::Preconditioner;
use crate::collect::projection::{
    global_block_columns, module_projection_matrix, projection_identifier, random_matrix_values,
};
use crate::collect::{GradientProcessor, ProjectionSettings};
use crate::config::{InversionConfig, ProjectionScale, ProjectionTarget};
use crate::index::{GradientFile, GradientIndex, IndexInfo};
use crate::{interrupt, Error, Result};

/// Key of the one column block of a globally projected index.
pub const GLOBAL_KEY: &str = "gradients";

/// What the applied inverse did.
#[derive(Debug, Clone)]
pub struct AppliedSummary {
    /// Query rows preconditioned.
    pub queries: usize,
    /// Modules preconditioned.
    pub modules: usize,
    /// Columns of the output rows.
    pub row_len: usize,
}

/// Writes `H^-1 G` of every row of the query index at `query` into `out` (a directory that
/// exists and is empty), projected as `projection` says. `hessian` is a factored fit;
/// `ev_correction` uses its EK-FAC corrected eigenvalues.
pub fn apply_inverse_to_index(
    hessian: &Path,
    query: &Path,
    out: &Path,
    inversion: &InversionConfig,
    ev_correction: bool,
    projection: &ProjectionSettings,
    device: Device,
) -> Result<AppliedSummary> {
    let p = projection.projection_dim.unwrap_or(0);
    if p > 0 && ev_correction {
        return Err(Error::input(format!(
            "projecting the preconditioned query (--projection_dim {p}) is not supported with \
             EK-FAC (--hessian_cfg.ev_correction true); set --projection_dim 0 or drop the \
             eigenvalue correction"
        )));
    }
    if !crate::index::hessian_store::is_factored(hessian) {
        return Err(Error::input(format!(
            "{} is not a factored (kfac, tkfac, shampoo) Hessian: it has no \
             eigen_activation_sharded/",
            hessian.display()
        )));
    }
    let pre = Preconditioner::load(hessian, inversion, -1.0, ev_correction, device)?;
    let index = GradientIndex::open(query)?;
    let names: Vec<String> = pre.modules().into_iter().map(str::to_string).collect();
    let global = p > 0 && projection.projection_target == ProjectionTarget::Global;
    if global {
        // A global projection sums every module: one without factors would leave the query a
        // term short.
        let missing: Vec<&str> = index
            .info
            .grad_sizes
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !names.iter().any(|m| m == n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::input(format!(
                "{} modules of the query index {} have no Hessian factors ({}); fit the Hessian \
                 on the same modules",
                missing.len(),
                query.display(),
                missing.join(", ")
            )));
        }
    }
    let mut shapes = Vec::with_capacity(names.len());
    for name in &names {
        let (o, i) = pre
            .factor_shape(name)
            .ok_or_else(|| Error::internal(format!("no factors for '{name}'")))?;
        match index.info.grad_sizes.iter().find(|(n, _)| n == name) {
            Some(&(_, w)) if w as i64 == o * i => {}
            Some(&(_, w)) => {
                return Err(Error::input(format!(
                    "module '{name}' has {w} values per row in the query index {} but the \
                     Hessian's factors are {o}x{i}; build the query with --projection_dim 0 and \
                     the Hessian's model and --include_bias",
                    query.display()
                )))
            }
            None => {
                return Err(Error::input(format!(
                    "the Hessian has factors for module '{name}', which the query index {} lacks; \
                     build the query and fit the Hessian on the same modules",
                    query.display()
                )))
            }
        }
        shapes.push((o, i));
    }
    let grad_sizes: Vec<(String, usize)> = if global {
        vec![(GLOBAL_KEY.to_string(), p)]
    } else {
        names
            .iter()
            .zip(&shapes)
            .map(|(n, &(o, i))| (n.clone(), if p > 0 { p * p } else { (o * i) as usize }))
            .collect()
    };
    let row_len: usize = grad_sizes.iter().map(|(_, s)| s).sum();
    let num_queries = index.num_rows();
    let file = GradientFile::create(out, num_queries, row_len, Kind::Float, false)?;

    let projections = names
        .iter()
        .zip(&shapes)
        .map(|(name, &(o, i))| ModuleProjection::new(projection, name, o, i, device))
        .collect::<Result<Vec<_>>>()?;
    let batch = 1usize.max(inversion.apply_batch_size);
    for start in (0..num_queries).step_by(batch) {
        interrupt::check()?;
        let rows = start..(start + batch).min(num_queries);
        let mut parts = Vec::with_capacity(names.len());
        for (name, proj) in names.iter().zip(&projections) {
            let g = index
                .module_rows(name, rows.clone())?
                .f_to_kind(Kind::Float)?
                .f_to_device(device)?;
            let h_inv_g = pre.apply(&[(name.clone(), g)])?.swap_remove(0).1;
            parts.push(proj.project(&h_inv_g)?);
        }
        let out_rows = if global {
            let mut sum = parts[0].shallow_clone();
            for part in &parts[1..] {
                sum = sum.f_add(part)?;
            }
            sum
        } else {
            Tensor::f_cat(&parts, 1)?
        };
        file.write_rows(
            rows.start,
            &out_rows.f_to_device(Device::Cpu)?.f_contiguous()?,
        )?;
    }
    file.sync()?;
    IndexInfo {
        attribute_tokens: false,
        num_items: num_queries,
        num_grads: num_queries,
        grad_sizes,
        base_dtype: "float32".into(),
    }
    .write(out)?;
    // The factors have a bias column exactly when the query gradients do.
    let include_bias = GradientProcessor::read_settings(query)
        .map(|s| s.include_bias)
        .unwrap_or(false);
    let settings = ProjectionSettings {
        projection_target: if p > 0 {
            projection.projection_target
        } else {
            ProjectionTarget::PerModule
        },
        include_bias,
        reshape_to_square: false,
        ..projection.clone()
    };
    GradientProcessor::new(settings).save(out)?;
    Ok(AppliedSummary {
        queries: num_queries,
        modules: names.len(),
        row_len,
    })
}

/// How one module's preconditioned gradient is compressed for the output.
enum ModuleProjection {
    /// Unprojected: the flat `O·I` row.
    None,
    /// `P_S G P_Aᵀ` with `P_S` `[p, O]`, `P_A` `[p, I]`.
    PerModule { left: Tensor, right: Tensor },
    /// `vec(G) Rᵀ` with `R` `[p, O·I]` in column blocks `(start, R[:, start..])`, unscaled,
    /// and the scale dividing the result (`sqrt(p)`, or each row's norm for `row_norm`).
    Global {
        blocks: Vec<(i64, Tensor)>,
        scale: Tensor,
    },
}

impl ModuleProjection {
    fn new(s: &ProjectionSettings, name: &str, o: i64, i: i64, device: Device) -> Result<Self> {
        let Some(p) = s.projection_dim.filter(|&p| p > 0) else {
            return Ok(ModuleProjection::None);
        };
        let matrix = |role: &str, n: i64| {
            module_projection_matrix(
                name,
                role,
                p,
                n as usize,
                s.projection_type,
                s.projection_scale,
                s.projection_seed,
                Kind::Float,
                device,
            )
        };
        if s.projection_target == ProjectionTarget::PerModule {
            return Ok(ModuleProjection::PerModule {
                left: matrix("left", o)?,
                right: matrix("right", i)?,
            });
        }
        // Bergson's `global_projection_blocks`: block at column `start` is the matrix named
        // `"<name>/single[/seed<k>]/<start>"`.
        let id = projection_identifier(name, "single", s.projection_seed);
        let n = o * i;
        let cols = global_block_columns(p) as i64;
        let mut blocks = Vec::new();
        let mut row_sq = Tensor::f_zeros([p as i64], (Kind::Float, device))?;
        let mut start = 0;
        while start < n {
            let stop = (start + cols).min(n);
            let values = random_matrix_values(
                &format!("{id}/{start}"),
                p,
                (stop - start) as usize,
                s.projection_type,
            );
            let block = Tensor::f_from_slice(&values)?
                .f_reshape([p as i64, stop - start])?
                .f_to_device(device)?;
            row_sq = row_sq.f_add(&block.f_square()?.f_sum_dim_intlist(
                [1i64].as_slice(),
                false,
                Kind::Float,
            )?)?;
            blocks.push((start, block));
            start = stop;
        }
        let scale = match s.projection_scale {
            ProjectionScale::Jl => {
                Tensor::f_from_slice(&[(p as f32).sqrt()])?.f_to_device(device)?
            }
            ProjectionScale::RowNorm => row_sq.f_sqrt()?,
        };
        Ok(ModuleProjection::Global { blocks, scale })
    }

    /// The output columns of `g` `[n, O·I]`.
    fn project(&self, g: &Tensor) -> Result<Tensor> {
        let n = g.size()[0];
        Ok(match self {
            ModuleProjection::None => g.shallow_clone(),
            ModuleProjection::PerModule { left, right } => {
                let (o, i) = (left.size()[1], right.size()[1]);
                let g = g.f_view([n, o, i])?;
                left.f_matmul(&g)?
                    .f_matmul(&right.f_tr()?)?
                    .f_reshape([n, -1])?
            }
            ModuleProjection::Global { blocks, scale } => {
                let p = scale.size()[0].max(blocks[0].1.size()[0]);
                let mut out = Tensor::f_zeros([n, p], (Kind::Float, g.device()))?;
                for (start, block) in blocks {
                    let part = g.f_narrow(1, *start, block.size()[1])?;
                    out = out.f_addmm(&part, &block.f_tr()?)?;
                }
                out.f_div(scale)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProjectionType;

    /// The global projection equals the dense `vec(G) Rᵀ / sqrt(p)` with `R` assembled from
    /// the same named blocks, and the per-module one `P_S G P_Aᵀ` computed entry by entry.
    #[test]
    fn projections_match_their_definitions() {
        let (o, i, p) = (3i64, 5i64, 4usize);
        let g = Tensor::randn([2, o * i], (Kind::Float, Device::Cpu));
        let mut s = ProjectionSettings {
            projection_dim: Some(p),
            projection_type: ProjectionType::Normal,
            projection_seed: Some(3),
            ..ProjectionSettings::default()
        };
        let per = ModuleProjection::new(&s, "m", o, i, Device::Cpu).unwrap();
        let got = per.project(&g).unwrap().to_kind(Kind::Double);
        let ModuleProjection::PerModule { left, right } = &per else {
            panic!("a per-module projection");
        };
        let (l, r) = (left.to_kind(Kind::Double), right.to_kind(Kind::Double));
        let gd = g.to_kind(Kind::Double).view([2, o, i]);
        for n in 0..2 {
            for a in 0..p as i64 {
                for b in 0..p as i64 {
                    let mut want = 0f64;
                    for x in 0..o {
                        for y in 0..i {
                            want += l.double_value(&[a, x])
                                * gd.double_value(&[n, x, y])
                                * r.double_value(&[b, y]);
                        }
                    }
                    let v = got.double_value(&[n, a * p as i64 + b]);
                    assert!((v - want).abs() < 1e-4, "{v} {want}");
                }
            }
        }
        s.projection_target = ProjectionTarget::Global;
        let glob = ModuleProjection::new(&s, "m", o, i, Device::Cpu).unwrap();
        let got = glob.project(&g).unwrap();
        let r = Tensor::f_from_slice(&random_matrix_values(
            "m/single/seed3/0",
            p,
            (o * i) as usize,
            ProjectionType::Normal,
        ))
        .unwrap()
        .reshape([p as i64, o * i]);
        let want = g.matmul(&r.tr()) / (p as f64).sqrt();
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{err}");
    }
}
