//! HTTP callouts (`proxy_http_call`): a request to an upstream named in the config, made off
//! the request path, whose result is delivered to the plugin through
//! `proxy_on_http_call_response` on the context that made it.
//!
//! Callouts run on a small runtime of their own, so they work from any thread (the proxy's
//! workers, the ticker). The exchange itself is the target's
//! ([`CalloutTarget::http_call`]): the proxy sends it through its upstream pools (see
//! `sluice-proxy`'s `upstream::callout`), the test kit over a plain connection. The plugin's
//! timeout, if any, bounds the whole exchange.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use super::stream::HeaderList;
use super::target::CalloutTarget;
use super::vm::{RootEvent, Vm};

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
    /// Where it goes.
    pub target: Arc<dyn CalloutTarget>,
    /// Headers with `:method`, `:path`, `:authority` (checked by the caller).
    pub headers: HeaderList,
    /// Body.
    pub body: Bytes,
    /// Deadline for the whole exchange; `None`: the plugin set none (the upstream's connect
    /// and read timeouts still apply).
    pub timeout: Option<Duration>,
}

/// The runtime callouts and gRPC calls run on (one thread of their own).
pub fn runtime() -> &'static tokio::runtime::Runtime {
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
            Some(limit) => {
                tokio::time::timeout(limit, req.target.http_call(&req.headers, &req.body))
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {} ms", limit.as_millis())))
            }
            None => req.target.http_call(&req.headers, &req.body).await,
        };
        let response = match outcome {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(target: "sluice::plugin", upstream = %req.target.name(), error = %e, "callout failed");
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
