//! HTTP callouts (`proxy_http_call`): a request to an upstream named in the config, made off
//! the request path, whose result is delivered to the plugin through
//! `proxy_on_http_call_response` on the context that made it.
//!
//! Callouts run on a small runtime of their own, so they work from any thread (the proxy's
//! workers, the ticker). The exchange itself is the target's
//! ([`CalloutTarget::http_call`]): the proxy sends it through its upstream pools (see
//! `sluice-proxy`'s `upstream::callout`), the test kit over a plain connection. The plugin's
//! timeout, if any, bounds the whole exchange.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

pub use super::events::{CalloutDone, CalloutEvent, CalloutResponse, CalloutSink};
use super::header_list::HeaderList;
use super::target::CalloutTarget;
pub use super::target::MAX_RESPONSE_BODY;

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
