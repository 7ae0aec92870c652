//! gRPC calls and streams made by plugins (`proxy_grpc_call`, `proxy_grpc_stream`,
//! `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`).
//!
//! A call is an HTTP/2 stream to an endpoint of an upstream pool whose `protocol` is `h2` (or
//! `auto`, when the endpoint picks HTTP/2), opened by the target's transport
//! ([`CalloutTarget::open_h2`]; in the proxy, the same connector as HTTP callouts, so it
//! shares the pool's TLS settings and connections). The request is
//! `POST /<service>/<method>` with `content-type: application/grpc`, `te: trailers`, the
//! plugin's initial metadata and, when the plugin set a deadline, `grpc-timeout`. Messages are
//! framed as gRPC length-prefixed messages (uncompressed) both ways.
//!
//! What comes back is delivered to the plugin as events, in order: the initial metadata (the
//! response headers), each message, the trailing metadata, then the close with the gRPC
//! status (`grpc-status` of the trailers, or of the headers for a trailers-only answer). A
//! failure to connect or a broken stream closes the call with UNAVAILABLE (14), a deadline
//! with DEADLINE_EXCEEDED (4), a response that is not gRPC (HTTP status other than 200, or
//! over HTTP/1.1) with UNKNOWN (2) or UNAVAILABLE, a message over [`MAX_MESSAGE`] with
//! RESOURCE_EXHAUSTED (8). A cancelled call (`proxy_grpc_cancel`) delivers nothing more.
//!
//! A unary call (`proxy_grpc_call`) delivers one event, as on the reference host (and as the
//! SDKs expect): its answer when it ended OK with one message, else its close with the status.
//!
//! Messages go out as HTTP/2 flow control lets them (as fast as the server reads). What the
//! plugin sent and the server has not yet made room for waits in the call's queue, up to
//! [`MAX_QUEUED`] bytes; a send beyond that closes the call with RESOURCE_EXHAUSTED, so that a
//! plugin sending faster than the server reads cannot make the host buffer without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

pub use super::events::GrpcEvent;
use super::events::{CalloutDone, CalloutEvent, CalloutSink};
use super::header_list::HeaderList;
use super::target::{CalloutTarget, H2Call};

/// Largest message accepted from the server (and from the plugin).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Most bytes of framed messages a call holds for the server (sent by the plugin, not yet
/// allowed out by HTTP/2 flow control): two of the largest messages.
pub const MAX_QUEUED: usize = 2 * (MAX_MESSAGE + 5);

/// gRPC status codes Sluice produces itself.
pub mod code {
    /// OK.
    pub const OK: u32 = 0;
    /// UNKNOWN.
    pub const UNKNOWN: u32 = 2;
    /// DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// RESOURCE_EXHAUSTED.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// INTERNAL.
    pub const INTERNAL: u32 = 13;
    /// UNAVAILABLE.
    pub const UNAVAILABLE: u32 = 14;
}

/// A call to start.
pub struct GrpcRequest {
    /// Where it goes (HTTP/2).
    pub target: Arc<dyn CalloutTarget>,
    /// Fully qualified service name (`package.Service`).
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata (lowercase names, no pseudo-headers).
    pub metadata: HeaderList,
    /// Deadline of the whole call (`None`: none of the plugin's own).
    pub timeout: Option<Duration>,
}

/// What the plugin sends on an open call.
#[derive(Debug)]
pub enum GrpcSend {
    /// A message; `true`: the last one (the request half ends).
    Message(Bytes, bool),
    /// End the request half without a message (`proxy_grpc_close`).
    Close,
}

/// The plugin's handle on a running call (kept by token in the request's state, or in the
/// VM for root-context calls). Dropping it ends the call at once, with no further events:
/// `proxy_grpc_cancel`, or the end of the request or VM that made it.
#[derive(Debug)]
pub struct GrpcHandle {
    /// Messages to send.
    sender: UnboundedSender<GrpcSend>,
    /// A unary call (`proxy_grpc_call`), not a stream.
    pub unary: bool,
    /// Bytes of framed messages sent and not yet handed to HTTP/2.
    queued: Arc<AtomicUsize>,
    /// Signalled when a send would pass [`MAX_QUEUED`] (the queue itself is stuck behind
    /// what the server does not read, so it cannot carry the news).
    overflow: Arc<tokio::sync::Notify>,
    abort: tokio::task::AbortHandle,
}

impl GrpcHandle {
    /// Queues `message` (`end`: the last one), or, past [`MAX_QUEUED`], ends the call with
    /// RESOURCE_EXHAUSTED. A call whose transport already ended takes it and drops it: for the
    /// plugin the call lasts until its close is delivered (as on the reference host, where
    /// nothing ends between two calls of one callback).
    pub fn send(&self, message: Bytes, end: bool) {
        let framed = message.len() + 5;
        let queued = self.queued.fetch_add(framed, Ordering::SeqCst) + framed;
        if queued > MAX_QUEUED {
            self.overflow.notify_one();
            return;
        }
        let _ = self.sender.send(GrpcSend::Message(message, end));
    }

    /// Ends the request half (`proxy_grpc_close` on a stream); what the server still sends is
    /// delivered.
    pub fn close(&self) {
        let _ = self.sender.send(GrpcSend::Close);
    }
}

impl Drop for GrpcHandle {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// Frames `msg` as a gRPC length-prefixed message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Takes the complete messages off the front of `buf`. Errors: a compressed message (none
/// was asked for) or one over [`MAX_MESSAGE`].
fn unframe(buf: &mut BytesMut) -> Result<Vec<Vec<u8>>, (u32, String)> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        if buf[0] != 0 {
            return Err((
                code::INTERNAL,
                "the server sent a compressed message (none was asked for)".into(),
            ));
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err((
                code::RESOURCE_EXHAUSTED,
                format!("a message of {len} bytes is over {MAX_MESSAGE}"),
            ));
        }
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).to_vec());
    }
    Ok(out)
}

/// `grpc-timeout` for `d` (milliseconds, at most 8 digits as the protocol allows).
fn grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis().clamp(1, 99_999_999);
    format!("{ms}m")
}

/// Starts the call; events go to `sink` as `token` of chain member `member`. `first`: a
/// message sent at once (`proxy_grpc_call`, then the request half ends).
pub fn start(
    req: GrpcRequest,
    first: Option<Bytes>,
    token: u32,
    member: usize,
    sink: CalloutSink,
) -> GrpcHandle {
    let (tx, rx) = unbounded_channel();
    let unary = first.is_some();
    let queued = Arc::new(AtomicUsize::new(0));
    let overflow = Arc::new(tokio::sync::Notify::new());
    if let Some(m) = first {
        queued.store(m.len() + 5, Ordering::SeqCst);
        let _ = tx.send(GrpcSend::Message(m, true));
    }
    let outgoing = Outgoing {
        writer: None,
        pending: None,
        rx,
        queued: queued.clone(),
        overflow: overflow.clone(),
    };
    let task = async move {
        let reply: std::sync::Mutex<Option<Result<Vec<u8>, ()>>> = Default::default();
        let deliver = |event: GrpcEvent| {
            sink.deliver(CalloutDone {
                token,
                member,
                event: CalloutEvent::Grpc(event),
            })
        };
        let emit = |event: GrpcEvent| {
            if !unary {
                return deliver(event);
            }
            // A unary call keeps its one message for the end.
            if let GrpcEvent::Message(m) = event {
                let mut r = reply.lock().unwrap_or_else(|p| p.into_inner());
                *r = match r.take() {
                    None => Some(Ok(m)),
                    Some(_) => Some(Err(())),
                };
            }
        };
        let outcome = match req.timeout {
            Some(limit) => tokio::time::timeout(limit, exchange(&req, outgoing, &emit))
                .await
                .unwrap_or_else(|_| {
                    Err((
                        code::DEADLINE_EXCEEDED,
                        format!("no answer within {} ms", limit.as_millis()),
                    ))
                }),
            None => exchange(&req, outgoing, &emit).await,
        };
        let (status, message) = match outcome {
            Ok(s) => s,
            Err((status, message)) => {
                tracing::debug!(target: "sluice::plugin", upstream = %req.target.name(), status, %message, "gRPC call failed");
                (status, message)
            }
        };
        if unary {
            match (
                status,
                reply.into_inner().unwrap_or_else(|p| p.into_inner()),
            ) {
                (code::OK, Some(Ok(m))) => return deliver(GrpcEvent::UnaryReply(m)),
                (code::OK, Some(Err(()))) => {
                    return deliver(GrpcEvent::Close {
                        status: code::INTERNAL,
                        message: "a unary call was answered with several messages".into(),
                    })
                }
                (code::OK, None) => {
                    return deliver(GrpcEvent::Close {
                        status: code::INTERNAL,
                        message: "a unary call was answered with no message".into(),
                    })
                }
                _ => {}
            }
        }
        deliver(GrpcEvent::Close { status, message });
    };
    let handle = super::callout::runtime().spawn(task);
    GrpcHandle {
        sender: tx,
        unary,
        queued,
        overflow,
        abort: handle.abort_handle(),
    }
}

type Failure = (u32, String);

fn unavailable(e: impl std::fmt::Display) -> Failure {
    (code::UNAVAILABLE, e.to_string())
}

/// Reads a header list out of a header map.
fn list(map: &http::HeaderMap) -> HeaderList {
    map.iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// `grpc-status` and `grpc-message` of `map`, if it has a status.
fn status_of(map: &http::HeaderMap) -> Option<(u32, String)> {
    let status = map.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = map
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some((status, message))
}

/// The call on one HTTP/2 stream: returns the final status, or why it failed.
/// The request half of a call: the plugin's messages, sent as flow control allows.
struct Outgoing {
    /// The request body (`None` before the head went out, and once the half ended).
    writer: Option<h2::SendStream<Bytes>>,
    /// The framed message being sent (what is left of it), and whether the half ends with it.
    pending: Option<(Bytes, bool)>,
    rx: UnboundedReceiver<GrpcSend>,
    /// Shared with the handle: bytes not yet handed to HTTP/2.
    queued: Arc<AtomicUsize>,
    /// Shared with the handle: the plugin sent past [`MAX_QUEUED`].
    overflow: Arc<tokio::sync::Notify>,
}

impl Outgoing {
    /// Whether the half is still open (something may still be sent).
    fn open(&self) -> bool {
        self.writer.is_some()
    }

    /// One step: takes the next message from the plugin, or sends what flow control allows of
    /// the current one. Cancel-safe: state changes only after each await. Never ends while
    /// the half is closed (a `select!` branch guarded by [`Outgoing::open`]).
    async fn step(&mut self) -> Result<(), Failure> {
        let Some(w) = self.writer.as_mut() else {
            return std::future::pending().await;
        };
        let Some((data, end)) = self.pending.as_mut() else {
            self.pending = Some(match self.rx.recv().await {
                Some(GrpcSend::Message(b, end)) => (frame(&b), end),
                // The plugin's handle is gone (cancelled calls are aborted): end the half.
                Some(GrpcSend::Close) | None => (Bytes::new(), true),
            });
            return Ok(());
        };
        let piece = if data.is_empty() {
            Bytes::new()
        } else {
            w.reserve_capacity(data.len());
            match std::future::poll_fn(|cx| w.poll_capacity(cx)).await {
                Some(Ok(0)) => return Ok(()),
                Some(Ok(n)) => data.split_to(n.min(data.len())),
                // The stream was reset: the response side says how the call ended.
                Some(Err(_)) | None => {
                    self.writer = None;
                    return Ok(());
                }
            }
        };
        self.queued.fetch_sub(piece.len(), Ordering::SeqCst);
        let last = data.is_empty();
        let fin = last && *end;
        if w.send_data(piece, fin).is_err() || fin {
            self.writer = None;
        }
        if last {
            self.pending = None;
        }
        Ok(())
    }
}

/// Ends when the plugin sent past [`MAX_QUEUED`], with the failure to close the call with.
async fn overflowed(overflow: &tokio::sync::Notify) -> Failure {
    overflow.notified().await;
    (
        code::RESOURCE_EXHAUSTED,
        format!("the plugin sent more than {MAX_QUEUED} bytes the server did not read"),
    )
}

async fn exchange(
    req: &GrpcRequest,
    mut out: Outgoing,
    emit: &impl Fn(GrpcEvent),
) -> Result<(u32, String), Failure> {
    let path = format!("/{}/{}", req.service, req.method);
    let bad = |e: &dyn std::fmt::Display| (code::INTERNAL, format!("bad gRPC request: {e}"));
    let mut head = http::HeaderMap::new();
    head.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    head.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    if let Some(t) = req.timeout {
        let v = http::HeaderValue::from_str(&grpc_timeout(t)).map_err(|e| bad(&e))?;
        head.insert("grpc-timeout", v);
    }
    for (k, v) in &req.metadata {
        let name = http::HeaderName::from_bytes(k).map_err(|e| bad(&e))?;
        let value = http::HeaderValue::from_bytes(v).map_err(|e| bad(&e))?;
        head.append(name, value);
    }
    let mut h2: Box<dyn H2Call> = req.target.open_h2(&path, head).await.map_err(unavailable)?;
    out.writer = h2.take_request_body();
    let overflow = out.overflow.clone();
    // The response head, while the plugin may already be sending.
    let (status, headers) = loop {
        tokio::select! {
            r = out.step(), if out.open() => r?,
            f = overflowed(&overflow) => return Err(f),
            r = h2.response_header() => break r.map_err(unavailable)?,
        }
    };
    if status != http::StatusCode::OK {
        return Err((
            code::UNKNOWN,
            format!("the server answered HTTP {}", status.as_u16()),
        ));
    }
    let head_status = status_of(&headers);
    emit(GrpcEvent::InitialMetadata(list(&headers)));
    if let Some(s) = head_status {
        // Trailers-only: the status came with the head.
        return Ok(s);
    }
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::select! {
            r = out.step(), if out.open() => {
                r?;
                continue;
            }
            f = overflowed(&overflow) => return Err(f),
            c = h2.response_body() => c.map_err(unavailable)?,
        };
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        for m in unframe(&mut buf)? {
            emit(GrpcEvent::Message(m));
        }
    }
    if !buf.is_empty() {
        return Err((code::INTERNAL, "the stream ended inside a message".into()));
    }
    let trailers = h2
        .trailers()
        .await
        .map_err(unavailable)?
        .unwrap_or_default();
    let status = status_of(&trailers);
    emit(GrpcEvent::TrailingMetadata(list(&trailers)));
    let (status, message) =
        status.unwrap_or((code::UNKNOWN, "the server sent no grpc-status".into()));
    if !out.open() {
        h2.release().await;
    }
    Ok((status, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&frame(b"one"));
        b.extend_from_slice(&frame(b""));
        let two = frame(b"two");
        b.extend_from_slice(&two[..4]);
        assert_eq!(unframe(&mut b).unwrap(), vec![b"one".to_vec(), Vec::new()]);
        b.extend_from_slice(&two[4..]);
        assert_eq!(unframe(&mut b).unwrap(), vec![b"two".to_vec()]);
        assert!(b.is_empty());
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 1, b'x'][..]);
        assert_eq!(unframe(&mut compressed).unwrap_err().0, code::INTERNAL);
        let mut huge = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(unframe(&mut huge).unwrap_err().0, code::RESOURCE_EXHAUSTED);
    }

    #[test]
    fn timeouts_and_statuses() {
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(grpc_timeout(Duration::from_micros(10)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(10_000_000)), "99999999m");
        let mut m = http::HeaderMap::new();
        assert_eq!(status_of(&m), None);
        m.insert("grpc-status", "7".parse().unwrap());
        m.insert("grpc-message", "no%20entry".parse().unwrap());
        assert_eq!(status_of(&m), Some((7, "no%20entry".into())));
    }
}
