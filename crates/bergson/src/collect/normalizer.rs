//! Adam and Adafactor normalizers: second-moment estimates that divide each gradient entry
//! by `sqrt(v)` before projection, as Bergson 2.5.1 applies them (`bergson/gradients.py`).

use tch::Tensor;

use crate::Result;

/// Adafactor's epsilon, added to the row and column factors before the square root.
pub const ADAFACTOR_EPS: f64 = 1e-30;
/// Adam's epsilon, added outside the square root.
pub const ADAM_EPS: f64 = 1e-8;
/// Epsilon of the Adafactor bias normalisation (added inside the square root).
pub const BIAS_EPS: f64 = 1e-8;

/// A module's second moments.
#[derive(Debug)]
pub enum Normalizer {
    /// Full second moments (`exp_avg_sq`), `[O, I]`; entries are divided by `sqrt(v) + 1e-8`.
    Adam {
        /// `[O, I]`.
        weight_avg_sq: Tensor,
        /// `[O]`.
        bias_avg_sq: Option<Tensor>,
    },
    /// Factored second moments (tensor2tensor style): `V_ij = r_i c_j / mean(r)`.
    Adafactor {
        /// `[O]`.
        row: Tensor,
        /// `[I]`.
        col: Tensor,
        /// `[O]`.
        bias_avg_sq: Option<Tensor>,
    },
}

impl Normalizer {
    /// Bergson's class name, stored as `__class__` in normalizers.pth.
    pub fn class_name(&self) -> &'static str {
        match self {
            Normalizer::Adam { .. } => "AdamNormalizer",
            Normalizer::Adafactor { .. } => "AdafactorNormalizer",
        }
    }

    /// Whether this is an Adam normalizer (which forces full per-example gradients).
    pub fn is_adam(&self) -> bool {
        matches!(self, Normalizer::Adam { .. })
    }

    /// The normalizer of output rows `lo..hi` (one attention head).
    pub fn slice_rows(&self, lo: i64, hi: i64) -> Normalizer {
        let bias = |b: &Option<Tensor>| b.as_ref().map(|b| b.narrow(0, lo, hi - lo));
        match self {
            Normalizer::Adam {
                weight_avg_sq,
                bias_avg_sq,
            } => Normalizer::Adam {
                weight_avg_sq: weight_avg_sq.narrow(0, lo, hi - lo),
                bias_avg_sq: bias(bias_avg_sq),
            },
            Normalizer::Adafactor {
                row,
                col,
                bias_avg_sq,
            } => Normalizer::Adafactor {
                row: row.narrow(0, lo, hi - lo),
                col: col.shallow_clone(),
                bias_avg_sq: bias(bias_avg_sq),
            },
        }
    }

    /// The tensors Bergson stores for this normalizer, by field name.
    pub fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut out = Vec::new();
        match self {
            Normalizer::Adam {
                weight_avg_sq,
                bias_avg_sq,
            } => {
                out.push(("weight_avg_sq", weight_avg_sq));
                if let Some(b) = bias_avg_sq {
                    out.push(("bias_avg_sq", b));
                }
            }
            Normalizer::Adafactor {
                row,
                col,
                bias_avg_sq,
            } => {
                out.push(("row", row));
                out.push(("col", col));
                if let Some(b) = bias_avg_sq {
                    out.push(("bias_avg_sq", b));
                }
            }
        }
        out
    }

    /// Moves the tensors to `device`.
    pub fn to_device(&self, device: tch::Device) -> Normalizer {
        let mv = |t: &Tensor| t.to_device(device);
        let mvb = |b: &Option<Tensor>| b.as_ref().map(mv);
        match self {
            Normalizer::Adam {
                weight_avg_sq,
                bias_avg_sq,
            } => Normalizer::Adam {
                weight_avg_sq: mv(weight_avg_sq),
                bias_avg_sq: mvb(bias_avg_sq),
            },
            Normalizer::Adafactor {
                row,
                col,
                bias_avg_sq,
            } => Normalizer::Adafactor {
                row: mv(row),
                col: mv(col),
                bias_avg_sq: mvb(bias_avg_sq),
            },
        }
    }

    /// Input scaling of Adafactor, applied to activations `[.., I]`: `rsqrt(col + 1e-30)`.
    pub fn input_factor(&self) -> Option<Tensor> {
        match self {
            Normalizer::Adafactor { col, .. } => Some(col.g_add_scalar(ADAFACTOR_EPS).rsqrt()),
            Normalizer::Adam { .. } => None,
        }
    }

    /// Output scaling of Adafactor, applied to output gradients `[.., O]`:
    /// `sqrt(mean(r)) * rsqrt(r)` with `r = row + 1e-30`.
    pub fn output_factor(&self) -> Option<Tensor> {
        match self {
            Normalizer::Adafactor { row, .. } => {
                let r = row.g_add_scalar(ADAFACTOR_EPS);
                Some(r.mean(r.kind()).sqrt() * r.rsqrt())
            }
            Normalizer::Adam { .. } => None,
        }
    }

    /// Adam's divisor `sqrt(v) + 1e-8`, `[O, I]`.
    pub fn weight_denominator(&self) -> Option<Tensor> {
        match self {
            Normalizer::Adam { weight_avg_sq, .. } => {
                Some(weight_avg_sq.sqrt().g_add_scalar(ADAM_EPS))
            }
            Normalizer::Adafactor { .. } => None,
        }
    }

    /// Normalised per-position bias gradients (`normalize_bias`): Adam divides by
    /// `sqrt(v_b) + 1e-8`, Adafactor multiplies by `rsqrt(v_b + 1e-8)`. Without bias moments
    /// the gradient passes through.
    pub fn normalize_bias(&self, g: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Normalizer::Adam {
                bias_avg_sq: Some(v),
                ..
            } => g.f_div(&v.sqrt().g_add_scalar(ADAM_EPS))?,
            Normalizer::Adafactor {
                bias_avg_sq: Some(v),
                ..
            } => g.f_mul(&v.g_add_scalar(BIAS_EPS).rsqrt())?,
            _ => g.shallow_clone(),
        })
    }
}
