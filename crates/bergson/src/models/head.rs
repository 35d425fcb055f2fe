//! The LM head's output as a causal LM returns it: `lm_head(hidden)`, times Bergson's
//! `--logit_scale` (a forward hook on the head, so it comes before anything the model does to
//! the head's output), then what the model does to it ([`HeadOutput`]: Granite's division by
//! `logits_scaling`, Gemma-2's `final_logit_softcapping`).

use super::Linear;
use tch::Tensor;

/// What a causal LM does to its LM head's output before returning it as logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadOutput {
    /// Granite's `logits_scaling`: the logits are divided by it (1 leaves them).
    pub divisor: f64,
    /// Gemma-2's `final_logit_softcapping`: `c·tanh(logits / c)` last.
    pub softcap: Option<f64>,
}

impl Default for HeadOutput {
    fn default() -> Self {
        HeadOutput {
            divisor: 1.0,
            softcap: None,
        }
    }
}

impl HeadOutput {
    /// The factor on the head's output before the soft-capping, with Bergson's `logit_scale`:
    /// what a fused loss may fold into the head's weight and bias.
    pub fn linear_factor(&self, logit_scale: f64) -> f64 {
        if self.divisor == 1.0 {
            logit_scale
        } else {
            logit_scale / self.divisor
        }
    }
}

/// `cap · tanh(logits / cap)` in transformers' order of operations (divide, tanh, multiply).
pub fn softcap(logits: &Tensor, cap: f64) -> Tensor {
    (logits / cap).tanh() * cap
}

/// The logits for `hidden` `[.., D]`: the head, the scale (skipped at 1), the model's divisor
/// (skipped at 1), the soft-capping; each in the logits' dtype, as transformers rounds them.
pub fn head_logits(head: &Linear, out: HeadOutput, hidden: &Tensor, logit_scale: f64) -> Tensor {
    let logits = head.forward(hidden);
    // Out of place: autograd may still need the head's output.
    let logits = if logit_scale != 1.0 {
        logits * logit_scale
    } else {
        logits
    };
    let logits = if out.divisor != 1.0 {
        logits / out.divisor
    } else {
        logits
    };
    match out.softcap {
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
        let capped = HeadOutput {
            divisor: 1.0,
            softcap: Some(2.0),
        };
        let got = head_logits(&head, capped, &h, 3.0);
        let want = (&z * 3.0 / 2.0).tanh() * 2.0;
        assert!((got - &want).abs().max().double_value(&[]) < 1e-12);
        assert!(want.abs().max().double_value(&[]) <= 2.0);
        let plain = head_logits(&head, HeadOutput::default(), &h, 3.0);
        assert!((plain - &z * 3.0).abs().max().double_value(&[]) < 1e-12);
        let divided = HeadOutput {
            divisor: 4.0,
            softcap: None,
        };
        let got = head_logits(&head, divided, &h, 3.0);
        assert!((got - &z * 0.75).abs().max().double_value(&[]) < 1e-12);
        assert_eq!(divided.linear_factor(3.0), 0.75);
    }
}
