//! The plugin library (`plugins/`) through the real proxy: the rate limiter under concurrent
//! clients, and the chain users deploy (auth, then rate-limit, then headers).
//!
//! The plugins are built by `make wasm` (`--profile plugin`), as they ship.

mod support;

use std::path::PathBuf;

use support::*;

/// A temp dir holding the library's plugins `names` under their crate file names
/// (`sluice_plugin_<name>.wasm`).
fn plugin_dir(tag: &str, names: &[&str]) -> PathBuf {
    let dir = temp_dir(tag);
    for name in names {
        let file = format!("sluice_plugin_{name}.wasm");
        let built = target_dir().join("wasm32-wasip1/plugin").join(&file);
        assert!(
            built.is_file(),
            "{} is missing: build the plugins with `make wasm` first",
            built.display()
        );
        std::fs::copy(&built, dir.join(&file)).unwrap();
    }
    dir
}

fn config(upstream: std::net::SocketAddr, route_plugins: &str, plugins: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [{route_plugins}] }}\n\
         plugins:\n{plugins}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limiter_admits_exactly_its_limit_under_concurrency() {
    let up = upstream("backend").await;
    // Two VMs (one per worker thread) share the bucket through shared data.
    let proxy = Sluice::start_in(
        &config(
            up,
            "limit",
            "  limit: { path: sluice_plugin_rate_limit.wasm, vms: 2, config: { key: [route], requests: 50, period_seconds: 3600 } }\n",
        ),
        plugin_dir("rl-concurrency", &["rate_limit"]),
    )
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        let url = proxy.url("/x");
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(c.get(&url).send().await.unwrap().status().as_u16());
            }
            statuses
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        for s in t.await.unwrap() {
            match s {
                200 => ok += 1,
                429 => limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(
        (ok, limited),
        (50, 150),
        "200 requests against a limit of 50"
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_ratelimit_allowed{plugin=\"limit\"}")
            .await,
        Some(50.0)
    );
}
