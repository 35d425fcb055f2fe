//! Bakes libtorch's directory into every artefact's RUNPATH, so binaries, tests and benches run
//! without LD_LIBRARY_PATH, and compiles the C++ shim over libtorch's own torch.save pickler
//! (`csrc/pickle_shim.cpp`, used by `src/pickle`) and the one over libtorch's c10d process groups
//! (`csrc/c10d_shim.cpp`, used by `src/dist`; Gloo's headers, which the torch wheel lacks, are
//! vendored in `csrc/gloo-include`), and the LM head's fused softmax step
//! (`csrc/softmax_shim.cpp`, used by `src/collect/softmax_block.rs`) and the fused CPU causal
//! attention (`csrc/attention_shim.cpp`, used by `src/models/attention_kernel.rs`). With the `faiss` feature it also compiles
//! `csrc/faiss_shim.cpp` (used by `src/query/ann`) and links FAISS (Debian's `libfaiss-dev`);
//! the default build needs nothing beyond libtorch.

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
    // No extra link flags are needed: torch-sys already links torch_cpu and c10.
    libtorch_cpp(&include)
        .include(include.join("torch/csrc/api/include"))
        .file("csrc/pickle_shim.cpp")
        .compile("bergson_pickle_shim");

    // The LM head's fused online-softmax step. Optimised even in debug builds (the tests run
    // it on every build), and compiled with OpenMP because at::parallel_for is inline: its
    // `omp parallel` binds to the libgomp.so.1 libtorch ships and already loaded, so the
    // kernel runs on libtorch's own workers.
    println!("cargo:rerun-if-changed=csrc/softmax_shim.cpp");
    libtorch_cpp(&include)
        .opt_level(3)
        .flag("-fopenmp")
        .file("csrc/softmax_shim.cpp")
        .compile("bergson_softmax_shim");

    // The fused CPU causal attention (`csrc/attention_shim.cpp`, used by
    // `src/models/attention_kernel.rs`): an autograd node of libtorch's C++ API over the
    // sgemm_ libtorch exports, on libtorch's OpenMP workers like the softmax step.
    println!("cargo:rerun-if-changed=csrc/attention_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/avx2_math.h");
    libtorch_cpp(&include)
        .opt_level(3)
        .include(include.join("torch/csrc/api/include"))
        .flag("-fopenmp")
        .file("csrc/attention_shim.cpp")
        .compile("bergson_attention_shim");
    println!("cargo:rustc-link-lib=gomp");

    // c10d's Gloo process group: ProcessGroupGloo.hpp is empty without USE_C10D_GLOO, and
    // GLOO_STORE_HAS_STORE_V2 matches how libtorch built its gloo store adapter.
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/gloo-include");
    libtorch_cpp(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc/gloo-include")
        .define("USE_C10D_GLOO", None)
        .define("GLOO_STORE_HAS_STORE_V2", None)
        .file("csrc/c10d_shim.cpp")
        .compile("bergson_c10d_shim");

    if std::env::var_os("CARGO_FEATURE_FAISS").is_some() {
        link_faiss();
    }
}

/// A C++ build against libtorch's headers (`include`) with the flags torch-sys compiles its own
/// wrapper with.
fn libtorch_cpp(include: &std::path::Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(include)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT");
    build
}

/// Compiles the FAISS shim and links FAISS with its OpenMP, BLAS and LAPACK.
/// `FAISS_INCLUDE_DIR` and `FAISS_LIB_DIR` point at another installation (default: Debian's
/// `/usr/include` and `/usr/lib/x86_64-linux-gnu`, where `libfaiss-dev` puts `libfaiss.a`).
fn link_faiss() {
    println!("cargo:rerun-if-changed=csrc/faiss_shim.cpp");
    println!("cargo:rerun-if-env-changed=FAISS_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=FAISS_LIB_DIR");
    let include = std::env::var("FAISS_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    let include = std::path::PathBuf::from(include);
    assert!(
        include.join("faiss/index_factory.h").is_file(),
        "the `faiss` feature needs FAISS's headers, not found at {}/faiss: install them with \
         `apt-get install libfaiss-dev` (or set FAISS_INCLUDE_DIR and FAISS_LIB_DIR), or build \
         without `--features faiss`",
        include.display()
    );
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .flag("-std=c++17")
        .flag("-fopenmp")
        .file("csrc/faiss_shim.cpp")
        .compile("bergson_faiss_shim");
    if let Ok(dir) = std::env::var("FAISS_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=faiss");
    println!("cargo:rustc-link-lib=gomp");
    // libtorch_cpu exports the BLAS and LAPACK symbols it was built with (`sgemm_`, ...).
    // Naming it before the reference BLAS keeps it first in the executable's load order, so
    // every `sgemm_` call (libtorch's own and FAISS's) binds to libtorch's optimised one; the
    // system's BLAS and LAPACK only supply what libtorch lacks (`ssyrk_`, `sgesvd_`, ...).
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=lapack");
    println!("cargo:rustc-link-lib=blas");
}
