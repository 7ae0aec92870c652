//! gRPC calls and streams made by plugins, through the real `sluice` binary to a real gRPC
//! server (`tonic`, h2c): the same scenarios run with a plugin built with the public Rust SDK
//! (`proxy-wasm`) and one built with `sluice-sdk`'s typed API, and both must see the same.

#[path = "support/grpc.rs"]
mod grpc_support;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use grpc_support::{config, sdk_plugin_dir, server};
use support::*;

/// The two SDKs: (name, plugin file).
const SDKS: [(&str, &str); 2] = [("rust", "sdk.wasm"), ("sluice", "sluice.wasm")];

/// A proxy whose routes `<mode>.<sdk>.test` run the plugin of that SDK in that mode against
/// the gRPC server `grpc`; `h1.<sdk>.test` and `denied.<sdk>.test` call pools they may not use
/// for gRPC, `gone.<sdk>.test` one nobody listens on. With `root`, `root.sluice.test` runs the
/// plugin whose root context calls the server (one VM: one set of root calls).
async fn proxy(grpc: SocketAddr, tag: &str, root: bool) -> Sluice {
    let up = upstream("backend").await;
    let gone = closed_port().await;
    let mut routes = String::new();
    let mut plugins = String::from("plugins:\n");
    for (sdk, file) in SDKS {
        for (name, mode, pool, allowed) in [
            ("unary", "grpc", "grpc", "grpc"),
            ("stream", "grpc-stream", "grpc", "grpc"),
            ("h1", "grpc", "grpc_h1", "grpc_h1"),
            ("denied", "grpc", "grpc", "backend"),
            ("gone", "grpc", "gone", "gone"),
        ] {
            let plugin = format!("{name}_{sdk}");
            routes.push_str(&format!(
                "  - {{ name: {plugin}, match: {{ host: {name}.{sdk}.test }}, upstream: backend, plugins: [{plugin}] }}\n"
            ));
            let tag = if sdk == "rust" { ", tag: sluice" } else { "" };
            // The floods (12 MiB sent in one callback) take a while on a loaded machine.
            let limits = if name == "stream" {
                ", limits: { timeout_ms: 5000 }"
            } else {
                ""
            };
            plugins.push_str(&format!(
                "  {plugin}: {{ path: {file}, allowed_upstreams: [{allowed}]{limits}, config: {{ mode: {mode}, upstream: {pool}{tag} }} }}\n"
            ));
        }
    }
    if root {
        routes.push_str(
            "  - { name: root, match: { host: root.sluice.test }, upstream: backend, plugins: [root] }\n",
        );
        plugins.push_str(
            "  root: { path: sluice.wasm, vms: 1, allowed_upstreams: [grpc], config: { mode: grpc-root, upstream: grpc } }\n",
        );
    }
    Sluice::start_in(
        &config(
            &format!(
                "  grpc: {{ endpoints: ['{grpc}'], protocol: h2 }}\n\
                 \x20 grpc_h1: {{ endpoints: ['{grpc}'] }}\n\
                 \x20 gone: {{ endpoints: ['{gone}'], protocol: h2 }}\n\
                 \x20 backend: {{ endpoints: ['{up}'] }}\n"
            ),
            &routes,
            &plugins,
        ),
        sdk_plugin_dir(tag),
    )
    .await
}

/// The address of a port nobody listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The echo of a request to `host` with `headers`.
async fn get(proxy: &Sluice, host: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut r = client().get(proxy.url("/")).header("host", host);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    echo(r.send().await.unwrap()).await
}

/// Header `name` of an echo, or "".
fn header(e: &serde_json::Value, name: &str) -> String {
    echo_header(e, name).unwrap_or_default().to_string()
}

/// The first word of header `name` (the status code, which `sluice-sdk`'s mode follows with
/// the code's name).
fn code(e: &serde_json::Value, name: &str) -> String {
    header(e, name)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the server has seen `n` server streams dropped before their end.
async fn dropped(echo: &server::Echo, n: usize, what: &str) {
    for _ in 0..100 {
        if echo.dropped.load(Ordering::SeqCst) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(echo.dropped.load(Ordering::SeqCst), n, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_make_unary_grpc_calls() {
    let (grpc, _echo) = server::start(None).await;
    let proxy = proxy(grpc, "grpc-unary", false).await;
    for (sdk, _) in SDKS {
        let host = |name: &str| format!("{name}.{sdk}.test");
        // The answer, with the metadata the plugin sent seen by the server.
        let e = get(&proxy, &host("unary"), &[("x-grpc-msg", "hello")]).await;
        assert_eq!(
            header(&e, "x-grpc-reply"),
            "echo:hello|md=sluice",
            "{sdk}: {e}"
        );
        // An error status, with its message (as sent: percent-encoded).
        let e = get(&proxy, &host("unary"), &[("x-grpc-msg", "fail")]).await;
        assert_eq!(code(&e, "x-grpc-status"), "7", "{sdk}: {e}");
        assert_eq!(header(&e, "x-grpc-message"), "no%20entry", "{sdk}: {e}");
        assert_eq!(echo_header(&e, "x-grpc-reply"), None, "{sdk}");
        // The deadline: a method that never finishes (its gate is never opened).
        let e = get(
            &proxy,
            &host("unary"),
            &[
                ("x-grpc-msg", "2"),
                ("x-grpc-method", "ServerStream"),
                ("x-grpc-timeout-ms", "300"),
            ],
        )
        .await;
        assert_eq!(code(&e, "x-grpc-status"), "4", "{sdk}: {e}");
        // An unknown method: the server's UNIMPLEMENTED.
        let e = get(
            &proxy,
            &host("unary"),
            &[("x-grpc-msg", "x"), ("x-grpc-method", "Nope")],
        )
        .await;
        assert_eq!(code(&e, "x-grpc-status"), "12", "{sdk}: {e}");
        // Nobody listening: UNAVAILABLE.
        let e = get(&proxy, &host("gone"), &[("x-grpc-msg", "x")]).await;
        assert_eq!(code(&e, "x-grpc-status"), "14", "{sdk}: {e}");
        // Refused by the host: an HTTP/1.1 pool, and an upstream not in allowed_upstreams
        // (as an unknown cluster on Envoy).
        for (name, status) in [("h1", "InternalFailure"), ("denied", "ParseFailure")] {
            let e = get(&proxy, &host(name), &[("x-grpc-msg", "x")]).await;
            let error = header(&e, "x-grpc-error");
            assert!(error.ends_with(status), "{sdk} {name}: {e}");
            assert_eq!(echo_header(&e, "x-grpc-status"), None, "{sdk} {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_stream_grpc_both_ways_and_cancel() {
    let (grpc, echo) = server::start(None).await;
    let proxy = proxy(grpc, "grpc-streams", false).await;
    let mut reports = Vec::new();
    let mut gone = 0;
    for (sdk, _) in SDKS {
        let host = format!("stream.{sdk}.test");
        let stream = |headers: &'static [(&'static str, &'static str)]| {
            let (proxy, host) = (&proxy, &host);
            async move { header(&get(proxy, host, headers).await, "x-grpc-stream") }
        };
        let mut seen = Vec::new();
        // Bidirectional: each message sent after the answer to the previous one.
        seen.push(stream(&[]).await);
        assert!(
            seen[0].starts_with("re:a,re:b,re:c; status=0; initial="),
            "{sdk}: {seen:?}"
        );
        // The server's trailers carry grpc-status at least.
        assert!(!seen[0].ends_with("trailing=0"), "{sdk}: {seen:?}");
        // Server streaming: three messages, then the end of the stream (a gate permit before
        // each after the first, and before the end).
        echo.gate.add_permits(3);
        seen.push(stream(&[("x-grpc-method", "ServerStream"), ("x-grpc-msgs", "3")]).await);
        assert!(
            seen[1].starts_with("part-0,part-1,part-2; status=0;"),
            "{sdk}: {seen:?}"
        );
        // ... and one that fails after two messages.
        echo.gate.add_permits(2);
        seen.push(stream(&[("x-grpc-method", "ServerStream"), ("x-grpc-msgs", "2!")]).await);
        assert!(
            seen[2].starts_with("part-0,part-1; status=10;"),
            "{sdk}: {seen:?}"
        );
        // Client streaming: three messages, one answer when the plugin ends its half.
        seen.push(
            stream(&[
                ("x-grpc-method", "ClientStream"),
                ("x-grpc-msgs", "one,two,three"),
            ])
            .await,
        );
        assert!(
            seen[3].starts_with("count=3 total=11; status=0;"),
            "{sdk}: {seen:?}"
        );
        // Cancelled by the plugin after two of five messages: the server sees the reset.
        echo.gate.add_permits(1);
        seen.push(
            stream(&[
                ("x-grpc-method", "ServerStream"),
                ("x-grpc-msgs", "5"),
                ("x-grpc-cancel-after", "2"),
            ])
            .await,
        );
        assert_eq!(seen[4], "part-0,part-1; cancelled", "{sdk}");
        gone += 1;
        dropped(&echo, gone, &format!("{sdk}: cancelled stream")).await;
        // The client leaves while the plugin's stream is open: the stream goes with the request.
        let left = client()
            .get(proxy.url("/"))
            .header("host", host.as_str())
            .header("x-grpc-method", "ServerStream")
            .header("x-grpc-msgs", "5")
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(left.is_err(), "{sdk}: the request should still wait");
        gone += 1;
        dropped(
            &echo,
            gone,
            &format!("{sdk}: stream of a request that ended"),
        )
        .await;
        reports.push(seen);
    }
    // Both SDKs saw the same events, metadata counts included.
    assert_eq!(reports[0], reports[1]);
    // Messages larger than the server's flow-control windows go out as it reads them ...
    let e = get(
        &proxy,
        "stream.rust.test",
        &[
            ("x-grpc-method", "ClientStream"),
            ("x-grpc-flood", "5x1048576"),
        ],
    )
    .await;
    let report = header(&e, "x-grpc-stream");
    assert!(
        report.starts_with("count=5 total=5242880; status=0;"),
        "{report}"
    );
    // ... and a plugin sending faster than the server reads fills the call's queue (8 MiB)
    // and its call ends with RESOURCE_EXHAUSTED rather than the host buffering without bound.
    let e = get(
        &proxy,
        "stream.rust.test",
        &[("x-grpc-method", "Stall"), ("x-grpc-flood", "12x1048576")],
    )
    .await;
    let report = header(&e, "x-grpc-stream");
    assert!(report.starts_with("; status=8;"), "{report}");
    // A stream the request does not wait for: its events, which arrive while the upstream
    // takes its time, reach the plugin before the response headers (sluice-sdk's mode copies
    // its report into them), as the reference host delivers them whenever they come.
    echo.gate.add_permits(2);
    let resp = client()
        .get(proxy.url("/?delay_ms=500"))
        .header("host", "stream.sluice.test")
        .header("x-grpc-method", "ServerStream")
        .header("x-grpc-msgs", "2")
        .header("x-grpc-no-wait", "1")
        .send()
        .await
        .unwrap();
    let report = resp
        .headers()
        .get("x-grpc-stream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let e = support::echo(resp).await;
    assert!(report.starts_with("part-0,part-1; status=0;"), "{report:?}");
    // The upstream got the request before any of it.
    assert_eq!(echo_header(&e, "x-grpc-stream"), None, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_sdk_grpc_from_the_root_context() {
    let (grpc, echo) = server::start(None).await;
    // The root stream asks for two messages: a permit before the second and before the end.
    echo.gate.add_permits(2);
    let proxy = proxy(grpc, "grpc-root", true).await;
    let mut e = serde_json::Value::Null;
    for _ in 0..100 {
        e = get(&proxy, "root.sluice.test", &[]).await;
        if header(&e, "x-grpc-root-stream") != "none" && header(&e, "x-grpc-root-unary") != "none" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(header(&e, "x-grpc-root-unary"), "echo:root", "{e}");
    assert_eq!(
        header(&e, "x-grpc-root-stream"),
        "part-0,part-1; status=0",
        "{e}"
    );
}

/// The test kit (`sluice::testkit`, what plugin authors test with) reaches a gRPC server too:
/// `sluice-sdk`'s unary call and stream, driven by the same exchange as the proxy.
#[test]
fn the_test_kit_runs_grpc_calls() {
    use sluice::testkit::{Kit, Options, TestRequest, TestResponse};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (grpc, _echo) = rt.block_on(server::start(None));
    let wasm = std::fs::read(sdk_plugin_dir("grpc-kit").join("sluice.wasm")).unwrap();
    let kit = |mode: &str| {
        let mut options = Options::default()
            .config_json(&serde_json::json!({ "mode": mode, "upstream": "grpc" }));
        options.grpc_upstreams = vec![("grpc".into(), grpc)];
        Kit::from_bytes("grpc-kit", &wasm, options).unwrap()
    };
    let forwarded = |kit: &Kit, req: TestRequest| {
        let out = kit.run(&req, &TestResponse::ok("ok"));
        out.forwarded.expect("the request reaches the upstream")
    };
    let unary = kit("grpc");
    let f = forwarded(&unary, TestRequest::get("/").header("x-grpc-msg", "kit"));
    assert_eq!(f.header("x-grpc-reply"), Some("echo:kit|md=sluice"));
    let f = forwarded(&unary, TestRequest::get("/").header("x-grpc-msg", "fail"));
    assert_eq!(f.header("x-grpc-status"), Some("7 PERMISSION_DENIED"));
    let f = forwarded(&kit("grpc-stream"), TestRequest::get("/"));
    let report = f.header("x-grpc-stream").unwrap_or_default();
    assert!(report.starts_with("re:a,re:b,re:c; status=0;"), "{report}");
    // Without the upstream among its HTTP/2 ones, the call is refused (an HTTP/1.1 pool).
    let mut options =
        Options::default().config_json(&serde_json::json!({ "mode": "grpc", "upstream": "grpc" }));
    options.upstreams = vec![("grpc".into(), grpc)];
    let h1 = Kit::from_bytes("grpc-kit-h1", &wasm, options).unwrap();
    let f = forwarded(&h1, TestRequest::get("/").header("x-grpc-msg", "x"));
    let error = f.header("x-grpc-error").unwrap_or_default();
    assert!(error.ends_with("InternalFailure"), "{error}");
}
