//! Shared-data benchmark: what keeping the rate-limit plugin's buckets in Redis costs against
//! keeping them in the process, and both against the same route without the plugin, measured
//! in one run on this machine (load generator, proxies and the Redis servers share its CPUs).
//! Redis is one server, the same over TLS, a master found through Sentinel (one master, one
//! replica, three sentinels), and a cluster of three masters.
//!
//! `make bench-shared` (or `cargo bench -p sluice-proxy --bench shared_data`) after `make
//! wasm`; needs `redis-server`, `redis-sentinel` and `redis-cli` (`make test-deps`). Prints a
//! table; nothing is asserted.
//! Environment: `LOAD_SECONDS` per run (default 5), `CLIENTS` (default 8), `ROUNDS` (default 3:
//! the runs alternate, and the table shows each case's median round).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

fn config(upstream: std::net::SocketAddr, shared: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: false }}\n\
         {shared}\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n\
         \x20 - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: backend }}\n\
         \x20 - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: backend, plugins: [limit] }}\n\
         plugins:\n\
         \x20 limit: {{ path: limit.wasm, config: {{ key: [route], requests: 1000000000, period_seconds: 1 }} }}\n"
    )
}

/// Process CPU time (user + system) of `pid`, from /proc.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name (state is not a number).
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Run {
    requests: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
    cpu_us: f64,
}

/// Closed-loop load on `path` for `secs`, with the proxy's CPU time over it.
async fn load(proxy: &Sluice, path: &str, clients: usize, secs: u64) -> Run {
    let cpu_before = cpu(proxy.pid());
    let started = Instant::now();
    let all = closed_loop(proxy.url(path), clients, secs).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu_used = cpu(proxy.pid()).saturating_sub(cpu_before);
    Run {
        requests: all.len(),
        secs,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        cpu_us: cpu_used.as_secs_f64() * 1e6 / all.len() as f64,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    let secs = env_num("LOAD_SECONDS", 5).max(1);
    let clients = env_num("CLIENTS", 8).max(1) as usize;
    let rounds = env_num("ROUNDS", 3).max(1) as usize;
    let redis = RedisServer::start();
    let (ca, cert, key) = tls_material();
    let tls = start_tls_redis(&ca, &cert, &key);
    let sentinels = RedisSentinels::start(3);
    let cluster = RedisCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = upstream("backend").await;
        let wasm = target_dir().join("wasm32-wasip1/plugin/sluice_plugin_rate_limit.wasm");
        let ca = ca.clone();
        let start = |shared: String| {
            let dir = temp_dir("bench-shared");
            std::fs::copy(&wasm, dir.join("limit.wasm")).expect("make wasm first");
            std::fs::write(dir.join("ca.pem"), &ca).unwrap();
            let text = config(up, &shared);
            async move { Sluice::start_in(&text, dir).await }
        };
        let memory = start(String::new()).await;
        let redis_proxy = start(format!(
            "shared_data: {{ backend: redis, url: '{}', timeout_ms: 100 }}\n",
            redis.url()
        ))
        .await;
        let tls_proxy = start(format!(
            "shared_data: {{ backend: redis, url: 'rediss://127.0.0.1:{}/0', tls: {{ ca_file: ca.pem }}, timeout_ms: 100 }}\n",
            tls.port()
        ))
        .await;
        let sentinel_proxy = start(format!(
            "shared_data: {{ backend: redis, {}, timeout_ms: 100 }}\n",
            sentinels.shared_data()
        ))
        .await;
        let cluster_proxy = start(format!(
            "shared_data: {{ backend: redis, {}, timeout_ms: 100 }}\n",
            cluster.shared_data()
        ))
        .await;
        let cases: [(&str, &Sluice, &str); 6] = [
            ("no plugin", &memory, "/plain"),
            ("rate-limit, shared data in memory", &memory, "/limited"),
            ("rate-limit, shared data in Redis", &redis_proxy, "/limited"),
            ("rate-limit, Redis over TLS", &tls_proxy, "/limited"),
            ("rate-limit, Redis through Sentinel", &sentinel_proxy, "/limited"),
            ("rate-limit, Redis Cluster (3 masters)", &cluster_proxy, "/limited"),
        ];
        // Warm-up: VMs, connections, the Redis script.
        for (_, p, path) in &cases {
            load(p, path, clients, 1).await;
        }
        let mut runs: Vec<Vec<Run>> = (0..cases.len()).map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, (_, p, path)) in cases.iter().enumerate() {
                runs[i].push(load(p, path, clients, secs).await);
            }
        }
        let mut waits = Vec::new();
        for (label, p, _) in &cases[2..] {
            let mut per_op = Vec::new();
            for op in ["get", "set"] {
                let series = |part: &str| {
                    format!("sluice_shared_data_duration_seconds_{part}{{op=\"{op}\"}}")
                };
                let sum = p.metric(&series("sum")).await;
                let count = p.metric(&series("count")).await;
                per_op.push(match (sum, count) {
                    (Some(s), Some(c)) if c > 0.0 => {
                        format!("{op} {:.0} µs over {c:.0} calls", s / c * 1e6)
                    }
                    _ => format!("{op}: no calls"),
                });
            }
            waits.push(format!("- {label}: {}", per_op.join(", ")));
        }
        println!(
            "\n{clients} closed-loop clients, {rounds} rounds of {secs} s each, median round per case (by req/s)\n"
        );
        println!("| case | req/s | p50 ms | p99 ms | proxy CPU µs/request | req/s vs no plugin | req/s vs memory |");
        println!("|---|---|---|---|---|---|---|");
        let mut base = 0.0;
        let mut memory_rps = 0.0;
        for (i, (label, _, _)) in cases.iter().enumerate() {
            let r = &mut runs[i];
            r.sort_by(|a, b| {
                (a.requests as f64 / a.secs).total_cmp(&(b.requests as f64 / b.secs))
            });
            let m = &r[r.len() / 2];
            let rps = m.requests as f64 / m.secs;
            if i == 0 {
                base = rps;
            }
            if i == 1 {
                memory_rps = rps;
            }
            let vs_memory = if i == 0 {
                "—".to_string()
            } else {
                format!("{:.2}", rps / memory_rps)
            };
            println!(
                "| {label} | {rps:.0} | {} | {} | {:.1} | {:.2} | {vs_memory} |",
                ms(m.p50),
                ms(m.p99),
                m.cpu_us,
                rps / base
            );
        }
        println!(
            "\nRedis wait per shared-data call (sluice_shared_data_duration_seconds):\n{}",
            waits.join("\n")
        );
    });
    drop((redis, tls, sentinels, cluster));
}
