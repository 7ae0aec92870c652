//! `engine:` — the wasm engine's instance pool, fixed while the process runs.
//!
//! With the pooling allocator (the default) every VM takes one instance slot, reserved up front
//! (address space, not memory): instantiation then costs microseconds. A reload needs room for
//! the old and the new VMs of the plugins it changes at the same time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
pub use crate::wasm::settings::VmStart;

/// Most instance slots `engine.instance_slots` may ask for.
pub const MAX_INSTANCE_SLOTS: u32 = 100_000;
/// The least instance slots the default gives.
pub const MIN_DEFAULT_SLOTS: usize = 256;

/// `engine:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineFile {
    /// Instance slots of the pooling allocator (default: twice the VMs the config starts plus
    /// 16, at least 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_slots: Option<u32>,
    /// `pooling` (default) or `on_demand` (no slot limit; each instantiation maps its memory
    /// itself, which is slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// When a plugin's VMs start: `on_first_use` (default: the first at load, each other one
    /// when a worker thread first needs it) or `on_load` (all at load). Reloadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_start: Option<VmStartMode>,
    /// Seconds without a request after which a VM started on use is stopped again (default
    /// 300; 0 = never). A plugin's first VM always stays. Reloadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_idle_seconds: Option<u64>,
}

/// `engine.vm_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmStartMode {
    /// Every VM at load.
    OnLoad,
    /// The first VM at load, the others on first use.
    OnFirstUse,
}

/// Default of `engine.vm_idle_seconds`.
pub const DEFAULT_VM_IDLE_SECONDS: u64 = 300;
/// Most `engine.vm_idle_seconds` may be (a week).
pub const MAX_VM_IDLE_SECONDS: u64 = 7 * 24 * 3600;

/// How VMs get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// Slots reserved up front; instantiation in microseconds.
    Pooling,
    /// Memory mapped for each instantiation; no limit on the number of VMs.
    OnDemand,
}

/// Validated `engine:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Explicit instance slots (`None`: sized from the config, see [`EngineSettings::slots`]).
    pub instance_slots: Option<u32>,
    /// Whether the pooling allocator is used.
    pub on_demand: bool,
    /// When VMs start and stop (`vm_start`, `vm_idle_seconds`).
    pub vm_start: VmStart,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            instance_slots: None,
            on_demand: false,
            vm_start: VmStart {
                all_at_load: false,
                idle: Some(Duration::from_secs(DEFAULT_VM_IDLE_SECONDS)),
            },
        }
    }
}

impl EngineSettings {
    /// The slots to reserve for a config that starts `vms` VMs.
    pub fn slots(&self, vms: usize) -> u32 {
        match self.instance_slots {
            Some(n) => n,
            None => vms
                .saturating_mul(2)
                .saturating_add(16)
                .clamp(MIN_DEFAULT_SLOTS, MAX_INSTANCE_SLOTS as usize) as u32,
        }
    }
}

impl EngineFile {
    /// Checks the section; errors name the field.
    pub fn validate(&self, errors: &mut Vec<ConfigError>) -> EngineSettings {
        if let Some(n) = self.instance_slots {
            if n == 0 || n > MAX_INSTANCE_SLOTS {
                errors.push(ConfigError::invalid(
                    "engine.instance_slots",
                    format!("{n} is out of range (1–{MAX_INSTANCE_SLOTS})"),
                ));
            }
        }
        let on_demand = self.allocation == Some(Allocation::OnDemand);
        if on_demand && self.instance_slots.is_some() {
            errors.push(ConfigError::invalid(
                "engine.instance_slots",
                "only the pooling allocation has instance slots (allocation is on_demand)",
            ));
        }
        let idle = self.vm_idle_seconds.unwrap_or(DEFAULT_VM_IDLE_SECONDS);
        if idle > MAX_VM_IDLE_SECONDS {
            errors.push(ConfigError::invalid(
                "engine.vm_idle_seconds",
                format!("{idle} is over the limit of {MAX_VM_IDLE_SECONDS} (0 = never stop)"),
            ));
        }
        EngineSettings {
            instance_slots: self.instance_slots,
            on_demand,
            vm_start: VmStart {
                all_at_load: self.vm_start == Some(VmStartMode::OnLoad),
                idle: (idle > 0).then(|| Duration::from_secs(idle)),
            },
        }
    }

    /// The settings fixed while the process runs (the pool), for the reload check.
    pub fn pool_settings(&self) -> (Option<u32>, Option<Allocation>) {
        (self.instance_slots, self.allocation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_slots_grow_with_the_config() {
        let auto = EngineSettings::default();
        assert_eq!(auto.slots(2), 256);
        assert_eq!(auto.slots(1000), 2016);
        assert_eq!(auto.slots(usize::MAX), MAX_INSTANCE_SLOTS);
        let fixed = EngineSettings {
            instance_slots: Some(64),
            ..EngineSettings::default()
        };
        assert_eq!(fixed.slots(1000), 64);
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut errors = Vec::new();
        EngineFile {
            instance_slots: Some(0),
            ..EngineFile::default()
        }
        .validate(&mut errors);
        EngineFile {
            instance_slots: Some(10),
            allocation: Some(Allocation::OnDemand),
            ..EngineFile::default()
        }
        .validate(&mut errors);
        EngineFile {
            vm_idle_seconds: Some(MAX_VM_IDLE_SECONDS + 1),
            ..EngineFile::default()
        }
        .validate(&mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("engine.instance_slots: 0 is out of range"),
            "{text:?}"
        );
        assert!(text[1].contains("on_demand"), "{text:?}");
        assert!(
            text[2].starts_with("engine.vm_idle_seconds: 604801 is over the limit"),
            "{text:?}"
        );
    }

    #[test]
    fn vms_start_on_first_use_and_stop_when_idle_by_default() {
        let mut errors = Vec::new();
        let s = EngineFile::default().validate(&mut errors);
        assert!(errors.is_empty());
        assert!(!s.vm_start.all_at_load);
        assert_eq!(s.vm_start.idle, Some(Duration::from_secs(300)));
        let s = EngineFile {
            vm_start: Some(VmStartMode::OnLoad),
            vm_idle_seconds: Some(0),
            ..EngineFile::default()
        }
        .validate(&mut errors);
        assert!(errors.is_empty());
        assert!(s.vm_start.all_at_load);
        assert_eq!(s.vm_start.idle, None);
    }
}
