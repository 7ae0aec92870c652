//! Reload benchmark: time from `POST /reload` to the new version serving, for plugins of
//! three sizes, cold (a binary never compiled before: fresh compiled-code cache, new sha256)
//! and warm (swapping back to a binary the process compiled before); then the latency of
//! traffic during repeated swaps against the same traffic without swaps.
//!
//! `make bench-reload` (or `cargo bench -p sluice-proxy --bench reload`), after `make wasm`
//! and `cargo build --target wasm32-wasip1 -p sluice-plugin-mask` (the unoptimised build is
//! the large plugin). Prints a table; nothing is asserted. Environment: `ROUNDS` swaps per
//! measurement (default 5), `LOAD_SECONDS` per latency run (default 5), `CLIENTS` (default 8).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

struct Subject {
    label: &'static str,
    file: PathBuf,
    config: &'static str,
}

fn config(upstream: std::net::SocketAddr, subject_config: &str, version: u64) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: false }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [subject, tag] }}\n\
         plugins:\n\
         \x20 subject: {{ path: subject-{version}.wasm, config: {subject_config} }}\n\
         \x20 tag: {{ path: tag.wasm, config: {{ rules: [{{ response: {{ set: {{ x-version: '{version}' }} }} }}] }} }}\n"
    )
}

fn fill(text: &str, proxy: &Sluice) -> String {
    text.replace("{LISTEN}", &proxy.addr.to_string())
        .replace("{ADMIN}", &proxy.admin.to_string())
}

/// Rewrites the config for `version`, POSTs /reload and returns the time until a request
/// carries the new version.
async fn swap(proxy: &Sluice, dir: &Path, text: &str, version: u64) -> Duration {
    std::fs::write(dir.join("sluice.yaml"), fill(text, proxy)).unwrap();
    let c = client();
    let started = Instant::now();
    let r = c.post(proxy.admin_url("/reload")).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status == 200, "reload refused: {body}");
    let want = version.to_string();
    loop {
        let r = c.get(proxy.url("/probe")).send().await.unwrap();
        if r.headers().get("x-version").and_then(|v| v.to_str().ok()) == Some(want.as_str()) {
            return started.elapsed();
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() {
    let rounds = env_num("ROUNDS", 5).max(1);
    let load_secs = env_num("LOAD_SECONDS", 5).max(1);
    let clients = env_num("CLIENTS", 8).max(1) as usize;
    let t = target_dir().join("wasm32-wasip1");
    let subjects = [
        Subject {
            label: "headers (release)",
            file: t.join("plugin/sluice_plugin_headers.wasm"),
            config: "{ rules: [{ request: { set: { x-subject: on } } }] }",
        },
        Subject {
            label: "mask (release)",
            file: t.join("plugin/sluice_plugin_mask.wasm"),
            config: "{ presets: [email] }",
        },
        Subject {
            label: "mask (unoptimised)",
            file: t.join("debug/sluice_plugin_mask.wasm"),
            config: "{ presets: [email] }",
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = upstream("backend").await;
        let tag = std::fs::read(t.join("plugin/sluice_plugin_headers.wasm"))
            .expect("build the plugins with `make wasm` first");
        println!("# Reload: trigger (POST /reload) to the new version serving, ms");
        println!();
        println!("| plugin | size | code | cold (compile) median / max | warm median / max |");
        println!("|---|---|---|---|---|");
        for s in &subjects {
            let Ok(module) = std::fs::read(&s.file) else {
                println!("| {} | missing: {} | | | |", s.label, s.file.display());
                continue;
            };
            let dir = temp_dir("bench-reload");
            std::fs::write(dir.join("tag.wasm"), &tag).unwrap();
            for v in 0..=rounds + 2 {
                std::fs::write(
                    dir.join(format!("subject-{v}.wasm")),
                    wasm_variant(&module, &format!("{v}-{}", std::process::id())),
                )
                .unwrap();
            }
            // A fresh compiled-code cache: nothing this run loads was compiled before.
            std::env::set_var("SLUICE_WASM_CACHE", dir.join("cache"));
            let proxy = Sluice::start_in(&config(up, s.config, 0), dir.clone()).await;
            let mut cold = Vec::new();
            for v in 1..=rounds {
                cold.push(swap(&proxy, &dir, &config(up, s.config, v), v).await);
            }
            // Warm: back and forth between two binaries the process has compiled.
            let mut warm = Vec::new();
            for i in 0..rounds {
                let v = if i % 2 == 0 { rounds - 1 } else { rounds };
                let text = config(up, s.config, v).replace(
                    &format!("x-version: '{v}'"),
                    &format!("x-version: '{}'", 1000 + i),
                );
                warm.push(swap(&proxy, &dir, &text, 1000 + i).await);
            }
            let code = code_size(&module);
            println!(
                "| {} | {:.2} MB | {:.2} MB | {} / {} | {} / {} |",
                s.label,
                module.len() as f64 / 1e6,
                code as f64 / 1e6,
                ms(median(&mut cold.clone())),
                ms(*cold.iter().max().unwrap()),
                ms(median(&mut warm.clone())),
                ms(*warm.iter().max().unwrap()),
            );
            drop(proxy);
        }
        std::env::remove_var("SLUICE_WASM_CACHE");

        println!();
        println!(
            "# Latency of traffic ({clients} closed-loop clients, {load_secs} s each, route with the headers plugin), ms"
        );
        println!();
        let s = &subjects[0];
        let module = std::fs::read(&s.file).unwrap();
        let dir = temp_dir("bench-reload-latency");
        std::fs::write(dir.join("tag.wasm"), &tag).unwrap();
        for v in 0..3 {
            std::fs::write(
                dir.join(format!("subject-{v}.wasm")),
                wasm_variant(&module, &v.to_string()),
            )
            .unwrap();
        }
        let proxy = Sluice::start_in(&config(up, s.config, 0), dir.clone()).await;
        // Compile both binaries once, so that the swaps below are warm.
        swap(&proxy, &dir, &config(up, s.config, 1), 1).await;
        swap(&proxy, &dir, &config(up, s.config, 2), 2).await;
        let quiet = closed_loop(proxy.url("/load"), clients, load_secs).await;
        let warm = with_swaps(&proxy, &dir, up, s.config, &module, false, clients, load_secs).await;
        let cold = with_swaps(&proxy, &dir, up, s.config, &module, true, clients, load_secs).await;
        println!("| traffic | requests | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        for (label, l) in [
            ("no reloads".to_string(), &quiet),
            (format!("a warm reload every 250 ms ({} in all)", warm.1), &warm.0),
            (format!("a cold reload (compile) every 250 ms ({} in all)", cold.1), &cold.0),
        ] {
            println!(
                "| {label} | {} | {} | {} | {} |",
                l.len(),
                ms(percentile(l, 0.5)),
                ms(percentile(l, 0.99)),
                ms(*l.last().unwrap())
            );
        }
    });
}

/// Load for `secs` while reloading every 250 ms: warm (back and forth between the compiled
/// binaries 1 and 2) or cold (a binary never seen before each time). Returns the latencies
/// and the number of reloads.
#[allow(clippy::too_many_arguments)]
async fn with_swaps(
    proxy: &Sluice,
    dir: &Path,
    up: std::net::SocketAddr,
    subject_config: &'static str,
    module: &[u8],
    cold: bool,
    clients: usize,
    secs: u64,
) -> (Vec<Duration>, usize) {
    let (dir, admin, addr) = (dir.to_path_buf(), proxy.admin, proxy.addr);
    let module = module.to_vec();
    let swapper = tokio::spawn(async move {
        let c = client();
        let until = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < until {
            let v = if cold {
                let v = 100 + n;
                let bytes = wasm_variant(&module, &format!("cold-{v}-{}", std::process::id()));
                std::fs::write(dir.join(format!("subject-{v}.wasm")), bytes).unwrap();
                v
            } else {
                1 + n % 2
            };
            let text = config(up, subject_config, v)
                .replace("{LISTEN}", &addr.to_string())
                .replace("{ADMIN}", &admin.to_string());
            std::fs::write(dir.join("sluice.yaml"), text).unwrap();
            let r = c
                .post(format!("http://{admin}/reload"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            n += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        n as usize
    });
    let lat = closed_loop(proxy.url("/load"), clients, secs).await;
    (lat, swapper.await.unwrap())
}

/// Size of the code section of a wasm module.
fn code_size(b: &[u8]) -> usize {
    fn leb(b: &[u8], mut i: usize) -> (usize, usize) {
        let (mut r, mut s) = (0usize, 0);
        loop {
            let x = b[i];
            i += 1;
            r |= ((x & 0x7f) as usize) << s;
            s += 7;
            if x < 0x80 {
                return (r, i);
            }
        }
    }
    let mut i = 8;
    let mut code = 0;
    while i < b.len() {
        let id = b[i];
        let (n, j) = leb(b, i + 1);
        if id == 10 {
            code += n;
        }
        i = j + n;
    }
    code
}
