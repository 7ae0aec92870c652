//! The process's Prometheus registry, and the plugins' metrics in it. The proxy registers its
//! own (routes, upstreams, reloads) in the same registry (`sluice-proxy`'s `metrics`), so one
//! exposition shows both.
//!
//! Metrics live for the whole process (not per config), so counters keep counting across
//! reloads.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The plugins' metrics, and the registry every Sluice metric is in.
pub struct Metrics {
    registry: Registry,
    /// `sluice_plugin_calls_total{plugin,version,phase}`.
    pub plugin_calls: IntCounterVec,
    /// `sluice_plugin_call_duration_seconds{plugin,version,phase}`.
    pub plugin_call_duration: HistogramVec,
    /// `sluice_plugin_fuel_consumed_total{plugin,version,phase}`.
    pub plugin_fuel: IntCounterVec,
    /// `sluice_plugin_errors_total{plugin,version,phase,kind}`.
    pub plugin_errors: IntCounterVec,
    /// `sluice_plugin_vms{plugin,version}`.
    pub plugin_vms: IntGaugeVec,
    /// `sluice_plugin_memory_bytes{plugin,version}`.
    pub plugin_memory: IntGaugeVec,
    /// `sluice_plugin_refused_writes_total{plugin,version}`.
    pub plugin_refused_writes: IntCounterVec,
    /// `sluice_plugin_contexts{plugin,version}`: stream contexts alive.
    pub plugin_contexts: IntGaugeVec,
    /// `sluice_plugin_requests_total{plugin,version}`: stream contexts created (requests served).
    pub plugin_requests: IntCounterVec,
    /// `sluice_plugin_rollbacks_total{plugin}`: rollouts rolled back by their failure rate.
    pub plugin_rollbacks: IntCounterVec,
    /// `sluice_plugin_rollout_diff_total{plugin,kind}`: shadow runs whose candidate decided
    /// otherwise, by kind of difference.
    pub rollout_diffs: IntCounterVec,
    /// `sluice_plugin_rollout_shadow_runs_total{plugin,result}`: requests replayed to a
    /// shadow candidate (`same`, `different`) or not (`skipped`).
    pub rollout_shadow_runs: IntCounterVec,
}

fn build() -> Metrics {
    let registry = Registry::new();
    let plugin_calls = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_calls_total",
            "Calls into plugins, by plugin and phase.",
        ),
        &["plugin", "version", "phase"],
    )
    .expect("valid metric");
    let plugin_call_duration = HistogramVec::new(
        HistogramOpts::new(
            "sluice_plugin_call_duration_seconds",
            "Time spent in one call into a plugin, by plugin and phase.",
        )
        .buckets(vec![
            0.000_001,
            0.000_002_5,
            0.000_005,
            0.000_01,
            0.000_025,
            0.000_05,
            0.000_1,
            0.000_25,
            0.000_5,
            0.001,
            0.005,
            0.01,
            0.05,
            0.1,
        ]),
        &["plugin", "version", "phase"],
    )
    .expect("valid metric");
    let plugin_fuel = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_fuel_consumed_total",
            "Fuel (wasm instructions, roughly) plugins consumed, by plugin and phase.",
        ),
        &["plugin", "version", "phase"],
    )
    .expect("valid metric");
    let plugin_errors = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_errors_total",
            "Plugin failures, by plugin, phase and kind (trap, fuel, timeout, memory, abi).",
        ),
        &["plugin", "version", "phase", "kind"],
    )
    .expect("valid metric");
    let plugin_vms = IntGaugeVec::new(
        Opts::new("sluice_plugin_vms", "Healthy VMs of each plugin."),
        &["plugin", "version"],
    )
    .expect("valid metric");
    let plugin_memory = IntGaugeVec::new(
        Opts::new(
            "sluice_plugin_memory_bytes",
            "Linear memory of all VMs of each plugin.",
        ),
        &["plugin", "version"],
    )
    .expect("valid metric");
    let plugin_refused_writes = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_refused_writes_total",
            "Writes to hidden headers that were refused, by plugin.",
        ),
        &["plugin", "version"],
    )
    .expect("valid metric");
    let plugin_contexts = IntGaugeVec::new(
        Opts::new(
            "sluice_plugin_contexts",
            "Request contexts alive in each plugin's VMs.",
        ),
        &["plugin", "version"],
    )
    .expect("valid metric");
    let plugin_requests = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_requests_total",
            "Requests each plugin served (stream contexts created).",
        ),
        &["plugin", "version"],
    )
    .expect("valid metric");
    let plugin_rollbacks = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_rollbacks_total",
            "Rollouts whose candidate was removed by itself (its failure rate over the window).",
        ),
        &["plugin"],
    )
    .expect("valid metric");
    let rollout_diffs = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_rollout_diff_total",
            "Shadow runs whose candidate decided otherwise than stable, by kind (failure, \
             reply, request_headers, request_body, response_headers, response_body).",
        ),
        &["plugin", "kind"],
    )
    .expect("valid metric");
    let rollout_shadow_runs = IntCounterVec::new(
        Opts::new(
            "sluice_plugin_rollout_shadow_runs_total",
            "Requests replayed to a shadow candidate, by result (same, different, skipped).",
        ),
        &["plugin", "result"],
    )
    .expect("valid metric");
    for c in [
        Box::new(plugin_rollbacks.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(rollout_diffs.clone()),
        Box::new(rollout_shadow_runs.clone()),
        Box::new(plugin_requests.clone()),
        Box::new(plugin_calls.clone()),
        Box::new(plugin_call_duration.clone()),
        Box::new(plugin_fuel.clone()),
        Box::new(plugin_errors.clone()),
        Box::new(plugin_vms.clone()),
        Box::new(plugin_memory.clone()),
        Box::new(plugin_refused_writes.clone()),
        Box::new(plugin_contexts.clone()),
    ] {
        registry.register(c).expect("metric names are unique");
    }
    Metrics {
        registry,
        plugin_calls,
        plugin_call_duration,
        plugin_fuel,
        plugin_errors,
        plugin_vms,
        plugin_memory,
        plugin_refused_writes,
        plugin_contexts,
        plugin_requests,
        plugin_rollbacks,
        rollout_diffs,
        rollout_shadow_runs,
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(build)
}

impl Metrics {
    /// Registers a collector created later (metrics plugins define).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// Sum of `sluice_plugin_errors_total` of one version of a plugin, by kind.
    pub fn plugin_errors_by_kind(
        &self,
        plugin: &str,
        version: &str,
    ) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for family in self.registry.gather() {
            if family.name() != "sluice_plugin_errors_total" {
                continue;
            }
            for m in family.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_string())
                };
                if label("plugin").as_deref() == Some(plugin)
                    && label("version").as_deref() == Some(version)
                {
                    if let Some(kind) = label("kind") {
                        *out.entry(kind).or_insert(0) += m.get_counter().get_value() as u64;
                    }
                }
            }
        }
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        out
    }
}
