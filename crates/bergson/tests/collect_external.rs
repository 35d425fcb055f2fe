//! The collector fed by outside hooks (`module_call` + `set_output_grad` +
//! `gradients_from_calls`, the seam the Python package's torch hooks use) gives the same rows
//! as its own backward through this crate's models: projected, with bias columns, and with
//! Adam and Adafactor normalizers, in float64.

use std::path::Path;

use bergson::collect::{
    discover_targets, document_losses, GradientCollector, GradientProcessor, LossSpec, Normalizer,
    ProjectionSettings,
};
use bergson::config::{LossFn, LossReduction};
use bergson::engine::Precision;
use bergson::models::{load_model, CausalLm, Linear, LinearHook};
use tch::{Device, Kind, Tensor};

/// Records every Linear call the way a torch forward hook sees it.
#[derive(Default)]
struct Record(Vec<(String, Tensor, Tensor)>);

impl LinearHook for Record {
    fn embeddings(&mut self, h: Tensor) -> Tensor {
        h.detach().set_requires_grad(true)
    }

    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        let y = layer.forward_base(x);
        self.0
            .push((layer.name.clone(), x.shallow_clone(), y.shallow_clone()));
        y
    }
}

fn loss(model: &dyn CausalLm, logits: &Tensor, ids: &Tensor) -> Tensor {
    let spec = LossSpec {
        loss_fn: LossFn::Ce,
        reduction: LossReduction::Mean,
        label_smoothing: 0.0,
        logit_scale: 1.0,
        upcast_logits: false,
    };
    document_losses(&spec, logits, ids, None, None)
        .unwrap()
        .sum(model.kind())
}

/// Normalizers of every target: Adam on even modules, Adafactor on odd ones.
fn normalizers(targets: &[bergson::collect::Target]) -> Vec<(String, Normalizer)> {
    let g = |shape: &[i64], seed: i64| {
        tch::manual_seed(seed);
        Tensor::rand(shape, (Kind::Float, Device::Cpu)) + 0.1
    };
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (o, inp) = (t.out_features, t.in_features);
            let n = if i % 2 == 0 {
                Normalizer::Adam {
                    weight_avg_sq: g(&[o, inp], i as i64),
                    bias_avg_sq: Some(g(&[o], 100 + i as i64)),
                }
            } else {
                Normalizer::Adafactor {
                    row: g(&[o], i as i64),
                    col: g(&[inp], 200 + i as i64),
                    bias_avg_sq: Some(g(&[o], 300 + i as i64)),
                }
            };
            (t.name.clone(), n)
        })
        .collect()
}

fn check(arch: &str, projection_dim: Option<usize>, normalize: bool) {
    tch::set_num_threads(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(arch);
    let model = load_model(&dir, Precision::Fp64, Device::Cpu).unwrap();
    let targets = discover_targets(&model.linear_modules(), &[], None, true).unwrap();
    let mut processor = GradientProcessor::new(ProjectionSettings {
        projection_dim,
        include_bias: true,
        ..ProjectionSettings::default()
    });
    if normalize {
        processor.normalizers = normalizers(&targets);
    }
    let collector = GradientCollector::new(
        targets,
        &processor,
        false,
        Kind::Double,
        Kind::Double,
        Device::Cpu,
    )
    .unwrap();
    let ids = Tensor::from_slice(&[5i64, 17, 301, 44, 9, 101, 7, 88, 460, 3]).view([2, 5]);

    // This crate's own capture.
    let mut hook = collector.hook();
    let logits = model.forward_with(&ids, &mut hook);
    let total = loss(model.as_ref(), &logits, &ids);
    let want = collector.backward(hook, &total, &Tensor::new()).unwrap();

    // Outside hooks: inputs and outputs recorded, output gradients from a separate backward.
    let mut rec = Record::default();
    let logits = model.forward_with(&ids, &mut rec);
    let total = loss(model.as_ref(), &logits, &ids);
    let outputs: Vec<&Tensor> = rec.0.iter().map(|(_, _, y)| y).collect();
    let grads = Tensor::run_backward(&[total], &outputs, false, false);
    let mut calls = Vec::new();
    for ((name, x, _), g) in rec.0.iter().zip(&grads) {
        if let Some(mut call) = collector.module_call(name, x).unwrap() {
            assert!(!call.has_output_grad());
            call.set_output_grad(g);
            calls.push(call);
        }
    }
    let got = collector.gradients_from_calls(calls).unwrap();

    assert_eq!(got.blocks.len(), want.blocks.len());
    for ((n1, a), (n2, b)) in got.blocks.iter().zip(&want.blocks) {
        assert_eq!(n1, n2);
        let scale = b.abs().max().double_value(&[]).max(1e-300);
        let err = (a - b).abs().max().double_value(&[]) / scale;
        assert!(err < 1e-12, "{arch} {n1}: relative error {err:e}");
    }
}

#[test]
fn outside_hooks_equal_own_capture_projected() {
    for arch in ["llama", "gpt2"] {
        check(arch, Some(4), false);
        check(arch, Some(4), true);
    }
}

#[test]
fn outside_hooks_equal_own_capture_full_gradients() {
    check("gpt_neox", None, true);
}

#[test]
fn a_call_without_gradient_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    let model = load_model(&dir, Precision::Fp64, Device::Cpu).unwrap();
    let targets = discover_targets(&model.linear_modules(), &[], None, false).unwrap();
    let name = targets[0].name.clone();
    let in_features = targets[0].in_features;
    let processor = GradientProcessor::new(ProjectionSettings::default());
    let collector = GradientCollector::new(
        targets,
        &processor,
        false,
        Kind::Double,
        Kind::Double,
        Device::Cpu,
    )
    .unwrap();
    let x = Tensor::zeros([1, 2, in_features], (Kind::Double, Device::Cpu));
    assert!(collector
        .module_call("no.such.module", &x)
        .unwrap()
        .is_none());
    let call = collector.module_call(&name, &x).unwrap().unwrap();
    let err = collector.gradients_from_calls(vec![call]).unwrap_err();
    assert!(err.to_string().contains("received no gradient"), "{err}");
}
