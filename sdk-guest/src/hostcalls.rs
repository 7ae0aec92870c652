//! The raw host imports of Proxy-Wasm ABI v0.2.1 (module `env`) and thin wrappers that turn
//! their statuses into `Result`s. Private to the SDK: plugins use the safe API.
//!
//! Every `unsafe` block here calls a host import with pointers to memory this module owns for
//! the duration of the call, or takes ownership of bytes the host allocated through
//! [`crate::dispatcher::allocate`]. Off wasm32 (native builds, unit tests) the imports do not
//! exist: every call answers `Unimplemented` without touching anything.

use sluice_abi::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

/// What a raw call returned: `Ok` or the host's status.
#[cfg(any(target_arch = "wasm32", test))]
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
        pub fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
        pub fn proxy_get_log_level(ret: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(ms: u32) -> u32;
        pub fn proxy_set_effective_context(context: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            t: u32,
            start: usize,
            max: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            t: u32,
            start: usize,
            size: usize,
            ptr: *const u8,
            len: usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map: u32,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key_ptr: *const u8,
            key_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key_ptr: *const u8, key_len: usize) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details_ptr: *const u8,
            details_len: usize,
            body_ptr: *const u8,
            body_len: usize,
            headers_ptr: *const u8,
            headers_len: usize,
            grpc_status: i32,
        ) -> u32;
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
        pub fn proxy_get_property(
            path_ptr: *const u8,
            path_len: usize,
            ret_ptr: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_ptr: *const u8,
            path_len: usize,
            value_ptr: *const u8,
            value_len: usize,
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
        pub fn proxy_define_metric(
            t: u32,
            name_ptr: *const u8,
            name_len: usize,
            ret: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, delta: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
    }

    // The gRPC imports (the SDK's `grpc` feature).
    #[cfg(feature = "grpc")]
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_status(
            code: *mut u32,
            message: *mut *mut u8,
            message_len: *mut usize,
        ) -> u32;
        pub fn proxy_grpc_call(
            upstream: *const u8,
            upstream_len: usize,
            service: *const u8,
            service_len: usize,
            method: *const u8,
            method_len: usize,
            metadata: *const u8,
            metadata_len: usize,
            message: *const u8,
            message_len: usize,
            timeout_ms: u32,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_grpc_stream(
            upstream: *const u8,
            upstream_len: usize,
            service: *const u8,
            service_len: usize,
            method: *const u8,
            method_len: usize,
            metadata: *const u8,
            metadata_len: usize,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_grpc_send(token: u32, message: *const u8, message_len: usize, end: u32)
            -> u32;
        pub fn proxy_grpc_cancel(token: u32) -> u32;
        pub fn proxy_grpc_close(token: u32) -> u32;
    }
}

/// Takes ownership of `len` bytes the host allocated at `ptr` through the SDK's allocator.
#[cfg(target_arch = "wasm32")]
fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host got `ptr` from `crate::dispatcher::allocate(len)`, which allocates
    // exactly `len` bytes with alignment 1 from the global allocator; it filled them and gave
    // up ownership by returning them, so nothing else refers to them.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Bytes returned through a (pointer, length) pair of out-parameters; `Ok(None)` on NOT_FOUND.
#[cfg(target_arch = "wasm32")]
fn bytes_out(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, Status> {
    let mut ptr: *mut u8 = core::ptr::null_mut();
    let mut len: usize = 0;
    match check(call(&mut ptr, &mut len)) {
        Ok(()) => Ok(Some(take(ptr, len))),
        Err(Status::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn unavailable<T>() -> Result<T, Status> {
    Err(Status::Unimplemented)
}

/// Generates a wrapper that calls the import on wasm32 and answers `Unimplemented` elsewhere.
macro_rules! host {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        #[cfg(target_arch = "wasm32")]
        pub fn $name($($arg: $ty),*) -> $ret $body

        $(#[$m])*
        #[cfg(not(target_arch = "wasm32"))]
        pub fn $name($($arg: $ty),*) -> $ret {
            $(let _ = $arg;)*
            unavailable()
        }
    };
}

host! {
    /// `proxy_log`.
    fn log(level: LogLevel, message: &str) -> Result<(), Status> {
        // SAFETY: `message` is borrowed for the call; the host reads `len` bytes at `ptr`.
        check(unsafe { raw::proxy_log(level as u32, message.as_ptr(), message.len()) })
    }
}

host! {
    /// `proxy_get_log_level`.
    fn log_level() -> Result<LogLevel, Status> {
        let mut level = 0u32;
        // SAFETY: `level` is a local u32 the host writes once.
        check(unsafe { raw::proxy_get_log_level(&mut level) })?;
        LogLevel::try_from(level).map_err(|_| Status::InternalFailure)
    }
}

host! {
    /// `proxy_get_current_time_nanoseconds`.
    fn now_nanos() -> Result<u64, Status> {
        let mut t = 0u64;
        // SAFETY: `t` is a local u64 the host writes once.
        check(unsafe { raw::proxy_get_current_time_nanoseconds(&mut t) })?;
        Ok(t)
    }
}

host! {
    /// `proxy_set_tick_period_milliseconds`.
    fn set_tick_period(ms: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_set_tick_period_milliseconds(ms) })
    }
}

host! {
    /// `proxy_set_effective_context`.
    fn set_effective_context(context: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_set_effective_context(context) })
    }
}

host! {
    /// `proxy_get_buffer_bytes`; `Ok(None)` when the host has no such buffer now.
    fn buffer(t: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
        // SAFETY: the out-pointers point to locals of `bytes_out` that outlive the call.
        bytes_out(|p, l| unsafe { raw::proxy_get_buffer_bytes(t as u32, start, max, p, l) })
    }
}

host! {
    /// `proxy_set_buffer_bytes`: replaces `size` bytes at `start` with `data`.
    fn set_buffer(t: BufferType, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
        // SAFETY: `data` is borrowed for the call; the host reads `len` bytes at `ptr`.
        check(unsafe {
            raw::proxy_set_buffer_bytes(t as u32, start, size, data.as_ptr(), data.len())
        })
    }
}

host! {
    /// `proxy_get_header_map_pairs`, encoded.
    fn header_pairs(map: MapType) -> Result<Option<Vec<u8>>, Status> {
        // SAFETY: the out-pointers point to locals of `bytes_out` that outlive the call.
        bytes_out(|p, l| unsafe { raw::proxy_get_header_map_pairs(map as u32, p, l) })
    }
}

host! {
    /// `proxy_get_header_map_value`; `Ok(None)` if absent.
    fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
        // SAFETY: `name` is borrowed for the call; the out-pointers point to locals of
        // `bytes_out` that outlive it.
        bytes_out(|p, l| unsafe {
            raw::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), p, l)
        })
    }
}

host! {
    /// `proxy_add_header_map_value`.
    fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        // SAFETY: `name` and `value` are borrowed for the call; the host only reads them.
        check(unsafe {
            raw::proxy_add_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }
}

host! {
    /// `proxy_replace_header_map_value`.
    fn replace_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        // SAFETY: `name` and `value` are borrowed for the call; the host only reads them.
        check(unsafe {
            raw::proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }
}

host! {
    /// `proxy_remove_header_map_value`.
    fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
        // SAFETY: `name` is borrowed for the call; the host only reads it.
        check(unsafe { raw::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
    }
}

host! {
    /// `proxy_continue_stream`.
    fn continue_stream(stream: StreamType) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_continue_stream(stream as u32) })
    }
}

host! {
    /// `proxy_send_local_response` (no gRPC status).
    fn send_local_response(status: u32, details: &str, body: &[u8], headers: &[u8]) -> Result<(), Status> {
        // SAFETY: `details`, `body` and `headers` are borrowed for the call; the host only
        // reads them.
        check(unsafe {
            raw::proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        })
    }
}

host! {
    /// `proxy_http_call`; returns the call's token.
    fn http_call(upstream: &str, headers: &[u8], body: &[u8], timeout_ms: u32) -> Result<u32, Status> {
        let mut token = 0u32;
        // SAFETY: every pointer is to a borrowed slice or a local that outlives the call; the
        // host reads the slices and writes the token once.
        check(unsafe {
            raw::proxy_http_call(
                upstream.as_ptr(),
                upstream.len(),
                headers.as_ptr(),
                headers.len(),
                body.as_ptr(),
                body.len(),
                core::ptr::null(),
                0,
                timeout_ms,
                &mut token,
            )
        })?;
        Ok(token)
    }
}

#[cfg(feature = "grpc")]
host! {
    /// `proxy_grpc_call`: a unary call of `service/method` on `upstream`; returns its token.
    fn grpc_call(upstream: &str, service: &str, method: &str, metadata: &[u8], message: &[u8], timeout_ms: u32) -> Result<u32, Status> {
        let mut token = 0u32;
        // SAFETY: every pointer is to a borrowed slice or a local that outlives the call; the
        // host reads the slices and writes the token once.
        check(unsafe {
            raw::proxy_grpc_call(
                upstream.as_ptr(),
                upstream.len(),
                service.as_ptr(),
                service.len(),
                method.as_ptr(),
                method.len(),
                metadata.as_ptr(),
                metadata.len(),
                message.as_ptr(),
                message.len(),
                timeout_ms,
                &mut token,
            )
        })?;
        Ok(token)
    }
}

#[cfg(feature = "grpc")]
host! {
    /// `proxy_grpc_stream`: opens a stream of `service/method` on `upstream`; returns its token.
    fn grpc_stream(upstream: &str, service: &str, method: &str, metadata: &[u8]) -> Result<u32, Status> {
        let mut token = 0u32;
        // SAFETY: as for `grpc_call`: borrowed slices and a local token the host writes once.
        check(unsafe {
            raw::proxy_grpc_stream(
                upstream.as_ptr(),
                upstream.len(),
                service.as_ptr(),
                service.len(),
                method.as_ptr(),
                method.len(),
                metadata.as_ptr(),
                metadata.len(),
                &mut token,
            )
        })?;
        Ok(token)
    }
}

#[cfg(feature = "grpc")]
host! {
    /// `proxy_grpc_send`: one message on stream `token` (`end`: the last one).
    fn grpc_send(token: u32, message: &[u8], end: bool) -> Result<(), Status> {
        // SAFETY: `message` is borrowed for the call; the host reads `len` bytes at `ptr`.
        check(unsafe { raw::proxy_grpc_send(token, message.as_ptr(), message.len(), u32::from(end)) })
    }
}

#[cfg(feature = "grpc")]
host! {
    /// `proxy_grpc_cancel`.
    fn grpc_cancel(token: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_grpc_cancel(token) })
    }
}

#[cfg(feature = "grpc")]
host! {
    /// `proxy_grpc_close`.
    fn grpc_close(token: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_grpc_close(token) })
    }
}

#[cfg(feature = "grpc")]
host! {
    /// `proxy_get_status`: the status code and message of the call being delivered.
    fn status() -> Result<(u32, Vec<u8>), Status> {
        let mut code = 0u32;
        let message = bytes_out(|p, l| {
            // SAFETY: `code` is a local the host writes once; the out-pointers point to
            // locals of `bytes_out` that outlive the call.
            unsafe { raw::proxy_get_status(&mut code, p, l) }
        })?;
        Ok((code, message.unwrap_or_default()))
    }
}

host! {
    /// `proxy_get_property`; `Ok(None)` if absent.
    fn property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        // SAFETY: `path` is borrowed for the call; the out-pointers point to locals of
        // `bytes_out` that outlive it.
        bytes_out(|p, l| unsafe { raw::proxy_get_property(path.as_ptr(), path.len(), p, l) })
    }
}

host! {
    /// `proxy_set_property`.
    fn set_property(path: &[u8], value: &[u8]) -> Result<(), Status> {
        // SAFETY: `path` and `value` are borrowed for the call; the host only reads them.
        check(unsafe {
            raw::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
        })
    }
}

host! {
    /// `proxy_get_shared_data`: the value and its version; `Ok(None)` if absent.
    fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
        let mut ptr: *mut u8 = core::ptr::null_mut();
        let mut len: usize = 0;
        let mut cas = 0u32;
        // SAFETY: `key` is borrowed for the call; the three out-pointers point to locals that
        // outlive it.
        let raw = unsafe {
            raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas)
        };
        match check(raw) {
            Ok(()) => Ok(Some((take(ptr, len), cas))),
            Err(Status::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

host! {
    /// `proxy_set_shared_data` (`cas` 0: unconditional).
    fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        // SAFETY: `key` and `value` are borrowed for the call; the host only reads them.
        check(unsafe {
            raw::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        })
    }
}

host! {
    /// `proxy_define_metric`.
    fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut id = 0u32;
        // SAFETY: `name` is borrowed for the call; `id` is a local the host writes once.
        check(unsafe { raw::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }
}

host! {
    /// `proxy_increment_metric`.
    fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_increment_metric(id, delta) })
    }
}

host! {
    /// `proxy_record_metric`.
    fn record_metric(id: u32, value: u64) -> Result<(), Status> {
        // SAFETY: no pointers.
        check(unsafe { raw::proxy_record_metric(id, value) })
    }
}

host! {
    /// `proxy_get_metric`.
    fn get_metric(id: u32) -> Result<u64, Status> {
        let mut v = 0u64;
        // SAFETY: `v` is a local the host writes once.
        check(unsafe { raw::proxy_get_metric(id, &mut v) })?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_results() {
        assert_eq!(check(0), Ok(()));
        assert_eq!(check(1), Err(Status::NotFound));
        assert_eq!(check(8), Err(Status::CasMismatch));
        assert_eq!(check(9999), Err(Status::InternalFailure), "unknown status");
    }

    #[test]
    fn off_wasm_every_call_is_unimplemented() {
        assert_eq!(log(LogLevel::Info, "x"), Err(Status::Unimplemented));
        assert_eq!(
            header_value(MapType::RequestHeaders, "x"),
            Err(Status::Unimplemented)
        );
        assert_eq!(shared_set("k", b"v", 0), Err(Status::Unimplemented));
    }
}
