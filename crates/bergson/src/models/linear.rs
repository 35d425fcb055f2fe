//! The Linear layer every model uses, and the hook that sees each one run.

use tch::Tensor;

/// A Linear (or GPT-2 Conv1D, stored transposed) layer: `y = x Wᵀ + b`, `W` is `[out, in]`.
#[derive(Debug)]
pub struct Linear {
    /// Module name relative to the base model.
    pub name: String,
    /// Weight `[out, in]`.
    pub weight: Tensor,
    /// Optional bias `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `x Wᵀ + b`, as `torch.nn.functional.linear`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
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

/// Sees the forward pass of a model: the embeddings entering the first layer and every Linear.
pub trait LinearHook {
    /// Called once with the input embeddings `[N, S, D]` before the first layer; the returned
    /// tensor is used in their place (the gradient collector makes it require grad so that
    /// autograd reaches every layer without any parameter requiring grad).
    fn embeddings(&mut self, h: Tensor) -> Tensor {
        h
    }

    /// Runs `layer` on `x` (`[N, S, I]`) and returns its output.
    fn linear(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        layer.forward(x)
    }
}

/// The hook that only runs each layer.
pub struct NoHook;

impl LinearHook for NoHook {}
