//! Shared by the gRPC tests (`grpc.rs`, `grpc_calls.rs`): the test service `test.Echo` and
//! the proxy configuration helpers.

use crate::support::{target_dir, temp_dir};

/// The gRPC test service `test.Echo`, on tonic with a codec of raw bytes.
pub mod server {
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
        /// `ServerStream` takes a permit before each message after the first, and before its
        /// end (its status).
        pub gate: Arc<Semaphore>,
        /// `ServerStream` answers dropped before their end: the client cancelled or left.
        pub dropped: Arc<AtomicUsize>,
    }

    /// Counts a server stream dropped before its end.
    struct Unfinished {
        done: bool,
        dropped: Arc<AtomicUsize>,
    }

    impl Drop for Unfinished {
        fn drop(&mut self) {
            if !self.done {
                self.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
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
    struct ServerStream(Arc<Semaphore>, Arc<AtomicUsize>);
    impl tonic::server::ServerStreamingService<Bytes> for ServerStream {
        type Response = Bytes;
        type ResponseStream = Messages;
        type Future = BoxFuture<Result<Response<Messages>, Status>>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            let gate = self.0.clone();
            let dropped = self.1.clone();
            Box::pin(async move {
                let m = String::from_utf8_lossy(req.get_ref()).to_string();
                let fail = m.ends_with('!');
                let n: usize = m
                    .trim_end_matches('!')
                    .parse()
                    .map_err(|_| Status::invalid_argument("not a number"))?;
                let guard = Unfinished {
                    done: false,
                    dropped,
                };
                let s = futures_util::stream::unfold((0usize, guard), move |(i, mut guard)| {
                    let gate = gate.clone();
                    async move {
                        if i > 0 && i <= n {
                            gate.acquire().await.expect("gate open").forget();
                        }
                        if i < n {
                            Some((Ok(Bytes::from(format!("part-{i}"))), (i + 1, guard)))
                        } else if i == n && fail {
                            guard.done = true;
                            let status = Status::aborted(format!("gave up after {n}"));
                            Some((Err(status), (i + 1, guard)))
                        } else {
                            // Finished: dropped here without counting.
                            let mut guard = guard;
                            guard.done = true;
                            drop(guard);
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

    /// `Stall`: never reads the messages sent to it nor answers (until the client goes).
    struct Stall;
    impl tonic::server::ClientStreamingService<Bytes> for Stall {
        type Response = Bytes;
        type Future = BoxFuture<Result<Response<Bytes>, Status>>;
        fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
            Box::pin(async move {
                let _unread = req;
                std::future::pending().await
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
            let dropped = self.dropped.clone();
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(Raw);
                Ok(match req.uri().path() {
                    "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                    "/test.Echo/ServerStream" => {
                        grpc.server_streaming(ServerStream(gate, dropped), req)
                            .await
                    }
                    "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, req).await,
                    "/test.Echo/Bidi" => grpc.streaming(Bidi, req).await,
                    "/test.Echo/Stall" => grpc.client_streaming(Stall, req).await,
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
            dropped: Arc::default(),
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

/// `sluice-sdk`'s test plugin (`tests/plugins/sdk-sluice`), built once per test binary with
/// the current code (profile `$SLUICE_PLUGIN_PROFILE`, else `release`).
fn sluice_sdk_wasm() -> &'static std::path::PathBuf {
    static WASM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    WASM.get_or_init(|| {
        sluice::testkit::build_plugin(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/plugins/sdk-sluice"
        ))
        .expect("the sluice-sdk test plugin builds")
    })
}

/// A temp dir holding the test plugins built with the public Rust SDK (`sdk.wasm`, from
/// `make wasm`) and with `sluice-sdk` (`sluice.wasm`).
pub fn sdk_plugin_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let sdk = target_dir().join("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm");
    assert!(
        sdk.is_file(),
        "build the test plugins with `make wasm` first"
    );
    std::fs::copy(sdk, dir.join("sdk.wasm")).unwrap();
    std::fs::copy(sluice_sdk_wasm(), dir.join("sluice.wasm")).unwrap();
    dir
}

pub fn config(upstreams: &str, routes: &str, plugins: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n{upstreams}\
         routes:\n{routes}\
         {plugins}"
    )
}
