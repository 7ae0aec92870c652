//! The HTTP proxy: pingora's `ProxyHttp` hooks (`hooks.rs`), each a thin step of one request's
//! path; what refuses a request (`refuse.rs`), the forwarding facts (`forwarding.rs`), the
//! plugins' request phase (`request_plugins.rs`) and what is sent back (`respond.rs`) beside
//! them.
//!
//! ```text
//! request_filter ─▶ upstream_peer ─▶ upstream_request_filter ─▶ upstream_response_filter
//!   (route, id)      (pick endpoint;     (x-request-id,             (count success)
//!                     again on retry)     x-forwarded-*, Host)
//!                                                          ─▶ logging (metrics, access log)
//! fail_to_connect: count, retry on another endpoint · fail_to_proxy: 502/504 with a reason
//! ```

mod forwarding;
mod hooks;
mod refuse;
mod request_plugins;
mod respond;

use respond::is_timeout;

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Error;

use crate::chain::Reply;
use crate::exchange::Exchange;
use crate::forwarding::RequestId;
use crate::metrics::UpstreamResult;
use crate::router::RouteEntry;
use crate::runtime::Runtime;
use crate::state::{InFlight, State};
use crate::upstream::{Endpoint, Tried};

const X_REQUEST_ID: &str = "x-request-id";

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The proxy of one listener.
pub struct SluiceProxy {
    state: Arc<State>,
    listener: Arc<str>,
    tls: bool,
    max_header_bytes: usize,
    max_body_bytes: Option<u64>,
}

impl SluiceProxy {
    /// A proxy for `listener` (its name, TLS for `x-forwarded-proto`, its request limits).
    pub fn new(state: Arc<State>, listener: &crate::config::Listener) -> Self {
        SluiceProxy {
            state,
            listener: listener.name.as_str().into(),
            tls: listener.tls.is_some(),
            max_header_bytes: listener.max_request_header_bytes,
            max_body_bytes: listener.max_request_body_bytes,
        }
    }
}

/// What one request carries from hook to hook.
pub struct RequestCtx {
    /// The config snapshot the request started on.
    runtime: Option<Arc<Runtime>>,
    /// Index of the matched route in `runtime.router`.
    route: Option<usize>,
    /// Endpoint of the current (last) attempt.
    endpoint: Option<usize>,
    /// Endpoints already tried.
    tried: Tried,
    /// Whether the current attempt's outcome is not yet counted.
    attempt_open: bool,
    /// The id Sluice made for this request, when the client sent no valid one.
    new_id: Option<RequestId>,
    /// The request's exchange with the route's plugins (routes with plugins only).
    exchange: Option<Exchange>,
    /// A reply a plugin phase decided on, sent by `fail_to_proxy`.
    reply: Option<Reply>,
    /// The reply went out already (or the stream was reset).
    replied: bool,
    /// Request body bytes seen so far (for the listener's body limit).
    body_bytes: u64,
    /// Response body bytes the plugins passed on to pingora (routes with plugins).
    response_out: u64,
    /// The response head as plugins left it, kept for an HTTP/2 client of an HTTP/2 upstream:
    /// see `response_trailer_filter`.
    response_head: Option<Box<ResponseHeader>>,
    start: Instant,
    _in_flight: InFlight,
}

impl RequestCtx {
    fn route(&self) -> Option<&RouteEntry> {
        Some(self.runtime.as_ref()?.router.route(self.route?))
    }

    fn endpoint(&self) -> Option<&Endpoint> {
        self.route()?.pool.endpoints.get(self.endpoint?)
    }

    /// The request's id: the client's if valid, else the one Sluice made.
    fn request_id<'a>(&'a self, session: &'a Session) -> Option<&'a str> {
        match &self.new_id {
            Some(id) => Some(id.as_str()),
            None => session
                .req_header()
                .headers
                .get(X_REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
        }
    }

    /// Counts the current attempt as ended by `e`: a timeout, else `otherwise`.
    fn close_attempt_by(&mut self, e: &Error, otherwise: UpstreamResult) {
        self.close_attempt(if is_timeout(e.etype()) {
            UpstreamResult::Timeout
        } else {
            otherwise
        });
    }

    /// Counts the outcome of the current upstream attempt, once.
    fn close_attempt(&mut self, result: UpstreamResult) {
        if std::mem::take(&mut self.attempt_open) {
            if let Some(ep) = self.endpoint() {
                ep.metrics.count(result);
            }
        }
    }
}
