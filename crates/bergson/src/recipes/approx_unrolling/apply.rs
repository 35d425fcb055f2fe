//! Phases 1 and 2 of SOURCE: a segment's spectral function applied to a stored query index,
//! written as a new index (Bergson 2.5.1's `apply_eigfn_to_query`).
//!
//! - SGD variant: each module's `G` `[O, I]` becomes `Q_G (f(Λ) ⊙ (Q_Gᵀ G Q_A)) Q_Aᵀ`, `Λ` the
//!   segment's corrected eigenvalues and `f` [`EigenFunction::Backward`] or
//!   [`EigenFunction::Segment`].
//! - Adam variant (App. C/D): `G ⊙ f(σ)` in parameter space, `σ = P ⊙ diag(H)` with
//!   `diag(H) = (Q_G∘Q_G) Λ (Q_A∘Q_A)ᵀ` and `P` the segment's Adam preconditioner; phase 2
//!   multiplies by the numerator `1 − exp(−ηK σ)` and then applies the EK-FAC inverse under the
//!   inversion config (Eq. 43's `H⁻¹`).
//!
//! The output holds the factors' modules in the store's (name) order, float32, unprojected.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::spectral::EigenFunction;
use crate::collect::{GradientProcessor, ProjectionSettings};
use crate::config::{InversionConfig, ProjectionTarget};
use crate::hessians::preconditioner::{FactoredInverse, Preconditioner};
use crate::index::{hessian_store, GradientFile, GradientIndex, IndexInfo};
use crate::{interrupt, Error, Result};

/// How a segment's function is applied.
pub struct SegmentApply<'a> {
    /// The segment's factors (`segment_<l>/<method>/`).
    pub segment: &'a Path,
    /// `ηK` of the segment.
    pub eta_k: f64,
    /// `Backward` (phase 1) or `Segment` (phase 2).
    pub function: EigenFunction,
    /// The Adam variant's preconditioner file.
    pub adam: Option<&'a Path>,
    /// The Adam variant's EK-FAC inverse (phase 2).
    pub inversion: Option<&'a InversionConfig>,
    /// Queries preconditioned at a time.
    pub batch_size: usize,
}

/// The per-module operators: the SGD variant's factored function, or the Adam variant's
/// elementwise multipliers (then an optional EK-FAC inverse).
enum Operator {
    Spectral(Preconditioner),
    Diagonal {
        multipliers: Vec<(String, Tensor)>,
        inverse: Option<Preconditioner>,
    },
}

/// `(module, O, I)` of each module of the factors, in the store's order.
type Shapes = Vec<(String, i64, i64)>;

fn load_operator(a: &SegmentApply, device: Device) -> Result<(Shapes, Operator)> {
    let store = hessian_store::read_factored(a.segment, true, false)?;
    let shapes: Shapes = store
        .modules
        .iter()
        .map(|(n, m)| (n.clone(), m.eigen_g.size()[0], m.eigen_a.size()[0]))
        .collect();
    let Some(adam) = a.adam else {
        let modules = store
            .modules
            .into_iter()
            .map(|(name, m)| {
                let multiplier = a.function.apply(&m.lambdas, a.eta_k)?;
                Ok((
                    name,
                    FactoredInverse::new(
                        m.eigen_a.f_to_device(device)?,
                        m.eigen_g.f_to_device(device)?,
                        multiplier.f_to_device(device)?,
                    ),
                ))
            })
            .collect::<Result<_>>()?;
        return Ok((
            shapes,
            Operator::Spectral(Preconditioner::Factored(modules)),
        ));
    };
    let grids = Tensor::read_safetensors(adam).map_err(|e| {
        Error::input(format!(
            "{} is not a readable preconditioner ({e}); rerun to rebuild it",
            adam.display()
        ))
    })?;
    // The EK-FAC inverse supplies the 1/σ of F_segment.
    let function = match (a.function, a.inversion) {
        (EigenFunction::Segment, Some(_)) => EigenFunction::OneMinusExp,
        (f, _) => f,
    };
    let mut multipliers = Vec::with_capacity(store.modules.len());
    for (name, m) in &store.modules {
        let Some((_, p)) = grids.iter().find(|(n, _)| n == name) else {
            return Err(Error::input(format!(
                "module '{name}' has EK-FAC factors but no preconditioner grid in {}",
                adam.display()
            )));
        };
        let (o, i) = (m.eigen_g.size()[0], m.eigen_a.size()[0]);
        if p.size() != [o, i] {
            return Err(Error::input(format!(
                "the preconditioner grid of '{name}' has shape {:?}, expected [{o}, {i}]",
                p.size()
            )));
        }
        let diag = m
            .eigen_g
            .f_square()?
            .f_matmul(&m.lambdas)?
            .f_matmul(&m.eigen_a.f_square()?.f_tr()?)?;
        let sigma = p.f_to_kind(Kind::Float)?.f_mul(&diag)?;
        multipliers.push((
            name.clone(),
            function.apply(&sigma, a.eta_k)?.f_to_device(device)?,
        ));
    }
    let inverse = a
        .inversion
        .map(|inv| Preconditioner::load(a.segment, inv, -1.0, true, device))
        .transpose()?;
    Ok((
        shapes,
        Operator::Diagonal {
            multipliers,
            inverse,
        },
    ))
}

/// Writes the segment's function of every row of the query index at `src` into `dst` (an
/// existing empty directory).
pub fn apply_to_index(a: &SegmentApply, src: &Path, dst: &Path, device: Device) -> Result<()> {
    let (shapes, op) = load_operator(a, device)?;
    let index = GradientIndex::open(src)?;
    for (name, o, i) in &shapes {
        match index.info.grad_sizes.iter().find(|(n, _)| n == name) {
            Some(&(_, w)) if w as i64 == o * i => {}
            _ => {
                return Err(Error::input(format!(
                    "the query index {} lacks module '{name}' at its full {o}x{i} width; build \
                     the query unprojected on the modules the factors were fitted on",
                    src.display()
                )))
            }
        }
    }
    let grad_sizes: Vec<(String, usize)> = shapes
        .iter()
        .map(|(n, o, i)| (n.clone(), (o * i) as usize))
        .collect();
    let row_len: usize = grad_sizes.iter().map(|(_, s)| s).sum();
    let num_queries = index.num_rows();
    let file = GradientFile::create(dst, num_queries, row_len, Kind::Float, false)?;
    let batch = a.batch_size.max(1);
    for start in (0..num_queries).step_by(batch) {
        interrupt::check()?;
        let rows = start..(start + batch).min(num_queries);
        let mut parts = Vec::with_capacity(shapes.len());
        for (name, o, i) in &shapes {
            let g = index
                .module_rows(name, rows.clone())?
                .f_to_kind(Kind::Float)?
                .f_to_device(device)?;
            let out = match &op {
                Operator::Spectral(pre) => pre.apply(&[(name.clone(), g)])?.swap_remove(0).1,
                Operator::Diagonal {
                    multipliers,
                    inverse,
                } => {
                    let (_, m) = multipliers
                        .iter()
                        .find(|(n, _)| n == name)
                        .ok_or_else(|| Error::internal(format!("no multiplier for '{name}'")))?;
                    let n = g.size()[0];
                    let scaled = g.f_view([n, *o, *i])?.f_mul(m)?.f_reshape([n, -1])?;
                    match inverse {
                        Some(pre) => pre.apply(&[(name.clone(), scaled)])?.swap_remove(0).1,
                        None => scaled,
                    }
                }
            };
            parts.push(out);
        }
        let out = Tensor::f_cat(&parts, 1)?;
        file.write_rows(rows.start, &out.f_to_device(Device::Cpu)?.f_contiguous()?)?;
    }
    file.sync()?;
    IndexInfo {
        attribute_tokens: false,
        num_items: num_queries,
        num_grads: num_queries,
        grad_sizes,
        base_dtype: "float32".into(),
    }
    .write(dst)?;
    let include_bias = GradientProcessor::read_settings(src)
        .map(|s| s.include_bias)
        .unwrap_or(false);
    GradientProcessor::new(ProjectionSettings {
        projection_dim: None,
        projection_target: ProjectionTarget::PerModule,
        include_bias,
        reshape_to_square: false,
        ..ProjectionSettings::default()
    })
    .save(dst)?;
    Ok(())
}
