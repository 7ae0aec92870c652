//! Plugins end to end: the real `sluice` binary running real Proxy-Wasm plugins — built with
//! the public Rust SDK (`proxy-wasm` 0.2.5) and the AssemblyScript SDK — between a real HTTP
//! client and a real upstream on 127.0.0.1.
//!
//! The plugins are built by `make wasm` and `make wasm-as` (both run before the tests in
//! `make test`); see `tests/plugins/README.md` for what each mode does.

#[path = "../support/mod.rs"]
mod support;

// The tests, one module per subject.
mod assemblyscript;
mod bodies;
mod callouts;
mod chain;
mod failures;
mod host_calls;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

fn plugin_file(rel: &str, how: &str) -> PathBuf {
    let p = target_dir().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: build it with `{how}` first",
        p.display()
    );
    p
}

/// A temp dir holding the test plugins as `sdk.wasm` and `as.wasm`.
fn plugin_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let sdk = plugin_file(
        "wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm",
        "make wasm",
    );
    std::fs::copy(sdk, dir.join("sdk.wasm")).unwrap();
    let asc = plugin_file("wasm-plugins/sluice_as.wasm", "make wasm-as");
    std::fs::copy(asc, dir.join("as.wasm")).unwrap();
    dir
}

/// A config with one upstream `backend`, routes `(name, prefix, plugins)` and plugin entries.
fn config(upstream: std::net::SocketAddr, routes: &[(&str, &str, &str)], plugins: &str) -> String {
    let mut s = format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n"
    );
    for (name, prefix, plugins) in routes {
        s.push_str(&format!(
            "  - {{ name: {name}, match: {{ path_prefix: '{prefix}' }}, upstream: backend, plugins: [{plugins}] }}\n"
        ));
    }
    s.push_str("plugins:\n");
    s.push_str(plugins);
    s
}

async fn start(routes: &[(&str, &str, &str)], plugins: &str) -> Sluice {
    let up = upstream("backend").await;
    let dir = plugin_dir("plugins");
    Sluice::start_in(&config(up, routes, plugins), dir).await
}

fn values<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}
