//! Build throughput, side by side with Python Bergson 2.5.1 on the same machine and inputs.
//!
//! ```sh
//! cargo bench -p bergson-cli --bench throughput              # both workloads
//! BERGSON_PY=/path/to/python cargo bench ... -- --docs 800   # a Python with bergson 2.5.1
//! cargo bench -p bergson-cli --bench throughput -- --workload scale --sizes 10k,100k
//! cargo bench -p bergson-cli --bench throughput -- --workload neox --nproc 2   # 1 vs 2 processes
//! ```
//! Generates the workload (random weights, generated text; see `workload`), runs `bergson
//! build` from this repository and, when Python Bergson is installed, `bergson build` 2.5.1 on
//! the same files, checks that the indexes agree (max relative error per row <= 1e-4; the
//! benchmark exits with status 1 when they do not), and prints wall time, tokens/s, peak RSS
//! and the ratio, both in wall time and without each tool's start-up (timed as a one-document
//! build of the same workload). Flags: `--docs N` (default 400), `--workload
//! neox|llama|gemma2|all|scale`, `--threads N` (libtorch threads for both tools), `--keep DIR`,
//! `--device cpu|cuda` (a GPU needs the `cuda` feature: see scripts/bench-gpu.sh). The scale
//! workload (see `scale`) takes `--sizes 10k,100k,1M` and `--formats jsonl,parquet`. With
//! `--nproc N` it instead times our build on one process and on N (`--nproc_per_node N`), one
//! libtorch thread each, and checks that the two indexes are equal.

mod measure;
mod scale;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use measure::{num_cpus, run, Run};
use workload::{Arch, Workload};

/// Largest max-row relative error at which the two tools' indexes count as the same.
const AGREEMENT: f64 = 1e-4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let docs: usize = arg("--docs").and_then(|v| v.parse().ok()).unwrap_or(400);
    let threads = arg("--threads");
    let which = arg("--workload").unwrap_or_else(|| "all".into());
    let keep = arg("--keep").map(PathBuf::from);
    let device = arg("--device").unwrap_or_else(|| "cpu".into());
    let nproc: Option<usize> = arg("--nproc").and_then(|v| v.parse().ok());
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    println!(
        "machine: {} cores; libtorch threads: {}",
        num_cpus(),
        threads.as_deref().unwrap_or("default")
    );
    if which == "scale" {
        let sizes = arg("--sizes").unwrap_or_else(|| "10k,100k,1M".into());
        let formats = arg("--formats").unwrap_or_else(|| "jsonl,parquet".into());
        scale::run_scale(&scale::Options {
            sizes: sizes.split(',').map(parse_count).collect(),
            formats: formats.split(',').map(scale::Format::parse).collect(),
            threads,
            root: root.join("scale"),
            keep: keep.is_some(),
        });
        return ExitCode::SUCCESS;
    }
    if let Some(n) = nproc {
        return scaling(&root, &which, docs, n, &device);
    }
    let python = measure::find_python();
    if python.is_none() {
        println!("Python Bergson not found: set BERGSON_PY to a Python with `pip install bergson==2.5.1` (then `pip uninstall -y torchaudio`) to compare; measuring bergson-rs alone.");
    }
    let cases = cases(&which);
    let mut mismatches = Vec::new();
    for (arch, p) in cases {
        let dir = root.join(arch.name());
        let w = Workload::generate(&dir, arch, docs, 0);
        println!(
            "\nworkload {}: {} docs, {} tokens (bpe tokenizer), model {}, --projection_dim {p} --token_batch_size 2048",
            arch.name(),
            w.docs,
            w.tokens,
            arch.describe()
        );
        let one_doc = w.first_document(&dir.join("one_doc.jsonl"));
        let measure = |make: &dyn Fn(&Workload, &Path) -> Command, side: &str| {
            let full = run(&make(&w, &dir.join(side)));
            let startup = run(&make(&one_doc, &dir.join(format!("{side}-one_doc"))));
            (full, startup)
        };
        let ours_cmd = |w: &Workload, out: &Path| ours_cmd(w, out, p, threads.as_deref(), &device);
        let (ours, ours_startup) = measure(&ours_cmd, "rs");
        report("bergson-rs", &ours, &ours_startup, w.tokens);
        if let Some(py) = &python {
            let python_cmd =
                |w: &Workload, out: &Path| python_cmd(py, w, out, p, threads.as_deref(), &device);
            let (theirs, theirs_startup) = measure(&python_cmd, "py");
            report("bergson 2.5.1 (Python)", &theirs, &theirs_startup, w.tokens);
            let err = max_row_rel_err(&dir.join("rs"), &dir.join("py"));
            let agree = err <= AGREEMENT;
            println!(
                "ratio: {:.2}x tokens/s wall, {:.2}x without start-up, peak RSS {:.2}x; outputs agree: max row rel err {err:.2e} ({})",
                theirs.seconds / ours.seconds,
                past_startup(&theirs, &theirs_startup) / past_startup(&ours, &ours_startup),
                ours.peak_rss_mb / theirs.peak_rss_mb,
                if agree { "ok" } else { "MISMATCH" }
            );
            if !agree {
                mismatches.push(format!("{}: max row rel err {err:.2e}", arch.name()));
            }
        }
    }
    if keep.is_some() {
        println!("\nkept the workloads and indexes in {}", root.display());
    }
    if mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: the two tools' indexes differ by more than {AGREEMENT:e} ({}); the timings compare different computations",
            mismatches.join("; ")
        );
        ExitCode::FAILURE
    }
}

/// The workloads `--workload` names, with their projection dimension.
fn cases(which: &str) -> Vec<(Arch, usize)> {
    match which {
        "neox" => vec![(Arch::NeoX, 16)],
        "llama" => vec![(Arch::Llama, 0)],
        "gemma2" => vec![(Arch::Gemma2, 16)],
        "all" => vec![(Arch::NeoX, 16), (Arch::Llama, 0)],
        other => {
            panic!("--workload: unknown workload '{other}'; use neox, llama, gemma2, all or scale")
        }
    }
}

/// `--nproc N`: our build of each workload on one process and on `n`, one thread each; fails
/// when the indexes differ.
fn scaling(root: &Path, which: &str, docs: usize, n: usize, device: &str) -> ExitCode {
    let mut failed = false;
    for (arch, p) in cases(which) {
        let dir = root.join(arch.name());
        let w = Workload::generate(&dir, arch, docs, 0);
        println!(
            "\nworkload {}: {} docs, {} tokens, model {}, one thread per process",
            arch.name(),
            w.docs,
            w.tokens,
            arch.describe()
        );
        let one = run(&ours_cmd(&w, &dir.join("p1"), p, Some("1"), device));
        let mut cmd = ours_cmd(&w, &dir.join(format!("p{n}")), p, Some("1"), device);
        cmd.args(["--nproc_per_node", &n.to_string()]);
        let many = run(&cmd);
        let err = max_row_rel_err(&dir.join(format!("p{n}")), &dir.join("p1"));
        println!(
            "  1 process {:.1} s, {n} processes {:.1} s: {:.2}x; indexes agree: max row rel err {err:.1e}",
            one.seconds,
            many.seconds,
            one.seconds / many.seconds
        );
        failed |= err > AGREEMENT;
    }
    if failed {
        eprintln!("error: the {n}-process index differs from the one-process index");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `10000`, `10k` or `1M` as a count.
fn parse_count(s: &str) -> usize {
    let s = s.trim();
    let (digits, scale) = match s.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1_000),
        None => match s.strip_suffix('M') {
            Some(d) => (d, 1_000_000),
            None => (s, 1),
        },
    };
    digits
        .parse::<usize>()
        .map(|n| n * scale)
        .unwrap_or_else(|_| panic!("--sizes: '{s}' is not a count (e.g. 10000, 10k, 1M)"))
}

/// Seconds of a full run past the tool's start-up (a one-document run: loading the runtime,
/// the model and the data, one batch, writing the index).
fn past_startup(full: &Run, startup: &Run) -> f64 {
    (full.seconds - startup.seconds).max(1e-9)
}

fn report(name: &str, r: &Run, startup: &Run, tokens: usize) {
    println!(
        "  {name:<24} {:>8.1} s  {:>8.0} tokens/s  peak RSS {:>7.0} MiB;  start-up (one document) {:.2} s, {:>8.0} tokens/s without it",
        r.seconds,
        tokens as f64 / r.seconds,
        r.peak_rss_mb,
        startup.seconds,
        tokens as f64 / past_startup(r, startup),
    );
}

fn ours_cmd(w: &Workload, out: &Path, p: usize, threads: Option<&str>, device: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bergson"));
    c.arg("build")
        .arg(out)
        .arg("--model")
        .arg(&w.model)
        .arg("--dataset")
        .arg(&w.data);
    c.args([
        "--projection_dim",
        &p.to_string(),
        "--overwrite",
        "--quiet",
        "--device",
        device,
    ]);
    if let Some(t) = threads {
        c.args(["--num_threads", t]);
    }
    c
}

fn python_cmd(
    py: &Path,
    w: &Workload,
    out: &Path,
    p: usize,
    threads: Option<&str>,
    device: &str,
) -> Command {
    let mut c = Command::new(py);
    c.args(["-m", "bergson", "build"])
        .arg(out)
        .arg("--model")
        .arg(&w.model)
        .arg("--dataset")
        .arg(&w.data);
    c.args(["--projection_dim", &p.to_string(), "--overwrite"]);
    if let Some(t) = threads {
        c.env("OMP_NUM_THREADS", t);
    }
    // Without network, huggingface_hub retries each lookup for ~45 s; the files are local.
    c.env("HF_HUB_OFFLINE", "1");
    if device == "cpu" {
        // Bergson picks a GPU whenever one is visible.
        c.env("CUDA_VISIBLE_DEVICES", "");
    }
    c
}

/// Max over rows of max|a - b| / max|b| between two indexes' gradients (same dtype and shape).
fn max_row_rel_err(a: &Path, b: &Path) -> f64 {
    let ia = bergson::index::GradientIndex::open(a).expect("our index");
    let ib = bergson::index::GradientIndex::open(b).expect("Python's index");
    assert_eq!(ia.info.grad_sizes, ib.info.grad_sizes, "grad_sizes differ");
    assert_eq!(ia.num_rows(), ib.num_rows(), "row counts differ");
    let mut worst = 0.0f64;
    let step = 64;
    let mut start = 0;
    while start < ia.num_rows() {
        let end = (start + step).min(ia.num_rows());
        let ra = ia.rows(start..end).unwrap().to_kind(tch::Kind::Double);
        let rb = ib.rows(start..end).unwrap().to_kind(tch::Kind::Double);
        let diff = (&ra - &rb).abs().amax([1i64].as_slice(), false);
        let scale = rb.abs().amax([1i64].as_slice(), false).clamp_min(1e-30);
        worst = worst.max((diff / scale).max().double_value(&[]));
        start = end;
    }
    worst
}
