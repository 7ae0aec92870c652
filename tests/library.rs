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
            .metric("sluice_plugin_ratelimit_allowed{plugin=\"limit\",version=\"stable\"}")
            .await,
        Some(50.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_then_rate_limit_then_headers_through_the_proxy() {
    let up = upstream("backend").await;
    let key_digest = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"; // demo-key
    let plugins = format!(
        "  auth: {{ path: sluice_plugin_auth.wasm, config: {{ realm: api, allow_paths: [/public/], \
         api_keys: {{ header: x-api-key, keys: [{{ id: ci, sha256: {key_digest} }}] }} }} }}\n\
         \x20 limit: {{ path: sluice_plugin_rate_limit.wasm, config: {{ key: ['header:x-auth-key-id'], requests: 3, period_seconds: 3600 }} }}\n\
         \x20 headers: {{ path: sluice_plugin_headers.wasm, config: {{ rules: [{{ request: {{ set: {{ x-who: '{{request.header.x-auth-key-id}}' }} }}, \
         response: {{ set: {{ x-chain: done }} }} }}] }} }}\n"
    );
    let proxy = Sluice::start_in(
        &config(up, "auth, limit, headers", &plugins),
        plugin_dir("library-chain", &["auth", "rate_limit", "headers"]),
    )
    .await;
    let c = client();
    let url = proxy.url("/api");
    // No key: auth answers; the later plugins never see the request.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("x-chain").is_none());
    // A spoofed identity header is dropped by auth before the rate limiter keys on it.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = c
            .get(&url)
            .header("x-api-key", "demo-key")
            .header("x-auth-key-id", format!("spoof-{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 200 {
            assert_eq!(r.headers()["x-chain"], "done");
            assert_eq!(r.headers()["ratelimit-limit"], "3");
            let e = echo(r).await;
            assert_eq!(
                echo_header(&e, "x-who"),
                Some("ci"),
                "the real key id, set by auth"
            );
            assert!(e["headers"]["x-api-key"].is_null(), "credential stripped");
        } else {
            assert_eq!(r.headers()["retry-after"], "1200");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429], "one bucket for key id ci");
    // The allow-listed path skips auth; the limiter then keys on a missing id ("-").
    let r = c.get(proxy.url("/public/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
