//! Bakes libtorch's directory into every artefact's RUNPATH, so binaries, tests and benches run
//! without LD_LIBRARY_PATH, and compiles the C++ shim over libtorch's own torch.save pickler
//! (`csrc/pickle_shim.cpp`, used by `src/pickle`).

fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys must be a direct dependency");
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

    // libtorch's headers sit next to its lib directory (`<libtorch>/include`).
    let include = lib
        .parent()
        .map(|dir| dir.join("include"))
        .unwrap_or_default();
    assert!(
        include.join("torch").is_dir(),
        "libtorch headers not found at {}: LIBTORCH must point at a full libtorch (see \
         scripts/setup-libtorch.sh)",
        include.display()
    );
    println!("cargo:rerun-if-changed=csrc/pickle_shim.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    // The same flags torch-sys compiles its own wrapper with; no extra link flags are needed
    // because torch-sys already links torch_cpu and c10.
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/pickle_shim.cpp")
        .compile("bergson_pickle_shim");
}
