//! Causal language models, one file per architecture, loaded from Hugging Face checkpoints.
//!
//! Every Linear layer of a model runs through a [`LinearHook`], which is how the gradient
//! collector sees each module's input activations and output gradients without hooks on
//! someone else's code: we own the forward.

pub mod linear;

pub use linear::{Linear, LinearHook, NoHook};

use tch::{Device, Kind, Tensor};

/// One collectable Linear module, named relative to the base model as Bergson names it
/// (`layers.0.attention.query_key_value`, `h.0.attn.c_attn`, `layers.0.self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    /// Name relative to the base model.
    pub name: String,
    /// Input features I.
    pub in_features: i64,
    /// Output features O.
    pub out_features: i64,
    /// Whether the module has a bias.
    pub has_bias: bool,
}

/// A causal language model we can run forward and differentiate.
pub trait CausalLm: Send + Sync {
    /// The config.json `model_type` (`gpt_neox`, `gpt2`, `llama`, ...).
    fn model_type(&self) -> &str;

    /// The Hugging Face base-model attribute (`gpt_neox`, `transformer`, `model`): parameter
    /// names start with it, module names in the index do not.
    fn base_model_prefix(&self) -> &str;

    /// Every Linear of the base model, in the order of transformers' `named_modules()`
    /// (which is the column order of the index). The LM head is not part of the base model.
    fn linear_modules(&self) -> Vec<LinearInfo>;

    /// Logits `[N, S, V]` in the model dtype for right-padded `input_ids` `[N, S]` (int64), with
    /// no attention mask (causal attention only), every Linear going through `hook`.
    fn forward_with(&self, input_ids: &Tensor, hook: &mut dyn LinearHook) -> Tensor;

    /// Logits with no hook.
    fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.forward_with(input_ids, &mut NoHook)
    }

    /// Parameters with their full Hugging Face names, in `model.named_parameters()` order
    /// (tied weights once, as transformers lists them). Used to map optimizer states.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// `max_position_embeddings` from config.json, when the config has one.
    fn max_position_embeddings(&self) -> Option<i64>;

    /// The model's dtype.
    fn kind(&self) -> Kind;

    /// The device the weights live on.
    fn device(&self) -> Device;

    /// Use the math attention kernel (which has a double backward) instead of the fused one.
    fn set_math_attention(&mut self, math: bool);
}
