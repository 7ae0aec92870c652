//! Test a plugin's real `.wasm` in the real Sluice host — the same engine, limits,
//! sanitizing and phase logic as the proxy — with no proxy and no upstream: script a request
//! and the upstream's response, then look at what reached the upstream, what the client got,
//! and what the plugin logged, counted and stored.
//!
//! ```no_run
//! use sluice_testkit::{build_plugin, Kit, Options, TestRequest, TestResponse};
//!
//! // In a plugin crate's tests: build the plugin's .wasm, load it with its configuration.
//! let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
//! let kit = Kit::load(&wasm, Options::default().config_json(&serde_json::json!({
//!     "header": "x-tagged"
//! }))).unwrap();
//! let out = kit.run(&TestRequest::get("/hello"), &TestResponse::ok("hi"));
//! assert_eq!(out.response.status, 200);
//! assert_eq!(out.forwarded.unwrap().header("x-tagged"), Some("yes"));
//! ```
//!
//! The same from the command line, with cases in YAML: `sluice plugin test`.
#![forbid(unsafe_code)]

pub use serde_json::json;
pub use sluice_host::testkit::*;
pub use sluice_host::wasm::settings::{FailurePolicy, Limits};
