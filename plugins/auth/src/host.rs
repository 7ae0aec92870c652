//! The few host calls the fetched key set needs and the SDK does not offer: an HTTP call from
//! the root context (the SDK sends calls from requests only), reading its response there, and
//! shared data with its compare-and-swap version (the SDK's `shared::get` drops it).
//!
//! Every `unsafe` block calls a host import with pointers to memory this module owns for the
//! duration of the call, or takes ownership of bytes the host allocated through the SDK's
//! allocator (`proxy_on_memory_allocate`, exported by this crate). Off wasm32 (unit tests)
//! every call answers `Unimplemented` and touches nothing.

use sluice_sdk::abi::{BufferType, MapType, Status};

/// `Ok` for status OK, else the status (an unknown number is an internal failure).
#[cfg(target_arch = "wasm32")]
fn check(raw: u32) -> Result<(), Status> {
    match Status::try_from(raw) {
        Ok(Status::Ok) => Ok(()),
        Ok(other) => Err(other),
        Err(_) => Err(Status::InternalFailure),
    }
}

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_http_call(
            upstream_ptr: *const u8,
            upstream_len: usize,
            headers_ptr: *const u8,
            headers_len: usize,
            body_ptr: *const u8,
            body_len: usize,
            trailers_ptr: *const u8,
            trailers_len: usize,
            timeout_ms: u32,
            ret_token: *mut u32,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key_ptr: *const u8,
            key_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            t: u32,
            start: usize,
            max: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_ptr: *const u8,
            key_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
            ret_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
            cas: u32,
        ) -> u32;
    }
}

/// Takes ownership of the `len` bytes the host wrote at `ptr`.
#[cfg(target_arch = "wasm32")]
fn owned(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host obtained `ptr` from this crate's `proxy_on_memory_allocate(len)`
    // (`sluice_sdk::dispatcher::allocate`: exactly `len` bytes, alignment 1, global
    // allocator), filled it and handed it over; nothing else refers to it.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Bytes returned through (pointer, length) out-parameters; `Ok(None)` for NOT_FOUND.
#[cfg(target_arch = "wasm32")]
fn bytes(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let mut ptr: *mut u8 = core::ptr::null_mut();
    let mut len: usize = 0;
    match check(call(&mut ptr, &mut len)) {
        Ok(()) => Ok(Some(owned(ptr, len))),
        Err(Status::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `proxy_http_call` with `headers` already encoded as a header map and no body; returns the
/// call's token.
#[cfg(target_arch = "wasm32")]
pub fn http_call(upstream: &str, headers: &[u8], timeout_ms: u32) -> Result<u32, Status> {
    let mut token = 0u32;
    // SAFETY: the slices are borrowed for the call and only read; `token` is a local the host
    // writes once.
    check(unsafe {
        raw::proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            core::ptr::null(),
            0,
            core::ptr::null(),
            0,
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// The `:status` of the HTTP call response being delivered.
#[cfg(target_arch = "wasm32")]
pub fn call_status() -> Result<Option<Vec<u8>>, Status> {
    let name = ":status";
    // SAFETY: `name` is borrowed for the call; the out-pointers point to locals of `bytes`.
    bytes(|p, l| unsafe {
        raw::proxy_get_header_map_value(
            MapType::HttpCallResponseHeaders as u32,
            name.as_ptr(),
            name.len(),
            p,
            l,
        )
    })
}

/// The first `max` bytes of the HTTP call response body being delivered.
#[cfg(target_arch = "wasm32")]
pub fn call_body(max: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: the out-pointers point to locals of `bytes` that outlive the call.
    bytes(|p, l| unsafe {
        raw::proxy_get_buffer_bytes(BufferType::HttpCallResponseBody as u32, 0, max, p, l)
    })
}

/// Shared data `key` and its version (`cas`); `Ok(None)` if there is none.
#[cfg(target_arch = "wasm32")]
pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut ptr: *mut u8 = core::ptr::null_mut();
    let mut len: usize = 0;
    let mut cas = 0u32;
    // SAFETY: `key` is borrowed for the call; the three out-pointers point to locals.
    let status = unsafe {
        raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas)
    };
    match check(status) {
        Ok(()) => Ok(Some((owned(ptr, len), cas))),
        Err(Status::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets shared data `key` if its version is still `cas` (0: whatever it is).
#[cfg(target_arch = "wasm32")]
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: `key` and `value` are borrowed for the call and only read.
    check(unsafe {
        raw::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub fn http_call(_upstream: &str, _headers: &[u8], _timeout_ms: u32) -> Result<u32, Status> {
    Err(Status::Unimplemented)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn call_status() -> Result<Option<Vec<u8>>, Status> {
    let _ = MapType::HttpCallResponseHeaders;
    Err(Status::Unimplemented)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn call_body(_max: usize) -> Result<Option<Vec<u8>>, Status> {
    let _ = BufferType::HttpCallResponseBody;
    Err(Status::Unimplemented)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn shared_get(_key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    Err(Status::Unimplemented)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn shared_set(_key: &str, _value: &[u8], _cas: u32) -> Result<(), Status> {
    Err(Status::Unimplemented)
}
