//! The Python that the opt-in tests (`#[ignore = "needs Python Bergson: ..."]`) run against.
//! `scripts/test-python.sh` sets it up and runs them.

use std::path::PathBuf;

/// `BERGSON_PY`: a Python with torch 2.11, bergson 2.5.1 and datasets. These tests run only
/// when asked for (`--ignored`), so a missing `BERGSON_PY` is a failure, not a skip.
pub fn bergson_py() -> PathBuf {
    match std::env::var_os("BERGSON_PY") {
        Some(py) if !py.is_empty() => PathBuf::from(py),
        _ => panic!(
            "set BERGSON_PY to a Python with bergson 2.5.1 (scripts/test-python.sh makes one and runs these tests)"
        ),
    }
}

/// Runs `cmd` (a Python script that prints one line of JSON last), asserts it succeeded and
/// parses that line. Earlier stdout lines are ignored: importing bergson prints warnings there
/// in some environments (bitsandbytes without its `kernels` package).
pub fn run_json(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.output().expect("cannot start BERGSON_PY");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    serde_json::from_str(last.unwrap_or_default())
        .unwrap_or_else(|e| panic!("python's last line is not JSON ({e}):\n{stdout}"))
}
