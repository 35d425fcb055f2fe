//! `bergson train --collect_gradients` against Python Bergson 2.5.1's
//! `GradientCollectorCallback` on a real `transformers.Trainer` (tests/fixtures/scripts/
//! make_collect_refs.py → tests/fixtures/bergson_collect/): the same per-epoch (or accumulated)
//! indexes row for row, the processors saved at each epoch's end (normalizers from the AdamW
//! second moments), and `order.hf`. Also the flags' bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use bergson::collect::optimizer_state::read_normalizers;
use bergson::index::hf_dataset::read_hf_dataset;
use bergson::index::info::IndexInfo;
use tch::{Kind, Tensor};

mod common;
use common::{assert_one_line_error, bergson, fixtures};

fn refs() -> PathBuf {
    fixtures().join("bergson_collect")
}

/// Runs `bergson train` with `flags` into `run`.
fn train(run: &Path, flags: &[String]) -> Output {
    bergson()
        .arg("train")
        .arg(run)
        .args(["--quiet", "--num_threads", "1", "--save_mode", "final"])
        .args(flags)
        .output()
        .expect("run bergson")
}

/// The case's `bergson train` flags, from the `flags.json` the reference script wrote.
fn case_flags(case: &str) -> Vec<String> {
    let text = std::fs::read_to_string(refs().join(case).join("flags.json")).unwrap();
    let flags: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut out = vec![
        "--dataset".to_string(),
        refs().join("train.jsonl").display().to_string(),
        "--collect_gradients".to_string(),
    ];
    for (key, value) in flags {
        out.push(format!("--{key}"));
        match (key.as_str(), value) {
            ("model", serde_json::Value::String(m)) => {
                out.push(fixtures().join("models").join(m).display().to_string())
            }
            (_, serde_json::Value::String(s)) => out.push(s),
            (_, serde_json::Value::Array(items)) => {
                out.extend(items.iter().map(|v| v.as_str().unwrap().to_string()))
            }
            (_, v) => out.push(v.to_string()),
        }
    }
    out
}

/// `gradients.bin` of an index as float64 `[num_grads, row_len]`.
fn rows(dir: &Path, info: &IndexInfo) -> Tensor {
    let kind = match info.base_dtype.as_str() {
        "float16" => Kind::Half,
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        other => panic!("unexpected dtype {other}"),
    };
    let bytes = std::fs::read(dir.join("gradients.bin")).unwrap();
    Tensor::from_data_size(
        &bytes,
        &[info.num_grads as i64, info.row_len() as i64],
        kind,
    )
    .to_kind(Kind::Double)
}

/// Index directories (those holding info.json) under `root`, relative, sorted.
fn index_dirs(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.join("info.json").exists() {
                    out.push(path.strip_prefix(root).unwrap().to_path_buf());
                }
                walk(&path, root, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Largest `‖ours − theirs‖ / ‖theirs‖` over rows, skipping `loose` rows, and over those.
fn row_errors(ours: &Tensor, theirs: &Tensor, loose: &[usize]) -> (f64, f64) {
    let diff = (ours - theirs).norm_scalaropt_dim(2, [1i64].as_slice(), false);
    let scale = theirs
        .norm_scalaropt_dim(2, [1i64].as_slice(), false)
        .clamp_min(1e-30);
    let rel: Vec<f64> = Vec::try_from(diff / scale).unwrap();
    let (mut strict, mut relaxed) = (0.0f64, 0.0f64);
    for (r, e) in rel.iter().enumerate() {
        assert!(e.is_finite(), "row {r}: error {e}");
        if loose.contains(&r) {
            relaxed = relaxed.max(*e);
        } else {
            strict = strict.max(*e);
        }
    }
    (strict, relaxed)
}

/// Runs the case and compares every index, processor and the order with the reference.
/// `tol` bounds each row's relative error; rows in `loose` (see the neox case) get `loose_tol`.
fn check_case(case: &str, tol: f64, loose: &[usize], loose_tol: f64) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = train(&run, &case_flags(case));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs_root = refs().join(case);
    let dirs = index_dirs(&theirs_root);
    assert!(!dirs.is_empty());
    assert_eq!(index_dirs(&run), dirs, "the same index directories");
    for rel in &dirs {
        let (ours, theirs) = (run.join(rel), theirs_root.join(rel));
        let info = IndexInfo::read(&theirs).unwrap();
        assert_eq!(IndexInfo::read(&ours).unwrap(), info, "{rel:?} info.json");
        let (strict, relaxed) = row_errors(&rows(&ours, &info), &rows(&theirs, &info), loose);
        eprintln!("{case} {rel:?}: row error {strict:.2e} (first normalised step {relaxed:.2e})");
        assert!(strict < tol, "{rel:?}: row error {strict:e}");
        assert!(relaxed <= loose_tol, "{rel:?}: row error {relaxed:e}");

        // The processor saved at the epoch's end.
        let text = |d: &Path| std::fs::read_to_string(d.join("processor_config.yaml")).unwrap();
        assert_eq!(text(&ours), text(&theirs), "{rel:?} processor_config.yaml");
        let (a, b) = (
            read_normalizers(&ours.join("normalizers.pth")).unwrap(),
            read_normalizers(&theirs.join("normalizers.pth")).unwrap(),
        );
        let names = |n: &[(String, bergson::collect::Normalizer)]| {
            n.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&a), names(&b), "{rel:?} normalizer modules");
        let mut worst = 0.0f64;
        for ((_, x), (name, y)) in a.iter().zip(&b) {
            assert_eq!(x.class_name(), y.class_name(), "{name}");
            let (tx, ty) = (x.tensors(), y.tensors());
            let fields = |t: &[(&'static str, &Tensor)]| -> Vec<&'static str> {
                t.iter().map(|(f, _)| *f).collect()
            };
            assert_eq!(fields(&tx), fields(&ty), "{name} fields");
            for ((_, u), (_, v)) in tx.iter().zip(&ty) {
                assert_eq!(u.size(), v.size(), "{name}");
                let v = v.to_kind(Kind::Double);
                let e = (u.to_kind(Kind::Double) - &v).norm().double_value(&[])
                    / v.norm().double_value(&[]).max(1e-300);
                worst = worst.max(e);
            }
        }
        eprintln!("{case} {rel:?}: normalizer error {worst:.2e}");
        assert!(worst < 1e-4, "{rel:?}: normalizer error {worst:e}");
        for file in ["hessians.pth", "hessians_eigen.pth"] {
            let v = bergson::pickle::load(&ours.join(file)).unwrap();
            assert_eq!(
                v.as_dict().map(<[_]>::len),
                Some(0),
                "{file} is an empty dict"
            );
        }
    }

    // order.hf: the same rows, columns and features.
    let order = theirs_root.join("order.hf");
    assert_eq!(run.join("order.hf").exists(), order.exists(), "order.hf");
    if order.exists() {
        let (a, b) = (
            read_hf_dataset(&run.join("order.hf")).unwrap(),
            read_hf_dataset(&order).unwrap(),
        );
        assert_eq!(a.schema().fields().len(), 3);
        for (fa, fb) in a.schema().fields().iter().zip(b.schema().fields()) {
            assert_eq!(
                (fa.name(), fa.data_type()),
                (fb.name(), fb.data_type()),
                "order.hf columns"
            );
        }
        assert_eq!(a.columns(), b.columns(), "order.hf rows");
        let features = |d: &Path| {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(d.join("dataset_info.json")).unwrap(),
            )
            .unwrap();
            v["features"].clone()
        };
        assert_eq!(features(&run.join("order.hf")), features(&order));
    }
}

/// Two epochs, two micro-batches per step, projection 4, float32 rows, Adam normalizers scaled
/// by lr², the training order.
///
/// The second step's rows are normalised by a second moment of one step, `(1 - β2) g1²`:
/// dividing by `|g1|` amplifies the float32 rounding of gradient entries that nearly cancel
/// (transformers and bergson-rs sum in different orders) to ~1e-3 of the row; from the third
/// step on, the moments average several steps and rows agree to ~1e-5.
#[test]
fn epochs_with_normalizers_and_order_match_bergson() {
    let perm = bergson::data::nprandom::permutation(3, 12);
    // Batch size 4: the second step trains stream rows 4..8 of epoch 0.
    check_case("neox_epochs", 1e-4, &perm[4..8], 3e-3);
}

/// One index over two epochs (each row holds its last visit), float16 rows, bias columns,
/// unscaled normalizers, Llama with biases: agreement to float16 rounding.
#[test]
fn accumulated_float16_bias_rows_match_bergson() {
    check_case("llama_accumulate", 1e-3, &[], 0.0);
}

/// Attention modules split into per-head blocks (`--split_attention_modules`, the callback's
/// `attention_cfgs`), each head normalised by its rows of the module's second moments. One
/// epoch of three steps; the second step's rows are loose as in the neox case, and the third
/// step's, normalised by moments of only two steps, still amplify rounding (measured up to
/// 8.7e-5 with one thread, 3.9e-5 with two), so the bound is 3e-4.
#[test]
fn head_blocks_match_bergson() {
    let perm = bergson::data::nprandom::permutation(5, 12);
    check_case("neox_heads", 3e-4, &perm[4..8], 3e-3);
}

/// The flags without `--collect_gradients`, a dtype the callback refuses, bad head splits, and
/// resuming a collecting run: exit status 2 and one error line.
#[test]
fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = fixtures().join("models/gpt_neox").display().to_string();
    let data = refs().join("train.jsonl").display().to_string();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--model", &model, "--dataset", &data, "--batch_size", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let out = train(&run, &base(&["--collect_gradients", "--dtype", "bfloat16"]));
    assert_one_line_error(&out, &["--dtype", "bfloat16"]);
    let out = train(&run, &base(&["--collect_gradients", "--dtype", "int8"]));
    assert_one_line_error(&out, &["--dtype"]);
    let out = train(&run, &base(&["--projection_dim", "8"]));
    assert_one_line_error(&out, &["--collect_gradients"]);
    let out = train(&run, &base(&["--track_order"]));
    assert_one_line_error(&out, &["--collect_gradients"]);
    let out = train(
        &run,
        &base(&["--collect_gradients", "--projection_dim", "-1"]),
    );
    assert_one_line_error(&out, &["--projection_dim"]);
    // attention_cfgs naming no collected module, or a layout not covering its outputs.
    let out = train(
        &run,
        &base(&[
            "--collect_gradients",
            "--split_attention_modules",
            "lm_head",
            "--num_heads",
            "4",
            "--head_size",
            "8",
        ]),
    );
    assert_one_line_error(&out, &["--split_attention_modules", "lm_head"]);
    // The run directory exists by the time the model's modules are known.
    std::fs::remove_dir_all(&run).unwrap();
    let out = train(
        &run,
        &base(&[
            "--collect_gradients",
            "--split_attention_modules",
            "layers.0.attention.dense",
            "--num_heads",
            "3",
            "--head_size",
            "8",
        ]),
    );
    assert_one_line_error(&out, &["--num_heads", "32"]);
    std::fs::remove_dir_all(&run).unwrap();
    let out = train(&run, &base(&["--collect_gradients", "--resume"]));
    assert_one_line_error(&out, &["--collect_gradients", "--resume"]);
    assert!(!run.exists(), "nothing written");
}

/// `--projection_dim 0` stores full gradients (the callback's `projection_dim or None`), and
/// without `--collect_gradients` nothing is collected.
#[test]
fn projection_dim_zero_stores_full_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/gpt_neox").display().to_string();
    let data = refs().join("train.jsonl").display().to_string();
    let flags: Vec<String> = [
        "--model",
        &model,
        "--dataset",
        &data,
        "--batch_size",
        "6",
        "--lr",
        "1e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = dir.path().join("full");
    let mut full = flags.clone();
    full.extend(
        [
            "--collect_gradients",
            "--projection_dim",
            "0",
            "--use_optimizer_state",
            "false",
        ]
        .map(String::from),
    );
    let out = train(&run, &full);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = IndexInfo::read(&run.join("train/epoch_0")).unwrap();
    // GPT-NeoX layer: query_key_value [96, 32], dense [32, 32], h_to_4h [64, 32], 4h_to_h [32, 64].
    let want: Vec<usize> = [96 * 32, 32 * 32, 64 * 32, 32 * 64].repeat(2).to_vec();
    assert_eq!(
        info.grad_sizes.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        want
    );
    assert_eq!(info.base_dtype, "float16");
    let plain = dir.path().join("plain");
    let out = train(&plain, &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!plain.join("train").exists() && !plain.join("order.hf").exists());
}

/// A dataset size the batch size does not divide (12 rows, batches of 5, 2 epochs: the third
/// step holds rows of both epochs, the last is padded): every row lands in its own epoch's
/// index, the padding is not written, both epochs get their processor, and `order.hf` follows
/// the stream with `epoch = floor(rows trained / 12)` after each step.
#[test]
fn steps_across_epochs_write_each_row_to_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = fixtures().join("models/gpt_neox").display().to_string();
    let data = refs().join("train.jsonl").display().to_string();
    let flags: Vec<String> = [
        "--model",
        &model,
        "--dataset",
        &data,
        "--batch_size",
        "5",
        "--num_epochs",
        "2",
        "--lr",
        "1e-3",
        "--collect_gradients",
        "--projection_dim",
        "2",
        "--track_order",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = train(&run, &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for epoch in ["epoch_0", "epoch_1"] {
        let d = run.join("train").join(epoch);
        let info = IndexInfo::read(&d).unwrap();
        assert_eq!((info.num_grads, info.base_dtype.as_str()), (12, "float16"));
        let r = rows(&d, &info);
        let zero_rows = r
            .abs()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
            .eq(0.0);
        assert_eq!(
            zero_rows.sum(Kind::Int64).int64_value(&[]),
            0,
            "{epoch}: every row written"
        );
        for file in ["processor_config.yaml", "normalizers.pth", "hessians.pth"] {
            assert!(d.join(file).exists(), "{epoch}/{file}");
        }
        let norms = read_normalizers(&d.join("normalizers.pth")).unwrap();
        assert_eq!(norms.len(), 8, "{epoch}: a normalizer per module");
    }
    let order = read_hf_dataset(&run.join("order.hf")).unwrap();
    let col = |name: &str| -> Vec<i64> {
        let a = order.column_by_name(name).unwrap();
        let a = a
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        a.values().to_vec()
    };
    let stream: Vec<i64> = bergson::data::nprandom::permutation(42, 12)
        .into_iter()
        .chain(bergson::data::nprandom::permutation(43, 12))
        .map(|i| i as i64)
        .collect();
    assert_eq!(col("_idx"), stream, "every trained row, padding left out");
    let steps: Vec<i64> = (0..24).map(|k| k / 5 + 1).collect();
    assert_eq!(col("global_step"), steps);
    let epochs: Vec<i64> = steps.iter().map(|&s| (s * 5).min(24) / 12).collect();
    assert_eq!(col("epoch"), epochs);
}

/// GPT-2's Conv1D weights are stored `[in, out]`: their normalizers are the AdamW second
/// moments transposed to the collector's `[out, in]` (square ones too, as Bergson orients by
/// module type), and the bias moments ride along. Unscaled, they equal `optimizer.pt` exactly.
#[test]
fn conv1d_normalizers_are_transposed_moments() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = fixtures().join("models/gpt2").display().to_string();
    let data = refs().join("train.jsonl").display().to_string();
    let flags: Vec<String> = [
        "--model",
        &model,
        "--dataset",
        &data,
        "--batch_size",
        "6",
        "--collect_gradients",
        "--scale_by_lr",
        "false",
        "--save_optimizer_state",
        "last",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = train(&run, &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let norms = read_normalizers(&run.join("train/epoch_0/normalizers.pth")).unwrap();
    let opt = bergson::pickle::load(&run.join("optimizer.pt")).unwrap();
    let moment = |param: &str| -> Tensor {
        let entries = opt.get("state").and_then(|s| s.as_dict()).unwrap();
        entries
            .iter()
            .map(|(_, e)| e)
            .find(|e| e.get("param_name").and_then(|n| n.as_str()) == Some(param))
            .and_then(|e| e.get("exp_avg_sq").and_then(|t| t.as_tensor()))
            .unwrap_or_else(|| panic!("no moment for {param}"))
            .shallow_clone()
    };
    assert_eq!(norms.len(), 8);
    for (name, n) in &norms {
        let bergson::collect::Normalizer::Adam {
            weight_avg_sq,
            bias_avg_sq,
        } = n
        else {
            panic!("{name}: an Adam normalizer")
        };
        let w = moment(&format!("transformer.{name}.weight"));
        assert_eq!(weight_avg_sq.size(), [w.size()[1], w.size()[0]], "{name}");
        assert!(weight_avg_sq.equal(&w.tr()), "{name}: transposed moment");
        let b = moment(&format!("transformer.{name}.bias"));
        assert!(
            bias_avg_sq.as_ref().unwrap().equal(&b),
            "{name}: bias moment"
        );
    }
}

/// Collecting does not change training: the same backward yields the parameter gradients, so
/// the trained weights equal those of a run without `--collect_gradients`, bit for bit.
#[test]
fn collecting_leaves_training_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/gpt_neox").display().to_string();
    let data = refs().join("train.jsonl").display().to_string();
    let flags: Vec<String> = [
        "--model",
        &model,
        "--dataset",
        &data,
        "--batch_size",
        "4",
        "--grad_accum_steps",
        "2",
        "--lr",
        "3e-3",
        "--save_models",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let weights = |run: &Path| {
        let mut t = Tensor::read_safetensors(run.join("model/model.safetensors")).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let plain = dir.path().join("plain");
    assert!(train(&plain, &flags).status.success());
    let collecting = dir.path().join("collecting");
    let mut with = flags.clone();
    with.push("--collect_gradients".into());
    assert!(train(&collecting, &with).status.success());
    assert!(collecting.join("train/epoch_0/gradients.bin").exists());
    let (a, b) = (weights(&plain), weights(&collecting));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}
