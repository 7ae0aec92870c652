use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanitizing_hides_credentials_and_the_client_address_unless_granted() {
    let proxy = start(
        &[("plain", "/plain", "plain"), ("granted", "/granted", "granted")],
        "  plain: { path: sdk.wasm, config: { mode: visible } }\n\
         \x20 granted: { path: sdk.wasm, config: { mode: visible }, expose: [authorization, cookie, client_address] }\n",
    )
    .await;
    let c = client();
    let send = |path: &str| {
        c.get(proxy.url(path))
            .header("Authorization", "Bearer secret")
            .header("COOKIE", "a=b")
            .send()
    };
    let e = echo(send("/plain").await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-sdk-authorization"), Some("absent"));
    assert_eq!(echo_header(&e, "x-sdk-cookie"), Some("absent"));
    assert_eq!(echo_header(&e, "x-sdk-xff"), Some("absent"));
    assert_eq!(echo_header(&e, "x-sdk-source"), Some("absent"));
    let visible = echo_header(&e, "x-sdk-visible").unwrap();
    for hidden in ["authorization", "cookie", "x-forwarded-for"] {
        assert!(
            !visible.split(',').any(|n| n == hidden),
            "{hidden} in {visible}"
        );
    }
    assert_eq!(
        echo_header(&e, "x-sdk-write-status"),
        Some("2"),
        "write refused"
    );
    assert_eq!(
        echo_header(&e, "authorization"),
        Some("Bearer secret"),
        "forwarded untouched"
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_refused_writes_total{plugin=\"plain\",version=\"stable\"}")
            .await,
        Some(1.0)
    );

    let e = echo(send("/granted").await.unwrap()).await;
    assert_eq!(
        echo_header(&e, "x-sdk-authorization"),
        Some("Bearer secret")
    );
    assert_eq!(echo_header(&e, "x-sdk-cookie"), Some("a=b"));
    assert_eq!(echo_header(&e, "x-sdk-xff"), Some("127.0.0.1"));
    assert!(echo_header(&e, "x-sdk-source")
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(echo_header(&e, "x-sdk-write-status"), Some("0"));
    assert_eq!(
        echo_header(&e, "authorization"),
        Some("forged"),
        "granted write applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_custom_properties_between_plugins() {
    let proxy = start(
        &[("props", "/props", "p1, p2")],
        "  p1: { path: sdk.wasm, root_id: r1, config: { mode: properties, tag: one } }\n\
         \x20 p2: { path: sdk.wasm, vm_id: shared-vm, config: { mode: properties, tag: two } }\n",
    )
    .await;
    let r = client()
        .get(proxy.url("/props/x?q=1"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-prop-response-code"], "200");
    let upstream_addr = r.headers()["x-prop-upstream-address"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(upstream_addr.starts_with("127.0.0.1:"), "{upstream_addr}");
    let e = echo(r).await;
    assert_eq!(
        values(&e, "x-prop-request-path"),
        ["/props/x?q=1", "/props/x?q=1"]
    );
    assert_eq!(echo_header(&e, "x-prop-request-url_path"), Some("/props/x"));
    assert_eq!(echo_header(&e, "x-prop-request-query"), Some("q=1"));
    assert_eq!(echo_header(&e, "x-prop-request-method"), Some("GET"));
    assert_eq!(echo_header(&e, "x-prop-request-scheme"), Some("http"));
    assert_eq!(echo_header(&e, "x-prop-request-protocol"), Some("HTTP/1.1"));
    assert_eq!(echo_header(&e, "x-prop-request-id"), Some("req-123"));
    assert_eq!(echo_header(&e, "x-prop-route_name"), Some("props"));
    assert_eq!(values(&e, "x-prop-plugin_name"), ["p1", "p2"]);
    // An empty value comes back as no value (a null pointer) in the SDK.
    assert_eq!(values(&e, "x-prop-plugin_root_id"), ["r1", "absent"]);
    assert_eq!(values(&e, "x-prop-plugin_vm_id"), ["p1", "shared-vm"]);
    assert_eq!(
        values(&e, "x-prop-custom"),
        ["absent", "one"],
        "p2 sees what p1 set"
    );
    let t: u128 = echo_header(&e, "x-prop-request-time")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        t <= now && now - t < 60_000_000_000,
        "request.time {t} vs now {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_cas_counts_every_request_across_vms() {
    let proxy = start(
        &[("shared", "/", "counter")],
        "  counter: { path: sdk.wasm, vms: 3, config: { mode: shared } }\n",
    )
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        let url = proxy.url("/hit");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..25 {
                let e = echo(c.get(&url).send().await.unwrap()).await;
                seen.push(
                    echo_header(&e, "x-shared-hits")
                        .unwrap()
                        .parse::<u64>()
                        .unwrap(),
                );
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<u64>>(),
        "every increment exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ticks_and_logs() {
    let proxy = start(
        &[
            ("m", "/m", "metrics"),
            ("t", "/t", "ticker"),
            ("l", "/l", "logger"),
        ],
        "  metrics: { path: sdk.wasm, config: { mode: metrics } }\n\
         \x20 ticker: { path: sdk.wasm, vms: 1, config: { mode: tick } }\n\
         \x20 logger: { path: sdk.wasm, config: { mode: log, tag: marker42 } }\n",
    )
    .await;
    let c = client();
    for i in 1..=3 {
        let e = echo(c.get(proxy.url("/m")).send().await.unwrap()).await;
        assert_eq!(echo_header(&e, "x-metric-same-id"), Some("true"));
        assert_eq!(
            echo_header(&e, "x-metric-count"),
            Some(i.to_string().as_str())
        );
    }
    assert_eq!(
        proxy
            .metric("sluice_plugin_sdk_requests{plugin=\"metrics\",version=\"stable\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_sdk_gauge{plugin=\"metrics\",version=\"stable\"}")
            .await,
        Some(7.0)
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_sdk_values_count{plugin=\"metrics\",version=\"stable\"}")
            .await,
        Some(3.0)
    );

    // Linear memory of the plugin's VMs, read at the scrape: whole wasm pages.
    let mem = proxy
        .metric("sluice_plugin_memory_bytes{plugin=\"metrics\",version=\"stable\"}")
        .await
        .unwrap();
    assert!(mem >= 65536.0 && mem % 65536.0 == 0.0, "memory gauge {mem}");
    // One VM per worker thread that served the plugin (the first starts at load).
    let info = get_json(proxy.admin_url("/plugins/metrics")).await;
    let started = info["vms"]["started"].as_f64().unwrap();
    assert!((1.0..=2.0).contains(&started), "{info}");
    assert_eq!(
        proxy
            .metric("sluice_plugin_vms{plugin=\"metrics\",version=\"stable\"}")
            .await,
        Some(started),
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = echo(c.get(proxy.url("/t")).send().await.unwrap()).await;
    let ticks: u64 = echo_header(&e, "x-ticks").unwrap().parse().unwrap();
    assert!(ticks >= 5, "a 10 ms tick ran only {ticks} times in 300 ms");

    c.get(proxy.url("/l")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = proxy.logs();
    for level in ["info", "warn", "error", "critical"] {
        assert!(
            logs.contains(&format!("sdk-log {level} marker42")),
            "{level} line missing:\n{logs}"
        );
    }
    assert!(
        !logs.contains("sdk-log debug marker42"),
        "debug is below the log level"
    );
}
