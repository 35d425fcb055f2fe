//! Every bad input to `bergson build` ends the same way: exit status 2, nothing on stdout, one
//! `error:` line on stderr that names the problem and the fix (plus at most one `hint:`/`tip:`
//! line), no panic or log line, and no finished index left behind.
//!
//! Each test runs the real binary in its own temp dir with tiny fixtures (the 2-layer gpt_neox
//! checkpoint, two-line datasets); `cargo test --test cli_errors -- --nocapture` prints every
//! message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{assert_one_line_error, fixtures, BIN};

/// The tiny gpt_neox checkpoint (read only; tests that damage it work on a copy).
fn neox() -> String {
    fixtures()
        .join("models/gpt_neox")
        .to_string_lossy()
        .into_owned()
}

/// A temp working directory with `ok.jsonl` (two short documents) and an empty Hugging Face
/// cache; the binary runs inside it, offline.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("hf")).expect("hf cache dir");
        let sb = Sandbox { dir };
        sb.write(
            "ok.jsonl",
            "{\"text\": \"hello world, this is a document\"}\n{\"text\": \"another short document\"}\n",
        );
        sb
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, text).expect("write fixture");
        p
    }

    /// A copy of the gpt_neox checkpoint at `<sandbox>/model`, to damage.
    fn model_copy(&self) -> PathBuf {
        let dst = self.path("model");
        fs::create_dir(&dst).expect("model dir");
        for name in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            fs::copy(
                fixtures().join("models/gpt_neox").join(name),
                dst.join(name),
            )
            .expect("copy model file");
        }
        dst
    }

    /// `program args...` in the sandbox, offline, with an empty hub cache and default logging.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_DATASETS_OFFLINE", "1")
            .env("HF_HOME", self.path("hf"))
            .env("HF_HUB_CACHE", self.path("hf/hub"))
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(BIN, args).output().expect("run bergson")
    }

    /// `bergson build run --model <model> --dataset <dataset> <extra...>`.
    fn build(&self, model: &str, dataset: &str, extra: &[&str]) -> Output {
        let mut args = vec!["build", "run", "--model", model, "--dataset", dataset];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Index directories (holding `info.json`) under the sandbox, other than `.part` ones.
    fn finished_indexes(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    let part = p.extension().is_some_and(|x| x == "part");
                    if p.join("info.json").exists() && !part {
                        out.push(p.clone());
                    }
                    walk(&p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }

    /// No run directory, no `.part`, no index anywhere.
    fn assert_nothing_written(&self) {
        assert!(!self.path("run").exists(), "run path was created");
        assert!(!self.path("run.part").exists(), "run.part was created");
        assert_eq!(self.finished_indexes(), Vec::<PathBuf>::new());
    }
}

/// Checks the contract and that stderr contains every key; returns the message.
#[track_caller]
fn assert_error(out: &Output, keys: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.is_empty(), "stdout not empty: {stdout}");
    let stderr = assert_one_line_error(out, keys);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.len() > "error: ".len() + 10, "too short: {first}");
    assert!(stderr.ends_with('\n'));
    let lower = stderr.to_lowercase();
    for bad in ["\u{1b}[", " warn "] {
        assert!(!lower.contains(bad), "stderr contains {bad:?}:\n{stderr}");
    }
    stderr
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, fs::read(&p).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs `bergson build <mount>/run ...` in a private mount namespace where `<mount>` is a
/// fresh tmpfs mounted with `options`; afterwards the tmpfs's listing (and `run.part`'s) is
/// saved to `<mount>.listing`, outside it.
fn build_on_tmpfs(sb: &Sandbox, options: &str, extra: &[&str]) -> Output {
    let mount = sb.path("mnt");
    fs::create_dir(&mount).expect("mount point");
    let script = "d=$1; o=$2; shift 2; mount -t tmpfs -o \"$o\" bergson-test \"$d\" || exit 99; \
                  \"$@\"; rc=$?; ls -A \"$d\" > \"$d.listing\"; \
                  ls -A \"$d/run.part\" >> \"$d.listing\" 2>/dev/null; exit $rc";
    let model = neox();
    let run = mount.join("run");
    // build.rs found the flags that work here (`-m` as root, `-rm` otherwise).
    let mut args = vec![
        env!("BERGSON_TEST_UNSHARE"),
        "sh",
        "-c",
        script,
        "sh",
        mount.to_str().expect("utf-8 path"),
        options,
        BIN,
        "build",
        run.to_str().expect("utf-8 path"),
        "--model",
        &model,
        "--dataset",
        "ok.jsonl",
    ];
    args.extend_from_slice(extra);
    let out = sb.command("unshare", &args).output().expect("run unshare");
    assert_ne!(out.status.code(), Some(99), "tmpfs mount failed: {out:?}");
    out
}

// ---------------------------------------------------------------- datasets

#[test]
fn missing_dataset() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "missing.jsonl", &[]);
    assert_error(
        &out,
        &["'missing.jsonl'", "does not exist", "check the path"],
    );
    sb.assert_nothing_written();
}

#[test]
fn dataset_file_of_an_unreadable_type() {
    let sb = Sandbox::new();
    sb.write("notes.txt", "hello world\nanother line\n");
    let out = sb.build(&neox(), "notes.txt", &[]);
    assert_error(&out, &["'notes.txt'", "(.txt)", ".jsonl"]);
    sb.assert_nothing_written();
}

#[test]
fn empty_dataset() {
    let sb = Sandbox::new();
    sb.write("empty.jsonl", "");
    let out = sb.build(&neox(), "empty.jsonl", &[]);
    assert_error(
        &out,
        &["'empty.jsonl'", "no rows", "add at least one record"],
    );
    sb.assert_nothing_written();
}

#[test]
fn malformed_jsonl_names_the_line() {
    let sb = Sandbox::new();
    sb.write(
        "bad.jsonl",
        "{\"text\": \"fine\"}\n{\"text\": \"fine too\"}\n{\"text\": \"broken\n",
    );
    let out = sb.build(&neox(), "bad.jsonl", &[]);
    assert_error(
        &out,
        &["bad.jsonl", "malformed JSON", "line 3", "fix that line"],
    );
    sb.assert_nothing_written();
}

#[test]
fn json_that_is_not_records() {
    let sb = Sandbox::new();
    // Records nested under a field.
    sb.write(
        "nested.json",
        "{\"data\": [{\"text\": \"a b\"}, {\"text\": \"c d\"}]}\n",
    );
    let out = sb.build(&neox(), "nested.json", &[]);
    assert_error(&out, &["nested.json", "field 'data'", "JSON Lines", "jq"]);
    // A line that is a number, not an object.
    sb.write("numbers.jsonl", "{\"text\": \"a b\"}\n42\n");
    let out = sb.build(&neox(), "numbers.jsonl", &[]);
    assert_error(
        &out,
        &["numbers.jsonl", "line 2", "not a record", "JSON object"],
    );
    sb.assert_nothing_written();
}

#[test]
fn missing_text_column_lists_the_columns() {
    let sb = Sandbox::new();
    sb.write("body.jsonl", "{\"body\": \"a b c\", \"id\": 1}\n");
    let out = sb.build(&neox(), "body.jsonl", &[]);
    assert_error(
        &out,
        &["--prompt_column 'text' not found", "body, id", "Pick one"],
    );
    sb.assert_nothing_written();
}

#[test]
fn null_text_column_lists_the_columns() {
    let sb = Sandbox::new();
    sb.write(
        "null.jsonl",
        "{\"text\": null, \"id\": 1}\n{\"text\": null, \"id\": 2}\n",
    );
    let out = sb.build(&neox(), "null.jsonl", &[]);
    assert_error(
        &out,
        &[
            "'text'",
            "null values",
            "--prompt_column",
            "text (null), id (int64)",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn missing_prompt_column() {
    let sb = Sandbox::new();
    sb.write("qa.jsonl", "{\"question\": \"2+2?\", \"answer\": \"4\"}\n");
    let out = sb.build(&neox(), "qa.jsonl", &["--completion_column", "answer"]);
    assert_error(
        &out,
        &["--prompt_column 'text' not found", "question, answer"],
    );
    sb.assert_nothing_written();
}

#[test]
fn missing_completion_column() {
    let sb = Sandbox::new();
    sb.write("qa.jsonl", "{\"question\": \"2+2?\", \"answer\": \"4\"}\n");
    let out = sb.build(
        &neox(),
        "qa.jsonl",
        &[
            "--prompt_column",
            "question",
            "--completion_column",
            "reply",
        ],
    );
    assert_error(
        &out,
        &["--completion_column 'reply' not found", "question, answer"],
    );
    sb.assert_nothing_written();
}

#[test]
fn missing_conversation_column() {
    let sb = Sandbox::new();
    sb.write(
        "chat.jsonl",
        "{\"id\": 0, \"chat\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    );
    let out = sb.build(
        &neox(),
        "chat.jsonl",
        &["--conversation_column", "messages"],
    );
    assert_error(
        &out,
        &[
            "--conversation_column 'messages' not found",
            "columns: id, chat",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn a_dataset_of_one_conversation_is_not_mistaken_for_nested_records() {
    let sb = Sandbox::new();
    sb.write(
        "one_chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi there\"}, \
         {\"role\": \"assistant\", \"content\": \"hello, how are you\"}]}\n",
    );
    let llama = fixtures().join("models/llama");
    let out = sb.build(
        llama.to_str().unwrap(),
        "one_chat.jsonl",
        &["--conversation_column", "messages", "--quiet"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sb.path("run/gradients.bin").exists());
}

#[test]
fn missing_reward_column_lists_the_dataset_columns() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--reward_column", "score"]);
    let msg = assert_error(
        &out,
        &[
            "--reward_column 'score' not found",
            "available columns: text.",
        ],
    );
    assert!(!msg.contains("input_ids"), "lists added columns: {msg}");
    sb.assert_nothing_written();
}

#[test]
fn rows_of_the_wrong_type() {
    let sb = Sandbox::new();
    sb.write(
        "ints.jsonl",
        "{\"text\": 1, \"title\": \"a\"}\n{\"text\": 2, \"title\": \"b\"}\n",
    );
    let out = sb.build(&neox(), "ints.jsonl", &[]);
    assert_error(
        &out,
        &[
            "'text'",
            "int64 values, not strings",
            "--prompt_column",
            "title (string)",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn only_empty_documents() {
    let sb = Sandbox::new();
    sb.write("blank.jsonl", "{\"text\": \"\"}\n{\"text\": \"\"}\n");
    let out = sb.build(&neox(), "blank.jsonl", &[]);
    assert_error(
        &out,
        &["fewer than 2 tokens", "--prompt_column", "drop empty rows"],
    );
    sb.assert_nothing_written();
}

// ---------------------------------------------------------------- models

#[test]
fn model_directory_missing() {
    let sb = Sandbox::new();
    let out = sb.build("./no-such-model", "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "--model ./no-such-model",
            "no such directory",
            "checkpoint directory",
        ],
    );
    sb.assert_nothing_written();
    // `hf/tiny` has a Hub id's form, so the (offline) cache is asked; the message says that
    // no such local directory exists either, though `hf/` does.
    let out = sb.build("hf/tiny", "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "model hf/tiny",
            "no local directory hf/tiny",
            "check the path",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn config_json_missing() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    fs::remove_file(model.join("config.json")).unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(&out, &["config.json", "no config.json", "point --model at"]);
    sb.assert_nothing_written();
}

#[test]
fn config_json_not_json() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    fs::write(model.join("config.json"), "{\"model_type\": gpt_neox}\n").unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "config.json",
            "not valid JSON",
            "line 1 column",
            "fix the file",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn unsupported_model_type_lists_the_supported_ones() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    let config = fs::read_to_string(model.join("config.json")).unwrap();
    fs::write(
        model.join("config.json"),
        config.replace("\"model_type\": \"gpt_neox\"", "\"model_type\": \"bert\""),
    )
    .unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "model_type 'bert' is not supported",
            "gpt_neox",
            "gpt2",
            "llama",
            "qwen3",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn truncated_safetensors() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    let bytes = fs::read(model.join("model.safetensors")).unwrap();
    fs::write(model.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(&out, &["model.safetensors", "truncated", "re-download"]);
    sb.assert_nothing_written();
}

#[test]
fn corrupt_safetensors() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    // A plausible header length followed by a header that is not JSON.
    let mut bytes = 24u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{this is not json at all");
    bytes.extend_from_slice(&[0u8; 64]);
    fs::write(model.join("model.safetensors"), bytes).unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(&out, &["model.safetensors", "corrupt", "re-download"]);
    sb.assert_nothing_written();
}

#[test]
fn tensor_missing_from_the_checkpoint() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    // Rename one tensor in the header (same length, so every offset stays valid).
    let name = b"gpt_neox.layers.1.mlp.dense_4h_to_h.weight";
    let mut bytes = fs::read(model.join("model.safetensors")).unwrap();
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in header");
    bytes[at + name.len() - 1] = b'X';
    fs::write(model.join("model.safetensors"), bytes).unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "'gpt_neox.layers.1.mlp.dense_4h_to_h.weight' is missing",
            "re-download",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn tokenizer_json_missing() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    fs::remove_file(model.join("tokenizer.json")).unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(&out, &["no tokenizer.json", "--tokenizer"]);
    sb.assert_nothing_written();
}

#[test]
fn tokenizer_json_corrupt() {
    let sb = Sandbox::new();
    let model = sb.model_copy();
    fs::write(
        model.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .unwrap();
    let out = sb.build("model", "ok.jsonl", &[]);
    assert_error(&out, &["tokenizer.json", "corrupt", "re-download"]);
    sb.assert_nothing_written();
}

#[test]
fn hub_id_offline_and_not_cached() {
    let sb = Sandbox::new();
    let out = sb.build("EleutherAI/pythia-14m", "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "EleutherAI/pythia-14m",
            "HF_HUB_OFFLINE",
            "not in the hub cache",
            "local checkpoint directory",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn modules_the_model_lacks() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--modules", "layers.*.attn.c_attn"]);
    assert_error(
        &out,
        &[
            "--modules 'layers.*.attn.c_attn' matches no module",
            "layers.0.attention.query_key_value",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn filter_modules_excluding_every_module() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--filter_modules", "layers.*"]);
    assert_error(
        &out,
        &[
            "--filter_modules 'layers.*' excludes every module",
            "narrow the globs",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn optimizer_state_of_another_model() {
    let sb = Sandbox::new();
    let state = fixtures().join("pickle/adamw_optimizer.pt");
    let out = sb.build(
        &neox(),
        "ok.jsonl",
        &["--optimizer_state", state.to_str().unwrap()],
    );
    assert_error(
        &out,
        &[
            "--optimizer_state",
            "adamw_optimizer.pt",
            "not this model's optimizer state",
            "drop --optimizer_state",
        ],
    );
    sb.assert_nothing_written();
}

// ---------------------------------------------------------------- flags

#[test]
fn negative_projection_dim() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--projection_dim", "-3"]);
    assert_error(&out, &["'-3'", "--projection_dim", "cannot be negative"]);
    sb.assert_nothing_written();
}

#[test]
fn non_numeric_projection_dim() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--projection_dim", "sixteen"]);
    assert_error(
        &out,
        &[
            "'sixteen'",
            "--projection_dim",
            "whole number",
            "bergson build --help",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn projection_dim_beyond_memory() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--projection_dim", "99999999999999"]);
    assert_error(
        &out,
        &["--projection_dim 99999999999999", "memory", "smaller"],
    );
    sb.assert_nothing_written();
}

#[test]
fn chunk_length_with_truncation() {
    let sb = Sandbox::new();
    let out = sb.build(
        &neox(),
        "ok.jsonl",
        &["--chunk_length", "8", "--truncation"],
    );
    assert_error(&out, &["--chunk_length", "--truncation", "drop one"]);
    sb.assert_nothing_written();
}

#[test]
fn chunk_length_longer_than_the_dataset() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--chunk_length", "1000"]);
    assert_error(&out, &["--chunk_length 1000", "smaller"]);
    let out = sb.build(
        &neox(),
        "ok.jsonl",
        &["--chunk_length", "8", "--token_batch_size", "4"],
    );
    assert_error(&out, &["--chunk_length 8", "--token_batch_size"]);
    sb.assert_nothing_written();
}

#[test]
fn format_template_missing_or_without_doc_to_text() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--format_template", "nope.yaml"]);
    assert_error(&out, &["--format_template 'nope.yaml'", "doc_to_text"]);
    sb.write("f.yaml", "doc_to_target: answer\n");
    let out = sb.build(&neox(), "ok.jsonl", &["--format_template", "f.yaml"]);
    assert_error(&out, &["'f.yaml'", "no doc_to_text"]);
    sb.assert_nothing_written();
}

#[test]
fn logit_scale_not_finite() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--logit_scale", "inf"]);
    assert_error(&out, &["--logit_scale inf", "finite"]);
    sb.assert_nothing_written();
}

#[test]
fn num_threads_zero() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--num_threads", "0"]);
    assert_error(&out, &["'0'", "--num_threads", "1 or more"]);
    sb.assert_nothing_written();
}

#[test]
fn token_batch_size_zero() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--token_batch_size", "0"]);
    assert_error(&out, &["--token_batch_size must be positive", "2048"]);
    sb.assert_nothing_written();
}

#[test]
fn document_longer_than_token_batch_size() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--token_batch_size", "4"]);
    assert_error(
        &out,
        &[
            "more than --token_batch_size 4",
            "--truncation",
            "--token_batch_size of at least",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn unknown_precision_lists_the_choices() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--precision", "fp8"]);
    assert_error(
        &out,
        &[
            "'fp8'",
            "--precision",
            "choose one of:",
            "auto",
            "bf16",
            "fp32",
        ],
    );
    sb.assert_nothing_written();
}

#[test]
fn unknown_flag() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--no-such-flag"]);
    assert_error(&out, &["'--no-such-flag'", "bergson build --help"]);
    // A misspelt flag gets clap's suggestion.
    let out = sb.build(&neox(), "ok.jsonl", &["--projection_dimm", "4"]);
    assert_error(
        &out,
        &[
            "'--projection_dimm'",
            "tip: a similar argument exists",
            "'--projection_dim'",
        ],
    );
    sb.assert_nothing_written();
}

// ---------------------------------------------------------------- run paths and output

#[test]
fn run_path_exists_leaves_the_index_untouched() {
    let sb = Sandbox::new();
    let args = ["--projection_dim", "4", "--quiet"];
    let first = sb.build(&neox(), "ok.jsonl", &args);
    assert!(first.status.success(), "first build failed: {first:?}");
    let before = snapshot(&sb.path("run"));
    assert!(before.keys().any(|p| p.ends_with("gradients.bin")));
    let out = sb.build(&neox(), "ok.jsonl", &args);
    assert_error(
        &out,
        &["run path run already exists", "--overwrite", "another path"],
    );
    assert_eq!(snapshot(&sb.path("run")), before, "the index changed");
    assert!(!sb.path("run.part").exists());
}

#[test]
fn run_path_is_a_file() {
    let sb = Sandbox::new();
    sb.write("run", "not an index\n");
    let out = sb.build(&neox(), "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "run path run already exists (a file)",
            "--overwrite",
            "another path",
        ],
    );
    assert_eq!(
        fs::read_to_string(sb.path("run")).unwrap(),
        "not an index\n"
    );
    assert!(!sb.path("run.part").exists());
    // --overwrite replaces index directories only, never a plain file.
    let out = sb.build(&neox(), "ok.jsonl", &["--overwrite"]);
    assert_error(&out, &["run path run is a file", "remove it yourself"]);
    assert_eq!(
        fs::read_to_string(sb.path("run")).unwrap(),
        "not an index\n"
    );
}

/// `bergson <command> <run_path> ... --overwrite` run in `cwd`: one-line error, exit 2.
fn refused_run_path(sb: &Sandbox, cwd: &Path, command: &str, run_path: &str, keys: &[&str]) {
    let model = neox();
    let data = sb.path("ok.jsonl").to_string_lossy().into_owned();
    let args = [
        command,
        run_path,
        "--model",
        &model,
        "--dataset",
        &data,
        "--overwrite",
    ];
    let out = sb.command(BIN, &args).current_dir(cwd).output().unwrap();
    assert_error(&out, keys);
}

// Run from `<sandbox>/outer/inner`, so that a broken check could only reach the sandbox (the
// root itself is checked in the library's unit test, never with a real delete).
#[test]
fn overwrite_never_deletes_the_working_directory_or_its_parents() {
    let sb = Sandbox::new();
    let inner = sb.path("outer/inner");
    fs::create_dir_all(&inner).unwrap();
    sb.write("outer/inner/keep.txt", "mine");
    let outer = sb.path("outer").to_string_lossy().into_owned();
    for command in ["build", "train"] {
        let here = ["refusing to delete .", "the working directory"];
        refused_run_path(&sb, &inner, command, ".", &here);
        let parent = ["refusing to delete", "a parent of the working directory"];
        refused_run_path(&sb, &inner, command, "..", &parent);
        refused_run_path(&sb, &inner, command, &outer, &parent);
    }
    assert!(sb.path("ok.jsonl").is_file());
    assert!(sb.path("outer/inner/keep.txt").is_file());
}

#[test]
fn overwrite_keeps_a_directory_bergson_did_not_write() {
    let sb = Sandbox::new();
    fs::create_dir(sb.path("run")).unwrap();
    sb.write("run/notes.txt", "mine");
    for command in ["build", "train"] {
        let keys = ["did not write", "remove it yourself"];
        refused_run_path(&sb, sb.dir.path(), command, "run", &keys);
        assert_eq!(
            fs::read_to_string(sb.path("run/notes.txt")).unwrap(),
            "mine"
        );
    }
    // Without --overwrite the message says that --overwrite would not help either.
    let out = sb.build(&neox(), "ok.jsonl", &[]);
    assert_error(
        &out,
        &[
            "already exists (a directory bergson did not write)",
            "another path",
        ],
    );
    assert!(!sb.path("run.part").exists());
    let model = neox();
    let train = ["train", "run", "--model", &model, "--dataset", "ok.jsonl"];
    assert_error(
        &sb.run(&train),
        &[
            "already exists (a directory bergson did not write)",
            "another path",
        ],
    );
    assert_eq!(fs::read_dir(sb.path("run")).unwrap().count(), 1);
}

#[test]
fn overwrite_replaces_a_bergson_run_and_an_empty_directory() {
    let sb = Sandbox::new();
    let args = ["--projection_dim", "4", "--quiet"];
    assert!(sb.build(&neox(), "ok.jsonl", &args).status.success());
    sb.write("run/stale.txt", "from before");
    let mut again = args.to_vec();
    again.push("--overwrite");
    let out = sb.build(&neox(), "ok.jsonl", &again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sb.path("run/info.json").is_file() && !sb.path("run/stale.txt").exists());

    // An empty directory needs --overwrite too (as in Bergson), and is then used.
    fs::create_dir(sb.path("empty")).unwrap();
    let model = neox();
    let build = |extra: &[&str]| {
        let mut a = vec!["build", "empty", "--model", &model, "--dataset", "ok.jsonl"];
        a.extend_from_slice(&args);
        a.extend_from_slice(extra);
        sb.run(&a)
    };
    assert_error(
        &build(&[]),
        &["already exists (an empty directory)", "--overwrite"],
    );
    assert!(build(&["--overwrite"]).status.success());
    assert!(sb.path("empty/info.json").is_file());
}

#[test]
fn a_max_tokens_budget_below_the_first_document_names_the_flag() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--max_tokens", "2"]);
    assert_error(
        &out,
        &["--max_tokens 2 keeps no document", "raise --max_tokens"],
    );
    sb.assert_nothing_written();
}

#[test]
fn kl_loss_is_refused_up_front() {
    let sb = Sandbox::new();
    let out = sb.build(&neox(), "ok.jsonl", &["--loss_fn", "kl"]);
    assert_error(&out, &["--loss_fn kl", "--loss_fn ce"]);
    assert!(!sb.path("run.part").exists());
}

#[test]
fn run_path_under_a_file() {
    let sb = Sandbox::new();
    sb.write("afile", "x\n");
    let out = sb.run(&[
        "build",
        "afile/sub/run",
        "--model",
        &neox(),
        "--dataset",
        "ok.jsonl",
    ]);
    assert_error(
        &out,
        &[
            "afile/sub/run",
            "under afile, which is a file",
            "choose another run path",
        ],
    );
    assert_eq!(fs::read_to_string(sb.path("afile")).unwrap(), "x\n");
    sb.assert_nothing_written();
}

#[test]
fn unwritable_output_under_proc() {
    let sb = Sandbox::new();
    // /proc refuses new entries even to root.
    let out = sb.run(&[
        "build",
        "/proc/bergson-cli-test-run",
        "--model",
        &neox(),
        "--dataset",
        "ok.jsonl",
    ]);
    assert_error(
        &out,
        &[
            "cannot create /proc/bergson-cli-test-run.part",
            "directory you can write to",
        ],
    );
    assert!(!Path::new("/proc/bergson-cli-test-run").exists());
    sb.assert_nothing_written();
}

#[test]
#[cfg_attr(
    not(tmpfs_mounts),
    ignore = "cannot mount a tmpfs in a private mount namespace here (unshare -m / -rm)"
)]
fn unwritable_output_on_a_read_only_mount() {
    let sb = Sandbox::new();
    let out = build_on_tmpfs(&sb, "ro,size=64k", &[]);
    assert_error(
        &out,
        &[
            "cannot create",
            "mnt/run.part",
            "Read-only file system",
            "directory you can write to",
        ],
    );
    assert_eq!(fs::read_to_string(sb.path("mnt.listing")).unwrap(), "");
}

#[test]
fn file_too_large_while_writing() {
    let sb = Sandbox::new();
    // Full gradients (projection_dim 0) of two documents are 128 KiB, over a limit of 16
    // blocks (8 or 16 KiB); without SIGXFSZ ignored the process would die silently.
    let mut args = vec![
        "-c",
        "ulimit -f 16 && exec \"$0\" \"$@\"",
        BIN,
        "build",
        "run",
        "--model",
    ];
    let model = neox();
    args.extend_from_slice(&[&model, "--dataset", "ok.jsonl", "--projection_dim", "0"]);
    let out = sb.command("sh", &args).output().expect("run sh");
    assert_error(&out, &["File too large", "ulimit -f", "run.part"]);
    // The partial output stays a `.part` (resumable after raising the limit), never the index.
    assert!(!sb.path("run").exists());
    assert!(!sb.path("run.part/data.hf").exists());
    assert_eq!(sb.finished_indexes(), Vec::<PathBuf>::new());
    // Without the limit, the same command finishes the index.
    let again = sb.build(&neox(), "ok.jsonl", &["--projection_dim", "0", "--quiet"]);
    assert!(again.status.success(), "rerun failed: {again:?}");
    assert!(sb.path("run/gradients.bin").exists() && !sb.path("run.part").exists());
}

#[test]
#[cfg_attr(
    not(tmpfs_mounts),
    ignore = "cannot mount a tmpfs in a private mount namespace here (unshare -m / -rm); file_too_large_while_writing covers the same write-error path"
)]
fn disk_full_while_writing() {
    let sb = Sandbox::new();
    let out = build_on_tmpfs(&sb, "size=32k", &["--projection_dim", "0"]);
    assert_error(
        &out,
        &["No space left on device", "disk is full", "run.part"],
    );
    let listing = fs::read_to_string(sb.path("mnt.listing")).unwrap();
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names.first(), Some(&"run.part"), "tmpfs held: {names:?}");
    assert!(
        !names.contains(&"run"),
        "a finished index was left: {names:?}"
    );
    assert!(!names.contains(&"data.hf"), "looks complete: {names:?}");
}

// ---------------------------------------------------------------- invocation

#[test]
fn no_arguments() {
    let sb = Sandbox::new();
    let out = sb.run(&[]);
    assert_error(&out, &["no command given", "build", "bergson --help"]);
}

#[test]
fn a_mistyped_command_gets_a_suggestion() {
    let sb = Sandbox::new();
    let out = sb.run(&["biuld"]);
    assert_error(&out, &["'biuld'", "'build'"]);
}

#[test]
fn build_without_run_path() {
    let sb = Sandbox::new();
    let out = sb.run(&["build"]);
    assert_error(&out, &["no run path given", "bergson build <run_path>"]);
    sb.assert_nothing_written();
}

#[test]
fn nonexistent_run_file() {
    let sb = Sandbox::new();
    let out = sb.run(&["nofile.yaml"]);
    assert_error(&out, &["no such run file: nofile.yaml", "check the path"]);
}

#[test]
fn malformed_run_file() {
    let sb = Sandbox::new();
    sb.write("bad.yaml", "steps:\n- build: {index_cfg: [\n");
    let out = sb.run(&["bad.yaml"]);
    let msg = assert_error(
        &out,
        &["bad.yaml", "not valid YAML", "line", "fix the file"],
    );
    assert!(!msg.contains("-->"), "carries the parser's excerpt: {msg}");
    sb.assert_nothing_written();
}
