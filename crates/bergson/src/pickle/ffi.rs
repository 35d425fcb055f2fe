//! The C API of `csrc/pickle_shim.cpp` and safe wrappers over it.
//!
//! Values cross the boundary as a tagged byte tree (little-endian; one tag byte, then its
//! payload) plus a table of tensors passed as tch's `C_tensor` pointers (`at::Tensor*`):
//!
//! | tag | payload |
//! |---|---|
//! | `N` | none |
//! | `b` | u8 (0 or 1) |
//! | `i` | i64 |
//! | `f` | f64 bits |
//! | `s` | u64 length + UTF-8 bytes |
//! | `l`, `t` | u64 n + n items (list, tuple) |
//! | `d` | u64 n + n (key, value) pairs |
//! | `T` | u64 index into the tensor table |
//!
//! A byte tree rather than JSON keeps int and float apart, int keys, NaN/inf and exact bits,
//! and needs no parser on the C++ side.

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tch::Tensor;
use torch_sys::C_tensor;

use super::Value;

/// Opaque handle on an open archive (`bd_pk` in the shim).
#[repr(C)]
struct RawArchive {
    _private: [u8; 0],
}

type WriteFn = unsafe extern "C" fn(ctx: *mut c_void, buf: *const c_void, n: usize) -> usize;

extern "C" {
    fn bd_pickle_free_str(s: *mut c_char);
    fn bd_pickle_open(path: *const c_char, err: *mut *mut c_char) -> *mut RawArchive;
    fn bd_pickle_program(pk: *mut RawArchive, len: *mut usize) -> *const u8;
    fn bd_pickle_load(pk: *mut RawArchive, err: *mut *mut c_char) -> i32;
    fn bd_pickle_tree(pk: *mut RawArchive, len: *mut usize) -> *const u8;
    fn bd_pickle_ntensors(pk: *mut RawArchive) -> usize;
    fn bd_pickle_tensor(pk: *mut RawArchive, i: usize) -> *mut C_tensor;
    fn bd_pickle_close(pk: *mut RawArchive);
    fn bd_pickle_save(
        enc: *const u8,
        len: usize,
        tensors: *const *const C_tensor,
        ntensors: usize,
        write: WriteFn,
        ctx: *mut c_void,
        err: *mut *mut c_char,
    ) -> i32;
    fn bd_tensor_storage(
        t: *const C_tensor,
        nbytes: *mut usize,
        offset: *mut i64,
        err: *mut *mut c_char,
    ) -> *const c_void;
}

/// Takes ownership of an error message from the shim.
fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error (no message)".into();
    }
    // SAFETY: the shim only sets `err` to a NUL-terminated string from malloc, which we own
    // and free exactly once here.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: see above; `err` is not used after this.
    unsafe { bd_pickle_free_str(err) };
    // Drop caffe2's "[enforce fail at inline_container.cc:180] . " prefix: it locates
    // libtorch's source, not the user's problem.
    let msg = match (msg.starts_with("[enforce fail at "), msg.find("] ")) {
        (true, Some(end)) => msg[end + 2..].trim_start_matches(". "),
        _ => msg.as_str(),
    };
    // libtorch messages can span lines; the library's errors are one line each.
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path contains a NUL byte".into())
}

/// An open torch.save archive: its pickle program, then its decoded value.
pub(super) struct Archive {
    raw: *mut RawArchive,
}

impl Drop for Archive {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `bd_pickle_open` and is closed only here.
        unsafe { bd_pickle_close(self.raw) };
    }
}

impl Archive {
    /// Opens the zip archive at `path` and reads its `data.pkl`; the error is libtorch's message.
    pub(super) fn open(path: &Path) -> Result<Self, String> {
        let cpath = c_path(path)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `cpath` is a valid C string for the call; `err` is a valid out-pointer.
        let raw = unsafe { bd_pickle_open(cpath.as_ptr(), &mut err) };
        if raw.is_null() {
            return Err(take_message(err));
        }
        Ok(Archive { raw })
    }

    /// The pickle program (`data.pkl`), borrowed from the archive.
    pub(super) fn program(&self) -> &[u8] {
        let mut len = 0;
        // SAFETY: `raw` is open; the shim returns a pointer to `len` bytes it owns until close,
        // and the returned slice borrows `self`, so it cannot outlive the archive.
        unsafe {
            let ptr = bd_pickle_program(self.raw, &mut len);
            if ptr.is_null() || len == 0 {
                return &[];
            }
            std::slice::from_raw_parts(ptr, len)
        }
    }

    /// Unpickles the archive (tensors on the CPU, views sharing storage) into a [`Value`].
    pub(super) fn load(self) -> Result<Value, String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is open; `err` is a valid out-pointer.
        if unsafe { bd_pickle_load(self.raw, &mut err) } != 0 {
            return Err(take_message(err));
        }
        // SAFETY: `raw` is open and was loaded; the table holds `ntensors` tensors.
        let ntensors = unsafe { bd_pickle_ntensors(self.raw) };
        let mut tensors = Vec::with_capacity(ntensors);
        for i in 0..ntensors {
            // SAFETY: `i` is in range, so the shim returns a fresh `new at::Tensor` handle that
            // we own; `Tensor::from_ptr` takes that ownership and deletes it on drop.
            let ptr = unsafe { bd_pickle_tensor(self.raw, i) };
            if ptr.is_null() {
                return Err(format!("tensor {i} of {ntensors} is missing"));
            }
            tensors.push(Some(unsafe { Tensor::from_ptr(ptr) }));
        }
        let mut len = 0;
        // SAFETY: `raw` is open and loaded; the tree is `len` bytes owned by the archive, which
        // outlives this borrow (it is dropped at the end of this function).
        let tree = unsafe {
            let ptr = bd_pickle_tree(self.raw, &mut len);
            if ptr.is_null() || len == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(ptr, len)
            }
        };
        let mut decoder = Decoder {
            bytes: tree,
            pos: 0,
            tensors: &mut tensors,
        };
        let value = decoder.value()?;
        if decoder.pos != tree.len() {
            return Err("trailing bytes after the decoded value".into());
        }
        Ok(value)
    }
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    tensors: &'a mut [Option<Tensor>],
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or("the encoded value ends early")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short read")?))
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        // Every item takes at least one byte, so a larger count is corrupt.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.pos)
            .ok_or_else(|| "an encoded container is longer than its input".into())
    }

    fn items(&mut self) -> Result<Vec<Value>, String> {
        let n = self.len()?;
        (0..n).map(|_| self.value()).collect()
    }

    fn value(&mut self) -> Result<Value, String> {
        let tag = self.take(1)?[0];
        Ok(match tag {
            b'N' => Value::None,
            b'b' => Value::Bool(self.take(1)?[0] != 0),
            b'i' => Value::Int(self.u64()? as i64),
            b'f' => Value::Float(f64::from_bits(self.u64()?)),
            b's' => {
                let n = self.len()?;
                let s = std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8")?;
                Value::Str(s.to_owned())
            }
            b'l' => Value::List(self.items()?),
            b't' => Value::Tuple(self.items()?),
            b'd' => {
                let n = self.len()?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = self.value()?;
                    entries.push((key, self.value()?));
                }
                Value::Dict(entries)
            }
            b'T' => {
                let i = usize::try_from(self.u64()?).map_err(|_| "tensor index overflows")?;
                let slot = self.tensors.get_mut(i).ok_or("tensor index out of range")?;
                Value::Tensor(slot.take().ok_or("a tensor is referenced twice")?)
            }
            other => return Err(format!("unknown tag {other:#04x} in the encoded value")),
        })
    }
}

/// Encodes `value` for the shim; tensors are borrowed, so the pointers live as long as `value`.
pub(super) fn encode<'a>(
    value: &'a Value,
    bytes: &mut Vec<u8>,
    tensors: &mut Vec<&'a Tensor>,
) -> Result<(), String> {
    fn put_len(bytes: &mut Vec<u8>, n: usize) {
        bytes.extend_from_slice(&(n as u64).to_le_bytes());
    }
    match value {
        Value::None => bytes.push(b'N'),
        Value::Bool(b) => bytes.extend_from_slice(&[b'b', u8::from(*b)]),
        Value::Int(i) => {
            bytes.push(b'i');
            bytes.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            bytes.push(b'f');
            bytes.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            bytes.push(b's');
            put_len(bytes, s.len());
            bytes.extend_from_slice(s.as_bytes());
        }
        Value::List(items) | Value::Tuple(items) => {
            bytes.push(if matches!(value, Value::List(_)) {
                b'l'
            } else {
                b't'
            });
            put_len(bytes, items.len());
            for item in items {
                encode(item, bytes, tensors)?;
            }
        }
        Value::Dict(entries) => {
            bytes.push(b'd');
            put_len(bytes, entries.len());
            for (key, val) in entries {
                if !matches!(
                    key,
                    Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_)
                ) {
                    return Err(format!(
                        "dict keys must be str, int, float or bool, not {}",
                        key.type_name()
                    ));
                }
                encode(key, bytes, tensors)?;
                encode(val, bytes, tensors)?;
            }
        }
        Value::Tensor(t) => {
            if !t.defined() {
                return Err("cannot save an undefined tensor".into());
            }
            bytes.push(b'T');
            put_len(bytes, tensors.len());
            tensors.push(t);
        }
    }
    Ok(())
}

/// Where `save` streams the archive: a writer and the first error it returned.
struct Sink<'a> {
    out: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

/// Called by the shim for each chunk of the archive. It always reports every byte written, so
/// libtorch never sees a failure (a failed write inside libtorch's zip writer can end in
/// `std::terminate` from its destructor); the first error is kept for `save` to return.
unsafe extern "C" fn write_chunk(ctx: *mut c_void, buf: *const c_void, n: usize) -> usize {
    // SAFETY: `ctx` is the `&mut Sink` that `save` passed for the duration of the call.
    let sink = unsafe { &mut *(ctx as *mut Sink) };
    if sink.error.is_none() && n > 0 {
        // SAFETY: the shim passes `n` readable bytes at `buf`.
        let chunk = unsafe { std::slice::from_raw_parts(buf as *const u8, n) };
        // No panic may cross into C++: write_all reports failures as errors.
        if let Err(e) = sink.out.write_all(chunk) {
            sink.error = Some(e);
        }
    }
    n
}

/// Why `save` failed: the writer's I/O error, or libtorch's message.
pub(super) enum SaveError {
    Io(std::io::Error),
    Torch(String),
}

/// Pickles `value` as torch.save does and streams the zip archive into `out`.
pub(super) fn save(value: &Value, out: &mut dyn Write) -> Result<(), SaveError> {
    let mut bytes = Vec::new();
    let mut tensors = Vec::new();
    encode(value, &mut bytes, &mut tensors).map_err(SaveError::Torch)?;
    let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
    let mut sink = Sink { out, error: None };
    let mut err = std::ptr::null_mut();
    // SAFETY: `bytes` and `ptrs` are valid for the call, and every pointer in `ptrs` is a live
    // tensor borrowed from `value`; the shim only copies the handles (refcount bumps).
    // `write_chunk` gets `&mut sink`, which outlives the call.
    let rc = unsafe {
        bd_pickle_save(
            bytes.as_ptr(),
            bytes.len(),
            ptrs.as_ptr(),
            ptrs.len(),
            write_chunk,
            &mut sink as *mut Sink as *mut c_void,
            &mut err,
        )
    };
    if let Some(e) = sink.error {
        if !err.is_null() {
            take_message(err);
        }
        return Err(SaveError::Io(e));
    }
    if rc != 0 {
        return Err(SaveError::Torch(take_message(err)));
    }
    Ok(())
}

/// How a tensor lies in its storage; see [`super::storage_view`].
pub(super) fn storage(t: &Tensor) -> Result<(usize, usize, i64), String> {
    let (mut nbytes, mut offset) = (0usize, 0i64);
    let mut err = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor for the call; the out-pointers are valid.
    let ptr = unsafe { bd_tensor_storage(t.as_ptr(), &mut nbytes, &mut offset, &mut err) };
    if !err.is_null() {
        return Err(take_message(err));
    }
    Ok((ptr as usize, nbytes, offset))
}
