//! Metrics plugins define (`proxy_define_metric`), exported as `sluice_plugin_<name>` with a
//! `plugin` label.
//!
//! Definitions are process-wide and keyed by plugin and metric name, so defining the same name
//! twice (from another VM of the plugin, or after a reload) returns the same id and the value
//! keeps counting.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use sluice_abi::{MetricType, Status};

use super::settings::Version;

/// Longest metric name a plugin may define.
pub const MAX_NAME_BYTES: u32 = 200;
/// Most metrics one plugin may define.
pub const MAX_PER_PLUGIN: usize = 1000;

#[derive(Clone)]
enum Handle {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

#[derive(Clone)]
enum Family {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

#[derive(Default)]
struct Registry {
    ids: HashMap<(String, Version, String), u32>,
    families: HashMap<String, Family>,
    per_plugin: HashMap<(String, Version), usize>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// A defined metric: its type, handle and owner (plugin name and version).
type Entry = (MetricType, Handle, String, Version);

/// Handles by id (index + 1), read on every record.
fn handles() -> &'static RwLock<Vec<Entry>> {
    static H: OnceLock<RwLock<Vec<Entry>>> = OnceLock::new();
    H.get_or_init(Default::default)
}

/// The Prometheus name for a plugin's metric name: `sluice_plugin_` + the name with every
/// character outside `[A-Za-z0-9_]` replaced by `_`.
pub fn export_name(name: &str) -> String {
    let mut out = String::from("sluice_plugin_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// Defines (or finds) metric `name` of `plugin` (one version of it); returns its id.
pub fn define(plugin: &str, version: Version, kind: MetricType, name: &str) -> Result<u32, Status> {
    if name.is_empty() {
        return Err(Status::BadArgument);
    }
    let mut reg = registry().lock().expect("not poisoned");
    let key = (plugin.to_string(), version, name.to_string());
    if let Some(&id) = reg.ids.get(&key) {
        let same = handles().read().expect("not poisoned")[id as usize - 1].0 == kind;
        return if same {
            Ok(id)
        } else {
            Err(Status::BadArgument)
        };
    }
    let owner = (plugin.to_string(), version);
    if reg.per_plugin.get(&owner).copied().unwrap_or(0) >= MAX_PER_PLUGIN {
        return Err(Status::BadArgument);
    }
    let export = export_name(name);
    let help = format!("Metric {name:?} defined by plugins.");
    let family = match reg.families.get(&export) {
        Some(f) => f.clone(),
        None => {
            let f = match kind {
                MetricType::Counter => Family::Counter(
                    IntCounterVec::new(Opts::new(&export, &help), &["plugin", "version"])
                        .map_err(|_| Status::BadArgument)?,
                ),
                MetricType::Gauge => Family::Gauge(
                    IntGaugeVec::new(Opts::new(&export, &help), &["plugin", "version"])
                        .map_err(|_| Status::BadArgument)?,
                ),
                MetricType::Histogram => Family::Histogram(
                    HistogramVec::new(HistogramOpts::new(&export, &help), &["plugin", "version"])
                        .map_err(|_| Status::BadArgument)?,
                ),
            };
            let collector: Box<dyn prometheus::core::Collector> = match &f {
                Family::Counter(c) => Box::new(c.clone()),
                Family::Gauge(g) => Box::new(g.clone()),
                Family::Histogram(h) => Box::new(h.clone()),
            };
            // A clash with one of Sluice's own names is refused.
            crate::metrics::metrics()
                .register(collector)
                .map_err(|_| Status::BadArgument)?;
            reg.families.insert(export.clone(), f.clone());
            f
        }
    };
    let labels = [plugin, version.as_str()];
    let handle = match (&family, kind) {
        (Family::Counter(c), MetricType::Counter) => Handle::Counter(c.with_label_values(&labels)),
        (Family::Gauge(g), MetricType::Gauge) => Handle::Gauge(g.with_label_values(&labels)),
        (Family::Histogram(h), MetricType::Histogram) => {
            Handle::Histogram(h.with_label_values(&labels))
        }
        // Another plugin defined this name with another type.
        _ => return Err(Status::BadArgument),
    };
    let mut hs = handles().write().expect("not poisoned");
    hs.push((kind, handle, plugin.to_string(), version));
    let id = hs.len() as u32;
    reg.ids.insert(key, id);
    *reg.per_plugin.entry(owner).or_default() += 1;
    Ok(id)
}

fn with<R>(
    (plugin, version): (&str, Version),
    id: u32,
    f: impl FnOnce(&Handle) -> Result<R, Status>,
) -> Result<R, Status> {
    let hs = handles().read().expect("not poisoned");
    match hs.get((id as usize).wrapping_sub(1)) {
        // A plugin may only touch the metrics it defined.
        Some((_, h, owner, v)) if owner == plugin && *v == version => f(h),
        _ => Err(Status::NotFound),
    }
}

/// `proxy_increment_metric`.
pub fn increment(plugin: (&str, Version), id: u32, delta: i64) -> Status {
    to_status(with(plugin, id, |h| match h {
        Handle::Counter(c) if delta >= 0 => {
            c.inc_by(delta as u64);
            Ok(())
        }
        Handle::Gauge(g) => {
            g.add(delta);
            Ok(())
        }
        _ => Err(Status::BadArgument),
    }))
}

/// `proxy_record_metric`.
pub fn record(plugin: (&str, Version), id: u32, value: u64) -> Status {
    to_status(with(plugin, id, |h| match h {
        Handle::Counter(c) => {
            let now = c.get();
            if value < now {
                return Err(Status::BadArgument);
            }
            c.inc_by(value - now);
            Ok(())
        }
        Handle::Gauge(g) => {
            g.set(value as i64);
            Ok(())
        }
        Handle::Histogram(h) => {
            h.observe(value as f64);
            Ok(())
        }
    }))
}

/// `proxy_get_metric`.
pub fn get(plugin: (&str, Version), id: u32) -> Result<u64, Status> {
    with(plugin, id, |h| match h {
        Handle::Counter(c) => Ok(c.get()),
        Handle::Gauge(g) => Ok(g.get() as u64),
        Handle::Histogram(_) => Err(Status::BadArgument),
    })
}

/// The value of metric `name` defined by `plugin`: a counter's or gauge's value, a
/// histogram's sample count; `None` if the plugin defined no such metric.
pub fn value(plugin: &str, version: Version, name: &str) -> Option<i64> {
    let id = *registry().lock().expect("not poisoned").ids.get(&(
        plugin.to_string(),
        version,
        name.to_string(),
    ))?;
    let hs = handles().read().expect("not poisoned");
    Some(match &hs.get(id as usize - 1)?.1 {
        Handle::Counter(c) => c.get() as i64,
        Handle::Gauge(g) => g.get(),
        Handle::Histogram(h) => h.get_sample_count() as i64,
    })
}

fn to_status(r: Result<(), Status>) -> Status {
    r.err().unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Version = Version::Stable;

    #[test]
    fn define_twice_same_id_and_values() {
        let c = define("gm-test", S, MetricType::Counter, "gm.requests").unwrap();
        assert_eq!(
            define("gm-test", S, MetricType::Counter, "gm.requests").unwrap(),
            c
        );
        assert_eq!(
            define("gm-test", S, MetricType::Gauge, "gm.requests"),
            Err(Status::BadArgument),
            "same name, other type"
        );
        let ids = ("gm-test", S);
        assert_eq!(increment(ids, c, 2), Status::Ok);
        assert_eq!(increment(ids, c, -1), Status::BadArgument);
        assert_eq!(get(ids, c), Ok(2));
        assert_eq!(record(ids, c, 5), Status::Ok);
        assert_eq!(get(ids, c), Ok(5));
        assert_eq!(
            get(("other", S), c),
            Err(Status::NotFound),
            "not this plugin's id"
        );
        let g = define("gm-test", S, MetricType::Gauge, "gm_gauge").unwrap();
        assert_eq!(record(ids, g, 9), Status::Ok);
        assert_eq!(increment(ids, g, -4), Status::Ok);
        assert_eq!(get(ids, g), Ok(5));
        let text = String::from_utf8(crate::metrics::metrics().render()).unwrap();
        assert!(
            text.contains("sluice_plugin_gm_requests{plugin=\"gm-test\",version=\"stable\"} 5"),
            "{text}"
        );
        // The candidate of a rollout has its own series and ids under the same name.
        let cand = define(
            "gm-test",
            Version::Candidate,
            MetricType::Counter,
            "gm.requests",
        )
        .unwrap();
        assert_ne!(cand, c);
        assert_eq!(get(("gm-test", S), cand), Err(Status::NotFound));
        assert_eq!(
            increment(("gm-test", Version::Candidate), cand, 3),
            Status::Ok
        );
        let text = String::from_utf8(crate::metrics::metrics().render()).unwrap();
        assert!(
            text.contains("sluice_plugin_gm_requests{plugin=\"gm-test\",version=\"candidate\"} 3"),
            "{text}"
        );
        assert_eq!(export_name("a.b-c"), "sluice_plugin_a_b_c");
        assert_eq!(
            define("gm-test", S, MetricType::Counter, ""),
            Err(Status::BadArgument)
        );
    }
}
