//! The Proxy-Wasm plugin host (in progress): the wasmtime engine and bounds-checked guest
//! memory access. Plugins are not run on requests yet.

pub mod engine;
pub mod memory;
