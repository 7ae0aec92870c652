//! HTTP/2 upstreams and gRPC through the real `sluice` binary: a real gRPC server written with
//! `tonic` (plain h2c, and TLS with ALPN), a real HTTP/2 client speaking gRPC framing by hand
//! (so each side's exact bytes and trailers are checked), streaming in both directions, and
//! response trailers seen and edited by a plugin built with the public Rust SDK.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use support::*;

/// The gRPC test service `test.Echo`, on tonic with a codec of raw bytes.
mod server {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::{Buf, BufMut, Bytes};
    use futures_util::{Stream, StreamExt};
    use tokio::sync::Semaphore;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::{Request, Response, Status, Streaming};

    /// Messages as they are on the wire: no protobuf.
    #[derive(Clone, Copy, Default)]
    struct Raw;

    impl Codec for Raw {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
    type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

    /// What the service shares with the test.
    #[derive(Clone)]
    pub struct Echo {
        /// Requests served (all methods).
        pub calls: Arc<AtomicUsize>,
        /// `ServerStream` takes a permit before each message after the first (and before its
        /// error status).
        pub gate: Arc<Semaphore>,
    }

    impl tonic::server::NamedService for Echo {
        const NAME: &'static str = "test.Echo";
    }

    /// `Unary`: answers `echo:<message>` (then `|md=<x-md>` when that metadata came); the
    /// message `fail` gets PERMISSION_DENIED.
    struct Unary;
    impl tonic::server::UnaryService<Bytes> for Unary {
        type Response = Bytes;
        type Future = BoxFuture<Result<Response<Bytes>, Status>>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            Box::pin(async move {
                let md = req
                    .metadata()
                    .get("x-md")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let m = req.into_inner();
                if &m[..] == b"fail" {
                    return Err(Status::permission_denied("no entry"));
                }
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&m);
                if let Some(md) = md {
                    out.extend_from_slice(format!("|md={md}").as_bytes());
                }
                Ok(Response::new(Bytes::from(out)))
            })
        }
    }

    /// `ServerStream`: the message is `N` or `N!`: N messages `part-i`, waiting for the gate
    /// between them; with `!`, then the status ABORTED ("gave up after N").
    struct ServerStream(Arc<Semaphore>);
    impl tonic::server::ServerStreamingService<Bytes> for ServerStream {
        type Response = Bytes;
        type ResponseStream = Messages;
        type Future = BoxFuture<Result<Response<Messages>, Status>>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                let m = String::from_utf8_lossy(req.get_ref()).to_string();
                let fail = m.ends_with('!');
                let n: usize = m
                    .trim_end_matches('!')
                    .parse()
                    .map_err(|_| Status::invalid_argument("not a number"))?;
                let s = futures_util::stream::unfold(0usize, move |i| {
                    let gate = gate.clone();
                    async move {
                        if i > 0 && i <= n {
                            gate.acquire().await.expect("gate open").forget();
                        }
                        if i < n {
                            Some((Ok(Bytes::from(format!("part-{i}"))), i + 1))
                        } else if i == n && fail {
                            Some((Err(Status::aborted(format!("gave up after {n}"))), i + 1))
                        } else {
                            None
                        }
                    }
                });
                Ok(Response::new(Box::pin(s) as Messages))
            })
        }
    }

    /// `ClientStream`: answers `count=<n> total=<bytes>` once the client ends its stream.
    struct ClientStream;
    impl tonic::server::ClientStreamingService<Bytes> for ClientStream {
        type Response = Bytes;
        type Future = BoxFuture<Result<Response<Bytes>, Status>>;
        fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
            Box::pin(async move {
                let mut s = req.into_inner();
                let (mut n, mut total) = (0, 0);
                while let Some(m) = s.message().await? {
                    n += 1;
                    total += m.len();
                }
                Ok(Response::new(Bytes::from(format!(
                    "count={n} total={total}"
                ))))
            })
        }
    }

    /// `Bidi`: answers each message with `re:<message>` as it arrives.
    struct Bidi;
    impl tonic::server::StreamingService<Bytes> for Bidi {
        type Response = Bytes;
        type ResponseStream = Messages;
        type Future = BoxFuture<Result<Response<Messages>, Status>>;
        fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
            Box::pin(async move {
                let s = req.into_inner().map(|m| {
                    m.map(|m| {
                        let mut out = b"re:".to_vec();
                        out.extend_from_slice(&m);
                        Bytes::from(out)
                    })
                });
                Ok(Response::new(Box::pin(s) as Messages))
            })
        }
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let gate = self.gate.clone();
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(Raw);
                Ok(match req.uri().path() {
                    "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                    "/test.Echo/ServerStream" => {
                        grpc.server_streaming(ServerStream(gate), req).await
                    }
                    "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, req).await,
                    "/test.Echo/Bidi" => grpc.streaming(Bidi, req).await,
                    _ => Status::unimplemented("no such method").into_http(),
                })
            })
        }
    }

    /// Starts the service on 127.0.0.1: plain h2c, or TLS (ALPN h2) with `cert`/`key` PEM.
    pub async fn start(tls: Option<(String, String)>) -> (std::net::SocketAddr, Echo) {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .expect("bind the gRPC server");
        let addr = incoming.local_addr().unwrap();
        let echo = Echo {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("TLS config");
        }
        let router = builder.add_service(echo.clone());
        tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        // Serving once the listener exists; a moment for the task to take it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        (addr, echo)
    }
}

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

/// A temp dir holding the Rust-SDK test plugin as `sdk.wasm`.
fn sdk_plugin_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let sdk = target_dir().join("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm");
    assert!(
        sdk.is_file(),
        "build the test plugins with `make wasm` first"
    );
    std::fs::copy(sdk, dir.join("sdk.wasm")).unwrap();
    dir
}

fn config(upstreams: &str, routes: &str, plugins: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n{upstreams}\
         routes:\n{routes}\
         {plugins}"
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_make_grpc_calls_and_streams() {
    let (grpc, _echo) = server::start(None).await;
    let up = upstream("backend").await;
    let dir = sdk_plugin_dir("grpc-calls");
    let proxy = Sluice::start_in(
        &config(
            &format!(
                "  grpc: {{ endpoints: ['{grpc}'], protocol: h2 }}\n\
                 \x20 grpc_h1: {{ endpoints: ['{grpc}'] }}\n\
                 \x20 backend: {{ endpoints: ['{up}'] }}\n"
            ),
            "  - { name: unary, match: { host: unary.test }, upstream: backend, plugins: [unary] }\n\
             \x20 - { name: stream, match: { host: stream.test }, upstream: backend, plugins: [stream] }\n\
             \x20 - { name: h1, match: { host: h1.test }, upstream: backend, plugins: [h1] }\n\
             \x20 - { name: denied, match: { host: denied.test }, upstream: backend, plugins: [denied] }\n",
            "plugins:\n\
             \x20 unary: { path: sdk.wasm, allowed_upstreams: [grpc], config: { mode: grpc, upstream: grpc, tag: t1 } }\n\
             \x20 stream: { path: sdk.wasm, allowed_upstreams: [grpc], config: { mode: grpc-stream, upstream: grpc } }\n\
             \x20 h1: { path: sdk.wasm, allowed_upstreams: [grpc_h1], config: { mode: grpc, upstream: grpc_h1 } }\n\
             \x20 denied: { path: sdk.wasm, config: { mode: grpc, upstream: grpc } }\n",
        ),
        dir,
    )
    .await;
    let c = client();
    let get = |host: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let mut r = c.get(proxy.url("/")).header("host", host);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        async move { echo(r.send().await.unwrap()).await }
    };
    // A unary call: its answer (with the plugin's metadata seen by the server).
    let e = get("unary.test", &[("x-grpc-msg", "hello")]).await;
    assert_eq!(
        echo_header(&e, "x-grpc-reply"),
        Some("echo:hello|md=t1"),
        "{e}"
    );
    // An error status, with its message.
    let e = get("unary.test", &[("x-grpc-msg", "fail")]).await;
    assert_eq!(echo_header(&e, "x-grpc-status"), Some("7"), "{e}");
    assert_eq!(echo_header(&e, "x-grpc-message"), Some("no%20entry"), "{e}");
    assert_eq!(echo_header(&e, "x-grpc-reply"), None);
    // The deadline: a method that never finishes (the server waits for a gate never opened).
    let e = get(
        "unary.test",
        &[
            ("x-grpc-msg", "2"),
            ("x-grpc-method", "ServerStream"),
            ("x-grpc-timeout-ms", "300"),
        ],
    )
    .await;
    assert_eq!(echo_header(&e, "x-grpc-status"), Some("4"), "{e}");
    // Refused: an HTTP/1.1 pool, and an upstream not in allowed_upstreams (as an unknown
    // cluster on Envoy).
    for (host, status) in [
        ("h1.test", "InternalFailure"),
        ("denied.test", "ParseFailure"),
    ] {
        let e = get(host, &[("x-grpc-msg", "x")]).await;
        assert_eq!(echo_header(&e, "x-grpc-error"), Some(status), "{host}: {e}");
    }
    // A bidirectional stream: each message sent after the answer to the previous one.
    let e = get("stream.test", &[]).await;
    let report = echo_header(&e, "x-grpc-stream")
        .unwrap_or_default()
        .to_string();
    assert!(
        report.starts_with("re:a,re:b,re:c; status=0; initial="),
        "{report}"
    );
    assert!(!report.ends_with("trailing=0"), "{report}");
}
