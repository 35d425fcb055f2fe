//! The C API of `csrc/c10d_shim.cpp`. Every function reports a C++ exception through `err` (a
//! malloc'd message that [`take_message`] frees); none unwinds into Rust.

use std::ffi::{c_char, CStr};

use torch_sys::C_tensor;

/// Opaque handle on a Gloo process group and its TCP store (`bd_pg`).
#[repr(C)]
pub struct RawGroup {
    _private: [u8; 0],
}

/// Opaque handle on a store connection of its own (`bd_store`).
#[repr(C)]
pub struct RawStore {
    _private: [u8; 0],
}

extern "C" {
    pub fn bd_c10d_free_str(s: *mut c_char);
    #[allow(clippy::too_many_arguments)]
    pub fn bd_pg_new(
        host: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        server: i32,
        iface: *const c_char,
        bind_host: i32,
        store_timeout_ms: i64,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    pub fn bd_pg_free(pg: *mut RawGroup);
    pub fn bd_all_reduce(
        pg: *mut RawGroup,
        t: *mut C_tensor,
        op: i32,
        err: *mut *mut c_char,
    ) -> i32;
    pub fn bd_broadcast(
        pg: *mut RawGroup,
        t: *mut C_tensor,
        root: i32,
        err: *mut *mut c_char,
    ) -> i32;
    pub fn bd_all_gather(
        pg: *mut RawGroup,
        outs: *const *mut C_tensor,
        n: i32,
        input: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> i32;
    pub fn bd_barrier(pg: *mut RawGroup, err: *mut *mut c_char) -> i32;
    pub fn bd_store_open(pg: *mut RawGroup, err: *mut *mut c_char) -> *mut RawStore;
    pub fn bd_store_free(s: *mut RawStore);
    pub fn bd_store_add(
        s: *mut RawStore,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut *mut c_char,
    ) -> i32;
}

/// Takes ownership of an error message from the shim, keeping its first line (libtorch's
/// messages can carry a multi-line context that says nothing to the user).
pub fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error (no message)".into();
    }
    // SAFETY: the shim only sets `err` to a NUL-terminated string from malloc, which we own
    // and free exactly once here.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: see above; `err` is not used after this.
    unsafe { bd_c10d_free_str(err) };
    msg.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error")
        .to_string()
}
