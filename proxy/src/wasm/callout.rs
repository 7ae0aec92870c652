//! HTTP callouts (`proxy_http_call`): a request to an upstream named in the config, made off
//! the request path, whose result is delivered to the plugin through
//! `proxy_on_http_call_response` on the context that made it.
//!
//! Callouts run on a small runtime of their own, so they work from any thread (pingora's
//! workers, the ticker). They go through pingora's HTTP connector with the upstream's own
//! peer settings, as proxied requests do: TLS with SNI and certificate verification when the
//! upstream has `tls:`, the pool's protocol (HTTP/1.1, or HTTP/2 for `h2` and for `auto` when
//! the endpoint picks it: many calls on one connection, response trailers read), and
//! connections kept alive in the connector's pool (a connection whose response was read to its
//! end serves the next callout to that endpoint; idle ones are closed after [`IDLE_FOR`]). A request of an idempotent method that fails on
//! a reused connection before any response (the server closed it meanwhile) is sent again,
//! on the next kept connection or a new one, as HTTP clients do.
//!
//! Deadlines: the plugin's timeout, if any, bounds the whole exchange; the upstream's
//! `connect_timeout_ms` bounds the connect and its `read_timeout_ms` each wait for the response
//! head and for each piece of the body, as they do for proxied requests.
//!
//! `Host` is the plugin's `:authority`; an empty one (which `proxy_http_call` accepts, as the
//! reference host does) is replaced by the chosen endpoint's `host:port` as written in the
//! config. Envoy copies an empty `:authority` into an empty `Host:`, which RFC 9112 allows
//! but some servers refuse (nginx answers 400), so Sluice names the server the call goes to.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
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
    /// Trailers (HTTP/2 only: pingora drops HTTP/1.1 trailers).
    pub trailers: HeaderList,
}

/// What a call delivers to the context that made it.
#[derive(Debug)]
pub enum CalloutEvent {
    /// An HTTP callout's response; `None` if the call failed (connect error, timeout, bad
    /// response).
    Http(Option<CalloutResponse>),
    /// One event of a gRPC call or stream.
    Grpc(super::grpc::GrpcEvent),
}

/// A finished callout (or one event of a gRPC call), addressed to the context that made it.
#[derive(Debug)]
pub struct CalloutDone {
    /// The token the plugin got.
    pub token: u32,
    /// Position of the plugin in the request's chain.
    pub member: usize,
    /// What arrived.
    pub event: CalloutEvent,
}

impl CalloutDone {
    /// The HTTP response delivered (`None`: a failed HTTP call, or a gRPC event).
    pub fn response(&self) -> Option<&CalloutResponse> {
        match &self.event {
            CalloutEvent::Http(r) => r.as_ref(),
            CalloutEvent::Grpc(_) => None,
        }
    }

    /// Whether the call is over with this event (an HTTP response, a gRPC close).
    pub fn ends_call(&self) -> bool {
        use super::grpc::GrpcEvent;
        matches!(
            self.event,
            CalloutEvent::Http(_)
                | CalloutEvent::Grpc(GrpcEvent::Close { .. } | GrpcEvent::UnaryReply(_))
        )
    }

    /// `(n_headers, body_len, n_trailers)` as `on_http_call_response` reports them, and the
    /// response to make visible during that call (an HTTP response).
    pub fn counts(response: Option<CalloutResponse>) -> (u32, u32, u32, Option<CalloutResponse>) {
        match response {
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
    pub(super) fn deliver(&self, done: CalloutDone) {
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

/// Longest an idle callout connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);

/// The connector callouts share (its pool holds their idle connections).
pub(super) fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
}

pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
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
            event: CalloutEvent::Http(response),
        });
    });
}

/// The callout as a request head for `endpoint` (with `Content-Length` when it has a body).
fn request_head(
    req: &CalloutRequest,
    endpoint: &crate::upstream::Endpoint,
) -> Result<RequestHeader, String> {
    let (mut method, mut path, mut authority) = (None, None, None);
    for (k, v) in &req.headers {
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
    for (k, v) in &req.headers {
        if k.first() == Some(&b':') {
            continue;
        }
        let name = http::HeaderName::from_bytes(k).map_err(|e| bad(&e))?;
        head.append_header(name, value(v)?).map_err(|e| bad(&e))?;
    }
    if !req.body.is_empty() && head.headers.get(http::header::CONTENT_LENGTH).is_none() {
        head.insert_header(http::header::CONTENT_LENGTH, req.body.len())
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

async fn exchange(req: &CalloutRequest) -> Result<CalloutResponse, String> {
    let idx = req
        .pool
        .select(None, Tried::default(), None)
        .ok_or("the upstream has no endpoint")?;
    let endpoint = &req.pool.endpoints[idx];
    let peer: Box<HttpPeer> = endpoint.peer();
    let peer = &*peer;
    let read_timeout = peer.options.read_timeout;
    let head = request_head(req, endpoint)?;
    let idempotent = head.method.is_idempotent();
    loop {
        let (mut session, reused) = connector()
            .get_http_session(peer)
            .await
            .map_err(|e| format!("connect to {}: {e}", endpoint.label))?;
        match attempt(&mut session, head.clone(), &req.body, read_timeout).await {
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
                    upstream = %req.pool.name,
                    error = %f.message,
                    "kept callout connection closed; sending again"
                );
            }
            Err(f) => return Err(f.message),
        }
    }
}
