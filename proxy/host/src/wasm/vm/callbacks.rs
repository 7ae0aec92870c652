//! The guest's callbacks, looked up once when the VM starts, and the VM's start-up.

use sluice_abi::names::{exports, ABI_VERSION_0_2_0, ABI_VERSION_0_2_1};
use wasmtime::{Instance, InstancePre, Store, TypedFunc, WasmParams, WasmResults};

use crate::wasm::settings::PluginSettings;
use crate::wasm::wasi::ProcExit;

use super::*;

pub(super) type F1 = TypedFunc<u32, ()>;

pub(super) type F2 = TypedFunc<(u32, u32), ()>;

pub(super) type F2R = TypedFunc<(u32, u32), u32>;

pub(super) type F3R = TypedFunc<(u32, u32, u32), u32>;

pub(super) type F1R = TypedFunc<u32, u32>;

pub(super) type F5 = TypedFunc<(u32, u32, u32, u32, u32), ()>;

pub(super) type F3 = TypedFunc<(u32, u32, u32), ()>;

/// The guest's callbacks (each optional).
#[derive(Default)]
pub(super) struct Exports {
    pub(super) context_create: Option<F2>,
    pub(super) vm_start: Option<F2R>,
    pub(super) configure: Option<F2R>,
    pub(super) tick: Option<F1>,
    pub(super) request_headers: Option<F3R>,
    pub(super) request_body: Option<F3R>,
    pub(super) response_headers: Option<F3R>,
    pub(super) response_body: Option<F3R>,
    pub(super) response_trailers: Option<F2R>,
    pub(super) log: Option<F1>,
    pub(super) done: Option<F1R>,
    pub(super) delete: Option<F1>,
    pub(super) http_call_response: Option<F5>,
    pub(super) queue_ready: Option<F2>,
    pub(super) grpc_initial_metadata: Option<F3>,
    pub(super) grpc_receive: Option<F3>,
    pub(super) grpc_trailing_metadata: Option<F3>,
    pub(super) grpc_close: Option<F3>,
}

impl Exports {
    pub(super) fn grpc_callback(&self, kind: GrpcCallback) -> Option<&F3> {
        match kind {
            GrpcCallback::InitialMetadata => self.grpc_initial_metadata.as_ref(),
            GrpcCallback::Receive => self.grpc_receive.as_ref(),
            GrpcCallback::TrailingMetadata => self.grpc_trailing_metadata.as_ref(),
            GrpcCallback::Close => self.grpc_close.as_ref(),
        }
    }
}

pub(super) fn typed<P: WasmParams, R: WasmResults>(
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

pub(super) fn init(
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
