//! The Proxy-Wasm plugin host: the wasmtime engine, plugins and their VMs, the ABI's host
//! calls, and what plugins may see.

pub mod callout;
pub mod engine;
pub mod grpc;
pub mod guest_metrics;
pub mod hostcalls;
pub mod memory;
pub mod plugin;
pub mod sanitize;
pub mod settings;
pub mod shared;
pub mod stream;
pub mod ticker;
pub mod vm;
pub mod wasi;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use wasmtime::Linker;

use crate::config::PluginSpec;
use crate::upstream::Pool;
use engine::{EngineOptions, WasmEngine};
use plugin::{Plugin, PluginError};
use sanitize::Sanitizer;
use settings::PluginSettings;
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

/// The engine's pool settings, set by the first config before the host is built.
static ENGINE_SETTINGS: OnceLock<(crate::config::EngineSettings, usize)> = OnceLock::new();

/// Sizes the engine for a config that starts `vms` VMs (`engine:` section). Only the first
/// call before the host is built counts: the engine is fixed once made (a reload that changes
/// `engine:` is refused).
pub fn configure_engine(settings: &crate::config::EngineSettings, vms: usize) {
    let _ = ENGINE_SETTINGS.set((*settings, vms));
}

/// The process-wide host, built on first use.
pub fn host() -> Result<&'static Host, String> {
    static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
    HOST.get_or_init(|| {
        let (settings, vms) = ENGINE_SETTINGS.get().copied().unwrap_or_default();
        let mut opts = EngineOptions {
            cache_dir: cache_dir(),
            pooled_instances: settings.slots(vms),
            on_demand: settings.on_demand,
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

/// Loads one plugin from its fetched binary (whose bytes are not even read when a module of
/// its sha256 is already compiled): compiles it (once per sha256: an unchanged binary is not
/// compiled again) and starts its VMs. `default_vms` is
/// used when the spec does not set `vms`.
pub fn load_plugin(
    spec: &PluginSpec,
    binary: &crate::source::Fetched,
    pools: &[Arc<Pool>],
    extra_hidden: &[String],
    default_vms: usize,
    shared_data: &crate::config::SharedData,
    vm_start: settings::VmStart,
) -> Result<Arc<Plugin>, PluginError> {
    let host = host().map_err(|message| PluginError::Compile {
        plugin: spec.name.clone(),
        message,
    })?;
    let settings = PluginSettings {
        name: spec.name.clone(),
        root_id: spec.root_id.clone(),
        vm_id: spec.vm_id.clone(),
        config: spec.config.clone().into(),
        vm_config: spec.vm_config.clone().into(),
        sanitizer: Sanitizer::new(&spec.expose, extra_hidden),
        callout_targets: spec
            .allowed_upstreams
            .iter()
            .filter_map(|u| {
                pools
                    .iter()
                    .find(|p| &p.name == u)
                    .map(|p| (u.clone(), p.clone()))
            })
            .collect(),
        limits: spec.limits,
        on_error: spec.on_error,
        vms: spec.vm_count(default_vms),
        vm_start,
        sluice_properties: true,
        shared_data: shared_data.clone(),
    };
    // A module compiled before from bytes of this digest needs no bytes at all.
    let sha256 = binary.sha256.as_str();
    let known = engine::unhex32(sha256).and_then(|d| Some((host.engine.compiled(&d)?, d)));
    let (module, digest) = match known {
        Some(m) => m,
        None => {
            let compile_error = |message| PluginError::Compile {
                plugin: spec.name.clone(),
                message,
            };
            let bytes = binary.bytes().map_err(compile_error)?;
            let (module, digest) = host
                .engine
                .compile(&bytes)
                .map_err(|e| compile_error(e.to_string()))?;
            if engine::hex(&digest) != sha256 {
                return Err(compile_error(format!(
                    "its bytes changed while the configuration was loading (sha256 {}, \
                     fetched as {sha256})",
                    engine::hex(&digest)
                )));
            }
            (module, digest)
        }
    };
    Plugin::load_module(&host.engine, &host.linker, settings, module, digest)
}

/// Forgets compiled modules no plugin in `keep` (sha256s) uses. Plugins still serving keep
/// their own module alive; this only stops the in-memory map from growing with every reload.
pub fn prune_modules(keep: &[[u8; 32]]) {
    if let Ok(h) = host() {
        h.engine.retain_modules(keep);
    }
}
