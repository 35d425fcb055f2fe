//! Preconditioned attribution against Python Bergson 2.5.1's own runs
//! (tests/fixtures/scripts/make_precond_refs.py): Hessians fitted by `bergson hessian` (K-FAC
//! with EK-FAC correction, autocorrelation), mixed by `bergson mix`, and the `build`, `reduce`,
//! `score` and `query` runs that read them with `--hessian_path` and the inversion flags.
//!
//! Our binary reruns every step of the manifest with the same flags against the same
//! reference Hessians and query indexes, and must give:
//! * `score`: every score column within 1e-4 of the column's max |value|;
//! * `build`/`reduce` (preconditioned stored rows): every row within 1e-4 of its max |value|;
//! * `mix`: the mixed Hessian within 1e-6 of each matrix's max |value|;
//! * `query`: the `--record` rows in the same order (exact ties may swap), scores within 1e-4
//!   of the largest |score| of that query and direction;
//! * a step Bergson refuses: exit status 2 and one line on stderr, no output.
//!
//! `BERGSON_PRECOND_CASES=a,b` limits the run to steps whose output is named a or b.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bergson::index::hessian_store::read_dense;
use bergson::index::GradientIndex;
use serde_json::Value as Json;
use tch::Kind;

mod common;
use common::{compare_score_stores, copy_dir, repo_root as root, BIN};

const RTOL: f64 = 1e-4;

fn refs() -> PathBuf {
    root().join("tests/fixtures/bergson_precond")
}

struct Step {
    kind: String,
    command: String,
    path: String,
    index: String,
    args: Vec<String>,
    error: Option<String>,
}

fn manifest() -> (Vec<String>, Vec<Step>) {
    let m = common::read_json(&refs().join("manifest.json"));
    let steps = m["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| Step {
            kind: s["kind"].as_str().unwrap().to_string(),
            command: s["command"].as_str().unwrap().to_string(),
            path: s["path"].as_str().unwrap().to_string(),
            index: s["index"].as_str().unwrap_or_default().to_string(),
            args: common::json_strings(&s["args"]),
            error: s.get("error").and_then(Json::as_str).map(str::to_string),
        })
        .collect();
    (common::json_strings(&m["path_flags"]), steps)
}

/// Flags with repository paths made absolute; `--output_path` moved into `tmp`.
fn absolute(args: &[String], path_flags: &[String], tmp: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if path_flags.contains(a) {
            let v = it.next().expect("a path flag has a value");
            let p = if a == "--output_path" {
                tmp.join(Path::new(v).file_name().unwrap())
            } else {
                root().join(v)
            };
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}

fn bergson(args: &[String], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .current_dir(root())
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bergson");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// Max over rows of max |ours − theirs| / max |theirs| in the row.
fn compare_rows(ours: &Path, theirs: &Path) -> Result<f64, String> {
    let a = GradientIndex::open(ours).map_err(|e| e.to_string())?;
    let b = GradientIndex::open(theirs).expect("reference index");
    if a.info.grad_sizes != b.info.grad_sizes || a.num_rows() != b.num_rows() {
        return Err("different modules or row counts".into());
    }
    let x = a.rows(0..a.num_rows()).unwrap().to_kind(Kind::Double);
    let y = b.rows(0..b.num_rows()).unwrap().to_kind(Kind::Double);
    let scale = y.abs().amax([1i64].as_slice(), true).clamp_min(1e-30);
    Ok(((x - &y).abs() / scale).max().double_value(&[]))
}

/// Max over modules of max |ours − theirs| / max |theirs|, same modules in the same order.
fn compare_hessians(ours: &Path, theirs: &Path) -> Result<f64, String> {
    let a = read_dense(ours).map_err(|e| e.to_string())?;
    let b = read_dense(theirs).expect("reference Hessian");
    let names = |d: &bergson::index::hessian_store::DenseHessian| -> Vec<String> {
        d.hessians.iter().map(|(n, _)| n.clone()).collect()
    };
    if names(&a) != names(&b) || a.eigen.len() != b.eigen.len() {
        return Err("different modules".into());
    }
    let mut worst = 0f64;
    for ((_, x), (_, y)) in a.hessians.iter().zip(&b.hessians) {
        let scale = y.abs().max().double_value(&[]).max(1e-30);
        worst = worst.max((x - y).abs().max().double_value(&[]) / scale);
    }
    Ok(worst)
}

/// `(query, direction, index, score)` of a `--record` CSV.
fn records(text: &str) -> Vec<(String, String, i64, f64)> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    r.records()
        .map(|row| {
            let row = row.unwrap();
            (
                row[0].to_string(),
                row[1].to_string(),
                row[3].parse().unwrap(),
                row[4].parse().unwrap(),
            )
        })
        .collect()
}

fn compare_records(ours: &str, theirs: &str) -> Result<f64, String> {
    let (a, b) = (records(ours), records(theirs));
    if a.len() != b.len() {
        return Err(format!("{} rows vs {}", a.len(), b.len()));
    }
    let mut worst = 0f64;
    for (i, y) in b.iter().enumerate() {
        let group: Vec<&(String, String, i64, f64)> =
            b.iter().filter(|r| (&r.0, &r.1) == (&y.0, &y.1)).collect();
        let scale = group.iter().map(|r| r.3.abs()).fold(1e-30, f64::max);
        let x = &a[i];
        if (&x.0, &x.1) != (&y.0, &y.1) {
            return Err(format!("row {i}: {:?} vs {:?}", (&x.0, &x.1), (&y.0, &y.1)));
        }
        // A different row is allowed only as an exact tie (same score).
        if x.2 != y.2 && (x.3 - y.3).abs() > 1e-6 * scale {
            return Err(format!("row {i}: result {} vs {}", x.2, y.2));
        }
        worst = worst.max((x.3 - y.3).abs() / scale);
    }
    Ok(worst)
}

fn name_of(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".csv").to_string())
        .unwrap_or_default()
}

#[test]
fn preconditioned_runs_match_python_bergson() {
    let (path_flags, steps) = manifest();
    let only: Option<Vec<String>> = std::env::var("BERGSON_PRECOND_CASES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut ran = 0;
    for step in &steps {
        let name = if step.path.is_empty() {
            format!("{}_refused", step.command)
        } else {
            name_of(&step.path)
        };
        if only.as_ref().is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        if step.kind == "hessian" || (step.kind == "query_index" && step.error.is_none()) {
            // Reference inputs; preconditioned query indexes are compared like builds.
            if !step.args.iter().any(|a| a == "--hessian_path") {
                continue;
            }
        }
        ran += 1;
        let args = absolute(&step.args, &path_flags, tmp.path());
        let out_dir = tmp.path().join(&name);
        let (mut cmd, stdin): (Vec<String>, Option<Vec<u8>>) = match step.kind.as_str() {
            "mix" => (vec!["mix".into()], None),
            "query" => {
                let index = tmp.path().join(format!("index_{name}"));
                copy_dir(&refs().join("queries").join(&step.index), &index);
                let prompts = std::fs::read(refs().join("query/prompts.txt")).unwrap();
                let record = tmp.path().join(format!("{name}.csv"));
                (
                    vec![
                        "query".into(),
                        "--index".into(),
                        index.to_string_lossy().into_owned(),
                        "--record".into(),
                        record.to_string_lossy().into_owned(),
                    ],
                    Some(prompts),
                )
            }
            _ => (
                vec![step.command.clone(), out_dir.to_string_lossy().into_owned()],
                None,
            ),
        };
        cmd.extend(args);
        if step.kind != "mix" {
            cmd.extend(["--num_threads".into(), "1".into()]);
        }
        cmd.push("--quiet".into());
        let out = bergson(&cmd, stdin.as_deref());
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(theirs) = &step.error {
            let one_line = stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 2;
            if out.status.code() != Some(2) || !one_line || out_dir.exists() {
                failures.push(format!(
                    "{name}: Bergson refuses it ({theirs}); we exited {:?} with: {stderr}",
                    out.status.code()
                ));
            } else {
                eprintln!("{name:28} refused as by Bergson: {stderr}");
            }
            continue;
        }
        if !out.status.success() {
            failures.push(format!("{name}: failed: {stderr}"));
            continue;
        }
        let theirs = root().join(&step.path);
        let result = match step.kind.as_str() {
            "score" => compare_score_stores(&out_dir, &theirs).map(|(worst, _)| worst),
            "build" | "query_index" => compare_rows(&out_dir, &theirs),
            "mix" => compare_hessians(&tmp.path().join(&name), &theirs).and_then(|e| {
                if e < 1e-6 {
                    Ok(0.0)
                } else {
                    Err(format!("error {e:.2e}"))
                }
            }),
            "query" => compare_records(
                &std::fs::read_to_string(tmp.path().join(format!("{name}.csv"))).unwrap(),
                &std::fs::read_to_string(&theirs).unwrap(),
            ),
            other => Err(format!("unknown step kind {other}")),
        };
        match result {
            Ok(err) if err <= RTOL => eprintln!("{name:28} max relative error {err:.2e}"),
            Ok(err) => failures.push(format!("{name}: max relative error {err:.2e} > {RTOL}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(ran > 0, "no step selected");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A copy of the reference K-FAC Hessian in `tmp`, to damage.
fn kfac_copy(tmp: &Path) -> PathBuf {
    let dst = tmp.join("kfac");
    copy_dir(&refs().join("hessians/kfac"), &dst);
    dst
}

/// `bergson score` of the reference full-gradient query with `extra` flags; must be refused
/// with exit status 2 and one line that contains every one of `needles`.
fn assert_refused(tmp: &Path, extra: &[&str], needles: &[&str]) {
    let run = tmp.join("run");
    let mut args: Vec<String> = vec!["score".into(), run.to_string_lossy().into_owned()];
    let data = root().join("tests/fixtures/bergson/data/text.jsonl");
    let model = root().join("tests/fixtures/models/gpt_neox");
    let query = refs().join("queries/q_full");
    for a in [
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--quiet",
    ] {
        args.push(a.into());
    }
    // Full gradients of the reference query's modules unless the case says otherwise.
    if !extra.contains(&"--query_path") {
        for a in [
            "--query_path",
            query.to_str().unwrap(),
            "--projection_dim",
            "0",
            "--filter_modules",
            "layers.0.*,*.query_key_value,*.dense_h_to_4h",
        ] {
            args.push(a.into());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = bergson(&args, None);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{extra:?}: {stderr:?} lacks {n:?}");
    }
    assert!(!run.exists() && !tmp.join("run.part").exists());
}

#[test]
fn damaged_or_mismatched_hessians_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let h = kfac_copy(tmp.path());
    let hp = h.to_str().unwrap();
    // A damping no inversion can use.
    for bad in ["nan", "-0.1", "inf"] {
        assert_refused(
            tmp.path(),
            &["--hessian_path", hp, "--damping_factor", bad],
            &["--damping_factor", "0 or more"],
        );
    }
    // factored_tikhonov needs uncorrected eigenvalues.
    assert_refused(
        tmp.path(),
        &[
            "--hessian_path",
            hp,
            "--ev_correction",
            "true",
            "--inversion",
            "factored_tikhonov",
        ],
        &["factored_tikhonov", "--ev_correction"],
    );
    // A factored Hessian needs full gradients.
    let q4 = refs().join("queries/q_p4");
    assert_refused(
        tmp.path(),
        &[
            "--hessian_path",
            hp,
            "--projection_dim",
            "4",
            "--query_path",
            q4.to_str().unwrap(),
        ],
        &["--projection_dim 0", "factored"],
    );
    // A dense Hessian projected differently from the run.
    let auto = refs().join("hessians/auto");
    assert_refused(
        tmp.path(),
        &["--hessian_path", auto.to_str().unwrap()],
        &["The Hessian", "projection_dim"],
    );
    // A Hessian fitted on another model: its `layers.1.attention.dense` factors are 16 wide
    // instead of 32; the module, both widths and the model it was fitted on are named.
    let other = tmp.path().join("other");
    copy_dir(&h, &other);
    let module = "layers.1.attention.dense";
    for (sub, rows, cols) in [
        ("eigen_activation_sharded", 16, 16),
        ("eigenvalue_sharded", 32, 16),
    ] {
        let shard = other.join(sub).join("shard_0.safetensors");
        let mut tensors = tch::Tensor::read_safetensors(&shard).unwrap();
        for (n, t) in tensors.iter_mut() {
            if n == module {
                *t = t.narrow(0, 0, rows).narrow(1, 0, cols).contiguous();
            }
        }
        let named: Vec<(&str, &tch::Tensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::Tensor::write_safetensors(&named, &shard).unwrap();
    }
    assert_refused(
        tmp.path(),
        &["--hessian_path", other.to_str().unwrap()],
        &[module, "512", "1024", "gpt_neox"],
    );
    // NaN in a factor names the module.
    let shard = h.join("eigenvalue_sharded/shard_0.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&shard).unwrap();
    let victim = tensors[0].0.clone();
    let _ = tensors[0].1.fill_(f64::NAN);
    let refs_: Vec<(&str, &tch::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::Tensor::write_safetensors(&refs_, &shard).unwrap();
    assert_refused(tmp.path(), &["--hessian_path", hp], &["NaN", &victim]);
    // A partial store: the eigenvalues are gone.
    std::fs::remove_dir_all(h.join("eigenvalue_sharded")).unwrap();
    assert_refused(
        tmp.path(),
        &["--hessian_path", hp],
        &["eigenvalue_sharded/ is missing"],
    );
    // A truncated shard.
    let ev = h.join("eigen_activation_sharded/shard_0.safetensors");
    let bytes = std::fs::read(&ev).unwrap();
    std::fs::write(&ev, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        tmp.path(),
        &["--hessian_path", hp, "--ev_correction", "true"],
        &["cannot be read"],
    );
}

#[test]
fn mix_refuses_other_methods_and_projections() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixed");
    let run = |q: &Path, i: &Path| {
        bergson(
            &[
                "mix".into(),
                "--query_path".into(),
                q.to_string_lossy().into_owned(),
                "--index_path".into(),
                i.to_string_lossy().into_owned(),
                "--output_path".into(),
                out.to_string_lossy().into_owned(),
            ],
            None,
        )
    };
    let (kfac, auto) = (refs().join("hessians/kfac"), refs().join("hessians/auto"));
    let o = run(&kfac, &auto);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("--method kfac") && e.trim().lines().count() == 1,
        "{e}"
    );
    // The same Hessian with another projection seed recorded.
    let other = tmp.path().join("auto_seed");
    copy_dir(&auto, &other);
    let cfg = other.join("processor_config.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("projection_seed: null", "projection_seed: 5");
    std::fs::write(&cfg, text).unwrap();
    let o = run(&auto, &other);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("projection_seed"), "{e}");
    assert!(!out.join("hessians.pth").exists());
}
