//! Swapping plugins and config at runtime, through the real binary under load: each trigger
//! (`POST /reload`, `SIGHUP`, the config file changing on disk), refused reloads, a request
//! paused in an HTTP callout across a swap, and shared data kept across a swap.
//!
//! Plugins are the library's `headers` and `rate-limit` and the public-SDK test plugin, built
//! by `make wasm`. Two "versions" of a plugin are two different binaries: the same module with
//! a different custom section appended (a different sha256, compiled separately), each
//! configured to tag responses with its version.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

fn headers_plugin() -> Vec<u8> {
    built("wasm32-wasip1/plugin/sluice_plugin_headers.wasm")
}

/// Writes `text` to `path` the way editors and Kubernetes do: a new file renamed over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A config whose route runs plugin `tag` from `<version>.wasm`, tagging responses with
/// `x-version: <version>`. `{LISTEN}`/`{ADMIN}` stay placeholders.
fn tag_config(upstream: std::net::SocketAddr, version: &str, watch: bool) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: {watch}, poll_interval_ms: 100, debounce_ms: 50 }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [tag] }}\n\
         plugins:\n  tag: {{ path: {version}.wasm, config: {{ rules: [{{ response: {{ set: {{ x-version: {version} }} }} }}] }} }}\n"
    )
}

/// Polls until a response carries `x-version: want`; returns how long that took.
async fn wait_version(proxy: &Sluice, want: &str, since: Instant) -> Duration {
    let c = client();
    loop {
        if let Ok(r) = c.get(proxy.url("/probe")).send().await {
            if r.headers().get("x-version").and_then(|v| v.to_str().ok()) == Some(want) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "version {want} not serving 20 s after the trigger:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum How {
    Api,
    Signal,
    File,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_through_each_trigger_drop_no_request() {
    const SWAPS: usize = 20;
    let up = upstream("backend").await;
    let dir = temp_dir("reload-load");
    let base = headers_plugin();
    std::fs::write(dir.join("v1.wasm"), wasm_variant(&base, "v1")).unwrap();
    std::fs::write(dir.join("v2.wasm"), wasm_variant(&base, "v2")).unwrap();
    let proxy = Sluice::start_in(&tag_config(up, "v1", false), dir.clone()).await;
    let config = dir.join("sluice.yaml");
    // Compile v2 once before the clock matters (a cold compile is measured by the reload
    // benchmark, not here): two untimed reloads, v2 then v1 again.
    for v in ["v2", "v1"] {
        std::fs::write(&config, fill(&tag_config(up, v, false), &proxy)).unwrap();
        let (status, body) = post_reload(&proxy).await;
        assert_eq!(status, 200, "{body}");
    }
    let load = Load::start(proxy.url("/load"), 16, &["v1", "v2"]);
    let mut version = "v1";
    let mut latencies: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for how in [How::Api, How::Signal, How::File] {
        if let How::File = how {
            // Turn the watcher on (through the API), with v1 serving.
            version = "v1";
            std::fs::write(&config, fill(&tag_config(up, version, true), &proxy)).unwrap();
            let (status, body) = post_reload(&proxy).await;
            assert_eq!(status, 200, "{body}");
        }
        for _ in 0..SWAPS {
            version = if version == "v1" { "v2" } else { "v1" };
            let text = fill(&tag_config(up, version, matches!(how, How::File)), &proxy);
            let since = match how {
                How::Api => {
                    std::fs::write(&config, text).unwrap();
                    let since = Instant::now();
                    let (status, body) = post_reload(&proxy).await;
                    assert_eq!(status, 200, "{body}");
                    since
                }
                How::Signal => {
                    std::fs::write(&config, text).unwrap();
                    let since = Instant::now();
                    proxy.signal(libc::SIGHUP);
                    since
                }
                How::File => {
                    let since = Instant::now();
                    replace_file(&config, &text);
                    since
                }
            };
            let took = wait_version(&proxy, version, since).await;
            latencies
                .entry(match how {
                    How::Api => "api",
                    How::Signal => "signal",
                    How::File => "file",
                })
                .or_default()
                .push(took);
            // Let the load run on this version for a moment (60 swaps: over 20 s of load).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let (counts, failures) = load.finish().await;
    let total: u64 = counts.values().sum();
    eprintln!("responses by version: {counts:?} ({total} in all)");
    for (how, l) in &latencies {
        let mut l = l.clone();
        l.sort();
        eprintln!(
            "{how}: trigger to new version serving: median {:?}, max {:?}",
            l[l.len() / 2],
            l[l.len() - 1]
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the swaps, e.g. {:?}\n{}",
        failures.len(),
        total as usize + failures.len(),
        &failures[..failures.len().min(5)],
        proxy.logs()
    );
    assert!(
        counts.get("v1").copied().unwrap_or(0) > 100
            && counts.get("v2").copied().unwrap_or(0) > 100,
        "{counts:?}"
    );
    for (how, l) in &latencies {
        let slowest = l.iter().max().unwrap();
        assert!(
            *slowest < Duration::from_secs(1),
            "{how}: a swap took {slowest:?} to serve (more than one second)"
        );
    }
    // 20 swaps per trigger, the two warm-up reloads and the one that turned the watcher
    // on; none refused.
    proxy
        .wait_metric(
            "sluice_config_reloads_total{result=\"ok\"}",
            (3 * SWAPS + 3) as f64,
        )
        .await;
    assert_eq!(
        proxy
            .metric("sluice_config_reloads_total{result=\"error\"}")
            .await,
        None
    );
    let plugins = get_json(proxy.admin_url("/plugins")).await;
    assert_eq!(
        plugins["config_version"],
        (3 * SWAPS + 4) as u64,
        "{plugins}"
    );
    assert_eq!(plugins["last_reload"]["result"], "ok", "{plugins}");
    assert_eq!(plugins["last_reload"]["trigger"], "file", "{plugins}");
    let tag = &plugins["plugins"][0];
    assert_eq!(tag["name"], "tag");
    let expected = sha256_hex(&wasm_variant(&base, version));
    assert_eq!(tag["sha256"], expected.as_str(), "{plugins}");
    assert_eq!(tag["version"], (3 * SWAPS + 4) as u64, "{plugins}");
    // Every replaced plugin's VMs are gone: only the serving plugin's remain (its first,
    // and its second if the second worker thread served it).
    let started = tag["vms"]["started"].as_u64().unwrap();
    assert!((1..=2).contains(&started), "{plugins}");
    proxy
        .wait_metric(
            "sluice_plugin_vms{plugin=\"tag\",version=\"stable\"}",
            started as f64,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_reloads_name_the_cause_and_keep_the_old_set_serving() {
    let up = upstream("backend").await;
    let dir = temp_dir("reload-refused");
    let base = headers_plugin();
    std::fs::write(dir.join("v1.wasm"), wasm_variant(&base, "v1")).unwrap();
    std::fs::write(dir.join("v2.wasm"), wasm_variant(&base, "v2")).unwrap();
    let proxy = Sluice::start_in(&tag_config(up, "v1", false), dir.clone()).await;
    let config = dir.join("sluice.yaml");
    let good = fill(&tag_config(up, "v2", false), &proxy);
    let load = Load::start(proxy.url("/load"), 4, &["v1"]);

    std::fs::write(dir.join("broken.wasm"), b"\0asm\x01\0\0\0 not a module").unwrap();
    let v2_sha = sha256_hex(&wasm_variant(&base, "v2"));
    let wrong_sha = "0".repeat(64);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "malformed wasm",
            good.replace("path: v2.wasm", "path: broken.wasm"),
            vec!["plugin \"tag\"", "not a valid wasm module"],
        ),
        (
            // Satisfies the plugin's schema; its on_configure refuses it (a rule that
            // changes nothing).
            "on_configure returns false",
            good.replace(
                "config: { rules: [{ response: { set: { x-version: v2 } } }] }",
                "config: { rules: [{ path_prefixes: [/v2] }] }",
            ),
            vec!["plugin \"tag\"", "on_configure"],
        ),
        (
            "config against the plugin's schema",
            good.replace(
                "config: { rules: [{ response: { set: { x-version: v2 } } }] }",
                "config: { rules: 5 }",
            ),
            vec!["plugins.tag.config.rules: value is not of type \"array\""],
        ),
        (
            "wrong sha256",
            good.replace(
                "path: v2.wasm,",
                &format!("path: v2.wasm, sha256: {wrong_sha},"),
            ),
            vec!["plugin \"tag\"", &wrong_sha, &v2_sha],
        ),
        (
            "config error",
            good.replace("upstream: backend", "upstream: nowhere"),
            vec!["routes[0].upstream", "nowhere"],
        ),
        (
            "missing plugin file",
            good.replace("path: v2.wasm", "path: gone.wasm"),
            vec!["plugins.tag.path", "gone.wasm"],
        ),
        (
            "engine change",
            format!("{good}engine: {{ instance_slots: 999 }}\n"),
            vec!["engine changed", "instance pool", "restart"],
        ),
        (
            "listener change",
            good.replace(
                "listeners: [",
                &format!(
                    "listeners: [{{ name: extra, address: '127.0.0.1:{}' }}, ",
                    free_port()
                ),
            ),
            vec!["listeners changed", "restart"],
        ),
    ];
    let refused = cases.len();
    for (what, text, needles) in cases {
        std::fs::write(&config, &text).unwrap();
        let (status, body) = post_reload(&proxy).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["result"], "error", "{what}: {body}");
        assert_eq!(body["version"], 1, "{what}: {body}");
        let error = body["error"].as_str().unwrap();
        for n in needles {
            assert!(error.contains(n), "{what}: {n:?} not in {error:?}");
        }
        // What is serving, and the refusal, are both visible.
        let plugins = get_json(proxy.admin_url("/plugins")).await;
        assert_eq!(plugins["config_version"], 1, "{what}: {plugins}");
        assert_eq!(plugins["last_reload"]["result"], "error");
        assert_eq!(plugins["last_reload"]["error"], error);
        let cfg = get_json(proxy.admin_url("/config")).await;
        assert_eq!(cfg["last_reload"]["error"], error);
        assert_eq!(cfg["version"], 1);
        let r = client().get(proxy.url("/check")).send().await.unwrap();
        assert_eq!(r.headers()["x-version"], "v1", "{what}");
    }
    // `sluice reload` reports the refusal and exits 1.
    let out = std::process::Command::new(sluice_bin())
        .args(["reload", "--admin", &proxy.admin.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners changed"));

    let (counts, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "requests failed while reloads were refused: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(counts["v1"] > 0);
    proxy
        .wait_metric(
            "sluice_config_reloads_total{result=\"error\"}",
            (refused + 1) as f64,
        )
        .await;

    // The good config still goes through, with `sluice reload`.
    std::fs::write(&config, &good).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["reload", "--admin", &proxy.admin.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["version"], 2);
    let r = client().get(proxy.url("/check")).send().await.unwrap();
    assert_eq!(r.headers()["x-version"], "v2");
}

/// A tiny upstream answering every request with 200 after `delay`.
async fn slow_upstream(delay: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = Vec::new();
                while !have.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_paused_in_a_callout_finishes_on_the_version_it_started_with() {
    let up = upstream("backend").await;
    // The callout is held 700 ms (the test plugin's callout timeout is 1 s); the swap inside
    // it is a warm one (both versions compiled beforehand): a cold swap on a loaded CI machine
    // once took longer than the hold.
    let hold = Duration::from_millis(700);
    let gate = slow_upstream(hold).await;
    let dir = temp_dir("reload-callout");
    std::fs::write(
        dir.join("gate.wasm"),
        built("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm"),
    )
    .unwrap();
    let base = headers_plugin();
    std::fs::write(dir.join("v1.wasm"), wasm_variant(&base, "v1")).unwrap();
    std::fs::write(dir.join("v2.wasm"), wasm_variant(&base, "v2")).unwrap();
    let config = |version: &str| {
        format!(
            "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
             listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
             admin: {{ address: '{{ADMIN}}' }}\n\
             reload: {{ watch: false }}\n\
             upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n  gate: {{ endpoints: ['{gate}'] }}\n\
             routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [gate, tag] }}\n\
             plugins:\n\
             \x20 gate: {{ path: gate.wasm, vm_config: {version}, allowed_upstreams: [gate], config: {{ mode: callout, upstream: gate }} }}\n\
             \x20 tag: {{ path: {version}.wasm, config: {{ rules: [{{ response: {{ set: {{ x-version: {version} }} }} }}] }} }}\n"
        )
    };
    let proxy = Sluice::start_in(&config("v1"), dir.clone()).await;
    for version in ["v2", "v1"] {
        std::fs::write(dir.join("sluice.yaml"), fill(&config(version), &proxy)).unwrap();
        let (status, body) = post_reload(&proxy).await;
        assert_eq!(status, 200, "warm-up reload to {version}: {body}");
    }
    let c = client();
    let url = proxy.url("/held");
    let held = tokio::spawn({
        let c = c.clone();
        async move {
            let started = Instant::now();
            let r = c.get(&url).send().await.unwrap();
            (
                started.elapsed(),
                r.status().as_u16(),
                r.headers().get("x-version").cloned(),
                echo(r).await,
            )
        }
    });
    // The request is now paused in the gate's callout: swap both plugins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(dir.join("sluice.yaml"), fill(&config("v2"), &proxy)).unwrap();
    let (status, body) = post_reload(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !held.is_finished(),
        "the held request ended before the swap"
    );
    let after = c.get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["x-version"], "v2");
    let (took, status, tag, echoed) = held.await.unwrap();
    assert_eq!(status, 200, "{echoed}");
    assert!(took >= hold, "not held: {took:?}");
    assert_eq!(
        tag.unwrap(),
        "v1",
        "the held request finished on the new version"
    );
    // The old gate VM delivered the callout's answer and resumed the request.
    assert_eq!(echo_header(&echoed, "x-callout-status"), Some("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counters_and_plugin_metrics_survive_a_swap() {
    let up = upstream("backend").await;
    let dir = temp_dir("reload-shared");
    let base = built("wasm32-wasip1/plugin/sluice_plugin_rate_limit.wasm");
    std::fs::write(dir.join("v1.wasm"), wasm_variant(&base, "v1")).unwrap();
    std::fs::write(dir.join("v2.wasm"), wasm_variant(&base, "v2")).unwrap();
    let config = |version: &str| {
        format!(
            "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
             listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
             admin: {{ address: '{{ADMIN}}' }}\n\
             reload: {{ watch: false }}\n\
             upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
             routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [limit] }}\n\
             plugins:\n  limit: {{ path: {version}.wasm, config: {{ key: [route], requests: 5, period_seconds: 3600 }} }}\n"
        )
    };
    let proxy = Sluice::start_in(&config("v1"), dir.clone()).await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            c.get(proxy.url("/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    std::fs::write(dir.join("sluice.yaml"), fill(&config("v2"), &proxy)).unwrap();
    let (status, body) = post_reload(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let plugins = get_json(proxy.admin_url("/plugins/limit")).await;
    assert_eq!(
        plugins["version"], 2,
        "the plugin was not replaced: {plugins}"
    );
    for _ in 0..4 {
        statuses.push(
            c.get(proxy.url("/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429],
        "the new version started a fresh bucket"
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_ratelimit_allowed{plugin=\"limit\",version=\"stable\"}")
            .await,
        Some(5.0)
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_ratelimit_limited{plugin=\"limit\",version=\"stable\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_a_config_file_and_unknown_plugins_say_so() {
    let dir = temp_dir("reload-demo");
    let c = client();
    // Ports picked ahead can be taken by a parallel test in between: start again on new ports
    // if the demo exits at start-up.
    let mut attempt = 0;
    let (mut demo, admin, resp) = 'start: loop {
        attempt += 1;
        let admin = free_port();
        let log = dir.join(format!("demo-{attempt}.log"));
        let mut demo = spawn_logged(
            std::process::Command::new(sluice_bin()).args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--upstream",
                &format!("127.0.0.1:{}", free_port()),
            ]),
            &log,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = c
                .post(format!("http://127.0.0.1:{admin}/reload"))
                .send()
                .await
            {
                break 'start (demo, admin, r);
            }
            if let Some(status) = demo.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(attempt < 3, "sluice demo exited ({status}):\n{text}");
                continue 'start;
            }
            assert!(
                Instant::now() < deadline,
                "demo admin never answered:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not started from a config file"));
    let r = c
        .get(format!("http://127.0.0.1:{admin}/plugins/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no plugin named \"nope\""));
    let _ = demo.kill();
    let _ = demo.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_traps_after_a_swap_follows_its_policy_and_is_not_rolled_back() {
    let up = upstream("backend").await;
    let dir = temp_dir("reload-trap");
    let base = headers_plugin();
    std::fs::write(dir.join("v1.wasm"), wasm_variant(&base, "v1")).unwrap();
    std::fs::write(
        dir.join("bad.wasm"),
        built("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm"),
    )
    .unwrap();
    let proxy = Sluice::start_in(&tag_config(up, "v1", false), dir.clone()).await;
    // The new version loads fine but traps on every request; it fails open.
    let bad = fill(&tag_config(up, "v1", false), &proxy).replace(
        "tag: { path: v1.wasm, config: { rules: [{ response: { set: { x-version: v1 } } }] } }",
        "tag: { path: bad.wasm, on_error: fail_open, config: { mode: panic } }",
    );
    assert!(bad.contains("bad.wasm"));
    std::fs::write(dir.join("sluice.yaml"), bad).unwrap();
    let (status, body) = post_reload(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let c = client();
    for _ in 0..5 {
        let r = c.get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "fail_open lets the request through");
        assert!(r.headers().get("x-version").is_none());
    }
    let plugin = get_json(proxy.admin_url("/plugins/tag")).await;
    assert_eq!(plugin["version"], 2, "rolled back: {plugin}");
    assert!(
        plugin["source"].as_str().unwrap().ends_with("bad.wasm"),
        "{plugin}"
    );
    // Each trap takes a VM out (replaced in the background, with backoff): the errors show.
    assert!(plugin["errors"]["trap"].as_u64().unwrap() >= 1, "{plugin}");
    assert_eq!(
        get_json(proxy.admin_url("/plugins")).await["config_version"],
        2
    );
    let traps = proxy
        .metric(
            "sluice_plugin_errors_total{kind=\"trap\",phase=\"request_headers\",plugin=\"tag\",version=\"stable\"}",
        )
        .await
        .unwrap_or(0.0);
    assert!(traps >= 1.0, "{traps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_only_the_probes_are_open() {
    let up = upstream("backend").await;
    let dir = temp_dir("reload-token");
    let token = "s3cret-admin-token-for-tests";
    std::fs::write(dir.join("admin.token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.join("v1.wasm"), wasm_variant(&headers_plugin(), "v1")).unwrap();
    let text = tag_config(up, "v1", false).replace(
        "admin: { address: '{ADMIN}' }",
        "admin: { address: '{ADMIN}', token_file: admin.token }",
    );
    assert!(text.contains("token_file"));
    let proxy = Sluice::start_in(&text, dir.clone()).await;
    let c = client();
    for path in ["/ready", "/metrics"] {
        let r = c.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} must stay open for probes");
    }
    for (method, path) in [
        (reqwest::Method::GET, "/config"),
        (reqwest::Method::GET, "/plugins"),
        (reqwest::Method::GET, "/plugins/tag"),
        (reqwest::Method::POST, "/reload"),
    ] {
        let r = c
            .request(method.clone(), proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without the token");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"sluice-admin\""
        );
        let r = c
            .request(method.clone(), proxy.admin_url(path))
            .header("authorization", "Bearer wrong-token-of-some-length")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
        let r = c
            .request(method.clone(), proxy.admin_url(path))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} {path} with the token");
    }
    // Two authorized reloads above and below, none without the token.
    let admin = proxy.admin.to_string();
    let out = std::process::Command::new(sluice_bin())
        .args(["reload", "--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));
    let token_file = dir.join("admin.token");
    let out = std::process::Command::new(sluice_bin())
        .args(["reload", "--admin", &admin, "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy
        .wait_metric("sluice_config_reloads_total{result=\"ok\"}", 2.0)
        .await;
}

/// A Kubernetes ConfigMap volume as the kubelet writes it: `sluice.yaml` links to
/// `..data/sluice.yaml`, `..data` links to a timestamped directory, and an update writes a new
/// directory, renames a new `..data` link over the old one and deletes the old directory. The
/// file watcher reloads it (no pod restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_updated_by_the_kubelet_is_reloaded() {
    use std::os::unix::fs::symlink;
    let up = upstream("backend").await;
    let dir = temp_dir("configmap");
    for v in ["v1", "v2"] {
        std::fs::write(dir.join(format!("{v}.wasm")), headers_plugin()).unwrap();
    }
    let proxy = Sluice::start_in(&tag_config(up, "v1", true), dir.clone()).await;
    wait_version(&proxy, "v1", Instant::now()).await;

    // The same content moved into the ConfigMap layout (atomic renames: the watcher never
    // sees the file missing).
    let text = std::fs::read_to_string(dir.join("sluice.yaml")).unwrap();
    std::fs::create_dir(dir.join("..2026_11_30_09_00_00.1")).unwrap();
    std::fs::write(dir.join("..2026_11_30_09_00_00.1/sluice.yaml"), &text).unwrap();
    symlink("..2026_11_30_09_00_00.1", dir.join("..data")).unwrap();
    symlink("..data/sluice.yaml", dir.join("sluice.yaml.link")).unwrap();
    std::fs::rename(dir.join("sluice.yaml.link"), dir.join("sluice.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let version_before = get_json(proxy.admin_url("/config")).await["version"].clone();

    // The kubelet's update.
    let since = Instant::now();
    let v2 = fill(&tag_config(up, "v2", true), &proxy);
    std::fs::create_dir(dir.join("..2026_11_30_09_01_00.2")).unwrap();
    std::fs::write(dir.join("..2026_11_30_09_01_00.2/sluice.yaml"), v2).unwrap();
    symlink("..2026_11_30_09_01_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_30_09_00_00.1")).unwrap();
    let took = wait_version(&proxy, "v2", since).await;
    eprintln!("ConfigMap symlink swap to v2 serving: {took:?}");
    let config = get_json(proxy.admin_url("/config")).await;
    assert_eq!(config["last_reload"]["trigger"], "file", "{config}");
    assert_ne!(config["version"], version_before);
}

/// Secret references in a plugin's config: replaced in what the plugin gets, shown as written
/// everywhere else; a referenced file is watched (replaced, it reloads the plugin with the new
/// value; removed, the reload is refused naming the field and the old value keeps serving).
/// (`x-literal` is `$${` for sluice, then `{{ }}` for the headers plugin's templates.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_references_reach_the_plugin_only_and_their_files_are_watched() {
    let up = upstream("backend").await;
    let dir = temp_dir("secrets");
    std::fs::write(dir.join("tag.wasm"), headers_plugin()).unwrap();
    std::fs::create_dir(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/token"), "first-secret-value\n").unwrap();
    let template = format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: true, poll_interval_ms: 100, debounce_ms: 50 }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [tag] }}\n\
         plugins:\n  tag:\n    path: tag.wasm\n    config:\n      rules:\n        - response:\n            set:\n\
         \x20             x-version: '${{file:secrets/token}}'\n\
         \x20             x-env: 'pre-${{env:SLUICE_TEST_SECRET_ENV}}-post'\n\
         \x20             x-literal: '$${{{{env:SLUICE_TEST_SECRET_ENV}}}}'\n"
    );
    let (text, addr, admin) = with_ports(&template);
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, &text).unwrap();

    // `sluice check` without the variable: refused, naming the field and the reference.
    let out = std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("SLUICE_TEST_SECRET_ENV")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "plugins.tag.config.rules[0].response.set.x-env: ${env:SLUICE_TEST_SECRET_ENV}: \
             the environment variable SLUICE_TEST_SECRET_ENV is not set"
        ),
        "{stderr}"
    );

    let mut proxy = Sluice::spawn(
        std::process::Command::new(sluice_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("SLUICE_TEST_SECRET_ENV", "env-secret-value"),
        addr,
        admin,
        dir.clone(),
    );
    proxy.wait_ready().await;
    let r = client().get(proxy.url("/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = |r: &reqwest::Response, n: &str| {
        r.headers().get(n).map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(h(&r, "x-version").as_deref(), Some("first-secret-value"));
    assert_eq!(h(&r, "x-env").as_deref(), Some("pre-env-secret-value-post"));
    assert_eq!(
        h(&r, "x-literal").as_deref(),
        Some("${env:SLUICE_TEST_SECRET_ENV}")
    );

    // What the admin API shows: the references, never the values.
    let shown = get_json(proxy.admin_url("/config")).await;
    let set = &shown["config"]["plugins"]["tag"]["config"]["rules"][0]["response"]["set"];
    assert_eq!(set["x-version"], "${file:secrets/token}", "{shown}");
    assert_eq!(set["x-env"], "pre-${env:SLUICE_TEST_SECRET_ENV}-post");
    let plugin = get_json(proxy.admin_url("/plugins/tag")).await;
    assert_eq!(
        plugin["secrets"],
        serde_json::json!(["file:secrets/token", "env:SLUICE_TEST_SECRET_ENV"]),
        "{plugin}"
    );
    for body in [shown.to_string(), plugin.to_string()] {
        assert!(!body.contains("secret-value"), "a value is shown: {body}");
    }

    // The file replaced (as the kubelet updates a Secret volume): the plugin gets the new value.
    let since = Instant::now();
    replace_file(&dir.join("secrets/token"), "second-secret-value\n");
    let took = wait_version(&proxy, "second-secret-value", since).await;
    eprintln!("secret file replaced, new value serving: {took:?}");
    let cfg = get_json(proxy.admin_url("/config")).await;
    assert_eq!(cfg["last_reload"]["trigger"], "file", "{cfg}");
    assert_eq!(cfg["last_reload"]["result"], "ok", "{cfg}");

    // The file removed: the reload is refused, naming the field; the last value keeps serving.
    std::fs::remove_file(dir.join("secrets/token")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let cfg = get_json(proxy.admin_url("/config")).await;
        if cfg["last_reload"]["result"] == "error" {
            break cfg["last_reload"]["error"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no refused reload: {cfg}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        error.contains(&format!(
            "plugins.tag.config.rules[0].response.set.x-version: ${{file:secrets/token}}: \
             cannot read {}",
            dir.join("secrets/token").display()
        )),
        "{error}"
    );
    let r = client().get(proxy.url("/b")).send().await.unwrap();
    assert_eq!(h(&r, "x-version").as_deref(), Some("second-secret-value"));

    // Back again: it reloads by itself.
    let since = Instant::now();
    replace_file(&dir.join("secrets/token"), "third-secret-value");
    wait_version(&proxy, "third-secret-value", since).await;

    let logs = proxy.logs();
    assert!(!logs.contains("secret-value"), "a value is logged:\n{logs}");
}
