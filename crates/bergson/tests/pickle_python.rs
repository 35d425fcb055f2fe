//! Python reads what `bergson::pickle` writes: `torch.load(weights_only=True)` and bergson's own
//! `GradientProcessor.load`. Opt-in (ignored by default): `scripts/test-python.sh` runs them with
//! `BERGSON_PY` naming a Python with torch and bergson.

mod pickle_common;
mod python_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use bergson::pickle::{self, Value};
use pickle_common::{check, expected, fixture, script};
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

/// Runs `py` with `args` and parses the JSON it prints last.
fn run_json(py: &Path, args: &[&std::ffi::OsStr]) -> Json {
    python_support::run_json(Command::new(py).args(args))
}

fn describe(py: &Path, paths: &[PathBuf]) -> Vec<Json> {
    let mut args = vec![script("describe_pickle.py").into_os_string()];
    args.extend(paths.iter().map(|p| p.clone().into_os_string()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let Json::Array(items) = run_json(py, &args) else {
        panic!("expected a JSON list")
    };
    items
}

fn rand(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand(shape, (Kind::Float, Device::Cpu))
}

/// Normalizers as bergson saves them: Adam with and without bias, and Adafactor.
fn normalizers() -> Value {
    Value::str_dict([
        (
            "h.0.mlp.c_fc",
            Value::str_dict([
                ("__class__", "AdamNormalizer".into()),
                ("weight_avg_sq", rand(&[4, 3], 1).into()),
                ("bias_avg_sq", rand(&[4], 2).into()),
            ]),
        ),
        (
            "h.0.attn.c_attn",
            Value::str_dict([
                ("__class__", "AdamNormalizer".into()),
                ("weight_avg_sq", rand(&[2, 3], 3).into()),
            ]),
        ),
        (
            "h.1.mlp.c_proj",
            Value::str_dict([
                ("__class__", "AdafactorNormalizer".into()),
                ("row", rand(&[3], 4).into()),
                ("col", rand(&[5], 5).into()),
            ]),
        ),
    ])
}

/// An optimizer.pt-like structure: int keys, nested dicts, tuples, None, bools, lists of ints.
fn optimizer_like() -> Value {
    let state = Value::Dict(
        (0..2)
            .map(|i| {
                let entry = Value::str_dict([
                    ("step", Tensor::from(2.0f32).into()),
                    ("exp_avg", rand(&[3, 2], 10 + i).into()),
                    ("exp_avg_sq", rand(&[3, 2], 20 + i).into()),
                ]);
                (Value::Int(i), entry)
            })
            .collect(),
    );
    let group = Value::str_dict([
        ("lr", 1e-3.into()),
        ("betas", Value::Tuple(vec![0.9.into(), 0.999.into()])),
        ("weight_decay", 0.0.into()),
        ("foreach", Value::None),
        ("amsgrad", false.into()),
        ("params", Value::List(vec![Value::Int(0), Value::Int(1)])),
    ]);
    Value::str_dict([("state", state), ("param_groups", Value::List(vec![group]))])
}

#[test]
#[ignore = "needs Python Bergson: scripts/test-python.sh"]
fn torch_load_reads_rust_output() {
    let py = python_support::bergson_py();
    let dir = tempfile::tempdir().unwrap();

    // Python's own files, read and rewritten by Rust, look the same to Python.
    let files: Vec<(String, Json)> = match expected() {
        Json::Object(map) => map.into_iter().collect(),
        _ => panic!("expected.json is not an object"),
    };
    let mut paths = Vec::new();
    for (name, _) in &files {
        let value = pickle::load(&fixture(name)).unwrap();
        let out = dir.path().join(name.replace('/', "_"));
        pickle::save(&out, &value).unwrap();
        paths.push(out);
    }
    // And values built in Rust.
    let built = [
        ("normalizers.pth", normalizers()),
        ("hessians.pth", Value::Dict(vec![])),
        ("optimizer.pt", optimizer_like()),
    ];
    for (name, value) in &built {
        let out = dir.path().join(name);
        pickle::save(&out, value).unwrap();
        paths.push(out);
    }
    let scalar = dir.path().join("scalar.pt");
    pickle::save_scalar_i64(&scalar, 1 << 40).unwrap();
    paths.push(scalar);

    let seen = describe(&py, &paths);
    for ((name, want), got) in files.iter().zip(&seen) {
        assert_eq!(
            got, want,
            "{name}: Python sees the Rust rewrite differently"
        );
    }
    for ((name, value), got) in built.iter().zip(&seen[files.len()..]) {
        check(value, got, name);
    }
    let total = seen.last().unwrap();
    assert_eq!(
        (total["dtype"].as_str(), total["values"][0].as_i64()),
        (Some("int64"), Some(1 << 40))
    );
    assert_eq!(total["shape"], serde_json::json!([]));
}

#[test]
#[ignore = "needs Python Bergson: scripts/test-python.sh"]
fn gradient_processor_loads_rust_output() {
    let py = python_support::bergson_py();
    let dir = tempfile::tempdir().unwrap();
    let norms = normalizers();
    pickle::save(&dir.path().join("normalizers.pth"), &norms).unwrap();
    pickle::save_empty_dict(&dir.path().join("hessians.pth")).unwrap();
    pickle::save_empty_dict(&dir.path().join("hessians_eigen.pth")).unwrap();
    std::fs::copy(
        fixture("processor/processor_config.yaml"),
        dir.path().join("processor_config.yaml"),
    )
    .unwrap();

    let code = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from describe_pickle import describe
from bergson.gradients import GradientProcessor
p = GradientProcessor.load(sys.argv[2])
normalizers = {
    name: {"class": type(n).__name__,
           "fields": {k: describe(v) for k, v in vars(n).items() if v is not None}}
    for name, n in p.normalizers.items()
}
print(json.dumps({"normalizers": normalizers, "hessians": len(p.hessians),
                  "hessians_eigen": len(p.hessians_eigen), "projection_dim": p.projection_dim}))
"#;
    let scripts = script("");
    let args = [
        std::ffi::OsStr::new("-c"),
        code.as_ref(),
        scripts.as_os_str(),
        dir.path().as_os_str(),
    ];
    let got = run_json(&py, &args);
    assert_eq!(got["hessians"], 0);
    assert_eq!(got["hessians_eigen"], 0);
    assert_eq!(got["projection_dim"], 16);
    let loaded = got["normalizers"].as_object().unwrap();
    assert_eq!(loaded.len(), 3);
    for (name, state) in norms.as_dict().unwrap() {
        let name = name.as_str().unwrap();
        let seen = &loaded[name];
        assert_eq!(
            seen["class"].as_str(),
            state.get("__class__").and_then(Value::as_str),
            "{name}"
        );
        let fields = seen["fields"].as_object().unwrap();
        // Every tensor Rust wrote, and nothing else, came back as a normalizer field.
        let tensors: Vec<_> = state
            .as_dict()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_tensor().is_some())
            .collect();
        assert_eq!(fields.len(), tensors.len(), "{name}");
        for (key, value) in tensors {
            let key = key.as_str().unwrap();
            check(value, &fields[key], &format!("{name}.{key}"));
        }
    }
}
