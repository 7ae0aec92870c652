//! A plugin's settings as the host uses them, built from its validated config entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::sanitize::Sanitizer;
use crate::upstream::Pool;

/// What happens to a request when its plugin fails (trap, fuel, deadline, memory, ABI misuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Answer 503 (default).
    #[default]
    FailClosed,
    /// Skip the plugin for the rest of the request.
    FailOpen,
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per guest call.
    pub fuel: u64,
    /// Wall-clock deadline per guest call.
    pub timeout: Duration,
    /// Linear memory cap of each VM, bytes.
    pub memory_bytes: usize,
    /// Most body bytes buffered for the plugin (and most a plugin may set).
    pub max_body_bytes: usize,
    /// How long a paused request or response may wait for the plugin to resume it.
    pub pause_timeout: Duration,
    /// Most HTTP callouts one request may make through this plugin.
    pub max_callouts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            memory_bytes: (DEFAULT_MEMORY_MB << 20) as usize,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES as usize,
            pause_timeout: Duration::from_millis(DEFAULT_PAUSE_TIMEOUT_MS),
            max_callouts: DEFAULT_MAX_CALLOUTS,
        }
    }
}

/// Default fuel per call: roughly 100 million wasm instructions.
pub const DEFAULT_FUEL: u64 = 100_000_000;
/// Default deadline per call.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;
/// Default memory cap.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Default body buffering cap.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// Default wait for a paused request.
pub const DEFAULT_PAUSE_TIMEOUT_MS: u64 = 30_000;
/// Default callouts per request.
pub const DEFAULT_MAX_CALLOUTS: u32 = 16;

/// When a plugin's VMs start and stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmStart {
    /// Start every VM at load; otherwise the first VM starts at load and each other one when
    /// a worker thread first needs it.
    pub all_at_load: bool,
    /// A VM other than the first that served no request for this long is stopped (its root
    /// context gets `on_done` and `on_delete`) and started again on next use. `None`: never.
    pub idle: Option<Duration>,
}

/// Everything about a plugin except its code.
pub struct PluginSettings {
    /// Its name in the config.
    pub name: String,
    /// Root id (`plugin_root_id`).
    pub root_id: String,
    /// VM id (`plugin_vm_id`); also the shared-data namespace.
    pub vm_id: String,
    /// Bytes given to `on_configure`.
    pub config: Bytes,
    /// Bytes given to `on_vm_start`.
    pub vm_config: Bytes,
    /// What it may see.
    pub sanitizer: Sanitizer,
    /// Upstreams it may call out to, by name.
    pub callout_targets: HashMap<String, Arc<Pool>>,
    /// Limits.
    pub limits: Limits,
    /// Failure policy.
    pub on_error: FailurePolicy,
    /// VMs to run (at most).
    pub vms: usize,
    /// When they start and stop.
    pub vm_start: VmStart,
    /// Offer the properties only Sluice has (`route_name`, `upstream.address`); off, the
    /// plugin sees what a plain ABI v0.2.1 host offers (the test kit checks portability so).
    pub sluice_properties: bool,
    /// Where its shared data lives.
    pub shared_data: crate::config::SharedData,
}
