//! Every fixture checkpoint (tests/fixtures/models, made by
//! tests/fixtures/scripts/make_models.py) against the transformers 5.24 references stored next
//! to it: logits in float32 and float64, both attention kernels, half precisions, the Linear
//! module list and the parameter names/shapes, and the hook contract.

use bergson::engine::Precision;
use bergson::models::{load_model, CausalLm, Linear, LinearHook, LinearInfo};
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
    "olmo2",
    "olmo3",
    "olmo",
    "gemma3",
    "gemma",
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

struct Reference {
    input_ids: Tensor,
    logits_fp32: Tensor,
    logits_fp64: Tensor,
    json: serde_json::Value,
}

fn reference(name: &str) -> Reference {
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
    Reference {
        input_ids: get("input_ids"),
        logits_fp32: get("logits_fp32"),
        logits_fp64: get("logits_fp64"),
        json,
    }
}

fn load(name: &str, precision: Precision) -> Box<dyn CausalLm> {
    load_model(&fixture_dir(name), precision, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn logits(model: &dyn CausalLm, ids: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    model.forward(ids)
}

#[test]
fn logits_match_transformers_fp32_and_fp64() {
    for name in FIXTURES {
        let r = reference(name);
        let mut m32 = load(name, Precision::Fp32);
        let l32 = logits(m32.as_ref(), &r.input_ids);
        assert_eq!(l32.kind(), Kind::Float);
        let e32 = max_abs(&l32, &r.logits_fp32);
        m32.set_math_attention(true);
        let e32_math = max_abs(&logits(m32.as_ref(), &r.input_ids), &r.logits_fp32);

        let mut m64 = load(name, Precision::Fp64);
        let l64 = logits(m64.as_ref(), &r.input_ids);
        assert_eq!(l64.kind(), Kind::Double);
        let e64 = max_abs(&l64, &r.logits_fp64);
        m64.set_math_attention(true);
        let e64_math = max_abs(&logits(m64.as_ref(), &r.input_ids), &r.logits_fp64);
        println!(
            "{name}: fp32 {e32:.2e} (math {e32_math:.2e}), fp64 {e64:.2e} (math {e64_math:.2e})"
        );
        assert!(
            e32 <= 1e-5 && e32_math <= 1e-5,
            "{name}: fp32 {e32} math {e32_math}"
        );
        assert!(
            e64 <= 1e-10 && e64_math <= 1e-10,
            "{name}: fp64 {e64} math {e64_math}"
        );
    }
}

#[test]
fn half_precisions_are_close() {
    for name in FIXTURES {
        let r = reference(name);
        for (precision, kind, tol) in [
            (Precision::Bf16, Kind::BFloat16, 0.15),
            (Precision::Fp16, Kind::Half, 0.02),
        ] {
            let m = load(name, precision);
            assert_eq!(m.kind(), kind);
            let l = logits(m.as_ref(), &r.input_ids);
            assert_eq!(l.kind(), kind);
            let err = max_abs(&l, &r.logits_fp32);
            println!("{name} {precision:?}: {err:.3e}");
            assert!(err < tol, "{name} {precision:?}: {err}");
        }
    }
}

#[test]
fn modules_and_parameters_match_transformers() {
    for name in FIXTURES {
        let r = reference(name);
        let m = load(name, Precision::Fp32);
        assert_eq!(
            m.base_model_prefix(),
            r.json["base_model_prefix"].as_str().unwrap(),
            "{name}"
        );
        let want: Vec<LinearInfo> = r.json["linear_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| LinearInfo {
                name: e[0].as_str().unwrap().to_string(),
                in_features: e[1].as_i64().unwrap(),
                out_features: e[2].as_i64().unwrap(),
                has_bias: e[3].as_bool().unwrap(),
            })
            .collect();
        assert_eq!(m.linear_modules(), want, "{name}");
        let params = m.named_parameters();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        let want_names: Vec<&str> = r.json["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, want_names, "{name}");
        let shapes: Vec<Vec<i64>> = params.iter().map(|(_, t)| t.size()).collect();
        let want_shapes: Vec<Vec<i64>> =
            serde_json::from_value(r.json["parameter_shapes"].clone()).unwrap();
        assert_eq!(shapes, want_shapes, "{name}");
        let model_type = match *name {
            "gpt_neox_seq" => "gpt_neox",
            "llama3" => "llama",
            "qwen2_yarn" => "qwen2",
            "gemma3" => "gemma3_text",
            "opt_post_ln" => "opt",
            other => other,
        };
        assert_eq!(m.model_type(), model_type);
        assert_eq!(
            m.max_position_embeddings(),
            Some(match *name {
                "gpt2" => 1024,
                "qwen2_yarn" => 16384,
                _ => 2048,
            })
        );
        assert_eq!(m.vocab_size(), Some(512));
        assert_eq!(m.device(), Device::Cpu);
    }
}

/// Records what a forward pass shows the hook, and optionally makes the embeddings a leaf
/// that requires grad (what the gradient collector does).
#[derive(Default)]
struct Recorder {
    names: Vec<String>,
    in_features: Vec<i64>,
    embeddings: usize,
    leaf: Option<Tensor>,
    grad: bool,
    zero: Option<String>,
}

impl LinearHook for Recorder {
    fn embeddings(&mut self, h: Tensor) -> Tensor {
        self.embeddings += 1;
        if self.grad {
            let h = h.detach().set_requires_grad(true);
            self.leaf = Some(h.shallow_clone());
            return h;
        }
        h
    }

    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        self.names.push(layer.name.clone());
        self.in_features.push(*x.size().last().unwrap());
        let y = layer.forward_base(x);
        if self.zero.as_deref() == Some(layer.name.as_str()) {
            return y.zeros_like();
        }
        y
    }
}

#[test]
fn every_linear_runs_through_the_hook() {
    for name in FIXTURES {
        let r = reference(name);
        let m = load(name, Precision::Fp64);
        let modules = m.linear_modules();
        let mut rec = Recorder {
            grad: true,
            ..Default::default()
        };
        let out = m.forward_with(&r.input_ids, &mut rec);
        let mut want: Vec<(String, i64)> = modules
            .iter()
            .map(|l| (l.name.clone(), l.in_features))
            .collect();
        if *name == "phi3" {
            // Phi-3 registers o_proj before qkv_proj (transformers' order, which the modules
            // follow) but runs qkv_proj first.
            for pair in want.chunks_mut(4) {
                pair.swap(0, 1);
            }
        }
        if *name == "opt_post_ln" {
            // OPT registers project_out before project_in and the layers, and runs it last.
            want.rotate_left(1);
        }
        let seen: Vec<(String, i64)> = rec
            .names
            .iter()
            .cloned()
            .zip(rec.in_features.clone())
            .collect();
        assert_eq!(seen, want, "{name}: hook order");
        assert_eq!(rec.embeddings, 1, "{name}");
        // The hook's tensors are the ones the forward uses: a backward reaches the embeddings
        // although no parameter requires grad, and the logits are the reference ones.
        assert!(max_abs(&out, &r.logits_fp64) <= 1e-10, "{name}");
        let leaf = rec.leaf.unwrap();
        let g = Tensor::run_backward(&[out.square().sum(Kind::Double)], &[&leaf], false, false);
        assert!(
            g[0].abs().sum(Kind::Double).double_value(&[]) > 0.0,
            "{name}"
        );
        // Replacing one module's output through the hook changes the logits.
        let last = want.last().unwrap().0.clone();
        let mut zero = Recorder {
            zero: Some(last),
            ..Default::default()
        };
        let changed = tch::no_grad(|| m.forward_with(&r.input_ids, &mut zero));
        assert!(max_abs(&changed, &r.logits_fp64) > 1e-3, "{name}");
    }
}

/// The sliding window of the Mistral fixture matters on its 12-token input, so the logits test
/// would catch a window ignored or off by one.
#[test]
fn sliding_window_changes_mistral_logits() {
    let src = fixture_dir("mistral");
    let r = reference("mistral");
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    for (window, should_match) in [("null", false), ("5", false), ("3", false), ("4", true)] {
        let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
        let cfg = cfg.replace(
            "\"sliding_window\": 4",
            &format!("\"sliding_window\": {window}"),
        );
        std::fs::write(tmp.path().join("config.json"), cfg).unwrap();
        let m = load_model(tmp.path(), Precision::Fp64, Device::Cpu).unwrap();
        let err = max_abs(&logits(m.as_ref(), &r.input_ids), &r.logits_fp64);
        assert_eq!(err <= 1e-10, should_match, "window {window}: {err}");
    }
}

#[test]
fn input_ids_are_checked() {
    let m = load("gpt2", Precision::Fp32);
    let ok = Tensor::from_slice(&[1i64, 2, 511]).reshape([1, 3]);
    m.check_input_ids(&ok).unwrap();
    let bad = Tensor::from_slice(&[1i64, 512]).reshape([1, 2]);
    assert!(m
        .check_input_ids(&bad)
        .unwrap_err()
        .to_string()
        .contains("vocabulary"));
    let long = Tensor::zeros([1, 1025], (Kind::Int64, Device::Cpu));
    assert!(m
        .check_input_ids(&long)
        .unwrap_err()
        .to_string()
        .contains("max_position_embeddings"));
    let flat = Tensor::from_slice(&[1i64, 2]);
    assert!(m.check_input_ids(&flat).is_err());
    // Rotary models accept sequences past max_position_embeddings, as transformers does.
    let m = load("llama", Precision::Fp32);
    m.check_input_ids(&Tensor::zeros([1, 2049], (Kind::Int64, Device::Cpu)))
        .unwrap();
}
