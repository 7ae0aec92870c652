//! The guest side of the ABI: the `proxy_on_*` callbacks, which [`crate::plugin!`] exports,
//! call these functions. They keep the VM's contexts (one root context per plugin instance,
//! one filter per request) and the HTTP calls waiting for a response.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

#[cfg(feature = "grpc")]
use sluice_abi::MapType;
use sluice_abi::{Action as RawAction, BufferType, StreamType};

use crate::body::BodyState;
use crate::error::{Context, Error};
#[cfg(feature = "grpc")]
use crate::grpc::{GrpcEvent, GrpcStatus, GrpcStream, GrpcStreamHandler};
use crate::headers::encode_pairs;
use crate::hostcalls;
use crate::http_call::{CallError, CallResponse};
use crate::plugin::{HttpFilter, Plugin};
use crate::reply::{Action, Reply};
use crate::request::{OnCallResponse, Request};
use crate::response::Response;

/// A root context: the plugin, once configured.
trait Root {
    fn configure(&self, config: &[u8]) -> Result<(), Error>;
    fn filter(&self) -> Box<dyn HttpFilter>;
    fn tick(&self);
}

struct RootOf<P: Plugin> {
    plugin: RefCell<Option<Rc<P>>>,
}

impl<P: Plugin> Root for RootOf<P> {
    fn configure(&self, config: &[u8]) -> Result<(), Error> {
        let text = if config.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            config
        };
        let config: P::Config =
            serde_json::from_slice(text).map_err(|e| Error::Config(e.to_string()))?;
        let plugin = P::new(config)?;
        if let Some(period) = plugin.tick_period() {
            let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX).max(1);
            hostcalls::set_tick_period(ms).during("set the tick period")?;
        }
        // Shared data may be remote and down at start-up (Sluice's Redis backend): the plugin
        // starts anyway; the lock is created on first use (`shared::update` does so).
        if let Err(e) = crate::shared::init_create_lock() {
            crate::warn!("shared data unavailable at start-up: {e}");
        }
        *self.plugin.borrow_mut() = Some(Rc::new(plugin));
        Ok(())
    }

    fn filter(&self) -> Box<dyn HttpFilter> {
        match self.plugin.borrow().as_ref() {
            Some(p) => Box::new(P::filter(p)),
            // Not configured (the host should not create requests then): pass everything.
            None => Box::new(PassThrough),
        }
    }

    fn tick(&self) {
        let plugin = self.plugin.borrow().clone();
        if let Some(p) = plugin {
            p.on_tick();
        }
    }
}

struct PassThrough;

impl HttpFilter for PassThrough {}

/// A request: its filter (`None` while it runs), and whether its last request-side callback
/// paused it (the requests a call's answer or a stream's event may resume).
#[derive(Default)]
struct FilterSlot {
    filter: Option<Box<dyn HttpFilter>>,
    paused: bool,
}

/// What runs when a call made by a request returns.
enum Answer {
    Http(OnCallResponse),
    #[cfg(feature = "grpc")]
    Grpc(OnGrpcReply),
}

/// What runs when a call made from the root context returns.
enum RootAnswer {
    Http(OnRootCallResponse),
    #[cfg(feature = "grpc")]
    Grpc(OnRootGrpcReply),
}

struct Waiting {
    context: u32,
    on_response: Answer,
}

#[cfg(feature = "grpc")]
/// An open gRPC stream: the request that opened it (`None`: the root context) and its handler
/// (`None` while one of its events runs).
struct OpenStream {
    context: Option<u32>,
    handler: Option<Box<dyn GrpcStreamHandler>>,
}

thread_local! {
    static ROOTS: RefCell<HashMap<u32, Rc<dyn Root>>> = RefCell::new(HashMap::new());
    /// Request contexts and their filters (out of the map while one runs).
    static FILTERS: RefCell<HashMap<u32, FilterSlot>> = RefCell::new(HashMap::new());
    static CALLS: RefCell<HashMap<u32, Waiting>> = RefCell::new(HashMap::new());
    /// Calls made from the plugin's root context (see [`crate::Call::send_from_root`]), by
    /// token.
    static ROOT_CALLS: RefCell<HashMap<u32, RootAnswer>> = RefCell::new(HashMap::new());
    /// Open gRPC streams, by token.
    #[cfg(feature = "grpc")]
    static STREAMS: RefCell<HashMap<u32, OpenStream>> = RefCell::new(HashMap::new());
    /// The request context a callback is running for.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// `proxy_on_memory_allocate`: `size` bytes (alignment 1) the host fills and hands over.
pub fn allocate(size: usize) -> *mut u8 {
    let Ok(layout) = std::alloc::Layout::array::<u8>(size) else {
        return std::ptr::null_mut();
    };
    if layout.size() == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: the layout has a non-zero size (checked above). The host writes at most `size`
    // bytes there and returns them; `hostcalls::take` rebuilds a Vec with this same layout.
    unsafe { std::alloc::alloc(layout) }
}

/// `proxy_on_context_create`: a root context (`parent` 0) for plugin `P`, or a request's.
pub fn on_context_create<P: Plugin>(context: u32, parent: u32) {
    if parent == 0 {
        let root: Rc<dyn Root> = Rc::new(RootOf::<P> {
            plugin: RefCell::new(None),
        });
        ROOTS.with(|r| r.borrow_mut().insert(context, root));
        return;
    }
    let root = ROOTS.with(|r| r.borrow().get(&parent).cloned());
    let filter = match root {
        Some(root) => root.filter(),
        None => Box::new(PassThrough),
    };
    let slot = FilterSlot {
        filter: Some(filter),
        paused: false,
    };
    FILTERS.with(|f| f.borrow_mut().insert(context, slot));
}

/// `proxy_on_vm_start`: accepted.
pub fn on_vm_start(_root: u32, _vm_config_size: usize) -> u32 {
    1
}

/// `proxy_on_configure`: parses the configuration and makes the plugin.
pub fn on_configure(root: u32, config_size: usize) -> u32 {
    let Some(r) = ROOTS.with(|r| r.borrow().get(&root).cloned()) else {
        return 0;
    };
    let config = match hostcalls::buffer(BufferType::PluginConfiguration, 0, config_size) {
        Ok(c) => c.unwrap_or_default(),
        Err(status) => {
            crate::error!("cannot read the plugin configuration: {status:?}");
            return 0;
        }
    };
    match r.configure(&config) {
        Ok(()) => 1,
        Err(e) => {
            crate::error!("{e}");
            0
        }
    }
}

/// `proxy_on_tick`.
pub fn on_tick(root: u32) {
    if let Some(r) = ROOTS.with(|r| r.borrow().get(&root).cloned()) {
        r.tick();
    }
}

/// Runs `f` on the filter of `context` (taken out of the table meanwhile, so that the
/// filter may register calls). `None` if there is no such request.
fn with_filter<R>(context: u32, f: impl FnOnce(&mut dyn HttpFilter) -> R) -> Option<R> {
    let mut filter = FILTERS.with(|m| m.borrow_mut().get_mut(&context)?.filter.take())?;
    CURRENT.with(|c| c.set(context));
    let r = f(filter.as_mut());
    FILTERS.with(|m| {
        if let Some(slot) = m.borrow_mut().get_mut(&context) {
            slot.filter = Some(filter);
        }
    });
    Some(r)
}

/// Sends a reply; the callback then pauses (the host answers once it returns).
fn send(reply: &Reply) -> u32 {
    let pairs = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()));
    let sent = encode_pairs(pairs).and_then(|h| {
        hostcalls::send_local_response(u32::from(reply.status), &reply.details, &reply.body, &h)
            .during("send a local reply")
    });
    if let Err(e) = sent {
        crate::error!("{e}");
    }
    RawAction::Pause as u32
}

/// What a callback's result becomes: an action for the host, after sending any reply.
fn finish(context: u32, phase: &'static str, r: Option<Result<Action, Error>>) -> u32 {
    match r {
        None | Some(Ok(Action::Continue)) => RawAction::Continue as u32,
        Some(Ok(Action::Pause)) => RawAction::Pause as u32,
        Some(Ok(Action::Reply(reply))) => send(&reply),
        Some(Err(e)) => {
            crate::error!("{phase}: {e}");
            let reply = with_filter(context, |f| f.on_error(&e)).unwrap_or_else(|| Reply::new(500));
            send(&reply)
        }
    }
}

fn body_state(in_body: bool, size: usize, end_of_stream: u32) -> BodyState {
    BodyState {
        in_body,
        size,
        end_of_stream: end_of_stream != 0,
    }
}

/// Records whether a request-side callback left the request paused.
fn note_pause(context: u32, r: &Option<Result<Action, Error>>) {
    let paused = matches!(r, Some(Ok(Action::Pause)));
    FILTERS.with(|m| {
        if let Some(slot) = m.borrow_mut().get_mut(&context) {
            slot.paused = paused;
        }
    });
}

/// `proxy_on_request_headers`.
pub fn on_request_headers(context: u32, _headers: usize, end_of_stream: u32) -> u32 {
    let mut req = Request::new(body_state(false, 0, end_of_stream));
    let r = with_filter(context, |f| f.on_request_headers(&mut req));
    note_pause(context, &r);
    finish(context, "on_request_headers", r)
}

/// `proxy_on_request_body`.
pub fn on_request_body(context: u32, size: usize, end_of_stream: u32) -> u32 {
    let mut req = Request::new(body_state(true, size, end_of_stream));
    let r = with_filter(context, |f| f.on_request_body(&mut req));
    note_pause(context, &r);
    finish(context, "on_request_body", r)
}

/// `proxy_on_response_headers`.
pub fn on_response_headers(context: u32, _headers: usize, end_of_stream: u32) -> u32 {
    let mut resp = Response::new(body_state(false, 0, end_of_stream));
    let r = with_filter(context, |f| f.on_response_headers(&mut resp));
    finish(context, "on_response_headers", r)
}

/// `proxy_on_response_body`.
pub fn on_response_body(context: u32, size: usize, end_of_stream: u32) -> u32 {
    let mut resp = Response::new(body_state(true, size, end_of_stream));
    let r = with_filter(context, |f| f.on_response_body(&mut resp));
    finish(context, "on_response_body", r)
}

/// `proxy_on_request_trailers` / `proxy_on_response_trailers`: passed on.
pub fn on_trailers(_context: u32, _trailers: usize) -> u32 {
    RawAction::Continue as u32
}

/// `proxy_on_log`.
pub fn on_log(context: u32) {
    with_filter(context, |f| f.on_log());
}

/// `proxy_on_done`: the context may be deleted.
pub fn on_done(_context: u32) -> u32 {
    1
}

/// `proxy_on_delete`: forgets the context (a request's filter is dropped; its pending calls
/// will find nobody).
pub fn on_delete(context: u32) {
    let was_filter = FILTERS.with(|m| m.borrow_mut().remove(&context)).is_some();
    if was_filter {
        CALLS.with(|c| c.borrow_mut().retain(|_, w| w.context != context));
        // The host cancels the request's streams with it.
        #[cfg(feature = "grpc")]
        STREAMS.with(|s| s.borrow_mut().retain(|_, o| o.context != Some(context)));
    } else {
        ROOTS.with(|r| r.borrow_mut().remove(&context));
    }
}

/// What runs when a call made from the root context returns.
pub(crate) type OnRootCallResponse = Box<dyn FnOnce(Result<CallResponse, CallError>)>;

/// Registers the closure to run when call `token`, made from the root context, returns.
pub(crate) fn await_root_call(token: u32, on_response: OnRootCallResponse) {
    ROOT_CALLS.with(|c| c.borrow_mut().insert(token, RootAnswer::Http(on_response)));
}

#[cfg(feature = "grpc")]
/// What runs when a unary gRPC call made by a request returns.
pub(crate) type OnGrpcReply =
    Box<dyn FnOnce(&mut Request, Result<Vec<u8>, GrpcStatus>) -> Result<Action, Error>>;

#[cfg(feature = "grpc")]
/// What runs when a unary gRPC call made from the root context returns.
pub(crate) type OnRootGrpcReply = Box<dyn FnOnce(Result<Vec<u8>, GrpcStatus>)>;

#[cfg(feature = "grpc")]
/// Registers the closure to run when unary gRPC call `token`, made from the root context,
/// returns.
pub(crate) fn await_root_grpc(token: u32, on_reply: OnRootGrpcReply) {
    ROOT_CALLS.with(|c| c.borrow_mut().insert(token, RootAnswer::Grpc(on_reply)));
}

/// The request context the current callback runs for.
pub(crate) fn current_context() -> u32 {
    CURRENT.with(Cell::get)
}

fn await_answer(token: u32, on_response: Answer) {
    let context = current_context();
    CALLS.with(|c| {
        c.borrow_mut().insert(
            token,
            Waiting {
                context,
                on_response,
            },
        )
    });
}

/// Registers the closure to run when call `token`, made by the current request, returns.
pub(crate) fn await_call(token: u32, on_response: OnCallResponse) {
    await_answer(token, Answer::Http(on_response));
}

#[cfg(feature = "grpc")]
/// Registers the closure to run when unary gRPC call `token`, made by the current request,
/// returns.
pub(crate) fn await_grpc(token: u32, on_reply: OnGrpcReply) {
    await_answer(token, Answer::Grpc(on_reply));
}

#[cfg(feature = "grpc")]
/// Registers the handler of gRPC stream `token`, opened by request `context` (`None`: the root
/// context).
pub(crate) fn await_stream(token: u32, context: Option<u32>, handler: Box<dyn GrpcStreamHandler>) {
    STREAMS.with(|s| {
        s.borrow_mut().insert(
            token,
            OpenStream {
                context,
                handler: Some(handler),
            },
        )
    });
}

#[cfg(feature = "grpc")]
/// Forgets stream `token` (cancelled): its handler is dropped, even from inside one of its
/// events.
pub(crate) fn forget_stream(token: u32) {
    // Taken out before dropping: the handler's drop may use the table.
    let gone = STREAMS.with(|s| s.borrow_mut().remove(&token));
    drop(gone);
}

/// Runs `f` for request `context` outside its own callbacks (a call's answer, a stream's
/// event): the host is switched to the request, then `f`'s decision is carried out;
/// `Continue` resumes the request if its last request-side callback paused it.
fn on_request_event(
    context: u32,
    what: &'static str,
    f: impl FnOnce(&mut Request) -> Result<Action, Error>,
) {
    if FILTERS.with(|m| !m.borrow().contains_key(&context)) {
        return;
    }
    if let Err(status) = hostcalls::set_effective_context(context) {
        crate::error!("cannot switch to the request of {what}: {status:?}");
        return;
    }
    CURRENT.with(|c| c.set(context));
    let mut req = Request::new(BodyState::default());
    let r = f(&mut req);
    let resume = matches!(r, Ok(Action::Continue))
        && FILTERS.with(|m| {
            m.borrow_mut()
                .get_mut(&context)
                .is_some_and(|slot| std::mem::take(&mut slot.paused))
        });
    finish(context, what, Some(r));
    if resume {
        if let Err(status) = hostcalls::continue_stream(StreamType::Request) {
            crate::error!("cannot resume the request: {status:?}");
        }
    }
}

/// `proxy_on_http_call_response`: runs the closure of call `token` on the request that made
/// it and does what it decides.
pub fn on_http_call_response(
    _context: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    let response = || {
        if headers == 0 {
            Err(CallError::Failed)
        } else {
            CallResponse::from_host(body_size).map_err(CallError::Unreadable)
        }
    };
    if let Some(answer) = ROOT_CALLS.with(|c| c.borrow_mut().remove(&token)) {
        // The host delivers it in the root context: nothing to switch to.
        #[allow(irrefutable_let_patterns)]
        if let RootAnswer::Http(on_response) = answer {
            on_response(response());
        }
        return;
    }
    let Some(w) = CALLS.with(|c| c.borrow_mut().remove(&token)) else {
        return;
    };
    #[allow(irrefutable_let_patterns)]
    let Answer::Http(on_response) = w.on_response
    else {
        return;
    };
    on_request_event(w.context, "an HTTP call's response", |req| {
        on_response(req, response())
    });
}

#[cfg(feature = "grpc")]
/// A unary gRPC call ended: its closure runs with the answer or the status.
fn grpc_answer(token: u32, result: impl FnOnce() -> Result<Vec<u8>, GrpcStatus>) -> bool {
    if let Some(answer) = ROOT_CALLS.with(|c| c.borrow_mut().remove(&token)) {
        if let RootAnswer::Grpc(on_reply) = answer {
            on_reply(result());
        }
        return true;
    }
    let Some(w) = CALLS.with(|c| c.borrow_mut().remove(&token)) else {
        return false;
    };
    if let Answer::Grpc(on_reply) = w.on_response {
        on_request_event(w.context, "a gRPC call's answer", |req| {
            on_reply(req, result())
        });
    }
    true
}

#[cfg(feature = "grpc")]
/// Runs a stream's handler for `event` (read from the host by `read`).
fn stream_event(token: u32, read: impl FnOnce() -> Result<GrpcEvent, Error>) {
    let taken = STREAMS.with(|s| {
        let mut s = s.borrow_mut();
        let open = s.get_mut(&token)?;
        Some((open.context, open.handler.take()?))
    });
    let Some((context, mut handler)) = taken else {
        return;
    };
    let event = read();
    let last = matches!(event, Ok(GrpcEvent::Close(_)));
    let stream = GrpcStream::from_token(token);
    match context {
        None => match event.and_then(|e| e.run(handler.as_mut(), stream, None)) {
            Ok(_) => {}
            Err(e) => crate::error!("gRPC stream {token}: {e}"),
        },
        Some(context) => on_request_event(context, "a gRPC stream's event", |req| {
            event.and_then(|e| e.run(handler.as_mut(), stream, Some(req)))
        }),
    }
    let gone = STREAMS.with(|s| {
        let mut s = s.borrow_mut();
        match s.get_mut(&token) {
            // Still open (not cancelled by its own event): the handler goes back.
            Some(open) if !last => {
                open.handler = Some(handler);
                None
            }
            _ => {
                s.remove(&token);
                Some(handler)
            }
        }
    });
    // Dropped outside the table: the handler's drop may use it.
    drop(gone);
}

#[cfg(feature = "grpc")]
/// `proxy_on_grpc_receive_initial_metadata`.
pub fn on_grpc_receive_initial_metadata(_context: u32, token: u32, count: u32) {
    stream_event(token, || {
        GrpcEvent::metadata(MapType::GrpcInitialMetadata, count).map(GrpcEvent::InitialMetadata)
    });
}

#[cfg(feature = "grpc")]
/// `proxy_on_grpc_receive`: a unary call's answer, or a stream's message.
pub fn on_grpc_receive(_context: u32, token: u32, size: usize) {
    let unary = grpc_answer(token, || {
        GrpcEvent::message(size).map_err(|e| GrpcStatus::new(13, e.to_string()))
    });
    if !unary {
        stream_event(token, || GrpcEvent::message(size).map(GrpcEvent::Message));
    }
}

#[cfg(feature = "grpc")]
/// `proxy_on_grpc_receive_trailing_metadata`.
pub fn on_grpc_receive_trailing_metadata(_context: u32, token: u32, count: u32) {
    stream_event(token, || {
        GrpcEvent::metadata(MapType::GrpcTrailingMetadata, count).map(GrpcEvent::TrailingMetadata)
    });
}

#[cfg(feature = "grpc")]
/// `proxy_on_grpc_close`: a unary call that failed, or a stream's end.
pub fn on_grpc_close(_context: u32, token: u32, code: u32) {
    let unary = grpc_answer(token, || Err(GrpcStatus::from_host(code)));
    if !unary {
        stream_event(token, || Ok(GrpcEvent::Close(GrpcStatus::from_host(code))));
    }
}
