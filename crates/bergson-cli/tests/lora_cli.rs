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
        let adapter = self.adapter().display().to_string();
        let mut args = vec![
            "build",
            run,
            "--model",
            &adapter,
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

#[test]
fn training_an_adapter_is_refused() {
    let s = Scratch::new();
    let adapter = s.adapter().display().to_string();
    let out = s.run(&[
        "train",
        "run",
        "--model",
        &adapter,
        "--dataset",
        "data.jsonl",
    ]);
    assert_one_line_error(&out, &["PEFT adapter", "base model"]);
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
