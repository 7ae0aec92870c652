//! The Proxy-Wasm plugin host: the wasmtime engine, plugins and their VMs, the ABI's host
//! calls, and what plugins may see.

pub mod callout;
pub mod engine;
pub mod events;
pub mod grpc;
pub mod guest_metrics;
pub mod header_list;
pub mod hostcalls;
pub mod memory;
pub mod plugin;
pub mod sanitize;
pub mod settings;
pub mod shared;
pub mod stream;
pub mod target;
pub mod ticker;
pub mod vm;
pub mod wasi;

use std::path::PathBuf;
use std::sync::OnceLock;

use wasmtime::Linker;

use engine::{EngineOptions, WasmEngine};
use vm::VmState;

/// The process's engine and the linker every plugin is instantiated with.
pub struct Host {
    /// The engine.
    pub engine: WasmEngine,
    /// Every host function.
    pub linker: Linker<VmState>,
}

/// Where compiled plugins are cached: `$SLUICE_WASM_CACHE`, else `$XDG_CACHE_HOME/sluice/wasm`
/// or `~/.cache/sluice/wasm`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SLUICE_WASM_CACHE") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sluice").join("wasm"))
}

/// How the engine keeps instances, set by the first config before the host is built.
#[derive(Debug, Clone, Copy)]
pub struct EngineSizing {
    /// Instance slots of the pooling allocator (one per VM).
    pub instance_slots: u32,
    /// Map memory per instantiation instead of pooling.
    pub on_demand: bool,
}

impl Default for EngineSizing {
    fn default() -> Self {
        EngineSizing {
            instance_slots: EngineOptions::default().pooled_instances,
            on_demand: false,
        }
    }
}

static ENGINE_SIZING: OnceLock<EngineSizing> = OnceLock::new();

/// Sizes the engine. Only the first call before the host is built counts: the engine is fixed
/// once made (the proxy refuses a reload that changes its `engine:` section).
pub fn configure_engine(sizing: EngineSizing) {
    let _ = ENGINE_SIZING.set(sizing);
}

/// The process-wide host, built on first use.
pub fn host() -> Result<&'static Host, String> {
    static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
    HOST.get_or_init(|| {
        let sizing = ENGINE_SIZING.get().copied().unwrap_or_default();
        let mut opts = EngineOptions {
            cache_dir: cache_dir(),
            pooled_instances: sizing.instance_slots,
            on_demand: sizing.on_demand,
            ..EngineOptions::default()
        };
        tracing::debug!(
            instance_slots = opts.pooled_instances,
            on_demand = opts.on_demand,
            "wasm engine"
        );
        let engine = match WasmEngine::new(&opts) {
            Ok(e) => e,
            Err(e) if opts.cache_dir.is_some() => {
                tracing::warn!(error = %e, "compiled-plugin cache disabled");
                opts.cache_dir = None;
                WasmEngine::new(&opts).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let linker = hostcalls::linker(engine.engine()).map_err(|e| format!("{e:#}"))?;
        Ok(Host { engine, linker })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Forgets compiled modules no plugin in `keep` (sha256s) uses. Plugins still serving keep
/// their own module alive; this only stops the in-memory map from growing with every reload.
pub fn prune_modules(keep: &[[u8; 32]]) {
    if let Ok(h) = host() {
        h.engine.retain_modules(keep);
    }
}
