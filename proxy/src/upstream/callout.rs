//! The transport of plugins' callouts and gRPC calls: an upstream pool as a
//! [`CalloutTarget`] of the plugin host.
//!
//! Calls go through pingora's HTTP connector with the upstream's own peer settings, as
//! proxied requests do: TLS with SNI and certificate verification when the upstream has
//! `tls:`, the pool's protocol (HTTP/1.1, or HTTP/2 for `h2` and for `auto` when the endpoint
//! picks it: many calls on one connection, response trailers read), and connections kept
//! alive in the connector's pool (a connection whose response was read to its end serves the
//! next call to that endpoint; idle ones are closed after [`IDLE_FOR`]). A request of an
//! idempotent method that fails on a reused connection before any response (the server closed
//! it meanwhile) is sent again, on the next kept connection or a new one, as HTTP clients do.
//!
//! Deadlines: the upstream's `connect_timeout_ms` bounds the connect and its `read_timeout_ms`
//! each wait for the response head and for each piece of the body, as they do for proxied
//! requests (the plugin's own deadline is the host's).
//!
//! `Host` is the plugin's `:authority`; an empty one (which `proxy_http_call` accepts, as the
//! reference host does) is replaced by the chosen endpoint's `host:port` as written in the
//! config. Envoy copies an empty `:authority` into an empty `Host:`, which RFC 9112 allows
//! but some servers refuse (nginx answers 400), so Sluice names the server the call goes to.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::upstreams::peer::HttpPeer;

use super::{Endpoint, Pool, Tried};
use crate::config::Protocol;
use crate::wasm::callout::{CalloutResponse, MAX_RESPONSE_BODY};
use crate::wasm::stream::HeaderList;
use crate::wasm::target::{CalloutTarget, H2Call, TargetProtocol};

/// Longest an idle callout connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);

/// The connector callouts share (its pool holds their idle connections).
fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
}

#[async_trait::async_trait]
impl CalloutTarget for Pool {
    fn name(&self) -> &str {
        &self.name
    }

    fn protocol(&self) -> TargetProtocol {
        match self.protocol {
            Protocol::Http1 => TargetProtocol::Http1,
            Protocol::H2 => TargetProtocol::H2,
            Protocol::Auto => TargetProtocol::Auto,
        }
    }

    async fn http_call(
        &self,
        headers: &HeaderList,
        body: &Bytes,
    ) -> Result<CalloutResponse, String> {
        exchange(self, headers, body).await
    }

    async fn open_h2(
        &self,
        path: &str,
        headers: http::HeaderMap,
    ) -> Result<Box<dyn H2Call>, String> {
        open_h2(self, path, headers).await
    }
}

/// An HTTP/2 request on a connection of the connector's pool.
struct PooledH2 {
    session: Box<Http2Session>,
    peer: Box<HttpPeer>,
}

#[async_trait::async_trait]
impl H2Call for PooledH2 {
    fn take_request_body(&mut self) -> Option<h2::SendStream<Bytes>> {
        self.session.take_request_body_writer()
    }

    async fn response_header(&mut self) -> Result<(http::StatusCode, http::HeaderMap), String> {
        self.session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let resp = self
            .session
            .response_header()
            .ok_or_else(|| "no response head".to_string())?;
        Ok((resp.status, resp.headers.clone()))
    }

    async fn response_body(&mut self) -> Result<Option<Bytes>, String> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| e.to_string())
    }

    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, String> {
        self.session
            .read_trailers()
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(self: Box<Self>) {
        let PooledH2 { session, peer } = *self;
        connector()
            .release_http_session(HttpSession::H2(*session), &*peer, Some(IDLE_FOR))
            .await;
    }
}

async fn open_h2(
    pool: &Pool,
    path: &str,
    headers: http::HeaderMap,
) -> Result<Box<dyn H2Call>, String> {
    let idx = pool
        .select(None, Tried::default(), None)
        .ok_or("the upstream has no endpoint")?;
    let endpoint = &pool.endpoints[idx];
    let peer = endpoint.peer();
    let (session, _) = connector()
        .get_http_session(&*peer)
        .await
        .map_err(|e| format!("connect to {}: {e}", endpoint.label))?;
    let mut h2 = match session {
        HttpSession::H2(h2) => h2,
        other => {
            connector()
                .release_http_session(other, &*peer, Some(IDLE_FOR))
                .await;
            return Err(format!(
                "{} did not speak HTTP/2 (gRPC needs it)",
                endpoint.label
            ));
        }
    };
    let bad = |e: &dyn std::fmt::Display| format!("bad gRPC request: {e}");
    let mut head = RequestHeader::build("POST", path.as_bytes(), Some(headers.len() + 1))
        .map_err(|e| bad(&e))?;
    head.insert_header(http::header::HOST, endpoint.label.as_str())
        .map_err(|e| bad(&e))?;
    for (k, v) in &headers {
        head.append_header(k.clone(), v.clone())
            .map_err(|e| bad(&e))?;
    }
    h2.write_request_header(Box::new(head), false)
        .map_err(|e| e.to_string())?;
    Ok(Box::new(PooledH2 {
        session: Box::new(h2),
        peer,
    }))
}

/// The callout as a request head for `endpoint` (with `Content-Length` when it has a body).
fn request_head(
    headers: &HeaderList,
    body: &Bytes,
    endpoint: &Endpoint,
) -> Result<RequestHeader, String> {
    let (mut method, mut path, mut authority) = (None, None, None);
    for (k, v) in headers {
        match k.as_slice() {
            b":method" => method = Some(v.as_slice()),
            b":path" => path = Some(v.as_slice()),
            b":authority" => authority = Some(v.as_slice()),
            _ => {}
        }
    }
    let bad = |e: &dyn std::fmt::Display| format!("bad callout request: {e}");
    // `proxy_http_call` refuses a call without them; checked again rather than guessed.
    let (Some(method), Some(path)) = (method, path) else {
        return Err(bad(&"no :method or :path"));
    };
    let method = http::Method::from_bytes(method).map_err(|e| bad(&e))?;
    let mut head = RequestHeader::build(method, path, None).map_err(|e| bad(&e))?;
    let host = match authority {
        Some(a) if !a.is_empty() => a,
        _ => endpoint.label.as_bytes(),
    };
    let value = |v: &[u8]| http::HeaderValue::from_bytes(v).map_err(|e| bad(&e));
    head.insert_header(http::header::HOST, value(host)?)
        .map_err(|e| bad(&e))?;
    for (k, v) in headers {
        if k.first() == Some(&b':') {
            continue;
        }
        let name = http::HeaderName::from_bytes(k).map_err(|e| bad(&e))?;
        head.append_header(name, value(v)?).map_err(|e| bad(&e))?;
    }
    if !body.is_empty() && head.headers.get(http::header::CONTENT_LENGTH).is_none() {
        head.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(|e| bad(&e))?;
    }
    Ok(head)
}

/// Why one attempt failed, and whether the server had answered anything.
struct Failed {
    message: String,
    answered: bool,
}

/// One attempt on `session`: the request, then the response read to its end.
async fn attempt(
    session: &mut HttpSession,
    head: RequestHeader,
    body: &Bytes,
    read_timeout: Option<Duration>,
) -> Result<CalloutResponse, Failed> {
    let before = |e: pingora::Error| Failed {
        message: e.to_string(),
        answered: false,
    };
    session.set_read_timeout(read_timeout);
    session
        .write_request_header(Box::new(head))
        .await
        .map_err(|e| before(*e))?;
    if !body.is_empty() {
        session
            .write_request_body(body.clone(), true)
            .await
            .map_err(|e| before(*e))?;
    }
    session
        .finish_request_body()
        .await
        .map_err(|e| before(*e))?;
    session
        .read_response_header()
        .await
        .map_err(|e| before(*e))?;
    let after = |message: String| Failed {
        message,
        answered: true,
    };
    let resp = session
        .response_header()
        .ok_or_else(|| after("no response head".into()))?;
    let mut headers: HeaderList = Vec::with_capacity(resp.headers.len() + 1);
    headers.push((
        b":status".to_vec(),
        resp.status.as_str().as_bytes().to_vec(),
    ));
    for (k, v) in resp.headers.iter() {
        headers.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| after(format!("reading the callout response: {e}")))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BODY {
            return Err(after(format!(
                "the callout response body is over {MAX_RESPONSE_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    // Trailers come only over HTTP/2 (pingora drops HTTP/1.1 chunked trailers).
    let mut trailers: HeaderList = Vec::new();
    if let HttpSession::H2(h2) = session {
        if let Some(t) = h2
            .read_trailers()
            .await
            .map_err(|e| after(format!("reading the callout response trailers: {e}")))?
        {
            trailers.reserve(t.len());
            for (k, v) in t.iter() {
                trailers.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
        }
    }
    Ok(CalloutResponse {
        headers,
        body,
        trailers,
    })
}

async fn exchange(
    pool: &Pool,
    headers: &HeaderList,
    body: &Bytes,
) -> Result<CalloutResponse, String> {
    let idx = pool
        .select(None, Tried::default(), None)
        .ok_or("the upstream has no endpoint")?;
    let endpoint = &pool.endpoints[idx];
    let peer: Box<HttpPeer> = endpoint.peer();
    let peer = &*peer;
    let read_timeout = peer.options.read_timeout;
    let head = request_head(headers, body, endpoint)?;
    let idempotent = head.method.is_idempotent();
    loop {
        let (mut session, reused) = connector()
            .get_http_session(peer)
            .await
            .map_err(|e| format!("connect to {}: {e}", endpoint.label))?;
        match attempt(&mut session, head.clone(), body, read_timeout).await {
            Ok(resp) => {
                connector()
                    .release_http_session(session, peer, Some(IDLE_FOR))
                    .await;
                return Ok(resp);
            }
            // The server closed the kept connection before answering: again, on the next
            // kept one or (once the kept ones are used up) a new one.
            Err(f) if reused && idempotent && !f.answered => {
                tracing::debug!(
                    target: "sluice::plugin",
                    upstream = %pool.name,
                    error = %f.message,
                    "kept callout connection closed; sending again"
                );
            }
            Err(f) => return Err(f.message),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pools' transport, through the host's dispatch: what reaches a real server on
    //! 127.0.0.1 and what the plugin would be given.

    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use crate::config::{Balancing, HostHeader, Protocol, Upstream, UpstreamTls};
    use crate::upstream::Pool;
    use crate::wasm::callout::{dispatch, CalloutDone, CalloutRequest, CalloutSink};
    use crate::wasm::stream::HeaderList;

    fn pool(label: &str, addr: SocketAddr, tls: bool, read: Duration, p: Protocol) -> Arc<Pool> {
        Arc::new(Pool::new(&Upstream {
            name: "svc".into(),
            endpoints: vec![(label.to_string(), addr)],
            tls: tls.then_some(UpstreamTls {
                sni: None,
                verify: false,
                ca: None,
            }),
            protocol: p,
            balancing: Balancing::RoundRobin,
            health_check: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: read,
            host_header: HostHeader::Preserve,
        }))
    }

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Dispatches a call to `pool` as token `token`; its result.
    fn call(
        pool: &Arc<Pool>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
        token: u32,
    ) -> CalloutDone {
        let (tx, mut rx) = unbounded_channel();
        let request = CalloutRequest {
            target: pool.clone(),
            headers: list(headers),
            body: Bytes::from_static(b"ping"),
            timeout,
        };
        dispatch(request, token, 0, CalloutSink::Request(tx));
        next(&mut rx)
    }

    fn next(rx: &mut UnboundedReceiver<CalloutDone>) -> CalloutDone {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(done) => return done,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no callout result: {e}"),
            }
        }
    }

    /// A plain HTTP/1.1 server answering `200 ok` to each request, reporting each head.
    fn head_server() -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        (addr, heads)
    }

    fn status(done: &CalloutDone) -> Option<Vec<u8>> {
        let r = done.response()?;
        crate::wasm::stream::list_get(&r.headers, b":status").map(<[u8]>::to_vec)
    }

    /// An empty `:authority` is sent as the endpoint as written in the config (a name), not
    /// the address it resolved to.
    #[test]
    fn an_empty_authority_is_sent_as_the_endpoint() {
        let (addr, heads) = head_server();
        let label = format!("localhost:{}", addr.port());
        let p = pool(&label, addr, false, Duration::from_secs(2), Protocol::Http1);
        let headers = [
            (":method", "GET"),
            (":path", "/who"),
            (":authority", ""),
            ("x-call", "1"),
        ];
        let done = call(&p, &headers, Some(Duration::from_secs(5)), 3);
        assert_eq!(done.token, 3);
        assert_eq!(status(&done).as_deref(), Some(&b"200"[..]));
        let head = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(head.starts_with("GET /who HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains(&format!("\r\nhost: {label}\r\n")), "{head}");
        assert!(lower.contains("\r\nx-call: 1\r\n"), "{head}");
        assert!(lower.contains("\r\ncontent-length: 4\r\n"), "{head}");
    }

    /// Without a deadline of the plugin's own, the upstream's read timeout still ends a call
    /// to an endpoint that never answers.
    #[test]
    fn without_a_deadline_the_read_timeout_ends_the_call() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
        let read = Duration::from_millis(300);
        let p = pool(&addr.to_string(), addr, false, read, Protocol::Http1);
        let sent = Instant::now();
        let done = call(
            &p,
            &[(":method", "GET"), (":path", "/"), (":authority", "a")],
            None,
            1,
        );
        assert!(done.response().is_none(), "a response from a mute server");
        assert!(sent.elapsed() >= read, "ended after {:?}", sent.elapsed());
        drop(holder.join().unwrap());
    }

    /// A TLS pool is spoken to in TLS: a plain-HTTP server (which would answer 200 to any
    /// HTTP request) never sees one, and the call fails; behind a plain pool it answers.
    #[test]
    fn a_tls_pool_speaks_tls() {
        let (addr, heads) = head_server();
        let headers = [(":method", "GET"), (":path", "/tls"), (":authority", "a")];
        let label = addr.to_string();
        let tls = pool(&label, addr, true, Duration::from_secs(2), Protocol::Http1);
        let done = call(&tls, &headers, Some(Duration::from_secs(5)), 7);
        assert_eq!(done.token, 7);
        assert!(
            done.response().is_none(),
            "a TLS pool got a plain-HTTP answer"
        );
        assert!(
            heads
                .try_recv()
                .map_or(true, |h| !h.starts_with("GET /tls")),
            "the plain server read a plain request from a TLS pool"
        );
        let plain = pool(&label, addr, false, Duration::from_secs(2), Protocol::Http1);
        let done = call(&plain, &headers, Some(Duration::from_secs(5)), 8);
        assert_eq!(status(&done).as_deref(), Some(&b"200"[..]));
        let head = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(head.starts_with("GET /tls HTTP/1.1\r\n"), "{head}");
    }

    /// A call to an `h2` pool speaks HTTP/2 with prior knowledge, reads the response trailers,
    /// and later calls share the connection.
    #[test]
    fn an_h2_pool_reads_trailers_and_shares_its_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(tcp).await else {
                            return;
                        };
                        while let Some(Ok((req, mut respond))) = conn.accept().await {
                            let path = req.uri().path().to_string();
                            let resp = http::Response::builder()
                                .header("x-h2", "yes")
                                .body(())
                                .unwrap();
                            let mut send = respond.send_response(resp, false).unwrap();
                            send.send_data(Bytes::from(format!("pong {path}")), false)
                                .unwrap();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("x-t", "done".parse().unwrap());
                            send.send_trailers(trailers).unwrap();
                        }
                    });
                }
            });
        });
        let p = pool(
            &addr.to_string(),
            addr,
            false,
            Duration::from_secs(5),
            Protocol::H2,
        );
        for token in [1, 2, 3] {
            let path = format!("/call/{token}");
            let headers = [
                (":method", "POST"),
                (":path", path.as_str()),
                (":authority", "svc"),
            ];
            let done = call(&p, &headers, Some(Duration::from_secs(5)), token);
            assert_eq!(done.token, token);
            let r = done.response().cloned().expect("the h2 callout failed");
            assert!(r.headers.contains(&(b":status".to_vec(), b"200".to_vec())));
            assert!(r.headers.contains(&(b"x-h2".to_vec(), b"yes".to_vec())));
            assert_eq!(r.body, format!("pong {path}").into_bytes());
            assert_eq!(r.trailers, list(&[("x-t", "done")]));
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one HTTP/2 connection"
        );
    }
}
