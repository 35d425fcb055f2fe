//! The LM head's output as a causal LM returns it: `lm_head(hidden)`, times Bergson's
//! `--logit_scale` (a forward hook on the head, so it comes before anything the model does to
//! the head's output), then the model's final soft-capping (Gemma-2's
//! `final_logit_softcapping`).

use super::Linear;
use tch::Tensor;

/// `cap · tanh(logits / cap)` in transformers' order of operations (divide, tanh, multiply).
pub fn softcap(logits: &Tensor, cap: f64) -> Tensor {
    (logits / cap).tanh() * cap
}

/// The logits for `hidden` `[.., D]`: the head, the scale (skipped at 1), the soft-capping.
pub fn head_logits(head: &Linear, cap: Option<f64>, hidden: &Tensor, logit_scale: f64) -> Tensor {
    let logits = head.forward(hidden);
    // Out of place: autograd may still need the head's output.
    let logits = if logit_scale != 1.0 {
        logits * logit_scale
    } else {
        logits
    };
    match cap {
        Some(cap) => softcap(&logits, cap),
        None => logits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The scale multiplies the head's output before the cap (Bergson hooks the head; the
    /// model caps what the head returns), so a capped logit stays within the cap.
    #[test]
    fn scale_comes_before_the_cap() {
        tch::manual_seed(5);
        let opts = (Kind::Double, Device::Cpu);
        let head = Linear {
            name: "lm_head".into(),
            weight: Tensor::randn([7, 4], opts),
            bias: Some(Tensor::randn([7], opts)),
            adapter: None,
        };
        let h = Tensor::randn([3, 4], opts) * 5.0;
        let z = h.matmul(&head.weight.tr()) + head.bias.as_ref().unwrap();
        let got = head_logits(&head, Some(2.0), &h, 3.0);
        let want = (&z * 3.0 / 2.0).tanh() * 2.0;
        assert!((got - &want).abs().max().double_value(&[]) < 1e-12);
        assert!(want.abs().max().double_value(&[]) <= 2.0);
        let plain = head_logits(&head, None, &h, 3.0);
        assert!((plain - &z * 3.0).abs().max().double_value(&[]) < 1e-12);
    }
}
