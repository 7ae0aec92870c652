//! Per-phase metric handles of a plugin and what it spent in each phase.

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter, IntGauge};

use super::*;

/// Per-phase metric handles of a plugin. A phase's series are made when the plugin is first
/// called in it, so `/metrics` shows none for phases a plugin never runs.
pub struct PhaseMetrics {
    plugin: String,
    version: Version,
    phases: [OnceLock<PhaseHandles>; Phase::ALL.len()],
    /// `sluice_plugin_contexts` of the plugin.
    pub(super) contexts: IntGauge,
    /// `sluice_plugin_requests_total` of the plugin.
    pub(super) requests: IntCounter,
}

/// The series of one phase of a plugin.
pub(super) struct PhaseHandles {
    /// `sluice_plugin_calls_total`.
    pub(super) calls: IntCounter,
    /// `sluice_plugin_call_duration_seconds`.
    pub(super) duration: Histogram,
    /// `sluice_plugin_fuel_consumed_total`.
    pub(super) fuel: IntCounter,
}

/// What a plugin spent in one phase, since the process started (all versions of the plugin
/// under its name).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseCost {
    /// The phase.
    pub phase: Phase,
    /// Guest calls.
    pub calls: u64,
    /// Time in the guest, seconds.
    pub seconds: f64,
    /// Fuel consumed.
    pub fuel: u64,
}

impl PhaseMetrics {
    /// Handles for `plugin`.
    pub fn new(plugin: &str, version: Version) -> PhaseMetrics {
        let m = crate::metrics::metrics();
        let labels = [plugin, version.as_str()];
        PhaseMetrics {
            plugin: plugin.to_string(),
            version,
            phases: Default::default(),
            contexts: m.plugin_contexts.with_label_values(&labels),
            requests: m.plugin_requests.with_label_values(&labels),
        }
    }

    /// The series of `phase` (made on first use).
    pub(super) fn phase(&self, phase: Phase) -> &PhaseHandles {
        self.phases[phase as usize].get_or_init(|| {
            let m = crate::metrics::metrics();
            let labels = [self.plugin.as_str(), self.version.as_str(), phase.as_str()];
            PhaseHandles {
                calls: m.plugin_calls.with_label_values(&labels),
                duration: m.plugin_call_duration.with_label_values(&labels),
                fuel: m.plugin_fuel.with_label_values(&labels),
            }
        })
    }

    /// Requests served (stream contexts created) since the process started.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// The cost of each phase that was called.
    pub fn costs(&self) -> Vec<PhaseCost> {
        Phase::ALL
            .iter()
            .filter_map(|&phase| {
                let h = self.phases[phase as usize].get()?;
                Some(PhaseCost {
                    phase,
                    calls: h.calls.get(),
                    seconds: h.duration.get_sample_sum(),
                    fuel: h.fuel.get(),
                })
            })
            .filter(|c| c.calls > 0)
            .collect()
    }
}
