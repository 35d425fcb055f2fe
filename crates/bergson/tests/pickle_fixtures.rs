//! `bergson::pickle` against files Python's torch.save wrote (tests/fixtures/pickle, made by
//! tests/fixtures/scripts/make_pickles.py) and against its own output.
//!
//! expected.json describes each readable file as Python's `torch.load(weights_only=True)` sees
//! it; every comparison is exact (f64 bits, dtypes, shapes, strides, storage offsets and which
//! tensors share a storage).

mod pickle_common;

use std::path::{Path, PathBuf};

use bergson::pickle::{self, Value};
use bergson::Error;
use pickle_common::{check, expected, fixture};

fn readable() -> Vec<(String, serde_json::Value)> {
    let serde_json::Value::Object(map) = expected() else {
        panic!("expected.json is not an object")
    };
    map.into_iter().collect()
}

#[test]
fn reads_python_files_exactly() {
    let files = readable();
    assert_eq!(files.len(), 10, "expected.json should describe 10 files");
    for (name, desc) in files {
        let value = pickle::load(&fixture(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(&value, &desc, &name);
    }
}

#[test]
fn round_trips_through_rust() {
    let dir = tempfile::tempdir().unwrap();
    for (name, desc) in readable() {
        let value = pickle::load(&fixture(&name)).unwrap();
        let out = dir.path().join(name.replace('/', "_"));
        pickle::save(&out, &value).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = pickle::load(&out).unwrap_or_else(|e| panic!("{name} rewritten: {e}"));
        check(&again, &desc, &format!("{name} (rewritten)"));
        // Deterministic output: the same value writes the same bytes.
        let out2 = dir.path().join("again.pt");
        pickle::save(&out2, &again).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&out2).unwrap(),
            "{name}"
        );
    }
    // Nothing but the outputs is left behind (no .tmp files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 11);
}

#[test]
fn navigates_an_adamw_state_dict() {
    let opt = pickle::load(&fixture("adamw_optimizer.pt")).unwrap();
    let state = opt.get("state").expect("state");
    assert_eq!(state.as_dict().map(<[_]>::len), Some(4));
    let first = state.get_int_key(0).expect("state[0]");
    let eas = first
        .get("exp_avg_sq")
        .and_then(Value::as_tensor)
        .expect("exp_avg_sq");
    assert_eq!(eas.size(), [4, 3]);
    let step = first.get("step").and_then(Value::as_tensor).expect("step");
    assert_eq!(step.double_value(&[]), 2.0);
    let groups = opt
        .get("param_groups")
        .and_then(Value::as_list)
        .expect("param_groups");
    assert_eq!(groups.len(), 2);
    let params: Vec<i64> = groups[1]
        .get("params")
        .and_then(Value::as_list)
        .unwrap()
        .iter()
        .filter_map(Value::as_int)
        .collect();
    assert_eq!(params, [2, 3]);
    assert_eq!(groups[1].get("lr").and_then(Value::as_float), Some(5e-3));
    let betas = groups[0].get("betas").and_then(Value::as_tuple).unwrap();
    assert_eq!(betas[1].as_float(), Some(0.999));
    assert!(groups[0].get("fused").is_some_and(Value::is_none));
}

#[test]
fn navigates_normalizers() {
    let norms = pickle::load(&fixture("processor/normalizers.pth")).unwrap();
    let classes: Vec<(&str, &str)> = norms
        .as_dict()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap(),
                v.get("__class__").and_then(Value::as_str).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("layers.0.mlp.up_proj", "AdamNormalizer"),
            ("layers.0.attn.q_proj", "AdamNormalizer"),
            ("layers.1.mlp.down_proj", "AdafactorNormalizer"),
        ]
    );
    let ada = norms.get("layers.1.mlp.down_proj").unwrap();
    assert_eq!(
        ada.get("col").and_then(Value::as_tensor).unwrap().size(),
        [5]
    );
    assert!(norms
        .get("layers.0.attn.q_proj")
        .unwrap()
        .get("bias_avg_sq")
        .is_none());
}

#[test]
fn typed_helpers() {
    assert_eq!(
        pickle::load_scalar_i64(&fixture("total_processed.pt")).unwrap(),
        12345
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("total_processed.pt");
    for v in [0, -5, i64::MAX, i64::MIN, 1 << 40] {
        pickle::save_scalar_i64(&path, v).unwrap();
        assert_eq!(pickle::load_scalar_i64(&path).unwrap(), v);
        let t = pickle::load(&path).unwrap().into_tensor().unwrap();
        assert_eq!((t.dim(), t.kind()), (0, tch::Kind::Int64));
    }
    let empty = dir.path().join("hessians.pth");
    pickle::save_empty_dict(&empty).unwrap();
    assert_eq!(
        pickle::load(&empty).unwrap().as_dict().map(<[_]>::len),
        Some(0)
    );
    // Not a scalar: a clean input error naming the file.
    let err = pickle::load_scalar_i64(&empty).unwrap_err();
    assert!(
        matches!(err, Error::Input(_)) && err.to_string().contains("hessians.pth"),
        "{err}"
    );
    let err = pickle::load_scalar_i64(&fixture("bf16.pt")).unwrap_err();
    assert!(err.to_string().contains("BFloat16"), "{err}");
}

fn input_error(path: &Path) -> String {
    match pickle::load(path) {
        Err(Error::Input(msg)) => {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                msg.contains(&*name),
                "message does not name the file: {msg}"
            );
            assert!(!msg.contains('\n'), "message spans lines: {msg}");
            eprintln!("{msg}");
            msg
        }
        Err(e) => panic!("{}: expected an input error, got {e:?}", path.display()),
        Ok(v) => panic!("{}: expected an error, loaded {v:?}", path.display()),
    }
}

#[test]
fn refuses_unsupported_files_cleanly() {
    let cases = [
        ("ordered_dict.pt", "collections.OrderedDict"),
        ("ordered_dict_empty.pt", "collections.OrderedDict"),
        ("protocol4.pt", "protocol 4"),
        ("legacy.pt", "legacy format"),
        ("big_int.pt", "6 bytes"),
        ("torch_size.pt", "torch.Size"),
        ("not_torch.pt", "not a zip archive"),
        ("plain_zip.pt", "is not a torch.save file"),
    ];
    for (name, needle) in cases {
        let msg = input_error(&fixture(name));
        assert!(msg.contains(needle), "{name}: {msg}");
    }

    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("adamw_optimizer.pt")).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(input_error(&truncated).contains("truncated"));
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    assert!(input_error(&empty).contains("empty"));

    let missing = dir.path().join("missing.pt");
    assert!(matches!(pickle::load(&missing), Err(Error::Io { .. })));
    assert!(matches!(pickle::load(dir.path()), Err(Error::Io { .. })));
}

#[test]
fn save_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir: PathBuf = dir.path().join("no/such/dir/x.pt");
    let err = pickle::save(&missing_dir, &Value::Dict(vec![])).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // Unhashable key: refused before anything is written.
    let bad = Value::Dict(vec![(Value::List(vec![]), Value::None)]);
    let path = dir.path().join("bad.pt");
    let err = pickle::save(&path, &bad).unwrap_err();
    assert!(err.to_string().contains("dict keys"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "left a file behind"
    );
}

#[test]
fn saves_values_built_in_rust() {
    // An optimizer-like nested structure with every kind of value, written then read back.
    let base = tch::Tensor::arange(6, (tch::Kind::Float, tch::Device::Cpu)).reshape([2, 3]);
    let view = base.tr();
    let value = Value::str_dict([
        (
            "state",
            Value::Dict(vec![(
                Value::Int(0),
                Value::str_dict([
                    ("step", Value::from(tch::Tensor::from(2.0f32))),
                    ("w", base.into()),
                ]),
            )]),
        ),
        ("view", view.into()),
        (
            "ints",
            Value::List(vec![
                Value::Int(i64::MIN),
                Value::Int(1 << 40),
                Value::Int(-1),
            ]),
        ),
        (
            "floats",
            Value::Tuple(vec![f64::NAN.into(), (-0.0f64).into(), 5e-324.into()]),
        ),
        (
            "misc",
            Value::List(vec![
                true.into(),
                Value::None,
                "ünï".into(),
                Value::Tuple(vec![]),
            ]),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("built.pt");
    pickle::save(&path, &value).unwrap();
    let back = pickle::load(&path).unwrap();
    let w = back
        .get("state")
        .and_then(|s| s.get_int_key(0))
        .and_then(|s| s.get("w"))
        .unwrap();
    let w = w.as_tensor().unwrap();
    let view = back.get("view").and_then(Value::as_tensor).unwrap();
    assert_eq!(view.stride(), [1, 3]);
    let (sw, sv) = (
        pickle::storage_view(w).unwrap(),
        pickle::storage_view(view).unwrap(),
    );
    assert_eq!(
        sw.storage_ptr, sv.storage_ptr,
        "the view no longer shares its base's storage"
    );
    assert!(view.equal(&w.tr()));
    let ints: Vec<i64> = back
        .get("ints")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .filter_map(Value::as_int)
        .collect();
    assert_eq!(ints, [i64::MIN, 1 << 40, -1]);
    let floats = back.get("floats").and_then(Value::as_tuple).unwrap();
    assert!(floats[0].as_float().unwrap().is_nan());
    assert_eq!(floats[1].as_float().unwrap().to_bits(), (-0.0f64).to_bits());
    assert_eq!(floats[2].as_float(), Some(5e-324));
    let misc = back.get("misc").and_then(Value::as_list).unwrap();
    assert_eq!(misc[0].as_bool(), Some(true));
    assert!(misc[1].is_none());
    assert_eq!(misc[2].as_str(), Some("ünï"));
    assert_eq!(misc[3].as_tuple().map(<[_]>::len), Some(0));
}

#[test]
#[ignore = "needs a CUDA device, and a test build that links libtorch_cuda"]
fn saves_cuda_tensors_as_cpu() {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device visible to libtorch (is LIBTORCH a CUDA build?)"
    );
    let cpu = tch::Tensor::arange(6, (tch::Kind::Float, tch::Device::Cpu)).reshape([2, 3]);
    let value = Value::str_dict([("w", cpu.to_device(tch::Device::Cuda(0)).into())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cuda.pt");
    pickle::save(&path, &value).unwrap();
    // Stored with location "cpu", so Python needs no map_location; loads come back on the CPU.
    let back = pickle::load(&path).unwrap();
    let w = back.get("w").and_then(Value::as_tensor).unwrap();
    assert_eq!(w.device(), tch::Device::Cpu);
    assert!(w.equal(&cpu));
}
