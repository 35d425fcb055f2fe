//! PEFT LoRA adapters as `--model` at the command line: adapter settings bergson-rs cannot
//! reproduce and adapters of another model end in one `error:` line (exit status 2) with no
//! index; an adapter saved without tokenizer files falls back to its base model's tokenizer and
//! gives the same index as naming that tokenizer. Gradient parity with Python Bergson is in
//! `bergson_parity` (the `lora_*` cases).

mod common;

use common::{assert_one_line_error, copy_dir, fixtures, BIN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with a copy of the llama LoRA adapter at `adapter/` whose base model is
/// named by absolute path, and a two-document dataset.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s = Scratch { dir };
        copy_dir(&fixtures().join("models/llama_lora"), &s.adapter());
        s.edit_config(|cfg| {
            cfg["base_model_name_or_path"] =
                Value::String(fixtures().join("models/llama").display().to_string());
        });
        std::fs::write(
            s.path("data.jsonl"),
            "{\"text\": \"hello world, this is a document\"}\n{\"text\": \"another short document\"}\n",
        )
        .unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn adapter(&self) -> PathBuf {
        self.path("adapter")
    }

    fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let file = self.adapter().join("adapter_config.json");
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(&file, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", self.path("hf"))
            .output()
            .unwrap()
    }

    fn build(&self, run: &str, extra: &[&str]) -> Output {
        self.build_model(&self.adapter(), run, extra)
    }

    /// `build <run> --model <model>` over the scratch dataset, projected to 8.
    fn build_model(&self, model: &Path, run: &str, extra: &[&str]) -> Output {
        let model = model.display().to_string();
        let mut args = vec![
            "build",
            run,
            "--model",
            &model,
            "--dataset",
            "data.jsonl",
            "--projection_dim",
            "8",
            "--token_batch_size",
            "64",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn assert_refused(s: &Scratch, keys: &[&str]) {
    let out = s.build("run", &[]);
    assert_one_line_error(&out, keys);
    assert!(!s.path("run").exists() && !s.path("run.part").exists());
}

#[test]
fn adapter_options_bergson_rs_cannot_reproduce_are_named() {
    for (key, value, needle) in [
        ("use_dora", Value::Bool(true), "DoRA"),
        ("bias", Value::String("all".into()), "bias 'all'"),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
        ("peft_type", Value::String("IA3".into()), "peft_type IA3"),
    ] {
        let s = Scratch::new();
        s.edit_config(|cfg| cfg[key] = value);
        assert_refused(&s, &[needle, "adapter_config.json"]);
    }
}

#[test]
fn an_adapter_of_another_model_is_refused() {
    // Shapes: the llama adapter over the gpt_neox base.
    let s = Scratch::new();
    s.edit_config(|cfg| {
        cfg["base_model_name_or_path"] =
            Value::String(fixtures().join("models/gpt_neox").display().to_string());
    });
    assert_refused(&s, &["no Linear layer", "another", "base model"]);
    // A missing base model.
    let s = Scratch::new();
    s.edit_config(|cfg| cfg["base_model_name_or_path"] = Value::String("no/such_base".into()));
    assert_refused(&s, &["no/such_base"]);
    // No weights file.
    let s = Scratch::new();
    std::fs::remove_file(s.adapter().join("adapter_model.safetensors")).unwrap();
    assert_refused(&s, &["adapter_model.safetensors"]);
}

/// `train --save_models` over an adapter writes a peft adapter (the saved keys, the source's
/// adapter_config.json, the base model's tokenizer) whose LoRA weights moved and whose base is
/// untouched, and which `build` reads back as `--model`. A fresh adapter stays refused there.
#[test]
fn training_an_adapter_saves_a_peft_adapter() {
    let s = Scratch::new();
    let adapter = s.adapter().display().to_string();
    let tokenizer = fixtures().join("models/llama").display().to_string();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "run",
            "--model",
            &adapter,
            "--tokenizer",
            &tokenizer,
            "--dataset",
            "data.jsonl",
            "--batch_size",
            "2",
            "--lr",
            "0.05",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        s.run(&args)
    };
    let out = train(&["--save_models", "--save_optimizer_state", "last"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = s.path("run/model");
    assert!(saved.join("adapter_config.json").is_file());
    assert!(saved.join("tokenizer.json").is_file());
    let trained = tch::Tensor::read_safetensors(saved.join("adapter_model.safetensors")).unwrap();
    let original =
        tch::Tensor::read_safetensors(s.adapter().join("adapter_model.safetensors")).unwrap();
    let mut keys: Vec<&String> = trained.iter().map(|(k, _)| k).collect();
    let mut want: Vec<&String> = original.iter().map(|(k, _)| k).collect();
    keys.sort();
    want.sort();
    assert_eq!(keys, want, "saved keys differ from peft's");
    let moved = trained.iter().any(|(k, t)| {
        let (_, o) = original.iter().find(|(n, _)| n == k).unwrap();
        (t - o).abs().max().double_value(&[]) > 0.0
    });
    assert!(moved, "training left every LoRA weight unchanged");

    // The trained adapter indexes as --model.
    let out = s.build_model(&saved, "index", &["--optimizer_state", "run/optimizer.pt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Normalised by the optimizer state the training saved (whose param_name entries carry
    // peft's adapter name): one normalizer per LoRA weight.
    let normalizers =
        bergson::collect::optimizer_state::read_normalizers(&s.path("index/normalizers.pth"))
            .unwrap();
    assert_eq!(normalizers.len(), trained.len());

    // Over an adapter a fresh one is refused, as Bergson asserts.
    let out = train(&["--overwrite", "--peft_init_kwargs", "r=2"]);
    assert_one_line_error(&out, &["--peft_init_kwargs", "already a PEFT adapter"]);
}

/// `train --peft_init_kwargs` trains a fresh adapter over the base model and saves it with its
/// settings, and the saved adapter indexes as `--model`.
#[test]
fn training_a_fresh_adapter_saves_its_config() {
    let s = Scratch::new();
    let base = fixtures().join("models/llama").display().to_string();
    let out = s.run(&[
        "train",
        "run",
        "--model",
        &base,
        "--dataset",
        "data.jsonl",
        "--batch_size",
        "2",
        "--lr",
        "0.05",
        "--peft_init_kwargs",
        "r=2,lora_alpha=4,target_modules=q_proj|o_proj",
        "--save_models",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = s.path("run/model");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 2);
    assert_eq!(cfg["lora_alpha"], 4.0);
    assert_eq!(cfg["base_model_name_or_path"], Value::String(base.clone()));
    let targets = cfg["target_modules"].as_array().unwrap();
    assert_eq!(targets.len(), 4, "{targets:?}"); // q_proj and o_proj in 2 layers
    let weights = tch::Tensor::read_safetensors(saved.join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights.len(), 8);
    // Training moved lora_B off its zero start.
    assert!(weights
        .iter()
        .any(|(k, t)| k.contains("lora_B") && t.abs().max().double_value(&[]) > 0.0));
    let out = s.build_model(&saved, "index", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gradients(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("gradients.bin")).unwrap()
}

#[test]
fn an_adapter_without_tokenizer_files_uses_its_base_models_tokenizer() {
    let s = Scratch::new();
    assert!(!s.adapter().join("tokenizer.json").exists());
    let out = s.build("fallback", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokenizer = fixtures().join("models/llama").display().to_string();
    let out = s.build("named", &["--tokenizer", &tokenizer]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (gradients(&s.path("fallback")), gradients(&s.path("named")));
    assert!(!a.is_empty() && a == b, "the two indexes differ");
    // The index holds the adapter's modules only.
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("named/info.json")).unwrap()).unwrap();
    let names: Vec<&String> = info["grad_sizes"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("model.model.layers.")
        && (n.ends_with(".lora_A.default") || n.ends_with(".lora_B.default"))));
}

/// A fresh adapter (`--peft_init_kwargs`) over the llama fixture: the adapter's modules only,
/// reproducible from run to run (Python Bergson's fresh draw is not), zero `lora_A` gradients
/// (`lora_B` starts at zero, as in peft) and `lora_B` gradients equal to `scaling · G Aᵀ`, where
/// `G` is the base layer's full gradient from a build without the adapter.
#[test]
fn a_fresh_adapter_indexes_the_gradients_of_its_modules() {
    let s = Scratch::new();
    let llama = fixtures().join("models/llama").display().to_string();
    let kwargs = "r=2,lora_alpha=6,target_modules=q_proj|v_proj";
    let build = |run: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            run,
            "--model",
            &llama,
            "--dataset",
            "data.jsonl",
            "--projection_dim",
            "0",
            "--token_batch_size",
            "64",
        ];
        args.extend_from_slice(extra);
        let out = s.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bergson::index::GradientIndex::open(&s.path(run)).unwrap()
    };
    let fresh = build("fresh", &["--peft_init_kwargs", kwargs]);
    let again = build("again", &["--peft_init_kwargs", kwargs]);
    assert_eq!(gradients(&s.path("fresh")), gradients(&s.path("again")));
    drop(again);
    let base = build("base", &[]);
    let adapter = bergson::models::lora::Adapter::fresh(kwargs, "llama", 0).unwrap();
    let rows = 0..fresh.num_rows();
    let mut checked = 0;
    for layer in 0..2 {
        for proj in ["q_proj", "v_proj"] {
            let module = format!("model.layers.{layer}.self_attn.{proj}");
            let name = |half: &str| format!("model.{module}.lora_{half}.default");
            let a_grads = fresh.module_rows(&name("A"), rows.clone()).unwrap();
            assert_eq!(a_grads.abs().max().double_value(&[]), 0.0, "{module}");
            let g = base
                .module_rows(&format!("layers.{layer}.self_attn.{proj}"), rows.clone())
                .unwrap();
            let (n, out_in) = (g.size()[0], g.size()[1]);
            let lora = adapter
                .for_module(&module, 32, out_in / 32, tch::Kind::Float, tch::Device::Cpu)
                .unwrap()
                .unwrap();
            let want = g.reshape([n, out_in / 32, 32]).matmul(&lora.a.weight.tr()) * lora.scaling;
            let got = fresh.module_rows(&name("B"), rows.clone()).unwrap();
            let err = (got.reshape(want.size()) - &want)
                .abs()
                .max()
                .double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(
                scale > 0.0 && err <= 1e-5 * scale,
                "{module}: {err} of {scale}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

#[test]
fn bad_peft_init_kwargs_are_one_line() {
    let s = Scratch::new();
    let llama = fixtures().join("models/llama").display().to_string();
    for (kwargs, needle) in [
        ("r=2,target_modules=nothing_here", "match no Linear layer"),
        ("r", "not key=value"),
        ("r=2,fan_out=3", "fan_out"),
        ("peft_type=IA3", "IA3"),
    ] {
        let out = s.run(&[
            "build",
            "run",
            "--model",
            &llama,
            "--dataset",
            "data.jsonl",
            "--peft_init_kwargs",
            kwargs,
        ]);
        assert_one_line_error(&out, &[needle]);
    }
    // A fresh adapter over an adapter.
    let adapter = s.adapter().display().to_string();
    let out = s.run(&[
        "build",
        "run",
        "--model",
        &adapter,
        "--dataset",
        "data.jsonl",
        "--peft_init_kwargs",
        "r=2",
    ]);
    assert_one_line_error(&out, &["already a PEFT adapter"]);
}
