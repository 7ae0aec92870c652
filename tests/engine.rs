//! The wasm engine's instance pool (`engine:`): sized from the config so that hundreds of
//! plugins load in one process, and a pool too small for the config is refused with an error
//! that names the setting.

mod support;

use std::time::Duration;

use support::*;

/// A config with `n` routes `/pN/`, each with its own plugin `pN` (the Rust SDK test plugin in
/// mode `copy-header`), on 2 worker threads (2 VMs per plugin).
fn many_plugins(up: std::net::SocketAddr, n: usize, engine: &str) -> String {
    let mut s = format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         {engine}\
         routes:\n"
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ name: r{i}, match: {{ path_prefix: '/p{i}/' }}, upstream: backend, plugins: [p{i}] }}\n"
        ));
    }
    s.push_str("plugins:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  p{i}: {{ path: sdk.wasm, config: {{ mode: copy-header }} }}\n"
        ));
    }
    s
}

fn sdk_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let sdk = target_dir().join("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm");
    assert!(
        sdk.is_file(),
        "{} is missing: run `make wasm`",
        sdk.display()
    );
    std::fs::copy(sdk, dir.join("sdk.wasm")).unwrap();
    dir
}

/// 300 plugins of 2 VMs each: 600 VMs, more than twice the old fixed pool of 256 instances
/// (which stopped start-up at the 129th plugin). Each plugin serves its own route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_plugins_load_in_one_process() {
    let up = upstream("backend").await;
    let n = 300;
    let proxy = Sluice::start_in(&many_plugins(up, n, ""), sdk_dir("engine-many")).await;
    let c = client();
    for i in [0, n / 2, n - 1] {
        let r = c
            .get(proxy.url(&format!("/p{i}/x")))
            .header("x-in", format!("route {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "route {i}");
        let echo = echo(r).await;
        assert_eq!(
            echo_header(&echo, "x-sdk-in"),
            Some(format!("route {i}").as_str()),
            "plugin p{i} ran: {echo}"
        );
    }
    // VMs beyond the first start on use: the plugin that served one request has one or two.
    let vms = proxy
        .metric(&format!(
            "sluice_plugin_vms{{plugin=\"p{}\",version=\"stable\"}}",
            n - 1
        ))
        .await
        .unwrap();
    assert!((1.0..=2.0).contains(&vms), "p{}: {vms} VMs", n - 1);
}

/// The first VM of a plugin starts at load, the second when the second worker thread first
/// needs it; a VM started on use and idle for `vm_idle_seconds` stops (its root context ends)
/// and the plugin keeps serving. With `vm_start: on_load` both start at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_beyond_the_first_start_on_use_and_stop_when_idle() {
    let up = upstream("backend").await;
    let proxy = Sluice::start_in(
        &many_plugins(up, 1, "engine: { vm_idle_seconds: 1 }\n"),
        sdk_dir("engine-lazy"),
    )
    .await;
    let vms = "sluice_plugin_vms{plugin=\"p0\",version=\"stable\"}";
    assert_eq!(
        proxy.metric(vms).await,
        Some(1.0),
        "only the first VM at load"
    );
    let info = get_json(proxy.admin_url("/plugins/p0")).await;
    assert_eq!(info["vms"]["configured"], 2, "{info}");
    assert_eq!(info["vms"]["started"], 1, "{info}");

    // Concurrent requests until both worker threads have served (and started their VM).
    let c = client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.metric(vms).await != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the second VM never started: {:?}",
            proxy.metric(vms).await
        );
        let sends = (0..16).map(|i| {
            c.get(proxy.url("/p0/x"))
                .header("x-in", format!("r{i}"))
                .send()
        });
        for r in futures_util::future::join_all(sends).await {
            let r = r.unwrap();
            assert_eq!(r.status(), 200);
            let e = echo(r).await;
            assert!(echo_header(&e, "x-sdk-in").is_some(), "plugin ran: {e}");
        }
    }

    // Idle: the VM started on use stops; the first stays and serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.metric(vms).await != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle VM was not stopped: {:?}",
            proxy.metric(vms).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c
        .get(proxy.url("/p0/x"))
        .header("x-in", "after")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo_header(&echo(r).await, "x-sdk-in"), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_start_on_load_starts_every_vm_at_load() {
    let up = upstream("backend").await;
    let proxy = Sluice::start_in(
        &many_plugins(up, 2, "engine: { vm_start: on_load }\n"),
        sdk_dir("engine-eager"),
    )
    .await;
    for p in ["p0", "p1"] {
        assert_eq!(
            proxy
                .metric(&format!(
                    "sluice_plugin_vms{{plugin=\"{p}\",version=\"stable\"}}"
                ))
                .await,
            Some(2.0),
            "{p}"
        );
    }
}

/// A pool set smaller than the config needs: start-up fails, naming the setting to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_too_small_for_the_config_is_refused_naming_the_setting() {
    let up = upstream("backend").await;
    let dir = sdk_dir("engine-small");
    let (text, addr, admin) = with_ports(&many_plugins(
        up,
        3,
        "engine: { instance_slots: 4, vm_start: on_load }\n",
    ));
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, text).unwrap();
    let mut proxy = Sluice::spawn(
        std::process::Command::new(sluice_bin())
            .arg("run")
            .arg("--config")
            .arg(&config),
        addr,
        admin,
        dir,
    );
    let status = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("sluice exits");
    assert!(!status.success());
    let logs = proxy.logs();
    assert!(
        logs.contains("engine.instance_slots") && logs.contains("plugin \"p2\""),
        "{logs}"
    );
}
