//! Every `sluice-sdk` API path, through a plugin built with it, in the real host (the test
//! kit). The plugin reports what it saw in headers; `src/lib.rs` says what each mode does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use sluice_testkit::{build_plugin, json, Kit, Options, TestRequest, TestResponse};

fn kit_with(options: Options) -> Kit {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds");
    Kit::load(&wasm, options).expect("the plugin loads")
}

fn kit(mode: &str) -> Kit {
    kit_with(Options::default().config_json(&json!({ "mode": mode })))
}

#[test]
fn request_and_response_headers() {
    let kit = kit("headers");
    let out = kit.run(
        &TestRequest::get("/p/q?k=v%20w&z=1")
            .header("x-in", "hello")
            .header("x-bin", "é!")
            .header("x-drop", "bye")
            .header("x-multi", "orig")
            .header("x-new-path", "/rewritten?a=b"),
        &TestResponse::ok("body")
            .header("x-make-201", "1")
            .header("x-resp-multi", "a")
            .header("x-resp-drop", "1"),
    );
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.path, "/rewritten?a=b");
    assert_eq!(
        up.header("x-pseudo"),
        Some("GET /p/q?k=v%20w&z=1 /p/q test.local http eos=true")
    );
    assert_eq!(up.header("x-query-k"), Some("v w"));
    assert_eq!(up.header("x-in-copy"), Some("hello"));
    assert_eq!(up.header("x-bin-len"), Some("3"));
    assert_eq!(up.header_all("x-multi"), ["orig", "added"]);
    assert_eq!(up.header("x-drop"), None);
    let names = up.header("x-names").unwrap();
    for n in [
        ":method",
        ":path",
        ":authority",
        ":scheme",
        "x-in",
        "x-drop",
        "x-forwarded-proto",
    ] {
        assert!(names.split(',').any(|x| x == n), "{n} not in {names}");
    }
    let r = &out.response;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-upstream-status"), Some("200"));
    assert_eq!(r.header_all("x-resp-multi"), ["a", "b"]);
    assert_eq!(r.header("x-resp-first"), Some("a"));
    assert_eq!(r.header("x-resp-drop"), None);
    assert_eq!(r.header("x-resp-eos"), Some("false"));
    assert_eq!(r.header("x-body-len-in-headers"), Some("0"));
    let count: usize = r.header("x-resp-count").unwrap().parse().unwrap();
    assert!(count >= 4, "{count}");
}

#[test]
fn bodies_buffered_and_rewritten_in_both_directions() {
    let kit = kit("body");
    let out = kit.run(
        &TestRequest::post("/b", "make me loud").in_chunks(3),
        &TestResponse::ok("abcdefgh").chunked(3),
    );
    let up = out.forwarded.unwrap();
    assert_eq!(up.text(), "MAKE ME LOUD");
    assert_eq!(up.header("content-length"), None, "removed by the plugin");
    assert_eq!(out.response.text(), "abcdefgh!8");
    assert_eq!(out.response.header("x-request-body-len"), Some("12"));
    assert!(!out.cut);
}

#[test]
fn local_replies_from_both_phases() {
    let kit = kit("reply");
    let out = kit.run(
        &TestRequest::get("/").header("x-reply-now", "1"),
        &TestResponse::ok("never"),
    );
    assert!(out.local && out.forwarded.is_none());
    assert_eq!(out.response.status, 418);
    assert_eq!(out.response.header_all("x-teapot"), ["yes", "twice"]);
    assert_eq!(out.response.text(), "short and stout");
    let out = kit.run(
        &TestRequest::get("/"),
        &TestResponse::ok("upstream").header("x-replace", "1"),
    );
    assert!(out.local && out.forwarded.is_some());
    assert_eq!(
        (out.response.status, out.response.text().as_str()),
        (503, "replaced")
    );
}

#[test]
fn errors_fail_closed_with_the_plugins_reply() {
    let kit = kit("error");
    let out = kit.run(
        &TestRequest::get("/").header("x-fail", "1"),
        &TestResponse::ok(""),
    );
    assert_eq!(out.response.status, 599);
    assert_eq!(out.response.text(), "custom: asked to fail");
    assert!(kit.logged("on_request_headers: asked to fail"));
    // A status the host answers (a hidden header) comes back as an error, never a panic.
    let out = kit.run(&TestRequest::get("/"), &TestResponse::ok(""));
    assert_eq!(out.response.status, 599);
    assert_eq!(
        out.response.text(),
        "custom: set a header: the host answered BadArgument"
    );
    assert_eq!(kit.failures(), 0, "no trap: the VM is fine");
}

/// A one-connection HTTP server answering `status` (from the request's query) with a body.
fn callee() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let status = req
                .split("status=")
                .nth(1)
                .and_then(|r| r.split([' ', '&']).next())
                .unwrap_or("200")
                .to_string();
            let from = if req.to_ascii_lowercase().contains("x-from: sdk") {
                "sdk"
            } else {
                "?"
            };
            let body = "callee body";
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-upstream: {from}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn http_calls_run_their_closure_on_the_response() {
    let addr = callee();
    let mut o = Options::default().config_json(&json!({ "mode": "callout", "upstream": "callee" }));
    o.upstreams = vec![("callee".into(), addr)];
    let kit = kit_with(o);
    let out = kit.run(
        &TestRequest::get("/").header("x-want", "200"),
        &TestResponse::ok(""),
    );
    let up = out.forwarded.expect("resumed and forwarded");
    assert_eq!(up.header("x-call-status"), Some("200"));
    assert_eq!(
        up.header("x-call-upstream"),
        Some("sdk"),
        "the call's headers arrived"
    );
    assert_eq!(up.header("x-call-body-len"), Some("11"));
    let out = kit.run(
        &TestRequest::get("/").header("x-want", "500"),
        &TestResponse::ok(""),
    );
    assert_eq!(
        (out.response.status, out.response.text().as_str()),
        (403, "callee said 500")
    );
    // An upstream the plugin may not call: the SDK returns the host's refusal as an error.
    let kit = kit_with(
        Options::default().config_json(&json!({ "mode": "callout", "upstream": "other" })),
    );
    let out = kit.run(&TestRequest::get("/"), &TestResponse::ok(""));
    assert_eq!(
        (out.response.status, out.response.text().as_str()),
        (
            599,
            "custom: send an HTTP call: the host answered BadArgument"
        )
    );
    // A call that fails reaches the closure as CallError::Failed.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut o = Options::default().config_json(&json!({ "mode": "callout", "upstream": "dead" }));
    o.upstreams = vec![("dead".into(), dead)];
    let kit = kit_with(o);
    let out = kit.run(&TestRequest::get("/"), &TestResponse::ok(""));
    assert_eq!(
        (out.response.status, out.response.text().as_str()),
        (502, "call failed")
    );
}

#[test]
fn calls_from_the_root_context_run_their_closure() {
    let addr = callee();
    let mut o =
        Options::default().config_json(&json!({ "mode": "root-call", "upstream": "callee" }));
    o.upstreams = vec![("callee".into(), addr)];
    let kit = kit_with(o);
    let mut seen = None;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        let up = kit
            .run(&TestRequest::get("/"), &TestResponse::ok(""))
            .forwarded
            .unwrap();
        seen = up.header("x-root-call").map(str::to_string);
        if seen.as_deref() != Some("none") {
            break;
        }
    }
    assert_eq!(seen.as_deref(), Some("200 sdk 11"));
}

#[test]
fn shared_data_updates_gets_and_sets() {
    let kit = kit("shared");
    for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
        let out = kit.run(&TestRequest::get(path), &TestResponse::ok(""));
        let up = out.forwarded.unwrap();
        assert_eq!(up.header("x-hits"), Some((i + 1).to_string().as_str()));
        assert_eq!(up.header("x-last"), Some("set-directly"));
        assert_eq!(up.header("x-absent"), Some("None"));
        assert_eq!(up.header("x-cas"), Some("fresh=true stale=false"));
    }
    let out = kit.run(&TestRequest::get("/d"), &TestResponse::ok(""));
    assert_eq!(
        out.forwarded.unwrap().header("x-paths"),
        Some("/a,/b,/c,/d")
    );
    assert_eq!(kit.shared("hits"), Some(4u64.to_le_bytes().to_vec()));
    assert_eq!(
        kit.shared("paths").as_deref(),
        Some(&br#"["/a","/b","/c","/d"]"#[..])
    );
}

#[test]
fn metrics_count() {
    let kit = kit("metrics");
    for n in [3, 6] {
        let out = kit.run(&TestRequest::get("/"), &TestResponse::ok(""));
        let up = out.forwarded.unwrap();
        assert_eq!(up.header("x-counter"), Some(n.to_string().as_str()));
        assert_eq!(up.header("x-gauge"), Some("7"));
    }
    assert_eq!(kit.metric("api_requests"), Some(6));
    assert_eq!(kit.metric("api_gauge"), Some(7));
    assert_eq!(kit.metric("api_sizes"), Some(2), "two values recorded");
}

#[test]
fn properties_with_and_without_grants() {
    let kit = kit("properties");
    let req = TestRequest::get("/")
        .header("x-request-id", "rid-42")
        .client(SocketAddr::from(([10, 1, 2, 3], 5555)));
    let up = kit.run(&req, &TestResponse::ok("")).forwarded.unwrap();
    assert_eq!(up.header("x-id"), Some("rid-42"));
    assert_eq!(up.header("x-route"), Some("test"));
    assert!(up
        .header("x-plugin")
        .unwrap()
        .starts_with("sluice_test_plugin_sdk_sluice#"));
    assert_eq!(
        up.header("x-client"),
        Some("none"),
        "hidden without the grant"
    );
    assert_eq!(up.header("x-protocol"), Some("HTTP/1.1"));
    assert_eq!(up.header("x-time-ok"), Some("true"));
    assert_eq!(up.header("x-custom"), Some("kept"));
    let granted = kit_with(
        Options::default()
            .config_json(&json!({ "mode": "properties" }))
            .expose(&["client_address"]),
    );
    let up = granted.run(&req, &TestResponse::ok("")).forwarded.unwrap();
    assert_eq!(up.header("x-client"), Some("10.1.2.3:5555"));
    assert_eq!(up.header("x-client-ip"), Some("10.1.2.3"));
    // As on a plain ABI host: no Sluice-only properties.
    let plain = kit_with(
        Options::default()
            .config_json(&json!({ "mode": "properties" }))
            .portable(),
    );
    let up = plain.run(&req, &TestResponse::ok("")).forwarded.unwrap();
    assert_eq!(up.header("x-route"), Some("none"));
    assert_eq!(up.header("x-client-ip"), Some("10.1.2.3"));
}

#[test]
fn every_log_macro_reaches_the_host() {
    let kit = kit("log");
    kit.run(&TestRequest::get("/"), &TestResponse::ok(""));
    let logs = kit.logs();
    for (level, text) in [
        ("trace", "api-log trace 1"),
        ("debug", "api-log debug 2"),
        ("info", "api-log info 3"),
        ("warn", "api-log warn 4"),
        ("error", "api-log error 5"),
        ("error", "api-log critical 6"),
    ] {
        assert!(
            logs.iter().any(|l| l.level == level && l.message == text),
            "{level} {text} missing: {logs:?}"
        );
    }
}

#[test]
fn ticks_run_on_the_plugin() {
    let kit = kit("tick");
    std::thread::sleep(Duration::from_millis(300));
    let up = kit
        .run(&TestRequest::get("/"), &TestResponse::ok(""))
        .forwarded
        .unwrap();
    let ticks: u64 = up.header("x-ticks").unwrap().parse().unwrap();
    assert!(ticks >= 3, "a 10 ms tick ran {ticks} times in 300 ms");
}

#[test]
fn a_bad_configuration_is_refused_with_serdes_reason() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let err = Kit::load(
        &wasm,
        Options::default().config_json(&json!({ "mode": "nope" })),
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("proxy_on_configure returned false"),
        "{err}"
    );
}
