//! Plugins made from the config: a `plugins:` entry and its fetched binary become a running
//! plugin of the host (its settings, upstreams and shared-data store resolved).

use std::sync::Arc;
use std::time::Instant;

use crate::config::{PluginSpec, SharedData};
use crate::progress::{self, Step};
use crate::source::Fetched;
use crate::upstream::Pool;
use crate::wasm;
use crate::wasm::plugin::{Plugin, PluginError};
use crate::wasm::sanitize::Sanitizer;
use crate::wasm::settings::{PluginSettings, VmStart};
use crate::wasm::target::CalloutTarget;

/// Loads one plugin from its fetched binary (whose bytes are not even read when a module of
/// its sha256 is already compiled): compiles it (once per sha256: an unchanged binary is not
/// compiled again) and starts its VMs. `default_vms` is
/// used when the spec does not set `vms`.
pub fn load_plugin(
    spec: &PluginSpec,
    binary: &Fetched,
    pools: &[Arc<Pool>],
    extra_hidden: &[String],
    default_vms: usize,
    shared_data: &SharedData,
    vm_start: VmStart,
) -> Result<Arc<Plugin>, PluginError> {
    let host = wasm::host().map_err(|message| PluginError::Compile {
        plugin: spec.name.clone(),
        message,
    })?;
    let settings = PluginSettings {
        name: spec.name.clone(),
        version: spec.version,
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
                    .map(|p| (u.clone(), p.clone() as Arc<dyn CalloutTarget>))
            })
            .collect(),
        limits: spec.limits,
        on_error: spec.on_error,
        vms: spec.vm_count(default_vms),
        vm_start,
        sluice_properties: true,
        shared_store: match shared_data {
            SharedData::Memory => None,
            SharedData::Redis(settings) => Some(crate::redis::shared_store(settings)),
        },
    };
    // A module compiled before from bytes of this digest needs no bytes at all.
    let sha256 = binary.sha256.as_str();
    let compiling = Instant::now();
    progress::begin(&spec.name, Step::Compile);
    let known = wasm::engine::unhex32(sha256).and_then(|d| Some((host.engine.compiled(&d)?, d)));
    let already = known.is_some();
    let compiled = match known {
        Some(m) => Ok(m),
        None => {
            let compile_error = |message| PluginError::Compile {
                plugin: spec.name.clone(),
                message,
            };
            binary.bytes().map_err(compile_error).and_then(|bytes| {
                let (module, digest) = host
                    .engine
                    .compile(&bytes)
                    .map_err(|e| compile_error(e.to_string()))?;
                if wasm::engine::hex(&digest) != sha256 {
                    return Err(compile_error(format!(
                        "its bytes changed while the configuration was loading (sha256 {}, \
                         fetched as {sha256})",
                        wasm::engine::hex(&digest)
                    )));
                }
                Ok((module, digest))
            })
        }
    };
    progress::end(&spec.name);
    let (module, digest) = compiled?;
    tracing::info!(
        plugin = %spec.name,
        version = %spec.version.as_str(),
        already_compiled = already,
        ms = progress::ms(compiling.elapsed()),
        "plugin compiled"
    );
    let starting = Instant::now();
    progress::begin(&spec.name, Step::Start);
    let vms = settings.vms;
    let plugin = Plugin::load_module(&host.engine, &host.linker, settings, module, digest);
    progress::end(&spec.name);
    let plugin = plugin?;
    tracing::info!(
        plugin = %spec.name,
        version = %spec.version.as_str(),
        vms,
        started = plugin.vms().len(),
        ms = progress::ms(starting.elapsed()),
        "plugin started"
    );
    Ok(plugin)
}
