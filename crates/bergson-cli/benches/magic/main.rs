//! `bergson magic` side by side with Python Bergson 2.5.1's `bergson magic` on the same CPU
//! run, at several run lengths (training steps).
//!
//! ```sh
//! BERGSON_PY=/path/to/python cargo bench -p bergson-cli --bench magic              # both
//! cargo bench -p bergson-cli --bench magic -- --steps 16,64 --no-python --extra "--eps_root 1e-8"
//! cargo bench -p bergson-cli --bench magic -- --nproc 2   # ours on 1 and 2 processes, 1 thread each
//! ```
//! The workload: a random GPT-NeoX (4 layers, hidden 128, intermediate 512, the fixture's
//! vocabulary of 512: 0.92 M parameters, 11 MB of trainer state in fp32) trained on generated
//! documents (8 per step, one epoch) with AdamW at Bergson's defaults, `--save_mode sqrt`, and
//! one aggregated query (`--aggregation mean`, 8 documents). For each size it reports wall
//! time and peak RSS of both tools, our time split (training, query, backward) and the
//! backward/training ratio, and how much the two tools' scores agree (relative error,
//! Spearman). Peak RSS should grow like sqrt(steps): the backward stashes one segment of
//! states between sqrt-spaced checkpoints.

#[path = "../throughput/measure.rs"]
#[allow(dead_code)]
mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;

use bergson::index::score_store::ScoreStore;
use tch::{Kind, Tensor};

const BATCH: usize = 8;
const WORDS: &str = "the cat sat on a mat while dogs ran far away from home and birds sang loud songs in tall green trees";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: Vec<usize> = arg("--steps")
        .unwrap_or_else(|| "16,64,144".into())
        .split(',')
        .map(|s| s.parse().expect("--steps 16,64,..."))
        .collect();
    // Extra `bergson magic` flags for both tools, e.g. `--extra "--eps_root 1e-8"`.
    let extra: Vec<String> = arg("--extra")
        .map(|e| e.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let nproc: Option<usize> = arg("--nproc").and_then(|v| v.parse().ok());
    let python = (!args.iter().any(|a| a == "--no-python") && nproc.is_none())
        .then(find_python)
        .flatten();
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let model = root.join("model");
    generate_model(&model);
    println!("machine: {} cores", measure::num_cpus());
    println!("model: GPT-NeoX 4x128, vocab 512 (0.92 M parameters), fp32, AdamW, --save_mode sqrt");
    println!(
        "{:>6} {:>5} | {:>9} {:>9} {:>9} {:>6} {:>9} | {:>9} {:>9} {:>7} | {:>8} {:>8}",
        "steps",
        "docs",
        "ours s",
        "train s",
        "bwd s",
        "bwd/tr",
        "RSS MiB",
        "python s",
        "RSS MiB",
        "speedup",
        "rel err",
        "spearman"
    );
    for &n in &steps {
        let data = root.join(format!("train_{n}.jsonl"));
        let query = root.join("query.jsonl");
        write_docs(&data, n * BATCH, n as u64);
        write_docs(&query, BATCH, 7);
        let flags = |run: &Path| -> Vec<String> {
            let mut v = vec![
                "magic".to_string(),
                run.display().to_string(),
                "--model".into(),
                model.display().to_string(),
                "--data.dataset".into(),
                data.display().to_string(),
                "--query.dataset".into(),
                query.display().to_string(),
            ];
            v.extend(
                [
                    "--batch_size",
                    "8",
                    "--lr",
                    "1e-3",
                    "--aggregation",
                    "mean",
                    "--save_mode",
                    "sqrt",
                    "--wandb_project",
                    "",
                    "--overwrite",
                    "true",
                ]
                .map(String::from),
            );
            v.extend(extra.iter().cloned());
            v
        };
        if let Some(procs) = nproc {
            scaling_line(n, procs, root, &flags);
            continue;
        }
        let ours_run = root.join(format!("ours_{n}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
        cmd.args(flags(&ours_run));
        let ours = measure::run(&cmd);
        let split = phase_times(&ours.stderr);
        let (train, bwd) = split.map_or((f64::NAN, f64::NAN), |(t, _, b)| (t, b));
        let mut line = format!(
            "{:>6} {:>5} | {:>9.2} {:>9.2} {:>9.2} {:>6.2} {:>9.1} |",
            n,
            n * BATCH,
            ours.seconds,
            train,
            bwd,
            bwd / train,
            ours.peak_rss_mb
        );
        if let Some(py) = &python {
            let theirs_run = root.join(format!("python_{n}"));
            let mut cmd = Command::new(py);
            cmd.args(["-m", "bergson"])
                .args(flags(&theirs_run))
                .env("HF_HUB_OFFLINE", "1")
                .env("WANDB_MODE", "disabled")
                .env("CUDA_VISIBLE_DEVICES", "");
            let theirs = measure::run(&cmd);
            let (rel, rho) = agreement(&ours_run.join("scores"), &theirs_run.join("scores"));
            line += &format!(
                " {:>9.2} {:>9.1} {:>6.2}x | {:>8.1e} {:>8.5}",
                theirs.seconds,
                theirs.peak_rss_mb,
                theirs.seconds / ours.seconds,
                rel,
                rho
            );
            let _ = std::fs::remove_dir_all(&theirs_run);
        }
        let _ = std::fs::remove_dir_all(&ours_run);
        println!("{line}");
    }
}

/// `time: training X s, query Y s, backward Z s` from our summary.
fn phase_times(stderr: &str) -> Option<(f64, f64, f64)> {
    let line = stderr.lines().find(|l| l.starts_with("time: "))?;
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums.len() == 3).then(|| (nums[0], nums[1], nums[2]))
}

/// Relative error ‖ours − theirs‖/‖theirs‖ and Spearman correlation of the two score columns.
/// Our run of `n` steps on one process and on `procs`, one thread each: wall times, the
/// speed-up and how much the scores agree (float32: rounding differences are amplified by
/// Adam's first steps, so agreement is reported, not required).
fn scaling_line(n: usize, procs: usize, root: &Path, flags: &dyn Fn(&Path) -> Vec<String>) {
    let time = |run: &Path, p: usize| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
        cmd.args(flags(run))
            .args(["--nproc_per_node", &p.to_string(), "--quiet"])
            .env("OMP_NUM_THREADS", "1");
        measure::run(&cmd).seconds
    };
    let (one_run, many_run) = (
        root.join(format!("one_{n}")),
        root.join(format!("many_{n}")),
    );
    let one = time(&one_run, 1);
    let many = time(&many_run, procs);
    let (rel, rho) = agreement(&one_run.join("scores"), &many_run.join("scores"));
    println!(
        "{n:>6} steps | 1 process {one:>8.2} s | {procs} processes {many:>8.2} s | speed-up {:>5.2}x | rel err {rel:>8.1e} spearman {rho:>8.5}",
        one / many
    );
}

fn agreement(ours: &Path, theirs: &Path) -> (f64, f64) {
    let col = |dir: &Path| -> Vec<f64> {
        let s = ScoreStore::open(dir).expect("score store");
        s.values().expect("scores").0
    };
    let (a, b) = (col(ours), col(theirs));
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    let rank = |x: &[f64]| -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(&a), rank(&b));
    let n = ra.len() as f64;
    let m = (n - 1.0) / 2.0;
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - m) * (y - m)).sum();
    let var: f64 = ra.iter().map(|x| (x - m).powi(2)).sum();
    ((diff / norm).sqrt(), cov / var)
}

/// Generated short documents (3-10 words), deterministic for `seed`.
fn write_docs(path: &Path, n: usize, seed: u64) {
    let words: Vec<&str> = WORDS.split(' ').collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut text = String::new();
    for _ in 0..n {
        let len = 3 + (next() % 8) as usize;
        let doc: Vec<&str> = (0..len)
            .map(|_| words[(next() % words.len() as u64) as usize])
            .collect();
        text.push_str(&serde_json::json!({ "text": doc.join(" ") }).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("documents");
}

/// A random GPT-NeoX (transformers' init) with the fixture's tokenizer.
fn generate_model(dir: &Path) {
    std::fs::create_dir_all(dir).expect("model dir");
    tch::manual_seed(0);
    let (v, d, layers, inter) = (512i64, 128i64, 4, 512i64);
    let normal = |s: &[i64]| Tensor::randn(s, (Kind::Float, tch::Device::Cpu)) * 0.02;
    let ones = |n: i64| Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
    let zeros = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
    let mut t = vec![("gpt_neox.embed_in.weight".to_string(), normal(&[v, d]))];
    for l in 0..layers {
        let p = |s: &str| format!("gpt_neox.layers.{l}.{s}");
        t.push((p("input_layernorm.weight"), ones(d)));
        t.push((p("input_layernorm.bias"), zeros(d)));
        t.push((p("post_attention_layernorm.weight"), ones(d)));
        t.push((p("post_attention_layernorm.bias"), zeros(d)));
        t.push((p("attention.query_key_value.weight"), normal(&[3 * d, d])));
        t.push((p("attention.query_key_value.bias"), zeros(3 * d)));
        t.push((p("attention.dense.weight"), normal(&[d, d])));
        t.push((p("attention.dense.bias"), zeros(d)));
        t.push((p("mlp.dense_h_to_4h.weight"), normal(&[inter, d])));
        t.push((p("mlp.dense_h_to_4h.bias"), zeros(inter)));
        t.push((p("mlp.dense_4h_to_h.weight"), normal(&[d, inter])));
        t.push((p("mlp.dense_4h_to_h.bias"), zeros(d)));
    }
    t.push(("gpt_neox.final_layer_norm.weight".into(), ones(d)));
    t.push(("gpt_neox.final_layer_norm.bias".into(), zeros(d)));
    t.push(("embed_out.weight".into(), normal(&[v, d])));
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = d.into();
    config["num_hidden_layers"] = layers.into();
    config["intermediate_size"] = inter.into();
    config["num_attention_heads"] = 4.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    Tensor::write_safetensors(&t, dir.join("model.safetensors")).expect("safetensors");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let name = entry.unwrap().file_name();
        let s = name.to_string_lossy();
        if s.starts_with("tokenizer") || s.starts_with("special_tokens") {
            std::fs::copy(fixture.join(&name), dir.join(&name)).unwrap();
        }
    }
}

fn find_python() -> Option<PathBuf> {
    std::env::var_os("BERGSON_PY")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("python3")])
        .find(|py| {
            Command::new(py)
                .args([
                    "-c",
                    "import bergson, importlib.metadata as m; assert m.version('bergson') == '2.5.1'",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}
