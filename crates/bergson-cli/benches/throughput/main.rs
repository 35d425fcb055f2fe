//! Build throughput, side by side with Python Bergson 2.5.1 on the same machine and inputs.
//!
//! ```sh
//! cargo bench -p bergson-cli --bench throughput              # both workloads
//! BERGSON_PY=/path/to/python cargo bench ... -- --docs 800   # a Python with bergson 2.5.1
//! ```
//! Generates the workload (random weights, generated text; see `workload`), runs `bergson
//! build` from this repository and, when Python Bergson is installed, `bergson build` 2.5.1 on
//! the same files, checks that the indexes agree (max relative error per row <= 1e-4), and
//! prints wall time, tokens/s, peak RSS and the ratio. Flags: `--docs N` (default 400),
//! `--workload neox|llama|all`, `--threads N` (libtorch threads for both tools), `--keep DIR`,
//! `--device cpu|cuda` (a GPU needs the `cuda` feature: see scripts/bench-gpu.sh).

mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use workload::{Arch, Workload};

struct Run {
    seconds: f64,
    peak_rss_mb: f64,
}

fn main() {
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
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let python = find_python();
    if python.is_none() {
        println!("Python Bergson not found: set BERGSON_PY to a Python with `pip install bergson==2.5.1` (then `pip uninstall -y torchaudio`) to compare; measuring bergson-rs alone.");
    }
    let cases: Vec<(Arch, usize)> = match which.as_str() {
        "neox" => vec![(Arch::NeoX, 16)],
        "llama" => vec![(Arch::Llama, 0)],
        _ => vec![(Arch::NeoX, 16), (Arch::Llama, 0)],
    };
    println!(
        "machine: {} cores; libtorch threads: {}",
        num_cpus(),
        threads.as_deref().unwrap_or("default")
    );
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
        let ours = run(&ours_cmd(
            &w,
            &dir.join("rs"),
            p,
            threads.as_deref(),
            &device,
        ));
        report("bergson-rs", &ours, w.tokens);
        if let Some(py) = &python {
            let theirs = run(&python_cmd(
                py,
                &w,
                &dir.join("py"),
                p,
                threads.as_deref(),
                &device,
            ));
            report("bergson 2.5.1 (Python)", &theirs, w.tokens);
            let err = max_row_rel_err(&dir.join("rs"), &dir.join("py"));
            println!(
                "ratio: {:.2}x tokens/s, peak RSS {:.2}x; outputs agree: max row rel err {err:.2e} ({})",
                theirs.seconds / ours.seconds,
                ours.peak_rss_mb / theirs.peak_rss_mb,
                if err <= 1e-4 { "ok" } else { "MISMATCH" }
            );
        }
    }
    if keep.is_some() {
        println!("\nkept the workloads and indexes in {}", root.display());
    }
}

fn report(name: &str, r: &Run, tokens: usize) {
    println!(
        "  {name:<24} {:>8.1} s  {:>8.0} tokens/s  peak RSS {:>7.0} MiB",
        r.seconds,
        tokens as f64 / r.seconds,
        r.peak_rss_mb
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

/// Runs a command to completion, timing it and reading its peak RSS from `wait4`.
#[allow(clippy::zombie_processes)] // reaped by wait4, which clippy does not see
fn run(cmd: &Command) -> Run {
    let mut cmd = clone(cmd);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    let stderr = child.stderr;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is fully written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut text);
        }
        panic!(
            "{cmd:?} failed: {}",
            text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Run {
        seconds,
        peak_rss_mb: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn clone(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

/// A Python with bergson 2.5.1: `BERGSON_PY`, else `python3` if it imports bergson.
fn find_python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("BERGSON_PY")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("python3")])
        .collect();
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args([
                "-c",
                "import bergson, importlib.metadata as m; assert m.version('bergson') == '2.5.1'",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    })
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

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
