//! gRPC calls and streams to an upstream that speaks HTTP/2 (`proxy_grpc_call`,
//! `proxy_grpc_stream`, `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`).
//!
//! Messages are bytes: encode and decode them with the protobuf library of your choice. The
//! host frames them (length prefix, no compression) and reads the status from the trailers.

use std::fmt;
use std::time::Duration;

use sluice_abi::{BufferType, MapType};

use crate::error::{Context, Error};
use crate::headers::{decode_pairs, encode_pairs};
use crate::hostcalls;
use crate::reply::Action;
use crate::request::Request;

/// gRPC metadata as the host delivers it: (name, value) pairs, values read as UTF-8 (lossily).
pub type Metadata = Vec<(String, String)>;

/// A gRPC status: its code (0 is OK) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    code: u32,
    message: String,
}

/// The names of the gRPC status codes, by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl GrpcStatus {
    /// A status as a test would script it.
    pub fn new(code: u32, message: impl Into<String>) -> GrpcStatus {
        GrpcStatus {
            code,
            message: message.into(),
        }
    }

    /// The code: 0 OK, 4 DEADLINE_EXCEEDED, 14 UNAVAILABLE…
    pub fn code(&self) -> u32 {
        self.code
    }

    /// The code's name (`PERMISSION_DENIED`), or `UNKNOWN_CODE` for a code gRPC does not define.
    pub fn code_name(&self) -> &'static str {
        usize::try_from(self.code)
            .ok()
            .and_then(|c| CODE_NAMES.get(c))
            .copied()
            .unwrap_or("UNKNOWN_CODE")
    }

    /// The message (`grpc-message`, as the server sent it: percent-encoded).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the code is OK.
    pub fn is_ok(&self) -> bool {
        self.code == 0
    }

    /// Reads the status the host is delivering (in `proxy_on_grpc_close`); `code` is the one
    /// the callback got, used if the host has no status to give.
    pub(crate) fn from_host(code: u32) -> GrpcStatus {
        match hostcalls::status() {
            Ok((c, message)) => GrpcStatus {
                code: c,
                message: String::from_utf8_lossy(&message).into_owned(),
            },
            Err(_) => GrpcStatus::new(code, ""),
        }
    }
}

impl fmt::Display for GrpcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gRPC status {} {}", self.code, self.code_name())?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// A gRPC call to make: a method, its metadata, and for a unary call its message and deadline.
///
/// ```
/// use std::time::Duration;
/// use sluice_sdk::GrpcCall;
/// let call = GrpcCall::new("authz.v1.Authz", "Check")
///     .metadata("x-tenant", "acme")
///     .message(b"\x0a\x03bob".to_vec())
///     .timeout(Duration::from_millis(200));
/// assert_eq!(call.path(), "/authz.v1.Authz/Check");
/// ```
#[derive(Debug, Clone)]
pub struct GrpcCall {
    service: String,
    method: String,
    metadata: Vec<(String, Vec<u8>)>,
    message: Option<Vec<u8>>,
    timeout: Duration,
}

impl GrpcCall {
    /// A call of `service`/`method` (`service` with its package: `pkg.Service`), no metadata,
    /// an empty message and a 1 s deadline.
    pub fn new(service: impl Into<String>, method: impl Into<String>) -> GrpcCall {
        GrpcCall {
            service: service.into(),
            method: method.into(),
            metadata: Vec::new(),
            message: None,
            timeout: Duration::from_secs(1),
        }
    }

    /// Adds initial metadata (a request header of the call).
    pub fn metadata(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> GrpcCall {
        self.metadata.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// The message (serialized). For a stream it is sent first, right after the stream opens.
    pub fn message(mut self, message: impl Into<Vec<u8>>) -> GrpcCall {
        self.message = Some(message.into());
        self
    }

    /// The deadline of a unary call (streams have none: cancel them).
    pub fn timeout(mut self, timeout: Duration) -> GrpcCall {
        self.timeout = timeout;
        self
    }

    /// The method's path, `/service/method`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }

    /// Makes the unary call from the plugin's root context (in
    /// [`Plugin::on_tick`](crate::Plugin::on_tick), say); `on_reply` gets the answer, or the
    /// status the call ended with. Calls made while handling a request go through
    /// [`Request::grpc_call`] instead. Returns the host's token.
    pub fn send_from_root(
        &self,
        upstream: &str,
        on_reply: impl FnOnce(Result<Vec<u8>, GrpcStatus>) + 'static,
    ) -> Result<u32, Error> {
        let token = self.send(upstream)?;
        crate::dispatcher::await_root_grpc(token, Box::new(on_reply));
        Ok(token)
    }

    /// Opens a stream of this method from the plugin's root context; `handler` gets its
    /// events (with no request: `req` is `None`). Streams opened while handling a request go
    /// through [`Request::grpc_stream`] instead.
    pub fn open_stream_from_root(
        &self,
        upstream: &str,
        handler: impl GrpcStreamHandler,
    ) -> Result<GrpcStream, Error> {
        let stream = self.open(upstream)?;
        crate::dispatcher::await_stream(stream.token, None, Box::new(handler));
        self.send_first(stream)
    }

    fn encoded_metadata(&self) -> Result<Vec<u8>, Error> {
        encode_pairs(
            self.metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice())),
        )
    }

    /// Sends the unary call to `upstream`; returns the host's token.
    pub(crate) fn send(&self, upstream: &str) -> Result<u32, Error> {
        let metadata = self.encoded_metadata()?;
        // As for HTTP calls: a signed 32-bit count of milliseconds, never 0 (no deadline).
        let ms = u32::try_from(self.timeout.as_millis())
            .unwrap_or(u32::MAX)
            .clamp(1, i32::MAX as u32);
        let message = self.message.as_deref().unwrap_or_default();
        hostcalls::grpc_call(
            upstream,
            &self.service,
            &self.method,
            &metadata,
            message,
            ms,
        )
        .during("make a gRPC call")
    }

    /// Opens a stream of this method on `upstream` (its handler not yet registered).
    pub(crate) fn open(&self, upstream: &str) -> Result<GrpcStream, Error> {
        let metadata = self.encoded_metadata()?;
        let token = hostcalls::grpc_stream(upstream, &self.service, &self.method, &metadata)
            .during("open a gRPC stream")?;
        Ok(GrpcStream { token })
    }

    /// Sends the call's message on a stream just opened, if it has one.
    pub(crate) fn send_first(&self, stream: GrpcStream) -> Result<GrpcStream, Error> {
        if let Some(m) = &self.message {
            if let Err(e) = stream.send(m) {
                let _ = stream.cancel();
                return Err(e);
            }
        }
        Ok(stream)
    }
}

/// An open gRPC stream (a handle: copy it freely; it refers to the host's token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcStream {
    token: u32,
}

impl GrpcStream {
    pub(crate) fn from_token(token: u32) -> GrpcStream {
        GrpcStream { token }
    }

    /// The host's token for the stream.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Sends one message.
    pub fn send(&self, message: &[u8]) -> Result<(), Error> {
        hostcalls::grpc_send(self.token, message, false).during("send a gRPC message")
    }

    /// Sends the last message: the request half of the stream ends with it.
    pub fn send_last(&self, message: &[u8]) -> Result<(), Error> {
        hostcalls::grpc_send(self.token, message, true).during("send a gRPC message")
    }

    /// Ends the request half of the stream without a message; the server's messages and
    /// status still come.
    pub fn close(&self) -> Result<(), Error> {
        hostcalls::grpc_close(self.token).during("close a gRPC stream")
    }

    /// Cancels the stream: the server sees it reset and no further event reaches the handler
    /// (which is dropped).
    pub fn cancel(&self) -> Result<(), Error> {
        crate::dispatcher::forget_stream(self.token);
        hostcalls::grpc_cancel(self.token).during("cancel a gRPC stream")
    }
}

/// What a gRPC stream's events run. Each event gets the stream, and the request that opened
/// it (`None` for a stream opened from the root context).
///
/// The [`Action`] an event returns decides what happens to that request:
/// [`Action::Continue`] resumes it if it is waiting (paused in
/// [`on_request_headers`](crate::HttpFilter::on_request_headers), or at the end of its body),
/// [`Action::Pause`] leaves it as it is, a reply answers it, and an error fails it as a
/// failing callback does. For root streams the action is not used (an error is logged).
pub trait GrpcStreamHandler: 'static {
    /// The server's initial metadata. Default: nothing.
    fn on_initial_metadata(
        &mut self,
        stream: GrpcStream,
        req: Option<&mut Request>,
        metadata: Metadata,
    ) -> Result<Action, Error> {
        let _ = (stream, req, metadata);
        Ok(Action::Pause)
    }

    /// A message from the server.
    fn on_message(
        &mut self,
        stream: GrpcStream,
        req: Option<&mut Request>,
        message: Vec<u8>,
    ) -> Result<Action, Error>;

    /// The server's trailing metadata (before [`GrpcStreamHandler::on_close`]). Default:
    /// nothing.
    fn on_trailing_metadata(
        &mut self,
        stream: GrpcStream,
        req: Option<&mut Request>,
        metadata: Metadata,
    ) -> Result<Action, Error> {
        let _ = (stream, req, metadata);
        Ok(Action::Pause)
    }

    /// The stream is over, with this status (also when it failed: UNAVAILABLE for an
    /// unreachable upstream, and so on). The handler is dropped afterwards. Default: resume
    /// the request.
    fn on_close(
        &mut self,
        stream: GrpcStream,
        req: Option<&mut Request>,
        status: GrpcStatus,
    ) -> Result<Action, Error> {
        let _ = (stream, req, status);
        Ok(Action::Continue)
    }
}

/// One event of a gRPC call, read from the host.
pub(crate) enum GrpcEvent {
    InitialMetadata(Metadata),
    Message(Vec<u8>),
    TrailingMetadata(Metadata),
    Close(GrpcStatus),
}

impl GrpcEvent {
    /// Reads metadata the host is delivering (initial or trailing).
    pub(crate) fn metadata(map: MapType, count: u32) -> Result<Metadata, Error> {
        if count == 0 {
            return Ok(Vec::new());
        }
        match hostcalls::header_pairs(map).during("read gRPC metadata")? {
            Some(bytes) => decode_pairs(&bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Reads the message the host is delivering.
    pub(crate) fn message(size: usize) -> Result<Vec<u8>, Error> {
        if size == 0 {
            return Ok(Vec::new());
        }
        Ok(hostcalls::buffer(BufferType::GrpcMessage, 0, size)
            .during("read a gRPC message")?
            .unwrap_or_default())
    }

    /// Runs the handler's method for this event.
    pub(crate) fn run(
        self,
        handler: &mut dyn GrpcStreamHandler,
        stream: GrpcStream,
        req: Option<&mut Request>,
    ) -> Result<Action, Error> {
        match self {
            GrpcEvent::InitialMetadata(m) => handler.on_initial_metadata(stream, req, m),
            GrpcEvent::Message(m) => handler.on_message(stream, req, m),
            GrpcEvent::TrailingMetadata(m) => handler.on_trailing_metadata(stream, req, m),
            GrpcEvent::Close(s) => handler.on_close(stream, req, s),
        }
    }
}

impl Request {
    /// Makes a unary gRPC call to `upstream` (a name in the plugin's `allowed_upstreams`, an
    /// HTTP/2 pool on Sluice; a cluster on Envoy). `on_reply` runs when the answer arrives,
    /// with the message or the status the call failed with (DEADLINE_EXCEEDED past the
    /// timeout), and decides as an HTTP call's closure does: return [`Action::Pause`] from the
    /// callback that made the call, then `Continue` from `on_reply` resumes the request.
    pub fn grpc_call(
        &mut self,
        upstream: &str,
        call: GrpcCall,
        on_reply: impl FnOnce(&mut Request, Result<Vec<u8>, GrpcStatus>) -> Result<Action, Error>
            + 'static,
    ) -> Result<(), Error> {
        let token = call.send(upstream)?;
        crate::dispatcher::await_grpc(token, Box::new(on_reply));
        Ok(())
    }

    /// Opens a gRPC stream of `call`'s method on `upstream` (sending `call`'s message first,
    /// if it has one); `handler` gets its events. The stream ends with the request at the
    /// latest: the host cancels what is still open then.
    pub fn grpc_stream(
        &mut self,
        upstream: &str,
        call: &GrpcCall,
        handler: impl GrpcStreamHandler,
    ) -> Result<GrpcStream, Error> {
        let stream = call.open(upstream)?;
        let context = crate::dispatcher::current_context();
        crate::dispatcher::await_stream(stream.token, Some(context), Box::new(handler));
        call.send_first(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_status() {
        let c = GrpcCall::new("pkg.Svc", "Do")
            .metadata("k", "v")
            .message(b"m".to_vec())
            .timeout(Duration::from_millis(5));
        assert_eq!(c.path(), "/pkg.Svc/Do");
        assert_eq!(c.metadata, vec![("k".to_string(), b"v".to_vec())]);
        assert_eq!(
            (c.message.as_deref(), c.timeout),
            (Some(&b"m"[..]), Duration::from_millis(5))
        );
        let s = GrpcStatus::new(7, "no entry");
        assert_eq!((s.code(), s.message(), s.is_ok()), (7, "no entry", false));
        assert_eq!(s.to_string(), "gRPC status 7 PERMISSION_DENIED: no entry");
        assert_eq!(GrpcStatus::new(0, "").to_string(), "gRPC status 0 OK");
        assert_eq!(GrpcStatus::new(99, "").code_name(), "UNKNOWN_CODE");
        // Off wasm the host calls answer Unimplemented; the SDK reports it, never panics.
        let e = c.send("up").unwrap_err();
        assert_eq!(e.status(), Some(sluice_abi::Status::Unimplemented));
        assert!(e.to_string().contains("make a gRPC call"), "{e}");
        let stream = GrpcStream { token: 3 };
        assert!(stream.send(b"x").is_err());
        assert!(stream.cancel().is_err());
    }
}
