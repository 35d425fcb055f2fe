//! One FAISS index ([`Faiss`]), owned and freed here, over `csrc/faiss_shim.cpp` (a few
//! `extern "C"` entry points over FAISS's C++ API, which catch FAISS's exceptions). Without the
//! `faiss` cargo feature, [`Faiss`] cannot be made: [`available`] names the fix instead.

use crate::{Error, Result};

/// FAISS's score for a result it did not find (`-FLT_MAX`; its label is -1).
pub const MISSING_SCORE: f32 = f32::MIN;

/// Ok when this build can make and read FAISS indexes; otherwise the one-line fix.
pub fn available() -> Result<()> {
    if cfg!(feature = "faiss") {
        Ok(())
    } else {
        Err(not_built())
    }
}

/// Why `--faiss` cannot run in a build without the feature.
fn not_built() -> Error {
    Error::input(
        "--faiss needs bergson built with FAISS: `apt-get install libfaiss-dev`, then \
         `cargo build --release --features faiss`; or drop --faiss (the exact search needs no \
         FAISS index)",
    )
}

#[cfg(feature = "faiss")]
pub use real::Faiss;
#[cfg(not(feature = "faiss"))]
pub use stub::Faiss;

#[cfg(feature = "faiss")]
mod real {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::path::Path;
    use std::ptr::NonNull;

    use crate::{Error, Result};

    extern "C" {
        fn bergson_faiss_last_error() -> *const c_char;
        fn bergson_faiss_index_factory(
            d: c_int,
            desc: *const c_char,
            out: *mut *mut c_void,
        ) -> c_int;
        fn bergson_faiss_free(index: *mut c_void);
        fn bergson_faiss_train(index: *mut c_void, n: i64, x: *const f32) -> c_int;
        fn bergson_faiss_add(index: *mut c_void, n: i64, x: *const f32) -> c_int;
        fn bergson_faiss_search(
            index: *const c_void,
            n: i64,
            x: *const f32,
            k: i64,
            distances: *mut f32,
            labels: *mut i64,
        ) -> c_int;
        fn bergson_faiss_ntotal(index: *const c_void) -> i64;
        fn bergson_faiss_dim(index: *const c_void) -> c_int;
        fn bergson_faiss_is_inner_product(index: *const c_void) -> c_int;
        fn bergson_faiss_set_nprobe(index: *mut c_void, nprobe: i64, applied: *mut c_int) -> c_int;
        fn bergson_faiss_write(index: *const c_void, path: *const c_char) -> c_int;
        fn bergson_faiss_read(path: *const c_char, mmap: c_int, out: *mut *mut c_void) -> c_int;
    }

    /// FAISS's message for the last failure on this thread, without its C++ source location
    /// ("Error in <function> at <file>:<line>: <message>" becomes "<message>").
    fn last_error() -> String {
        // SAFETY: the shim returns a NUL-terminated thread-local string, valid until the next
        // failing call on this thread; it is copied at once.
        let full = unsafe { CStr::from_ptr(bergson_faiss_last_error()) }
            .to_string_lossy()
            .into_owned();
        let msg = match full.find(" at ") {
            Some(at) if full.starts_with("Error in ") => {
                let rest = &full[at + 4..];
                // Past "<file>:<line>: ".
                rest.find(": ").map_or(rest, |i| &rest[i + 2..]).to_string()
            }
            _ => full,
        };
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Turns the shim's status into a result; `what` says what was being done.
    fn check(status: c_int, what: impl FnOnce() -> String) -> Result<()> {
        if status == 0 {
            Ok(())
        } else {
            Err(Error::input(format!("{}: {}", what(), last_error())))
        }
    }

    fn c_path(path: &Path) -> Result<CString> {
        CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::input(format!("{}: a path with a NUL byte", path.display())))
    }

    /// A FAISS index (inner-product metric), freed on drop.
    pub struct Faiss(NonNull<c_void>);

    // SAFETY: a FAISS index is a plain heap object with no thread affinity; `search` takes
    // `&self` and FAISS's CPU indexes support concurrent searches, everything that changes the
    // index takes `&mut self`.
    unsafe impl Send for Faiss {}
    unsafe impl Sync for Faiss {}

    impl Faiss {
        /// A new, empty index of `dim` columns from a factory string (`Flat`, `IVF256,SQfp16`,
        /// `PQ64`, ...). A string FAISS cannot parse is the user's error.
        pub fn from_factory(dim: usize, factory: &str) -> Result<Self> {
            let desc = CString::new(factory).map_err(|_| {
                Error::input(format!("--index_factory {factory:?} contains a NUL byte"))
            })?;
            let dim = c_int::try_from(dim).map_err(|_| {
                Error::input(format!(
                    "FAISS indexes at most {} columns, not {dim}",
                    c_int::MAX
                ))
            })?;
            let mut out = std::ptr::null_mut();
            // SAFETY: `desc` is NUL-terminated and `out` is a valid place for the result.
            let status = unsafe { bergson_faiss_index_factory(dim, desc.as_ptr(), &mut out) };
            check(status, || {
                format!("--index_factory {factory:?} is not a FAISS index factory string FAISS can build for {dim} columns (e.g. Flat, IVF1024,SQfp16, PQ64)")
            })?;
            NonNull::new(out)
                .map(Faiss)
                .ok_or_else(|| Error::internal("FAISS returned no index"))
        }

        /// Reads an index file, memory-mapping its inverted lists with `mmap`.
        pub fn read(path: &Path, mmap: bool) -> Result<Self> {
            let c = c_path(path)?;
            let mut out = std::ptr::null_mut();
            // SAFETY: `c` is NUL-terminated and `out` is a valid place for the result.
            let status = unsafe { bergson_faiss_read(c.as_ptr(), c_int::from(mmap), &mut out) };
            check(status, || {
                format!(
                    "cannot read the FAISS index {} (delete its directory to rebuild it)",
                    path.display()
                )
            })?;
            NonNull::new(out)
                .map(Faiss)
                .ok_or_else(|| Error::internal("FAISS returned no index"))
        }

        /// Writes the index to `path`.
        pub fn write(&self, path: &Path) -> Result<()> {
            let c = c_path(path)?;
            // SAFETY: the index is live and `c` is NUL-terminated.
            let status = unsafe { bergson_faiss_write(self.0.as_ptr(), c.as_ptr()) };
            check(status, || format!("cannot write {}", path.display()))
        }

        /// Columns per vector.
        pub fn dim(&self) -> usize {
            // SAFETY: the index is live.
            unsafe { bergson_faiss_dim(self.0.as_ptr()) }.max(0) as usize
        }

        /// Vectors in the index.
        pub fn ntotal(&self) -> usize {
            // SAFETY: the index is live.
            unsafe { bergson_faiss_ntotal(self.0.as_ptr()) }.max(0) as usize
        }

        /// Whether the index scores by inner product (Bergson's metric).
        pub fn is_inner_product(&self) -> bool {
            // SAFETY: the index is live.
            unsafe { bergson_faiss_is_inner_product(self.0.as_ptr()) != 0 }
        }

        /// Sets the inverted lists probed per query; false when the index has none.
        pub fn set_nprobe(&mut self, nprobe: usize) -> Result<bool> {
            let mut applied = 0;
            // SAFETY: the index is live and uniquely borrowed.
            let status =
                unsafe { bergson_faiss_set_nprobe(self.0.as_ptr(), nprobe as i64, &mut applied) };
            check(status, || "cannot set nprobe".into())?;
            Ok(applied != 0)
        }

        /// Trains the index on `x` (row-major, `dim` columns per row).
        pub fn train(&mut self, x: &[f32]) -> Result<()> {
            let n = self.rows_of(x)?;
            // SAFETY: `x` holds `n * dim` floats and the index is uniquely borrowed.
            let status = unsafe { bergson_faiss_train(self.0.as_ptr(), n, x.as_ptr()) };
            check(status, || {
                format!("training the FAISS index on {n} rows failed")
            })
        }

        /// Adds the rows of `x`; they get the next ids.
        pub fn add(&mut self, x: &[f32]) -> Result<()> {
            let n = self.rows_of(x)?;
            // SAFETY: `x` holds `n * dim` floats and the index is uniquely borrowed.
            let status = unsafe { bergson_faiss_add(self.0.as_ptr(), n, x.as_ptr()) };
            check(status, || {
                format!("adding {n} rows to the FAISS index failed")
            })
        }

        /// The best `k` rows per query of `queries` (row-major, `dim` columns per row):
        /// `(scores, labels)`, each `[Q * k]` row-major, best first; a missing result has
        /// label -1 and score [`super::MISSING_SCORE`].
        pub fn search(&self, queries: &[f32], k: usize) -> Result<(Vec<f32>, Vec<i64>)> {
            let n = self.rows_of(queries)?;
            let len = n as usize * k;
            let mut scores = vec![0f32; len];
            let mut labels = vec![0i64; len];
            // SAFETY: `queries` holds `n * dim` floats; the outputs hold `n * k` entries each.
            let status = unsafe {
                bergson_faiss_search(
                    self.0.as_ptr(),
                    n,
                    queries.as_ptr(),
                    k as i64,
                    scores.as_mut_ptr(),
                    labels.as_mut_ptr(),
                )
            };
            check(status, || format!("FAISS search for {k} results failed"))?;
            Ok((scores, labels))
        }

        /// Rows in `x`, which must be whole rows of `dim` columns.
        fn rows_of(&self, x: &[f32]) -> Result<i64> {
            let dim = self.dim().max(1);
            if !x.len().is_multiple_of(dim) {
                return Err(Error::internal(format!(
                    "{} values are not whole rows of {dim}",
                    x.len()
                )));
            }
            Ok((x.len() / dim) as i64)
        }
    }

    impl Drop for Faiss {
        fn drop(&mut self) {
            // SAFETY: the pointer came from FAISS and is freed once.
            unsafe { bergson_faiss_free(self.0.as_ptr()) }
        }
    }
}

#[cfg(not(feature = "faiss"))]
mod stub {
    use std::path::Path;

    use crate::Result;

    /// No FAISS index can exist in a build without the `faiss` feature: the constructors
    /// return the error naming the fix, so the methods are never reached.
    pub enum Faiss {}

    impl Faiss {
        pub fn from_factory(_dim: usize, _factory: &str) -> Result<Self> {
            Err(super::not_built())
        }
        pub fn read(_path: &Path, _mmap: bool) -> Result<Self> {
            Err(super::not_built())
        }
        pub fn write(&self, _path: &Path) -> Result<()> {
            match *self {}
        }
        pub fn dim(&self) -> usize {
            match *self {}
        }
        pub fn ntotal(&self) -> usize {
            match *self {}
        }
        pub fn is_inner_product(&self) -> bool {
            match *self {}
        }
        pub fn set_nprobe(&mut self, _nprobe: usize) -> Result<bool> {
            match *self {}
        }
        pub fn train(&mut self, _x: &[f32]) -> Result<()> {
            match *self {}
        }
        pub fn add(&mut self, _x: &[f32]) -> Result<()> {
            match *self {}
        }
        pub fn search(&self, _queries: &[f32], _k: usize) -> Result<(Vec<f32>, Vec<i64>)> {
            match *self {}
        }
    }
}
