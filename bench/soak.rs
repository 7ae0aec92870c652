//! Soak: the release sluice under steady load for `SOAK_SECONDS` (default 600) on a route
//! with a plugin chain (headers + rate-limit with a limit it never reaches), with the chain's
//! tag plugin swapped every 30 s and a hostile request (a plugin that loops until its fuel
//! runs out) every second. Prints requests served, errors (only the hostile ones are
//! expected), the RSS at start, middle and end, and the live contexts and VMs at the end.
//! Figures, not assertions: `make soak` (or `cargo bench -p sluice-proxy --bench soak`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

const HOSTILE: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (loop $l (br $l)) (i32.const 0)))"#;

fn config(up: std::net::SocketAddr, version: u32) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: false }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         routes:\n\
         \x20 - {{ name: hostile, match: {{ path_prefix: /hostile }}, upstream: backend, plugins: [hostile] }}\n\
         \x20 - {{ name: app, match: {{ path_prefix: / }}, upstream: backend, plugins: [tag, limit] }}\n\
         plugins:\n\
         \x20 tag: {{ path: tag-{version}.wasm, config: {{ rules: [{{ response: {{ set: {{ x-version: '{version}' }} }} }}] }} }}\n\
         \x20 limit: {{ path: limit.wasm, config: {{ key: [route], requests: 1000000000, period_seconds: 3600 }} }}\n\
         \x20 hostile: {{ path: hostile.wat, limits: {{ fuel: 2000000 }} }}\n"
    )
}

fn main() {
    let secs = env_num("SOAK_SECONDS", 600).max(10);
    let clients = env_num("CLIENTS", 8).max(1) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let up = upstream("backend").await;
        let dir = temp_dir("soak");
        let t = target_dir().join("wasm32-wasip1/plugin");
        let headers = std::fs::read(t.join("sluice_plugin_headers.wasm"))
            .expect("build the plugins with `make wasm` first");
        for v in 0..2 {
            std::fs::write(dir.join(format!("tag-{v}.wasm")), wasm_variant(&headers, &v.to_string())).unwrap();
        }
        std::fs::copy(t.join("sluice_plugin_rate_limit.wasm"), dir.join("limit.wasm")).unwrap();
        std::fs::write(dir.join("hostile.wat"), HOSTILE).unwrap();
        let proxy = Sluice::start_in(&config(up, 0), dir.clone()).await;
        let pid = proxy.pid();
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let rss_start = rss_mib(pid);

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (stop, ok, errors, url) = (stop.clone(), ok.clone(), errors.clone(), proxy.url("/app"));
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        let good = match c.get(&url).send().await {
                            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if good {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();

        let c = client();
        let (mut swaps, mut swap_failures, mut hostile, mut hostile_503) = (0u32, 0u32, 0u32, 0u32);
        let mut rss_middle = None;
        let mut next_swap = started + Duration::from_secs(30);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            hostile += 1;
            if let Ok(r) = c.get(proxy.url("/hostile")).send().await {
                if r.status() == 503 {
                    hostile_503 += 1;
                }
            }
            if rss_middle.is_none() && started.elapsed() >= Duration::from_secs(secs / 2) {
                rss_middle = Some(rss_mib(pid));
            }
            if Instant::now() >= next_swap {
                next_swap += Duration::from_secs(30);
                swaps += 1;
                let text = config(up, swaps % 2)
                    .replace("{LISTEN}", &proxy.addr.to_string())
                    .replace("{ADMIN}", &proxy.admin.to_string());
                std::fs::write(dir.join("sluice.yaml"), text).unwrap();
                match c.post(proxy.admin_url("/reload")).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => swap_failures += 1,
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_end = rss_mib(pid);
        let mut live = Vec::new();
        for p in ["tag", "limit", "hostile"] {
            live.push((
                p,
                proxy.metric(&format!("sluice_plugin_contexts{{plugin=\"{p}\",version=\"stable\"}}")).await,
                proxy.metric(&format!("sluice_plugin_vms{{plugin=\"{p}\",version=\"stable\"}}")).await,
            ));
        }
        let mid = rss_middle.unwrap_or(rss_end);
        println!("# Soak: {secs} s, {clients} clients, a swap every 30 s, a hostile request every second\n");
        println!("| requests served | errors | swaps (refused) | hostile requests (answered 503) | RSS start / middle / end (MiB) | end vs middle |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {swaps} ({swap_failures}) | {hostile} ({hostile_503}) | {rss_start:.1} / {mid:.1} / {rss_end:.1} | {:+.1}% |",
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            (rss_end - mid) / mid * 100.0
        );
        println!();
        println!("| plugin | live contexts at the end | healthy VMs at the end |");
        println!("|---|---|---|");
        for (p, ctx, vms) in live {
            println!("| {p} | {} | {} |", ctx.unwrap_or(0.0), vms.unwrap_or(0.0));
        }
    });
}
