//! Loading checkpoints: every broken input is a one-line `Error::Input` naming the file or
//! tensor (never a panic), checkpoint layouts real Hub repositories use load to the same
//! model, and Hub ids resolve through the cache.

use bergson::engine::Precision;
use bergson::hub::HubSettings;
use bergson::models::hub::resolve_with;
use bergson::models::{auto_precision, load_model, supported_model_types, CausalLm};
use bergson::Error;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// A writable copy of a fixture.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load(dir: &Path) -> bergson::Result<Box<dyn CausalLm>> {
    load_model(dir, Precision::Fp32, Device::Cpu)
}

/// The error of loading `dir`, checked to be a one-line input error containing every `needle`.
fn input_error(dir: &Path, needles: &[&str]) -> String {
    let err = match load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    };
    assert!(
        matches!(err, Error::Input(_)),
        "not an input error: {err:?}"
    );
    let msg = err.to_string();
    println!("{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "'{n}' not in: {msg}");
    }
    msg
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(cfg.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// Rewrites `model.safetensors` through `edit` on its (name, tensor) list.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

fn reference(name: &str) -> (Tensor, Tensor) {
    let tensors =
        Tensor::read_safetensors(fixture_dir(name).join("reference.safetensors")).unwrap();
    let get = |k: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
            .unwrap()
    };
    (get("input_ids"), get("logits_fp32"))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn config_problems() {
    let tmp = copy_fixture("llama");
    let dir = tmp.path();

    std::fs::remove_file(dir.join("config.json")).unwrap();
    input_error(dir, &["config.json", "--model"]);

    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", oops").unwrap();
    input_error(dir, &["config.json", "not valid JSON"]);
    std::fs::write(dir.join("config.json"), "[1, 2]").unwrap();
    input_error(dir, &["config.json", "JSON object"]);

    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    edit_config(dir, |c| {
        c.remove("hidden_size");
    });
    input_error(dir, &["config.json", "required key 'hidden_size'"]);

    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    edit_config(dir, |c| {
        c.remove("model_type");
    });
    input_error(dir, &["config.json", "'model_type'"]);

    edit_config(dir, |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    let msg = input_error(dir, &["config.json", "'mamba'", "not supported"]);
    for t in supported_model_types() {
        assert!(msg.contains(t), "{t} not listed: {msg}");
    }

    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    edit_config(dir, |c| {
        c.insert("num_attention_heads".into(), "four".into());
    });
    input_error(dir, &["config.json", "num_attention_heads"]);

    std::fs::copy(
        fixture_dir("llama").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    // Phi-3's old name for LongRoPE is no rope type of the Llama family.
    edit_config(dir, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "su", "factor": 2.0}),
        );
    });
    input_error(dir, &["config.json", "'su'", "llama3", "longrope"]);
    edit_config(dir, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "longrope", "factor": 2.0}),
        );
    });
    input_error(
        dir,
        &["config.json", "short_factor must be a list of numbers"],
    );

    input_error(&dir.join("nope"), &["not a directory"]);
}

#[test]
fn weight_problems() {
    // A tensor the config needs is absent (here the untied LM head).
    let tmp = copy_fixture("llama");
    edit_weights(tmp.path(), |t| t.retain(|(n, _)| n != "lm_head.weight"));
    input_error(
        tmp.path(),
        &["model.safetensors", "'lm_head.weight' is missing"],
    );

    // A tensor of the wrong shape.
    let tmp = copy_fixture("llama");
    edit_weights(tmp.path(), |t| {
        for (n, v) in t.iter_mut() {
            if n == "model.layers.1.mlp.up_proj.weight" {
                *v = v.narrow(0, 0, 10).contiguous();
            }
        }
    });
    input_error(
        tmp.path(),
        &[
            "model.safetensors",
            "model.layers.1.mlp.up_proj.weight",
            "[10, 32]",
            "[64, 32]",
        ],
    );

    // Truncated and corrupt files.
    let tmp = copy_fixture("gpt2");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    input_error(tmp.path(), &["model.safetensors", "truncated or corrupt"]);
    std::fs::write(&path, b"not a safetensors file at all").unwrap();
    input_error(tmp.path(), &["model.safetensors", "truncated or corrupt"]);
    std::fs::write(&path, b"").unwrap();
    input_error(tmp.path(), &["model.safetensors", "truncated or corrupt"]);

    // No weights at all.
    std::fs::remove_file(&path).unwrap();
    input_error(tmp.path(), &["model.safetensors", "safetensors"]);

    // A shard of a sharded checkpoint is gone.
    let tmp = copy_fixture("qwen3");
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    input_error(tmp.path(), &["model-00002-of-00003.safetensors", "missing"]);
    let tmp = copy_fixture("qwen3");
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    input_error(tmp.path(), &["model.safetensors.index.json", "weight_map"]);
}

/// openai-community/gpt2 stores its tensors without the `transformer.` prefix (saved from
/// `GPT2Model`) plus attention-mask buffers; Pythia stores `embed_out`, transformers 5 calls it
/// `lm_head`. Both load to the same model.
#[test]
fn hub_checkpoint_layouts_load() {
    let (ids, want) = reference("gpt2");
    let tmp = copy_fixture("gpt2");
    edit_weights(tmp.path(), |t| {
        for (n, _) in t.iter_mut() {
            *n = n.trim_start_matches("transformer.").to_string();
        }
        t.push((
            "h.0.attn.bias".into(),
            Tensor::ones([1, 1, 4, 4], (Kind::Float, Device::Cpu)),
        ));
    });
    let m = load(tmp.path()).unwrap();
    assert!(max_abs(&tch::no_grad(|| m.forward(&ids)), &want) <= 1e-5);
    assert_eq!(m.named_parameters()[0].0, "transformer.wte.weight");

    let (ids, want) = reference("gpt_neox");
    let tmp = copy_fixture("gpt_neox");
    edit_weights(tmp.path(), |t| {
        for (n, _) in t.iter_mut() {
            if n == "embed_out.weight" {
                *n = "lm_head.weight".into();
            }
        }
    });
    let m = load(tmp.path()).unwrap();
    assert!(max_abs(&tch::no_grad(|| m.forward(&ids)), &want) <= 1e-5);
}

/// A Hub id resolves through a hub cache (`models--org--name/refs/main` -> snapshot) and the
/// snapshot loads; offline and uncached, the error says how to fix it.
#[test]
fn hub_ids_resolve_through_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-llama");
    let snap = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123456789abcdef").unwrap();
    for entry in std::fs::read_dir(fixture_dir("llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snap.join(entry.file_name())).unwrap();
    }
    let settings = HubSettings::cache_only(cache.path());
    let dir = resolve_with("tiny-org/tiny-llama", None, &settings).unwrap();
    assert_eq!(dir, snap);
    let (ids, want) = reference("llama");
    let m = load(&dir).unwrap();
    assert!(max_abs(&tch::no_grad(|| m.forward(&ids)), &want) <= 1e-5);

    let err = resolve_with("tiny-org/other", None, &settings).unwrap_err();
    assert!(matches!(err, Error::Input(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("tiny-org/other") && msg.contains("not in the hub cache"),
        "{msg}"
    );
}

/// Models are shared between threads (`CausalLm: Send + Sync`); concurrent forwards, which
/// also race on the rotary table cache, give the single-threaded logits.
#[test]
fn concurrent_forwards_agree() {
    let (ids, want) = reference("qwen2");
    let m = load(&fixture_dir("qwen2")).unwrap();
    let m: &dyn CausalLm = m.as_ref();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let ids = ids.shallow_clone();
                s.spawn(move || tch::no_grad(|| m.forward(&ids)))
            })
            .collect();
        for h in handles {
            assert!(max_abs(&h.join().unwrap(), &want) <= 1e-5);
        }
    });
}

/// `--precision auto` reads config.json's `dtype` / `torch_dtype`, else the stored weights.
#[test]
fn auto_precision_follows_the_checkpoint() {
    for (name, want) in [
        ("gpt2", Precision::Fp16),
        ("gpt_neox", Precision::Fp32),
        ("llama", Precision::Bf16),
        ("qwen3", Precision::Fp32),
    ] {
        assert_eq!(auto_precision(&fixture_dir(name)).unwrap(), want, "{name}");
    }
    let tmp = copy_fixture("mistral");
    edit_config(tmp.path(), |c| {
        c.remove("dtype");
    });
    assert_eq!(auto_precision(tmp.path()).unwrap(), Precision::Bf16);
    edit_config(tmp.path(), |c| {
        c.insert("torch_dtype".into(), "int8".into());
    });
    assert!(matches!(auto_precision(tmp.path()), Err(Error::Input(_))));
}
