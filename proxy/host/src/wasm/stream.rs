//! What one request shares with the plugins of its chain: its header maps, the body chunk of
//! the current body callback, what is known about the request (for properties), custom
//! properties, and what the plugins asked for during a callback (local response, resume).
//!
//! The request owns one boxed [`Stream`]; before each guest call it is moved into the VM's
//! store and moved back afterwards, so host calls work on it without borrowing request data.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::events::CalloutDone;
pub use super::header_list::{list_bytes, list_get, list_remove, list_replace, HeaderList};

/// Most bytes a header map (names and values) may grow to through plugin writes.
pub const MAX_HEADER_MAP_BYTES: usize = 256 * 1024;
/// Most pairs a header map may grow to through plugin writes.
pub const MAX_HEADER_MAP_PAIRS: usize = 1024;

/// Facts about the request that properties expose.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// Wall-clock start of the request, ns since the epoch.
    pub time_ns: i64,
    /// The request's id (`x-request-id` as forwarded).
    pub id: String,
    /// The client's address.
    pub source: Option<SocketAddr>,
    /// The listener address the client connected to.
    pub destination: Option<SocketAddr>,
    /// An id of the downstream connection.
    pub connection_id: u64,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// The matched route.
    pub route_name: String,
    /// The endpoint chosen for the request, once known.
    pub upstream_address: Option<String>,
    /// The response status, once known.
    pub response_code: Option<u16>,
    /// Monotonic start of the request, the origin of `request.duration`.
    pub start: Option<Instant>,
    /// How long the request took, once it is complete ([`RequestInfo::complete`]).
    pub duration: Option<Duration>,
    /// Request body bytes received from the client so far, before plugins change them.
    pub request_body_bytes: u64,
    /// Response body bytes sent to the client so far, as sent.
    pub response_body_bytes: u64,
    /// Why the response has its status: `via_upstream`, a plugin's local-response details, ….
    pub response_code_details: Option<Cow<'static, str>>,
    /// Envoy's response flags (`RequestInfo::FLAG_*`), or-ed together.
    pub response_flags: u64,
    /// The server name the client asked for in its TLS handshake (SNI).
    pub requested_server_name: Option<String>,
    /// The client connection's TLS version as OpenSSL names it (`TLSv1.3`); `None` without TLS.
    pub tls_version: Option<&'static str>,
    /// The upstream connection's TLS version (`TLSv1.3`); `None` without TLS or upstream.
    pub upstream_tls_version: Option<&'static str>,
}

impl RequestInfo {
    /// `response.flags`: no healthy endpoint to send the request to (Envoy's `UH`).
    pub const FLAG_NO_HEALTHY_UPSTREAM: u64 = 0x2;
    /// The upstream did not answer in time (`UT`).
    pub const FLAG_UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    /// The proxy reset the stream itself (`LR`).
    pub const FLAG_LOCAL_RESET: u64 = 0x8;
    /// The upstream reset the stream (`UR`).
    pub const FLAG_UPSTREAM_REMOTE_RESET: u64 = 0x10;
    /// Connecting to the upstream failed (`UF`).
    pub const FLAG_UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    /// The upstream connection ended before the response did (`UC`).
    pub const FLAG_UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    /// No route matched (`NR`).
    pub const FLAG_NO_ROUTE_FOUND: u64 = 0x100;
    /// The client connection ended before the response did (`DC`).
    pub const FLAG_DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    /// Every endpoint was tried (`URX`).
    pub const FLAG_UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
    /// The client's request was malformed (`DPE`).
    pub const FLAG_DOWNSTREAM_PROTOCOL_ERROR: u64 = 0x40000;
    /// The upstream's response was malformed (`UPE`).
    pub const FLAG_UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;

    /// Counts `n` request body bytes received from the client.
    pub fn add_request_body(&mut self, n: usize) {
        self.request_body_bytes = self.request_body_bytes.saturating_add(n as u64);
    }

    /// Counts `n` response body bytes sent to the client.
    pub fn add_response_body(&mut self, n: usize) {
        self.response_body_bytes = self.response_body_bytes.saturating_add(n as u64);
    }

    /// Adds one of the `FLAG_*` bits to `response.flags`.
    pub fn add_response_flag(&mut self, flag: u64) {
        self.response_flags |= flag;
    }

    /// Sets `response.code_details` (the last call wins, as on Envoy).
    pub fn set_code_details(&mut self, details: impl Into<Cow<'static, str>>) {
        self.response_code_details = Some(details.into());
    }

    /// Marks the request complete: `request.duration` becomes the time since `start`. Only
    /// the first call counts.
    pub fn complete(&mut self) {
        if self.duration.is_none() {
            self.duration = self.start.map(|s| s.elapsed());
        }
    }

    /// Sets `upstream.tls_version` from the name rustls gives the version (`TLSv1_3`).
    pub fn set_upstream_tls_version(&mut self, rustls_name: &str) {
        self.upstream_tls_version = Self::tls_version_name(rustls_name);
    }

    /// A TLS version as OpenSSL and Envoy name it (`TLSv1`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`)
    /// from the name rustls gives it (`TLSv1_0` … `TLSv1_3`); `None` for an empty or unknown
    /// name. Static names: nothing is allocated per request.
    pub fn tls_version_name(rustls_name: &str) -> Option<&'static str> {
        match rustls_name {
            "TLSv1_0" => Some("TLSv1"),
            "TLSv1_1" => Some("TLSv1.1"),
            "TLSv1_2" => Some("TLSv1.2"),
            "TLSv1_3" => Some("TLSv1.3"),
            _ => None,
        }
    }
}

/// A response a plugin asked the host to send instead of going on.
#[derive(Debug, Clone, Default)]
pub struct LocalResponse {
    /// HTTP status (validated: 200–599).
    pub status: u16,
    /// Headers to send (hidden names were refused when they were set).
    pub headers: HeaderList,
    /// Body.
    pub body: Bytes,
    /// The plugin's `details` string, for logs.
    pub details: String,
}

/// What plugins asked for during one callback; read and cleared by the chain after each call.
#[derive(Debug, Default)]
pub struct Effects {
    /// `proxy_send_local_response` was called (the last call wins).
    pub local_response: Option<LocalResponse>,
    /// `proxy_continue_stream(REQUEST)` was called.
    pub resume_request: bool,
    /// `proxy_continue_stream(RESPONSE)` was called.
    pub resume_response: bool,
    /// `proxy_close_stream` was called.
    pub close: bool,
}

/// Which body the current body callback is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// The request body.
    Request,
    /// The response body.
    Response,
}

/// The per-request state plugins act on.
#[derive(Debug, Default)]
pub struct Stream {
    /// Request headers, pseudo-headers first.
    pub request_headers: HeaderList,
    /// Whether plugins may still change the request headers (before they are sent upstream).
    pub request_headers_writable: bool,
    /// Names (lower case) whose values plugins changed; `None` entry = all may have changed.
    pub request_changed: Changes,
    /// Request trailers (empty: pingora does not surface them).
    pub request_trailers: HeaderList,
    /// Response headers with `:status`, once the response started.
    pub response_headers: HeaderList,
    /// Whether plugins may still change the response headers.
    pub response_headers_writable: bool,
    /// Response header names plugins changed.
    pub response_changed: Changes,
    /// Response trailers (once they arrived).
    pub response_trailers: HeaderList,
    /// Whether plugins may change the response trailers (in `on_response_trailers`).
    pub response_trailers_writable: bool,
    /// The body visible to the current body callback, and which one it is.
    pub body: Vec<u8>,
    /// See [`BodyKind`]; `None` outside body callbacks.
    pub body_kind: Option<BodyKind>,
    /// Whether the current body chunk is the last.
    pub body_end: bool,
    /// Whether plugins changed `body` in this callback.
    pub body_changed: bool,
    /// Request facts for properties.
    pub info: RequestInfo,
    /// Properties set by plugins of this request (`proxy_set_property`).
    pub custom_properties: Vec<(Vec<u8>, Vec<u8>)>,
    /// Requests of the current callback.
    pub effects: Effects,
    /// Callouts started and not yet delivered.
    pub pending_callouts: u32,
    /// gRPC calls and streams this request's plugins opened, by token (cancelled when the
    /// request ends: a call never outlives the request that made it).
    pub grpc_calls: std::collections::HashMap<u32, super::grpc::GrpcHandle>,
    /// Callouts this request made (capped per plugin by `limits.max_callouts`).
    pub callouts_made: u32,
    /// `on_log` is running: a value that does not exist (the client left before any response)
    /// is `NOT_FOUND`, as on the reference host.
    pub log_phase: bool,
    /// Where this request's callouts report, made by its first callout.
    pub callouts: CalloutChannel,
    /// What the guest calls made with this state in the store cost so far.
    pub cost: CallCost,
}

/// Guest time and fuel of some guest calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallCost {
    /// Time in the guest, ns.
    pub nanos: u64,
    /// Fuel consumed.
    pub fuel: u64,
}

impl CallCost {
    /// Adds `other`.
    pub fn add(&mut self, other: CallCost) {
        self.nanos = self.nanos.saturating_add(other.nanos);
        self.fuel = self.fuel.saturating_add(other.fuel);
    }

    /// What was added since `before`.
    pub fn since(self, before: CallCost) -> CallCost {
        CallCost {
            nanos: self.nanos.saturating_sub(before.nanos),
            fuel: self.fuel.saturating_sub(before.fuel),
        }
    }
}

/// The channel a request's callouts report to: made by the request's first callout, so that a
/// request whose plugins make none allocates none.
#[derive(Debug, Default)]
pub struct CalloutChannel {
    tx: Option<UnboundedSender<CalloutDone>>,
    /// The receiving end of a channel just made, until the chain takes it.
    rx: Option<UnboundedReceiver<CalloutDone>>,
}

impl Stream {
    /// The sender of this request's callout channel, made on first use.
    pub fn callout_sender(&mut self) -> UnboundedSender<CalloutDone> {
        let c = &mut self.callouts;
        if let Some(tx) = &c.tx {
            return tx.clone();
        }
        let (tx, rx) = unbounded_channel();
        c.tx = Some(tx.clone());
        c.rx = Some(rx);
        tx
    }

    /// The receiver of a callout channel made since the last call, if one was.
    pub fn take_callout_receiver(&mut self) -> Option<UnboundedReceiver<CalloutDone>> {
        self.callouts.rx.take()
    }
}

/// Header names plugins changed, so that only those are written back to pingora's header.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Every name may have changed (the map was replaced).
    pub all: bool,
    /// Lower-case names changed.
    pub names: Vec<Vec<u8>>,
}

impl Changes {
    /// Records a change of `name` (any case).
    pub fn touch(&mut self, name: &[u8]) {
        if self.all {
            return;
        }
        if !self.names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            self.names.push(name.to_ascii_lowercase());
        }
    }

    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.all || !self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn replace_keeps_the_first_position_and_drops_duplicates() {
        let mut list = l(&[("a", "1"), ("B", "2"), ("c", "3"), ("b", "4")]);
        list_replace(&mut list, b"b", b"x");
        assert_eq!(list, l(&[("a", "1"), ("B", "x"), ("c", "3")]));
        list_replace(&mut list, b"D", b"y");
        assert_eq!(list.last().unwrap(), &(b"d".to_vec(), b"y".to_vec()));
        list_remove(&mut list, b"A");
        assert_eq!(list_get(&list, b"a"), None);
        assert_eq!(list_get(&list, b"C"), Some(&b"3"[..]));
        assert_eq!(list_bytes(&list), 2 + 2 + 2);
    }

    #[test]
    fn changes_are_case_insensitive() {
        let mut c = Changes::default();
        assert!(!c.any());
        c.touch(b"X-A");
        c.touch(b"x-a");
        assert_eq!(c.names, vec![b"x-a".to_vec()]);
        assert!(c.any());
    }
}
