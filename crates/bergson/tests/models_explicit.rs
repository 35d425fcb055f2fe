//! Models on explicit parameters (`ModelSpec::build`), for every fixture architecture: the
//! model built on a copy of the checkpoint's parameters gives the checkpoint model's logits
//! exactly, gradients reach the caller's tensors, and a second derivative (the metagradient's
//! double backward) through the math attention kernel matches a central finite difference of
//! the first derivative in float64.

use bergson::engine::Precision;
use bergson::models::{CausalLm, ModelSpec};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const FIXTURES: &[&str] = &[
    "gpt_neox",
    "gpt_neox_seq",
    "gpt2",
    "llama",
    "llama3",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen2_yarn",
    "olmo",
    "olmo2",
    "olmo3",
    "gemma",
    "gemma3",
    "gpt_neo",
    "phi3",
    "smollm3",
    "phi",
    "gemma2",
    "granite",
    "opt",
    "opt_post_ln",
];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// Token ids without any fixture's pad id (0 or 1): the embedding's `padding_idx` row is read
/// by the forward but gets no gradient (as in transformers), so a finite difference along it
/// disagrees with double backward by design.
fn ids() -> Tensor {
    Tensor::from_slice(&[6i64, 5, 9, 3, 7, 2, 11, 4]).reshape([2, 4])
}

/// Copies of the checkpoint's parameters that require grad (fresh leaves, not the model's).
fn leaves(model: &dyn CausalLm) -> Vec<(String, Tensor)> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy().set_requires_grad(true)))
        .collect()
}

#[test]
fn explicit_parameters_give_the_checkpoint_logits_and_gradients() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let spec = ModelSpec::from_dir(&dir, Precision::Fp32, Device::Cpu).unwrap();
        let model = spec.load(&dir).unwrap();
        let params = leaves(model.as_ref());
        let explicit = spec.build(params.iter().map(|(n, t)| (n, t))).unwrap();
        let want = model.forward(&ids());
        let got = explicit.forward(&ids());
        assert_eq!(
            (got - &want).abs().max().double_value(&[]),
            0.0,
            "{name}: logits on explicit parameters differ"
        );
        // Every parameter is used and receives a gradient through the explicit model.
        let loss = explicit.forward(&ids()).square().sum(Kind::Float);
        let xs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
        let grads = Tensor::run_backward(&[loss], &xs, false, false);
        for ((n, p), g) in params.iter().zip(&grads) {
            assert_eq!(g.size(), p.size(), "{name}: {n}");
            assert!(
                g.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                "{name}: {n} gets no gradient"
            );
        }
    }
}

/// d/dε of ⟨∇L(θ+εv), u⟩ by double backward, against central differences of the first
/// backward, in float64 with the math kernel (the one with a double backward).
#[test]
fn double_backward_matches_finite_differences() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let spec = ModelSpec::from_dir(&dir, Precision::Fp64, Device::Cpu).unwrap();
        let base = spec.load(&dir).unwrap();
        let params = leaves(base.as_ref());
        let xs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
        tch::manual_seed(0);
        let v: Vec<Tensor> = xs.iter().map(|p| p.randn_like() * 0.1).collect();
        let u: Vec<Tensor> = xs.iter().map(|p| p.randn_like()).collect();
        let loss_at = |ps: &[(String, Tensor)]| {
            let mut m = spec.build(ps.iter().map(|(n, t)| (n, t))).unwrap();
            m.set_math_attention(true);
            let logits = m.forward(&ids());
            logits
                .log_softmax(-1, Kind::Double)
                .narrow(-1, 0, 7)
                .sum(Kind::Double)
        };
        // Analytic: ⟨∇(⟨∇L, u⟩), v⟩.
        let loss = loss_at(&params);
        let g = Tensor::run_backward(&[loss], &xs, true, true);
        let gu = g
            .iter()
            .zip(&u)
            .map(|(g, u)| (g * u).sum(Kind::Double))
            .fold(Tensor::zeros([], (Kind::Double, Device::Cpu)), |a, b| a + b);
        let h = Tensor::run_backward(&[gu], &xs, false, false);
        let analytic: f64 = h
            .iter()
            .zip(&v)
            .map(|(h, v)| (h * v).sum(Kind::Double).double_value(&[]))
            .sum();
        // Numeric: (⟨∇L(θ+εv), u⟩ - ⟨∇L(θ-εv), u⟩) / 2ε.
        let eps = 1e-5;
        let dir_grad = |sign: f64| -> f64 {
            let ps: Vec<(String, Tensor)> = params
                .iter()
                .zip(&v)
                .map(|((n, p), v)| {
                    (
                        n.clone(),
                        (p.detach() + v * (sign * eps)).set_requires_grad(true),
                    )
                })
                .collect();
            let xs: Vec<&Tensor> = ps.iter().map(|(_, t)| t).collect();
            let g = Tensor::run_backward(&[loss_at(&ps)], &xs, false, false);
            g.iter()
                .zip(&u)
                .map(|(g, u)| (g * u).sum(Kind::Double).double_value(&[]))
                .sum()
        };
        let numeric = (dir_grad(1.0) - dir_grad(-1.0)) / (2.0 * eps);
        let rel = (analytic - numeric).abs() / numeric.abs().max(1e-12);
        assert!(
            rel < 1e-6,
            "{name}: double backward {analytic} vs finite difference {numeric} (rel {rel:e})"
        );
    }
}
