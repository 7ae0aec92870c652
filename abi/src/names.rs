//! Names of the imports and exports of ABI v0.2.1, as the host links them and the guest
//! declares them.

/// Module of the Proxy-Wasm host functions.
pub const ENV: &str = "env";
/// Module of the WASI preview 1 functions.
pub const WASI_SNAPSHOT_PREVIEW1: &str = "wasi_snapshot_preview1";
/// Older name of the WASI preview 1 module (AssemblyScript SDK, old toolchains).
pub const WASI_UNSTABLE: &str = "wasi_unstable";

/// The 39 host functions of ABI v0.2.1, in module [`ENV`].
pub const IMPORTS: [&str; 39] = [
    "proxy_done",
    "proxy_set_effective_context",
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_size",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_get_status",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_call_foreign_function",
];

/// Export marking ABI v0.2.1.
pub const ABI_VERSION_0_2_1: &str = "proxy_abi_version_0_2_1";
/// Export marking ABI v0.2.0 (the Go SDKs); accepted as compatible.
pub const ABI_VERSION_0_2_0: &str = "proxy_abi_version_0_2_0";

/// Guest exports the host calls, when present.
pub mod exports {
    /// Reactor initialisation (WASI).
    pub const INITIALIZE: &str = "_initialize";
    /// Command entry point (WASI), used when `_initialize` is absent.
    pub const START: &str = "_start";
    /// `main(argc, argv)`, called with zeros after `_initialize` when exported.
    pub const MAIN: &str = "main";
    /// Guest allocator (preferred).
    pub const MALLOC: &str = "malloc";
    /// Guest allocator (Rust SDK on wasm32-wasip1).
    pub const ON_MEMORY_ALLOCATE: &str = "proxy_on_memory_allocate";
    /// `(context_id, parent_id)`.
    pub const ON_CONTEXT_CREATE: &str = "proxy_on_context_create";
    /// `(root_id, vm_config_len) -> bool`.
    pub const ON_VM_START: &str = "proxy_on_vm_start";
    /// `(root_id, plugin_config_len) -> bool`.
    pub const ON_CONFIGURE: &str = "proxy_on_configure";
    /// `(root_id)`.
    pub const ON_TICK: &str = "proxy_on_tick";
    /// `(ctx, n_headers, end_of_stream) -> action`.
    pub const ON_REQUEST_HEADERS: &str = "proxy_on_request_headers";
    /// `(ctx, body_len, end_of_stream) -> action`.
    pub const ON_REQUEST_BODY: &str = "proxy_on_request_body";
    /// `(ctx, n_trailers) -> action`.
    pub const ON_REQUEST_TRAILERS: &str = "proxy_on_request_trailers";
    /// `(ctx, n_headers, end_of_stream) -> action`.
    pub const ON_RESPONSE_HEADERS: &str = "proxy_on_response_headers";
    /// `(ctx, body_len, end_of_stream) -> action`.
    pub const ON_RESPONSE_BODY: &str = "proxy_on_response_body";
    /// `(ctx, n_trailers) -> action`.
    pub const ON_RESPONSE_TRAILERS: &str = "proxy_on_response_trailers";
    /// `(ctx)`.
    pub const ON_LOG: &str = "proxy_on_log";
    /// `(ctx) -> bool`.
    pub const ON_DONE: &str = "proxy_on_done";
    /// `(ctx)`.
    pub const ON_DELETE: &str = "proxy_on_delete";
    /// `(ctx, token, n_headers, body_len, n_trailers)`.
    pub const ON_HTTP_CALL_RESPONSE: &str = "proxy_on_http_call_response";
    /// `(root_id, queue_id)`.
    pub const ON_QUEUE_READY: &str = "proxy_on_queue_ready";
    /// `(ctx, token, n_headers)`.
    pub const ON_GRPC_RECEIVE_INITIAL_METADATA: &str = "proxy_on_grpc_receive_initial_metadata";
    /// `(ctx, token, message_len)`.
    pub const ON_GRPC_RECEIVE: &str = "proxy_on_grpc_receive";
    /// `(ctx, token, n_trailers)`.
    pub const ON_GRPC_RECEIVE_TRAILING_METADATA: &str = "proxy_on_grpc_receive_trailing_metadata";
    /// `(ctx, token, status_code)`.
    pub const ON_GRPC_CLOSE: &str = "proxy_on_grpc_close";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_unique_and_prefixed() {
        for (i, a) in IMPORTS.iter().enumerate() {
            assert!(a.starts_with("proxy_"), "{a}");
            assert!(!IMPORTS[i + 1..].contains(a), "{a} listed twice");
        }
    }
}
