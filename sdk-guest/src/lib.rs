//! The Sluice SDK for writing Proxy-Wasm (ABI v0.2.1) plugins in Rust.
//!
//! This first version carries the ABI types, the guest allocator the host needs, and a few
//! host calls (logging, buffers, adding a header); the plugin traits and the dispatcher come
//! next. Raw imports live in the private `hostcalls` module; what plugins call is the safe
//! API below, which returns the host's status as an error instead of panicking.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

#[cfg(target_arch = "wasm32")]
use alloc::vec::Vec;

pub use sluice_abi as abi;
#[cfg(any(target_arch = "wasm32", test))]
use sluice_abi::Status;
#[cfg(target_arch = "wasm32")]
use sluice_abi::{BufferType, MapType};

/// Raw host imports. Private: the safe API below is what plugins use.
#[cfg(target_arch = "wasm32")]
mod hostcalls {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }
}

/// The allocator the host calls to hand the plugin bytes (`proxy_on_memory_allocate`): `size`
/// bytes with alignment 1, owned by the plugin from then on. Returns 0 if `size` is 0 or the
/// memory cannot grow.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    if size == 0 {
        return core::ptr::null_mut();
    }
    let Ok(layout) = core::alloc::Layout::array::<u8>(size) else {
        return core::ptr::null_mut();
    };
    // SAFETY: `layout` has a non-zero size (checked above). The host writes at most `size`
    // bytes there, and `take` rebuilds the Vec with exactly this layout (capacity `size`).
    unsafe { alloc::alloc::alloc(layout) }
}

/// Turns a raw status into `Ok(())` or the error the host reported.
#[cfg(any(target_arch = "wasm32", test))]
fn status(raw: u32) -> Result<(), Status> {
    match Status::try_from(raw) {
        Ok(Status::Ok) => Ok(()),
        Ok(other) => Err(other),
        Err(_) => Err(Status::InternalFailure),
    }
}

/// Takes ownership of bytes the host allocated with [`proxy_on_memory_allocate`].
#[cfg(target_arch = "wasm32")]
fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated exactly `len` bytes at `ptr` through
    // `proxy_on_memory_allocate` (alignment 1, capacity `len`), filled them, and gave up
    // ownership; nothing else refers to them.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Writes `message` to the host's log at `level`.
#[cfg(target_arch = "wasm32")]
pub fn log(level: abi::LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: the pointer and length describe `message`, which stays borrowed for the whole
    // call; the host only reads that range.
    status(unsafe { hostcalls::proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// Up to `max` bytes of buffer `buffer` from `start`; `Ok(None)` if the host has no such
/// buffer now (for example a body outside its callback).
#[cfg(target_arch = "wasm32")]
pub fn buffer(buffer: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    let mut ptr: *mut u8 = core::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: both out-pointers point to locals that outlive the call; the host writes one
    // pointer and one length there.
    let raw =
        unsafe { hostcalls::proxy_get_buffer_bytes(buffer as u32, start, max, &mut ptr, &mut len) };
    match status(raw) {
        Ok(()) => Ok(Some(take(ptr, len))),
        Err(Status::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Adds a value of header `name` to `map` (another value if it is already there).
#[cfg(target_arch = "wasm32")]
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the pointers and lengths describe `name` and `value`, borrowed for the whole
    // call; the host only reads those ranges.
    status(unsafe {
        hostcalls::proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status(0), Ok(()));
        assert_eq!(status(1), Err(Status::NotFound));
        assert_eq!(status(9999), Err(Status::InternalFailure));
    }
}
