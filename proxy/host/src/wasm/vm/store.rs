//! The host-side state of a VM's store (what host calls reach), and its memory limiter.

use std::sync::{Arc, Weak};

use wasmtime::{Engine, Memory, ResourceLimiter, Store, TypedFunc};

use crate::wasm::events::{CalloutResponse, CalloutSink, GrpcEvent};
use crate::wasm::settings::PluginSettings;
use crate::wasm::shared::Namespace;
use crate::wasm::stream::Stream;
use crate::wasm::wasi::WasiHost;

use super::*;

/// Caps linear memory and remembers whether a growth was refused.
pub struct Limiter {
    pub(super) max_bytes: usize,
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
    pub grpc_event: Option<GrpcEvent>,
    /// gRPC calls made from the root context, by token (ended when the VM goes).
    pub grpc_calls: std::collections::HashMap<u32, crate::wasm::grpc::GrpcHandle>,
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
