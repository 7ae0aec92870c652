//! One VM: a wasmtime `Store` with one instance of a plugin, its root context, and the calls
//! into it.
//!
//! The store sits behind a mutex held only for one guest call (never across an `.await`).
//! Every call gets the plugin's fuel and wall-clock deadline. Any failure — trap, fuel,
//! deadline, memory, or a host call that caught the guest misbehaving — marks the VM failed:
//! it is never entered again, and its plugin builds a replacement.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use prometheus::{Histogram, IntCounter, IntGauge};
use sluice_abi::names::{exports, ABI_VERSION_0_2_0, ABI_VERSION_0_2_1};
use wasmtime::{
    AsContextMut, Engine, Instance, InstancePre, Memory, ResourceLimiter, Store, Trap, TypedFunc,
    WasmParams, WasmResults,
};

use super::callout::{CalloutDone, CalloutEvent, CalloutResponse, CalloutSink};
use super::engine::EPOCH_TICK;
use super::grpc::GrpcEvent;
use super::plugin::Plugin;
use super::settings::PluginSettings;
use super::shared::Namespace;
use super::stream::Stream;
use super::wasi::{ProcExit, WasiHost};

/// The phase a guest call belongs to (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `_initialize`/`main`/`_start`, root context creation, `on_vm_start`.
    Start,
    /// `on_configure`.
    Configure,
    /// `on_tick`.
    Tick,
    /// Stream context creation.
    Create,
    /// `on_request_headers`.
    RequestHeaders,
    /// `on_request_body`.
    RequestBody,
    /// `on_request_trailers`.
    RequestTrailers,
    /// `on_response_headers`.
    ResponseHeaders,
    /// `on_response_body`.
    ResponseBody,
    /// `on_response_trailers`.
    ResponseTrailers,
    /// `on_http_call_response`.
    HttpCallResponse,
    /// The gRPC callbacks (`on_grpc_receive_initial_metadata`, `on_grpc_receive`,
    /// `on_grpc_receive_trailing_metadata`, `on_grpc_close`).
    Grpc,
    /// `on_queue_ready`.
    QueueReady,
    /// `on_log`.
    Log,
    /// `on_done` / `on_delete`.
    Done,
}

impl Phase {
    /// All phases, in label order.
    pub const ALL: [Phase; 15] = [
        Phase::Start,
        Phase::Configure,
        Phase::Tick,
        Phase::Create,
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
        Phase::HttpCallResponse,
        Phase::Grpc,
        Phase::QueueReady,
        Phase::Log,
        Phase::Done,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "vm_start",
            Phase::Configure => "configure",
            Phase::Tick => "tick",
            Phase::Create => "context_create",
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
            Phase::HttpCallResponse => "http_call_response",
            Phase::Grpc => "grpc",
            Phase::QueueReady => "queue_ready",
            Phase::Log => "log",
            Phase::Done => "done",
        }
    }
}

/// How a guest call failed (the `kind` label of `sluice_plugin_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A trap (unreachable, out-of-bounds access, stack overflow, panic, `proc_exit`).
    Trap,
    /// The call ran out of fuel.
    Fuel,
    /// The call passed its wall-clock deadline.
    Timeout,
    /// The guest failed after a memory growth was refused.
    Memory,
    /// The guest broke the ABI (wrong return value, bad allocator, …).
    Abi,
    /// The VM had already failed in another request; nothing new is counted.
    Lost,
    /// Shared data (Redis) could not be reached during the call. The guest returned normally,
    /// so the VM is kept; the request phase fails under the plugin's policy.
    SharedData,
}

impl ErrorKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Fuel => "fuel",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Abi => "abi",
            ErrorKind::Lost => "lost",
            ErrorKind::SharedData => "shared_data",
        }
    }
}

/// A failed guest call.
#[derive(Debug, Clone)]
pub struct GuestError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, for the log.
    pub message: String,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

/// Caps linear memory and remembers whether a growth was refused.
pub struct Limiter {
    max_bytes: usize,
    /// A `memory.grow` was refused since the last call began.
    pub denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Host-side state of one VM, reachable from host calls.
pub struct VmState {
    /// The plugin's settings.
    pub settings: Arc<PluginSettings>,
    /// Memory limiter.
    pub limiter: Limiter,
    /// The plugin's shared-data namespace.
    pub shared: Arc<Namespace>,
    /// The guest allocator (`malloc`, else `proxy_on_memory_allocate`).
    pub alloc: Option<TypedFunc<u32, u32>>,
    /// The guest's memory.
    pub memory: Option<Memory>,
    /// Root context id.
    pub root_id: u32,
    /// The context the current callback is for (changed by `proxy_set_effective_context`).
    pub context: u32,
    /// The request being served by the current callback, if any.
    pub stream: Option<Box<Stream>>,
    /// The context id `stream` belongs to in this VM (valid while `stream` is `Some`).
    pub stream_context: u32,
    /// A paused request a root callback switched to (`proxy_set_effective_context`): its
    /// stream is in `stream` until it is given back when the call ends.
    pub borrowed: Option<Arc<Parked>>,
    /// The HTTP-call response visible during `on_http_call_response`.
    pub callout_response: Option<CalloutResponse>,
    /// The gRPC event being delivered (its metadata, message or status).
    pub grpc_event: Option<super::grpc::GrpcEvent>,
    /// gRPC calls made from the root context, by token (ended when the VM goes).
    pub grpc_calls: std::collections::HashMap<u32, super::grpc::GrpcHandle>,
    /// Where callouts made during the current callback report.
    pub callout_sink: Option<CalloutSink>,
    /// The chain position of this plugin in the current request (callouts report it back).
    pub member: usize,
    /// Tick period asked for, ms (0 = none).
    pub tick_period_ms: u32,
    /// Next callout token.
    pub next_token: u32,
    /// A host call found the guest breaking the ABI and trapped it.
    pub abi_error: Option<String>,
    /// A shared-data call could not reach its store during the current guest call.
    pub shared_failure: Option<String>,
    /// The VM itself (for queues that notify it).
    pub vm: Weak<Vm>,
    /// Whether a refused write to a hidden header was logged already.
    pub warned_hidden: bool,
}

impl VmState {
    /// A new store for a VM of a plugin with these settings, its memory capped by the
    /// plugin's limit; nothing is instantiated in it yet.
    pub fn store(
        engine: &Engine,
        settings: Arc<PluginSettings>,
        shared: Arc<Namespace>,
        vm: Weak<Vm>,
    ) -> Store<VmState> {
        let state = VmState {
            limiter: Limiter {
                max_bytes: settings.limits.memory_bytes,
                denied: false,
            },
            settings,
            shared,
            alloc: None,
            memory: None,
            root_id: 1,
            context: 1,
            stream: None,
            stream_context: 0,
            borrowed: None,
            callout_response: None,
            grpc_event: None,
            grpc_calls: std::collections::HashMap::new(),
            callout_sink: None,
            member: 0,
            tick_period_ms: 0,
            next_token: 0,
            abi_error: None,
            shared_failure: None,
            vm,
            warned_hidden: false,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store
    }
}

impl VmState {
    /// Gives a paused request's state back to its chain (see [`Parked`]).
    pub fn give_back(&mut self) {
        if let Some(p) = self.borrowed.take() {
            p.give_back(self.stream.take());
            self.context = self.root_id;
        }
    }
}

impl WasiHost for VmState {
    fn wasi_output(&mut self, fd: u32, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if fd == 2 {
            tracing::error!(target: "sluice::plugin", plugin = %self.settings.name, "{text}");
        } else {
            tracing::info!(target: "sluice::plugin", plugin = %self.settings.name, "{text}");
        }
    }
}

type F1 = TypedFunc<u32, ()>;
type F2 = TypedFunc<(u32, u32), ()>;
type F2R = TypedFunc<(u32, u32), u32>;
type F3R = TypedFunc<(u32, u32, u32), u32>;
type F1R = TypedFunc<u32, u32>;
type F5 = TypedFunc<(u32, u32, u32, u32, u32), ()>;
type F3 = TypedFunc<(u32, u32, u32), ()>;

/// The guest's callbacks (each optional).
#[derive(Default)]
struct Exports {
    context_create: Option<F2>,
    vm_start: Option<F2R>,
    configure: Option<F2R>,
    tick: Option<F1>,
    request_headers: Option<F3R>,
    request_body: Option<F3R>,
    response_headers: Option<F3R>,
    response_body: Option<F3R>,
    response_trailers: Option<F2R>,
    log: Option<F1>,
    done: Option<F1R>,
    delete: Option<F1>,
    http_call_response: Option<F5>,
    queue_ready: Option<F2>,
    grpc_initial_metadata: Option<F3>,
    grpc_receive: Option<F3>,
    grpc_trailing_metadata: Option<F3>,
    grpc_close: Option<F3>,
}

struct Inner {
    store: Store<VmState>,
    next_context: u32,
    /// Linear memory size after the last guest call (read without the lock).
    memory_bytes: Arc<AtomicUsize>,
}

/// Per-phase metric handles of a plugin.
pub struct PhaseMetrics {
    calls: Vec<IntCounter>,
    durations: Vec<Histogram>,
    /// `sluice_plugin_fuel_consumed_total` by phase.
    fuel: Vec<IntCounter>,
    /// `sluice_plugin_contexts` of the plugin.
    contexts: IntGauge,
    /// `sluice_plugin_requests_total` of the plugin.
    requests: IntCounter,
}

/// What a plugin spent in one phase, since the process started (all versions of the plugin
/// under its name).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseCost {
    /// The phase.
    pub phase: Phase,
    /// Guest calls.
    pub calls: u64,
    /// Time in the guest, seconds.
    pub seconds: f64,
    /// Fuel consumed.
    pub fuel: u64,
}

impl PhaseMetrics {
    /// Handles for `plugin`.
    pub fn new(plugin: &str) -> PhaseMetrics {
        let m = crate::metrics::metrics();
        PhaseMetrics {
            calls: Phase::ALL
                .iter()
                .map(|p| m.plugin_calls.with_label_values(&[plugin, p.as_str()]))
                .collect(),
            durations: Phase::ALL
                .iter()
                .map(|p| {
                    m.plugin_call_duration
                        .with_label_values(&[plugin, p.as_str()])
                })
                .collect(),
            fuel: Phase::ALL
                .iter()
                .map(|p| m.plugin_fuel.with_label_values(&[plugin, p.as_str()]))
                .collect(),
            contexts: m.plugin_contexts.with_label_values(&[plugin]),
            requests: m.plugin_requests.with_label_values(&[plugin]),
        }
    }

    /// Requests served (stream contexts created) since the process started.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// The cost of each phase that was called.
    pub fn costs(&self) -> Vec<PhaseCost> {
        Phase::ALL
            .iter()
            .enumerate()
            .map(|(i, &phase)| PhaseCost {
                phase,
                calls: self.calls[i].get(),
                seconds: self.durations[i].get_sample_sum(),
                fuel: self.fuel[i].get(),
            })
            .filter(|c| c.calls > 0)
            .collect()
    }
}

/// Events for the root context, delivered by the ticker thread.
pub enum RootEvent {
    /// A callout made from the root context finished.
    Callout(CalloutDone),
    /// A queue this VM registered has items.
    QueueReady(u32),
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

/// A stream callback.
#[derive(Debug, Clone, Copy)]
pub enum StreamCall {
    /// `on_request_headers(n, end_of_stream)`.
    RequestHeaders(u32, bool),
    /// `on_request_body(len, end_of_stream)`.
    RequestBody(u32, bool),
    /// `on_response_headers(n, end_of_stream)`.
    ResponseHeaders(u32, bool),
    /// `on_response_body(len, end_of_stream)`.
    ResponseBody(u32, bool),
    /// `on_response_trailers(n)`.
    ResponseTrailers(u32),
    /// `on_http_call_response(token, n_headers, body_len, n_trailers)`.
    HttpCallResponse(u32, u32, u32, u32),
    /// One of the gRPC callbacks, with the call's token and its count, length or status.
    Grpc(GrpcCallback, u32, u32),
    /// `on_log`.
    Log,
}

impl StreamCall {
    fn phase(self) -> Phase {
        match self {
            StreamCall::RequestHeaders(..) => Phase::RequestHeaders,
            StreamCall::RequestBody(..) => Phase::RequestBody,
            StreamCall::ResponseHeaders(..) => Phase::ResponseHeaders,
            StreamCall::ResponseBody(..) => Phase::ResponseBody,
            StreamCall::ResponseTrailers(..) => Phase::ResponseTrailers,
            StreamCall::HttpCallResponse(..) => Phase::HttpCallResponse,
            StreamCall::Grpc(..) => Phase::Grpc,
            StreamCall::Log => Phase::Log,
        }
    }
}

/// Which gRPC callback a [`StreamCall::Grpc`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCallback {
    /// `on_grpc_receive_initial_metadata(ctx, token, n_headers)`.
    InitialMetadata,
    /// `on_grpc_receive(ctx, token, message_len)`.
    Receive,
    /// `on_grpc_receive_trailing_metadata(ctx, token, n_trailers)`.
    TrailingMetadata,
    /// `on_grpc_close(ctx, token, status)`.
    Close,
}

impl GrpcCallback {
    /// The callback for `event`, and the number it is called with.
    pub fn of(event: &super::grpc::GrpcEvent) -> (GrpcCallback, u32) {
        use super::grpc::GrpcEvent as E;
        match event {
            E::InitialMetadata(h) => (GrpcCallback::InitialMetadata, h.len() as u32),
            E::Message(m) | E::UnaryReply(m) => (GrpcCallback::Receive, m.len() as u32),
            E::TrailingMetadata(t) => (GrpcCallback::TrailingMetadata, t.len() as u32),
            E::Close { status, .. } => (GrpcCallback::Close, *status),
        }
    }
}

impl Exports {
    fn grpc_callback(&self, kind: GrpcCallback) -> Option<&F3> {
        match kind {
            GrpcCallback::InitialMetadata => self.grpc_initial_metadata.as_ref(),
            GrpcCallback::Receive => self.grpc_receive.as_ref(),
            GrpcCallback::TrailingMetadata => self.grpc_trailing_metadata.as_ref(),
            GrpcCallback::Close => self.grpc_close.as_ref(),
        }
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
    plugin: Weak<Plugin>,
    metrics: Arc<PhaseMetrics>,
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

fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<VmState>,
    instance: &Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, VmError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|_| {
            VmError::Module(format!(
                "export {name} has the wrong signature ({:?})",
                f.ty(&*store)
            ))
        }),
    }
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
        plugin: Weak<Plugin>,
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
            super::ticker::register(Arc::downgrade(self));
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
        crate::metrics::metrics()
            .plugin_errors
            .with_label_values(&[name, phase.as_str(), error.kind.as_str()])
            .inc();
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
        event: super::grpc::GrpcEvent,
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
        grpc: Option<super::grpc::GrpcEvent>,
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
                crate::metrics::metrics()
                    .plugin_errors
                    .with_label_values(&[
                        &self.settings.name,
                        Phase::Done.as_str(),
                        e.kind.as_str(),
                    ])
                    .inc();
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
        super::ticker::register(Arc::downgrade(self));
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
        let sink = CalloutSink::Root(Arc::downgrade(self));
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

fn lost() -> GuestError {
    GuestError {
        kind: ErrorKind::Lost,
        message: "its VM failed in another request".into(),
    }
}

/// Calls `f` with the plugin's limits and classifies a failure.
fn guest_call<P: WasmParams, R: WasmResults>(
    inner: &mut Inner,
    metrics: &PhaseMetrics,
    phase: Phase,
    f: &TypedFunc<P, R>,
    params: P,
) -> Result<R, GuestError> {
    let store = &mut inner.store;
    let limits = store.data().settings.limits;
    {
        let data = store.data_mut();
        data.limiter.denied = false;
        data.abi_error = None;
        data.shared_failure = None;
    }
    // The store cannot fail to take fuel when fuel is enabled on the engine.
    let _ = store.set_fuel(limits.fuel);
    store.set_epoch_deadline(deadline_ticks(limits.timeout, phase));
    let start = Instant::now();
    let r = f.call(store.as_context_mut(), params);
    let idx = phase as usize;
    let took = start.elapsed();
    metrics.calls[idx].inc();
    metrics.durations[idx].observe(took.as_secs_f64());
    // What the call cost in fuel (all of it when it ran out): what a platform bills by.
    let left = store.get_fuel().unwrap_or(0);
    let fuel = limits.fuel.saturating_sub(left);
    metrics.fuel[idx].inc_by(fuel);
    if let Some(s) = store.data_mut().stream.as_deref_mut() {
        s.cost.add(super::stream::CallCost {
            nanos: took.as_nanos() as u64,
            fuel,
        });
    }
    if let Some(m) = store.data().memory {
        inner
            .memory_bytes
            .store(m.data_size(&*store), Ordering::Relaxed);
    }
    let shared_failure = store.data_mut().shared_failure.take();
    match (r, shared_failure) {
        (Ok(r), None) => Ok(r),
        // Start-up goes on without shared data: the guest saw the failure status and decides
        // (a plugin must be able to start while Redis is down).
        (Ok(r), Some(_)) if matches!(phase, Phase::Start | Phase::Configure) => Ok(r),
        (Ok(_), Some(message)) => Err(GuestError {
            kind: ErrorKind::SharedData,
            message,
        }),
        (Err(e), None) => Err(classify(store.data(), &e)),
        // The guest trapped on the failure status (an SDK that panics on it): the VM is
        // replaced as for any trap, and the log says why.
        (Err(e), Some(cause)) => {
            let mut g = classify(store.data(), &e);
            g.message = format!("{} (after: {cause})", g.message);
            Err(g)
        }
    }
}

/// Shortest deadline of a start-up call (instantiation, `_start`, the root context,
/// `on_vm_start`, `on_configure`). These run off the request path, while a config is loaded or
/// a VM replaced, often while compiles keep every CPU busy: a plugin's per-request deadline
/// (a few ms) would refuse a healthy plugin whose thread was merely descheduled. Fuel still
/// bounds their work.
const STARTUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Epoch ticks for a guest call of `phase` under the plugin's `timeout`.
fn deadline_ticks(timeout: std::time::Duration, phase: Phase) -> u64 {
    let d = match phase {
        Phase::Start | Phase::Configure => timeout.max(STARTUP_DEADLINE),
        _ => timeout,
    };
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

fn classify(state: &VmState, e: &wasmtime::Error) -> GuestError {
    let mut message = format!("{e:#}");
    if message.len() > 2000 {
        let mut cut = 2000;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let kind = if let Some(abi) = &state.abi_error {
        message = abi.clone();
        ErrorKind::Abi
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => ErrorKind::Fuel,
            Some(Trap::Interrupt) => ErrorKind::Timeout,
            _ if state.limiter.denied => ErrorKind::Memory,
            _ => ErrorKind::Trap,
        }
    };
    GuestError { kind, message }
}

fn start_error(phase: &'static str, error: GuestError) -> VmError {
    VmError::Start { phase, error }
}

fn init(
    inner: &mut Inner,
    pre: &InstancePre<VmState>,
    settings: &PluginSettings,
    metrics: &PhaseMetrics,
) -> Result<Exports, VmError> {
    let store = &mut inner.store;
    let _ = store.set_fuel(settings.limits.fuel);
    store.set_epoch_deadline(deadline_ticks(settings.limits.timeout, Phase::Start));
    let instance = pre.instantiate(&mut *store).map_err(|e| {
        let mut ge = classify(store.data(), &e);
        if ge.message.contains("concurrent limit") {
            ge.message.push_str(
                " (every VM takes one instance slot of the engine's pool: raise \
                 engine.instance_slots, lower the plugins' vms, or set engine.allocation: \
                 on_demand)",
            );
        }
        start_error("instantiation (start function)", ge)
    })?;
    if instance.get_func(&mut *store, ABI_VERSION_0_2_1).is_none()
        && instance.get_func(&mut *store, ABI_VERSION_0_2_0).is_none()
    {
        return Err(VmError::Module(format!(
            "not a Proxy-Wasm plugin: it exports neither {ABI_VERSION_0_2_1} nor {ABI_VERSION_0_2_0}"
        )));
    }
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| VmError::Module("the module exports no memory named \"memory\"".into()))?;
    let alloc = match typed::<u32, u32>(store, &instance, exports::MALLOC)? {
        Some(f) => Some(f),
        None => typed::<u32, u32>(store, &instance, exports::ON_MEMORY_ALLOCATE)?,
    };
    if alloc.is_none() {
        return Err(VmError::Module(format!(
            "the module exports no allocator ({} or {})",
            exports::MALLOC,
            exports::ON_MEMORY_ALLOCATE
        )));
    }
    {
        let data = store.data_mut();
        data.memory = Some(memory);
        data.alloc = alloc;
    }
    let ex = Exports {
        context_create: typed(store, &instance, exports::ON_CONTEXT_CREATE)?,
        vm_start: typed(store, &instance, exports::ON_VM_START)?,
        configure: typed(store, &instance, exports::ON_CONFIGURE)?,
        tick: typed(store, &instance, exports::ON_TICK)?,
        request_headers: typed(store, &instance, exports::ON_REQUEST_HEADERS)?,
        request_body: typed(store, &instance, exports::ON_REQUEST_BODY)?,
        response_headers: typed(store, &instance, exports::ON_RESPONSE_HEADERS)?,
        response_body: typed(store, &instance, exports::ON_RESPONSE_BODY)?,
        response_trailers: typed(store, &instance, exports::ON_RESPONSE_TRAILERS)?,
        log: typed(store, &instance, exports::ON_LOG)?,
        done: typed(store, &instance, exports::ON_DONE)?,
        delete: typed(store, &instance, exports::ON_DELETE)?,
        http_call_response: typed(store, &instance, exports::ON_HTTP_CALL_RESPONSE)?,
        queue_ready: typed(store, &instance, exports::ON_QUEUE_READY)?,
        grpc_initial_metadata: typed(store, &instance, exports::ON_GRPC_RECEIVE_INITIAL_METADATA)?,
        grpc_receive: typed(store, &instance, exports::ON_GRPC_RECEIVE)?,
        grpc_trailing_metadata: typed(
            store,
            &instance,
            exports::ON_GRPC_RECEIVE_TRAILING_METADATA,
        )?,
        grpc_close: typed(store, &instance, exports::ON_GRPC_CLOSE)?,
    };
    // WASI start-up: a reactor's `_initialize` (then `main(0, 0)` if exported), else a
    // command's `_start`, where `proc_exit(0)` is a normal end.
    let initialize = typed::<(), ()>(store, &instance, exports::INITIALIZE)?;
    let main = typed::<(u32, u32), u32>(store, &instance, exports::MAIN)?;
    let start = typed::<(), ()>(store, &instance, exports::START)?;
    if let Some(f) = initialize {
        guest_call(inner, metrics, Phase::Start, &f, ())
            .map_err(|e| start_error(exports::INITIALIZE, e))?;
        if let Some(main) = main {
            guest_call(inner, metrics, Phase::Start, &main, (0, 0))
                .map_err(|e| start_error(exports::MAIN, e))?;
        }
    } else if let Some(f) = start {
        if let Err(e) = guest_call(inner, metrics, Phase::Start, &f, ()) {
            if !e.message.contains(&ProcExit(0).to_string()) {
                return Err(start_error(exports::START, e));
            }
        }
    }
    let root = inner.store.data().root_id;
    if let Some(f) = &ex.context_create {
        guest_call(inner, metrics, Phase::Start, f, (root, 0))
            .map_err(|e| start_error(exports::ON_CONTEXT_CREATE, e))?;
    }
    let steps = [
        (
            &ex.vm_start,
            Phase::Start,
            exports::ON_VM_START,
            &settings.vm_config,
        ),
        (
            &ex.configure,
            Phase::Configure,
            exports::ON_CONFIGURE,
            &settings.config,
        ),
    ];
    for (f, phase, name, bytes) in steps {
        if let Some(f) = f {
            let ok = guest_call(inner, metrics, phase, f, (root, bytes.len() as u32))
                .map_err(|e| start_error(name, e))?;
            if ok == 0 {
                return Err(VmError::Refused(name));
            }
        }
    }
    Ok(ex)
}
