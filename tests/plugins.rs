//! Plugins end to end: the real `sluice` binary running real Proxy-Wasm plugins — built with
//! the public Rust SDK (`proxy-wasm` 0.2.5) and the AssemblyScript SDK — between a real HTTP
//! client and a real upstream on 127.0.0.1.
//!
//! The plugins are built by `make wasm` and `make wasm-as` (both run before the tests in
//! `make test`); see `tests/plugins/README.md` for what each mode does.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

fn plugin_file(rel: &str, how: &str) -> PathBuf {
    let p = target_dir().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: build it with `{how}` first",
        p.display()
    );
    p
}

/// A temp dir holding the test plugins as `sdk.wasm` and `as.wasm`.
fn plugin_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let sdk = plugin_file(
        "wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm",
        "make wasm",
    );
    std::fs::copy(sdk, dir.join("sdk.wasm")).unwrap();
    let asc = plugin_file("wasm-plugins/sluice_as.wasm", "make wasm-as");
    std::fs::copy(asc, dir.join("as.wasm")).unwrap();
    dir
}

/// A config with one upstream `backend`, routes `(name, prefix, plugins)` and plugin entries.
fn config(upstream: std::net::SocketAddr, routes: &[(&str, &str, &str)], plugins: &str) -> String {
    let mut s = format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{upstream}'] }}\n\
         routes:\n"
    );
    for (name, prefix, plugins) in routes {
        s.push_str(&format!(
            "  - {{ name: {name}, match: {{ path_prefix: '{prefix}' }}, upstream: backend, plugins: [{plugins}] }}\n"
        ));
    }
    s.push_str("plugins:\n");
    s.push_str(plugins);
    s
}

async fn start(routes: &[(&str, &str, &str)], plugins: &str) -> Sluice {
    let up = upstream("backend").await;
    let dir = plugin_dir("plugins");
    Sluice::start_in(&config(up, routes, plugins), dir).await
}

fn values<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_in_order_on_requests_and_in_reverse_on_responses() {
    let proxy = start(
        &[("chain", "/", "a, b, c")],
        "  a: { path: sdk.wasm, config: { mode: headers, tag: a } }\n\
         \x20 b: { path: sdk.wasm, config: { mode: headers, tag: b } }\n\
         \x20 c: { path: sdk.wasm, config: { mode: headers, tag: c } }\n",
    )
    .await;
    let r = client()
        .get(proxy.url("/start?x=1"))
        .header("x-in", "hello")
        .header("x-strip", "gone")
        .header("x-rewrite-path", "/rewritten?y=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tags: Vec<_> = r
        .headers()
        .get_all("x-sdk-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, ["c", "b", "a"], "response path runs in reverse");
    let e = echo(r).await;
    assert_eq!(values(&e, "x-sdk-tag"), ["a", "b", "c"]);
    assert_eq!(echo_header(&e, "x-sdk-in"), Some("hello"));
    assert_eq!(echo_header(&e, "x-sdk-method"), Some("GET"));
    assert!(
        e["headers"]["x-strip"].is_null(),
        "removed by the plugin: {e}"
    );
    // `a` rewrote :path; the plugins after it (the last one set x-sdk-path) and the upstream
    // saw the new one.
    assert_eq!(values(&e, "x-sdk-path"), ["/rewritten?y=2"]);
    assert_eq!(e["path"], "/rewritten");
    // The forwarding headers were there before the plugins ran.
    assert_eq!(echo_header(&e, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        proxy
            .metric("sluice_plugin_calls_total{phase=\"request_headers\",plugin=\"a\"}")
            .await,
        Some(1.0)
    );
    // A request without a body gets no body callback (its headers ended the stream).
    assert_eq!(
        proxy
            .metric("sluice_plugin_calls_total{phase=\"request_body\",plugin=\"a\"}")
            .await,
        Some(0.0)
    );
    // What each phase cost in fuel: something for the phase that ran, nothing for the other.
    let fuel = |phase: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(&format!(
                    "sluice_plugin_fuel_consumed_total{{phase=\"{phase}\",plugin=\"a\"}}"
                ))
                .await
        }
    };
    assert!(
        fuel("request_headers").await.is_some_and(|f| f > 100.0),
        "{:?}",
        fuel("request_headers").await
    );
    assert_eq!(fuel("request_body").await, Some(0.0));
    // The same figures per plugin in the admin API, with their means per request.
    let a = get_json(proxy.admin_url("/plugins/a")).await;
    let cost = &a["cost"];
    assert_eq!(cost["requests"], 1, "{a}");
    let headers_fuel = cost["phases"]["request_headers"]["fuel"].as_u64().unwrap();
    assert!(headers_fuel > 100, "{a}");
    assert!(
        cost["phases"]["request_body"].is_null(),
        "never called: {a}"
    );
    assert!(
        cost["fuel_per_request"].as_f64().unwrap() >= headers_fuel as f64,
        "{a}"
    );
    assert!(cost["guest_us_per_request"].as_f64().unwrap() > 0.0, "{a}");
    // And by route: the one request on route `chain`, its request phases only (recorded when
    // the request's state is dropped, just after the response went out).
    let mut a = a;
    for _ in 0..200 {
        if !a["cost"]["routes"]["chain"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        a = get_json(proxy.admin_url("/plugins/a")).await;
    }
    let cost = &a["cost"];
    let route = &cost["routes"]["chain"];
    assert_eq!(route["requests"], 1, "{a}");
    let route_fuel = route["fuel_per_request"].as_f64().unwrap();
    assert!(route_fuel >= headers_fuel as f64, "{a}");
    assert!(
        route_fuel <= cost["fuel_per_request"].as_f64().unwrap(),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_responses_from_request_and_response_phases() {
    let proxy = start(
        &[("deny", "/", "first, deny, last")],
        "  first: { path: sdk.wasm, config: { mode: headers, tag: first } }\n\
         \x20 deny: { path: sdk.wasm, config: { mode: deny, tag: guard } }\n\
         \x20 last: { path: sdk.wasm, config: { mode: headers, tag: last } }\n",
    )
    .await;
    let c = client();
    let r = c
        .get(proxy.url("/x"))
        .header("x-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-denied-by"], "guard");
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(r.text().await.unwrap(), "denied by guard");
    // `last` never ran for the denied request.
    assert_eq!(
        proxy
            .metric("sluice_plugin_calls_total{phase=\"request_headers\",plugin=\"last\"}")
            .await,
        Some(0.0)
    );
    let r = c
        .get(proxy.url("/x"))
        .header("x-deny-response", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "response denied by guard");
    let r = c.get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_holds_the_request_for_its_body_can_still_answer_or_change_headers() {
    let proxy = start(
        &[("body", "/", "inspect")],
        "  inspect: { path: sdk.wasm, config: { mode: inspect-body } }\n",
    )
    .await;
    let c = client();
    let r = c
        .post(proxy.url("/up"))
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["body"], "HELLO BODY");
    assert_eq!(e["body_len"], 10);
    assert_eq!(
        echo_header(&e, "x-sdk-body-len"),
        Some("10"),
        "header set after the body was seen"
    );
    let r = c
        .post(proxy.url("/up"))
        .body("this is forbidden")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "body rejected");
    // Bodies a plugin holds before forwarding are limited to what can be replayed.
    let r = c
        .post(proxy.url("/up"))
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A request without a body goes straight on.
    let r = c.get(proxy.url("/up")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_buffered_or_streamed_and_the_buffer_limit() {
    let proxy = start(
        &[
            ("wrap", "/wrap", "wrap"),
            ("upper", "/upper", "upper"),
            ("small", "/small", "small"),
            ("keep", "/keep", "keep"),
        ],
        "  wrap: { path: sdk.wasm, config: { mode: resp-body, tag: w } }\n\
         \x20 upper: { path: sdk.wasm, config: { mode: resp-upper } }\n\
         \x20 small: { path: sdk.wasm, config: { mode: resp-body }, limits: { max_body_bytes: 1000 } }\n\
         \x20 keep: { path: sdk.wasm, config: { mode: resp-body-keep-length, tag: k } }\n",
    )
    .await;
    let c = client();
    let r = c.get(proxy.url("/wrap?bytes=16384")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "removed by the plugin"
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..2], b"w|");
    assert_eq!(body.len(), 2 + 16384, "the whole body, rewritten once");
    // The echo answer has a content-length; upper-casing keeps the length, so it stays.
    let r = c.get(proxy.url("/upper/echo")).send().await.unwrap();
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    assert!(body.starts_with(b"{") && !body.iter().any(u8::is_ascii_lowercase));
    let r = c.get(proxy.url("/upper?bytes=20000")).send().await.unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 20000);
    assert!(
        body.iter().all(|b| !b.is_ascii_lowercase()),
        "every chunk uppercased"
    );
    // Past max_body_bytes the response cannot be delivered whole: it is cut.
    let r = c.get(proxy.url("/small?bytes=50000")).send().await;
    let ok = match r {
        Ok(r) => r
            .bytes()
            .await
            .map(|b| b.len() == 50000 + 4)
            .unwrap_or(false),
        Err(_) => false,
    };
    assert!(!ok, "an over-limit response must not arrive complete");

    // A plugin that changes the body's length but keeps content-length: the response never
    // goes out mismatched; it fails (502 while the header is still held back), counted as the
    // plugin's ABI error.
    let r = c.get(proxy.url("/keep/echo")).send().await;
    let mismatched = match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| b.starts_with(b"k|")),
        Ok(r) => {
            assert_eq!(r.status(), 502);
            false
        }
        Err(_) => false,
    };
    assert!(
        !mismatched,
        "a body that does not match its content-length went out"
    );
    proxy
        .wait_metric(
            "sluice_plugin_errors_total{kind=\"abi\",phase=\"response_body\",plugin=\"keep\"}",
            1.0,
        )
        .await;
    assert!(
        proxy.logs().contains("left content-length"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_bodies_go_through_plugins_chunk_by_chunk() {
    let proxy = start(
        &[("up", "/", "upper")],
        "  upper: { path: sdk.wasm, config: { mode: req-upper } }\n",
    )
    .await;
    // Larger than what is ever held before forwarding: it streams.
    let body: Vec<u8> = (0..300_000u32).map(|i| b"abcxyz"[i as usize % 6]).collect();
    let r = client()
        .post(proxy.url("/stream"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["body_len"], 300_000);
    let want =
        sluice::hash::fnv1a64_update(sluice::hash::FNV1A64_START, &body.to_ascii_uppercase());
    assert_eq!(e["body_fnv1a64"], format!("{want:016x}"));
    assert_eq!(
        echo_header(&e, "content-length"),
        Some("300000"),
        "same length: content-length kept, no chunking"
    );
    let calls = proxy
        .metric("sluice_plugin_calls_total{phase=\"request_body\",plugin=\"upper\"}")
        .await
        .unwrap();
    assert!(calls >= 2.0, "one call per chunk, got {calls}");
}

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
            .metric("sluice_plugin_refused_writes_total{plugin=\"plain\"}")
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
            .metric("sluice_plugin_sdk_requests{plugin=\"metrics\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_sdk_gauge{plugin=\"metrics\"}")
            .await,
        Some(7.0)
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_sdk_values_count{plugin=\"metrics\"}")
            .await,
        Some(3.0)
    );

    // Linear memory of the plugin's VMs, read at the scrape: whole wasm pages.
    let mem = proxy
        .metric("sluice_plugin_memory_bytes{plugin=\"metrics\"}")
        .await
        .unwrap();
    assert!(mem >= 65536.0 && mem % 65536.0 == 0.0, "memory gauge {mem}");
    // One VM per worker thread that served the plugin (the first starts at load).
    let info = get_json(proxy.admin_url("/plugins/metrics")).await;
    let started = info["vms"]["started"].as_f64().unwrap();
    assert!((1.0..=2.0).contains(&started), "{info}");
    assert_eq!(
        proxy.metric("sluice_plugin_vms{plugin=\"metrics\"}").await,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callouts_pause_the_request_until_the_answer() {
    let proxy = start(
        &[("c", "/c", "callout"), ("nc", "/nc", "notallowed")],
        "  callout: { path: sdk.wasm, config: { mode: callout, upstream: backend }, allowed_upstreams: [backend] }\n\
         \x20 notallowed: { path: sdk.wasm, config: { mode: callout, upstream: backend } }\n",
    )
    .await;
    let c = client();
    let e = echo(c.get(proxy.url("/c")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-callout-status"), Some("200"));
    let len: usize = echo_header(&e, "x-callout-body-len")
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 10, "the callout's body was delivered");
    let r = c
        .get(proxy.url("/c"))
        .header("x-callout-want", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-callout-status"], "500");
    let e = echo(c.get(proxy.url("/nc")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-callout-error"), Some("BadArgument"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policies_answer_or_skip_and_the_vm_is_replaced() {
    let proxy = start(
        &[
            ("closed", "/closed", "panics"),
            ("open", "/open", "panics_open, after"),
            ("loop", "/loop", "spin"),
            ("grow", "/grow", "grow"),
            ("ok", "/ok", "after"),
        ],
        "  panics: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: request_headers } }\n\
         \x20 panics_open: { path: sdk.wasm, vms: 1, on_error: fail_open, config: { mode: panic, phase: response_headers } }\n\
         \x20 after: { path: sdk.wasm, config: { mode: headers, tag: after } }\n\
         \x20 spin: { path: sdk.wasm, vms: 1, config: { mode: loop }, limits: { fuel: 10000000000, timeout_ms: 20 } }\n\
         \x20 grow: { path: sdk.wasm, vms: 1, config: { mode: grow }, limits: { memory_mb: 8 } }\n",
    )
    .await;
    let c = client();
    let r = c.get(proxy.url("/closed")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert_eq!(body, "503 Service Unavailable: plugin \"panics\" failed\n");
    let r = c.get(proxy.url("/open")).send().await.unwrap();
    assert_eq!(r.status(), 200, "fail_open skips the plugin");
    assert_eq!(r.headers()["x-sdk-tag"], "after");
    let r = c.get(proxy.url("/loop")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = c.get(proxy.url("/grow")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let m = |kind: &str, phase: &str, plugin: &str| {
        format!(
            "sluice_plugin_errors_total{{kind=\"{kind}\",phase=\"{phase}\",plugin=\"{plugin}\"}}"
        )
    };
    proxy
        .wait_metric(&m("trap", "request_headers", "panics"), 1.0)
        .await;
    proxy
        .wait_metric(&m("trap", "response_headers", "panics_open"), 1.0)
        .await;
    proxy
        .wait_metric(&m("timeout", "request_headers", "spin"), 1.0)
        .await;
    proxy
        .wait_metric(&m("memory", "request_headers", "grow"), 1.0)
        .await;
    // The broken VM is replaced: the next request fails again by policy (the plugin still
    // panics), which needs a fresh VM.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy
        .wait_metric("sluice_plugin_vms{plugin=\"panics\"}", 1.0)
        .await;
    let r = c.get(proxy.url("/closed")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    proxy
        .wait_metric(&m("trap", "request_headers", "panics"), 2.0)
        .await;
    // Healthy routes never noticed.
    let r = c.get(proxy.url("/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    proxy
        .wait_metric("sluice_plugin_contexts{plugin=\"after\"}", 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pointers_get_statuses_not_crashes() {
    let proxy = start(
        &[("bad", "/", "bad")],
        "  bad: { path: sdk.wasm, config: { mode: badptr } }\n",
    )
    .await;
    let e = echo(client().get(proxy.url("/x")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-badptr"), Some("6,6,6,6,6,6,6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyscript_sdk_plugin_runs_unmodified() {
    let proxy = start(
        &[("as", "/", "asc")],
        "  asc: { path: as.wasm, root_id: sluice_as, config: hello-as }\n",
    )
    .await;
    let c = client();
    let r = c.get(proxy.url("/as/path")).send().await.unwrap();
    assert_eq!(r.headers()["x-as-plugin"], "sluice-as");
    let e = echo(r).await;
    assert_eq!(echo_header(&e, "x-as-config"), Some("hello-as"));
    assert_eq!(echo_header(&e, "x-as-path"), Some("/as/path"));
    let r = c
        .get(proxy.url("/as"))
        .header("x-as-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-as-denied"], "yes");
    assert_eq!(r.text().await.unwrap(), "denied by assemblyscript");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        proxy.logs().contains("as-plugin saw /as/path"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_loads_plugins_and_names_the_one_that_fails() {
    let up = upstream("backend").await;
    let dir = plugin_dir("check");
    let cases = [
        ("  p: { path: sdk.wasm, config: { mode: configure-false } }\n", "proxy_on_configure returned false"),
        ("  p: { path: sdk.wasm, vm_config: fail, config: { mode: headers } }\n", "proxy_on_vm_start returned false"),
        ("  p: { path: sdk.wasm, config: { mode: panic, phase: configure } }\n", "proxy_on_configure failed"),
        ("  p: { path: sdk.wasm, sha256: '0000000000000000000000000000000000000000000000000000000000000000', config: { mode: headers } }\n", "sha256 of"),
        ("  p: { path: as.wasm, root_id: wrong, config: x }\n", "plugin \"p\""),
        ("  p: { path: sluice.yaml, config: { mode: headers } }\n", "not a valid wasm module"),
    ];
    for (plugin, want) in cases {
        let (text, _, _) = with_ports(&config(up, &[("r", "/", "p")], plugin));
        let file = dir.join("sluice.yaml");
        std::fs::write(&file, text).unwrap();
        // `check` and `run` both refuse it, naming the plugin and the cause.
        for command in ["check", "run"] {
            let out = std::process::Command::new(sluice_bin())
                .args([command, "--config"])
                .arg(&file)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command}: {plugin} passed");
            assert!(stderr.contains("plugin \"p\""), "{command}: {stderr}");
            assert!(
                stderr.contains(want),
                "{command}: want {want:?} in {stderr}"
            );
        }
    }
    let (text, _, _) = with_ports(&config(
        up,
        &[("r", "/", "p")],
        "  p: { path: sdk.wasm, config: { mode: headers } }\n",
    ));
    std::fs::write(dir.join("sluice.yaml"), text).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(dir.join("sluice.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 plugin)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_end_at_the_pause_timeout_or_as_soon_as_the_client_leaves() {
    let proxy = start(
        &[
            ("held", "/held", "held"),
            ("gone", "/gone", "forever, gone"),
            ("slow", "/slow", "slow"),
        ],
        "  held: { path: sdk.wasm, config: { mode: pause-forever }, limits: { pause_timeout_ms: 300 } }\n\
         \x20 forever: { path: sdk.wasm, config: { mode: pause-forever }, limits: { pause_timeout_ms: 600000 } }\n\
         \x20 gone: { path: sdk.wasm, config: { mode: log, tag: gone } }\n\
         \x20 slow: { path: sdk.wasm, config: { mode: log, tag: slow } }\n",
    )
    .await;
    let r = client().get(proxy.url("/held")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.text().await.unwrap(),
        "504 Gateway Timeout: plugin \"held\" did not resume the request within 300 ms\n"
    );
    proxy
        .wait_metric("sluice_plugin_contexts{plugin=\"held\"}", 0.0)
        .await;

    // The client gives up on a request a plugin holds for 10 minutes, and on one the
    // upstream is slow to answer: both requests end at once, and every plugin of their
    // chains gets on_log, on_done and on_delete.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(impatient.get(proxy.url("/gone")).send().await.is_err());
    assert!(impatient
        .get(proxy.url("/slow?delay_ms=4000"))
        .send()
        .await
        .is_err());
    for plugin in ["forever", "gone", "slow"] {
        proxy
            .wait_metric(
                &format!("sluice_plugin_contexts{{plugin=\"{plugin}\"}}"),
                0.0,
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = proxy.logs();
    for tag in ["gone", "slow"] {
        for what in ["on_log", "on_done", "on_delete"] {
            assert!(
                logs.contains(&format!("sdk-log {what} {tag}")),
                "{what} of {tag} missing:\n{logs}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_every_phase_follow_the_policy() {
    let proxy = start(
        &[
            ("fuel", "/fuel", "burn"),
            ("reqbody", "/reqbody", "reqbody"),
            ("respbody", "/respbody", "respbody"),
            ("respbody_open", "/open-respbody", "respbody_open"),
            ("log", "/log", "inlog"),
        ],
        "  burn: { path: sdk.wasm, vms: 1, config: { mode: loop }, limits: { fuel: 1000000, timeout_ms: 60000 } }\n\
         \x20 reqbody: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: request_body } }\n\
         \x20 respbody: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: response_body } }\n\
         \x20 respbody_open: { path: sdk.wasm, vms: 1, on_error: fail_open, config: { mode: panic, phase: response_body } }\n\
         \x20 inlog: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: log } }\n",
    )
    .await;
    let c = client();
    let m = |kind: &str, phase: &str, plugin: &str| {
        format!(
            "sluice_plugin_errors_total{{kind=\"{kind}\",phase=\"{phase}\",plugin=\"{plugin}\"}}"
        )
    };

    // Out of fuel long before the 60 s deadline.
    let r = c.get(proxy.url("/fuel")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    proxy
        .wait_metric(&m("fuel", "request_headers", "burn"), 1.0)
        .await;

    // A streamed request body: the failure answers before the upstream's response.
    let r = c
        .post(proxy.url("/reqbody"))
        .body(vec![b'x'; 200_000])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 503);
    }
    proxy
        .wait_metric(&m("trap", "request_body", "reqbody"), 1.0)
        .await;

    // The response body: fail_closed never delivers the body the plugin failed on...
    let r = c.get(proxy.url("/respbody/echo")).send().await;
    let delivered = match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| b.starts_with(b"{")),
        Ok(r) => {
            assert_eq!(r.status(), 503);
            false
        }
        Err(_) => false,
    };
    assert!(!delivered, "fail_closed delivered the body");
    proxy
        .wait_metric(&m("trap", "response_body", "respbody"), 1.0)
        .await;
    // ...fail_open delivers it untouched.
    let r = c
        .get(proxy.url("/open-respbody/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["path"], "/open-respbody/echo");
    proxy
        .wait_metric(&m("trap", "response_body", "respbody_open"), 1.0)
        .await;

    // on_log runs after the response went out: the response stands, the failure is counted.
    let r = c.get(proxy.url("/log")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    echo(r).await;
    proxy.wait_metric(&m("trap", "log", "inlog"), 1.0).await;
    // Each failed VM is replaced.
    for plugin in ["burn", "reqbody", "respbody", "inlog"] {
        proxy
            .wait_metric(&format!("sluice_plugin_vms{{plugin=\"{plugin}\"}}"), 1.0)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_plugin_reads_one_header_and_adds_one() {
    let proxy = start(
        &[("copy", "/", "copy")],
        "  copy: { path: sdk.wasm, config: { mode: copy-header } }\n",
    )
    .await;
    let c = client();
    let e = echo(
        c.get(proxy.url("/x"))
            .header("x-in", "v1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo_header(&e, "x-sdk-in"), Some("v1"));
    let e = echo(c.get(proxy.url("/x")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-sdk-in"), Some("none"));
}

/// How a [`counting_server`] treats a connection after its first answer.
#[derive(Clone, Copy, PartialEq)]
enum KeepAlive {
    /// Serves every request on it.
    Yes,
    /// Reads the next request and closes without answering (as a server that timed the
    /// connection out at that moment would).
    ClosesOnTheNext,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every GET `200` with body `ok` and counts the
/// connections it accepts.
async fn counting_server(
    keep: KeepAlive,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if answered > 0 && keep == KeepAlive::ClosesOnTheNext {
                            return;
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(reply).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Starts sluice with route `/c` through a `callout` plugin calling upstream `counted` at
/// `addr`.
async fn start_calling(addr: std::net::SocketAddr, tag: &str) -> Sluice {
    let up = upstream("backend").await;
    let cfg = config(
        up,
        &[("c", "/c", "callout")],
        "  callout: { path: sdk.wasm, config: { mode: callout, upstream: counted }, allowed_upstreams: [counted] }\n",
    )
    .replace(
        "routes:\n",
        &format!("  counted: {{ endpoints: ['{addr}'] }}\nroutes:\n"),
    );
    Sluice::start_in(&cfg, plugin_dir(tag)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_reuse_kept_alive_connections() {
    let (addr, accepted) = counting_server(KeepAlive::Yes).await;
    let proxy = start_calling(addr, "callout-keepalive").await;
    let c = client();
    for i in 0..8 {
        let e = echo(c.get(proxy.url(&format!("/c/{i}"))).send().await.unwrap()).await;
        assert_eq!(
            echo_header(&e, "x-callout-status"),
            Some("200"),
            "request {i}"
        );
        assert_eq!(echo_header(&e, "x-callout-body-len"), Some("2"));
    }
    // Requests on the two worker threads each may open one before the other's is back.
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&n),
        "8 sequential callouts opened {n} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_on_a_connection_the_server_closed_is_sent_again() {
    let (addr, accepted) = counting_server(KeepAlive::ClosesOnTheNext).await;
    let proxy = start_calling(addr, "callout-closed").await;
    let c = client();
    for i in 0..5 {
        let e = echo(c.get(proxy.url(&format!("/c/{i}"))).send().await.unwrap()).await;
        assert_eq!(
            echo_header(&e, "x-callout-status"),
            Some("200"),
            "request {i}: a GET refused by a closing connection goes again on a new one"
        );
    }
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 5, "one new connection per callout after the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_reach_tls_upstreams_with_their_verification() {
    // A TLS server: a sluice with a TLS listener (self-signed for `localhost`) in front of an
    // echo upstream.
    let front_dir = temp_dir("callout-tls-front");
    let pem = write_self_signed(&front_dir, "localhost");
    let front = Sluice::start_in(&tls_listener_config(upstream("tls-echo").await), front_dir).await;
    let dir = plugin_dir("callout-tls");
    std::fs::write(dir.join("ca.pem"), &pem).unwrap();
    let at = front.addr;
    let cases = [
        // (route and plugin, tls settings, what the callout gets)
        ("trusted", "{ sni: localhost, ca: ca.pem }", "200"),
        ("unverified", "{ verify: false }", "200"),
        ("untrusted", "{ sni: localhost }", "failed"),
        ("wrongname", "{ sni: other.test, ca: ca.pem }", "failed"),
    ];
    let routes: Vec<(String, String, String)> = cases
        .iter()
        .map(|(n, _, _)| (n.to_string(), format!("/{n}"), n.to_string()))
        .collect();
    let routes: Vec<(&str, &str, &str)> = routes
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    let mut plugins = String::new();
    let mut upstreams = String::new();
    for (name, tls, _) in &cases {
        plugins.push_str(&format!(
            "  {name}: {{ path: sdk.wasm, config: {{ mode: callout, upstream: up_{name} }}, allowed_upstreams: [up_{name}] }}\n"
        ));
        upstreams.push_str(&format!(
            "  up_{name}: {{ endpoints: ['{at}'], tls: {tls} }}\n"
        ));
    }
    let cfg = config(upstream("backend").await, &routes, &plugins)
        .replace("routes:\n", &format!("{upstreams}routes:\n"));
    let proxy = Sluice::start_in(&cfg, dir).await;
    let c = client();
    for (name, _, want) in &cases {
        let r = c.get(proxy.url(&format!("/{name}"))).send().await.unwrap();
        if *want == "200" {
            let e = echo(r).await;
            assert_eq!(echo_header(&e, "x-callout-status"), Some("200"), "{name}");
        } else {
            assert_eq!(r.status(), 503, "{name}");
            assert_eq!(r.headers()["x-callout-status"], "failed", "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_ca_file_is_named() {
    let dir = plugin_dir("callout-bad-ca");
    std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
    let cfg = config(upstream("backend").await, &[], "")
        .replace(
            "routes:\n",
            "  idp: { endpoints: ['127.0.0.1:1'], tls: { ca: ca.pem } }\n  idq: { endpoints: ['127.0.0.1:1'], tls: { ca: missing.pem } }\nroutes:\n",
        )
        .replace("plugins:\n", "");
    let (text, _, _) = with_ports(&cfg);
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("upstreams.idp.tls.ca") && err.contains("holds no PEM certificate"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.idq.tls.ca") && err.contains("cannot read"),
        "{err}"
    );
}
