//! The Python extension (crates/bergson-py) is its own workspace with its own `Cargo.lock`
//! (the workspace's lock plus pyo3). When a package reaches the `bergson` library but not that
//! lock, maturin must resolve it again from the registry index, which failed a CI run on a
//! machine without one. Every package `bergson` depends on (any platform) must be locked there.

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_extensions_lock_holds_every_dependency_of_bergson() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The workspace's own lock answers this without the network once it has built.
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["tree", "-p", "bergson", "--locked"])
        .args(["-e", "normal,build", "--target", "all", "--prefix", "none"])
        .args(["-f", "{p}"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let lock = std::fs::read_to_string(root.join("crates/bergson-py/Cargo.lock")).unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `name vX.Y.Z`, then ` (*)` for a repeat or ` (/path)` for a path package.
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        if words.next().is_some_and(|w| w.starts_with("(/")) {
            continue;
        }
        let version = version.trim_start_matches('v');
        checked += 1;
        if !lock.contains(&format!("name = \"{name}\"\nversion = \"{version}\"\n")) {
            missing.push(format!("{name} {version}"));
        }
    }
    assert!(
        checked > 100,
        "read only {checked} packages from cargo tree"
    );
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "crates/bergson-py/Cargo.lock lacks {missing:?}: run `cargo update --workspace --manifest-path crates/bergson-py/Cargo.toml` and commit it"
    );
}
