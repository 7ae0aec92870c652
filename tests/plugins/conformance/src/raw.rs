//! Host calls made through the plugin's own `env` imports instead of the SDK's, where the
//! test needs the host's status as it is: the SDK's wrappers panic on any status they do not
//! expect (e.g. `proxy_continue_stream` answering NOT_FOUND from a root context).

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
}

/// `proxy_set_effective_context(context_id)`: the status.
pub fn set_effective_context(context_id: u32) -> u32 {
    // SAFETY: a host import taking and returning plain integers; no memory is shared.
    unsafe { proxy_set_effective_context(context_id) }
}

/// `proxy_continue_stream(stream_type)`: the status.
pub fn continue_stream(stream_type: u32) -> u32 {
    // SAFETY: a host import taking and returning plain integers; no memory is shared.
    unsafe { proxy_continue_stream(stream_type) }
}

/// `proxy_close_stream(stream_type)`: the status.
pub fn close_stream(stream_type: u32) -> u32 {
    // SAFETY: a host import taking and returning plain integers; no memory is shared.
    unsafe { proxy_close_stream(stream_type) }
}
