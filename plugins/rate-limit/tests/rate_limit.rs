//! The rate-limit plugin's .wasm in the real host, through the test kit.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_testkit::{build_plugin, json, Kit, Options, Outcome, TestRequest, TestResponse};

fn kit_with(config: serde_json::Value, expose: &[&str]) -> Kit {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds");
    Kit::load(
        &wasm,
        Options::default().config_json(&config).expose(expose),
    )
    .expect("the plugin loads")
}

fn kit(config: serde_json::Value) -> Kit {
    kit_with(config, &["client_address"])
}

fn get(kit: &Kit, req: TestRequest) -> Outcome {
    kit.run(&req, &TestResponse::ok("fine"))
}

#[test]
fn admits_exactly_the_limit_then_answers_429_with_headers() {
    let kit = kit(json!({ "requests": 3, "period_seconds": 3600 }));
    for left in ["2", "1", "0"] {
        let out = get(&kit, TestRequest::get("/"));
        assert_eq!(out.response.status, 200);
        assert_eq!(out.response.header("ratelimit-limit"), Some("3"));
        assert_eq!(out.response.header("ratelimit-remaining"), Some(left));
        assert_eq!(out.response.header("ratelimit-policy"), Some("3;w=3600"));
    }
    let out = get(&kit, TestRequest::get("/"));
    assert_eq!(out.response.status, 429);
    assert!(out.local && out.forwarded.is_none());
    // One token every 1200 s; the bucket is full again in 3600 s.
    assert_eq!(out.response.header("retry-after"), Some("1200"));
    assert_eq!(out.response.header("ratelimit-remaining"), Some("0"));
    assert_eq!(out.response.header("ratelimit-reset"), Some("3600"));
    assert_eq!(
        out.response.text(),
        "429 Too Many Requests: try again in 1200 s\n"
    );
    assert_eq!(kit.metric("ratelimit_allowed"), Some(3));
    assert_eq!(kit.metric("ratelimit_limited"), Some(1));
}

#[test]
fn keys_separate_clients_and_header_values() {
    let kit = kit(json!({
        "key": ["client_address", "header:x-api-key"],
        "requests": 1, "period_seconds": 3600
    }));
    let from = |ip: [u8; 4], key: &str| {
        TestRequest::get("/")
            .client(SocketAddr::from((ip, 4000)))
            .header("x-api-key", key)
    };
    assert_eq!(get(&kit, from([10, 0, 0, 1], "a")).response.status, 200);
    assert_eq!(get(&kit, from([10, 0, 0, 1], "a")).response.status, 429);
    assert_eq!(
        get(&kit, from([10, 0, 0, 2], "a")).response.status,
        200,
        "other client"
    );
    assert_eq!(
        get(&kit, from([10, 0, 0, 1], "b")).response.status,
        200,
        "other key"
    );
    assert!(
        kit.shared("rl|default|10.0.0.1|a").is_some(),
        "the bucket is in shared data"
    );
}

#[test]
fn without_the_grant_every_client_shares_one_bucket_and_it_says_so() {
    let kit = kit_with(json!({ "requests": 1, "period_seconds": 3600 }), &[]);
    let a = TestRequest::get("/").client(SocketAddr::from(([10, 0, 0, 1], 1)));
    let b = TestRequest::get("/").client(SocketAddr::from(([10, 0, 0, 2], 1)));
    assert_eq!(get(&kit, a).response.status, 200);
    assert_eq!(get(&kit, b).response.status, 429);
    assert!(kit.logged("the client address is hidden from this plugin"));
}

#[test]
fn classes_have_their_own_limits() {
    let kit = kit(json!({
        "requests": 1, "period_seconds": 3600,
        "classes": [
            { "name": "gold", "header": "x-tier", "value": "gold", "requests": 3, "period_seconds": 3600 },
            { "name": "health", "path_prefix": "/health", "requests": 1000, "period_seconds": 1 }
        ]
    }));
    let gold = || TestRequest::get("/").header("x-tier", "gold");
    for _ in 0..3 {
        assert_eq!(get(&kit, gold()).response.status, 200);
    }
    assert_eq!(get(&kit, gold()).response.status, 429);
    assert_eq!(
        get(&kit, TestRequest::get("/")).response.status,
        200,
        "default class"
    );
    assert_eq!(get(&kit, TestRequest::get("/")).response.status, 429);
    let silver = TestRequest::get("/").header("x-tier", "silver");
    assert_eq!(
        get(&kit, silver).response.status,
        429,
        "not gold: the default class"
    );
    for _ in 0..20 {
        assert_eq!(get(&kit, TestRequest::get("/health")).response.status, 200);
    }
}

#[test]
fn shadow_mode_only_counts() {
    let kit = kit(json!({ "requests": 1, "period_seconds": 3600, "shadow": true }));
    for _ in 0..4 {
        let out = get(&kit, TestRequest::get("/"));
        assert_eq!(out.response.status, 200);
        assert_eq!(out.response.header("ratelimit-limit"), None);
    }
    assert_eq!(kit.metric("ratelimit_allowed"), Some(1));
    assert_eq!(kit.metric("ratelimit_limited"), Some(3));
    assert!(kit.logged("rate-limit (shadow): would refuse"));
}

#[test]
fn headers_can_be_left_out() {
    let kit = kit(json!({ "requests": 1, "period_seconds": 60, "headers": false }));
    let out = get(&kit, TestRequest::get("/"));
    assert_eq!(out.response.header("ratelimit-limit"), None);
    let out = get(&kit, TestRequest::get("/"));
    assert_eq!(out.response.status, 429);
    assert_eq!(out.response.header("ratelimit-limit"), None);
    assert_eq!(out.response.header("retry-after"), Some("60"));
}

#[test]
fn tokens_come_back_with_time() {
    let kit = kit(json!({ "requests": 1, "period_seconds": 1 }));
    assert_eq!(get(&kit, TestRequest::get("/")).response.status, 200);
    assert_eq!(get(&kit, TestRequest::get("/")).response.status, 429);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&kit, TestRequest::get("/")).response.status, 200);
}

#[test]
fn bad_configurations_are_refused() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    for bad in [
        json!({ "requests": 10 }),
        json!({ "requests": 0, "period_seconds": 1 }),
        json!({ "requests": 1, "period_seconds": 1, "key": ["ip"] }),
        json!({ "requests": 1, "period_seconds": 1, "classes": [{ "name": "x", "requests": 1, "period_seconds": 1 }] }),
        json!({ "requests": 1, "period_seconds": 1, "limit": 3 }),
    ] {
        assert!(
            Kit::load(&wasm, Options::default().config_json(&bad)).is_err(),
            "accepted {bad}"
        );
    }
}

/// The plugin needs nothing Sluice-specific: as a plain ABI v0.2.1 host runs it (nothing
/// hidden, no Sluice-only properties), it limits per client and per route key alike.
#[test]
fn runs_on_a_plain_proxy_wasm_host() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let kit = Kit::load(
        &wasm,
        Options::default()
            .config_json(&json!({ "key": ["client_address", "route"], "requests": 1, "period_seconds": 3600 }))
            .portable(),
    )
    .unwrap();
    let from = |ip: [u8; 4]| TestRequest::get("/").client(SocketAddr::from((ip, 9)));
    assert_eq!(get(&kit, from([10, 0, 0, 1])).response.status, 200);
    assert_eq!(get(&kit, from([10, 0, 0, 1])).response.status, 429);
    assert_eq!(get(&kit, from([10, 0, 0, 2])).response.status, 200);
    assert!(!kit.logged("hidden"), "the client address was visible");
    assert!(
        kit.shared("rl|default|10.0.0.1|").is_some(),
        "no route name on a plain host"
    );
}
