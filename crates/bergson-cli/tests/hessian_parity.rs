//! Parity with Python Bergson 2.5.1's `bergson hessian`.
//!
//! tests/fixtures/bergson_hessian/ holds run directories that the real Bergson CLI wrote
//! (tests/fixtures/scripts/make_hessian_refs.py, dataset labels, two modules of the tiny
//! gpt_neox and llama fixtures) and a manifest of each case's flags. This test runs OUR binary
//! with the same flags and compares, within each case's `rtol` (1e-4; errors relative to the
//! tensor's max |value|):
//!
//! * the set of files, `total_processed.pt` exactly, config.yaml's steps (but `run_path`);
//! * the basis-independent quantities: the raw factor sums, every eigenvalue store, and each
//!   factor rebuilt from its eigendecomposition, `Q diag(λ) Qᵀ`;
//! * the eigenvectors up to sign, where the eigenvalue is separated from its neighbours by at
//!   least 1% of the largest (elsewhere the basis is not unique and only the rebuilt factor
//!   can be compared);
//! * EK-FAC's corrected eigenvalues through the matrix they define,
//!   `H = (Q_G ⊗ Q_A) diag(Λ) (Q_G ⊗ Q_A)ᵀ`, applied to random `[O, I]` probes (`Λ` alone is
//!   tied to a basis that is ambiguous in degenerate eigenspaces);
//! * a dense (autocorrelation) Hessian's `hessians.pth` and the eigenvalues of
//!   `hessians_eigen.pth`, its eigenvectors through `V diag(λ) Vᵀ`, processor_config.yaml;
//! * a case Bergson rejects is rejected by us: exit status 2, one line, no run directory.
//!
//! `BERGSON_HESSIAN_CASES=a,b` limits the run to those cases.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bergson::index::factor_store::{self as store, read_store, read_total_processed};
use bergson::pickle::{load, Value};
use serde_json::Value as Json;
use tch::{Kind, Tensor};

mod common;
use common::{repo_root, BIN};

fn refs_dir() -> PathBuf {
    repo_root().join("tests/fixtures/bergson_hessian")
}

struct Case {
    name: String,
    args: Vec<String>,
    rtol: f64,
    error: Option<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(refs_dir().join("manifest.json")).expect("manifest.json");
    let m: Json = serde_json::from_str(&text).expect("manifest is JSON");
    let only: Option<BTreeSet<String>> = std::env::var("BERGSON_HESSIAN_CASES")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let all: Vec<Case> = m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            args: c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect(),
            rtol: c["rtol"].as_f64().unwrap(),
            error: c.get("error").and_then(Json::as_str).map(str::to_string),
        })
        .filter(|c| only.as_ref().is_none_or(|o| o.contains(&c.name)))
        .collect();
    assert!(!all.is_empty(), "no case selected");
    all
}

/// Runs our `bergson hessian` from the repository root (the manifest's paths are relative
/// to it).
fn bergson_hessian(run: &Path, args: &[String]) -> Output {
    Command::new(BIN)
        .current_dir(repo_root())
        .arg("hessian")
        .arg(run)
        .args(args)
        .args(["--quiet", "--num_threads", "1"])
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run bergson")
}

fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// `max |x - y| / max |x|`, in float64.
fn rel_err(theirs: &Tensor, ours: &Tensor) -> f64 {
    let (x, y) = (theirs.to_kind(Kind::Double), ours.to_kind(Kind::Double));
    let scale = f64::try_from(x.abs().max()).unwrap().max(1e-30);
    f64::try_from((x - y).abs().max()).unwrap() / scale
}

/// What one case measured, worst over modules.
struct Report {
    case: String,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, what: &str, err: f64, tol: f64) {
        // NaN fails too.
        if err.is_nan() || err > tol {
            self.failures.push(format!(
                "{}: {what}: error {err:.2e} > {tol:.0e}",
                self.case
            ));
        }
    }
}

fn config_steps(run: &Path) -> Json {
    let text = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    let mut doc: Json = serde_saphyr::from_str(&text).unwrap();
    let step = &mut doc["steps"][0]["hessian"]["index_cfg"];
    step.as_object_mut().unwrap().remove("run_path");
    doc["steps"].take()
}

fn store(run: &Path, name: &str) -> Vec<(String, Tensor)> {
    read_store(run, name)
        .unwrap()
        .unwrap_or_else(|| panic!("{} has no {name}", run.display()))
}

/// Compares two stores tensor by tensor (same modules, dtypes and shapes).
fn compare_store(ours: &Path, theirs: &Path, name: &str, r: &mut Report, tol: f64) {
    let (a, b) = (store(theirs, name), store(ours, name));
    let keys = |s: &[(String, Tensor)]| s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    if keys(&a) != keys(&b) {
        r.failures.push(format!(
            "{}: {name}: modules {:?} vs ours {:?}",
            r.case,
            keys(&a),
            keys(&b)
        ));
        return;
    }
    for ((k, x), (_, y)) in a.iter().zip(&b) {
        if x.kind() != y.kind() || x.size() != y.size() {
            r.failures.push(format!(
                "{}: {name}/{k}: {:?} {:?} vs ours {:?} {:?}",
                r.case,
                x.kind(),
                x.size(),
                y.kind(),
                y.size()
            ));
            continue;
        }
        r.check(&format!("{name}/{k}"), rel_err(x, y), tol);
    }
}

/// `Q diag(λ) Qᵀ` in float64.
fn rebuild(vectors: &Tensor, values: &Tensor) -> Tensor {
    let q = vectors.to_kind(Kind::Double);
    (&q * values.to_kind(Kind::Double).unsqueeze(0)).matmul(&q.tr())
}

/// Eigenvectors up to sign where the eigenvalue is separated from its neighbours by 1% of the
/// largest |eigenvalue|; returns the worst column error and how many columns were compared.
fn eigenvector_err(theirs: &Tensor, ours: &Tensor, values: &Tensor) -> (f64, usize) {
    let v: Vec<f64> = Vec::try_from(values.to_kind(Kind::Double)).unwrap();
    let scale = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    let (x, y) = (theirs.to_kind(Kind::Double), ours.to_kind(Kind::Double));
    let (mut worst, mut compared) = (0f64, 0);
    for j in 0..v.len() {
        let gap = [j.checked_sub(1), Some(j + 1)]
            .into_iter()
            .flatten()
            .filter_map(|i| v.get(i))
            .map(|w| (w - v[j]).abs())
            .fold(f64::INFINITY, f64::min);
        if gap < 1e-2 * scale {
            continue;
        }
        let (cx, cy) = (x.select(1, j as i64), y.select(1, j as i64));
        let sign = if f64::try_from(cx.dot(&cy)).unwrap() < 0.0 {
            -1.0
        } else {
            1.0
        };
        worst = worst.max(f64::try_from((cx - cy * sign).abs().max()).unwrap());
        compared += 1;
    }
    (worst, compared)
}

/// `H V` for EK-FAC's `H = (Q_G ⊗ Q_A) diag(Λ) (Q_G ⊗ Q_A)ᵀ` on `[O, I]` probes `V` `[k, O, I]`.
fn apply_ekfac(q_g: &Tensor, q_a: &Tensor, grid: &Tensor, probes: &Tensor) -> Tensor {
    let (q_g, q_a, grid) = (
        q_g.to_kind(Kind::Double),
        q_a.to_kind(Kind::Double),
        grid.to_kind(Kind::Double),
    );
    let rotated = q_g.tr().matmul(probes).matmul(&q_a) * grid;
    q_g.matmul(&rotated).matmul(&q_a.tr())
}

fn compare_factored(ours: &Path, theirs: &Path, r: &mut Report, tol: f64, ev_correction: bool) {
    for name in [
        store::ACTIVATION,
        store::GRADIENT,
        store::EIGENVALUE,
        store::FACTOR_EIG_A,
        store::FACTOR_EIG_G,
    ] {
        compare_store(ours, theirs, name, r, tol);
    }
    let total = read_total_processed(theirs).unwrap();
    for (vectors, values, raw) in [
        (
            store::EIGEN_ACTIVATION,
            store::FACTOR_EIG_A,
            store::ACTIVATION,
        ),
        (store::EIGEN_GRADIENT, store::FACTOR_EIG_G, store::GRADIENT),
    ] {
        let (qx, qy) = (store(theirs, vectors), store(ours, vectors));
        let (lx, ly) = (store(theirs, values), store(ours, values));
        let raw = store(ours, raw);
        for ((((k, qx), (_, qy)), ((_, lx), (_, ly))), (_, m)) in
            qx.iter().zip(&qy).zip(lx.iter().zip(&ly)).zip(&raw)
        {
            if qx.kind() != qy.kind() || qx.size() != qy.size() {
                r.failures
                    .push(format!("{}: {vectors}/{k}: dtype or shape differs", r.case));
                continue;
            }
            let (rx, ry) = (rebuild(qx, lx), rebuild(qy, ly));
            r.check(&format!("{vectors}/{k} rebuilt"), rel_err(&rx, &ry), tol);
            let (err, _) = eigenvector_err(qx, qy, lx);
            r.check(&format!("{vectors}/{k} up to sign"), err, 1e-3);
            // Our eigenvectors diagonalise the factor they decompose, `(M + Mᵀ) / 2T`.
            let m = m.to_kind(Kind::Double);
            let mean = (&m + m.tr()) / (2.0 * total as f64);
            let q = qy.to_kind(Kind::Double);
            let d = q.tr().matmul(&mean).matmul(&q);
            let off = &d - d.diagonal(0, 0, 1).diag_embed(0, 0, 1);
            let scale = f64::try_from(d.abs().max()).unwrap().max(1e-30);
            r.check(
                &format!("{vectors}/{k} diagonalises its factor"),
                f64::try_from(off.abs().max()).unwrap() / scale,
                tol,
            );
        }
    }
    if ev_correction {
        let (cx, cy) = (
            store(theirs, store::EIGENVALUE_CORRECTION),
            store(ours, store::EIGENVALUE_CORRECTION),
        );
        let (ax, ay) = (
            store(theirs, store::EIGEN_ACTIVATION),
            store(ours, store::EIGEN_ACTIVATION),
        );
        let (gx, gy) = (
            store(theirs, store::EIGEN_GRADIENT),
            store(ours, store::EIGEN_GRADIENT),
        );
        tch::manual_seed(0);
        for (i, (k, lx)) in cx.iter().enumerate() {
            let ly = &cy[i].1;
            if lx.size() != ly.size() || lx.kind() != ly.kind() {
                r.failures.push(format!(
                    "{}: correction/{k}: dtype or shape differs",
                    r.case
                ));
                continue;
            }
            let (o, w) = (lx.size()[0], lx.size()[1]);
            let probes = Tensor::randn([4, o, w], (Kind::Double, tch::Device::Cpu));
            let hx = apply_ekfac(&gx[i].1, &ax[i].1, lx, &probes);
            let hy = apply_ekfac(&gy[i].1, &ay[i].1, ly, &probes);
            r.check(&format!("EK-FAC H·v/{k}"), rel_err(&hx, &hy), tol);
        }
    }
}

fn dict(path: &Path) -> Vec<(String, Value)> {
    match load(path).unwrap() {
        Value::Dict(items) => items
            .into_iter()
            .map(|(k, v)| match k {
                Value::Str(s) => (s, v),
                other => panic!("key {other:?}"),
            })
            .collect(),
        other => panic!("{} is not a dict: {other:?}", path.display()),
    }
}

fn tensor(v: &Value) -> &Tensor {
    match v {
        Value::Tensor(t) => t,
        other => panic!("not a tensor: {other:?}"),
    }
}

fn compare_dense(ours: &Path, theirs: &Path, r: &mut Report, tol: f64) {
    let (hx, hy) = (
        dict(&theirs.join("hessians.pth")),
        dict(&ours.join("hessians.pth")),
    );
    let (ex, ey) = (
        dict(&theirs.join("hessians_eigen.pth")),
        dict(&ours.join("hessians_eigen.pth")),
    );
    let keys = |d: &[(String, Value)]| d.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    if keys(&hx) != keys(&hy) || keys(&ex) != keys(&ey) {
        r.failures.push(format!(
            "{}: keys {:?} vs ours {:?}",
            r.case,
            keys(&hx),
            keys(&hy)
        ));
        return;
    }
    for ((k, x), (_, y)) in hx.iter().zip(&hy) {
        let (x, y) = (tensor(x), tensor(y));
        if x.kind() != y.kind() || x.size() != y.size() {
            r.failures
                .push(format!("{}: hessians/{k}: dtype or shape differs", r.case));
            continue;
        }
        r.check(&format!("hessians/{k}"), rel_err(x, y), tol);
    }
    for ((k, x), (_, y)) in ex.iter().zip(&ey) {
        let pair = |v: &Value| match v {
            Value::Tuple(t) if t.len() == 2 => {
                (tensor(&t[0]).shallow_clone(), tensor(&t[1]).shallow_clone())
            }
            other => panic!("not an (eigenvalues, eigenvectors) tuple: {other:?}"),
        };
        let ((lx, qx), (ly, qy)) = (pair(x), pair(y));
        r.check(&format!("eigenvalues/{k}"), rel_err(&lx, &ly), tol);
        r.check(
            &format!("eigenvectors/{k} rebuilt"),
            rel_err(&rebuild(&qx, &lx), &rebuild(&qy, &ly)),
            tol,
        );
    }
    let px = std::fs::read_to_string(theirs.join("processor_config.yaml")).unwrap();
    let py = std::fs::read_to_string(ours.join("processor_config.yaml")).unwrap();
    let (px, py): (Json, Json) = (
        serde_saphyr::from_str(&px).unwrap(),
        serde_saphyr::from_str(&py).unwrap(),
    );
    if px != py {
        r.failures.push(format!(
            "{}: processor_config.yaml {px} vs ours {py}",
            r.case
        ));
    }
}

#[test]
fn hessians_match_bergson() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let run = tmp.path().join(&case.name);
        let out = bergson_hessian(&run, &case.args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(error) = &case.error {
            // Bergson rejects it: so must we, in one line, leaving nothing behind.
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            if out.status.code() != Some(2) || lines.len() != 1 || run.exists() {
                failures.push(format!(
                    "{}: Bergson failed ({error}); we exited {:?} with {stderr:?}",
                    case.name,
                    out.status.code()
                ));
            }
            continue;
        }
        if !out.status.success() {
            failures.push(format!("{}: we failed: {stderr}", case.name));
            continue;
        }
        let theirs = refs_dir().join("runs").join(&case.name);
        let mut r = Report {
            case: case.name.clone(),
            failures: Vec::new(),
        };
        if files(&theirs) != files(&run) {
            r.failures.push(format!(
                "{}: files {:?} vs ours {:?}",
                case.name,
                files(&theirs),
                files(&run)
            ));
        }
        if read_total_processed(&theirs).unwrap() != read_total_processed(&run).unwrap() {
            r.failures
                .push(format!("{}: total_processed differs", case.name));
        }
        if config_steps(&theirs) != config_steps(&run) {
            r.failures.push(format!(
                "{}: config.yaml steps {} vs ours {}",
                case.name,
                config_steps(&theirs),
                config_steps(&run)
            ));
        }
        if theirs.join("hessians.pth").exists() {
            compare_dense(&run, &theirs, &mut r, case.rtol);
        } else {
            let ev = theirs.join(store::EIGENVALUE_CORRECTION).exists();
            compare_factored(&run, &theirs, &mut r, case.rtol, ev);
        }
        println!(
            "{}: {}",
            case.name,
            if r.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            }
        );
        failures.extend(r.failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
