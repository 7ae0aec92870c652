//! One VM: a wasmtime `Store` with one instance of a plugin, its root context, and the calls
//! into it.
//!
//! The store sits behind a mutex held only for one guest call (never across an `.await`).
//! Every call gets the plugin's fuel and wall-clock deadline. Any failure — trap, fuel,
//! deadline, memory, or a host call that caught the guest misbehaving — marks the VM failed:
//! it is never entered again, and its plugin builds a replacement.

mod callbacks;
mod calls;
mod errors;
mod metrics;
mod phase;
mod store;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use wasmtime::{Engine, InstancePre, Store};

pub use super::events::RootEvent;
use super::events::{
    CalloutDone, CalloutEvent, CalloutResponse, CalloutSink, GrpcEvent, RootInbox,
};
use super::settings::{PluginSettings, Version};
use super::shared::Namespace;
use super::stream::Stream;

use callbacks::*;
use calls::*;
pub use errors::*;
pub use metrics::*;
pub use phase::*;
pub use store::*;

pub(super) struct Inner {
    pub(super) store: Store<VmState>,
    pub(super) next_context: u32,
    /// Linear memory size after the last guest call (read without the lock).
    pub(super) memory_bytes: Arc<AtomicUsize>,
}

/// A request paused by a plugin of this VM, its state left where root-context callbacks
/// (`on_tick`, `on_queue_ready`, a root callout's response) can reach it: after
/// `proxy_set_effective_context(id)` they read and change it and may resume it, as on the
/// reference host. The request's chain waits on `notify` and takes its state back when it
/// wakes.
pub struct Parked {
    /// The stream context id in this VM.
    pub id: u32,
    /// The request's state; `None` while a root callback has it.
    stream: Mutex<Option<Box<Stream>>>,
    /// Signalled when a root callback gives the state back.
    pub notify: tokio::sync::Notify,
}

impl Parked {
    /// Parks `stream` for context `id`.
    pub fn new(id: u32, stream: Option<Box<Stream>>) -> Arc<Parked> {
        Arc::new(Parked {
            id,
            stream: Mutex::new(stream),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Box<Stream>>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the state back once no root callback holds it (after [`Vm::unpark`], no new one
    /// can take it).
    pub async fn take_back(&self) -> Option<Box<Stream>> {
        loop {
            if let Some(s) = self.slot().take() {
                return Some(s);
            }
            self.notify.notified().await;
        }
    }

    /// Takes the state back now, if no root callback holds it.
    pub fn try_take(&self) -> Option<Box<Stream>> {
        self.slot().take()
    }

    fn give_back(&self, stream: Option<Box<Stream>>) {
        *self.slot() = stream;
        self.notify.notify_one();
    }
}

/// One VM of a plugin.
pub struct Vm {
    /// The plugin's settings.
    pub settings: Arc<PluginSettings>,
    /// The slot it fills in its plugin, and the how-manieth VM of that slot it is.
    pub slot: usize,
    /// The guest's callbacks (fixed once the VM started).
    ex: Exports,
    inner: Mutex<Inner>,
    failed: AtomicBool,
    tick_ms: AtomicU32,
    root_events: Mutex<Vec<RootEvent>>,
    /// Requests paused in this VM, reachable from root callbacks.
    parked: Mutex<Vec<Arc<Parked>>>,
    contexts: AtomicUsize,
    memory_bytes: Arc<AtomicUsize>,
    plugin: Weak<dyn VmOwner>,
    metrics: Arc<PhaseMetrics>,
}

/// What a VM belongs to: told when the VM fails, so that it is replaced.
pub trait VmOwner: Send + Sync {
    /// The VM in `slot` failed.
    fn vm_failed(self: Arc<Self>, slot: usize);
}

/// Why a VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The module is not a Proxy-Wasm plugin or has bad exports.
    #[error("{0}")]
    Module(String),
    /// Instantiation or a start callback failed.
    #[error("{phase} failed: {error}")]
    Start {
        /// The callback.
        phase: &'static str,
        /// What happened.
        error: GuestError,
    },
    /// `on_vm_start` or `on_configure` returned false.
    #[error("{0} returned false")]
    Refused(&'static str),
}

impl Vm {
    /// Instantiates the plugin and runs its start-up: `_initialize` + `main` (or `_start`),
    /// the root context, `on_vm_start` and `on_configure`.
    pub fn start(
        engine: &Engine,
        pre: &InstancePre<VmState>,
        settings: Arc<PluginSettings>,
        shared: Arc<Namespace>,
        metrics: Arc<PhaseMetrics>,
        plugin: Weak<dyn VmOwner>,
        slot: usize,
    ) -> Result<Arc<Vm>, VmError> {
        let mut result = Ok(());
        let vm = Arc::new_cyclic(|weak: &Weak<Vm>| {
            let store = VmState::store(engine, settings.clone(), shared, weak.clone());
            let memory_bytes = Arc::new(AtomicUsize::new(0));
            let mut inner = Inner {
                store,
                next_context: 2,
                memory_bytes: memory_bytes.clone(),
            };
            let ex = init(&mut inner, pre, &settings, &metrics).unwrap_or_else(|e| {
                result = Err(e);
                Exports::default()
            });
            Vm {
                settings,
                ex,
                slot,
                inner: Mutex::new(inner),
                failed: AtomicBool::new(false),
                tick_ms: AtomicU32::new(0),
                root_events: Mutex::new(Vec::new()),
                parked: Mutex::new(Vec::new()),
                contexts: AtomicUsize::new(0),
                memory_bytes,
                plugin,
                metrics,
            }
        });
        result?;
        let tick = vm.lock().store.data().tick_period_ms;
        vm.set_tick(tick);
        Ok(vm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a host bug; the store is still consistent
        // for our purposes (the VM is marked failed below if a call was interrupted).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the VM failed and must not be used.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Linear memory size, bytes, as of the end of the last guest call.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// Stream contexts alive in this VM.
    pub fn contexts(&self) -> usize {
        self.contexts.load(Ordering::Relaxed)
    }

    fn set_tick(self: &Arc<Self>, ms: u32) {
        let before = self.tick_ms.swap(ms, Ordering::AcqRel);
        if ms > 0 && before == 0 {
            super::ticker::register(Arc::<Vm>::downgrade(self));
        }
    }

    /// The tick period the plugin asked for, ms (0 = none).
    pub fn tick_period_ms(&self) -> u32 {
        self.tick_ms.load(Ordering::Acquire)
    }

    fn fail(&self, phase: Phase, error: &GuestError) {
        if error.kind == ErrorKind::Lost {
            return;
        }
        // Shared data out of reach leaves the VM sound: only this call's work is lost.
        let keeps_vm = error.kind == ErrorKind::SharedData;
        if !keeps_vm && self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let name = &self.settings.name;
        record(&self.settings, phase.as_str(), error.kind);
        if keeps_vm {
            // Logged at debug: the store logs once when Redis goes and when it comes back.
            tracing::debug!(
                target: "sluice::plugin",
                plugin = %name,
                phase = phase.as_str(),
                error = %error.message,
                "shared data unavailable; the plugin's on_error policy answers"
            );
            return;
        }
        tracing::error!(
            target: "sluice::plugin",
            plugin = %name,
            phase = phase.as_str(),
            kind = error.kind.as_str(),
            error = %error.message,
            "plugin failed; its VM is replaced"
        );
        if let Some(p) = self.plugin.upgrade() {
            p.vm_failed(self.slot);
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Parked>>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a paused request reachable from this VM's root callbacks.
    pub fn park(&self, p: Arc<Parked>) {
        self.parked().push(p);
    }

    /// Ends [`Vm::park`]: no root callback can take the state after this returns (one that
    /// holds it gives it back when its call ends).
    pub fn unpark(&self, p: &Arc<Parked>) {
        self.parked().retain(|q| !Arc::ptr_eq(q, p));
    }

    /// The state of paused context `id`, taken for a root callback (`None`: no request of
    /// this VM is paused under that id).
    pub fn borrow_parked(&self, id: u32) -> Option<(Arc<Parked>, Box<Stream>)> {
        let parked = self.parked();
        let p = parked.iter().find(|p| p.id == id)?;
        let s = p.slot().take()?;
        Some((p.clone(), s))
    }

    /// Whether the module exports the body callback of `kind` (`proxy_on_request_body` or
    /// `proxy_on_response_body`).
    pub fn exports_body(&self, kind: super::stream::BodyKind) -> bool {
        self.exports(match kind {
            super::stream::BodyKind::Request => StreamCall::RequestBody(0, false),
            super::stream::BodyKind::Response => StreamCall::ResponseBody(0, false),
        })
    }

    /// Whether the module exports the callback `call` is made to (a callback it does not
    /// export is not called: no lock, no guest entry).
    pub fn exports(&self, call: StreamCall) -> bool {
        let ex = &self.ex;
        match call {
            StreamCall::RequestHeaders(..) => ex.request_headers.is_some(),
            StreamCall::RequestBody(..) => ex.request_body.is_some(),
            StreamCall::ResponseHeaders(..) => ex.response_headers.is_some(),
            StreamCall::ResponseBody(..) => ex.response_body.is_some(),
            StreamCall::ResponseTrailers(..) => ex.response_trailers.is_some(),
            StreamCall::HttpCallResponse(..) => ex.http_call_response.is_some(),
            StreamCall::Grpc(kind, ..) => ex.grpc_callback(kind).is_some(),
            StreamCall::Log => ex.log.is_some(),
        }
    }

    /// Creates a stream context; returns its id.
    pub fn create_context(self: &Arc<Self>) -> Result<u32, GuestError> {
        if self.is_failed() {
            return Err(lost());
        }
        let mut inner = self.lock();
        let id = inner.next_context;
        inner.next_context = inner.next_context.wrapping_add(1).max(2);
        if let Some(f) = &self.ex.context_create {
            let root = inner.store.data().root_id;
            let r = guest_call(&mut inner, &self.metrics, Phase::Create, f, (id, root));
            if let Err(e) = r {
                drop(inner);
                self.fail(Phase::Create, &e);
                return Err(e);
            }
        }
        self.contexts.fetch_add(1, Ordering::Relaxed);
        self.metrics.contexts.inc();
        self.metrics.requests.inc();
        Ok(id)
    }

    /// Runs a stream callback for context `id`, with the request's state moved in for the
    /// call. Returns the raw result (an action; 0 for callbacks without one).
    pub fn call_stream(
        self: &Arc<Self>,
        id: u32,
        call: StreamCall,
        stream: &mut Option<Box<Stream>>,
        member: usize,
        sink: &CalloutSink,
        callout: Option<CalloutResponse>,
    ) -> Result<u32, GuestError> {
        self.call_stream_with(id, call, stream, member, sink, callout, None)
    }

    /// Delivers gRPC event `event` of call `token` to the plugin, for request context `id`
    /// (see [`Vm::call_stream`]).
    pub fn call_grpc(
        self: &Arc<Self>,
        id: u32,
        token: u32,
        event: GrpcEvent,
        stream: &mut Option<Box<Stream>>,
        member: usize,
    ) -> Result<u32, GuestError> {
        let (kind, n) = GrpcCallback::of(&event);
        self.call_stream_with(
            id,
            StreamCall::Grpc(kind, token, n),
            stream,
            member,
            &CalloutSink::Stream,
            None,
            Some(event),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn call_stream_with(
        self: &Arc<Self>,
        id: u32,
        call: StreamCall,
        stream: &mut Option<Box<Stream>>,
        member: usize,
        sink: &CalloutSink,
        callout: Option<CalloutResponse>,
        grpc: Option<GrpcEvent>,
    ) -> Result<u32, GuestError> {
        if self.is_failed() {
            return Err(lost());
        }
        let phase = call.phase();
        if !self.exports(call) {
            return Ok(0);
        }
        let ex = &self.ex;
        let mut inner = self.lock();
        let root = inner.store.data().root_id;
        {
            let data = inner.store.data_mut();
            // ABI v0.2.1 delivers a callout's response to the root context (the SDKs find
            // the request by its token and switch to it with proxy_set_effective_context).
            data.context = match call {
                StreamCall::HttpCallResponse(..) | StreamCall::Grpc(..) => root,
                _ => id,
            };
            data.stream_context = id;
            data.stream = stream.take();
            data.callout_sink = Some(sink.clone());
            data.member = member;
            data.callout_response = callout;
            data.grpc_event = grpc;
        }
        let m = &self.metrics;
        let i = &mut inner;
        let r = match (call, ex) {
            (
                StreamCall::RequestHeaders(n, eos),
                Exports {
                    request_headers: Some(f),
                    ..
                },
            )
            | (
                StreamCall::RequestBody(n, eos),
                Exports {
                    request_body: Some(f),
                    ..
                },
            )
            | (
                StreamCall::ResponseHeaders(n, eos),
                Exports {
                    response_headers: Some(f),
                    ..
                },
            )
            | (
                StreamCall::ResponseBody(n, eos),
                Exports {
                    response_body: Some(f),
                    ..
                },
            ) => guest_call(i, m, phase, f, (id, n, eos as u32)),
            (
                StreamCall::ResponseTrailers(n),
                Exports {
                    response_trailers: Some(f),
                    ..
                },
            ) => guest_call(i, m, phase, f, (id, n)),
            (
                StreamCall::HttpCallResponse(token, nh, len, nt),
                Exports {
                    http_call_response: Some(f),
                    ..
                },
            ) => guest_call(i, m, phase, f, (root, token, nh, len, nt)).map(|()| 0),
            (StreamCall::Log, Exports { log: Some(f), .. }) => {
                guest_call(i, m, phase, f, id).map(|()| 0)
            }
            (StreamCall::Grpc(kind, token, n), ex) => match ex.grpc_callback(kind) {
                Some(f) => guest_call(i, m, phase, f, (root, token, n)).map(|()| 0),
                None => Ok(0),
            },
            _ => Ok(0),
        };
        let tick = {
            let data = inner.store.data_mut();
            *stream = data.stream.take();
            data.callout_sink = None;
            data.callout_response = None;
            data.grpc_event = None;
            data.tick_period_ms
        };
        drop(inner);
        self.set_tick(tick);
        if let Err(e) = &r {
            self.fail(phase, e);
        }
        r
    }

    /// Ends stream context `id`: `on_done`, then `on_delete`. Errors are counted and logged;
    /// the request is over, so there is no policy to apply.
    pub fn finish_context(self: &Arc<Self>, id: u32) {
        self.contexts.fetch_sub(1, Ordering::Relaxed);
        self.metrics.contexts.dec();
        if self.is_failed() || (self.ex.done.is_none() && self.ex.delete.is_none()) {
            return;
        }
        if let Err(e) = self.end_context(Some(id)) {
            self.fail(Phase::Done, &e);
        }
    }

    /// `on_done` then `on_delete` for context `id` (`None`: the root context).
    fn end_context(&self, id: Option<u32>) -> Result<(), GuestError> {
        let mut inner = self.lock();
        let id = id.unwrap_or(inner.store.data().root_id);
        inner.store.data_mut().context = id;
        if let Some(f) = &self.ex.done {
            guest_call(&mut inner, &self.metrics, Phase::Done, f, id)?;
        }
        if let Some(f) = &self.ex.delete {
            guest_call(&mut inner, &self.metrics, Phase::Done, f, id)?;
        }
        Ok(())
    }

    /// Takes the VM out of service for good: `on_done` then `on_delete` on its root context
    /// (the plugin is being unloaded). The host does not wait for a plugin that answers
    /// `on_done` with false (asking to finish later with `proxy_done`): `on_delete` follows at
    /// once. Errors are counted and logged; the VM is not replaced.
    pub fn retire(&self) {
        self.tick_ms.store(0, Ordering::Release);
        if self.is_failed() || (self.ex.done.is_none() && self.ex.delete.is_none()) {
            return;
        }
        if let Err(e) = self.end_context(None) {
            if e.kind != ErrorKind::Lost {
                record(&self.settings, Phase::Done.as_str(), e.kind);
                tracing::warn!(
                    target: "sluice::plugin",
                    plugin = %self.settings.name,
                    kind = e.kind.as_str(),
                    error = %e.message,
                    "plugin failed while being unloaded"
                );
            }
        }
    }

    /// Calls `on_tick` on the root context.
    pub fn tick(self: &Arc<Self>) {
        self.root_call(Phase::Tick, None);
    }

    /// Records a root-context event and wakes the ticker to deliver it.
    pub fn push_root_event(&self, e: RootEvent) {
        self.root_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
        super::ticker::wake();
    }

    /// A queue this VM registered has items.
    pub fn queue_ready(self: &Arc<Self>, queue: u32) {
        self.push_root_event(RootEvent::QueueReady(queue));
        super::ticker::register(Arc::<Vm>::downgrade(self));
    }

    /// Delivers pending root-context events (ticker thread).
    pub fn deliver_root_events(self: &Arc<Self>) {
        let events =
            std::mem::take(&mut *self.root_events.lock().unwrap_or_else(|p| p.into_inner()));
        for e in events {
            self.root_call(Phase::HttpCallResponse, Some(e));
        }
    }

    fn root_call(self: &Arc<Self>, phase: Phase, event: Option<RootEvent>) {
        if self.is_failed() {
            return;
        }
        let mut inner = self.lock();
        let root = inner.store.data().root_id;
        let sink = CalloutSink::Root(Arc::<Vm>::downgrade(self));
        {
            let data = inner.store.data_mut();
            data.context = root;
            data.callout_sink = Some(sink);
        }
        let (phase, r) = match event {
            None => match &self.ex.tick {
                Some(f) => (
                    phase,
                    guest_call(&mut inner, &self.metrics, Phase::Tick, f, root),
                ),
                None => (phase, Ok(())),
            },
            Some(RootEvent::QueueReady(q)) => match &self.ex.queue_ready {
                Some(f) => (
                    Phase::QueueReady,
                    guest_call(&mut inner, &self.metrics, Phase::QueueReady, f, (root, q)),
                ),
                None => (Phase::QueueReady, Ok(())),
            },
            Some(RootEvent::Callout(CalloutDone {
                token,
                event: CalloutEvent::Grpc(event),
                ..
            })) => {
                let (kind, n) = GrpcCallback::of(&event);
                if matches!(event, GrpcEvent::Close { .. } | GrpcEvent::UnaryReply(_)) {
                    inner.store.data_mut().grpc_calls.remove(&token);
                }
                inner.store.data_mut().grpc_event = Some(event);
                match self.ex.grpc_callback(kind) {
                    Some(f) => (
                        Phase::Grpc,
                        guest_call(&mut inner, &self.metrics, Phase::Grpc, f, (root, token, n)),
                    ),
                    None => (Phase::Grpc, Ok(())),
                }
            }
            Some(RootEvent::Callout(CalloutDone {
                token,
                event: CalloutEvent::Http(response),
                ..
            })) => {
                let (nh, len, nt, resp) = CalloutDone::counts(response);
                inner.store.data_mut().callout_response = resp;
                match &self.ex.http_call_response {
                    Some(f) => (
                        Phase::HttpCallResponse,
                        guest_call(
                            &mut inner,
                            &self.metrics,
                            Phase::HttpCallResponse,
                            f,
                            (root, token, nh, len, nt),
                        ),
                    ),
                    None => (Phase::HttpCallResponse, Ok(())),
                }
            }
        };
        let tick = {
            let data = inner.store.data_mut();
            data.callout_sink = None;
            data.callout_response = None;
            data.grpc_event = None;
            data.give_back();
            data.tick_period_ms
        };
        drop(inner);
        self.set_tick(tick);
        if let Err(e) = r {
            self.fail(phase, &e);
        }
    }
}

impl RootInbox for Vm {
    fn push_root_event(&self, e: RootEvent) {
        Vm::push_root_event(self, e);
    }

    fn queue_ready(self: Arc<Self>, queue: u32) {
        Vm::queue_ready(&self, queue);
    }
}

impl super::ticker::Ticked for Vm {
    fn period_ms(&self) -> u32 {
        self.tick_period_ms()
    }

    fn failed(&self) -> bool {
        self.is_failed()
    }

    fn deliver_events(self: Arc<Self>) {
        self.deliver_root_events();
    }

    fn tick_now(self: Arc<Self>) {
        self.tick();
    }
}
