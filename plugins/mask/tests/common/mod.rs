//! What the mask plugin's tests share: the plugin's .wasm, loaded in the real host.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use sluice_testkit::{build_plugin, Kit, KitError, Options, TestResponse};

/// Test data that every preset masks.
pub const EMAIL: &str = "jane.doe@example.com";
/// A Visa test number (Luhn-valid).
pub const CARD: &str = "4111 1111 1111 1111";
/// A German example IBAN (mod-97-valid).
pub const IBAN: &str = "DE89 3704 0044 0532 0130 00";
/// A JWT-like bearer token.
pub const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";

/// The plugin's .wasm, built once per test binary.
pub fn wasm() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_plugin(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds"))
}

/// Loads the plugin with `options`.
pub fn try_load(options: Options) -> Result<Kit, KitError> {
    Kit::load(wasm(), options)
}

/// Loads the plugin with this configuration.
pub fn kit(config: serde_json::Value) -> Kit {
    try_load(Options::default().config_json(&config)).expect("the plugin loads")
}

/// A 200 response with a JSON body (and its content-length).
pub fn json_response(body: &str) -> TestResponse {
    TestResponse::ok(body).header("content-type", "application/json")
}
