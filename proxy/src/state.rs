//! The process [`State`]: the current [`Runtime`] snapshot, readiness, draining, requests in
//! flight, and reloading.
//!
//! Requests load the current snapshot once, at their start, and keep it to their end. A reload
//! builds a whole new `Runtime` off the request path (parse, validate, fetch and check the
//! plugin binaries, compile, start every VM) and publishes it with one atomic swap only if all
//! of that succeeded; requests in flight finish on the snapshot they began with, and the old
//! plugins' VMs go away (with `on_done`/`on_delete` on their root contexts) when the last of
//! those requests ends. What starts a reload is in [`crate::triggers`] and the admin API.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigErrors};
use crate::file_mark::{plugin_files, Mark};
use crate::recording::Recording;
use crate::runtime::{BuildError, Runtime};

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
        /// `listeners`, `admin`, `engine`, `shared_data` or `server`.
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
    /// Recordings under way (`POST /plugins/NAME/capture`), and how many.
    recordings: Mutex<Vec<Arc<Recording>>>,
    recording: AtomicUsize,
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
            Mark::new(digest, plugin_files(&config))
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
            recordings: Mutex::new(Vec::new()),
            recording: AtomicUsize::new(0),
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
            Ok(config) => plugin_files(config),
            Err(_) => self.watch_mark().map(|m| m.files).unwrap_or_default(),
        };
        self.set_watch_mark(Mark::new(digest, files));
        let config = loaded.map_err(|errors| ReloadError::Config {
            path: path.display().to_string(),
            errors,
        })?;
        let old = self.current();
        fixed_sections_unchanged(&old.config, &config)?;
        let options =
            crate::source::FetchOptions::from_env_with_docker(config.oci.docker_config.clone());
        let fetched = crate::source::fetch_all_with(&config.all_plugins(), &options)
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
        let p = crate::metrics::plugins();
        for (key, plugin) in &old.plugins {
            if !new.plugins.contains_key(key) {
                let labels = [
                    plugin.settings.name.as_str(),
                    plugin.settings.version.as_str(),
                ];
                let _ = p.plugin_vms.remove_label_values(&labels);
                let _ = p.plugin_memory.remove_label_values(&labels);
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

    /// Starts recording the next `requests` requests of plugin `name`; refused while one of
    /// it is under way.
    pub fn start_recording(&self, name: &str, requests: usize) -> Result<Arc<Recording>, String> {
        let mut all = self.recordings.lock().unwrap_or_else(|p| p.into_inner());
        if all.iter().any(|r| r.plugin() == name) {
            return Err(format!("plugin {name:?} is already being captured"));
        }
        let r = Recording::new(name, requests);
        all.push(r.clone());
        self.recording.store(all.len(), Ordering::Release);
        Ok(r)
    }

    /// Ends a recording.
    pub fn stop_recording(&self, r: &Arc<Recording>) {
        let mut all = self.recordings.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|x| !Arc::ptr_eq(x, r));
        self.recording.store(all.len(), Ordering::Release);
    }

    /// The recordings of plugin `name` that want more requests (none, cheaply, when nothing
    /// records).
    pub fn recordings_of(&self, name: &str) -> Vec<Arc<Recording>> {
        if self.recording.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.plugin() == name && !r.is_full())
            .cloned()
            .collect()
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
