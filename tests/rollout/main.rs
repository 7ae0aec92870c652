//! Plugin rollouts through the real binary under load: the canary share and its stickiness,
//! a failing candidate rolled back by itself, promotion and abort by the admin API and the CLI.
//!
//! The stable and candidate versions are the library's `headers` plugin as two binaries (the
//! same module with different custom sections), each tagging responses with `x-version`; the
//! failing candidate is the public-SDK test plugin panicking in `on_request_headers`.

#[path = "../support/mod.rs"]
mod support;

mod canary;
mod capture;
mod control;
mod shadow;

use std::collections::BTreeMap;
use std::path::PathBuf;

use support::*;

/// A directory holding `v1.wasm`, `v2.wasm`, `v3.wasm` (the `headers` plugin) and `panics.wasm`
/// (the public-SDK test plugin).
fn plugin_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let base = built("wasm32-wasip1/plugin/sluice_plugin_headers.wasm");
    for v in ["v1", "v2", "v3"] {
        std::fs::write(dir.join(format!("{v}.wasm")), wasm_variant(&base, v)).unwrap();
    }
    std::fs::write(
        dir.join("panics.wasm"),
        built("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm"),
    )
    .unwrap();
    dir
}

/// The `config` of a `headers` plugin that tags responses with `x-version: VERSION`.
fn tagging(version: &str) -> String {
    format!("{{ rules: [{{ response: {{ set: {{ x-version: {version} }} }} }}] }}")
}

/// A config whose one route runs plugin `tag` (v1, tagging responses `x-version: v1`) with
/// `rollout` (YAML flow mapping).
fn config(upstream: std::net::SocketAddr, rollout: &str) -> String {
    config_with(upstream, &tagging("v1"), rollout)
}

/// A config whose one route runs plugin `tag` (v1 with `stable_config`) with `rollout`.
fn config_with(upstream: std::net::SocketAddr, stable_config: &str, rollout: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [tag] }}\n\
         plugins:\n  tag: {{ path: v1.wasm, config: {stable_config}, rollout: {rollout} }}\n"
    )
}

/// `/plugins/tag/rollout` once both versions together have counted `requests`.
async fn rollout_status_after(proxy: &Sluice, requests: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = get_json(proxy.admin_url("/plugins/tag/rollout")).await;
        let served = |v: &str| status["versions"][v]["requests"].as_u64().unwrap_or(0);
        if served("stable") + served("candidate") >= requests
            || std::time::Instant::now() > deadline
        {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs `sluice rollout ACTION tag` against `proxy`; its exit success and output.
fn cli(proxy: &Sluice, action: &str) -> (bool, String) {
    let out = std::process::Command::new(sluice_bin())
        .args(["rollout", action, "tag", "--admin"])
        .arg(proxy.admin.to_string())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The candidate's trap errors as a rollout status shows them.
fn candidate_traps(status: &serde_json::Value) -> u64 {
    status["versions"]["candidate"]["errors"]["trap"]
        .as_u64()
        .unwrap_or(0)
}
