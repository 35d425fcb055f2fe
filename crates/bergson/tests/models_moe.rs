//! Mixture-of-experts fixture checkpoints (tests/fixtures/models/<moe>, made by
//! tests/fixtures/scripts/make_moe_models.py) against transformers 5.24: logits, the Linear
//! module list before and after Bergson 2.5.1's `expand_moe`, parameter names and shapes, and
//! the `--moe_experts` refusals.

use bergson::engine::Precision;
use bergson::models::{load_model, CausalLm};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const FIXTURES: &[&str] = &["qwen3_moe", "mixtral", "olmoe", "olmoe_clip"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn load(name: &str) -> Box<dyn CausalLm> {
    load_model(&fixture_dir(name), Precision::Fp32, Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference(name: &str) -> (Tensor, Tensor, serde_json::Value) {
    let dir = fixture_dir(name);
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
    let get = |k: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
            .unwrap()
    };
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    (get("input_ids"), get("logits_fp32"), json)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn modules(model: &dyn CausalLm) -> serde_json::Value {
    serde_json::Value::Array(
        model
            .linear_modules()
            .iter()
            .map(|l| serde_json::json!([l.name, l.in_features, l.out_features, l.has_bias]))
            .collect(),
    )
}

#[test]
fn logits_and_modules_match_transformers() {
    for name in FIXTURES {
        let (ids, want, json) = reference(name);
        let mut model = load(name);
        let got = {
            let _g = tch::no_grad_guard();
            model.forward(&ids)
        };
        let err = max_abs(&got, &want);
        println!("{name}: fused logits max abs diff {err:.3e}");
        assert!(err < 1e-5, "{name}: logits differ by {err}");
        assert_eq!(modules(model.as_ref()), json["linear_modules"], "{name}");
        let params: Vec<serde_json::Value> = model
            .named_parameters()
            .iter()
            .map(|(n, t)| serde_json::json!([n, t.size()]))
            .collect();
        assert_eq!(
            serde_json::Value::Array(params),
            json["parameters"],
            "{name}"
        );

        model.expand_moe("model.layers.*.mlp.experts").unwrap();
        assert_eq!(
            modules(model.as_ref()),
            json["linear_modules_moe"],
            "{name}"
        );
        let expanded = {
            let _g = tch::no_grad_guard();
            model.forward(&ids)
        };
        let err = max_abs(&expanded, &want);
        println!("{name}: expanded logits max abs diff {err:.3e}");
        assert!(err < 1e-5, "{name}: expanded logits differ by {err}");
        // Expanding twice changes nothing (as expand_moe's `expert_0` check).
        model.expand_moe("model.layers.*.mlp.experts").unwrap();
        assert_eq!(
            modules(model.as_ref()),
            json["linear_modules_moe"],
            "{name}"
        );
    }
}

#[test]
fn moe_experts_refusals() {
    let mut model = load("qwen3_moe");
    // As Bergson 2.5.1: a glob that also matches a module without fused experts is refused.
    for glob in [
        "model.layers.*.self_attn",
        "model.layers.*",
        "model.layers.0.mlp*",
    ] {
        let e = model.expand_moe(glob).unwrap_err();
        assert!(e.to_string().contains("no fused expert weights"), "{e}");
    }
    let e = model.expand_moe("model.layers.7.mlp.experts").unwrap_err();
    assert!(e.to_string().contains("matched no fused MoE"), "{e}");
    assert!(model
        .linear_modules()
        .iter()
        .all(|l| !l.name.contains("expert")));
    let mut dense = load_model(&fixture_dir("qwen3"), Precision::Fp32, Device::Cpu).unwrap();
    let e = dense.expand_moe("model.layers.*.mlp.experts").unwrap_err();
    assert!(e.to_string().contains("matched no fused MoE"), "{e}");
}

/// A checkpoint storing the experts fused (`experts.gate_up_proj` / `down_proj`, transformers
/// 5's in-memory layout, here written from the loaded model's own `named_parameters()`) loads
/// to the same logits as the per-expert layout save_pretrained writes.
#[test]
fn fused_checkpoint_layout_loads() {
    for name in ["qwen3_moe", "mixtral"] {
        let (ids, want, _) = reference(name);
        let model = load(name);
        let params = model.named_parameters();
        assert!(params
            .iter()
            .any(|(n, _)| n.ends_with("experts.gate_up_proj")));
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture_dir(name).join("config.json"),
            tmp.path().join("config.json"),
        )
        .unwrap();
        let named: Vec<(&str, &Tensor)> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&named, tmp.path().join("model.safetensors")).unwrap();
        let fused = load_model(tmp.path(), Precision::Fp32, Device::Cpu).unwrap();
        let got = {
            let _g = tch::no_grad_guard();
            fused.forward(&ids)
        };
        let err = max_abs(&got, &want);
        assert!(err < 1e-5, "{name}: fused layout logits differ by {err}");
    }
}
