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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::*;

fn built(file: &str) -> Vec<u8> {
    let path = target_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the plugins with `make wasm` first",
            path.display()
        )
    })
}

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

/// A config whose one route runs plugin `tag` (v1) with `rollout` (YAML flow mapping).
fn config(upstream: std::net::SocketAddr, rollout: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [tag] }}\n\
         plugins:\n  tag: {{ path: v1.wasm, config: {}, rollout: {rollout} }}\n",
        tagging("v1")
    )
}

/// The version that answered (`x-version`), or what went wrong.
async fn version_of(c: &reqwest::Client, req: reqwest::RequestBuilder) -> Result<String, String> {
    let _ = c;
    let r = req
        .send()
        .await
        .map_err(|e| format!("request error: {e}"))?;
    let status = r.status().as_u16();
    let tags: Vec<String> = r
        .headers()
        .get_all("x-version")
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .collect();
    r.bytes().await.map_err(|e| format!("body error: {e}"))?;
    match (status, tags.as_slice()) {
        (200, [one]) => Ok(one.clone()),
        _ => Err(format!("status {status}, x-version {tags:?}")),
    }
}

/// `clients` tasks sending GETs until stopped, counting answers by version and failures.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, counts, failures, url) =
                    (stop.clone(), counts.clone(), failures.clone(), url.clone());
                let c = client();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match version_of(&c, c.get(&url)).await {
                            Ok(v) => *counts.lock().unwrap().entry(v).or_insert(0) += 1,
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            counts,
            failures,
        }
    }

    /// Answers so far, by version.
    fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// Stops the clients; returns the answers by version, and the failures.
    async fn finish(self) -> (BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let counts = self.counts.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (counts, failures)
    }
}

/// Waits until `n` more answers were counted.
async fn wait_answers(load: &Load, n: u64) {
    let start: u64 = load.counts().values().sum();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while load.counts().values().sum::<u64>() < start + n {
        assert!(std::time::Instant::now() < deadline, "load stalled");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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
