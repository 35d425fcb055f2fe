//! Where each batch's rows go (Bergson's `Builder`): preconditioned with `--hessian_path`
//! (`H^-1`, or `H^-1/2` with unit norm), unit-normalised if asked, then written at each
//! document's rows of gradients.bin, or summed into one float32 row with `--aggregation`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::collect::BatchOutput;
use crate::config::Aggregation;
use crate::error::IoContext;
use crate::hessians::preconditioner::Preconditioner;
use crate::index::gradient_file::tensor_bytes;
use crate::index::GradientFile;
use crate::{Error, Result};

/// `finfo(float32).eps²`, the floor of a squared row norm before `rsqrt`.
const EPS_SQ: f64 = 1.4210854715202004e-14;

/// Writes batches of rows into the index.
pub struct RowSink {
    file: GradientFile,
    unit_normalize: bool,
    aggregation: Aggregation,
    /// With `attribute_tokens`, each document's first row.
    offsets: Option<Vec<i64>>,
    /// Sum of all rows (float32), with aggregation.
    accumulator: Option<Tensor>,
    /// Applied to each batch's module blocks first.
    preconditioner: Option<Preconditioner>,
}

impl RowSink {
    /// A sink writing into `file`.
    pub fn new(
        file: GradientFile,
        unit_normalize: bool,
        aggregation: Aggregation,
        offsets: Option<Vec<i64>>,
        row_len: usize,
    ) -> Result<Self> {
        let accumulator = match aggregation {
            Aggregation::None => None,
            _ => Some(Tensor::f_zeros(
                [row_len as i64],
                (Kind::Float, Device::Cpu),
            )?),
        };
        Ok(RowSink {
            file,
            unit_normalize,
            aggregation,
            offsets,
            accumulator,
            preconditioner: None,
        })
    }

    /// Preconditions every batch with `p` before anything else.
    pub fn with_preconditioner(mut self, p: Option<Preconditioner>) -> Self {
        self.preconditioner = p;
        self
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &BatchOutput) -> Result<()> {
        let mut grads = match &self.preconditioner {
            None => batch.gradients.concat()?,
            Some(p) => {
                let blocks = p.apply(&batch.gradients.blocks)?;
                let parts: Vec<&Tensor> = blocks.iter().map(|(_, t)| t).collect();
                Tensor::f_cat(&parts, 1)?
            }
        };
        if self.unit_normalize {
            let inv = grads
                .f_pow_tensor_scalar(2)?
                .f_sum_dim_intlist([-1i64].as_slice(), false, grads.kind())?
                .f_clamp_min(EPS_SQ)?
                .f_rsqrt()?
                .f_unsqueeze(1)?;
            grads = grads.f_mul(&inv)?;
        }
        if let Some(acc) = &mut self.accumulator {
            let sum = grads
                .f_sum_dim_intlist([0i64].as_slice(), false, grads.kind())?
                .f_to_kind(Kind::Float)?;
            *acc = acc.f_add(&sum)?;
            return Ok(());
        }
        match &self.offsets {
            None => self.file.scatter_rows(&batch.indices, &grads),
            Some(offsets) => {
                let mut row = 0i64;
                for &i in &batch.indices {
                    let n = offsets[i + 1] - offsets[i];
                    self.file
                        .write_rows(offsets[i] as usize, &grads.f_narrow(0, row, n)?)?;
                    row += n;
                }
                Ok(())
            }
        }
    }

    /// Makes everything written so far durable (and the accumulator, into `snapshot`).
    pub fn sync(&self, snapshot: &Path) -> Result<()> {
        if let Some(acc) = &self.accumulator {
            let tmp = snapshot.with_extension("tmp");
            std::fs::write(&tmp, tensor_bytes(acc, Kind::Float)?).at_path(&tmp)?;
            std::fs::rename(&tmp, snapshot).at_path(snapshot)?;
        }
        self.file.sync()
    }

    /// Makes the rows written so far durable (without the accumulator snapshot).
    pub fn flush(&self) -> Result<()> {
        self.file.sync()
    }

    /// The running sum of rows (float32), with aggregation: reduced over the ranks of a
    /// multi-process build before [`RowSink::finish`].
    pub fn accumulator_mut(&mut self) -> Option<&mut Tensor> {
        self.accumulator.as_mut()
    }

    /// Restores the accumulator from a snapshot.
    pub fn restore(&mut self, snapshot: &Path) -> Result<()> {
        if let Some(acc) = &mut self.accumulator {
            let bytes = std::fs::read(snapshot).at_path(snapshot)?;
            if bytes.len() != acc.numel() * 4 {
                return Err(Error::input(format!(
                    "{} is damaged; pass --overwrite to start over",
                    snapshot.display()
                )));
            }
            *acc = Tensor::f_from_data_size(&bytes, &[acc.numel() as i64], Kind::Float)?;
        }
        Ok(())
    }

    /// With aggregation, writes the one row: the sum, divided by `num_items` for `mean`, unit
    /// normalised (in float32) with `normalize_aggregated_grad`.
    pub fn finish(&self, num_items: usize, normalize: bool) -> Result<()> {
        if let Some(acc) = &self.accumulator {
            let mut row = acc.shallow_clone();
            if self.aggregation == Aggregation::Mean {
                row = row.f_div_scalar(num_items as f64)?;
            }
            if normalize {
                let norm = row.f_norm()?.double_value(&[]);
                if norm > 0.0 {
                    row = row.f_div_scalar(norm)?;
                } else {
                    tracing::warn!("gradient norm is zero, skipping normalization");
                }
            }
            self.file.write_rows(0, &row.f_unsqueeze(0)?)?;
        }
        self.file.sync()
    }
}
