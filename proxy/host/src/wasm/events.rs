//! What callouts, gRPC calls and shared queues deliver, and where it goes: to the request that
//! made a call, or to a VM's root context (through [`RootInbox`], which the VM implements).

use std::sync::{Arc, Weak};

use tokio::sync::mpsc::UnboundedSender;

use super::header_list::HeaderList;

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
    Grpc(GrpcEvent),
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

/// One thing a gRPC call delivers to the plugin.
#[derive(Debug, Clone)]
pub enum GrpcEvent {
    /// The response headers (`on_grpc_receive_initial_metadata`).
    InitialMetadata(HeaderList),
    /// One message (`on_grpc_receive`).
    Message(Vec<u8>),
    /// The trailers (`on_grpc_receive_trailing_metadata`).
    TrailingMetadata(HeaderList),
    /// The answer to a unary call (`proxy_grpc_call`) that ended OK with one message
    /// (`on_grpc_receive`, and nothing else: as on the reference host, a unary call delivers
    /// either its answer or its close).
    UnaryReply(Vec<u8>),
    /// The end, with the gRPC status and its message (`on_grpc_close`).
    Close {
        /// The gRPC status code.
        status: u32,
        /// `grpc-message`, or why Sluice closed the call.
        message: String,
    },
}

/// Events for the root context, delivered by the ticker thread.
pub enum RootEvent {
    /// A callout made from the root context finished.
    Callout(CalloutDone),
    /// A queue this VM registered has items.
    QueueReady(u32),
}

/// Where root-context events go: a VM, which delivers them on the ticker thread.
pub trait RootInbox: Send + Sync {
    /// Records an event for the root context.
    fn push_root_event(&self, e: RootEvent);
    /// A queue the VM registered has items.
    fn queue_ready(self: Arc<Self>, queue: u32);
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
    Root(Weak<dyn RootInbox>),
}

impl CalloutSink {
    pub fn deliver(&self, done: CalloutDone) {
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
