//! HTTP/2 upstreams and gRPC through the real `sluice` binary: a real gRPC server written with
//! `tonic` (plain h2c, and TLS with ALPN), a real HTTP/2 client speaking gRPC framing by hand
//! (so each side's exact bytes and trailers are checked), streaming in both directions, and
//! response trailers seen and edited by a plugin built with the public Rust SDK.

#[path = "support/grpc.rs"]
mod grpc_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use grpc_support::{config, sdk_plugin_dir, server};
use support::*;

/// A gRPC message in its length-prefixed frame (uncompressed).
fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Takes the complete frames off the front of `buf`.
fn frames(buf: &mut BytesMut) -> Vec<String> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        assert_eq!(buf[0], 0, "a compressed frame was not asked for");
        buf.advance(5);
        out.push(String::from_utf8(buf.split_to(len).to_vec()).unwrap());
    }
    out
}

/// An HTTP/2 connection (prior knowledge) to `addr`.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// One gRPC call in progress: its request body and response.
struct Call {
    send: h2::SendStream<Bytes>,
    response: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
    head: Option<http::response::Parts>,
    buf: BytesMut,
}

impl Call {
    /// Starts `method` (`Unary`, `Bidi`… of `test.Echo`) on `client`, for `host` (which picks
    /// the route), with its first message (`end`: and the end of the request).
    async fn start(
        client: &mut h2::client::SendRequest<Bytes>,
        host: &str,
        method: &str,
        first: &[u8],
        end: bool,
    ) -> Call {
        let req = http::Request::post(format!("http://{host}/test.Echo/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        send.send_data(frame(first), end).unwrap();
        Call {
            send,
            response: Some(resp),
            body: None,
            head: None,
            buf: BytesMut::new(),
        }
    }

    /// The response head (waited for the first time).
    async fn head(&mut self) -> &http::response::Parts {
        if let Some(resp) = self.response.take() {
            let (head, body) = within(resp).await.unwrap().into_parts();
            self.head = Some(head);
            self.body = Some(body);
        }
        self.head.as_ref().expect("the head is in")
    }

    /// The next chunk of the response body (`None`: the body ended).
    async fn chunk(&mut self) -> Option<Bytes> {
        self.head().await;
        let body = self.body.as_mut().expect("the head is in");
        let chunk = within(body.data()).await?.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        Some(chunk)
    }

    /// Sends one more message; `end`: the last.
    fn send(&mut self, msg: &[u8], end: bool) {
        self.send.send_data(frame(msg), end).unwrap();
    }

    /// The next `n` messages (fails if the stream ends first or they are not there in time).
    async fn messages(&mut self, n: usize) -> Vec<String> {
        let mut out = frames(&mut self.buf);
        while out.len() < n {
            let chunk = self.chunk().await.expect("the response ended early");
            self.buf.extend_from_slice(&chunk);
            out.extend(frames(&mut self.buf));
        }
        assert_eq!(out.len(), n, "more messages than expected: {out:?}");
        out
    }

    /// The rest of the messages, then the trailers.
    async fn finish(mut self) -> (Vec<String>, http::HeaderMap) {
        let mut out = frames(&mut self.buf);
        while let Some(chunk) = self.chunk().await {
            self.buf.extend_from_slice(&chunk);
            out.extend(frames(&mut self.buf));
        }
        assert!(self.buf.is_empty(), "a partial frame at the end");
        let body = self.body.as_mut().expect("the head is in");
        let trailers = within(body.trailers()).await.unwrap().unwrap_or_default();
        (out, trailers)
    }
}

/// `f`, or a failure after 10 s (a stream held back somewhere).
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("nothing came within 10 s")
}

/// A unary call: (status, grpc-status, grpc-message, messages). Trailers-only answers carry the
/// status in the head.
async fn unary(addr: SocketAddr, host: &str, msg: &[u8]) -> (u16, String, String, Vec<String>) {
    let mut c = h2_client(addr).await;
    let mut call = Call::start(&mut c, host, "Unary", msg, true).await;
    let status = call.head().await.status.as_u16();
    let head = call.head().await.headers.clone();
    let (msgs, trailers) = call.finish().await;
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| head.get(k))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (status, get("grpc-status"), get("grpc-message"), msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_streams_both_ways_with_trailers() {
    let (grpc, echo) = server::start(None).await;
    let proxy = Sluice::start(&config(
        &format!("  grpc: {{ endpoints: ['{grpc}'], protocol: h2 }}\n"),
        "  - { name: all, upstream: grpc }\n",
        "",
    ))
    .await;

    // Unary: the answer and grpc-status 0 in the trailers.
    let (status, code, _, msgs) = unary(proxy.addr, "grpc.test", b"hello").await;
    assert_eq!((status, code.as_str()), (200, "0"));
    assert_eq!(msgs, ["echo:hello"]);

    // An error status with its message reaches the client.
    let (status, code, message, msgs) = unary(proxy.addr, "grpc.test", b"fail").await;
    assert_eq!(status, 200);
    // grpc-message is percent-encoded on the wire.
    assert_eq!((code.as_str(), message.as_str()), ("7", "no%20entry"));
    assert!(msgs.is_empty());

    // Server streaming: each message reaches the client before the server sends the next
    // (the server waits for the test between messages), then the trailers.
    let mut c = h2_client(proxy.addr).await;
    let mut call = Call::start(&mut c, "grpc.test", "ServerStream", b"3", true).await;
    for i in 0..3 {
        assert_eq!(call.messages(1).await, [format!("part-{i}")]);
        echo.gate.add_permits(1);
    }
    let (rest, trailers) = call.finish().await;
    assert!(rest.is_empty());
    assert_eq!(trailers["grpc-status"], "0");

    // A stream that fails after its messages: the status arrives in the trailers.
    let call = Call::start(&mut c, "grpc.test", "ServerStream", b"2!", true).await;
    echo.gate.add_permits(2);
    let (msgs, trailers) = call.finish().await;
    assert_eq!(msgs, ["part-0", "part-1"]);
    assert_eq!(trailers["grpc-status"], "10");
    assert_eq!(trailers["grpc-message"], "gave%20up%20after%202");

    // Client streaming: messages in separate DATA frames with pauses between them.
    let mut call = Call::start(&mut c, "grpc.test", "ClientStream", b"one", false).await;
    for (m, end) in [(&b"two"[..], false), (b"three", true)] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        call.send(m, end);
    }
    let (msgs, trailers) = call.finish().await;
    assert_eq!(msgs, ["count=3 total=11"]);
    assert_eq!(trailers["grpc-status"], "0");

    // Both ways at once: each answer comes back before the next message is sent.
    let mut call = Call::start(&mut c, "grpc.test", "Bidi", b"a", false).await;
    assert_eq!(call.messages(1).await, ["re:a"]);
    call.send(b"b", false);
    assert_eq!(call.messages(1).await, ["re:b"]);
    call.send(b"c", true);
    let (msgs, trailers) = call.finish().await;
    assert_eq!(msgs, ["re:c"]);
    assert_eq!(trailers["grpc-status"], "0");
    assert!(echo.calls.load(std::sync::atomic::Ordering::SeqCst) >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn() {
    let dir = temp_dir("grpc-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["grpc.test".to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.cert.pem()).unwrap();
    let (grpc, _) = server::start(Some((cert.cert.pem(), cert.key_pair.serialize_pem()))).await;
    let tls = "tls: { sni: grpc.test, ca: ca.pem }";
    let proxy = Sluice::start_in(
        &config(
            &format!(
                "  h2: {{ endpoints: ['{grpc}'], protocol: h2, {tls} }}\n\
                 \x20 auto: {{ endpoints: ['{grpc}'], protocol: auto, {tls} }}\n\
                 \x20 http1: {{ endpoints: ['{grpc}'], {tls} }}\n"
            ),
            "  - { name: h2, match: { host: h2.test }, upstream: h2 }\n\
             \x20 - { name: auto, match: { host: auto.test }, upstream: auto }\n\
             \x20 - { name: http1, match: { host: http1.test }, upstream: http1 }\n",
            "",
        ),
        dir,
    )
    .await;
    for host in ["h2.test", "auto.test"] {
        let (status, code, _, msgs) = unary(proxy.addr, host, b"over tls").await;
        assert_eq!((status, code.as_str()), (200, "0"), "{host}");
        assert_eq!(msgs, ["echo:over tls"], "{host}");
    }
    // The server offers only h2 through ALPN: an HTTP/1.1 pool cannot reach it.
    let mut c = h2_client(proxy.addr).await;
    let req = http::Request::post("http://http1.test/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (resp, mut send) = c.send_request(req, false).unwrap();
    send.send_data(frame(b"x"), true).unwrap();
    let resp = within(resp).await.unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_and_edit_response_trailers() {
    let (grpc, echo) = server::start(None).await;
    let dir = sdk_plugin_dir("grpc-plugins");
    let proxy = Sluice::start_in(
        &config(
            &format!("  grpc: {{ endpoints: ['{grpc}'], protocol: h2 }}\n"),
            "  - { name: pass, match: { host: pass.test }, upstream: grpc, plugins: [outer, trailers] }\n\
             \x20 - { name: hold, match: { host: hold.test }, upstream: grpc, plugins: [hold] }\n",
            "plugins:\n\
             \x20 outer: { path: sdk.wasm, config: { mode: trailers, tag: outer } }\n\
             \x20 trailers: { path: sdk.wasm, config: { mode: trailers, tag: inner } }\n\
             \x20 hold: { path: sdk.wasm, config: { mode: trailers-hold, tag: held } }\n",
        ),
        dir,
    )
    .await;

    // Two plugins in response order (inner first): each sees the trailers as the one before
    // left them; messages stream through untouched.
    let mut c = h2_client(proxy.addr).await;
    let mut call = Call::start(&mut c, "pass.test", "ServerStream", b"2!", true).await;
    assert_eq!(call.messages(1).await, ["part-0"]);
    echo.gate.add_permits(1);
    assert_eq!(call.messages(1).await, ["part-1"]);
    echo.gate.add_permits(1);
    let (rest, trailers) = call.finish().await;
    assert!(rest.is_empty());
    assert_eq!(trailers["grpc-status"], "10");
    assert_eq!(
        trailers["grpc-message"],
        "outer: inner: gave%20up%20after%202"
    );
    // inner saw grpc-status and grpc-message; outer also saw inner's x-sdk-trailers.
    let seen: Vec<_> = trailers
        .get_all("x-sdk-trailers")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(seen, ["outer:3"]);

    // A plugin holding the body back (pausing each chunk): what it held goes out before the
    // trailers, whole and in order.
    let call = Call::start(&mut c, "hold.test", "ServerStream", b"3!", true).await;
    echo.gate.add_permits(3);
    let (msgs, trailers) = call.finish().await;
    assert_eq!(msgs, ["part-0", "part-1", "part-2"]);
    assert_eq!(trailers["grpc-message"], "held: gave%20up%20after%203");
    assert_eq!(trailers["x-sdk-trailers"], "held:2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_pools_carry_http1_clients_and_health_checks() {
    let up = upstream("h2c").await;
    let (grpc, _) = server::start(None).await;
    let hc = "health_check: { path: /health, interval_ms: 100, timeout_ms: 100 }";
    let proxy = Sluice::start(&config(
        &format!(
            "  h2c: {{ endpoints: ['{up}'], protocol: h2 }}\n\
             \x20 plain: {{ endpoints: ['{up}'] }}\n\
             \x20 grpc_h2: {{ endpoints: ['{grpc}'], protocol: h2, {hc} }}\n\
             \x20 grpc_h1: {{ endpoints: ['{grpc}'], {hc} }}\n"
        ),
        "  - { name: h2c, match: { path_prefix: /h2c }, upstream: h2c }\n\
         \x20 - { name: plain, upstream: plain }\n",
        "",
    ))
    .await;
    // An HTTP/1.1 client's request (with a body) goes upstream over HTTP/2.
    let c = client();
    let r = c
        .post(proxy.url("/h2c/x"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["version"], "HTTP/2.0");
    assert_eq!(e["upstream"], "h2c");
    let e = echo(c.get(proxy.url("/x")).send().await.unwrap()).await;
    assert_eq!(e["version"], "HTTP/1.1");

    // Health checks speak the pool's protocol: the gRPC server (HTTP/2 only) is healthy for
    // the h2 pool and unreachable for the HTTP/1.1 one.
    let healthy = |text: &str, pool: &str| {
        metric_value(
            text,
            &format!("sluice_upstream_healthy{{endpoint=\"{grpc}\",upstream=\"{pool}\"}}"),
        )
    };
    let mut last = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = c
            .get(proxy.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if healthy(&last, "grpc_h1") == Some(0.0) {
            break;
        }
    }
    assert_eq!(healthy(&last, "grpc_h1"), Some(0.0), "{last}");
    assert_eq!(healthy(&last, "grpc_h2"), Some(1.0), "{last}");
}
