//! Fitting an EK-FAC Hessian (`bergson hessian --method kfac --ev_correction true`), side by
//! side with Python Bergson 2.5.1 on the same machine, model and data.
//!
//! ```sh
//! BERGSON_PY=/path/to/python cargo bench -p bergson-cli --bench hessian              # both
//! cargo bench -p bergson-cli --bench hessian -- --docs 200 --arch llama --keep /tmp/h
//! cargo bench -p bergson-cli --bench hessian -- --nproc 2        # 1 vs 2 processes, 1 thread each
//! ```
//! The workload is the throughput benchmark's (a random GPT-NeoX shaped like pythia-14m, or a
//! Llama of similar size, and `--docs` generated documents, default 200), fitted with dataset
//! labels (Bergson's sampled labels cannot be replayed) and `--projection_dim 0`. Reports wall
//! time and peak RSS of both tools, the ratio, and checks that the two fits agree: the raw
//! factor sums and the uncorrected eigenvalues within 1e-4 of each tensor's max |value|, and
//! `total_processed` exactly. Exits with status 1 when they differ. With `--nproc N` it instead
//! times our fit on one process and on N processes (`--nproc_per_node N`), one thread each, and
//! checks that the two fits agree the same way.

#[path = "../throughput/measure.rs"]
#[allow(dead_code)]
mod measure;
#[path = "../throughput/workload.rs"]
#[allow(dead_code)]
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bergson::index::factor_store::{self as store, read_store, read_total_processed};
use tch::Kind;

/// Largest relative difference at which the two fits agree.
const AGREEMENT: f64 = 1e-4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let docs: usize = arg("--docs").and_then(|v| v.parse().ok()).unwrap_or(200);
    let arch = match arg("--arch").as_deref() {
        Some("llama") => workload::Arch::Llama,
        _ => workload::Arch::NeoX,
    };
    let keep = arg("--keep").map(PathBuf::from);
    let nproc: Option<usize> = arg("--nproc").and_then(|v| v.parse().ok());
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let w = workload::Workload::generate(&root, arch, docs, 0);
    println!("machine: {} cores", measure::num_cpus());
    println!(
        "workload: {}, {} documents, {} tokens; EK-FAC fit, fp32, dataset labels",
        arch.describe(),
        w.docs,
        w.tokens
    );
    let flags = |run: &Path| -> Vec<String> {
        let mut v = vec![
            "hessian".to_string(),
            run.display().to_string(),
            "--model".into(),
            w.model.display().to_string(),
            "--dataset".into(),
            w.data.display().to_string(),
        ];
        v.extend(
            [
                "--method",
                "kfac",
                "--ev_correction",
                "true",
                "--projection_dim",
                "0",
                "--use_dataset_labels",
                "true",
                "--token_batch_size",
                "2048",
                "--overwrite",
                "true",
            ]
            .map(String::from),
        );
        v
    };
    if let Some(n) = nproc {
        return scaling(&root, n, &flags);
    }
    let ours_run = root.join("ours");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
    cmd.args(flags(&ours_run)).arg("--quiet");
    let ours = measure::run(&cmd);
    println!(
        "bergson-rs:     {:8.2} s  peak RSS {:8.1} MiB",
        ours.seconds, ours.peak_rss_mb
    );
    let mut ok = true;
    match measure::find_python() {
        None => println!("Python Bergson not found: set BERGSON_PY to compare."),
        Some(py) => {
            let theirs_run = root.join("python");
            let mut cmd = Command::new(&py);
            cmd.args(["-m", "bergson"])
                .args(flags(&theirs_run))
                .env("HF_HUB_OFFLINE", "1")
                .env("CUDA_VISIBLE_DEVICES", "");
            let theirs = measure::run(&cmd);
            println!(
                "Python Bergson: {:8.2} s  peak RSS {:8.1} MiB",
                theirs.seconds, theirs.peak_rss_mb
            );
            println!("speed-up: {:.2}x", theirs.seconds / ours.seconds);
            ok = agree(&ours_run, &theirs_run);
        }
    }
    if keep.is_some() {
        println!("kept the workload in {}", root.display());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the two fits differ; the timings compare different computations");
        ExitCode::FAILURE
    }
}

/// Times our fit on one process and on `n`, one thread each, and checks they agree.
fn scaling(root: &Path, n: usize, flags: &dyn Fn(&Path) -> Vec<String>) -> ExitCode {
    let time = |run: &Path, procs: usize| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
        cmd.args(flags(run))
            .args(["--nproc_per_node", &procs.to_string(), "--quiet"])
            .env("OMP_NUM_THREADS", "1");
        measure::run(&cmd)
    };
    let one = time(&root.join("one"), 1);
    println!(
        "1 process:   {:8.2} s  peak RSS {:8.1} MiB",
        one.seconds, one.peak_rss_mb
    );
    let many = time(&root.join("many"), n);
    println!(
        "{n} processes: {:8.2} s  peak RSS {:8.1} MiB (launcher's own)",
        many.seconds, many.peak_rss_mb
    );
    println!("speed-up: {:.2}x", one.seconds / many.seconds);
    if agree(&root.join("many"), &root.join("one")) {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the two fits differ");
        ExitCode::FAILURE
    }
}

/// Whether the two runs' basis-independent stores agree.
fn agree(ours: &Path, theirs: &Path) -> bool {
    let mut worst = 0f64;
    for name in [
        store::ACTIVATION,
        store::GRADIENT,
        store::EIGENVALUE,
        store::FACTOR_EIG_A,
        store::FACTOR_EIG_G,
    ] {
        let a = read_store(theirs, name).unwrap().expect("python store");
        let b = read_store(ours, name).unwrap().expect("our store");
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
            let scale = f64::try_from(x.abs().max()).unwrap().max(1e-30);
            worst = worst.max(f64::try_from((x - y).abs().max()).unwrap() / scale);
        }
    }
    let same_total = read_total_processed(ours).unwrap() == read_total_processed(theirs).unwrap();
    println!(
        "agreement: worst relative difference {worst:.1e}, total_processed {}",
        if same_total { "equal" } else { "DIFFERS" }
    );
    worst <= AGREEMENT && same_total
}
