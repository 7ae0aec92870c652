//! A plugin's settings as the host uses them, built from its validated config entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::sanitize::Sanitizer;
use super::shared::SharedStore;
use super::target::CalloutTarget;

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

/// Which version of a plugin under rollout a [`Plugin`](super::plugin::Plugin) is: the
/// `version` label of every plugin metric series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Version {
    /// The version that serves requests (every plugin without a rollout).
    #[default]
    Stable,
    /// The `rollout.candidate` of a plugin.
    Candidate,
}

impl Version {
    /// `stable` or `candidate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Candidate => "candidate",
        }
    }
}

/// Everything about a plugin except its code.
pub struct PluginSettings {
    /// Its name in the config.
    pub name: String,
    /// Stable, or the candidate of a rollout (same name, own VMs and metric series).
    pub version: Version,
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
    pub callout_targets: HashMap<String, Arc<dyn CalloutTarget>>,
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
    /// Where its shared data lives: a store shared by replicas, or (`None`) the process.
    pub shared_store: Option<Arc<dyn SharedStore>>,
}

/// `limits:` of a plugin as written (the config file, the test kit's options file).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Fuel per guest call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per guest call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Linear memory cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Body buffering cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// How long a paused request may wait for the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_timeout_ms: Option<u64>,
    /// HTTP callouts per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_callouts: Option<u32>,
}

/// Encodes a `config`/`vm_config` value: a string as is, anything else as JSON.
pub fn encode_config(v: &Option<serde_yaml::Value>) -> Result<Vec<u8>, String> {
    match v {
        None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
        Some(serde_yaml::Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(other) => {
            serde_json::to_vec(other).map_err(|e| format!("cannot be encoded as JSON: {e}"))
        }
    }
}

/// A limit outside its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    /// The field (`{plugin_field}.limits.NAME`).
    pub field: String,
    /// Why.
    pub message: String,
}

impl LimitsFile {
    /// The limits, the defaults where none is given; each value out of range is added to
    /// `errors` (and the value kept).
    pub fn validate(self, plugin_field: &str, errors: &mut Vec<LimitError>) -> Limits {
        let mut check = |name: &str, v: Option<u64>, default: u64, min: u64, max: u64| -> u64 {
            let v = v.unwrap_or(default);
            if v < min || v > max {
                errors.push(LimitError {
                    field: format!("{plugin_field}.limits.{name}"),
                    message: format!("{v} is outside {min}..={max}"),
                });
            }
            v
        };
        let fuel = check("fuel", self.fuel, DEFAULT_FUEL, 10_000, u64::MAX / 2);
        let timeout_ms = check("timeout_ms", self.timeout_ms, DEFAULT_TIMEOUT_MS, 1, 60_000);
        let memory_mb = check("memory_mb", self.memory_mb, DEFAULT_MEMORY_MB, 1, 4096);
        let max_body = check(
            "max_body_bytes",
            self.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            0,
            1 << 30,
        );
        let pause = check(
            "pause_timeout_ms",
            self.pause_timeout_ms,
            DEFAULT_PAUSE_TIMEOUT_MS,
            1,
            3_600_000,
        );
        let callouts = check(
            "max_callouts",
            self.max_callouts.map(u64::from),
            DEFAULT_MAX_CALLOUTS.into(),
            0,
            10_000,
        );
        Limits {
            fuel,
            timeout: std::time::Duration::from_millis(timeout_ms),
            memory_bytes: (memory_mb << 20) as usize,
            max_body_bytes: max_body as usize,
            pause_timeout: std::time::Duration::from_millis(pause),
            max_callouts: callouts as u32,
        }
    }
}
