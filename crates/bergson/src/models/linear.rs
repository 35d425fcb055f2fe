//! The Linear layer every model uses, and the hook that sees each one run.

use super::lora::LoraAdapter;
use tch::Tensor;

/// A Linear (or GPT-2 Conv1D, stored transposed) layer: `y = x Wᵀ + b`, `W` is `[out, in]`,
/// plus `scaling · B(A(x))` when a LoRA adapter is attached.
#[derive(Debug)]
pub struct Linear {
    /// Module name relative to the base model.
    pub name: String,
    /// Weight `[out, in]`.
    pub weight: Tensor,
    /// Optional bias `[out]`.
    pub bias: Option<Tensor>,
    /// The PEFT LoRA adapter of this layer, if any.
    pub adapter: Option<Box<LoraAdapter>>,
}

impl Linear {
    /// `x Wᵀ + b` with the adapter's term when there is one (peft's `lora.Linear.forward`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        NoHook.linear(self, x)
    }

    /// `x Wᵀ + b`, as `torch.nn.functional.linear`, ignoring any adapter.
    pub fn forward_base(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// A copy of the base layer with its weight and bias times `factor` (the adapter dropped):
    /// how a fused loss folds a factor on the layer's output into the layer.
    pub fn scaled(&self, factor: f64) -> crate::Result<Linear> {
        Ok(Linear {
            name: self.name.clone(),
            weight: self.weight.f_mul_scalar(factor)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.f_mul_scalar(factor))
                .transpose()?,
            adapter: None,
        })
    }

    /// Input features I.
    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }

    /// Output features O.
    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// Sees the forward pass of a model: the embeddings entering the first layer and every Linear
/// module (with an adapter, its `lora_A` and `lora_B` are the modules; the frozen base layer is
/// not one).
pub trait LinearHook {
    /// Called once with the input embeddings `[N, S, D]` before the first layer; the returned
    /// tensor is used in their place (the gradient collector makes it require grad so that
    /// autograd reaches every layer without any parameter requiring grad).
    fn embeddings(&mut self, h: Tensor) -> Tensor {
        h
    }

    /// Runs the module `layer` (never one with an adapter) on `x` (`[N, S, I]`) and returns its
    /// output: where a hook captures inputs and output gradients.
    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        layer.forward_base(x)
    }

    /// Whether adapters take part (false: the base model alone, as peft's disabled adapters).
    fn adapters_enabled(&self) -> bool {
        true
    }

    /// Runs `layer` on `x`: the module itself, or for an adapted layer the frozen base plus
    /// `scaling · B(A(x))` with `A` and `B` run as modules. Models call this; hooks override
    /// [`LinearHook::module`].
    fn linear(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        match &layer.adapter {
            Some(lora) if self.adapters_enabled() => {
                let base = layer.forward_base(x);
                let a = self.module(&lora.a, x);
                let b = self.module(&lora.b, &a);
                base + b * lora.scaling
            }
            _ => self.module(layer, x),
        }
    }
}

/// The hook that only runs each layer.
pub struct NoHook;

impl LinearHook for NoHook {}

/// The hook that runs the base model alone, adapters off (the reference of `--loss_fn kl`).
pub struct BaseOnly;

impl LinearHook for BaseOnly {
    fn adapters_enabled(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Folding a factor into the layer scales its output, bias included, and drops the adapter.
    #[test]
    fn scaled_layer_scales_its_output() {
        let opts = (Kind::Double, Device::Cpu);
        let layer = Linear {
            name: "lm_head".into(),
            weight: Tensor::randn([5, 3], opts),
            bias: Some(Tensor::randn([5], opts)),
            adapter: None,
        };
        let x = Tensor::randn([2, 4, 3], opts);
        let folded = layer.scaled(-0.4).unwrap();
        assert_eq!(folded.name, "lm_head");
        let diff = (folded.forward_base(&x) - layer.forward_base(&x) * -0.4)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-14, "{diff}");
        let no_bias = Linear {
            bias: None,
            ..folded
        };
        assert!(no_bias.scaled(2.0).unwrap().bias.is_none());
    }
}
