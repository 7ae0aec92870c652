//! One guest call: the plugin's fuel and deadline, then its failure classified.

use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::{AsContextMut, TypedFunc, WasmParams, WasmResults};

use crate::wasm::engine::EPOCH_TICK;

use super::*;

/// Calls `f` with the plugin's limits and classifies a failure.
pub(super) fn guest_call<P: WasmParams, R: WasmResults>(
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
    let took = start.elapsed();
    let series = metrics.phase(phase);
    series.calls.inc();
    series.duration.observe(took.as_secs_f64());
    // What the call cost in fuel (all of it when it ran out): what a platform bills by.
    let left = store.get_fuel().unwrap_or(0);
    let fuel = limits.fuel.saturating_sub(left);
    series.fuel.inc_by(fuel);
    if let Some(s) = store.data_mut().stream.as_deref_mut() {
        s.cost.add(crate::wasm::stream::CallCost {
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
pub(super) const STARTUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Epoch ticks for a guest call of `phase` under the plugin's `timeout`.
pub(super) fn deadline_ticks(timeout: std::time::Duration, phase: Phase) -> u64 {
    let d = match phase {
        Phase::Start | Phase::Configure => timeout.max(STARTUP_DEADLINE),
        _ => timeout,
    };
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}
