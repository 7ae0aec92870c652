//! The Sluice SDK: write Proxy-Wasm (ABI v0.2.1) HTTP filters in Rust.
//!
//! A plugin is a type implementing [`Plugin`] (made once per VM from its configuration) whose
//! [`Plugin::filter`] makes an [`HttpFilter`] for each request. One line registers it:
//!
//! ```ignore
//! sluice_sdk::plugin!(MyPlugin);
//! ```
//!
//! The plugin then runs on Sluice and on any host of the same ABI (Envoy's Wasm filter):
//! the SDK uses nothing but ABI v0.2.1. Every call that can fail returns a `Result`; the SDK
//! never panics on a status the host returns. Start with `docs/sdk.md`.
//!
//! gRPC calls and streams (`GrpcCall`, `Request::grpc_call`, `Request::grpc_stream`)
//! need the `grpc` feature.
//!
//! Layout: raw imports and their `unsafe` live in the private `hostcalls` module; the
//! `proxy_on_*` callbacks in [`dispatcher`]; everything else is safe API.
#![deny(missing_docs)]

mod body;
pub mod dispatcher;
mod error;
#[cfg(feature = "grpc")]
mod grpc;
mod headers;
mod hostcalls;
mod http_call;
pub mod log;
pub mod metrics;
mod plugin;
pub mod properties;
mod reply;
mod request;
mod response;
pub mod shared;

pub use error::Error;
#[cfg(feature = "grpc")]
pub use grpc::{GrpcCall, GrpcStatus, GrpcStream, GrpcStreamHandler, Metadata};
pub use headers::Headers;
pub use http_call::{Call, CallError, CallResponse};
pub use plugin::{HttpFilter, Plugin};
pub use reply::{Action, Reply};
pub use request::{query_param, Request};
pub use response::Response;
pub use sluice_abi as abi;

/// Embeds the JSON Schema of the plugin's `config` in the `.wasm`, as its custom section
/// `sluice.config_schema`. Sluice validates a plugin's `config` against it before
/// `on_configure` runs, and refuses a config that does not satisfy it, naming the field
/// (`plugins.NAME.config.FIELD: …`). Without an argument, the schema is the file
/// `config.schema.json` at the root of the crate (beside `Cargo.toml`); with one, the file at
/// that path (relative to the file the macro is called in):
///
/// ```ignore
/// sluice_sdk::config_schema!();
/// sluice_sdk::config_schema!("../schemas/config.json");
/// ```
///
/// Only wasm builds carry it (a native build of the crate, e.g. for its tests, does not).
#[macro_export]
macro_rules! config_schema {
    () => {
        $crate::config_schema!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.schema.json"));
    };
    ($path:expr) => {
        /// The JSON Schema of this plugin's `config` (custom section `sluice.config_schema`).
        #[cfg(target_family = "wasm")]
        #[link_section = "sluice.config_schema"]
        #[used]
        static SLUICE_CONFIG_SCHEMA: [u8; include_bytes!($path).len()] = *include_bytes!($path);
    };
}

/// Exports the ABI's callbacks for plugin type `$plugin` (one per crate). Put it at the top
/// level of a `cdylib` crate:
///
/// ```ignore
/// sluice_sdk::plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! plugin {
    ($plugin:ty) => {
        /// Marks the module as speaking Proxy-Wasm ABI v0.2.1.
        #[no_mangle]
        pub extern "C" fn proxy_abi_version_0_2_1() {}

        /// The allocator the host hands bytes through.
        #[no_mangle]
        pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
            $crate::dispatcher::allocate(size)
        }

        #[no_mangle]
        extern "C" fn proxy_on_context_create(context: u32, parent: u32) {
            $crate::dispatcher::on_context_create::<$plugin>(context, parent)
        }

        #[no_mangle]
        extern "C" fn proxy_on_vm_start(root: u32, size: usize) -> u32 {
            $crate::dispatcher::on_vm_start(root, size)
        }

        #[no_mangle]
        extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
            $crate::dispatcher::on_configure(root, size)
        }

        #[no_mangle]
        extern "C" fn proxy_on_tick(root: u32) {
            $crate::dispatcher::on_tick(root)
        }

        #[no_mangle]
        extern "C" fn proxy_on_request_headers(context: u32, headers: usize, eos: u32) -> u32 {
            $crate::dispatcher::on_request_headers(context, headers, eos)
        }

        #[no_mangle]
        extern "C" fn proxy_on_request_body(context: u32, size: usize, eos: u32) -> u32 {
            $crate::dispatcher::on_request_body(context, size, eos)
        }

        #[no_mangle]
        extern "C" fn proxy_on_request_trailers(context: u32, trailers: usize) -> u32 {
            $crate::dispatcher::on_trailers(context, trailers)
        }

        #[no_mangle]
        extern "C" fn proxy_on_response_headers(context: u32, headers: usize, eos: u32) -> u32 {
            $crate::dispatcher::on_response_headers(context, headers, eos)
        }

        #[no_mangle]
        extern "C" fn proxy_on_response_body(context: u32, size: usize, eos: u32) -> u32 {
            $crate::dispatcher::on_response_body(context, size, eos)
        }

        #[no_mangle]
        extern "C" fn proxy_on_response_trailers(context: u32, trailers: usize) -> u32 {
            $crate::dispatcher::on_trailers(context, trailers)
        }

        #[no_mangle]
        extern "C" fn proxy_on_log(context: u32) {
            $crate::dispatcher::on_log(context)
        }

        #[no_mangle]
        extern "C" fn proxy_on_done(context: u32) -> u32 {
            $crate::dispatcher::on_done(context)
        }

        #[no_mangle]
        extern "C" fn proxy_on_delete(context: u32) {
            $crate::dispatcher::on_delete(context)
        }

        #[no_mangle]
        extern "C" fn proxy_on_http_call_response(
            context: u32,
            token: u32,
            headers: usize,
            body: usize,
            trailers: usize,
        ) {
            $crate::dispatcher::on_http_call_response(context, token, headers, body, trailers)
        }

        $crate::__grpc_exports!();
    };
}

/// The gRPC callbacks, exported by [`plugin!`] when the SDK's `grpc` feature is on.
#[cfg(feature = "grpc")]
#[doc(hidden)]
#[macro_export]
macro_rules! __grpc_exports {
    () => {
        #[no_mangle]
        extern "C" fn proxy_on_grpc_receive_initial_metadata(context: u32, token: u32, n: u32) {
            $crate::dispatcher::on_grpc_receive_initial_metadata(context, token, n)
        }

        #[no_mangle]
        extern "C" fn proxy_on_grpc_receive(context: u32, token: u32, size: usize) {
            $crate::dispatcher::on_grpc_receive(context, token, size)
        }

        #[no_mangle]
        extern "C" fn proxy_on_grpc_receive_trailing_metadata(context: u32, token: u32, n: u32) {
            $crate::dispatcher::on_grpc_receive_trailing_metadata(context, token, n)
        }

        #[no_mangle]
        extern "C" fn proxy_on_grpc_close(context: u32, token: u32, code: u32) {
            $crate::dispatcher::on_grpc_close(context, token, code)
        }
    };
}

/// Without the `grpc` feature, no gRPC callbacks (and none of their code in the plugin).
#[cfg(not(feature = "grpc"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __grpc_exports {
    () => {};
}
