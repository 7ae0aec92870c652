//! One request's exchange with its route's plugin chain: the per-request driver that both the
//! proxy's pingora hooks and the test kit call, hook by hook, so that the test kit tests the
//! code that serves traffic. Heads are read as `http` parts and rewritten through
//! [`crate::head`]'s traits (pingora's heads in the proxy, plain ones in the test kit).
//!
//! ```text
//!  client request head ─▶ load_request ─▶ request_headers ─┬─▶ apply_request ─▶ upstream head
//!                                                          └─ NeedBody: whole_request_body
//!  request body reads  ─▶ request_body (any number; held while a plugin pauses)
//!  upstream head       ─▶ upstream_request (framing: chunked when a plugin dropped the length)
//!  response head       ─▶ response_head ─▶ response_body (any number)
//!  a reply instead     ─▶ answer (response callbacks over it while the request was going up)
//!  end, however it ends ─▶ log (on_log; on_done/on_delete when dropped)
//! ```
//!
//! The state machine (phases × states × what each host call answers) is documented in
//! `docs/plugins.md`. The rules that are not the chain's own live here: when a message has a
//! body, how a body whose length a plugin changed is framed, what a plugin's reply looks like
//! on the wire, and which replies the response callbacks see.

use std::sync::Arc;

use crate::chain::{Chain, HeadersDone, Reply};
use crate::forwarding::Forwarding;
use crate::head::{content_length, HeadError, NewResponseHead, RequestHeadMut, ResponseHeadMut};
use crate::wasm::plugin::Plugin;
use crate::wasm::stream::{BodyKind, RequestInfo, Stream};
use bytes::Bytes;

/// Most request body bytes held before forwarding, for a plugin that waits for the whole
/// body in its request-headers callback: what pingora can replay to the upstream.
pub const PREREAD_MAX: usize = 64 * 1024;

const X_REQUEST_ID: &str = "x-request-id";

/// What the request-headers phase ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The request goes on.
    Forward,
    /// A plugin waits for the whole body before the request may go on: read it (at most
    /// [`PREREAD_MAX`]) and give it to [`Exchange::whole_request_body`].
    NeedBody,
}

/// What to do instead of going on.
#[derive(Debug)]
pub enum Answer<R> {
    /// Send this response.
    Send(Box<R>, Bytes),
    /// Reset the stream: HTTP/2 `RST_STREAM`, HTTP/1 close the connection, no response.
    Reset,
}

/// One request's exchange with its plugins.
pub struct Exchange {
    chain: Chain,
    /// The request body, read and processed before forwarding (a plugin held the request for
    /// it); it replaces what pingora replays to the upstream.
    prebody: Option<Bytes>,
    /// The forwarding headers went on the client's request (a plugin changed one), so they are
    /// not added again to the upstream copy.
    forwarded_early: bool,
    /// The response head went through the plugins: a reply now is sent as it is.
    response_started: bool,
}

impl Exchange {
    /// Creates the request's context in a VM of each plugin (see [`Chain::new`]).
    pub fn start(plugins: &[Arc<Plugin>], info: RequestInfo) -> Result<Exchange, Reply> {
        Exchange::start_watched(plugins, Vec::new(), info)
    }

    /// [`Exchange::start`] for a chain with versions of plugins under rollout (see
    /// [`crate::rollout`]).
    pub fn start_watched(
        plugins: &[Arc<Plugin>],
        watches: Vec<crate::chain::Watch>,
        info: RequestInfo,
    ) -> Result<Exchange, Reply> {
        Ok(Exchange {
            chain: Chain::watched(plugins, watches, info)?,
            prebody: None,
            forwarded_early: false,
            response_started: false,
        })
    }

    /// The request's state as plugins see it.
    pub fn stream(&mut self) -> &mut Stream {
        self.chain.stream()
    }

    /// Loads the client's request head, with the forwarding headers the upstream will get set
    /// on top (plugins see them, as behind Envoy).
    pub fn load_request(
        &mut self,
        req: &http::request::Parts,
        scheme: &str,
        forwarding: &Forwarding,
    ) {
        self.chain.load_request(req, scheme, forwarding.headers());
    }

    /// `on_request_headers` of every plugin, in order. `end_of_stream`: the request has no
    /// body. A plugin that pauses is waited for (a callout, a tick that resumes it), except
    /// one that pauses while a body follows with nothing pending: it waits for the body.
    pub async fn request_headers(&mut self, end_of_stream: bool) -> Result<Head, Reply> {
        Ok(match self.chain.request_headers(end_of_stream).await? {
            HeadersDone::Continue => Head::Forward,
            HeadersDone::NeedBody => Head::NeedBody,
        })
    }

    /// After [`Head::NeedBody`]: the whole request body, through `on_request_body` of each
    /// plugin that ran, then the request-headers callbacks not yet run. What comes out replaces
    /// the body the upstream gets.
    pub async fn whole_request_body(&mut self, body: Vec<u8>) -> Result<(), Reply> {
        if body.len() > PREREAD_MAX {
            return Err(Reply::text(
                413,
                "",
                format!(
                    "413 Content Too Large: a plugin inspects this request's body before forwarding it, which is limited to {} KiB\n",
                    PREREAD_MAX / 1024
                ),
            ));
        }
        self.chain.stream().info.add_request_body(body.len());
        let out = self.chain.request_body_complete(body).await?;
        self.prebody = Some(Bytes::from(out));
        Ok(())
    }

    /// Writes what the plugins changed into the client's request head before it is copied
    /// upstream: the forwarding headers first when a plugin changed one of them, then the
    /// changed headers and pseudo-headers; a body read before forwarding gets its length.
    pub fn apply_request(
        &mut self,
        req: &mut impl RequestHeadMut,
        forwarding: &Forwarding,
    ) -> Result<(), HeadError> {
        if [X_REQUEST_ID, "x-forwarded-for", "x-forwarded-proto"]
            .iter()
            .any(|n| self.chain.request_header_changed(n.as_bytes()))
        {
            forwarding.apply(req)?;
            self.forwarded_early = true;
        }
        self.chain.apply_request(req)?;
        if let Some(pre) = &self.prebody {
            req.remove_header("transfer-encoding");
            req.insert_header("content-length", pre.len().to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Whether a plugin can hold response body back (see [`Chain::may_hold_response_body`]).
    pub fn may_hold_response_body(&self) -> bool {
        self.chain.may_hold_response_body()
    }

    /// Whether the forwarding headers are on the client's request already.
    pub fn forwarded_early(&self) -> bool {
        self.forwarded_early
    }

    /// The upstream copy of the request head, before it goes out: a streamed body whose
    /// `content-length` a plugin removed goes chunked over HTTP/1 (as on Envoy); a kept one is
    /// checked as the body flows. `has_body`: the client's request has a body.
    pub fn upstream_request(
        &mut self,
        upstream: &mut impl RequestHeadMut,
        has_body: bool,
    ) -> Result<(), HeadError> {
        if self.prebody.is_some() || !has_body {
            return Ok(());
        }
        let head = upstream.parts();
        let declared = content_length(&head.headers);
        if declared.is_none()
            && !head.headers.contains_key(http::header::TRANSFER_ENCODING)
            && head.version != http::Version::HTTP_2
        {
            upstream.insert_header("transfer-encoding", b"chunked")?;
        }
        self.chain.set_declared_length(BodyKind::Request, declared);
        Ok(())
    }

    /// One read of the request body on its way upstream (`end`: the last). While a plugin
    /// holds the body, `chunk` comes back empty (nothing goes upstream yet, and the upstream
    /// request is not ended); what it held follows with a later read. A plugin pausing at the
    /// end is waited for. A body read before forwarding replaces what pingora replays.
    pub async fn request_body(
        &mut self,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Reply> {
        if let Some(pre) = &self.prebody {
            // Counted when it was read.
            *chunk = Some(if end { pre.clone() } else { Bytes::new() });
            return Ok(());
        }
        let n = chunk.as_ref().map_or(0, Bytes::len);
        self.chain.stream().info.add_request_body(n);
        self.chain.request_body(chunk, end).await
    }

    /// `on_response_headers` of every plugin, in reverse order, over the upstream's response
    /// head; what they changed is written into `resp`. `head_request`: the request was a
    /// `HEAD`; `h2_downstream`: the client speaks HTTP/2 (no chunked framing).
    pub async fn response_head(
        &mut self,
        resp: &mut impl ResponseHeadMut,
        head_request: bool,
        h2_downstream: bool,
    ) -> Result<(), Reply> {
        self.response_started = true;
        self.chain.stream().info.set_code_details("via_upstream");
        let no_body = !response_has_body(head_request, resp.parts());
        self.chain.load_response(resp.parts());
        self.chain.response_headers(no_body).await?;
        self.chain
            .apply_response(resp)
            .map_err(|e| Reply::internal(&e.to_string()))?;
        if !no_body {
            // As for requests: a plugin that changes the body's length has removed
            // content-length; a kept one is checked as the body flows.
            let headers = &resp.parts().headers;
            let declared = content_length(headers);
            if declared.is_none()
                && !headers.contains_key(http::header::TRANSFER_ENCODING)
                && !h2_downstream
            {
                resp.insert_header("transfer-encoding", b"chunked")
                    .map_err(|e| Reply::internal(&e.to_string()))?;
            }
            self.chain.set_declared_length(BodyKind::Response, declared);
        }
        Ok(())
    }

    /// One part of the response body on its way to the client (synchronous, as pingora's hook
    /// is). A failure after the head went out can only cut the response.
    pub fn response_body(&mut self, chunk: &mut Option<Bytes>, end: bool) -> Result<(), Reply> {
        self.chain.response_body(chunk, end)?;
        let n = chunk.as_ref().map_or(0, Bytes::len);
        self.chain.stream().info.add_response_body(n);
        Ok(())
    }

    /// The response trailers, through the plugins (see [`Chain::response_trailers`]).
    /// Returns body bytes plugins had held, to send before the trailers.
    pub async fn response_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
    ) -> Result<Option<Bytes>, Reply> {
        let released = self.chain.response_trailers(trailers).await?;
        let n = released.as_ref().map_or(0, Bytes::len);
        self.chain.stream().info.add_response_body(n);
        Ok(released)
    }

    /// What to send for `reply`. A reply made while the request was still going up passes
    /// through the response callbacks of the plugins that saw the request (they may add
    /// headers, read `:status`, rewrite the body), as on the reference host; one made in a
    /// response phase is sent as it is.
    pub async fn answer<R: NewResponseHead>(
        &mut self,
        mut reply: Reply,
        request_id: Option<&str>,
    ) -> Answer<R> {
        {
            let info = &mut self.chain.stream().info;
            let details = std::mem::take(&mut reply.details);
            if details.is_empty() {
                info.set_code_details("sluice_local_reply");
            } else {
                info.set_code_details(details);
            }
            if reply.reset {
                info.add_response_flag(RequestInfo::FLAG_LOCAL_RESET);
                return Answer::Reset;
            }
        }
        let (mut resp, mut body) = match reply_parts::<R>(&reply, request_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(plugin = %reply.plugin, error = %e, "plugin reply cannot be sent");
                return Answer::Reset;
            }
        };
        if std::mem::replace(&mut self.response_started, true) {
            // What the client gets is what `on_log` reads (`:status`, response headers).
            self.chain.load_response(resp.parts());
            self.chain.stream().response_headers_writable = false;
            self.chain.stream().info.add_response_body(body.len());
            return Answer::Send(Box::new(resp), body);
        }
        match self.chain.response_over_reply(&mut resp, &mut body).await {
            Ok(()) => {}
            Err(r) if r.reset => return Answer::Reset,
            Err(r) => {
                // A plugin answered or failed over a reply: the first reply stands.
                tracing::debug!(plugin = %r.plugin, status = r.status, "a reply during the response callbacks of a reply was ignored");
            }
        }
        self.chain.stream().info.add_response_body(body.len());
        Answer::Send(Box::new(resp), body)
    }

    /// `on_log` of every plugin, with the status the client got (0: none). The request's
    /// duration ends here.
    pub fn log(&mut self, status: u16) {
        self.chain.stream().info.complete();
        self.chain.log(status);
    }
}

/// Whether a response to the request has a body (RFC 9110 §6.4.1): not for `HEAD`, 1xx, 204
/// or 304, nor when it declares `content-length: 0`.
pub fn response_has_body(head_request: bool, resp: &http::response::Parts) -> bool {
    let code = resp.status.as_u16();
    !(head_request
        || code == 204
        || code == 304
        || (100..200).contains(&code)
        || content_length(&resp.headers) == Some(0))
}

/// The head and body of a reply (a plugin's local response, or the host's answer to a plugin
/// failure): its headers, `content-length`, and the request's id.
pub fn reply_parts<R: NewResponseHead>(
    reply: &Reply,
    request_id: Option<&str>,
) -> Result<(R, Bytes), HeadError> {
    let mut resp = R::build(reply.status, reply.headers.len() + 2)?;
    for (k, v) in &reply.headers {
        resp.append_header(String::from_utf8_lossy(k).into_owned(), v.clone())?;
    }
    resp.insert_header("content-length", reply.body.len().to_string().as_bytes())?;
    if let Some(id) = request_id {
        resp.insert_header(X_REQUEST_ID, id.as_bytes())?;
    }
    Ok((resp, reply.body.clone()))
}
