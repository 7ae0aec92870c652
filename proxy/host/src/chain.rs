//! A route's plugin chain for one request: which VM and context each plugin serves it from,
//! the request's [`Stream`], and one function per phase that runs the plugins in order (the
//! reverse order on the response path) and says what the proxy must do next.
//!
//! Semantics, as Envoy's Wasm filter:
//! - A local response from a plugin ends the phase; later plugins do not run for it.
//! - PAUSE from a header callback stops the chain until the plugin resumes it
//!   (`proxy_continue_stream`, typically after an HTTP callout) or answers locally. A plugin
//!   that pauses request headers while a body follows, with no callout pending, is waiting for
//!   the body: the proxy reads the whole body before anything goes upstream and gives it to
//!   the plugin, which may then still change the headers or answer locally.
//! - PAUSE from a body callback means "buffer": the plugin sees the body so far, cumulatively,
//!   on its next call; later plugins see nothing until it continues. Past the plugin's
//!   `max_body_bytes` the request gets 413 (a response, 502).
//! - A plugin that fails (trap, fuel, deadline, memory, ABI) fails the request by its policy:
//!   `fail_closed` answers 503, `fail_open` skips the plugin for the rest of the request.

use std::sync::Arc;

use bytes::Bytes;
use http::{request, response};

use crate::head::{HeadError, RequestHeadMut, ResponseHeadMut};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::tap::{Observer, Served, Tapped};
use crate::wasm::callout::{CalloutDone, CalloutEvent, CalloutSink};
use crate::wasm::plugin::Plugin;
use crate::wasm::settings::FailurePolicy;
use crate::wasm::settings::Version;
use crate::wasm::stream::{
    list_get, list_replace, BodyKind, HeaderList, LocalResponse, RequestInfo, Stream,
};
use crate::wasm::vm::{Parked, StreamCall, Vm};

/// A response the proxy must send instead of going on: a plugin's local response, or the
/// answer to a plugin failure.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Headers (besides content type/length and the request id).
    pub headers: HeaderList,
    /// Body.
    pub body: Bytes,
    /// The plugin it came from.
    pub plugin: String,
    /// Why, for `response.code_details` (a plugin's `details`, or the host's own label).
    pub details: std::borrow::Cow<'static, str>,
    /// Reset the stream instead of answering (`proxy_close_stream`): HTTP/2 `RST_STREAM`,
    /// HTTP/1 a closed connection; status, headers and body are unused.
    pub reset: bool,
}

impl Reply {
    /// A 500 the host answers when it cannot apply what the plugins asked for.
    pub fn internal(message: &str) -> Reply {
        Reply::text(500, "", format!("500 Internal Server Error: {message}\n"))
    }

    /// A text response (`plugin` empty when the host answers itself).
    pub fn text(status: u16, plugin: &str, body: String) -> Reply {
        Reply {
            status,
            headers: vec![(
                b"content-type".to_vec(),
                b"text/plain; charset=utf-8".to_vec(),
            )],
            body: Bytes::from(body),
            plugin: plugin.to_string(),
            details: "".into(),
            reset: false,
        }
    }

    /// A stream reset asked for by `plugin`.
    pub fn reset(plugin: &str) -> Reply {
        Reply {
            status: 0,
            headers: Vec::new(),
            body: Bytes::new(),
            plugin: plugin.to_string(),
            details: "wasm_reset_stream".into(),
            reset: true,
        }
    }

    fn failed(plugin: &str) -> Reply {
        let mut r = Reply::text(
            503,
            plugin,
            format!("503 Service Unavailable: plugin \"{plugin}\" failed\n"),
        );
        r.details = "wasm_fail_stream".into();
        r
    }

    fn local(plugin: &str, r: LocalResponse) -> Reply {
        Reply {
            status: r.status,
            headers: r.headers,
            body: r.body,
            plugin: plugin.to_string(),
            details: r.details.into(),
            reset: false,
        }
    }
}

/// A plugin's stream context: ended (`on_done`, `on_delete`) when dropped.
struct Ctx {
    vm: Arc<Vm>,
    id: u32,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.vm.finish_context(self.id);
    }
}

struct Member {
    plugin: Arc<Plugin>,
    /// `None`: skipped (failed open).
    ctx: Option<Ctx>,
    /// Body bytes this plugin holds back (it paused its body callback).
    held: Vec<u8>,
    /// What this plugin's calls for the request cost.
    cost: crate::wasm::stream::CallCost,
    /// It failed for this request.
    failed: bool,
    /// The status of its local reply.
    replied: Option<u16>,
    /// It reset the stream.
    reset: bool,
    /// Who is told what it did when the request ends (a rollout, a capture), and whether
    /// each wants the tap.
    watches: Vec<(Arc<dyn Observer>, Version, bool)>,
    /// What it saw and left, when a watcher wants it.
    tap: Option<Box<Tapped>>,
}

impl Member {
    /// What it did so far.
    fn served(&self) -> Served {
        Served {
            failed: self.failed,
            replied: self.replied,
            reset: self.reset,
            nanos: self.cost.nanos,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let served = self.served();
        let mut tap = self.tap.take();
        let n = self.watches.len();
        for (k, (observer, version, wants_tap)) in self.watches.drain(..).enumerate() {
            let tapped = if wants_tap {
                if k + 1 == n {
                    tap.take().map(|t| *t)
                } else {
                    tap.as_deref().cloned()
                }
            } else {
                None
            };
            observer.done(version, served, tapped);
        }
    }
}

/// A watcher of one chain member (see [`crate::tap`]).
pub struct Watch {
    /// The member's position in the chain.
    pub at: usize,
    /// Who is told.
    pub observer: Arc<dyn Observer>,
    /// Which version of its plugin the member is.
    pub version: Version,
    /// The observer wants the [`Tapped`] record (costs copies of the headers and bodies).
    pub tap: bool,
}

/// What a request-headers pass ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadersDone {
    /// Every plugin continued.
    Continue,
    /// A plugin waits for the whole request body before the request may go on.
    NeedBody,
}

enum Step {
    Continue,
    Pause,
}

/// A body's `content-length` as it went out with the header, and what followed it: plugins
/// that change a body's length must remove `content-length` in the header phase first (as on
/// Envoy); if one does not, the body would not match its header, so the request fails instead.
#[derive(Debug, Default)]
struct BodyLength {
    /// `content-length` sent with the header (`None`: chunked, or no body).
    declared: Option<u64>,
    /// Body bytes passed on so far.
    passed: u64,
    /// The last plugin (chain position) whose callback changed the body's length.
    changed_by: Option<usize>,
}

/// The chain of one request.
pub struct Chain {
    members: Vec<Member>,
    stream: Option<Box<Stream>>,
    /// Where this request's callouts report, once a plugin made one (the channel is made by
    /// the first callout: see [`Stream::callout_sender`]).
    rx: Option<UnboundedReceiver<CalloutDone>>,
    /// Plugins whose request-headers callback ran.
    headers_done: usize,
    /// Whether the request has a body (its headers did not end the stream).
    request_has_body: bool,
    /// Whether the response has a body.
    response_has_body: bool,
    /// The request body's declared length and what was forwarded.
    request_length: BodyLength,
    /// The response body's declared length and what was sent.
    response_length: BodyLength,
    /// The whole request body was read before forwarding.
    body_read: bool,
    /// Where the request's state waits while a plugin pauses (see [`Chain::wait_resume`]);
    /// set only while a wait is under way, or when one was abandoned (the client left).
    parked: Option<(Arc<Vm>, Arc<Parked>)>,
}

fn policy_skip(m: &mut Member) -> Result<(), Reply> {
    m.failed = true;
    match m.plugin.settings.on_error {
        FailurePolicy::FailOpen => {
            m.ctx = None;
            m.held.clear();
            Ok(())
        }
        FailurePolicy::FailClosed => Err(Reply::failed(&m.plugin.settings.name)),
    }
}

/// A guest call of `m` failed: its policy applies. Shared data out of reach is the store's
/// failure, not the plugin's: a rollout does not count it against the version.
fn guest_failed(m: &mut Member, e: &crate::wasm::vm::GuestError) -> Result<(), Reply> {
    let r = policy_skip(m);
    if e.kind == crate::wasm::vm::ErrorKind::SharedData {
        m.failed = false;
    }
    r
}

impl Drop for Chain {
    fn drop(&mut self) {
        // An abandoned wait leaves the request reachable from its VM: end that.
        if let Some((vm, parked)) = self.parked.take() {
            vm.unpark(&parked);
        }
        // What each plugin spent on this request, by route (`/plugins/NAME`).
        if let Some(s) = self.stream.as_deref() {
            let route = s.info.route_name.as_str();
            for m in &self.members {
                if m.ctx.is_some() || m.cost != Default::default() {
                    m.plugin.record_route_cost(route, m.cost);
                }
            }
        }
    }
}

impl Chain {
    /// Takes a VM of each plugin and creates the request's context in it. A plugin with no
    /// healthy VM, or whose context creation fails, is handled by its policy.
    pub fn new(plugins: &[Arc<Plugin>], info: RequestInfo) -> Result<Chain, Reply> {
        Chain::watched(plugins, Vec::new(), info)
    }

    /// [`Chain::new`] with members that are versions of plugins under rollout.
    pub fn watched(
        plugins: &[Arc<Plugin>],
        mut watches: Vec<Watch>,
        info: RequestInfo,
    ) -> Result<Chain, Reply> {
        let mut members = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let mut mine = Vec::new();
            while let Some(k) = watches.iter().position(|w| w.at == i) {
                let w = watches.swap_remove(k);
                mine.push((w.observer, w.version, w.tap));
            }
            let tap = mine.iter().any(|w| w.2).then(|| {
                let mut t = Tapped::new(p.settings.limits.max_body_bytes);
                t.info = info.clone();
                Box::new(t)
            });
            let mut m = Member {
                plugin: p.clone(),
                ctx: None,
                held: Vec::new(),
                cost: Default::default(),
                failed: false,
                replied: None,
                reset: false,
                watches: mine,
                tap,
            };
            match p.pick() {
                Some(vm) => match vm.create_context() {
                    Ok(id) => m.ctx = Some(Ctx { vm, id }),
                    Err(_) => policy_skip(&mut m)?,
                },
                None => {
                    tracing::warn!(plugin = %p.settings.name, "plugin has no healthy VM");
                    policy_skip(&mut m)?;
                }
            }
            if let (Some(t), Some(ctx)) = (m.tap.as_deref_mut(), &m.ctx) {
                t.sees_request_body = ctx.vm.exports_body(BodyKind::Request);
                t.sees_response_body = ctx.vm.exports_body(BodyKind::Response);
            }
            members.push(m);
        }
        let stream = Box::new(Stream {
            info,
            ..Stream::default()
        });
        Ok(Chain {
            members,
            stream: Some(stream),
            rx: None,
            headers_done: 0,
            request_has_body: true,
            response_has_body: true,
            request_length: BodyLength::default(),
            response_length: BodyLength::default(),
            body_read: false,
            parked: None,
        })
    }

    /// The request's state.
    pub fn stream(&mut self) -> &mut Stream {
        self.recover();
        self.stream
            .as_deref_mut()
            .expect("the stream is back after every call")
    }

    /// Takes the request's state back from a wait that was abandoned (its future dropped
    /// while the state was parked). A root callback holds the state for one guest call at
    /// most (bounded by the plugin's deadline), so waiting for it here is short.
    fn recover(&mut self) {
        let Some((vm, parked)) = self.parked.take() else {
            return;
        };
        vm.unpark(&parked);
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(s) = parked.try_take() {
                self.stream = Some(s);
                return;
            }
            if std::time::Instant::now() > give_up {
                // Cannot happen while root callbacks give the state back when they end.
                tracing::error!("a paused request's state was not given back; its plugins see an empty request from now on");
                self.stream = Some(Box::default());
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Keeps the receiver of a callout channel the last call made.
    fn take_receiver(&mut self) {
        if let Some(rx) = self
            .stream
            .as_deref_mut()
            .and_then(Stream::take_callout_receiver)
        {
            self.rx = Some(rx);
        }
    }

    /// Runs one callback of member `i`. `Ok(None)`: the member is skipped.
    fn invoke(&mut self, i: usize, call: StreamCall) -> Result<Option<Step>, Reply> {
        self.recover();
        let m = &mut self.members[i];
        let Some(ctx) = &m.ctx else {
            return Ok(None);
        };
        let vm = ctx.vm.clone();
        let id = ctx.id;
        {
            let s = self.stream.as_deref_mut().expect("stream present");
            s.effects.local_response = None;
            s.effects.close = false;
        }
        let before = self.stream.as_deref().map(|s| s.cost).unwrap_or_default();
        let r = vm.call_stream(id, call, &mut self.stream, i, &CalloutSink::Stream, None);
        self.take_receiver();
        if let Some(s) = self.stream.as_deref() {
            self.members[i].cost.add(s.cost.since(before));
        }
        let action = match r {
            Ok(a) => a,
            Err(e) => {
                guest_failed(&mut self.members[i], &e)?;
                return Ok(None);
            }
        };
        let s = self.stream.as_deref_mut().expect("stream present");
        if let Some(local) = s.effects.local_response.take() {
            let m = &mut self.members[i];
            m.replied = Some(local.status);
            return Err(Reply::local(&m.plugin.settings.name, local));
        }
        if s.effects.close {
            self.members[i].reset = true;
            return Err(Reply::reset(&self.members[i].plugin.settings.name));
        }
        Ok(Some(if action == 1 {
            Step::Pause
        } else {
            Step::Continue
        }))
    }

    /// Waits until the request (or response) is resumed, delivering callout results to the
    /// plugins that made them; fails after member `i`'s `pause_timeout`. While it waits, the
    /// request's state is parked in member `i`'s VM, where that plugin's root callbacks
    /// (`on_tick`, …) may switch to it and resume it, answer it or reset it.
    async fn wait_resume(&mut self, i: usize, request: bool) -> Result<(), Reply> {
        let limits = self.members[i].plugin.settings.limits;
        let deadline = tokio::time::Instant::now() + limits.pause_timeout;
        loop {
            {
                let s = self.stream.as_deref_mut().expect("stream present");
                if let Some(local) = s.effects.local_response.take() {
                    let m = &mut self.members[i];
                    m.replied = Some(local.status);
                    return Err(Reply::local(&m.plugin.settings.name, local));
                }
                if std::mem::take(&mut s.effects.close) {
                    self.members[i].reset = true;
                    return Err(Reply::reset(&self.members[i].plugin.settings.name));
                }
                let resumed = if request {
                    &mut s.effects.resume_request
                } else {
                    &mut s.effects.resume_response
                };
                if std::mem::take(resumed) {
                    return Ok(());
                }
            }
            let Some(ctx) = &self.members[i].ctx else {
                // Failed open while paused: go on without it.
                return Ok(());
            };
            if ctx.vm.is_failed() {
                // Its VM failed in a root callback while the request waited.
                policy_skip(&mut self.members[i])?;
                return Ok(());
            }
            let vm = ctx.vm.clone();
            let parked = Parked::new(ctx.id, self.stream.take());
            vm.park(parked.clone());
            // Should this future be dropped while parked (the client left), the next use of
            // the chain takes the state back (see `recover`).
            self.parked = Some((vm.clone(), parked.clone()));
            let rx = &mut self.rx;
            let callout = async move {
                match rx {
                    Some(rx) => rx.recv().await,
                    // No callout was made: only a root callback or the deadline ends the wait.
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                r = tokio::time::timeout_at(deadline, callout) => Some(r),
                _ = parked.notify.notified() => None,
            };
            vm.unpark(&parked);
            self.stream = parked.take_back().await;
            self.parked = None;
            match event {
                // A root callback had the request's state: look at what it asked for.
                None => {}
                Some(Ok(Some(done))) => self.deliver(done)?,
                Some(Ok(None) | Err(_)) => {
                    let name = self.members[i].plugin.settings.name.clone();
                    tracing::warn!(plugin = %name, "plugin did not resume the request in time");
                    return Err(Reply::text(
                        504,
                        &name,
                        format!(
                            "504 Gateway Timeout: plugin \"{name}\" did not resume the request within {} ms\n",
                            limits.pause_timeout.as_millis()
                        ),
                    ));
                }
            }
        }
    }

    /// Delivers the callout answers and gRPC events that arrived while no plugin waited (a
    /// plugin made a call or opened a stream and let the request go on). Runs before each
    /// later phase's callbacks, so that plugins see them as soon as the request's task is free,
    /// as on the reference host (which delivers them from its event loop whenever they come).
    /// A resume they ask for changes nothing: the request is not paused.
    fn deliver_arrived(&mut self) -> Result<(), Reply> {
        while let Some(done) = self.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            let member = done.member;
            self.deliver(done)?;
            let s = self.stream();
            if std::mem::take(&mut s.effects.close) {
                let name = &self.members[member].plugin.settings.name;
                return Err(Reply::reset(name));
            }
            // Nothing waits: a resume asked for now must not end a later pause at once.
            s.effects.resume_request = false;
            s.effects.resume_response = false;
        }
        Ok(())
    }

    /// Calls `on_http_call_response` on the plugin that made the callout.
    fn deliver(&mut self, done: CalloutDone) -> Result<(), Reply> {
        if done.ends_call() {
            let s = self.stream();
            s.pending_callouts = s.pending_callouts.saturating_sub(1);
            if matches!(done.event, CalloutEvent::Grpc(_)) {
                s.grpc_calls.remove(&done.token);
            }
        }
        let j = done.member;
        let Some(m) = self.members.get(j) else {
            return Ok(());
        };
        let Some(ctx) = &m.ctx else {
            return Ok(());
        };
        let (vm, id) = (ctx.vm.clone(), ctx.id);
        let token = done.token;
        self.stream().effects.local_response = None;
        let before = self.stream().cost;
        let r = match done.event {
            CalloutEvent::Http(response) => {
                let (nh, len, nt, resp) = CalloutDone::counts(response);
                vm.call_stream(
                    id,
                    StreamCall::HttpCallResponse(token, nh, len, nt),
                    &mut self.stream,
                    j,
                    &CalloutSink::Stream,
                    Some(resp.unwrap_or_default()),
                )
            }
            CalloutEvent::Grpc(event) => vm.call_grpc(id, token, event, &mut self.stream, j),
        };
        self.take_receiver();
        if let Some(s) = self.stream.as_deref() {
            self.members[j].cost.add(s.cost.since(before));
        }
        if let Err(e) = r {
            return guest_failed(&mut self.members[j], &e);
        }
        self.recover();
        let s = self.stream.as_deref_mut().expect("stream present");
        if let Some(local) = s.effects.local_response.take() {
            let m = &mut self.members[j];
            m.replied = Some(local.status);
            return Err(Reply::local(&m.plugin.settings.name, local));
        }
        Ok(())
    }

    /// Loads the request header (with pseudo-headers) into the stream, with `extra` headers
    /// set on top (the forwarding headers the upstream will get).
    pub fn load_request<'n, 'v>(
        &mut self,
        req: &request::Parts,
        scheme: &str,
        extra: impl IntoIterator<Item = (&'n str, &'v [u8])>,
    ) {
        let s = self.stream();
        s.request_headers = request_list(req, scheme);
        for (name, value) in extra {
            list_replace(&mut s.request_headers, name.as_bytes(), value);
        }
        s.request_headers_writable = true;
    }

    /// Loads a request header list as a member saw it (pseudo-headers first, forwarding
    /// headers included): a shadow run replays what the stable version got.
    pub fn load_request_list(&mut self, list: HeaderList) {
        let s = self.stream();
        s.request_headers = list;
        s.request_headers_writable = true;
    }

    /// Loads a response header list (with `:status`) as a member saw it.
    pub fn load_response_list(&mut self, list: HeaderList) {
        let status =
            list_get(&list, b":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let s = self.stream();
        s.response_headers = list;
        s.response_headers_writable = true;
        s.request_headers_writable = false;
        s.info.response_code = status;
    }

    /// What member `i` did so far (failure, local reply, reset, guest time).
    pub fn served(&self, i: usize) -> Served {
        self.members
            .get(i)
            .map_or_else(Served::default, Member::served)
    }

    /// Whether a plugin changed request header `name` (any case), or replaced the whole map.
    pub fn request_header_changed(&mut self, name: &[u8]) -> bool {
        let c = &self.stream().request_changed;
        c.all || c.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Runs `on_request_headers` of the plugins not yet run. `end_of_stream`: the request has
    /// no body.
    pub async fn request_headers(&mut self, end_of_stream: bool) -> Result<HeadersDone, Reply> {
        self.request_has_body = !end_of_stream;
        while self.headers_done < self.members.len() {
            let i = self.headers_done;
            self.headers_done += 1;
            let n = self.stream().request_headers.len() as u32;
            self.tap_headers(i, BodyKind::Request, false);
            if let Some(t) = self.members[i].tap.as_deref_mut() {
                t.request_has_body = !end_of_stream;
            }
            match self.invoke(i, StreamCall::RequestHeaders(n, end_of_stream))? {
                None | Some(Step::Continue) => {}
                Some(Step::Pause) => {
                    let pending = self.stream().pending_callouts > 0;
                    if !pending && !end_of_stream && !self.body_read {
                        self.tap_headers(i, BodyKind::Request, true);
                        return Ok(HeadersDone::NeedBody);
                    }
                    self.wait_resume(i, true).await?;
                }
            }
            self.tap_headers(i, BodyKind::Request, true);
        }
        Ok(HeadersDone::Continue)
    }

    /// After [`HeadersDone::NeedBody`]: gives the whole request `body` to the plugins in
    /// order (each sees it once, complete), runs the remaining request-headers callbacks, and
    /// returns the body to forward.
    pub async fn request_body_complete(&mut self, body: Vec<u8>) -> Result<Vec<u8>, Reply> {
        self.body_read = true;
        let mut body = body;
        let mut fed = 0;
        loop {
            for j in fed..self.headers_done {
                let max = self.members[j].plugin.settings.limits.max_body_bytes;
                if self.members[j].ctx.is_some() && body.len() > max {
                    return Err(too_large(&self.members[j].plugin.settings.name, 413));
                }
                if let Some(t) = self.members[j].tap.as_deref_mut() {
                    t.body(BodyKind::Request, false).add(&body);
                }
                {
                    let s = self.stream();
                    s.body = std::mem::take(&mut body);
                    s.body_kind = Some(BodyKind::Request);
                    s.body_end = true;
                }
                let len = self.stream().body.len() as u32;
                let step = self.invoke(j, StreamCall::RequestBody(len, true));
                let s = self.stream();
                body = std::mem::take(&mut s.body);
                s.body_kind = None;
                if let Some(Step::Pause) = step? {
                    self.wait_resume(j, true).await?;
                }
                if let Some(t) = self.members[j].tap.as_deref_mut() {
                    t.body(BodyKind::Request, true).add(&body);
                }
                self.tap_headers(j, BodyKind::Request, true);
            }
            fed = self.headers_done;
            if self.headers_done >= self.members.len() {
                return Ok(body);
            }
            self.request_headers(false).await?;
        }
    }

    /// Runs one chunk of a streamed body through the plugins (request order for requests,
    /// reverse for responses). Returns `true` if the caller must wait for a resume (a plugin
    /// paused at the end of the stream).
    fn body_chunk(
        &mut self,
        kind: BodyKind,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Result<Option<usize>, Reply> {
        self.body_chunk_from(kind, 0, chunk, end)
    }

    /// [`Chain::body_chunk`] from position `start` in the body's order (request order for
    /// requests, reverse for responses): the members before it do not see this part.
    fn body_chunk_from(
        &mut self,
        kind: BodyKind,
        start: usize,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Result<Option<usize>, Reply> {
        let n = self.members.len();
        // The chunk's own buffer when nothing else holds it (no copy), else a copy.
        let mut data: Option<Vec<u8>> = chunk.take().map(Vec::from);
        for k in start..n {
            let i = match kind {
                BodyKind::Request => k,
                BodyKind::Response => n - 1 - k,
            };
            let m = &mut self.members[i];
            if let (Some(t), Some(d)) = (m.tap.as_deref_mut(), data.as_deref()) {
                t.body(kind, false).add(d);
            }
            let passes = match &m.ctx {
                None => true,
                // A module without this body callback costs nothing: the chunk passes it by.
                Some(ctx) => m.held.is_empty() && !ctx.vm.exports_body(kind),
            };
            if passes {
                if let (Some(t), Some(d)) = (m.tap.as_deref_mut(), data.as_deref()) {
                    t.body(kind, true).add(d);
                }
                continue;
            }
            match data.take() {
                Some(d) if m.held.is_empty() => m.held = d,
                Some(d) => m.held.extend_from_slice(&d),
                None => {}
            }
            if m.held.is_empty() && !end {
                continue;
            }
            let max = m.plugin.settings.limits.max_body_bytes;
            if m.held.len() > max {
                let status = if kind == BodyKind::Request { 413 } else { 502 };
                return Err(too_large(&m.plugin.settings.name, status));
            }
            let held = std::mem::take(&mut m.held);
            let len = held.len() as u32;
            {
                let s = self.stream();
                s.body = held;
                s.body_kind = Some(kind);
                s.body_end = end;
            }
            let call = match kind {
                BodyKind::Request => StreamCall::RequestBody(len, end),
                BodyKind::Response => StreamCall::ResponseBody(len, end),
            };
            let step = self.invoke(i, call);
            let s = self.stream();
            let body = std::mem::take(&mut s.body);
            s.body_kind = None;
            if body.len() != len as usize {
                self.length_mut(kind).changed_by = Some(i);
            }
            match step? {
                None | Some(Step::Continue) => {
                    if let Some(t) = self.members[i].tap.as_deref_mut() {
                        t.body(kind, true).add(&body);
                    }
                    data = Some(body)
                }
                Some(Step::Pause) if !end => {
                    self.members[i].held = body;
                    *chunk = nothing(kind);
                    return Ok(None);
                }
                Some(Step::Pause) => {
                    // Paused at the end: the body stays with it until it resumes.
                    self.members[i].held = body;
                    *chunk = nothing(kind);
                    return Ok(Some(i));
                }
            }
        }
        *chunk = match data.filter(|d| !d.is_empty()) {
            Some(d) => Some(Bytes::from(d)),
            None => nothing(kind),
        };
        Ok(None)
    }

    /// `on_request_body` for one chunk streamed to the upstream. A plugin pausing at the end
    /// of the body is waited for (callouts).
    pub async fn request_body(
        &mut self,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Reply> {
        if !self.request_has_body {
            // Its header ended the stream: no body callbacks (as on Envoy).
            return Ok(());
        }
        self.deliver_arrived()?;
        let mut waiting = self.body_chunk(BodyKind::Request, chunk, end)?;
        while let Some(i) = waiting {
            self.wait_resume(i, true).await?;
            // Release what it held, through the plugins after it.
            let held = self.release(BodyKind::Request, i);
            let mut rest = Some(Bytes::from(held));
            waiting = self.body_chunk_from(BodyKind::Request, i + 1, &mut rest, end)?;
            let mut out = chunk.take().map(Vec::from).unwrap_or_default();
            out.extend_from_slice(rest.as_deref().unwrap_or_default());
            *chunk = Some(Bytes::from(out));
        }
        self.check_length(BodyKind::Request, chunk, end)
    }

    fn length_mut(&mut self, kind: BodyKind) -> &mut BodyLength {
        match kind {
            BodyKind::Request => &mut self.request_length,
            BodyKind::Response => &mut self.response_length,
        }
    }

    /// Records the `content-length` the body's header went out with (`None`: chunked).
    pub fn set_declared_length(&mut self, kind: BodyKind, declared: Option<u64>) {
        self.length_mut(kind).declared = declared;
    }

    /// Counts what goes out and fails when a plugin changed the body's length while the header
    /// still declares the old one: past the declared length, or short of it at the end.
    fn check_length(
        &mut self,
        kind: BodyKind,
        chunk: &Option<Bytes>,
        end: bool,
    ) -> Result<(), Reply> {
        let l = self.length_mut(kind);
        l.passed += chunk.as_ref().map_or(0, |c| c.len() as u64);
        let (Some(declared), Some(i)) = (l.declared, l.changed_by) else {
            return Ok(());
        };
        if l.passed <= declared && !(end && l.passed < declared) {
            return Ok(());
        }
        let passed = l.passed;
        let settings = self.members[i].plugin.settings.clone();
        let name = settings.name.clone();
        let (phase, what, status) = match kind {
            BodyKind::Request => ("request_body", "request", 500),
            BodyKind::Response => ("response_body", "response", 502),
        };
        crate::wasm::vm::record(&settings, phase, crate::wasm::vm::ErrorKind::Abi);
        tracing::error!(
            target: "sluice::plugin",
            plugin = %name,
            declared,
            body_bytes = passed,
            "plugin changed the {what} body's length but left content-length; remove it in on_{what}_headers"
        );
        Err(Reply::text(
            status,
            &name,
            format!(
                "{status} {}: plugin \"{name}\" changed the {what} body's length but kept its content-length\n",
                if status == 500 { "Internal Server Error" } else { "Bad Gateway" }
            ),
        ))
    }

    /// Records the request's or response's headers as member `i` gets them (`out` false: the
    /// first time only) or leaves them (`out`: the last time counts), if it is tapped.
    fn tap_headers(&mut self, i: usize, kind: BodyKind, out: bool) {
        if self.members[i].tap.is_none() {
            return;
        }
        let list = {
            let s = self.stream();
            match kind {
                BodyKind::Request => s.request_headers.clone(),
                BodyKind::Response => s.response_headers.clone(),
            }
        };
        let Some(t) = self.members[i].tap.as_deref_mut() else {
            return;
        };
        let slot = match (kind, out) {
            (BodyKind::Request, false) => &mut t.request_in,
            (BodyKind::Request, true) => &mut t.request_out,
            (BodyKind::Response, false) => &mut t.response_in,
            (BodyKind::Response, true) => &mut t.response_out,
        };
        if out || slot.is_none() {
            *slot = Some(list);
        }
    }

    /// Takes what member `i` held of a body, to pass it on.
    fn release(&mut self, kind: BodyKind, i: usize) -> Vec<u8> {
        let m = &mut self.members[i];
        let held = std::mem::take(&mut m.held);
        if let Some(t) = m.tap.as_deref_mut() {
            t.body(kind, true).add(&held);
        }
        held
    }

    /// Loads the response header (with `:status`) into the stream.
    pub fn load_response(&mut self, resp: &response::Parts) {
        let s = self.stream();
        s.response_headers = response_list(resp);
        s.response_headers_writable = true;
        s.request_headers_writable = false;
        s.info.response_code = Some(resp.status.as_u16());
    }

    /// `on_response_headers`, in reverse order. A pause with a callout pending is waited for;
    /// a pause without one is treated as continue (the response header cannot be held back
    /// while its body streams).
    pub async fn response_headers(&mut self, end_of_stream: bool) -> Result<(), Reply> {
        self.response_has_body = !end_of_stream;
        self.deliver_arrived()?;
        for i in (0..self.members.len()).rev() {
            let n = self.stream().response_headers.len() as u32;
            self.tap_headers(i, BodyKind::Response, false);
            if let Some(Step::Pause) =
                self.invoke(i, StreamCall::ResponseHeaders(n, end_of_stream))?
            {
                if self.stream().pending_callouts > 0 {
                    self.wait_resume(i, false).await?;
                }
            }
            self.tap_headers(i, BodyKind::Response, true);
        }
        self.stream().response_headers_writable = false;
        Ok(())
    }

    /// Whether a plugin of the chain can hold response body back (it has `on_response_body`).
    pub fn may_hold_response_body(&self) -> bool {
        self.members.iter().any(|m| {
            m.ctx
                .as_ref()
                .is_some_and(|c| c.vm.exports_body(BodyKind::Response))
        })
    }

    /// `on_response_body` for one chunk (synchronous: pingora's response body hook is). A
    /// plugin still pausing at the end of the body gets what it held released as is.
    pub fn response_body(&mut self, chunk: &mut Option<Bytes>, end: bool) -> Result<(), Reply> {
        if !self.response_has_body {
            // Its header ended the stream: no body callbacks (as on Envoy).
            return Ok(());
        }
        self.deliver_arrived()?;
        let mut waiting = self.body_chunk(BodyKind::Response, chunk, end)?;
        while let Some(i) = waiting {
            tracing::debug!(
                plugin = %self.members[i].plugin.settings.name,
                "plugin paused at the end of the response body; releasing it"
            );
            let held = self.release(BodyKind::Response, i);
            let mut rest = Some(Bytes::from(held));
            // Members after `i` in response order are those before it in the list.
            let from = self.members.len() - i;
            waiting = self.body_chunk_from(BodyKind::Response, from, &mut rest, end)?;
            let mut out = chunk.take().map(Vec::from).unwrap_or_default();
            out.extend_from_slice(rest.as_deref().unwrap_or_default());
            *chunk = Some(Bytes::from(out));
        }
        self.check_length(BodyKind::Response, chunk, end)
    }

    /// The response trailers arrived (HTTP/2 upstreams; the body is over). What plugins still
    /// hold of the body is released first, through the plugins after each in response order,
    /// as more body without the end of stream (as on the reference host, where the body
    /// callbacks never see `end_of_stream` when trailers follow). Then `on_response_trailers`,
    /// in reverse order, with the trailers writable; a pause with a callout pending is waited
    /// for. What they changed is written back into `trailers`. Returns the released body, to be
    /// sent before the trailers.
    pub async fn response_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
    ) -> Result<Option<Bytes>, Reply> {
        self.deliver_arrived()?;
        let mut out: Vec<u8> = Vec::new();
        let n = self.members.len();
        for i in (0..n).rev() {
            if self.members[i].held.is_empty() {
                continue;
            }
            let held = self.release(BodyKind::Response, i);
            let mut rest = Some(Bytes::from(held));
            // Members after `i` in response order are those before it in the list.
            self.body_chunk_from(BodyKind::Response, n - i, &mut rest, false)?;
            out.extend_from_slice(rest.as_deref().unwrap_or_default());
        }
        let released = (!out.is_empty()).then(|| Bytes::from(out));
        self.check_length(BodyKind::Response, &released, true)?;
        let before = {
            let s = self.stream();
            s.response_trailers = trailers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            s.response_trailers_writable = true;
            s.response_trailers.clone()
        };
        let r = self.trailer_callbacks().await;
        let s = self.stream();
        s.response_trailers_writable = false;
        r?;
        if s.response_trailers != before {
            let mut map = http::HeaderMap::with_capacity(s.response_trailers.len());
            for (k, v) in &s.response_trailers {
                let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k),
                    http::HeaderValue::from_bytes(v),
                ) else {
                    continue;
                };
                map.append(k, v);
            }
            *trailers = map;
        }
        Ok(released)
    }

    async fn trailer_callbacks(&mut self) -> Result<(), Reply> {
        for i in (0..self.members.len()).rev() {
            let n = self.stream().response_trailers.len() as u32;
            if let Some(Step::Pause) = self.invoke(i, StreamCall::ResponseTrailers(n))? {
                if self.stream().pending_callouts > 0 {
                    self.wait_resume(i, false).await?;
                }
            }
        }
        Ok(())
    }

    /// Runs the response callbacks over a reply made while the request was still going up
    /// (a plugin's local response, or the host's answer to a failure), as the reference host
    /// does: `on_response_headers` and, when it has a body, one `on_response_body` with all of
    /// it, in reverse order, for the plugins whose request-headers callback ran. They may change
    /// the status, headers and body (`content-length` is set to the final body). A local
    /// response or failure in these callbacks is returned; the caller sends the reply as it is
    /// then (a stream reset it honours).
    pub async fn response_over_reply(
        &mut self,
        resp: &mut impl ResponseHeadMut,
        body: &mut Bytes,
    ) -> Result<(), Reply> {
        let from = self.headers_done.min(self.members.len());
        let unseen: Vec<Option<Ctx>> = self.members[from..]
            .iter_mut()
            .map(|m| m.ctx.take())
            .collect();
        let r = self.response_phases_over(resp, body).await;
        for (m, ctx) in self.members[from..].iter_mut().zip(unseen) {
            m.ctx = ctx;
        }
        r
    }

    async fn response_phases_over(
        &mut self,
        resp: &mut impl ResponseHeadMut,
        body: &mut Bytes,
    ) -> Result<(), Reply> {
        self.load_response(resp.parts());
        let end = body.is_empty();
        self.response_headers(end).await?;
        self.apply_response(resp)
            .map_err(|e| Reply::internal(&e.to_string()))?;
        if !end {
            self.set_declared_length(BodyKind::Response, None);
            let mut chunk = Some(body.clone());
            self.response_body(&mut chunk, true)?;
            *body = chunk.unwrap_or_default();
        }
        resp.insert_header("content-length", body.len().to_string().as_bytes())
            .map_err(|e| Reply::internal(&e.to_string()))?;
        Ok(())
    }

    /// `on_log` of every plugin (failures are counted; the response is already sent).
    pub fn log(&mut self, status: u16) {
        let s = self.stream();
        s.info.response_code = Some(status).filter(|s| *s > 0);
        s.log_phase = true;
        s.request_headers_writable = false;
        s.response_headers_writable = false;
        for i in 0..self.members.len() {
            let _ = self.invoke(i, StreamCall::Log);
        }
    }
}

/// What a body hook passes on when the plugins hold everything back. pingora reads `None` from
/// a request body hook as the end of the body (over HTTP/1 it would end the upstream request
/// there and send what is held later, outside it), and skips an empty chunk: hold requests
/// with an empty chunk. An empty response chunk would be written; `None` writes nothing.
fn nothing(kind: BodyKind) -> Option<Bytes> {
    match kind {
        BodyKind::Request => Some(Bytes::new()),
        BodyKind::Response => None,
    }
}

fn too_large(plugin: &str, status: u16) -> Reply {
    let what = if status == 413 { "request" } else { "response" };
    let reason = if status == 413 {
        "413 Content Too Large"
    } else {
        "502 Bad Gateway"
    };
    Reply::text(
        status,
        plugin,
        format!("{reason}: the {what} body is over the limit plugin \"{plugin}\" may buffer\n"),
    )
}

/// The request header as plugins see it.
pub fn request_list(req: &request::Parts, scheme: &str) -> HeaderList {
    // Room for the pseudo-headers and the forwarding headers set on top.
    let mut list = Vec::with_capacity(req.headers.len() + 10);
    list.push((b":method".to_vec(), req.method.as_str().as_bytes().to_vec()));
    let path = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes()
        .to_vec();
    list.push((b":path".to_vec(), path));
    let authority = req
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes().to_vec()))
        .unwrap_or_default();
    list.push((b":authority".to_vec(), authority));
    list.push((b":scheme".to_vec(), scheme.as_bytes().to_vec()));
    for (k, v) in req.headers.iter() {
        list.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    list
}

/// The response header as plugins see it.
pub fn response_list(resp: &response::Parts) -> HeaderList {
    let mut list = Vec::with_capacity(resp.headers.len() + 1);
    list.push((
        b":status".to_vec(),
        resp.status.as_str().as_bytes().to_vec(),
    ));
    for (k, v) in resp.headers.iter() {
        list.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    list
}

/// A request or response head, as the write-back changes it.
trait HeaderTarget {
    fn remove(&mut self, name: &str);
    fn append(&mut self, name: String, value: Vec<u8>) -> Result<(), HeadError>;
}

/// A request head under write-back.
struct Req<'a, H>(&'a mut H);

/// A response head under write-back.
struct Resp<'a, H>(&'a mut H);

impl<H: RequestHeadMut> HeaderTarget for Req<'_, H> {
    fn remove(&mut self, name: &str) {
        self.0.remove_header(name);
    }
    fn append(&mut self, name: String, value: Vec<u8>) -> Result<(), HeadError> {
        self.0.append_header(name, value)
    }
}

impl<H: ResponseHeadMut> HeaderTarget for Resp<'_, H> {
    fn remove(&mut self, name: &str) {
        self.0.remove_header(name);
    }
    fn append(&mut self, name: String, value: Vec<u8>) -> Result<(), HeadError> {
        self.0.append_header(name, value)
    }
}

/// Replaces every header of `names` (pseudo-headers excepted) in `target` by its values in
/// `list`, none if the plugins removed it.
fn write_back(
    target: &mut impl HeaderTarget,
    list: &HeaderList,
    names: &[Vec<u8>],
) -> Result<(), HeadError> {
    for name in names {
        let Ok(n) = std::str::from_utf8(name) else {
            continue;
        };
        if n.starts_with(':') {
            continue;
        }
        target.remove(n);
        for (k, v) in list.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)) {
            target.append(String::from_utf8_lossy(k).into_owned(), v.clone())?;
        }
    }
    Ok(())
}

/// Names to rewrite: those changed, or (map replaced) every name before or after.
fn changed_names(
    changes: crate::wasm::stream::Changes,
    old: impl Iterator<Item = Vec<u8>>,
    list: &HeaderList,
) -> Vec<Vec<u8>> {
    if !changes.all {
        return changes.names;
    }
    let mut names: Vec<Vec<u8>> = old.collect();
    for (k, _) in list {
        let k = k.to_ascii_lowercase();
        if !names.contains(&k) {
            names.push(k);
        }
    }
    names
}

impl Chain {
    /// Writes what plugins changed in the request headers back into the request head.
    pub fn apply_request(&mut self, req: &mut impl RequestHeadMut) -> Result<(), HeadError> {
        self.recover();
        let s = self.stream.as_deref_mut().expect("stream present");
        if !s.request_changed.any() {
            return Ok(());
        }
        let changes = std::mem::take(&mut s.request_changed);
        let list = &s.request_headers;
        let get = |n: &[u8]| list.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_slice());
        if let Some(m) = get(b":method") {
            if m != req.parts().method.as_str().as_bytes() {
                if let Ok(method) = http::Method::from_bytes(m) {
                    req.set_method(method);
                }
            }
        }
        if let Some(p) = get(b":path") {
            let current = req
                .parts()
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes();
            if p != current {
                req.set_raw_path(p)?;
            }
        }
        if let Some(a) = get(b":authority") {
            let current = req.parts().headers.get(http::header::HOST);
            if current.map(|v| v.as_bytes()) != Some(a) && !a.is_empty() {
                req.insert_header("host", a)?;
            }
        }
        let old = req.parts().headers.keys();
        let names = changed_names(changes, old.map(|k| k.as_str().as_bytes().to_vec()), list);
        write_back(&mut Req(req), list, &names)?;
        Ok(())
    }

    /// Writes what plugins changed in the response headers back into the response head.
    pub fn apply_response(&mut self, resp: &mut impl ResponseHeadMut) -> Result<(), HeadError> {
        self.recover();
        let s = self.stream.as_deref_mut().expect("stream present");
        if !s.response_changed.any() {
            return Ok(());
        }
        let changes = std::mem::take(&mut s.response_changed);
        let list = &s.response_headers;
        if let Some((_, st)) = list.iter().find(|(k, _)| k == b":status") {
            if let Some(code) = std::str::from_utf8(st)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
            {
                if code != resp.parts().status.as_u16() {
                    resp.set_status(code)?;
                }
            }
        }
        let old = resp.parts().headers.keys();
        let names = changed_names(changes, old.map(|k| k.as_str().as_bytes().to_vec()), list);
        write_back(&mut Resp(resp), list, &names)?;
        Ok(())
    }
}
