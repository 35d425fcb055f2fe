//! The extension finds the libtorch of the Python process that imports it: `import torch`
//! (done first by `bergson_rs/__init__.py`) has loaded libtorch by soname already, and the
//! RUNPATH `$ORIGIN/../torch/lib` finds the same installed torch when it has not.

fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
}
