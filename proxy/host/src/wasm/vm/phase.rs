//! What a guest call is: its phase (a metric label), the stream callback and the gRPC
//! callback it runs.

use crate::wasm::events::GrpcEvent;

/// The phase a guest call belongs to (a metric label). Request trailers have none: pingora
/// gives no hook for them, so `on_request_trailers` is never called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `_initialize`/`main`/`_start`, root context creation, `on_vm_start`.
    Start,
    /// `on_configure`.
    Configure,
    /// `on_tick`.
    Tick,
    /// Stream context creation.
    Create,
    /// `on_request_headers`.
    RequestHeaders,
    /// `on_request_body`.
    RequestBody,
    /// `on_response_headers`.
    ResponseHeaders,
    /// `on_response_body`.
    ResponseBody,
    /// `on_response_trailers`.
    ResponseTrailers,
    /// `on_http_call_response`.
    HttpCallResponse,
    /// The gRPC callbacks (`on_grpc_receive_initial_metadata`, `on_grpc_receive`,
    /// `on_grpc_receive_trailing_metadata`, `on_grpc_close`).
    Grpc,
    /// `on_queue_ready`.
    QueueReady,
    /// `on_log`.
    Log,
    /// `on_done` / `on_delete`.
    Done,
}

impl Phase {
    /// All phases, in label order.
    pub const ALL: [Phase; 14] = [
        Phase::Start,
        Phase::Configure,
        Phase::Tick,
        Phase::Create,
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
        Phase::HttpCallResponse,
        Phase::Grpc,
        Phase::QueueReady,
        Phase::Log,
        Phase::Done,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "vm_start",
            Phase::Configure => "configure",
            Phase::Tick => "tick",
            Phase::Create => "context_create",
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
            Phase::HttpCallResponse => "http_call_response",
            Phase::Grpc => "grpc",
            Phase::QueueReady => "queue_ready",
            Phase::Log => "log",
            Phase::Done => "done",
        }
    }
}

/// A stream callback.
#[derive(Debug, Clone, Copy)]
pub enum StreamCall {
    /// `on_request_headers(n, end_of_stream)`.
    RequestHeaders(u32, bool),
    /// `on_request_body(len, end_of_stream)`.
    RequestBody(u32, bool),
    /// `on_response_headers(n, end_of_stream)`.
    ResponseHeaders(u32, bool),
    /// `on_response_body(len, end_of_stream)`.
    ResponseBody(u32, bool),
    /// `on_response_trailers(n)`.
    ResponseTrailers(u32),
    /// `on_http_call_response(token, n_headers, body_len, n_trailers)`.
    HttpCallResponse(u32, u32, u32, u32),
    /// One of the gRPC callbacks, with the call's token and its count, length or status.
    Grpc(GrpcCallback, u32, u32),
    /// `on_log`.
    Log,
}

impl StreamCall {
    pub(super) fn phase(self) -> Phase {
        match self {
            StreamCall::RequestHeaders(..) => Phase::RequestHeaders,
            StreamCall::RequestBody(..) => Phase::RequestBody,
            StreamCall::ResponseHeaders(..) => Phase::ResponseHeaders,
            StreamCall::ResponseBody(..) => Phase::ResponseBody,
            StreamCall::ResponseTrailers(..) => Phase::ResponseTrailers,
            StreamCall::HttpCallResponse(..) => Phase::HttpCallResponse,
            StreamCall::Grpc(..) => Phase::Grpc,
            StreamCall::Log => Phase::Log,
        }
    }
}

/// Which gRPC callback a [`StreamCall::Grpc`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCallback {
    /// `on_grpc_receive_initial_metadata(ctx, token, n_headers)`.
    InitialMetadata,
    /// `on_grpc_receive(ctx, token, message_len)`.
    Receive,
    /// `on_grpc_receive_trailing_metadata(ctx, token, n_trailers)`.
    TrailingMetadata,
    /// `on_grpc_close(ctx, token, status)`.
    Close,
}

impl GrpcCallback {
    /// The callback for `event`, and the number it is called with.
    pub fn of(event: &GrpcEvent) -> (GrpcCallback, u32) {
        use GrpcEvent as E;
        match event {
            E::InitialMetadata(h) => (GrpcCallback::InitialMetadata, h.len() as u32),
            E::Message(m) | E::UnaryReply(m) => (GrpcCallback::Receive, m.len() as u32),
            E::TrailingMetadata(t) => (GrpcCallback::TrailingMetadata, t.len() as u32),
            E::Close { status, .. } => (GrpcCallback::Close, *status),
        }
    }
}
