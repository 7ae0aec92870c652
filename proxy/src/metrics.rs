//! The proxy's metrics (routes, upstreams, connections, shared data in Redis, reloads), in
//! the process registry the plugin host keeps (the plugins' metrics are there too), and the
//! handles the request path uses.
//!
//! Metrics live for the whole process (not per config), so counters keep counting across
//! reloads. Handles with fixed labels are resolved once when a route or pool is built, never on
//! the request path.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

pub use sluice_host::metrics::Metrics as PluginMetrics;

/// Route label used when no route matched.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// The proxy's metrics.
pub struct Metrics {
    /// `sluice_requests_total{route,code}`.
    pub requests_total: IntCounterVec,
    /// `sluice_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `sluice_upstream_requests_total{upstream,endpoint,result}`.
    pub upstream_requests_total: IntCounterVec,
    /// `sluice_upstream_healthy{upstream,endpoint}`.
    pub upstream_healthy: IntGaugeVec,
    /// `sluice_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `sluice_connections_refused_total{listener}`.
    pub connections_refused: IntCounterVec,
    /// `sluice_client_errors_total{listener, kind}` (`header_timeout`, `not_http`).
    pub client_errors: IntCounterVec,
    /// `sluice_shared_data_redis_up`.
    pub shared_data_redis_up: IntGauge,
    /// `sluice_shared_data_errors_total{op}`.
    pub shared_data_errors: IntCounterVec,
    /// `sluice_shared_data_duration_seconds{op}`.
    pub shared_data_duration: HistogramVec,
    /// `sluice_config_version`.
    pub config_version: IntGauge,
    /// `sluice_config_reloads_total{result}` (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// `sluice_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: IntGauge,
    /// `sluice_config_reload_duration_seconds`.
    pub config_reload_duration: Histogram,
}

fn build() -> Metrics {
    let requests_total = IntCounterVec::new(
        Opts::new(
            "sluice_requests_total",
            "Requests answered, by route and status code.",
        ),
        &["route", "code"],
    )
    .expect("valid metric");
    let request_duration = HistogramVec::new(
        HistogramOpts::new(
            "sluice_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        &["route"],
    )
    .expect("valid metric");
    let upstream_requests_total = IntCounterVec::new(
        Opts::new(
            "sluice_upstream_requests_total",
            "Attempts to send a request to an upstream endpoint, by result \
             (success, connect_error, timeout, error).",
        ),
        &["upstream", "endpoint", "result"],
    )
    .expect("valid metric");
    let upstream_healthy = IntGaugeVec::new(
        Opts::new(
            "sluice_upstream_healthy",
            "1 if the endpoint passes its health checks (or has none), else 0.",
        ),
        &["upstream", "endpoint"],
    )
    .expect("valid metric");
    let in_flight = IntGauge::new(
        "sluice_requests_in_flight",
        "Requests being served right now.",
    )
    .expect("valid metric");
    let connections_refused = IntCounterVec::new(
        Opts::new(
            "sluice_connections_refused_total",
            "Connections closed on arrival because the listener had max_connections open.",
        ),
        &["listener"],
    )
    .expect("valid metric");
    let client_errors = IntCounterVec::new(
        Opts::new(
            "sluice_client_errors_total",
            "Connections ended before a request was read: kind=header_timeout (the request head \
             did not arrive within request_header_timeout_ms; answered 408), kind=not_http (the \
             first line was not an HTTP request line; answered 400).",
        ),
        &["listener", "kind"],
    )
    .expect("valid metric");
    let shared_data_redis_up = IntGauge::new(
        "sluice_shared_data_redis_up",
        "1 while the Redis holding shared data answers (or has not been used yet), 0 while it \
         is unreachable; absent with the in-process backend.",
    )
    .expect("valid metric");
    let shared_data_errors = IntCounterVec::new(
        Opts::new(
            "sluice_shared_data_errors_total",
            "Shared-data calls (op=get|set) that Redis did not answer or refused; each fails the \
             plugin's request phase under its on_error policy.",
        ),
        &["op"],
    )
    .expect("valid metric");
    let shared_data_duration = HistogramVec::new(
        HistogramOpts::new(
            "sluice_shared_data_duration_seconds",
            "Time a shared-data call (op=get|set) waited for Redis.",
        )
        .buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
        ]),
        &["op"],
    )
    .expect("valid metric");
    let config_version = IntGauge::new(
        "sluice_config_version",
        "Version number of the configuration being served (1 for the first).",
    )
    .expect("valid metric");
    let config_reloads = IntCounterVec::new(
        Opts::new(
            "sluice_config_reloads_total",
            "Configuration reloads, by result: ok (the new config serves) or error (the old \
             one keeps serving).",
        ),
        &["result"],
    )
    .expect("valid metric");
    let config_last_success = IntGauge::new(
        "sluice_config_last_reload_success_timestamp_seconds",
        "Unix time when the configuration being served was published (start-up or reload).",
    )
    .expect("valid metric");
    let config_reload_duration = Histogram::with_opts(
        HistogramOpts::new(
            "sluice_config_reload_duration_seconds",
            "Time from a reload's trigger to the new configuration serving (or its refusal).",
        )
        .buckets(vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]),
    )
    .expect("valid metric");
    let host = plugins();
    for c in [
        Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(request_duration.clone()),
        Box::new(upstream_requests_total.clone()),
        Box::new(upstream_healthy.clone()),
        Box::new(in_flight.clone()),
        Box::new(connections_refused.clone()),
        Box::new(client_errors.clone()),
        Box::new(shared_data_errors.clone()),
        Box::new(shared_data_duration.clone()),
        Box::new(config_version.clone()),
        Box::new(config_reloads.clone()),
        Box::new(config_last_success.clone()),
        Box::new(config_reload_duration.clone()),
    ] {
        host.register(c).expect("metric names are unique");
    }
    Metrics {
        requests_total,
        request_duration,
        upstream_requests_total,
        upstream_healthy,
        in_flight,
        connections_refused,
        client_errors,
        shared_data_redis_up,
        shared_data_errors,
        shared_data_duration,
        config_version,
        config_reloads,
        config_last_success,
        config_reload_duration,
    }
}

/// The process-wide proxy metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(build)
}

/// The plugins' metrics and the registry (see [`PluginMetrics`]).
pub fn plugins() -> &'static PluginMetrics {
    sluice_host::metrics::metrics()
}

impl Metrics {
    /// Registers a collector created later (the Redis store's gauge).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        plugins().register(c)
    }

    /// The Prometheus text exposition of every metric, the plugins' included.
    pub fn render(&self) -> Vec<u8> {
        plugins().render()
    }

    /// Sum of `sluice_plugin_errors_total` of one version of a plugin, by kind.
    pub fn plugin_errors_by_kind(
        &self,
        plugin: &str,
        version: crate::wasm::settings::Version,
    ) -> std::collections::BTreeMap<String, u64> {
        plugins().plugin_errors_by_kind(plugin, version.as_str())
    }
}

/// Per-route handles: the duration histogram and one counter per status code, created on
/// first use so the exposition only lists codes that happened.
pub struct RouteMetrics {
    route: String,
    duration: Histogram,
    codes: Box<[OnceLock<IntCounter>]>,
}

const FIRST_CODE: u16 = 100;
const LAST_CODE: u16 = 599;

impl RouteMetrics {
    /// Handles for `route`.
    pub fn new(route: &str) -> Self {
        let m = metrics();
        RouteMetrics {
            route: route.to_string(),
            duration: m.request_duration.with_label_values(&[route]),
            codes: (FIRST_CODE..=LAST_CODE).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, code: u16, seconds: f64) {
        self.duration.observe(seconds);
        match self.codes.get(code.wrapping_sub(FIRST_CODE) as usize) {
            Some(slot) => slot
                .get_or_init(|| {
                    metrics()
                        .requests_total
                        .with_label_values(&[self.route.as_str(), &code.to_string()])
                })
                .inc(),
            None => metrics()
                .requests_total
                .with_label_values(&[self.route.as_str(), &code.to_string()])
                .inc(),
        }
    }
}

/// Result of one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    /// A response header arrived.
    Success,
    /// The connection (or TLS handshake) failed.
    ConnectError,
    /// Connecting or reading timed out.
    Timeout,
    /// Anything else after connecting (reset, malformed response).
    Error,
}

/// Per-endpoint handles.
pub struct EndpointMetrics {
    results: [IntCounter; 4],
    /// `sluice_upstream_healthy` of this endpoint.
    pub healthy: IntGauge,
}

impl EndpointMetrics {
    /// Handles for one endpoint of one upstream.
    pub fn new(upstream: &str, endpoint: &str) -> Self {
        let m = metrics();
        let r = |result| {
            m.upstream_requests_total
                .with_label_values(&[upstream, endpoint, result])
        };
        EndpointMetrics {
            results: [r("success"), r("connect_error"), r("timeout"), r("error")],
            healthy: m.upstream_healthy.with_label_values(&[upstream, endpoint]),
        }
    }

    /// Counts one attempt.
    pub fn count(&self, result: UpstreamResult) {
        self.results[result as usize].inc();
    }
}
