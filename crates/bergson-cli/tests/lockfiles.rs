//! The Python extension (crates/bergson-py) is its own workspace with its own `Cargo.lock`
//! (the workspace's lock plus pyo3). When a package reaches the workspace but not that lock,
//! maturin must resolve it again from the registry index, which failed a CI run on a machine
//! without one. `cargo tree --locked` tells whether the lock is complete, without the network.

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_extensions_lock_is_complete() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bergson-py/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal,build",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return;
    }
    assert!(
        !stderr.contains("cannot update the lock file"),
        "crates/bergson-py/Cargo.lock is out of date: run `cargo update --workspace --manifest-path crates/bergson-py/Cargo.toml` and commit it\n{stderr}"
    );
    // Anything else is the offline index lacking pyo3's entries (a fresh machine before the
    // extension's first build): nothing to learn about the lock.
    eprintln!("skipped: cargo tree could not run offline: {stderr}");
}
