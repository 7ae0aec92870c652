//! The Proxy-Wasm plugin host (in progress): the wasmtime engine, bounds-checked guest memory
//! access and the WASI preview 1 shim. Plugins are not run on requests yet.

pub mod engine;
pub mod memory;
pub mod wasi;
