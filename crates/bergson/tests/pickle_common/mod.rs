//! Shared by the pickle tests: fixture paths and an exact comparison of a [`Value`] against the
//! JSON description tests/fixtures/scripts/describe_pickle.py writes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use bergson::pickle::{storage_view, Value};
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

/// tests/fixtures/pickle/<name>.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pickle")
        .join(name)
}

/// tests/fixtures/scripts/<name>.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/scripts")
        .join(name)
}

/// expected.json: file name -> description.
pub fn expected() -> Json {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A float written with Python's repr().
fn parse_float(s: &Json) -> f64 {
    let s = s.as_str().expect("floats are written as strings");
    s.parse().unwrap_or_else(|_| panic!("bad float {s}"))
}

fn same_float(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn kind_of(dtype: &str) -> Kind {
    match dtype {
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        other => panic!("no Kind for {other}"),
    }
}

/// Compares `value` with `desc` exactly; panics naming the path of the first difference.
pub fn check(value: &Value, desc: &Json, at: &str) {
    let mut storages = Storages::default();
    check_in(value, desc, at, &mut storages);
}

/// The storage groups of the description matched one-to-one with storage addresses.
#[derive(Default)]
struct Storages {
    by_group: HashMap<u64, usize>,
    by_ptr: HashMap<usize, u64>,
}

fn ints(j: &Json) -> Vec<i64> {
    j.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn check_in(value: &Value, desc: &Json, at: &str, storages: &mut Storages) {
    let t = desc["t"].as_str().unwrap();
    let mismatch = || panic!("{at}: expected {desc}, got {value:?}");
    match (t, value) {
        ("none", Value::None) => {}
        ("bool", Value::Bool(b)) => assert_eq!(Some(*b), desc["v"].as_bool(), "{at}"),
        ("int", Value::Int(i)) => assert_eq!(Some(*i), desc["v"].as_i64(), "{at}"),
        ("float", Value::Float(f)) => {
            assert!(
                same_float(*f, parse_float(&desc["v"])),
                "{at}: {f} vs {}",
                desc["v"]
            )
        }
        ("str", Value::Str(s)) => assert_eq!(Some(s.as_str()), desc["v"].as_str(), "{at}"),
        ("list", Value::List(items)) | ("tuple", Value::Tuple(items)) => {
            let want = desc["items"].as_array().unwrap();
            assert_eq!(items.len(), want.len(), "{at}: length");
            for (i, (item, d)) in items.iter().zip(want).enumerate() {
                check_in(item, d, &format!("{at}[{i}]"), storages);
            }
        }
        ("dict", Value::Dict(entries)) => {
            let want = desc["items"].as_array().unwrap();
            assert_eq!(entries.len(), want.len(), "{at}: length");
            for (i, ((k, v), d)) in entries.iter().zip(want).enumerate() {
                check_in(k, &d[0], &format!("{at}.key{i}"), storages);
                check_in(v, &d[1], &format!("{at}[{}]", d[0]["v"]), storages);
            }
        }
        ("tensor", Value::Tensor(tensor)) => check_tensor(tensor, desc, at, storages),
        _ => mismatch(),
    }
}

fn check_tensor(t: &Tensor, desc: &Json, at: &str, storages: &mut Storages) {
    let kind = kind_of(desc["dtype"].as_str().unwrap());
    assert_eq!(t.kind(), kind, "{at}: dtype");
    assert_eq!(t.device(), Device::Cpu, "{at}: device");
    assert_eq!(t.size(), ints(&desc["shape"]), "{at}: shape");
    assert_eq!(t.stride(), ints(&desc["stride"]), "{at}: stride");
    let view = storage_view(t).unwrap();
    assert_eq!(
        view.offset,
        desc["offset"].as_i64().unwrap(),
        "{at}: storage offset"
    );
    let elem = kind.elt_size_in_bytes() as u64;
    assert_eq!(
        view.storage_nbytes as u64,
        desc["storage_numel"].as_u64().unwrap() * elem,
        "{at}"
    );
    // Storage sharing: group <-> address must be a bijection (a zero-size storage has no
    // address, so only non-empty storages take part).
    if view.storage_nbytes > 0 {
        let group = desc["storage"].as_u64().unwrap();
        let ptr = *storages.by_group.entry(group).or_insert(view.storage_ptr);
        assert_eq!(
            ptr, view.storage_ptr,
            "{at}: should share storage group {group}"
        );
        let g = *storages.by_ptr.entry(view.storage_ptr).or_insert(group);
        assert_eq!(g, group, "{at}: shares a storage it should not");
    }
    let flat = t.reshape([-1]);
    let want = desc["values"].as_array().unwrap();
    assert_eq!(flat.numel(), want.len(), "{at}: numel");
    if matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        let got = Vec::<f64>::try_from(flat.to_kind(Kind::Double)).unwrap();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(same_float(*g, parse_float(w)), "{at}[{i}]: {g} vs {w}");
        }
    } else {
        let got = Vec::<i64>::try_from(flat.to_kind(Kind::Int64)).unwrap();
        assert_eq!(got, ints(&desc["values"]), "{at}: values");
    }
}
