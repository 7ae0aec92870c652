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
    assert_eq!(
        proxy
            .metric(&format!("sluice_plugin_vms{{plugin=\"p{}\"}}", n - 1))
            .await,
        Some(2.0)
    );
}

/// A pool set smaller than the config needs: start-up fails, naming the setting to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_too_small_for_the_config_is_refused_naming_the_setting() {
    let up = upstream("backend").await;
    let dir = sdk_dir("engine-small");
    let (text, addr, admin) = with_ports(&many_plugins(up, 3, "engine: { instance_slots: 4 }\n"));
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
