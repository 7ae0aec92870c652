//! The `Runtime` snapshot — everything a request needs, immutable, built once per config — and
//! the process [`State`] that publishes it and replaces it on a reload.
//!
//! Requests load the current snapshot once, at their start, and keep it to their end. A reload
//! builds a whole new `Runtime` off the request path (parse, validate, fetch and check the
//! plugin binaries, compile, start every VM) and publishes it with one atomic swap only if all
//! of that succeeded; requests in flight finish on the snapshot they began with, and the old
//! plugins' VMs go away (with `on_done`/`on_delete` on their root contexts) when the last of
//! those requests ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigErrors, PluginSpec};
use crate::reload::Mark;
use crate::router::Router;
use crate::source::{Fetched, SourceError};
use crate::upstream::Pool;
use crate::wasm::plugin::{Plugin, PluginError};

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A plugin binary could not be fetched, or failed its checks.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// A plugin did not compile, link or start.
    #[error("{0}")]
    Plugin(#[from] PluginError),
}

/// What `/plugins` reports of a loaded plugin.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// Where the binary came from.
    pub origin: String,
    /// sha256 of the binary, hex.
    pub sha256: String,
    /// Whether the binary came from the local cache of remote sources.
    pub from_cache: bool,
    /// Config version that loaded this instance of the plugin (a reload that leaves the
    /// plugin, its binary and the upstreams it calls unchanged keeps it, VMs and all).
    pub loaded_in: u64,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// How long loading took (compile + every VM's start-up).
    pub load_time: Duration,
    /// Identity used to decide whether a reload can keep the plugin.
    fingerprint: [u8; 32],
}

/// One immutable configuration, ready to serve.
pub struct Runtime {
    /// 1 for the first config of the process, +1 for each successful reload.
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
    /// What was loaded for each plugin, by name.
    pub plugin_info: HashMap<String, PluginInfo>,
}

/// Everything that decides how a plugin behaves, apart from where its binary came from.
fn fingerprint(
    spec: &PluginSpec,
    sha256: &str,
    extra_hidden: &[String],
    pools: &[Arc<Pool>],
) -> [u8; 32] {
    let callout_pools: Vec<usize> = spec
        .allowed_upstreams
        .iter()
        .filter_map(|u| pools.iter().find(|p| &p.name == u))
        .map(|p| Arc::as_ptr(p) as usize)
        .collect();
    let text = format!(
        "{sha256}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{extra_hidden:?}|{callout_pools:?}",
        spec.root_id,
        spec.vm_id,
        spec.config,
        spec.vm_config,
        spec.expose,
        spec.allowed_upstreams,
        spec.limits,
        spec.on_error,
        spec.vms,
    );
    Sha256::digest(text.as_bytes()).into()
}

impl Runtime {
    /// Builds the pools, loads the plugins (running their start-up) and builds the router.
    /// `threads` is the number of worker threads, the default number of VMs per plugin;
    /// `fetched` holds each plugin's binary. With `previous` (a reload), pools whose upstream
    /// is unchanged are kept (with their health state), and so are plugins whose binary and
    /// settings are unchanged (with their VMs); everything else is new.
    pub fn build(
        config: Config,
        version: u64,
        threads: usize,
        fetched: &HashMap<String, Fetched>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, BuildError> {
        let pools: Vec<Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|u| {
                let kept = previous.and_then(|prev| {
                    let i = prev.config.upstreams.iter().position(|o| o == u)?;
                    prev.pools.get(i).cloned()
                });
                kept.unwrap_or_else(|| Arc::new(Pool::new(u)))
            })
            .collect();
        let extra_hidden = &config.file.sanitize.extra_headers;
        let mut plugins = HashMap::new();
        let mut plugin_info = HashMap::new();
        for spec in &config.plugins {
            let Some(binary) = fetched.get(&spec.name) else {
                return Err(PluginError::Compile {
                    plugin: spec.name.clone(),
                    message: "its binary was not fetched".into(),
                }
                .into());
            };
            let fp = fingerprint(spec, &binary.sha256, extra_hidden, &pools);
            let kept = previous.and_then(|prev| {
                let info = prev.plugin_info.get(&spec.name)?;
                (info.fingerprint == fp).then(|| (prev.plugins.get(&spec.name).cloned(), info))
            });
            if let Some((Some(plugin), info)) = kept {
                plugins.insert(spec.name.clone(), plugin);
                plugin_info.insert(
                    spec.name.clone(),
                    PluginInfo {
                        origin: binary.origin.clone(),
                        from_cache: binary.from_cache,
                        ..info.clone()
                    },
                );
                continue;
            }
            if let crate::config::SharedData::Redis(r) = &config.shared_data {
                // A plugin's deadline counts its waits for Redis: two waits at the bound
                // (a read and a compare-and-swap) must fit, with room for its own work.
                if spec.limits.timeout < r.timeout * 3 {
                    tracing::warn!(
                        plugin = %spec.name,
                        timeout_ms = spec.limits.timeout.as_millis() as u64,
                        shared_data_timeout_ms = r.timeout.as_millis() as u64,
                        "the plugin's limits.timeout_ms is under 3 × shared_data.timeout_ms: a \
                         slow Redis can make its calls pass their deadline (a timeout failure \
                         that replaces the VM) instead of failing as shared_data"
                    );
                }
            }
            let started = Instant::now();
            let plugin = crate::plugins::load_plugin(
                spec,
                binary,
                &pools,
                extra_hidden,
                threads,
                &config.shared_data,
                config.engine.vm_start,
            )?;
            plugins.insert(spec.name.clone(), plugin);
            plugin_info.insert(
                spec.name.clone(),
                PluginInfo {
                    origin: binary.origin.clone(),
                    sha256: binary.sha256.clone(),
                    from_cache: binary.from_cache,
                    loaded_in: version,
                    loaded_at: SystemTime::now(),
                    load_time: started.elapsed(),
                    fingerprint: fp,
                },
            );
        }
        let router = Router::new(&config.routes, &pools, &plugins);
        Ok(Runtime {
            version,
            loaded_at: SystemTime::now(),
            config,
            router,
            pools,
            plugins,
            plugin_info,
        })
    }

    /// Fetches the plugins of `config` and builds it, from synchronous code outside any async
    /// runtime (start-up, `sluice check`).
    pub fn build_blocking(config: Config, threads: usize) -> Result<Runtime, BuildError> {
        // The first build sizes the engine (it is made on first use and fixed from then on).
        let vms = config.plugins.iter().map(|p| p.vm_count(threads)).sum();
        crate::wasm::configure_engine(crate::wasm::EngineSizing {
            instance_slots: config.engine.slots(vms),
            on_demand: config.engine.on_demand,
        });
        let fetched = crate::source::fetch_all_blocking(&config.plugins)?;
        Runtime::build(config, 1, threads, &fetched, None)
    }
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `POST /reload` on the admin API (also what `sluice reload` sends).
    Api,
    /// `SIGHUP`.
    Signal,
    /// The config file (or a local plugin file) changed on disk.
    Watch,
}

impl Trigger {
    /// Its name in logs and `/plugins`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Signal => "signal",
            Trigger::Watch => "file",
        }
    }
}

/// Why a reload was refused. The configuration that was serving keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The process was not started from a config file (`sluice demo`).
    #[error("this process was not started from a config file, so there is nothing to reload")]
    NoConfigFile,
    /// The config file is invalid.
    #[error("{path}: {errors}")]
    Config {
        /// The file.
        path: String,
        /// Every error found.
        errors: ConfigErrors,
    },
    /// A section that is fixed while the process runs was changed.
    #[error(
        "{section} changed: {detail}; {section} cannot change while sluice runs (pingora binds \
         listeners and sets up its worker threads at start-up), so restart sluice to apply it"
    )]
    RestartNeeded {
        /// `listeners`, `admin` or `server`.
        section: &'static str,
        /// What differs.
        detail: String,
    },
    /// A plugin could not be fetched, checked, compiled or started.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// A host bug: the reload task ended abnormally.
    #[error("reload failed: {0}")]
    Internal(String),
}

/// The result of the last reload, for `/plugins`, `/config` and `sluice reload`.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    /// What started it.
    pub trigger: Trigger,
    /// When it ended.
    pub at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The version it published, or why it was refused.
    pub result: Result<u64, String>,
}

/// Process-wide state shared by the proxy, the admin API and background tasks.
pub struct State {
    current: ArcSwap<Runtime>,
    threads: usize,
    config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    last_reload: Mutex<Option<ReloadRecord>>,
    watch_mark: Mutex<Option<Mark>>,
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Refuses changes to what only a restart can apply: listeners, the admin listener and the
/// process settings.
fn fixed_sections_unchanged(old: &Config, new: &Config) -> Result<(), ReloadError> {
    if json(&old.file.listeners) != json(&new.file.listeners) {
        let before: Vec<String> = old
            .listeners
            .iter()
            .map(|l| format!("{} on {}", l.name, l.address))
            .collect();
        let after: Vec<String> = new
            .listeners
            .iter()
            .map(|l| format!("{} on {}", l.name, l.address))
            .collect();
        let detail = if before == after {
            "a listener's settings differ".to_string()
        } else {
            format!(
                "[{}] would become [{}]",
                before.join(", "),
                after.join(", ")
            )
        };
        return Err(ReloadError::RestartNeeded {
            section: "listeners",
            detail,
        });
    }
    if json(&old.file.admin) != json(&new.file.admin) {
        return Err(ReloadError::RestartNeeded {
            section: "admin",
            detail: format!(
                "admin address {} would become {}",
                old.admin.address, new.admin.address
            ),
        });
    }
    if old.file.engine.pool_settings() != new.file.engine.pool_settings() {
        return Err(ReloadError::RestartNeeded {
            section: "engine",
            detail: "the wasm engine's instance pool settings differ".into(),
        });
    }
    if old.shared_data != new.shared_data {
        return Err(ReloadError::RestartNeeded {
            section: "shared_data",
            detail: "the shared-data backend settings differ (plugins' shared data would move)"
                .into(),
        });
    }
    if json(&old.file.server) != json(&new.file.server) {
        return Err(ReloadError::RestartNeeded {
            section: "server",
            detail: "the server settings differ".into(),
        });
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl State {
    /// State serving `config` as version 1 (fetching and loading its plugins). Must be called
    /// outside any async runtime.
    pub fn new(config: Config, threads: usize) -> Result<Arc<State>, BuildError> {
        let config_path = config.source.clone();
        let watch_mark = config_path.as_deref().map(|p| {
            let digest = std::fs::read(p).map_or([0; 32], |b| Sha256::digest(&b).into());
            Mark::new(digest, crate::reload::plugin_files(&config))
        });
        let runtime = Runtime::build_blocking(config, threads)?;
        let m = crate::metrics::metrics();
        m.config_version.set(1);
        m.config_last_success.set(unix_now());
        crate::wasm::prune_modules(
            &runtime
                .plugins
                .values()
                .map(|p| p.sha256)
                .collect::<Vec<_>>(),
        );
        Ok(Arc::new(State {
            current: ArcSwap::from_pointee(runtime),
            threads,
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            last_reload: Mutex::new(None),
            watch_mark: Mutex::new(watch_mark),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }))
    }

    /// The snapshot new requests use.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The config file this process serves, if it was started from one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// The result of the last reload (none yet: `None`).
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the last read of the config file saw (for the file watcher).
    pub(crate) fn watch_mark(&self) -> Option<Mark> {
        self.watch_mark
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_watch_mark(&self, mark: Mark) {
        *self.watch_mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(mark);
    }

    /// Reloads the config file: builds the new configuration off the request path and
    /// publishes it only if everything succeeded. Reloads run one at a time (a trigger during
    /// a reload waits for it, then reloads again). On error nothing changes; the error is
    /// logged, counted and kept for `/plugins` and `/config`.
    pub async fn reload(
        self: &Arc<Self>,
        trigger: Trigger,
    ) -> Result<Arc<Runtime>, Arc<ReloadError>> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let started = Instant::now();
        let result = self.clone().build_next().await.map_err(Arc::new);
        let duration = started.elapsed();
        let m = crate::metrics::metrics();
        m.config_reload_duration.observe(duration.as_secs_f64());
        let record = ReloadRecord {
            trigger,
            at: SystemTime::now(),
            duration,
            result: match &result {
                Ok(rt) => Ok(rt.version),
                Err(e) => Err(e.to_string()),
            },
        };
        match &result {
            Ok(rt) => {
                m.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    trigger = trigger.as_str(),
                    version = rt.version,
                    duration_ms = duration.as_secs_f64() * 1e3,
                    "config reloaded: the new version serves new requests"
                );
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    trigger = trigger.as_str(),
                    error = %e,
                    "config reload refused; the running config keeps serving"
                );
            }
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
        result
    }

    async fn build_next(self: Arc<Self>) -> Result<Arc<Runtime>, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        let file = path.clone();
        // Validation resolves host names: keep it off the async workers.
        let (digest, loaded) = tokio::task::spawn_blocking(move || Config::load_text(&file))
            .await
            .map_err(|e| ReloadError::Internal(e.to_string()))?;
        // Remember what was read, good or bad, so the watcher reloads only on a new change.
        let files = match &loaded {
            Ok(config) => crate::reload::plugin_files(config),
            Err(_) => self.watch_mark().map(|m| m.files).unwrap_or_default(),
        };
        self.set_watch_mark(Mark::new(digest, files));
        let config = loaded.map_err(|errors| ReloadError::Config {
            path: path.display().to_string(),
            errors,
        })?;
        let old = self.current();
        fixed_sections_unchanged(&old.config, &config)?;
        let fetched = crate::source::fetch_all(&config.plugins)
            .await
            .map_err(BuildError::from)?;
        let threads = self.threads;
        let version = old.version + 1;
        let prev = old.clone();
        let new = tokio::task::spawn_blocking(move || {
            Runtime::build(config, version, threads, &fetched, Some(&prev))
        })
        .await
        .map_err(|e| ReloadError::Internal(e.to_string()))??;
        let new = Arc::new(new);
        for pool in &new.pools {
            if !old.pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
                crate::upstream::health::spawn(pool);
            }
        }
        self.current.store(new.clone());
        let m = crate::metrics::metrics();
        m.config_version.set(version as i64);
        m.config_last_success.set(unix_now());
        for name in old.plugins.keys() {
            if !new.plugins.contains_key(name) {
                let _ = m.plugin_vms.remove_label_values(&[name]);
                let _ = m.plugin_memory.remove_label_values(&[name]);
            }
        }
        for p in new.plugins.values() {
            p.update_gauges();
        }
        // Keep the modules of the new and the previous config: swapping back is then as quick
        // as swapping forward, and the map holds at most two configs' worth.
        let keep: Vec<[u8; 32]> = new
            .plugins
            .values()
            .chain(old.plugins.values())
            .map(|p| p.sha256)
            .collect();
        crate::wasm::prune_modules(&keep);
        Ok(new)
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
