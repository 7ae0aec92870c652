//! Mode `metrics`: counter, gauge and histogram defined in `on_configure`, used per request.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MetricType};

use crate::config::Settings;
use crate::util;

pub const COUNTER_NAME: &str = "sdk_requests";
pub const GAUGE_NAME: &str = "sdk_gauge";
pub const HISTOGRAM_NAME: &str = "sdk_values";

pub struct Metrics {
    settings: Rc<Settings>,
}

impl Metrics {
    pub fn new(settings: Rc<Settings>) -> Metrics {
        Metrics { settings }
    }
}

impl Context for Metrics {}

impl HttpContext for Metrics {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(ids) = self.settings.metrics else {
            // Unreachable: on_configure fails in this mode when it cannot define the metrics.
            self.add_http_request_header("x-sdk-error", "metrics not defined");
            return Action::Continue;
        };
        if let Err(status) = hostcalls::increment_metric(ids.counter, 1) {
            util::add_error(self, "increment_metric", status);
        }
        if let Err(status) = hostcalls::record_metric(ids.gauge, 7) {
            util::add_error(self, "record_metric(gauge)", status);
        }
        if let Err(status) = hostcalls::record_metric(ids.histogram, 42) {
            util::add_error(self, "record_metric(histogram)", status);
        }
        match hostcalls::define_metric(MetricType::Counter, COUNTER_NAME) {
            Ok(id) => {
                let same = if id == ids.counter { "true" } else { "false" };
                self.add_http_request_header("x-metric-same-id", same);
            }
            Err(status) => util::add_error(self, "define_metric", status),
        }
        match hostcalls::get_metric(ids.counter) {
            Ok(count) => self.add_http_request_header("x-metric-count", &count.to_string()),
            Err(status) => util::add_error(self, "get_metric", status),
        }
        Action::Continue
    }
}
