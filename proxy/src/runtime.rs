//! The `Runtime` snapshot: everything a request needs, immutable, built once per config.
//!
//! Requests load the current snapshot once, at their start, and keep it to their end, so that a
//! reload (still to come) can build a new `Runtime` off the request path and swap it in while
//! requests in flight finish on the one they began with.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use std::collections::HashMap;

use crate::config::Config;
use crate::router::Router;
use crate::upstream::Pool;
use crate::wasm::plugin::{Plugin, PluginError};

/// One immutable configuration, ready to serve.
pub struct Runtime {
    /// 1 for the first config of the process (reloads, still to come, will count up).
    pub version: u64,
    /// When it was built.
    pub loaded_at: SystemTime,
    /// The validated config it was built from.
    pub config: Config,
    /// Route matching.
    pub router: Router,
    /// Upstream pools, in the order of `config.upstreams`.
    pub pools: Vec<Arc<Pool>>,
    /// Loaded plugins by name.
    pub plugins: HashMap<String, Arc<Plugin>>,
}

impl Runtime {
    /// Builds the pools, loads the plugins (running their start-up) and builds the router.
    /// `threads` is the number of worker threads, the default number of VMs per plugin.
    pub fn build(config: Config, version: u64, threads: usize) -> Result<Runtime, PluginError> {
        let pools: Vec<Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Pool::new(u)))
            .collect();
        let plugins = crate::wasm::load_plugins(
            &config.plugins,
            &pools,
            &config.file.sanitize.extra_headers,
            threads,
        )?;
        let router = Router::new(&config.routes, &pools, &plugins);
        Ok(Runtime {
            version,
            loaded_at: SystemTime::now(),
            config,
            router,
            pools,
            plugins,
        })
    }
}

/// Process-wide state shared by the proxy, the admin API and background tasks.
pub struct State {
    current: ArcSwap<Runtime>,
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl State {
    /// State serving `config` as version 1 (loading its plugins).
    pub fn new(config: Config, threads: usize) -> Result<Arc<State>, PluginError> {
        let runtime = Runtime::build(config, 1, threads)?;
        crate::metrics::metrics().config_version.set(1);
        Ok(Arc::new(State {
            current: ArcSwap::from_pointee(runtime),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }))
    }

    /// The snapshot new requests use.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Whether every listener accepts connections.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Marks the listeners as up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the start of a shutdown.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Requests being served.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// Held by each request while it is served.
pub struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
