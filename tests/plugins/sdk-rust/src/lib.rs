//! Sluice test plugin built with the public Rust Proxy-Wasm SDK (`proxy-wasm` 0.2.5).
//!
//! It exists to prove that the Sluice host runs unmodified public-SDK plugins. One module
//! serves every test: the plugin configuration's `mode` picks the behaviour (see
//! `tests/plugins/README.md`, which is the contract the integration tests rely on).

mod config;
mod modes;
mod raw;
mod util;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};

use config::{Mode, Phase, Settings};

/// Period of the timer armed by the `tick` mode and by `panic` with `phase: tick`.
const TICK_PERIOD: Duration = Duration::from_millis(10);

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs panic messages at level critical.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(Root::default())
    });
}}

/// The plugin's root context: parses the configuration and creates one HTTP context per
/// request for the configured mode.
#[derive(Default)]
struct Root {
    settings: Option<Rc<Settings>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        match self.get_vm_configuration().as_deref() {
            Some(b"fail") => false,
            Some(b"panic") => panic!("sdk-test panic in vm_start"),
            _ => true,
        }
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.settings = None;
        let mut settings = match Settings::parse(self.get_plugin_configuration().as_deref()) {
            Ok(settings) => settings,
            Err(message) => {
                util::log(
                    LogLevel::Error,
                    &format!("sdk-test: bad configuration: {message}"),
                );
                return false;
            }
        };
        match settings.mode {
            Mode::ConfigureFalse => return false,
            Mode::Panic(Phase::Configure) => panic!("sdk-test panic in configure"),
            Mode::Loop(Phase::Configure) => util::spin_forever(),
            Mode::Tick | Mode::Panic(Phase::Tick) => self.set_tick_period(TICK_PERIOD),
            Mode::Metrics => match define_metrics() {
                Ok(ids) => settings.metrics = Some(ids),
                Err(message) => {
                    util::log(LogLevel::Error, &format!("sdk-test: {message}"));
                    return false;
                }
            },
            _ => {}
        }
        self.settings = Some(Rc::new(settings));
        true
    }

    fn on_tick(&mut self) {
        let Some(settings) = &self.settings else {
            return;
        };
        match settings.mode {
            Mode::Panic(Phase::Tick) => panic!("sdk-test panic in tick"),
            Mode::Tick => {
                if let Err(message) = util::cas_increment(self, modes::shared::TICKS_KEY) {
                    util::log(LogLevel::Error, &format!("sdk-test: tick: {message}"));
                }
            }
            _ => {}
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(modes::new_http_context(self.settings.clone()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Defines the `metrics` mode's three metrics and returns their ids.
fn define_metrics() -> Result<config::MetricIds, String> {
    let define = |kind: MetricType, name: &str| {
        hostcalls::define_metric(kind, name)
            .map_err(|status| format!("define_metric({name}): {status:?}"))
    };
    Ok(config::MetricIds {
        counter: define(MetricType::Counter, modes::metrics::COUNTER_NAME)?,
        gauge: define(MetricType::Gauge, modes::metrics::GAUGE_NAME)?,
        histogram: define(MetricType::Histogram, modes::metrics::HISTOGRAM_NAME)?,
    })
}
