//! Shared data in Redis (`shared_data: { backend: redis }`) against a real `redis-server`
//! started on 127.0.0.1 by each test: compare-and-swap semantics, one rate limit held by two
//! `sluice` processes, and what happens while Redis is down (the plugins' `on_error` policy
//! answers, Sluice reconnects when it is back).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::shared_data::RedisSettings;
use sluice::redis::resp::Reply;
use sluice_abi::Status;
use support::*;

fn settings(redis: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        host: "127.0.0.1".into(),
        port: redis.addr().port(),
        db: 0,
        username: None,
        password: None,
        key_prefix: prefix.into(),
        timeout: Duration::from_millis(500),
        pool_size: 4,
        ttl: None,
        display: redis.url(),
    }
}

#[test]
fn compare_and_swap_holds_in_redis_across_stores() {
    let redis = RedisServer::start();
    let backend = Some(sluice::redis::shared_store(&settings(&redis, "cas-test:")));
    let ns = sluice::wasm::shared::namespace("counter", backend.as_ref());
    // The rules of the in-process store.
    assert!(ns.get(b"k").unwrap().is_none());
    assert_eq!(
        ns.set(b"k", b"1", 77).unwrap(),
        Status::Ok,
        "a new key ignores cas"
    );
    let (v, cas) = ns.get(b"k").unwrap().unwrap();
    assert_eq!((v.as_slice(), cas), (&b"1"[..], 1));
    assert_eq!(ns.set(b"k", b"2", cas + 1).unwrap(), Status::CasMismatch);
    assert_eq!(ns.set(b"k", b"2", cas).unwrap(), Status::Ok);
    assert_eq!(ns.set(b"k", b"3", cas).unwrap(), Status::CasMismatch);
    assert_eq!(
        ns.set(b"k", b"3", 0).unwrap(),
        Status::Ok,
        "0 is unconditional"
    );
    assert_eq!(ns.get(b"k").unwrap().unwrap(), (b"3".to_vec(), 3));
    // Binary keys and values, and an empty value.
    assert_eq!(ns.set(b"\0\r\n\xff", b"", 0).unwrap(), Status::Ok);
    assert_eq!(ns.get(b"\0\r\n\xff").unwrap().unwrap(), (Vec::new(), 1));
    // Stored under {prefix}{vm_id}:{key}.
    assert_eq!(
        redis
            .command(&[b"HGET", b"cas-test:counter:k", b"v"])
            .unwrap(),
        Reply::Bulk(Some(b"3".to_vec()))
    );
    // Another namespace does not see it.
    let other = sluice::wasm::shared::namespace("other", backend.as_ref());
    assert!(other.get(b"k").unwrap().is_none());

    // Four threads (as four VMs or replicas would) increment one counter 250 times each with
    // read + compare-and-swap loops: no increment is lost.
    assert_eq!(ns.set(b"n", &0u64.to_le_bytes(), 0).unwrap(), Status::Ok);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let ns = sluice::wasm::shared::namespace("counter", backend.as_ref());
            std::thread::spawn(move || {
                let mut retries = 0u32;
                for _ in 0..250 {
                    loop {
                        let (v, cas) = ns.get(b"n").unwrap().expect("created above");
                        let n = u64::from_le_bytes(v.try_into().unwrap());
                        match ns.set(b"n", &(n + 1).to_le_bytes(), cas).unwrap() {
                            Status::Ok => break,
                            Status::CasMismatch => retries += 1,
                            other => panic!("set answered {other:?}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let (v, cas) = ns.get(b"n").unwrap().unwrap();
    let n = u64::from_le_bytes(v.try_into().unwrap());
    eprintln!(
        "1000 increments from 4 threads through Redis: {n}, version {cas}, {retries} CAS retries"
    );
    assert_eq!(n, 1000, "increments were lost");
    assert_eq!(cas, 1001, "one version per write");
    // The script went to Redis once (EVAL after the first NOSCRIPT); every other write named
    // it by its SHA1, which the store computes itself.
    let Reply::Bulk(Some(stats)) = redis.command(&[b"INFO", b"commandstats"]).unwrap() else {
        panic!("INFO commandstats")
    };
    let stats = String::from_utf8_lossy(&stats);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("eval"), 1, "{stats}");
    assert!(calls("evalsha") >= 1000, "{stats}");
}

fn proxy_config(
    redis_url: &str,
    prefix: &str,
    upstream: std::net::SocketAddr,
    plugins: &str,
    routes: &str,
) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         shared_data: {{ backend: redis, url: '{redis_url}', key_prefix: '{prefix}', timeout_ms: 500 }}\n\
         upstreams: {{ backend: {{ endpoints: ['{upstream}'] }} }}\n\
         routes:\n{routes}\
         plugins:\n{plugins}"
    )
}

fn copy_rate_limit(dir: &Path) {
    std::fs::copy(
        target_dir().join("wasm32-wasip1/plugin/sluice_plugin_rate_limit.wasm"),
        dir.join("limit.wasm"),
    )
    .expect("build the plugins with `make wasm` first");
}

/// Two `sluice` processes on different ports share one Redis and one rate limit of 100
/// requests (a day, so nothing refills during the test): of 400 requests spread over both by
/// 16 concurrent clients, 100 pass (tolerance: see docs/config.md, `shared_data`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_admit_one_limit_between_them() {
    let redis = RedisServer::start();
    let up = upstream("backend").await;
    let config = proxy_config(
        &redis.url(),
        "replicas:",
        up,
        "  limit: { path: limit.wasm, limits: { timeout_ms: 2000 }, config: { key: [route], requests: 100, period_seconds: 86400 } }\n",
        "  - { name: api, upstream: backend, plugins: [limit] }\n",
    );
    let mut proxies = Vec::new();
    for _ in 0..2 {
        let dir = temp_dir("replica");
        copy_rate_limit(&dir);
        proxies.push(Arc::new(Sluice::start_in(&config, dir).await));
    }
    assert_ne!(proxies[0].addr, proxies[1].addr);

    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let proxies = proxies.clone();
            tokio::spawn(async move {
                let c = client();
                let mut statuses = Vec::new();
                for j in 0..25 {
                    let p = &proxies[(i + j) % 2];
                    let r = c.get(p.url(&format!("/r/{i}/{j}"))).send().await;
                    statuses.push(((i + j) % 2, r.map(|r| r.status().as_u16()).unwrap_or(0)));
                }
                statuses
            })
        })
        .collect();
    let mut by_replica = [[0u32; 2]; 2];
    let mut other = Vec::new();
    for t in tasks {
        for (replica, status) in t.await.unwrap() {
            match status {
                200 => by_replica[replica][0] += 1,
                429 => by_replica[replica][1] += 1,
                s => other.push(s),
            }
        }
    }
    let admitted = by_replica[0][0] + by_replica[1][0];
    eprintln!(
        "400 requests over 2 replicas in {:?}: admitted {admitted} (replica 0: {} of {}, replica 1: {} of {}), other statuses {other:?}",
        started.elapsed(),
        by_replica[0][0],
        by_replica[0][0] + by_replica[0][1],
        by_replica[1][0],
        by_replica[1][0] + by_replica[1][1],
    );
    assert!(other.is_empty(), "statuses other than 200/429: {other:?}");
    assert!(
        (100..=101).contains(&admitted),
        "admitted {admitted} of 400 against a shared limit of 100"
    );
    // Both replicas admitted some: the limit is shared, not per process.
    assert!(
        by_replica[0][0] > 0 && by_replica[1][0] > 0,
        "{by_replica:?}"
    );
    // The state is in Redis, under the plugin's namespace.
    let keys = redis.keys("replicas:*");
    assert!(
        keys.iter().any(|k| k.starts_with("replicas:limit:")),
        "keys in Redis: {keys:?}"
    );
}

/// Redis unreachable at start-up, then up, then killed and restarted: `fail_open` lets
/// requests through and `fail_closed` answers 503 while it is down, both are counted, the VMs
/// are not replaced for it, and the limits count again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_the_plugins_policy_answers_and_sluice_reconnects() {
    let port = free_port();
    let redis_dir = temp_dir("redis");
    let url = format!("redis://127.0.0.1:{port}/0");
    let up = upstream("backend").await;
    let config = proxy_config(
        &url,
        "faults:",
        up,
        "  open: { path: limit.wasm, on_error: fail_open, limits: { timeout_ms: 2000 }, config: { key: [route], requests: 3, period_seconds: 86400 } }\n\
         \x20 closed: { path: limit.wasm, on_error: fail_closed, limits: { timeout_ms: 2000 }, config: { key: [route], requests: 3, period_seconds: 86400 } }\n",
        "  - { name: open, match: { path_prefix: /open }, upstream: backend, plugins: [open] }\n\
         \x20 - { name: closed, match: { path_prefix: /closed }, upstream: backend, plugins: [closed] }\n",
    );
    let dir = temp_dir("faults");
    copy_rate_limit(&dir);
    // Redis is not running yet: Sluice starts anyway.
    let proxy = Sluice::start_in(&config, dir).await;
    let c = client();
    let status = |path: &'static str| {
        let c = c.clone();
        let url = proxy.url(path);
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/open").await, 200, "fail_open without Redis");
    assert_eq!(status("/closed").await, 503, "fail_closed without Redis");
    proxy.wait_metric("sluice_shared_data_redis_up", 0.0).await;

    // Redis comes up: the probe notices it and the limits count (3 each, then 429).
    let mut redis = RedisServer::start_on(port, redis_dir);
    proxy.wait_metric("sluice_shared_data_redis_up", 1.0).await;
    for path in ["/open", "/closed"] {
        let got: Vec<u16> = futures_statuses(&status, path, 4).await;
        assert_eq!(got, [200, 200, 200, 429], "{path} with Redis up");
    }

    // Redis dies: /open is let through past its limit, /closed answers 503.
    redis.kill();
    let down_started = Instant::now();
    let open: Vec<u16> = futures_statuses(&status, "/open", 10).await;
    let closed: Vec<u16> = futures_statuses(&status, "/closed", 10).await;
    let down_took = down_started.elapsed();
    assert_eq!(open, [200; 10], "fail_open while Redis is down");
    assert_eq!(closed, [503; 10], "fail_closed while Redis is down");
    eprintln!("20 requests while Redis was down: {down_took:?}");
    proxy.wait_metric("sluice_shared_data_redis_up", 0.0).await;
    let errors = proxy
        .metric("sluice_shared_data_errors_total{op=\"get\"}")
        .await
        .unwrap_or(0.0);
    assert!(errors >= 20.0, "shared-data errors counted: {errors}");
    let plugin_errors = proxy
        .metric("sluice_plugin_errors_total{kind=\"shared_data\",phase=\"request_headers\",plugin=\"closed\",version=\"stable\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        plugin_errors >= 10.0,
        "plugin errors of kind shared_data: {plugin_errors}"
    );
    assert!(
        proxy.logs().contains("Redis is unreachable"),
        "the outage is logged"
    );
    // The VMs were kept: nothing failed in them.
    let info = get_json(proxy.admin_url("/plugins/closed")).await;
    assert_eq!(
        info["vms"]["healthy"], info["vms"]["started"],
        "VMs replaced for an outage: {info}"
    );

    // Redis is back (empty: nothing was persisted): Sluice reconnects and counts again.
    redis.restart();
    proxy.wait_metric("sluice_shared_data_redis_up", 1.0).await;
    assert!(proxy.logs().contains("Redis answers again"));
    for path in ["/open", "/closed"] {
        let got: Vec<u16> = futures_statuses(&status, path, 4).await;
        assert_eq!(got, [200, 200, 200, 429], "{path} after Redis came back");
    }

    // A restart between two requests (nothing failed meanwhile, so the idle connections are
    // still pooled, and Redis closed them all): the next request is served on a new
    // connection, without an error.
    let errors_before = proxy
        .metric("sluice_shared_data_errors_total{op=\"get\"}")
        .await
        .unwrap_or(0.0);
    redis.restart();
    let got: Vec<u16> = futures_statuses(&status, "/closed", 4).await;
    assert_eq!(got, [200, 200, 200, 429], "/closed right after a restart");
    assert_eq!(
        proxy
            .metric("sluice_shared_data_errors_total{op=\"get\"}")
            .await
            .unwrap_or(0.0),
        errors_before,
        "a dead pooled connection was reported as an error"
    );
}

/// `n` requests to `path`, one after the other; their statuses.
async fn futures_statuses<F, Fut>(status: &F, path: &'static str, n: usize) -> Vec<u16>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(status(path).await);
    }
    out
}

/// A plugin whose deadline cannot hold two Redis waits is named when the config is loaded.
#[test]
fn a_plugin_deadline_too_short_for_redis_waits_is_warned_about() {
    let redis = RedisServer::start();
    let dir = temp_dir("warn");
    copy_rate_limit(&dir);
    let check = |plugin_timeout: u64| {
        let text = format!(
            "listeners: [{{ name: public, address: '127.0.0.1:{}' }}]\n\
             admin: {{ address: '127.0.0.1:{}' }}\n\
             shared_data: {{ backend: redis, url: '{}', timeout_ms: 100 }}\n\
             upstreams: {{ backend: {{ endpoints: ['127.0.0.1:9'] }} }}\n\
             routes: [{{ name: api, upstream: backend, plugins: [limit] }}]\n\
             plugins:\n  limit: {{ path: limit.wasm, limits: {{ timeout_ms: {plugin_timeout} }}, config: {{ key: [route], requests: 5, period_seconds: 60 }} }}\n",
            free_port(),
            free_port(),
            redis.url()
        );
        std::fs::write(dir.join("sluice.yaml"), text).unwrap();
        let out = Command::new(sluice_bin())
            .args(["check", "--config"])
            .arg(dir.join("sluice.yaml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let short = check(250);
    assert!(
        short.contains("under 3 × shared_data.timeout_ms") && short.contains("limit"),
        "{short}"
    );
    let enough = check(300);
    assert!(!enough.contains("under 3 ×"), "{enough}");
}
