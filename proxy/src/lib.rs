//! Sluice: a reverse proxy on pingora whose request filters are sandboxed WebAssembly plugins.
//!
//! This crate is the proxy host (the `sluice` binary and its library). See `docs/architecture.md`
//! for how the pieces fit together.
#![forbid(unsafe_code)]

// The plugin host (engine, VMs, host calls, exchange driver, test kit) is its own crate; its
// modules are re-exported under their old names.
pub use sluice_host::{
    chain, exchange, forwarding, hash, head, recording, rollout, tap, testkit, wasm,
};

pub mod admin;
pub mod admin_client;
pub mod config;
pub mod connections;
pub mod demo;
pub mod file_mark;
pub mod heads;
pub mod logging;
pub mod metrics;
pub mod plugin_schema;
pub mod plugins;
pub mod progress;
pub mod proxy;
pub mod redis;
pub mod request_head;
pub mod router;
pub mod runtime;
pub mod server;
pub mod source;
pub mod state;
pub mod triggers;
pub mod upstream;
