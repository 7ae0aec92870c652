//! The Proxy-Wasm plugin host: the wasmtime engine, plugins and their VMs, the ABI's host
//! calls, and what plugins may see.

pub mod callout;
pub mod engine;
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::Linker;

use crate::config::PluginSpec;
use crate::upstream::Pool;
use engine::{hex, EngineOptions, WasmEngine};
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

/// The process-wide host, built on first use.
pub fn host() -> Result<&'static Host, String> {
    static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut opts = EngineOptions {
            cache_dir: cache_dir(),
            ..EngineOptions::default()
        };
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

/// Loads every plugin of a config: reads and checks each binary, compiles it (once per
/// sha256), and starts its VMs. `default_vms` is used when a plugin does not set `vms`.
pub fn load_plugins(
    specs: &[PluginSpec],
    pools: &[Arc<Pool>],
    extra_hidden: &[String],
    default_vms: usize,
) -> Result<HashMap<String, Arc<Plugin>>, PluginError> {
    let mut out = HashMap::new();
    if specs.is_empty() {
        return Ok(out);
    }
    let host = host().map_err(|message| PluginError::Compile {
        plugin: specs[0].name.clone(),
        message,
    })?;
    for spec in specs {
        let bytes = std::fs::read(&spec.path).map_err(|e| PluginError::Read {
            plugin: spec.name.clone(),
            path: spec.path.display().to_string(),
            message: e.to_string(),
        })?;
        if let Some(expected) = &spec.sha256 {
            let actual = hex(&Sha256::digest(&bytes));
            if &actual != expected {
                return Err(PluginError::Digest {
                    plugin: spec.name.clone(),
                    path: spec.path.display().to_string(),
                    actual,
                    expected: expected.clone(),
                });
            }
        }
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
            vms: if spec.vms == 0 {
                default_vms.max(1)
            } else {
                spec.vms
            },
            sluice_properties: true,
        };
        let plugin = Plugin::load(&host.engine, &host.linker, settings, &bytes)?;
        out.insert(spec.name.clone(), plugin);
    }
    Ok(out)
}
