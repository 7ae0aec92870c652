//! pingora's `ProxyHttp` hooks for a listener: each documents when it runs and what it
//! does; they stay thin and call the steps beside them.

use std::net::IpAddr;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::chain::Reply;
use crate::config::{Balancing, HashKey, HostHeader};
use crate::exchange::Exchange;
use crate::forwarding::{valid_request_id, RequestId};
use crate::heads::{head_error, Req, Resp};
use crate::metrics::{RouteMetrics, UpstreamResult, UNMATCHED_ROUTE};
use crate::router::request_host;
use crate::upstream::Tried;
use crate::wasm::stream::RequestInfo;

use super::forwarding::*;
use super::respond::*;
use super::*;

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
