//! Shared data in Redis (`shared_data: { backend: redis }`) against a real `redis-server`
//! started on 127.0.0.1 by each test: compare-and-swap semantics, one rate limit held by two
//! `sluice` processes, and what happens while Redis is down (the plugins' `on_error` policy
//! answers, Sluice reconnects when it is back).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use sluice::config::shared_data::{Node, RedisSettings, Servers};
use sluice_abi::Status;
use support::*;

fn settings(redis: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        servers: Servers::Single(Node {
            host: "127.0.0.1".into(),
            port: redis.addr().port(),
            tls: false,
            username: None,
            password: None,
        }),
        db: 0,
        username: None,
        password: None,
        ca_pem: None,
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
        Value::BulkString(b"3".to_vec())
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
    // The script went to Redis once (SCRIPT LOAD after the first NOSCRIPT); every write named
    // it by its SHA1, which the store computes itself.
    let Value::BulkString(stats) = redis.command(&[b"INFO", b"commandstats"]).unwrap() else {
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
    assert_eq!(calls("script|load"), 1, "{stats}");
    assert_eq!(calls("eval"), 0, "{stats}");
    assert!(calls("evalsha") >= 1000, "{stats}");
}

fn proxy_config(
    redis_url: &str,
    prefix: &str,
    upstream: std::net::SocketAddr,
    plugins: &str,
    routes: &str,
) -> String {
    config_with(
        &format!(
            "{{ backend: redis, url: '{redis_url}', key_prefix: '{prefix}', timeout_ms: 500 }}"
        ),
        upstream,
        plugins,
        routes,
    )
}

/// A config with `shared` as its `shared_data:`.
fn config_with(
    shared: &str,
    upstream: std::net::SocketAddr,
    plugins: &str,
    routes: &str,
) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         shared_data: {shared}\n\
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
    let config = proxy_config(&redis.url(), "replicas:", up, LIMIT_PLUGIN, LIMIT_ROUTE);
    let proxies = replicas(&config, &[]).await;
    let load = exact_limit_load(&proxies, "first").await;
    load.assert_admitted(100, 0);
    // The state is in Redis, under the plugin's namespace.
    let keys = redis.keys("replicas:*");
    assert!(
        keys.iter().any(|k| k.starts_with("replicas:limit:")),
        "keys in Redis: {keys:?}"
    );
}

/// The rate-limit plugin, 100 requests a day per `x-tenant` header value.
const LIMIT_PLUGIN: &str = "  limit: { path: limit.wasm, on_error: fail_closed, limits: { timeout_ms: 2000 }, config: { key: ['header:x-tenant'], requests: 100, period_seconds: 86400 } }\n";
const LIMIT_ROUTE: &str = "  - { name: api, upstream: backend, plugins: [limit] }\n";

/// Two `sluice` processes with `config`, each in its own directory holding the rate-limit
/// plugin and `files`.
async fn replicas(config: &str, files: &[(&str, &[u8])]) -> Vec<Arc<Sluice>> {
    let starts = (0..2).map(|_| {
        let dir = temp_dir("replica");
        copy_rate_limit(&dir);
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        Sluice::start_in(config, dir)
    });
    let proxies: Vec<Arc<Sluice>> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    assert_ne!(proxies[0].addr, proxies[1].addr);
    proxies
}

/// What 400 requests of one tenant spread over two replicas got.
struct Load {
    /// 200s by replica.
    admitted: [u32; 2],
    /// 429s by replica.
    limited: [u32; 2],
    /// Any other status (0: no response).
    other: Vec<u16>,
}

impl Load {
    fn total(&self) -> u32 {
        self.admitted[0] + self.admitted[1]
    }

    /// `want` admitted, or up to `extra` more (see the tests for why); 429 for the rest.
    fn assert_admitted(&self, want: u32, extra: u32) {
        assert!(
            self.other.is_empty(),
            "statuses other than 200/429: {:?}",
            self.other
        );
        let admitted = self.total();
        assert!(
            (want..=want + 1 + extra).contains(&admitted),
            "admitted {admitted} of 400 against a shared limit of {want}"
        );
        // Both replicas admitted some: the limit is shared, not per process.
        assert!(
            self.admitted[0] > 0 && self.admitted[1] > 0,
            "admitted by replica: {:?}",
            self.admitted
        );
    }
}

/// 400 requests of tenant `tenant` from 16 concurrent clients, alternating between the two
/// replicas.
async fn exact_limit_load(proxies: &[Arc<Sluice>], tenant: &str) -> Load {
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let proxies = proxies.to_vec();
            let tenant = tenant.to_string();
            tokio::spawn(async move {
                let c = client();
                let mut statuses = Vec::new();
                for j in 0..25 {
                    let p = &proxies[(i + j) % 2];
                    let r = c
                        .get(p.url(&format!("/r/{i}/{j}")))
                        .header("x-tenant", &tenant)
                        .send()
                        .await;
                    statuses.push(((i + j) % 2, r.map(|r| r.status().as_u16()).unwrap_or(0)));
                }
                statuses
            })
        })
        .collect();
    let mut load = Load {
        admitted: [0; 2],
        limited: [0; 2],
        other: Vec::new(),
    };
    for t in tasks {
        for (replica, status) in t.await.unwrap() {
            match status {
                200 => load.admitted[replica] += 1,
                429 => load.limited[replica] += 1,
                s => load.other.push(s),
            }
        }
    }
    eprintln!(
        "tenant {tenant}: 400 requests over 2 replicas in {:?}: admitted {} (replica 0: {} of {}, replica 1: {} of {}), other statuses {:?}",
        started.elapsed(),
        load.total(),
        load.admitted[0],
        load.admitted[0] + load.limited[0],
        load.admitted[1],
        load.admitted[1] + load.limited[1],
        load.other,
    );
    load
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

/// `shared_data:` for a store named by `servers` (a `url:` or a `sentinel:`/`cluster:` entry).
fn shared(servers: &str, prefix: &str) -> String {
    format!("{{ backend: redis, {servers}, key_prefix: '{prefix}', timeout_ms: 500 }}")
}

/// Over TLS (`rediss://` and `tls.ca_file`), two replicas share one exact limit; with a CA
/// that did not sign Redis's certificate, the store is down, the handshake error is logged,
/// and nothing reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_two_replicas_admit_one_limit_and_a_wrong_ca_is_refused() {
    let (ca, cert, key) = tls_material();
    let redis = start_tls_redis(&ca, &cert, &key);
    let up = upstream("backend").await;
    let url = format!(
        "url: 'rediss://127.0.0.1:{}/0', tls: {{ ca_file: ca.pem }}",
        redis.port()
    );
    let config = config_with(&shared(&url, "tls:"), up, LIMIT_PLUGIN, LIMIT_ROUTE);
    let proxies = replicas(&config, &[("ca.pem", ca.as_bytes())]).await;
    exact_limit_load(&proxies, "a")
        .await
        .assert_admitted(100, 0);
    let keys = redis.keys("tls:*");
    assert!(
        keys.iter().any(|k| k == "tls:limit:rl|default|a"),
        "keys in Redis: {keys:?}"
    );

    // Another CA: the certificate is refused, the store is down, fail_closed answers.
    let (other_ca, _, _) = tls_material();
    let config = config_with(&shared(&url, "wrongca:"), up, LIMIT_PLUGIN, LIMIT_ROUTE);
    let dir = temp_dir("wrong-ca");
    copy_rate_limit(&dir);
    std::fs::write(dir.join("ca.pem"), &other_ca).unwrap();
    let proxy = Sluice::start_in(&config, dir).await;
    let r = client()
        .get(proxy.url("/x"))
        .header("x-tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "fail_closed with an untrusted Redis"
    );
    proxy.wait_metric("sluice_shared_data_redis_up", 0.0).await;
    let logs = proxy.logs();
    assert!(
        logs.contains("Redis is unreachable") && logs.contains("invalid peer certificate"),
        "the handshake error is logged: {logs}"
    );
    assert!(redis.keys("wrongca:*").is_empty());
}

/// One master, one replica and three sentinels (quorum 2, the master down after 1 s without
/// an answer). Two replicas of Sluice share one exact limit through the master the sentinels
/// name; the master is killed (after `WAIT` made sure the replica has every write so far)
/// while a second tenant is being limited; the sentinels promote the replica, Sluice finds it
/// and marks the store up again, and:
/// - the first tenant's bucket, replicated before the failover, still refuses (exact);
/// - a third tenant, limited after the failover, gets exactly its 100 (exact);
/// - the second tenant, limited across the failover, gets at least 100 and at most 100 + 10:
///   writes the old master acknowledged but had not yet sent to the replica when it died are
///   lost with it (replication is asynchronous), so a few requests may be admitted twice over.
///   Requests during the failover get 503 (`on_error: fail_closed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_sentinel_one_limit_holds_across_a_failover() {
    let RedisSentinels {
        mut master,
        replica,
        sentinels,
    } = RedisSentinels::start(3);
    let up = upstream("backend").await;
    let servers = {
        let urls: Vec<String> = sentinels
            .iter()
            .map(|s| format!("'redis://127.0.0.1:{}'", s.port()))
            .collect();
        format!(
            "sentinel: {{ master: mymaster, urls: [{}] }}",
            urls.join(", ")
        )
    };
    let config = config_with(
        &shared(&servers, "sentinel:"),
        up,
        LIMIT_PLUGIN,
        LIMIT_ROUTE,
    );
    let proxies = replicas(&config, &[]).await;
    exact_limit_load(&proxies, "a")
        .await
        .assert_admitted(100, 0);
    let keys = master.keys("sentinel:*");
    assert!(
        keys.iter().any(|k| k == "sentinel:limit:rl|default|a"),
        "the bucket is on the master: {keys:?}"
    );

    // Every write so far is on the replica; then the master dies while tenant b is limited.
    let acked = master.command(&[b"WAIT", b"1", b"2000"]).unwrap();
    assert_eq!(acked, Value::Int(1), "the replica acknowledged the writes");
    let during = {
        let proxies = proxies.clone();
        tokio::spawn(async move { statuses(&proxies, "b", 200).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let killed = Instant::now();
    master.kill();
    let during = during.await.unwrap();
    // Sluice finds the promoted replica.
    for p in &proxies {
        p.wait_metric_within("sluice_shared_data_redis_up", 1.0, Duration::from_secs(30))
            .await;
    }
    eprintln!(
        "failover seen by both replicas of Sluice {:?} after the kill",
        killed.elapsed()
    );
    let role = redis_text(replica.command(&[b"ROLE"])).unwrap();
    assert!(role.contains("master"), "the replica was promoted: {role}");
    for p in &proxies {
        assert!(p.logs().contains("the sentinels name this Redis master"));
    }

    // Tenant a's bucket survived; tenant c is exact on the new master.
    let a = statuses(&proxies, "a", 20).await;
    assert_eq!(a, [429; 20], "tenant a after the failover");
    exact_limit_load(&proxies, "c")
        .await
        .assert_admitted(100, 0);
    // Tenant b: what was admitted during the failover, and after it.
    let after = exact_limit_load(&proxies, "b").await;
    let admitted_during = during.iter().filter(|s| **s == 200).count() as u32;
    assert!(
        during.iter().all(|s| [200, 429, 503].contains(s)),
        "statuses during the failover: {during:?}"
    );
    let total = admitted_during + after.total();
    let failed = during.iter().filter(|s| **s == 503).count() as u32;
    eprintln!(
        "tenant b across the failover: {admitted_during} admitted during it ({failed} answered \
         503), {} after: {total}",
        after.total()
    );
    // Over: writes the old master acknowledged but never sent to the replica are lost, their
    // requests admitted again (at most 10 here). Under: a write the master applied whose reply
    // was lost with it fails its request (503) yet spends its token, so each 503 may be one
    // token short.
    assert!(
        (100 - failed.min(100)..=110).contains(&total),
        "tenant b admitted {total} against a limit of 100 across the failover ({failed} failed)"
    );
    drop(sentinels);
}

/// `n` requests of `tenant` from 8 concurrent clients over the replicas; their statuses (0:
/// no response).
async fn statuses(proxies: &[Arc<Sluice>], tenant: &str, n: usize) -> Vec<u16> {
    let per = n.div_ceil(8);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let proxies = proxies.to_vec();
            let tenant = tenant.to_string();
            tokio::spawn(async move {
                let c = client();
                let mut out = Vec::new();
                for j in 0..per {
                    let p = &proxies[(i + j) % proxies.len()];
                    let r = c.get(p.url("/s")).header("x-tenant", &tenant).send().await;
                    out.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.truncate(n);
    all
}

/// A Redis Cluster of three masters (no replicas; each node's writes on disk at once, so a
/// restarted node comes back with its keys). Two replicas of Sluice share exact limits whose
/// keys are on different shards; a node is killed (its tenant gets 503 from `fail_closed`) and
/// started again with its nodes.conf and data; once the cluster is `ok` again Sluice marks
/// the store up, the restarted node's bucket still refuses, and a new tenant is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_cluster_limits_hold_and_survive_a_node_restart() {
    let RedisCluster { mut nodes } = RedisCluster::start(3);
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let up = upstream("backend").await;
    let urls: Vec<String> = addrs.iter().map(|a| format!("'redis://{a}'")).collect();
    let servers = format!("cluster: {{ urls: [{}] }}", urls.join(", "));
    let config = config_with(&shared(&servers, "cl:"), up, LIMIT_PLUGIN, LIMIT_ROUTE);
    let proxies = replicas(&config, &[]).await;
    // Tenants whose buckets hash to slots of different nodes (slots are assigned in order of
    // the nodes given to `--cluster create`, so this is the same on every run).
    let tenants = ["a", "b", "c", "d"];
    for t in tenants {
        exact_limit_load(&proxies, t).await.assert_admitted(100, 0);
    }
    let holder = |t: &str| {
        nodes
            .iter()
            .position(|n| n.keys("cl:*").iter().any(|k| k.ends_with(&format!("|{t}"))))
    };
    let held: Vec<Option<usize>> = tenants.iter().map(|t| holder(t)).collect();
    eprintln!("buckets by node: {held:?}");
    let mut distinct: Vec<usize> = held
        .iter()
        .map(|h| h.expect("every bucket is in the cluster"))
        .collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 2, "the buckets are on one node: {held:?}");

    // The node holding tenant a's bucket is killed: a gets 503 (fail_closed).
    let victim = held[0].unwrap();
    nodes[victim].kill();
    let down = statuses(&proxies, "a", 8).await;
    assert_eq!(down, [503; 8], "tenant a while its node is down");
    // It comes back with its nodes.conf and data.
    let restarted = Instant::now();
    nodes[victim].restart();
    RedisCluster::wait_ok(&nodes);
    for p in &proxies {
        p.wait_metric_within("sluice_shared_data_redis_up", 1.0, Duration::from_secs(20))
            .await;
    }
    eprintln!(
        "the store was up again {:?} after the restart",
        restarted.elapsed()
    );
    let a = statuses(&proxies, "a", 20).await;
    assert_eq!(a, [429; 20], "tenant a's bucket after its node's restart");
    exact_limit_load(&proxies, "e")
        .await
        .assert_admitted(100, 0);
    let b = statuses(&proxies, "b", 20).await;
    assert_eq!(b, [429; 20], "tenant b, on a node that stayed up");
}
