//! TRAK's two per-member numbers beside the scores (Park et al. 2023, §3): the per-document
//! weight `1 - p_i`, the `Q` term of the negative log-odds output function, and the scale of
//! the inverse Gram that makes members' scores comparable.

use std::path::Path;

use tch::{Kind, Reduction, Tensor};

use crate::config::InversionConfig;
use crate::data::tokenize::TokenizedRow;
use crate::hessians::autocorrelation::JOINT;
use crate::hessians::inversion::invert_psd_matrix;
use crate::index::hessian_store;
use crate::models::CausalLm;
use crate::progress::Phase;
use crate::{interrupt, Error, Result};

/// `p_i` of every document (Bergson's `_train_label_probs`): the mean over its label tokens of
/// the model's probability of that token, `exp(-CE)`, in float32 with no gradient. Documents go
/// through the model `batch_size` at a time in dataset order, right-padded with id 0 and no
/// attention mask (causal attention never sees the padding). A document without a label
/// token has `p_i = 0`.
pub fn label_probabilities(
    model: &dyn CausalLm,
    rows: &[TokenizedRow],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let batch_size = batch_size.max(1);
    let device = model.device();
    let mut probs = Vec::with_capacity(rows.len());
    let mut phase = Phase::new(
        "computing label probabilities",
        "documents",
        Some(rows.len() as u64),
    );
    for batch in rows.chunks(batch_size) {
        interrupt::check()?;
        let max_len = batch.iter().map(TokenizedRow::len).max().unwrap_or(0);
        if max_len < 2 {
            probs.extend(std::iter::repeat_n(0.0, batch.len()));
            phase.inc(batch.len() as u64);
            continue;
        }
        let mut ids = Vec::with_capacity(batch.len() * max_len);
        let mut labels = Vec::with_capacity(batch.len() * max_len);
        for row in batch {
            let pad = max_len - row.len();
            ids.extend_from_slice(&row.input_ids);
            ids.extend(std::iter::repeat_n(0i64, pad));
            labels.extend_from_slice(row.labels.as_deref().unwrap_or(&row.input_ids));
            labels.extend(std::iter::repeat_n(-100i64, pad));
        }
        let shape = [batch.len() as i64, max_len as i64];
        let x = Tensor::from_slice(&ids)
            .f_view(shape)?
            .f_to_device(device)?;
        let y = Tensor::from_slice(&labels)
            .f_view(shape)?
            .f_to_device(device)?;
        model.check_input_ids(&x)?;
        let mean_p = tch::no_grad(|| -> Result<Tensor> {
            let s = max_len as i64;
            let logits = model
                .forward(&x)
                .f_narrow(1, 0, s - 1)?
                .f_to_kind(Kind::Float)?;
            let target = y.f_narrow(1, 1, s - 1)?;
            let token_ce = logits
                .f_flatten(0, 1)?
                .f_cross_entropy_loss::<Tensor>(
                    &target.f_flatten(0, 1)?,
                    None,
                    Reduction::None,
                    -100,
                    0.0,
                )?
                .f_view_as(&target)?;
            let valid = target.f_ne(-100)?.f_to_kind(Kind::Float)?;
            let kept = token_ce.f_neg()?.f_exp()?.f_mul(&valid)?;
            let total = kept.f_sum_dim_intlist(1, false, Kind::Float)?;
            let count = valid
                .f_sum_dim_intlist(1, false, Kind::Float)?
                .f_clamp_min(1.0)?;
            Ok(total.f_div(&count)?)
        })?;
        let mean_p: Vec<f32> = Vec::try_from(mean_p.f_to_device(tch::Device::Cpu)?)?;
        probs.extend(mean_p.into_iter().map(f64::from));
        phase.inc(batch.len() as u64);
    }
    phase.finish();
    Ok(probs)
}

/// The mean absolute entry of the inverse of the joint Gram at `gram_path` (Bergson's
/// `_inverse_gram_scale`): the Gram in float32, inverted as `--hessian_path` inverts it
/// (`inversion`, power -1), the mean taken in float32. With damping 0 a zero eigenvalue makes
/// it infinite, as in Bergson.
pub fn inverse_gram_scale(gram_path: &Path, inversion: &InversionConfig) -> Result<f64> {
    let dense = hessian_store::read_dense(gram_path)?;
    let Some((_, gram)) = dense.hessians.iter().find(|(key, _)| key == JOINT) else {
        return Err(Error::input(format!(
            "{} has no joint Gram (key \"joint\"): fit it with --projection_target global",
            gram_path.display()
        )));
    };
    let inverse = invert_psd_matrix(&gram.f_to_kind(Kind::Float)?, inversion, -1.0)?;
    Ok(inverse.f_abs()?.f_mean(Kind::Float)?.f_double_value(&[])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Precision;
    use crate::models::load_model;

    fn fixture_model() -> Box<dyn CausalLm> {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
        load_model(&dir, Precision::Fp32, tch::Device::Cpu).unwrap()
    }

    /// The direct reference: one document at a time, its softmax in float64, the mean of the
    /// label tokens' probabilities.
    fn reference(model: &dyn CausalLm, row: &TokenizedRow) -> f64 {
        if row.len() < 2 {
            return 0.0;
        }
        let x = Tensor::from_slice(&row.input_ids).unsqueeze(0);
        let probs = tch::no_grad(|| model.forward(&x))
            .to_kind(Kind::Double)
            .softmax(-1, Kind::Double);
        let labels = row.labels.as_deref().unwrap_or(&row.input_ids);
        let (mut sum, mut n) = (0.0, 0usize);
        for t in 0..row.len() - 1 {
            let y = labels[t + 1];
            if y != -100 {
                sum += probs.double_value(&[0, t as i64, y]);
                n += 1;
            }
        }
        sum / n.max(1) as f64
    }

    #[test]
    fn label_probabilities_match_a_per_document_float64_reference() {
        let model = fixture_model();
        let rows = vec![
            TokenizedRow {
                input_ids: vec![5, 17, 300, 2, 9],
                labels: None,
            },
            TokenizedRow {
                input_ids: vec![7],
                labels: None,
            },
            TokenizedRow {
                input_ids: vec![1, 2, 3, 4],
                labels: Some(vec![-100, -100, 3, 4]),
            },
            TokenizedRow {
                input_ids: vec![8, 8, 100, 101, 102, 103, 104],
                labels: Some(vec![-100; 7]),
            },
        ];
        for batch_size in [1, 3, 32] {
            let got = label_probabilities(&*model, &rows, batch_size).unwrap();
            for (row, g) in rows.iter().zip(&got) {
                let want = reference(&*model, row);
                assert!(
                    (g - want).abs() < 1e-6 * want.max(1e-3),
                    "batch {batch_size}: {g} vs {want}"
                );
            }
            assert_eq!(got[1], 0.0);
            assert_eq!(got[3], 0.0);
            assert!(got[0] > 0.0 && got[2] > 0.0);
        }
    }
}
