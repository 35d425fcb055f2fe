//! Asking an index, side by side with Python Bergson 2.5.1 on the same machine and inputs.
//!
//! ```sh
//! BERGSON_PY=/path/to/python cargo bench -p bergson-cli --bench query              # both
//! cargo bench -p bergson-cli --bench query -- --workload search --rows 200000 --prompts 20
//! cargo bench -p bergson-cli --bench query -- --workload score --docs 400
//! ```
//! * `search`: an index of `--rows` rows (default 200,000) x 2,048 float32 columns (the tiny
//!   fixture GPT-NeoX's 8 modules at `--projection_dim 16`: 1.6 GB; the values are seeded
//!   random, the layout, processor and config those of a real build) over a generated corpus,
//!   and `--prompts` prompts piped into `bergson query --top_k 10 --record`. Reports wall time,
//!   peak anonymous memory (RssAnon, sampled) of both tools, checks that the records agree
//!   (same rows, allowing exact ties; scores within 1e-4), and times the library's search pass
//!   alone against this machine's memory-read bandwidth over the same bytes.
//! * `score`: `bergson score` of the throughput benchmark's GPT-NeoX workload (`--docs`,
//!   default 400) against a 20-row query index, both tools, outputs compared (1e-4), wall time
//!   and the ratio without start-up (a one-document run).
//!
//! Exits with status 1 when the two tools' outputs differ.

#[path = "../throughput/measure.rs"]
#[allow(dead_code)]
mod measure;
#[path = "../throughput/workload.rs"]
#[allow(dead_code)]
mod workload;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bergson::query::{Attributor, AttributorOptions};
use tch::{Device, Kind, Tensor};

/// Largest relative score difference at which the two tools agree.
const AGREEMENT: f64 = 1e-4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let which = arg("--workload").unwrap_or_else(|| "all".into());
    let rows: usize = arg("--rows")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let prompts: usize = arg("--prompts").and_then(|v| v.parse().ok()).unwrap_or(20);
    let docs: usize = arg("--docs").and_then(|v| v.parse().ok()).unwrap_or(400);
    let keep = arg("--keep").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let python = measure::find_python();
    if python.is_none() {
        println!(
            "Python Bergson not found: set BERGSON_PY to compare; measuring bergson-rs alone."
        );
    }
    println!("machine: {} cores", measure::num_cpus());
    let mut ok = true;
    if which == "all" || which == "search" {
        ok &= search(&root.join("search"), rows, prompts, python.as_deref());
    }
    if which == "all" || which == "score" {
        ok &= score(&root.join("score"), docs, python.as_deref());
    }
    if keep.is_some() {
        println!("\nkept the workloads in {}", root.display());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: the two tools' outputs differ; the timings compare different computations"
        );
        ExitCode::FAILURE
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bergson")
}

/// A search index of `rows` random rows with a real build's layout, over a generated corpus.
fn make_search_index(dir: &Path, rows: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let model = repo().join("tests/fixtures/models/gpt_neox");
    let corpus = dir.join("corpus.jsonl");
    let mut text = String::new();
    for doc in workload::ShortDocuments::new(3).take(rows) {
        text.push_str(&serde_json::json!({ "text": doc }).to_string());
        text.push('\n');
    }
    std::fs::write(&corpus, &text).unwrap();
    let head: String = text.lines().take(8).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("head.jsonl"), head).unwrap();
    let index = dir.join("index");
    let status = Command::new(bin())
        .arg("build")
        .arg(&index)
        .arg("--model")
        .arg(&model)
        .arg("--dataset")
        .arg(dir.join("head.jsonl"))
        .args(["--projection_dim", "16", "--overwrite", "--quiet"])
        .status()
        .unwrap();
    assert!(status.success(), "building the layout index failed");
    // The real build's files, stretched to `rows` rows of seeded random values.
    let config = std::fs::read_to_string(index.join("config.yaml")).unwrap();
    let config = config.replace(
        &dir.join("head.jsonl").display().to_string(),
        &corpus.display().to_string(),
    );
    std::fs::write(index.join("config.yaml"), config).unwrap();
    let mut info = bergson::index::IndexInfo::read(&index).unwrap();
    let width = info.row_len();
    info.num_items = rows;
    info.num_grads = rows;
    info.write(&index).unwrap();
    let mut file = std::fs::File::create(index.join("gradients.bin")).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::with_capacity(width * 4 * 1024);
    for r in 0..rows {
        for _ in 0..width {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Roughly normal: sum of two uniforms, centred.
            let u = ((state >> 40) as f32 / (1u64 << 24) as f32)
                + ((state & 0xFF_FFFF) as f32 / (1u64 << 24) as f32)
                - 1.0;
            buf.extend_from_slice(&u.to_le_bytes());
        }
        if r % 1024 == 1023 || r + 1 == rows {
            file.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    index
}

/// Peak RssAnon (MiB) of a child process, sampled every 20 ms until it exits.
struct Sampled {
    seconds: f64,
    peak_anon_mb: f64,
    stdout: String,
}

fn run_sampled(mut cmd: Command, stdin: &[u8]) -> Sampled {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let mut peak = 0f64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
            {
                peak = peak.max(kb / 1024.0);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?} failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    Sampled {
        seconds: start.elapsed().as_secs_f64(),
        peak_anon_mb: peak,
        stdout: reader.join().unwrap(),
    }
}

/// Reads a file once so its pages are cached (both tools then start from the same state).
fn warm(path: &Path) {
    let _ = std::fs::read(path);
}

fn search(dir: &Path, rows: usize, prompts: usize, python: Option<&Path>) -> bool {
    let index = make_search_index(dir, rows);
    let bytes = std::fs::metadata(index.join("gradients.bin"))
        .unwrap()
        .len();
    let mut lines: Vec<String> = workload::ShortDocuments::new(11)
        .filter(|d| d.split(' ').count() >= 4)
        .take(prompts)
        .collect();
    lines.push("exit".into());
    let input = lines.join("\n") + "\n";
    println!(
        "\nsearch: {rows} rows x 2048 float32 ({:.2} GB), {prompts} prompts, --top_k 10",
        bytes as f64 / 1e9
    );
    let run = |cmd: Command, label: &str| {
        warm(&index.join("gradients.bin"));
        let r = run_sampled(cmd, input.as_bytes());
        println!(
            "  {label:<34} {:>7.1} s  peak anonymous memory {:>6.0} MiB ({:.0}% of the index)",
            r.seconds,
            r.peak_anon_mb,
            100.0 * r.peak_anon_mb * 1048576.0 / bytes as f64
        );
        r
    };
    let ours_cmd = |record: &Path| {
        let mut c = Command::new(bin());
        c.args(["query", "--index"])
            .arg(&index)
            .args(["--top_k", "10", "--record"])
            .arg(record)
            .env("HF_HUB_OFFLINE", "1");
        c
    };
    let _ = std::fs::remove_file(index.join(bergson::index::row_norms::ROW_NORMS));
    let rs_csv = dir.join("rs.csv");
    let _ = std::fs::remove_file(&rs_csv);
    let first = run(ours_cmd(&rs_csv), "bergson-rs (first: row norms)");
    let rs2 = dir.join("rs2.csv");
    let _ = std::fs::remove_file(&rs2);
    let ours = run(ours_cmd(&rs2), "bergson-rs (norms cached)");
    assert_eq!(first.stdout, ours.stdout, "the two sessions of ours differ");

    // The library's search pass alone, against the memory-read bandwidth of the same bytes.
    let attr = Attributor::open(
        &index,
        AttributorOptions {
            unit_norm: true,
            ..AttributorOptions::default()
        },
    )
    .unwrap();
    let bandwidth = read_bandwidth(&index.join("gradients.bin"));
    let peak = fma_peak_gflops();
    println!(
        "  machine: memory-read bandwidth {:.2} GB/s (two threads, cached index), float32 FMA peak {peak:.0} GFLOP/s (two threads, 12 independent AVX2 chains)",
        bandwidth / 1e9
    );
    for nq in [1usize, 5, prompts] {
        tch::manual_seed(0);
        let queries: Vec<(String, Tensor)> = attr
            .index()
            .info
            .grad_sizes
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    Tensor::randn([nq as i64, *s as i64], (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        let mut pass = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            attr.search_both(&queries, Some(10), None, (true, true))
                .unwrap();
            pass = pass.min(t.elapsed().as_secs_f64());
        }
        let achieved = bytes as f64 / pass;
        let width = attr.index().row_len() as f64;
        let gflops = rows as f64 * width * nq as f64 * 2.0 / pass / 1e9;
        println!(
            "  search pass (library, top+bottom, {nq:>2} queries): {pass:.3} s = {:.2} GB/s ({:.0}% of the read bandwidth), {gflops:.0} GFLOP/s ({:.0}% of the FMA peak); roofline floor {:.3} s",
            achieved / 1e9,
            100.0 * achieved / bandwidth,
            100.0 * gflops / peak,
            (bytes as f64 / bandwidth).max(rows as f64 * width * nq as f64 * 2.0 / (peak * 1e9))
        );
    }

    let Some(py) = python else { return true };
    let py_csv = dir.join("py.csv");
    let _ = std::fs::remove_file(&py_csv);
    let mut c = Command::new(py);
    c.args(["-m", "bergson", "query", "--index"])
        .arg(&index)
        .args(["--top_k", "10", "--record"])
        .arg(&py_csv)
        .env("HF_HUB_OFFLINE", "1")
        .env("CUDA_VISIBLE_DEVICES", "");
    let theirs = run(c, "bergson 2.5.1 (Python)");
    let err = compare_records(&rs2, &py_csv);
    let agree = err <= AGREEMENT;
    println!(
        "  ratio: {:.2}x wall (first run {:.2}x); peak anonymous memory {:.2}x; records agree: max score rel err {err:.2e} ({})",
        theirs.seconds / ours.seconds,
        theirs.seconds / first.seconds,
        ours.peak_anon_mb / theirs.peak_anon_mb,
        if agree { "ok" } else { "MISMATCH" }
    );
    agree
}

/// The float32 multiply-add rate two threads reach (GFLOP/s, best of three): each thread runs
/// 12 independent 8-lane FMA chains, enough to hide the FMA latency on current x86 cores, so
/// this is the arithmetic ceiling any dot-product kernel on this machine can approach.
fn fma_peak_gflops() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        const STEPS: usize = 50_000_000;
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    // SAFETY: the features were detected above.
                    s.spawn(|| std::hint::black_box(unsafe { fma_chains(STEPS) }));
                }
            });
            let flops = (2 * STEPS * 12 * 8 * 2) as f64; // threads x steps x chains x lanes x (mul, add)
            best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
        }
        return best;
    }
    f64::NAN
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..steps {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut sum = _mm256_setzero_ps();
    for v in acc {
        sum = _mm256_add_ps(sum, v);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out.iter().sum()
}

/// Bytes per second two threads read a cached file at (the best of three).
fn read_bandwidth(path: &Path) -> f64 {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: read-only map of a file nothing writes while the benchmark runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let words: &[u64] =
        unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u64, map.len() / 8) };
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let half = words.len() / 2;
        let sum: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = [&words[..half], &words[half..]]
                .into_iter()
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
                .collect();
            parts
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.max(map.len() as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Max relative score error between two query records (rows allowing exact ties).
fn compare_records(ours: &Path, theirs: &Path) -> f64 {
    let read = |p: &Path| -> Vec<(String, String, i64, f64)> {
        csv::Reader::from_path(p)
            .unwrap()
            .records()
            .map(|r| {
                let r = r.unwrap();
                (
                    r[0].to_string(),
                    r[1].to_string(),
                    r[3].parse().unwrap(),
                    r[4].parse().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (read(ours), read(theirs));
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().map(|r| r.3.abs()).fold(1e-12, f64::max);
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        if (&x.0, &x.1) != (&y.0, &y.1) {
            return f64::INFINITY;
        }
        worst = worst.max((x.3 - y.3).abs() / scale);
        if x.2 != y.2 && (x.3 - y.3).abs() / scale > AGREEMENT {
            return f64::INFINITY;
        }
    }
    worst
}

fn score(dir: &Path, docs: usize, python: Option<&Path>) -> bool {
    let w = workload::Workload::generate(dir, workload::Arch::NeoX, docs, 0);
    let queries = dir.join("queries.jsonl");
    let text = std::fs::read_to_string(&w.data).unwrap();
    std::fs::write(
        &queries,
        text.lines()
            .take(20)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let one = w.first_document(&dir.join("one_doc.jsonl"));
    let q = dir.join("query_index");
    let status = Command::new(bin())
        .arg("build")
        .arg(&q)
        .arg("--model")
        .arg(&w.model)
        .arg("--dataset")
        .arg(&queries)
        .args(["--projection_dim", "16", "--overwrite", "--quiet"])
        .status()
        .unwrap();
    assert!(status.success(), "query index build failed");
    println!(
        "\nscore: {} docs, {} tokens, GPT-NeoX 6x128 (pythia-14m shape), 20 queries, --projection_dim 16",
        w.docs, w.tokens
    );
    let cmd = |program: &Path, python: bool, data: &Path, out: &Path| {
        let mut c = Command::new(program);
        if python {
            c.args(["-m", "bergson"]);
            c.env("HF_HUB_OFFLINE", "1").env("CUDA_VISIBLE_DEVICES", "");
        }
        c.arg("score")
            .arg(out)
            .arg("--query_path")
            .arg(&q)
            .arg("--model")
            .arg(&w.model)
            .arg("--dataset")
            .arg(data)
            .args(["--projection_dim", "16", "--overwrite"]);
        if !python {
            c.arg("--quiet");
        }
        c
    };
    let side = |program: &Path, python: bool, label: &str| {
        let full = measure::run(&cmd(program, python, &w.data, &dir.join(label)));
        let start = measure::run(&cmd(
            program,
            python,
            &one.data,
            &dir.join(format!("{label}-one")),
        ));
        println!(
            "  {:<24} {:>7.1} s  {:>8.0} tokens/s  peak RSS {:>6.0} MiB; start-up (one document) {:.2} s, {:>8.0} tokens/s without it",
            if python { "bergson 2.5.1 (Python)" } else { "bergson-rs" },
            full.seconds,
            w.tokens as f64 / full.seconds,
            full.peak_rss_mb,
            start.seconds,
            w.tokens as f64 / (full.seconds - start.seconds).max(1e-9)
        );
        (full, start)
    };
    let (ours, ours_start) = side(Path::new(bin()), false, "rs");
    let Some(py) = python else { return true };
    let (theirs, theirs_start) = side(py, true, "py");
    let a = bergson::index::score_store::ScoreStore::open(&dir.join("rs")).unwrap();
    let b = bergson::index::score_store::ScoreStore::open(&dir.join("py")).unwrap();
    let (va, _) = a.values().unwrap();
    let (vb, _) = b.values().unwrap();
    let scale = vb.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let err = va
        .iter()
        .zip(&vb)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale));
    let agree = va.len() == vb.len() && err <= AGREEMENT;
    println!(
        "  ratio: {:.2}x wall, {:.2}x without start-up; scores agree: max rel err {err:.2e} ({})",
        theirs.seconds / ours.seconds,
        (theirs.seconds - theirs_start.seconds) / (ours.seconds - ours_start.seconds).max(1e-9),
        if agree { "ok" } else { "MISMATCH" }
    );
    agree
}
