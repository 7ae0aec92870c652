//! Where plugins' callouts and gRPC calls go: the upstreams a plugin may call, reached through
//! a transport that the embedding provides (the proxy's upstream pools; the test kit's plain
//! connections). The host itself opens no connection.

use bytes::Bytes;

use super::events::CalloutResponse;
use super::header_list::HeaderList;

/// Most bytes of a callout response body kept.
pub const MAX_RESPONSE_BODY: usize = 4 << 20;

/// The protocol an upstream speaks to callouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProtocol {
    /// HTTP/1.1 only (gRPC calls are refused).
    Http1,
    /// HTTP/2.
    H2,
    /// Whatever the endpoint picks (TLS ALPN).
    Auto,
}

/// An upstream a plugin may call out to.
#[async_trait::async_trait]
pub trait CalloutTarget: Send + Sync + 'static {
    /// Its name in the config (what the plugin calls it).
    fn name(&self) -> &str;

    /// The protocol it speaks.
    fn protocol(&self) -> TargetProtocol;

    /// One HTTP callout: `headers` hold `:method`, `:path` and `:authority` (an empty
    /// authority means the endpoint's own `host:port`), then the headers to send; the
    /// response is read to its end, at most [`MAX_RESPONSE_BODY`] bytes of
    /// body. Errors say why, for the debug log; the plugin only learns that the call failed.
    async fn http_call(
        &self,
        headers: &HeaderList,
        body: &Bytes,
    ) -> Result<CalloutResponse, String>;

    /// Opens an HTTP/2 `POST` of `path` with `headers` (a gRPC call; `Host` is the target's)
    /// whose request body stays open for [`H2Call::take_request_body`].
    async fn open_h2(
        &self,
        path: &str,
        headers: http::HeaderMap,
    ) -> Result<Box<dyn H2Call>, String>;
}

/// One HTTP/2 request opened by [`CalloutTarget::open_h2`].
#[async_trait::async_trait]
pub trait H2Call: Send {
    /// The request body, to send as flow control allows (once; `None` after).
    fn take_request_body(&mut self) -> Option<h2::SendStream<Bytes>>;

    /// Waits for the response head: its status and headers.
    async fn response_header(&mut self) -> Result<(http::StatusCode, http::HeaderMap), String>;

    /// The next piece of the response body; `None` at its end.
    async fn response_body(&mut self) -> Result<Option<Bytes>, String>;

    /// The response trailers, after the body's end.
    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, String>;

    /// The call is over and both halves ended: the connection may serve another.
    async fn release(self: Box<Self>);
}
