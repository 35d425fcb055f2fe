//! Per-example loss gradients with respect to every trainable weight, and how much one
//! example's gradient changes when it is batched (and padded) next to another document.

use std::path::Path;

use tch::{Device, Kind, Reduction, Tensor};

use crate::data::batching::pad_batch;
use crate::engine::Precision;
use crate::models::{CausalLm, ModelSpec};
use crate::{Error, Result};

/// A model whose weights require grad, so the gradient of one example's loss with respect to
/// all of them (Bergson's `p.grad` after `backward()`) comes out of one backward pass.
pub struct GradientProbe {
    model: Box<dyn CausalLm>,
    params: Vec<Tensor>,
}

/// One measurement: the cosine similarity of the example's gradient alone vs. in the mixed
/// batch, and the absolute difference of its loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Cosine similarity of the two gradients over all weights.
    pub cos_sim: f64,
    /// |loss in the mixed batch - loss alone|.
    pub loss_diff: f64,
}

impl GradientProbe {
    /// Loads the checkpoint in `model_dir` as `precision` on `device` with `kwargs`' config
    /// overrides; `math_attention` chooses the math attention kernel (`--force_math_sdp`)
    /// over the fused one.
    pub fn load(
        model_dir: &Path,
        precision: Precision,
        device: Device,
        math_attention: bool,
        kwargs: &crate::models::kwargs::ModelKwargs,
    ) -> Result<Self> {
        let spec = ModelSpec::from_dir(model_dir, precision, device)?.with_model_kwargs(kwargs);
        let loaded = spec.load(model_dir)?;
        let (names, params): (Vec<String>, Vec<Tensor>) = loaded
            .named_parameters()
            .into_iter()
            .map(|(n, p)| (n, p.detach().set_requires_grad(true)))
            .unzip();
        drop(loaded);
        let mut model = spec.build(names.iter().zip(&params))?;
        model.set_math_attention(math_attention);
        Ok(Self { model, params })
    }

    /// The model (for its vocabulary and input checks).
    pub fn model(&self) -> &dyn CausalLm {
        self.model.as_ref()
    }

    /// The summed next-token loss of row `row` of the right-padded batch `docs` (labels
    /// -100 on padding), and its gradient with respect to every weight (`None` where the
    /// loss does not reach a weight).
    pub fn example_gradient(
        &self,
        docs: &[&[i64]],
        row: usize,
    ) -> Result<(f64, Vec<Option<Tensor>>)> {
        crate::interrupt::check()?;
        let (ids, labels) = pad_batch(docs, None)?;
        let device = self.model.device();
        let ids = ids.to_device(device);
        self.model.check_input_ids(&ids)?;
        let labels = labels.to_device(device);
        let logits = self.model.forward(&ids);
        let (n, s, v) = logits.size3()?;
        if s < 2 {
            return Err(Error::input(
                "a document needs at least two tokens for a next-token loss; raise --min_len",
            ));
        }
        // Bergson's `_get_example_loss`: cross-entropy in the logits' dtype, summed over the
        // row's supervised tokens.
        let shift = logits.narrow(1, 0, s - 1);
        let target = labels.narrow(1, 1, s - 1);
        let per_token = shift
            .reshape([-1, v])
            .cross_entropy_loss::<Tensor>(&target.reshape([-1]), None, Reduction::None, -100, 0.0)
            .reshape([n, s - 1]);
        let loss = per_token.get(row as i64).sum(per_token.kind());
        let value = loss.double_value(&[]);
        let inputs: Vec<&Tensor> = self.params.iter().collect();
        let grads = Tensor::f_run_backward(&[loss], &inputs, false, false)?;
        Ok((
            value,
            grads
                .into_iter()
                .map(|g| g.defined().then_some(g))
                .collect(),
        ))
    }

    /// Bergson's `_measure`: `short`'s gradient alone vs. batched with `long` (padded to its
    /// length).
    pub fn measure(&self, short: &[i64], long: &[i64]) -> Result<Measurement> {
        let (loss_alone, alone) = self.example_gradient(&[short], 0)?;
        let (loss_mixed, mixed) = self.example_gradient(&[short, long], 0)?;
        Ok(Measurement {
            cos_sim: cosine(&alone, &mixed),
            loss_diff: (loss_mixed - loss_alone).abs(),
        })
    }
}

/// Cosine similarity of two gradients over the weights both reach, accumulated in float64
/// (Bergson sums per-weight products in the model dtype; float64 keeps the sum itself from
/// adding error to what is measured), with Bergson's 1e-12 guard.
pub fn cosine(a: &[Option<Tensor>], b: &[Option<Tensor>]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (ga, gb) in a.iter().zip(b) {
        if let (Some(ga), Some(gb)) = (ga, gb) {
            let ga = ga.to_kind(Kind::Double);
            let gb = gb.to_kind(Kind::Double);
            dot += (&ga * &gb).sum(Kind::Double).double_value(&[]);
            na += ga.square().sum(Kind::Double).double_value(&[]);
            nb += gb.square().sum(Kind::Double).double_value(&[]);
        }
    }
    dot / (na.sqrt() * nb.sqrt() + 1e-12)
}
