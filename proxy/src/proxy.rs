//! The HTTP proxy: pingora's `ProxyHttp` hooks, each a thin step of one request's path.
//!
//! ```text
//! request_filter ─▶ upstream_peer ─▶ upstream_request_filter ─▶ upstream_response_filter
//!   (route, id)      (pick endpoint;     (x-request-id,             (count success)
//!                     again on retry)     x-forwarded-*, Host)
//!                     again on retry)
//!                                                          ─▶ logging (metrics, access log)
//! fail_to_connect: count, retry on another endpoint · fail_to_proxy: 502/504 with a reason
//! ```

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::chain::Reply;
use crate::config::{Balancing, HashKey, HostHeader};
use crate::exchange::{reply_parts, Answer, Exchange, Head, PREREAD_MAX};
use crate::forwarding::{valid_request_id, Forwarding, RequestId};
use crate::head::content_length;
use crate::heads::{head_error, Req, Resp};
use crate::metrics::{RouteMetrics, UpstreamResult, UNMATCHED_ROUTE};
use crate::router::{request_host, RouteEntry};
use crate::runtime::{InFlight, Runtime, State};
use crate::upstream::{Endpoint, Tried};
use crate::wasm::stream::RequestInfo;

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

    /// Why a request must be refused before anything else looks at it: a framing that two
    /// servers could read differently (request smuggling), or a header or declared body over
    /// the listener's limits. pingora has already refused malformed request lines and header
    /// lines, obfuscated `Transfer-Encoding` and conflicting `Content-Length` values.
    fn refuse(&self, req: &RequestHeader) -> Option<(u16, String)> {
        let h = &req.headers;
        let lengths = h.get_all(http::header::CONTENT_LENGTH).iter().count();
        if lengths > 1 {
            return Some((
                400,
                "400 Bad Request: more than one Content-Length header\n".into(),
            ));
        }
        if lengths == 1 && h.contains_key(http::header::TRANSFER_ENCODING) {
            return Some((
                400,
                "400 Bad Request: both Content-Length and Transfer-Encoding; the message \
                 framing is ambiguous\n"
                    .into(),
            ));
        }
        let line = req.method.as_str().len() + req.raw_path().len() + 12;
        let size = h
            .iter()
            .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
        if size > self.max_header_bytes {
            return Some((
                431,
                format!(
                    "431 Request Header Fields Too Large: {size} bytes of header, this listener \
                     accepts {}\n",
                    self.max_header_bytes
                ),
            ));
        }
        if let (Some(max), Some(len)) = (self.max_body_bytes, content_length(h)) {
            if len > max {
                return Some((
                    413,
                    format!("413 Content Too Large: a body of {len} bytes, this listener accepts {max}\n"),
                ));
            }
        }
        None
    }
}

impl SluiceProxy {
    /// Runs the route's plugins on the request before anything goes upstream: loads the
    /// request head with the forwarding headers (plugins see them, as behind Envoy), runs
    /// `on_request_headers` in order; if a plugin waits for the body, reads the whole body
    /// (up to [`PREREAD_MAX`], what pingora can replay) and runs `on_request_body`; then writes
    /// the plugins' changes back into the request. `Some(reply)`: answer with it instead.
    async fn run_request_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Reply>> {
        let Some(route) = ctx.route() else {
            return Ok(None);
        };
        if route.plugins.is_empty() {
            return Ok(None);
        }
        let plugins = route.plugins.clone();
        let route_name = route.name.clone();
        let ip = client_ip(session);
        let forwarding = Forwarding::new(session.req_header(), ctx.new_id.as_ref(), ip, self.tls);
        let id = ctx.request_id(session).unwrap_or("").to_string();
        let info = request_info(session, &route_name, &id, self.tls, ctx.start);
        let mut ex = match Exchange::start(&plugins, info) {
            Ok(e) => e,
            Err(reply) => return Ok(Some(reply)),
        };
        ex.load_request(
            session.req_header(),
            if self.tls { "https" } else { "http" },
            &forwarding,
        );
        let no_body = session.is_body_empty();
        let head = while_client_waits(session, ex.request_headers(no_body)).await;
        // From here on, on_log, on_done and on_delete run when the request ends, whatever
        // happens.
        let ex = ctx.exchange.insert(ex);
        let reply = match head? {
            Err(reply) => Some(reply),
            Ok(Head::Forward) => None,
            Ok(Head::NeedBody) => {
                session.as_mut().enable_retry_buffering();
                let mut body = Vec::new();
                // Past PREREAD_MAX the exchange answers 413.
                while let Some(chunk) = session.read_request_body().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > PREREAD_MAX {
                        break;
                    }
                }
                while_client_waits(session, ex.whole_request_body(body))
                    .await?
                    .err()
            }
        };
        if reply.is_none() {
            ex.apply_request(&mut Req(session.req_header_mut()), &forwarding)
                .map_err(head_error)?;
        }
        Ok(reply)
    }

    /// Sends what `reply` becomes (see [`Exchange::answer`]): a response, or a stream reset.
    /// `keepalive`: the connection may serve another request after it (a reply before the
    /// request went upstream). Returns the status sent (0: reset).
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
        keepalive: bool,
    ) -> u16 {
        let id = ctx.request_id(session).map(str::to_string);
        let answer = match ctx.exchange.as_mut() {
            Some(ex) => {
                ex.answer::<Resp<ResponseHeader>>(reply, id.as_deref())
                    .await
            }
            None => match reply_parts::<Resp<ResponseHeader>>(&reply, id.as_deref()) {
                Ok((resp, body)) => Answer::Send(Box::new(resp), body),
                Err(_) => Answer::Reset,
            },
        };
        match answer {
            Answer::Send(resp, body) => {
                let resp = Box::new(resp.0);
                let status = resp.status.as_u16();
                let sent = if keepalive {
                    match session.write_response_header(resp, false).await {
                        Ok(()) => session.write_response_body(Some(body), true).await,
                        Err(e) => Err(e),
                    }
                } else {
                    session.write_error_response(*resp, body).await
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not send the plugin's reply");
                }
                status
            }
            Answer::Reset => {
                session.set_keepalive(None);
                session.downstream_session.shutdown().await;
                0
            }
        }
    }
}

/// Runs a plugin phase that may wait for a paused plugin (an HTTP callout, a plugin that never
/// resumes) while watching the client: once the request body is fully read, a client that
/// closes the connection (or resets the HTTP/2 stream) ends the wait with its error, so the
/// request's plugin contexts end at once instead of at the plugin's `pause_timeout_ms`.
async fn while_client_waits<T>(
    session: &mut Session,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    if !session.is_body_done() {
        return Ok(work.await);
    }
    let downstream = &mut session.downstream_session;
    tokio::select! {
        // The work first: when no plugin pauses, it is done before the client is probed.
        biased;
        out = work => Ok(out),
        r = downstream.read_body_or_idle(true) => Err(match r {
            Err(e) => e,
            Ok(_) => Error::explain(
                ErrorType::ConnectionClosed,
                "the client sent data while its request was held by a plugin",
            ),
        }
        .into_down()),
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

/// Sets `x-request-id` (if Sluice made the id), appends the client address to
/// `x-forwarded-for` and sets `x-forwarded-proto`.
fn add_forwarding(
    req: &mut RequestHeader,
    new_id: Option<&RequestId>,
    client: Option<IpAddr>,
    tls: bool,
) -> Result<()> {
    Forwarding::new(req, new_id, client, tls)
        .apply(&mut Req(req))
        .map_err(head_error)
}

/// The error that makes pingora call `fail_to_proxy`, which sends `ctx.reply`.
fn reply_error(ctx: &mut RequestCtx, reply: Reply) -> Box<Error> {
    let code = reply.status;
    ctx.reply = Some(reply);
    Error::explain(ErrorType::HTTPStatus(code), "plugin reply")
}

/// Facts about the request that plugins read as properties.
fn request_info(
    session: &Session,
    route: &str,
    id: &str,
    tls: bool,
    start: Instant,
) -> RequestInfo {
    let req = session.req_header();
    let source = session.client_addr().and_then(|a| a.as_inet()).copied();
    let destination = session.server_addr().and_then(|a| a.as_inet()).copied();
    let mut conn = crate::hash::FNV1A64_START;
    for a in [source, destination].into_iter().flatten() {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        conn = crate::hash::fnv1a64_update(conn, &ip);
        conn = crate::hash::fnv1a64_update(conn, &a.port().to_be_bytes());
    }
    // The TLS version is in the connection's digest (HTTP/1 and HTTP/2). The SNI is on the TLS
    // stream, which pingora exposes for HTTP/1 sessions only; over HTTP/2 it is known if the
    // listener's handshake callback kept it (as a `String`) in the digest's extension.
    let downstream = session.as_downstream();
    let ssl = downstream.digest().and_then(|d| d.ssl_digest.as_deref());
    let requested_server_name = downstream
        .stream()
        .and_then(|s| s.get_ssl())
        .and_then(|t| t.server_name())
        .or_else(|| ssl.and_then(|d| d.extension.get::<String>().map(String::as_str)))
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    RequestInfo {
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        id: id.to_string(),
        source,
        destination,
        connection_id: conn,
        tls,
        route_name: route.to_string(),
        upstream_address: None,
        response_code: None,
        start: Some(start),
        requested_server_name,
        tls_version: ssl.and_then(|d| RequestInfo::tls_version_name(&d.version)),
        ..RequestInfo::default()
    }
}

/// Writes a small local text response.
async fn respond(session: &mut Session, ctx: &RequestCtx, code: u16, body: String) -> Result<()> {
    let resp = local_response_header(ctx.request_id(session), code, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// The header of a response Sluice makes itself: text, with the request's id.
fn local_response_header(id: Option<&str>, code: u16, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, TEXT_PLAIN)?;
    resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    if let Some(id) = id {
        resp.insert_header(X_REQUEST_ID, id.to_string())?;
    }
    Ok(resp)
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn unmatched_metrics() -> &'static RouteMetrics {
    static M: OnceLock<RouteMetrics> = OnceLock::new();
    M.get_or_init(|| RouteMetrics::new(UNMATCHED_ROUTE))
}

fn is_connect_error(t: &ErrorType) -> bool {
    matches!(
        t,
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}

fn is_timeout(t: &ErrorType) -> bool {
    matches!(
        t,
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    )
}

/// Status code and body for a request that failed; 0 means the client is gone.
fn failure_response(e: &Error, upstream: &str) -> (u16, String) {
    let etype = e.etype();
    if let ErrorType::HTTPStatus(code) = etype {
        let reason = http::StatusCode::from_u16(*code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        return (*code, format!("{code} {reason}\n"));
    }
    match e.esource() {
        ErrorSource::Upstream if is_timeout(etype) => (
            504,
            format!("504 Gateway Timeout: upstream \"{upstream}\" did not answer in time\n"),
        ),
        ErrorSource::Upstream if is_connect_error(etype) => (
            502,
            format!(
                "502 Bad Gateway: upstream \"{upstream}\" is unavailable (no endpoint accepted the connection)\n"
            ),
        ),
        ErrorSource::Upstream => (
            502,
            format!(
                "502 Bad Gateway: upstream \"{upstream}\" closed the connection or sent an invalid response\n"
            ),
        ),
        ErrorSource::Downstream => match etype {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                (0, String::new())
            }
            ErrorType::ReadTimedout => (408, "408 Request Timeout\n".into()),
            _ => (400, "400 Bad Request\n".into()),
        },
        ErrorSource::Internal | ErrorSource::Unset => {
            (500, "500 Internal Server Error\n".into())
        }
    }
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    type CTX = RequestCtx;

    /// Runs when a request's header has been read. Starts the in-flight count and the clock.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            runtime: None,
            route: None,
            endpoint: None,
            tried: Tried::default(),
            attempt_open: false,
            new_id: None,
            exchange: None,
            reply: None,
            replied: false,
            body_bytes: 0,
            response_out: 0,
            response_head: None,
            start: Instant::now(),
            _in_flight: self.state.enter(),
        }
    }

    /// Runs as soon as pingora has parsed a request head, before any module or other hook.
    ///
    /// Turns off the connection's request-head deadline (see [`crate::request_head`]) until the
    /// request is done. Never fails.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::request_head::head_read(session.as_downstream().stream());
        Ok(())
    }

    /// Runs first for every request, before anything is sent upstream.
    ///
    /// Takes the current config snapshot (kept to the end of the request), decides the request
    /// id (a valid `x-request-id` from the client is kept, else a new one will replace it) and
    /// matches the route. No match: answers 404 itself and returns `Ok(true)` (done).
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = self.state.current();
        let req = session.req_header();
        let keep = req
            .headers
            .get(X_REQUEST_ID)
            .is_some_and(|v| valid_request_id(v.as_bytes()));
        if !keep {
            ctx.new_id = Some(RequestId::new());
        }
        ctx.route = runtime
            .router
            .find(request_host(req), req.uri.path(), &req.method);
        ctx.runtime = Some(runtime);
        if let Some((code, why)) = self.refuse(session.req_header()) {
            // The rest of the connection cannot be trusted to be framed as the client meant.
            session.set_keepalive(None);
            ctx.route = None;
            respond(session, ctx, code, why).await?;
            return Ok(true);
        }
        if ctx.route.is_none() {
            respond(
                session,
                ctx,
                404,
                "404 Not Found: no route matches this request\n".into(),
            )
            .await?;
            return Ok(true);
        }
        match self.run_request_plugins(session, ctx).await? {
            Some(reply) => {
                self.answer(session, ctx, reply.clone(), true).await;
                ctx.reply = Some(reply);
                ctx.replied = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Runs `request_body_filter`'s plugin part; see [`Chain::request_body`].
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(max), Some(chunk)) = (self.max_body_bytes, body.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > max {
                let why =
                    format!("413 Content Too Large: this listener accepts {max} bytes of body\n");
                return Err(reply_error(ctx, Reply::text(413, "", why)));
            }
        }
        let Some(ex) = ctx.exchange.as_mut() else {
            return Ok(());
        };
        if let Err(reply) = ex.request_body(body, end_of_stream).await {
            return Err(reply_error(ctx, reply));
        }
        Ok(())
    }

    /// Runs after `upstream_response_filter`, before the response header goes to the client:
    /// the plugins' `on_response_headers`, in reverse order. They may change the status and
    /// headers, or answer locally instead. A plugin that will change the body's length removes
    /// `content-length` here (as on Envoy); the response then goes chunked over HTTP/1.1.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(ex) = ctx.exchange.as_mut() else {
            return Ok(());
        };
        let head = session.req_header().method == http::Method::HEAD;
        let h2 = session.req_header().version == http::Version::HTTP_2;
        if let Err(reply) = ex
            .response_head(&mut Resp(&mut *upstream_response), head, h2)
            .await
        {
            return Err(reply_error(ctx, reply));
        }
        // Kept only where response_trailer_filter may need it: body held back by a plugin
        // when trailers from an HTTP/2 upstream reach an HTTP/2 client.
        let trailers_may_follow = ctx
            .route()
            .is_some_and(|r| r.pool.protocol != crate::config::Protocol::Http1);
        let may_hold = ctx
            .exchange
            .as_ref()
            .is_some_and(Exchange::may_hold_response_body);
        if h2 && trailers_may_follow && may_hold {
            ctx.response_head = Some(Box::new(upstream_response.clone()));
        }
        Ok(())
    }

    /// Runs for each chunk of the response body on its way to the client: the plugins'
    /// `on_response_body`, in reverse order (synchronous in pingora). A failure here, after
    /// the header went out, ends the response early.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(ex) = ctx.exchange.as_mut() {
            if let Err(reply) = ex.response_body(body, end_of_stream) {
                // Sent by fail_to_proxy if the header has not gone out yet; else the response
                // is cut.
                tracing::warn!(plugin = %reply.plugin, status = reply.status, "plugin failed during the response body");
                return Err(reply_error(ctx, reply));
            }
            ctx.response_out += body.as_ref().map_or(0, |b| b.len() as u64);
        }
        Ok(None)
    }

    /// Runs when an HTTP/2 upstream's response trailers arrive (after the last body chunk,
    /// which then did not end the stream), before they go to the client: the plugins'
    /// `on_response_trailers`, in reverse order, with the trailers writable (see
    /// [`Chain::response_trailers`](crate::chain::Chain::response_trailers)). HTTP/1.1
    /// upstreams' trailers never get here (pingora drops them). A plugin failure here resets
    /// the client's stream: the body is out, the status cannot change. Without plugins it does
    /// nothing: the trailers pass as they are.
    ///
    /// Body the plugins still held goes out before the trailers. To an HTTP/1.1 client (which
    /// pingora sends no trailers) it is the last chunk of the body. To an HTTP/2 client it is
    /// written here, ahead of the trailers, when everything before it has been written (pingora
    /// writes what its hooks passed on in batches: the response head too may still wait in the
    /// batch, then it is written here first); otherwise the held body ends the response and
    /// the trailers are dropped, with a warning: order is kept over trailers.
    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        let h2_client = session.req_header().version == http::Version::HTTP_2;
        let Some(ex) = ctx.exchange.as_mut() else {
            return Ok(None);
        };
        match ex.response_trailers(trailers).await {
            Ok(None) => {}
            Ok(Some(held)) if !h2_client => return Ok(Some(held)),
            Ok(Some(held)) => {
                if session.response_written().is_none() && ctx.response_out == 0 {
                    if let Some(head) = ctx.response_head.take() {
                        session.write_response_header(head, false).await?;
                    }
                }
                let all_out = session.response_written().is_some()
                    && session.body_bytes_sent() as u64 == ctx.response_out;
                ctx.response_out += held.len() as u64;
                if !all_out {
                    tracing::warn!(
                        "plugins held response body until the trailers came in the same read as \
                         body they had passed on; the held body ends the response, the trailers \
                         are dropped"
                    );
                    return Ok(Some(held));
                }
                session.write_response_body(Some(held), false).await?;
            }
            Err(reply) => {
                tracing::warn!(plugin = %reply.plugin, status = reply.status, "plugin failed on the response trailers; resetting the response");
                ctx.reply = Some(reply);
                ctx.replied = true;
                trailers.clear();
                session.set_keepalive(None);
                session.downstream_session.shutdown().await;
            }
        }
        Ok(None)
    }

    /// Plugin replies already sent in `request_filter` are not errors worth a log line; the
    /// same goes for replies sent through `fail_to_proxy`.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        ctx.reply.is_some()
    }

    /// Runs once per attempt: picks an endpoint of the route's pool that this request has not
    /// tried, preferring healthy ones, by the pool's balancing policy.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.route().expect("request_filter matched a route");
        let pool = route.pool.clone();
        let ip_key;
        let key: Option<&[u8]> = match pool.balancing() {
            Balancing::Hash(HashKey::Header(name)) => session
                .req_header()
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes()),
            Balancing::Hash(HashKey::ClientAddress) => {
                ip_key = client_ip(session).map(|ip| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                });
                ip_key.as_ref().map(|k| &k[..])
            }
            _ => None,
        };
        let Some(idx) = pool.select(key, ctx.tried, ctx.endpoint) else {
            return Err(Error::explain(
                ErrorType::ConnectError,
                format!("upstream {:?}: every endpoint was tried", pool.name),
            )
            .into_up());
        };
        ctx.tried.insert(idx);
        ctx.endpoint = Some(idx);
        ctx.attempt_open = true;
        if let Some(ex) = ctx.exchange.as_mut() {
            ex.stream().info.upstream_address = Some(pool.endpoints[idx].addr.to_string());
        }
        Ok(pool.endpoints[idx].peer())
    }

    /// Runs when connecting to the chosen endpoint failed. Counts the failure and, if the pool
    /// has an endpoint this request has not tried, marks the error retryable so that
    /// `upstream_peer` runs again (nothing was sent yet, so this is safe for any method).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.close_attempt_by(&e, UpstreamResult::ConnectError);
        if let Some(route) = ctx.route() {
            if ctx.tried.len() < route.pool.endpoints.len() {
                e.set_retry(true);
            }
        }
        e
    }

    /// Runs before the request header goes upstream (once per attempt, on a fresh copy of the
    /// client's request). Sets `x-request-id` if Sluice made the id, appends the client address
    /// to `x-forwarded-for`, sets `x-forwarded-proto`, and applies the pool's `host_header`
    /// policy (by default the Host header is passed on unchanged).
    ///
    /// These headers go on the copy rather than on the client's request: the copy is cloned
    /// from it for each attempt, and headers added before the clone cost more to clone than to
    /// add here.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !ctx.exchange.as_ref().is_some_and(Exchange::forwarded_early) {
            add_forwarding(
                upstream_request,
                ctx.new_id.as_ref(),
                client_ip(session),
                self.tls,
            )?;
        }
        if let Some(ex) = ctx.exchange.as_mut() {
            ex.upstream_request(&mut Req(&mut *upstream_request), !session.is_body_empty())
                .map_err(head_error)?;
        }
        if let Some(route) = ctx.route() {
            match &route.pool.host_header {
                HostHeader::Preserve => {}
                HostHeader::Fixed(v) => upstream_request.insert_header(http::header::HOST, v)?,
                HostHeader::Endpoint => {
                    if let Some(ep) = ctx.endpoint() {
                        upstream_request.insert_header(http::header::HOST, ep.label.as_str())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs once a connection to the chosen endpoint is ready (new or reused), before the
    /// request goes out on it. For routes with plugins, records the connection's TLS version
    /// (the `upstream.tls_version` property); nothing otherwise.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(ex) = ctx.exchange.as_mut() {
            let info = &mut ex.stream().info;
            match digest.and_then(|d| d.ssl_digest.as_deref()) {
                Some(tls) => info.set_upstream_tls_version(&tls.version),
                // A retry may land on a plain endpoint.
                None => info.upstream_tls_version = None,
            }
        }
        Ok(())
    }

    /// Runs when the endpoint's response header arrives: the attempt succeeded.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !upstream_response.status.is_informational() {
            ctx.close_attempt(UpstreamResult::Success);
        }
        Ok(())
    }

    /// Runs when the request failed for good (no retry left). Answers with a status that says
    /// what went wrong — 502 when the upstream could not be reached or misbehaved, 504 when it
    /// timed out — unless a response was already sent or the client is gone.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(reply) = ctx.reply.clone() {
            let error_code = if ctx.replied {
                reply.status
            } else if session.response_written().is_some() {
                // The head went out: the response can only be cut.
                session.downstream_session.shutdown().await;
                0
            } else {
                ctx.replied = true;
                self.answer(session, ctx, reply, false).await
            };
            return FailToProxy {
                error_code,
                can_reuse_downstream: false,
            };
        }
        let upstream = ctx.route().map_or("", |r| r.pool.name.as_str());
        let (code, body) = failure_response(e, upstream);
        if code > 0 {
            let sent = match local_response_header(ctx.request_id(session), code, body.len()) {
                Ok(resp) => session.write_error_response(resp, Bytes::from(body)).await,
                Err(e) => Err(e),
            };
            if let Err(err) = sent {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Runs last for every request, whatever happened (also after `fail_to_proxy`): counts an
    /// upstream attempt that the final error ended, records metrics and writes the access log
    /// line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // What the connection reads next is a new request head, with its own deadline.
        crate::request_head::request_done(session.as_downstream().stream());
        if let Some(e) = e {
            if e.esource() == &ErrorSource::Upstream {
                ctx.close_attempt_by(e, UpstreamResult::Error);
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(ex) = ctx.exchange.as_mut() {
            if let Some(e) = e {
                let info = &mut ex.stream().info;
                let flag = match (e.esource(), e.etype()) {
                    (ErrorSource::Downstream, _) => {
                        RequestInfo::FLAG_DOWNSTREAM_CONNECTION_TERMINATION
                    }
                    (ErrorSource::Upstream, t) if is_timeout(t) => {
                        RequestInfo::FLAG_UPSTREAM_REQUEST_TIMEOUT
                    }
                    (ErrorSource::Upstream, t) if is_connect_error(t) => {
                        RequestInfo::FLAG_UPSTREAM_CONNECTION_FAILURE
                    }
                    (ErrorSource::Upstream, _) => RequestInfo::FLAG_UPSTREAM_CONNECTION_TERMINATION,
                    _ => 0,
                };
                if flag != 0 {
                    info.add_response_flag(flag);
                }
            }
            ex.log(status);
        }
        let elapsed = ctx.start.elapsed();
        let route = ctx.route();
        let route_metrics: &RouteMetrics = match route {
            Some(r) => &r.metrics,
            None => unmatched_metrics(),
        };
        route_metrics.observe(status, elapsed.as_secs_f64());
        if tracing::enabled!(target: "sluice::access", tracing::Level::INFO) {
            let req = session.req_header();
            tracing::info!(
                target: "sluice::access",
                listener = %self.listener,
                route = route.map_or(UNMATCHED_ROUTE, |r| r.name.as_str()),
                upstream = route.map_or("", |r| r.pool.name.as_str()),
                endpoint = ctx.endpoint().map_or("", |ep| ep.label.as_str()),
                method = %req.method,
                path = %req.uri.path(),
                status,
                duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                attempts = ctx.tried.len(),
                request_id = ctx.request_id(session).unwrap_or(""),
                client = %client_ip(session).map_or_else(String::new, |ip| ip.to_string()),
                error = e.map_or_else(String::new, |e| e.etype().as_str().to_string()),
                "request"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let a = RequestId::new();
        assert_eq!(a.as_str().len(), 32);
        assert!(valid_request_id(a.as_str().as_bytes()));
        assert_ne!(a.as_str(), RequestId::new().as_str());
    }

    #[test]
    fn failure_codes() {
        let timeout = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(failure_response(&timeout, "api").0, 504);
        let refused = Error::new(ErrorType::ConnectRefused).into_up();
        let (code, body) = failure_response(&refused, "api");
        assert_eq!(code, 502);
        assert!(body.contains("\"api\" is unavailable"), "{body}");
        let closed = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(failure_response(&closed, "api").0, 0);
        let status = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(failure_response(&status, "api").0, 413);
    }
}
