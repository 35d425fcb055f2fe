//! RUNPATH to libtorch (no LD_LIBRARY_PATH needed); with `cuda`, keep libtorch_cuda linked
//! (tch-rs#980: as-needed linking drops it and CUDA then reads as unavailable). Also probes
//! whether this machine can mount a tmpfs in a private mount namespace, for the tests that fill
//! or write-protect a file system (see `mount_namespace_flags`).
fn main() {
    // Tests gated on this cfg are `#[ignore]`d, and counted as such, where mounting is impossible.
    println!("cargo::rustc-check-cfg=cfg(tmpfs_mounts)");
    match mount_namespace_flags() {
        Some(flags) => {
            println!("cargo::rustc-cfg=tmpfs_mounts");
            println!("cargo::rustc-env=BERGSON_TEST_UNSHARE={flags}");
        }
        None => println!("cargo::rustc-env=BERGSON_TEST_UNSHARE="),
    }
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys must be a direct dependency");
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}

/// The `unshare` flags that let this machine mount a tmpfs in a private mount namespace: `-m`
/// as root, `-rm` (a user namespace) otherwise; `None` where neither works (e.g. a container
/// whose seccomp profile forbids `unshare`).
fn mount_namespace_flags() -> Option<&'static str> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR")?);
    let probe = out.join("tmpfs-probe");
    std::fs::create_dir_all(&probe).ok()?;
    let probe = probe.to_str()?;
    ["-m", "-rm"].into_iter().find(|flags| {
        std::process::Command::new("unshare")
            .args([
                flags,
                "sh",
                "-c",
                "mount -t tmpfs -o size=64k bergson-probe \"$1\"",
            ])
            .args(["sh", probe])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}
