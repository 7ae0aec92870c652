//! Sluice: a reverse proxy on pingora whose request filters are sandboxed WebAssembly plugins.
//!
//! This crate is the proxy host (the `sluice` binary and its library). See `docs/architecture.md`
//! for how the pieces fit together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod chain;
pub mod config;
pub mod connections;
pub mod demo;
pub mod exchange;
pub mod hash;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod redis;
pub mod reload;
pub mod request_head;
pub mod router;
pub mod runtime;
pub mod server;
pub mod source;
pub mod testkit;
pub mod upstream;
pub mod wasm;
