//! Proxy-Wasm ABI v0.2.1 imports declared by the plugin itself instead of through the SDK.
//!
//! The SDK's wrappers panic on any status they do not expect and only ever pass valid
//! pointers. The `visible` and `badptr` modes need the host's status code as it is, and
//! `badptr` passes pointers and lengths outside linear memory on purpose, so they call these.
//! Statuses are plain `u32` so that any value the host returns is representable. Pointer
//! arguments are wasm32 addresses: the host reads and writes them through its bounds-checked
//! view of linear memory, the guest never dereferences them.

#[link(wasm_import_module = "env")]
extern "C" {
    pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;

    pub fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    pub fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;

    pub fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;

    pub fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;

    pub fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    pub fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;

    pub fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
}

/// Map type of the request headers in the ABI.
pub const MAP_REQUEST_HEADERS: u32 = 0;

/// `proxy_replace_header_map_value` with valid slices; returns the host's status code.
pub fn replace_header_map_value(map_type: u32, key: &[u8], value: &[u8]) -> u32 {
    // SAFETY: both pointers come from live slices with their exact lengths, which the host
    // only reads during the call; the function has no other preconditions.
    unsafe {
        proxy_replace_header_map_value(
            map_type,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    }
}
