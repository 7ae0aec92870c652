//! Counters, gauges and histograms the host exports (on Sluice: `/metrics`, as
//! `sluice_plugin_<name>{plugin="…"}`). Define them in [`crate::Plugin::new`]; defining a name
//! again (another VM, a reload) gives the same metric.

use sluice_abi::MetricType;

use crate::error::{Context, Error};
use crate::hostcalls;

/// A counter: only goes up.
#[derive(Debug, Clone, Copy)]
pub struct Counter(u32);

/// A gauge: set, or moved up and down.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(u32);

/// A histogram: records values.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(u32);

fn define(kind: MetricType, name: &str) -> Result<u32, Error> {
    hostcalls::define_metric(kind, name).during("define a metric")
}

impl Counter {
    /// Defines (or finds) counter `name`.
    pub fn new(name: &str) -> Result<Counter, Error> {
        define(MetricType::Counter, name).map(Counter)
    }

    /// Adds 1.
    pub fn inc(&self) -> Result<(), Error> {
        self.add(1)
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) -> Result<(), Error> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        hostcalls::increment_metric(self.0, n).during("increment a counter")
    }

    /// The current value.
    pub fn value(&self) -> Result<u64, Error> {
        hostcalls::get_metric(self.0).during("read a counter")
    }
}

impl Gauge {
    /// Defines (or finds) gauge `name`.
    pub fn new(name: &str) -> Result<Gauge, Error> {
        define(MetricType::Gauge, name).map(Gauge)
    }

    /// Sets the value.
    pub fn set(&self, value: u64) -> Result<(), Error> {
        hostcalls::record_metric(self.0, value).during("set a gauge")
    }

    /// Moves the value by `delta`.
    pub fn add(&self, delta: i64) -> Result<(), Error> {
        hostcalls::increment_metric(self.0, delta).during("move a gauge")
    }

    /// The current value.
    pub fn value(&self) -> Result<u64, Error> {
        hostcalls::get_metric(self.0).during("read a gauge")
    }
}

impl Histogram {
    /// Defines (or finds) histogram `name`.
    pub fn new(name: &str) -> Result<Histogram, Error> {
        define(MetricType::Histogram, name).map(Histogram)
    }

    /// Records a value.
    pub fn record(&self, value: u64) -> Result<(), Error> {
        hostcalls::record_metric(self.0, value).during("record a histogram value")
    }
}
