//! The guest side of the ABI: the `proxy_on_*` callbacks, which [`crate::plugin!`] exports,
//! call these functions. They keep the VM's contexts (one root context per plugin instance,
//! one filter per request) and the HTTP calls waiting for a response.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use sluice_abi::{Action as RawAction, BufferType, StreamType};

use crate::body::BodyState;
use crate::error::{Context, Error};
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

/// Which stream a call's closure resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
}

/// A request's filter; `None` while it runs.
type FilterSlot = Option<Box<dyn HttpFilter>>;

struct Waiting {
    context: u32,
    side: Side,
    on_response: OnCallResponse,
}

thread_local! {
    static ROOTS: RefCell<HashMap<u32, Rc<dyn Root>>> = RefCell::new(HashMap::new());
    /// Request contexts and their filters (out of the map while one runs).
    static FILTERS: RefCell<HashMap<u32, FilterSlot>> = RefCell::new(HashMap::new());
    static CALLS: RefCell<HashMap<u32, Waiting>> = RefCell::new(HashMap::new());
    /// Calls made from the plugin's root context (see [`crate::Call::send_from_root`]), by
    /// token.
    static ROOT_CALLS: RefCell<HashMap<u32, OnRootCallResponse>> = RefCell::new(HashMap::new());
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
    FILTERS.with(|f| f.borrow_mut().insert(context, Some(filter)));
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
    let mut filter = FILTERS.with(|m| m.borrow_mut().get_mut(&context)?.take())?;
    CURRENT.with(|c| c.set(context));
    let r = f(filter.as_mut());
    FILTERS.with(|m| {
        if let Some(slot) = m.borrow_mut().get_mut(&context) {
            *slot = Some(filter);
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

/// `proxy_on_request_headers`.
pub fn on_request_headers(context: u32, _headers: usize, end_of_stream: u32) -> u32 {
    let mut req = Request::new(body_state(false, 0, end_of_stream));
    let r = with_filter(context, |f| f.on_request_headers(&mut req));
    finish(context, "on_request_headers", r)
}

/// `proxy_on_request_body`.
pub fn on_request_body(context: u32, size: usize, end_of_stream: u32) -> u32 {
    let mut req = Request::new(body_state(true, size, end_of_stream));
    let r = with_filter(context, |f| f.on_request_body(&mut req));
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
    } else {
        ROOTS.with(|r| r.borrow_mut().remove(&context));
    }
}

/// What runs when a call made from the root context returns.
pub(crate) type OnRootCallResponse = Box<dyn FnOnce(Result<CallResponse, CallError>)>;

/// Registers the closure to run when call `token`, made from the root context, returns.
pub(crate) fn await_root_call(token: u32, on_response: OnRootCallResponse) {
    ROOT_CALLS.with(|c| c.borrow_mut().insert(token, on_response));
}

/// Registers the closure to run when call `token`, made by the current request, returns.
pub(crate) fn await_call(token: u32, side: Side, on_response: OnCallResponse) {
    let context = CURRENT.with(Cell::get);
    CALLS.with(|c| {
        c.borrow_mut().insert(
            token,
            Waiting {
                context,
                side,
                on_response,
            },
        )
    });
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
    if let Some(on_response) = ROOT_CALLS.with(|c| c.borrow_mut().remove(&token)) {
        // The host delivers it in the root context: nothing to switch to.
        let response = if headers == 0 {
            Err(CallError::Failed)
        } else {
            CallResponse::from_host(body_size).map_err(CallError::Unreadable)
        };
        on_response(response);
        return;
    }
    let Some(w) = CALLS.with(|c| c.borrow_mut().remove(&token)) else {
        return;
    };
    if FILTERS.with(|m| !m.borrow().contains_key(&w.context)) {
        return;
    }
    if let Err(status) = hostcalls::set_effective_context(w.context) {
        crate::error!("cannot switch to the request of an HTTP call: {status:?}");
        return;
    }
    CURRENT.with(|c| c.set(w.context));
    let response = if headers == 0 {
        Err(CallError::Failed)
    } else {
        CallResponse::from_host(body_size).map_err(CallError::Unreadable)
    };
    let mut req = Request::new(BodyState::default());
    let r = (w.on_response)(&mut req, response);
    let resume = match (&r, w.side) {
        (Ok(Action::Continue), Side::Request) => Some(StreamType::Request),
        _ => None,
    };
    finish(w.context, "HTTP call response", Some(r));
    if let Some(stream) = resume {
        if let Err(status) = hostcalls::continue_stream(stream) {
            crate::error!("cannot resume the request: {status:?}");
        }
    }
}
