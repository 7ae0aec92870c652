//! HTTP callouts (`proxy_http_call`): a request to an upstream named in the config, made off
//! the request path, whose result is delivered to the plugin through
//! `proxy_on_http_call_response` on the context that made it.
//!
//! Callouts run on a small runtime of their own, so they work from any thread (pingora's
//! workers, the ticker). HTTP/1.1 over plain TCP to one of the pool's endpoints, kept alive:
//! a connection whose response was read to its end goes back to the pool's idle list
//! ([`IdleConns`], at most [`MAX_IDLE`] per pool, each for at most [`IDLE_FOR`]) and the next
//! callout to the same endpoint reuses it. A request of an idempotent method that fails on a
//! reused connection before any response (the server closed it meanwhile) is sent once more on
//! a new connection, as HTTP clients do. A pool with
//! TLS is never sent to: config validation refuses it in `allowed_upstreams`, `proxy_http_call`
//! answers `INTERNAL_FAILURE` for it ([`plaintext`]), and the exchange checks the endpoint
//! it picked once more.
//!
//! Deadlines: the plugin's timeout, if any, bounds the whole exchange; the upstream's
//! `connect_timeout_ms` bounds the connect and its `read_timeout_ms` each wait for the response
//! head and for each piece of the body, as they do for proxied requests.
//!
//! `Host` is the plugin's `:authority`; an empty one (which `proxy_http_call` accepts, as the
//! reference host does) is replaced by the chosen endpoint's `host:port` as written in the
//! config. Envoy copies an empty `:authority` into an empty `Host:`, which RFC 9112 allows
//! but some servers refuse (nginx answers 400), so Sluice names the server the call goes to.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc::UnboundedSender;

use super::stream::HeaderList;
use super::vm::{RootEvent, Vm};
use crate::upstream::{Pool, Tried};

/// Most bytes of a callout response body kept.
pub const MAX_RESPONSE_BODY: usize = 4 << 20;

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    /// Response headers with `:status` first.
    pub headers: HeaderList,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers (HTTP/1.1 responses have none here).
    pub trailers: HeaderList,
}

/// A finished callout, addressed to the context that made it.
#[derive(Debug)]
pub struct CalloutDone {
    /// The token the plugin got.
    pub token: u32,
    /// Position of the plugin in the request's chain.
    pub member: usize,
    /// The response; `None` if the call failed (connect error, timeout, bad response).
    pub response: Option<CalloutResponse>,
}

impl CalloutDone {
    /// `(n_headers, body_len, n_trailers)` as `on_http_call_response` reports them, and the
    /// response to make visible during that call.
    pub fn counts(self) -> (u32, u32, u32, Option<CalloutResponse>) {
        match self.response {
            None => (0, 0, 0, None),
            Some(r) => (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
                Some(r),
            ),
        }
    }
}

/// Where a callout's result goes.
#[derive(Clone)]
pub enum CalloutSink {
    /// To the request that made it (its chain waits for it).
    Request(UnboundedSender<CalloutDone>),
    /// To the request whose state is in the store: the channel is made by the first callout
    /// of the request ([`crate::wasm::stream::Stream::callout_sender`]), so a request whose
    /// plugins make none allocates none.
    Stream,
    /// To the root context of a VM (delivered by the ticker thread).
    Root(Weak<Vm>),
}

impl CalloutSink {
    fn deliver(&self, done: CalloutDone) {
        match self {
            CalloutSink::Request(tx) => {
                // The request may be gone; then nobody waits for the answer.
                let _ = tx.send(done);
            }
            CalloutSink::Root(vm) => {
                if let Some(vm) = vm.upgrade() {
                    vm.push_root_event(RootEvent::Callout(done));
                }
            }
            // Resolved to `Request` before dispatch (see `proxy_http_call`).
            CalloutSink::Stream => {}
        }
    }
}

/// A callout to make.
pub struct CalloutRequest {
    /// Target pool.
    pub pool: Arc<Pool>,
    /// Headers with `:method`, `:path`, `:authority` (checked by the caller).
    pub headers: HeaderList,
    /// Body.
    pub body: Bytes,
    /// Deadline for the whole exchange; `None`: the plugin set none (the upstream's connect
    /// and read timeouts still apply).
    pub timeout: Option<Duration>,
}

/// Most idle callout connections kept per pool.
pub const MAX_IDLE: usize = 32;
/// Longest an idle callout connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);

struct IdleConn {
    endpoint: usize,
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// One pool's idle callout connections, the most recently used last. Dropping a connection's
/// sender closes it, so a pool replaced by a reload closes its idle connections with it.
#[derive(Default)]
pub struct IdleConns {
    list: Mutex<Vec<IdleConn>>,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConns({})", self.len())
    }
}

impl IdleConns {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle connections kept now.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently used open connection to `endpoint` (expired and closed ones are
    /// dropped on the way).
    fn take(&self, endpoint: usize, now: Instant) -> Option<SendRequest<Full<Bytes>>> {
        let mut list = self.list();
        list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_FOR);
        let i = list.iter().rposition(|c| c.endpoint == endpoint)?;
        Some(list.remove(i).sender)
    }

    /// Keeps `sender` for the next callout to `endpoint` (the oldest goes when full).
    fn put(&self, endpoint: usize, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut list = self.list();
        if list.len() >= MAX_IDLE {
            list.remove(0);
        }
        list.push(IdleConn {
            endpoint,
            sender,
            since: Instant::now(),
        });
    }
}

/// Whether callouts may be sent to `pool`: they are plain HTTP/1.1, so not if it uses TLS.
pub fn plaintext(pool: &Pool) -> bool {
    !pool.endpoints.iter().any(|e| e.peer().is_tls())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-callout")
            .enable_all()
            .build()
            .expect("cannot start the callout runtime")
    })
}

/// Starts the callout; its result goes to `sink` as `token` of chain member `member`.
pub fn dispatch(req: CalloutRequest, token: u32, member: usize, sink: CalloutSink) {
    runtime().spawn(async move {
        let outcome = match req.timeout {
            Some(limit) => tokio::time::timeout(limit, exchange(&req))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {} ms", limit.as_millis()))),
            None => exchange(&req).await,
        };
        let response = match outcome {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(target: "sluice::plugin", upstream = %req.pool.name, error = %e, "callout failed");
                None
            }
        };
        sink.deliver(CalloutDone {
            token,
            member,
            response,
        });
    });
}

/// `step`, given at most `limit` (`None`: as long as it takes); `what` names it in the error.
async fn within<T>(
    limit: Option<Duration>,
    what: &str,
    step: impl Future<Output = T>,
) -> Result<T, String> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, step)
            .await
            .map_err(|_| format!("{what}: nothing within {} ms", limit.as_millis())),
        None => Ok(step.await),
    }
}

/// A new HTTP/1.1 connection to `endpoint` of the request's pool.
async fn connect(
    endpoint: &crate::upstream::Endpoint,
    connect_timeout: Option<Duration>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = within(
        connect_timeout,
        "connect",
        tokio::net::TcpStream::connect(endpoint.addr),
    )
    .await?
    .map_err(|e| format!("connect to {}: {e}", endpoint.label))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An idle connection to `endpoint` that is ready for a request, if the pool keeps one.
async fn reuse(pool: &Pool, endpoint: usize) -> Option<SendRequest<Full<Bytes>>> {
    while let Some(mut sender) = pool.callout_conns.take(endpoint, Instant::now()) {
        // Ready at once unless the server closed it (then it errs) or the previous
        // exchange's end is still being processed.
        match tokio::time::timeout(Duration::from_millis(100), sender.ready()).await {
            Ok(Ok(())) => return Some(sender),
            _ => continue,
        }
    }
    None
}

/// The callout as an HTTP/1.1 request to `endpoint`.
fn build_request(
    req: &CalloutRequest,
    endpoint: &crate::upstream::Endpoint,
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut builder = http::Request::builder();
    let mut authority = None;
    for (k, v) in &req.headers {
        match k.as_slice() {
            b":method" => builder = builder.method(v.as_slice()),
            b":path" => builder = builder.uri(v.as_slice()),
            b":authority" => authority = Some(v.as_slice()),
            b":scheme" => {}
            _ => builder = builder.header(k.as_slice(), v.as_slice()),
        }
    }
    let host = match authority {
        Some(a) if !a.is_empty() => a,
        _ => endpoint.label.as_bytes(),
    };
    builder = builder.header(http::header::HOST, host);
    builder
        .body(Full::new(req.body.clone()))
        .map_err(|e| format!("bad callout request: {e}"))
}

async fn exchange(req: &CalloutRequest) -> Result<CalloutResponse, String> {
    let idx = req
        .pool
        .select(None, Tried::default(), None)
        .ok_or("the upstream has no endpoint")?;
    let endpoint = &req.pool.endpoints[idx];
    let peer = endpoint.peer();
    if peer.is_tls() {
        return Err(format!(
            "{} uses TLS; callouts are plain HTTP/1.1 and are not sent to it",
            endpoint.label
        ));
    }
    let (connect_timeout, read_timeout) =
        (peer.options.connection_timeout, peer.options.read_timeout);
    let request = build_request(req, endpoint)?;
    let idempotent = request.method().is_idempotent();
    let (mut sender, reused) = match reuse(&req.pool, idx).await {
        Some(s) => (s, true),
        None => (connect(endpoint, connect_timeout).await?, false),
    };
    let waiting = "waiting for the response";
    let resp = match within(read_timeout, waiting, sender.send_request(request)).await? {
        Ok(resp) => resp,
        // The server closed the kept connection before answering: once more on a new one.
        Err(e) if reused && idempotent && (e.is_canceled() || e.is_incomplete_message()) => {
            tracing::debug!(
                target: "sluice::plugin",
                upstream = %req.pool.name,
                error = %e,
                "kept callout connection closed; retrying on a new one"
            );
            sender = connect(endpoint, connect_timeout).await?;
            let request = build_request(req, endpoint)?;
            within(read_timeout, waiting, sender.send_request(request))
                .await?
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut headers: HeaderList = Vec::with_capacity(resp.headers().len() + 1);
    headers.push((
        b":status".to_vec(),
        resp.status().as_str().as_bytes().to_vec(),
    ));
    for (k, v) in resp.headers() {
        headers.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let mut stream = Limited::new(resp.into_body(), MAX_RESPONSE_BODY);
    let mut body = Vec::new();
    while let Some(frame) = within(read_timeout, "reading the response", stream.frame()).await? {
        let frame = frame.map_err(|e| format!("reading the callout response: {e}"))?;
        if let Ok(data) = frame.into_data() {
            body.extend_from_slice(&data);
        }
    }
    // Read to its end: the connection can carry the next callout.
    req.pool.callout_conns.put(idx, sender);
    Ok(CalloutResponse {
        headers,
        body,
        trailers: Vec::new(),
    })
}
