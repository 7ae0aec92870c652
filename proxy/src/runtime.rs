//! The `Runtime` snapshot: everything a request needs, immutable, built once per config (the
//! pools, the plugins with their VMs, the router). [`crate::state`] publishes it and replaces
//! it on a reload.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::{Config, PluginSpec};
use crate::plugin_schema::{self, SchemaError};
use crate::rollout::{Rollout, State as RolloutState};
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
    /// A plugin's config does not satisfy the plugin's schema (checked before it starts).
    #[error("{0}")]
    Schema(#[from] SchemaError),
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
    /// Loaded plugins by name; the candidate of a rollout under `NAME (candidate)` (its
    /// `fetch_key`).
    pub plugins: HashMap<String, Arc<Plugin>>,
    /// What was loaded for each plugin, by the same keys.
    pub plugin_info: HashMap<String, PluginInfo>,
    /// Plugins under rollout, by name.
    pub rollouts: HashMap<String, Arc<Rollout>>,
}

/// The rollouts of `config`, their versions taken from `plugins`. A rollout of the previous
/// config whose two versions and settings are unchanged goes on as it was (its figures and
/// state); one whose candidate is unchanged keeps its end (rolled back, aborted or promoted
/// stays so); a changed candidate starts a new rollout.
fn rollouts(
    config: &Config,
    plugins: &HashMap<String, Arc<Plugin>>,
    previous: Option<&Runtime>,
) -> HashMap<String, Arc<Rollout>> {
    let mut out = HashMap::new();
    for spec in &config.plugins {
        let Some(r) = &spec.rollout else {
            continue;
        };
        let (Some(stable), Some(candidate)) =
            (plugins.get(&spec.name), plugins.get(&r.candidate.fetch_key))
        else {
            continue;
        };
        let before = previous
            .and_then(|p| p.rollouts.get(&spec.name))
            .filter(|old| Arc::ptr_eq(old.candidate(), candidate));
        let rollout = match before {
            Some(old) if Arc::ptr_eq(old.stable(), stable) && old.settings() == &r.settings => {
                old.clone()
            }
            Some(old) => Rollout::new(
                &spec.name,
                r.settings.clone(),
                stable.clone(),
                candidate.clone(),
                old.state().0,
            ),
            None => Rollout::new(
                &spec.name,
                r.settings.clone(),
                stable.clone(),
                candidate.clone(),
                RolloutState::Running,
            ),
        };
        out.insert(spec.name.clone(), rollout);
    }
    out
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

/// Validates the config of each plugin that will be loaded (not one a reload keeps as it was)
/// against the plugin's schema, if it has one; every error of every plugin is reported.
fn check_schemas(
    config: &Config,
    fetched: &HashMap<String, Fetched>,
    extra_hidden: &[String],
    pools: &[Arc<Pool>],
    previous: Option<&Runtime>,
) -> Result<(), SchemaError> {
    let mut errors = Vec::new();
    for spec in config.all_plugins() {
        let Some(binary) = fetched.get(&spec.fetch_key) else {
            continue;
        };
        if spec.config.is_empty() {
            continue;
        }
        let fp = fingerprint(spec, &binary.sha256, extra_hidden, pools);
        let kept = previous
            .and_then(|prev| prev.plugin_info.get(&spec.fetch_key))
            .is_some_and(|info| info.fingerprint == fp);
        if kept {
            continue;
        }
        let Some(schema) = plugin_schema::find(spec, binary)? else {
            continue;
        };
        let field = plugin_schema::config_field(spec);
        match plugin_schema::validate(&spec.fetch_key, &field, &spec.config, &schema) {
            Ok(()) => {}
            Err(SchemaError::Invalid { errors: e }) => errors.extend(e),
            Err(e) => return Err(e),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Invalid { errors })
    }
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
        check_schemas(&config, fetched, extra_hidden, &pools, previous)?;
        let mut plugins = HashMap::new();
        let mut plugin_info = HashMap::new();
        for spec in config.all_plugins() {
            let key = &spec.fetch_key;
            let Some(binary) = fetched.get(key) else {
                return Err(PluginError::Compile {
                    plugin: key.clone(),
                    message: "its binary was not fetched".into(),
                }
                .into());
            };
            let fp = fingerprint(spec, &binary.sha256, extra_hidden, &pools);
            let kept = previous.and_then(|prev| {
                let info = prev.plugin_info.get(key)?;
                (info.fingerprint == fp).then(|| (prev.plugins.get(key).cloned(), info))
            });
            if let Some((Some(plugin), info)) = kept {
                tracing::debug!(plugin = %key, "plugin unchanged: kept with its VMs");
                plugins.insert(key.clone(), plugin);
                plugin_info.insert(
                    key.clone(),
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
            plugins.insert(key.clone(), plugin);
            plugin_info.insert(
                key.clone(),
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
        let rollouts = rollouts(&config, &plugins, previous);
        let router = Router::new(&config.routes, &pools, &plugins, &rollouts);
        Ok(Runtime {
            version,
            loaded_at: SystemTime::now(),
            config,
            router,
            pools,
            plugins,
            plugin_info,
            rollouts,
        })
    }

    /// Fetches the plugins of `config` and builds it, from synchronous code outside any async
    /// runtime (start-up, `sluice check`).
    pub fn build_blocking(config: Config, threads: usize) -> Result<Runtime, BuildError> {
        // The first build sizes the engine (it is made on first use and fixed from then on).
        let vms = config
            .all_plugins()
            .iter()
            .map(|p| p.vm_count(threads))
            .sum();
        crate::wasm::configure_engine(crate::wasm::EngineSizing {
            instance_slots: config.engine.slots(vms),
            on_demand: config.engine.on_demand,
        });
        let options =
            crate::source::FetchOptions::from_env_with_docker(config.oci.docker_config.clone());
        // On a terminal, a status line shows what is under way (see `progress`).
        crate::progress::show_on_terminal();
        let built = crate::source::fetch_all_blocking_with(&config.all_plugins(), &options)
            .map_err(BuildError::from)
            .and_then(|fetched| Runtime::build(config, 1, threads, &fetched, None));
        crate::progress::stop_showing();
        built
    }
}
