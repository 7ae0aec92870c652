//! The plugin host of Sluice: the wasmtime engine, plugins and their VMs, the Proxy-Wasm host
//! calls, what plugins may see, shared data, the per-request exchange driver and the test kit.
//!
//! It opens no connection of its own: plugins' callouts and gRPC calls go through
//! [`wasm::target::CalloutTarget`]s and shared data may live in a
//! [`wasm::shared::SharedStore`], both provided by the embedding (the proxy's upstream pools
//! and Redis store; the test kit's plain connections). See `docs/architecture.md`.
#![forbid(unsafe_code)]

pub mod chain;
pub mod exchange;
pub mod forwarding;
pub mod hash;
pub mod head;
pub mod metrics;
#[cfg(test)]
mod module_graph;
pub mod recording;
pub mod rollout;
pub mod tap;
pub mod testkit;
pub mod wasm;
