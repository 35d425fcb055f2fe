//! Normalisation layers: RMSNorm (Llama family), LayerNorm (GPT-2, GPT-NeoX) and OLMo's
//! parameter-free LayerNorm.

use tch::{Kind, Tensor};

/// The dtype the statistics of a norm (and the rotary tables) are computed in: float32 for the
/// 16- and 32-bit dtypes, as transformers does, and float64 for a float64 model, where
/// transformers would drop to float32 (see tests/fixtures/scripts/make_models.py).
pub fn compute_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// RMSNorm: `weight * (x / sqrt(mean(x²) + eps))`, statistics in [`compute_kind`] as
/// `LlamaRMSNorm` computes them.
#[derive(Debug)]
pub struct RmsNorm {
    /// Gain `[D]`.
    pub weight: Tensor,
    /// Added to the mean square.
    pub eps: f64,
    /// How the gain is applied.
    pub gain: RmsGain,
}

/// How an RMSNorm applies its gain to the normalised `x̂` (statistics in [`compute_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RmsGain {
    /// `weight * x̂.to(dtype)` (`LlamaRMSNorm`).
    #[default]
    AfterCast,
    /// `(weight * x̂).to(dtype)` (`Olmo2RMSNorm`); differs from `AfterCast` only in half
    /// precision.
    BeforeCast,
    /// `(x̂ * (1 + weight)).to(dtype)` with the gain in the statistics dtype (`GemmaRMSNorm`,
    /// whose stored weights are offsets from 1).
    UnitOffset,
}

impl RmsNorm {
    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(compute_kind(kind));
        let var = h.square().mean_dim(-1, true, None);
        let h = h * (var + self.eps).rsqrt();
        match self.gain {
            RmsGain::AfterCast => &self.weight * h.to_kind(kind),
            RmsGain::BeforeCast => (&self.weight * h).to_kind(kind),
            RmsGain::UnitOffset => {
                let gain = self.weight.to_kind(h.kind()) + 1.0;
                (h * gain).to_kind(kind)
            }
        }
    }
}

/// LayerNorm without gain or bias (`OlmoLayerNorm`): statistics in [`compute_kind`], the
/// result cast back to the input dtype.
#[derive(Debug)]
pub struct PlainLayerNorm {
    /// Added to the variance.
    pub eps: f64,
}

impl PlainLayerNorm {
    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let d = x.size().last().copied().unwrap_or(0);
        x.to_kind(compute_kind(kind))
            .layer_norm([d], None::<&Tensor>, None::<&Tensor>, self.eps, true)
            .to_kind(kind)
    }
}

/// A decoder's normalisation layer: RMSNorm (Llama family) or OLMo's parameter-free LayerNorm.
#[derive(Debug)]
pub enum Norm {
    /// [`RmsNorm`].
    Rms(RmsNorm),
    /// [`PlainLayerNorm`].
    Plain(PlainLayerNorm),
}

impl Norm {
    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Rms(n) => n.forward(x),
            Norm::Plain(n) => n.forward(x),
        }
    }
}

/// LayerNorm over the last dimension (`torch.nn.LayerNorm`), with gain and bias unless built
/// with `elementwise_affine=False`.
#[derive(Debug)]
pub struct LayerNorm {
    /// Gain `[D]`.
    pub weight: Option<Tensor>,
    /// Bias `[D]`.
    pub bias: Option<Tensor>,
    /// Normalised width D.
    pub dim: i64,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm without gain or bias, in the input's dtype (unlike [`PlainLayerNorm`]).
    pub fn without_affine(dim: i64, eps: f64) -> Self {
        LayerNorm {
            weight: None,
            bias: None,
            dim,
            eps,
        }
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Both norms against a direct float64 computation.
    #[test]
    fn norms_match_direct_formulas() {
        let opts = (Kind::Double, Device::Cpu);
        tch::manual_seed(0);
        let x = Tensor::randn([3, 5, 8], opts) * 3.0 + 1.0;
        let w = Tensor::randn([8], opts);
        let b = Tensor::randn([8], opts);
        let rms = RmsNorm {
            weight: w.shallow_clone(),
            eps: 1e-6,
            gain: RmsGain::AfterCast,
        };
        let want = &w * &x / (x.square().mean_dim(-1, true, None) + 1e-6).sqrt();
        let err = (rms.forward(&x) - &want).abs().max().double_value(&[]);
        assert!(err < 1e-12, "rms {err}");
        let gemma = RmsNorm {
            weight: w.shallow_clone() - 1.0,
            eps: 1e-6,
            gain: RmsGain::UnitOffset,
        };
        let err = (gemma.forward(&x) - &want).abs().max().double_value(&[]);
        assert!(err < 1e-12, "gemma rms {err}");

        let ln = LayerNorm {
            weight: Some(w.shallow_clone()),
            bias: Some(b.shallow_clone()),
            dim: 8,
            eps: 1e-5,
        };
        let mean = x.mean_dim(-1, true, None);
        let var = (&x - &mean).square().mean_dim(-1, true, None);
        let want = (&x - &mean) / (&var + 1e-5).sqrt() * &w + &b;
        let err = (ln.forward(&x) - want).abs().max().double_value(&[]);
        assert!(err < 1e-12, "layer norm {err}");

        let plain = PlainLayerNorm { eps: 1e-5 };
        let want = (&x - &mean) / (var + 1e-5).sqrt();
        let err = (plain.forward(&x) - &want).abs().max().double_value(&[]);
        assert!(err < 1e-12, "plain layer norm {err}");
        let bare = LayerNorm::without_affine(8, 1e-5);
        let err = (bare.forward(&x) - want).abs().max().double_value(&[]);
        assert!(err < 1e-12, "layer norm without affine {err}");
    }
}
