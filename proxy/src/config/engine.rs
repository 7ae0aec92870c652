//! `engine:` — the wasm engine's instance pool, fixed while the process runs.
//!
//! With the pooling allocator (the default) every VM takes one instance slot, reserved up front
//! (address space, not memory): instantiation then costs microseconds. A reload needs room for
//! the old and the new VMs of the plugins it changes at the same time.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most instance slots `engine.instance_slots` may ask for.
pub const MAX_INSTANCE_SLOTS: u32 = 100_000;
/// The least instance slots the default gives.
pub const MIN_DEFAULT_SLOTS: usize = 256;

/// `engine:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
}

/// How VMs get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// Slots reserved up front; instantiation in microseconds.
    Pooling,
    /// Memory mapped for each instantiation; no limit on the number of VMs.
    OnDemand,
}

/// Validated `engine:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineSettings {
    /// Explicit instance slots (`None`: sized from the config, see [`EngineSettings::slots`]).
    pub instance_slots: Option<u32>,
    /// Whether the pooling allocator is used.
    pub on_demand: bool,
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
        EngineSettings {
            instance_slots: self.instance_slots,
            on_demand,
        }
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
            on_demand: false,
        };
        assert_eq!(fixed.slots(1000), 64);
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut errors = Vec::new();
        EngineFile {
            instance_slots: Some(0),
            allocation: None,
        }
        .validate(&mut errors);
        EngineFile {
            instance_slots: Some(10),
            allocation: Some(Allocation::OnDemand),
        }
        .validate(&mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("engine.instance_slots: 0 is out of range"),
            "{text:?}"
        );
        assert!(text[1].contains("on_demand"), "{text:?}");
    }
}
