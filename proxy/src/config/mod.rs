//! Configuration: YAML file structs (`*File`, `deny_unknown_fields`, exactly what the user wrote)
//! and the validated [`Config`] built from them. Validation collects every error it finds, each
//! naming the offending field path, so `sluice check` can print them all at once.

mod admin;
pub mod engine;
mod listener;
mod oci;
mod plugin;
mod reload;
mod rollout;
mod route;
pub mod schema;
pub mod secrets;
mod server;
pub mod shared_data;
mod upstream;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::wasm::settings::{encode_config, LimitsFile};
pub use admin::{read_token_file, Admin, AdminFile, AdminToken};
pub use engine::{EngineFile, EngineSettings};
pub use listener::{Listener, ListenerFile, ListenerTls, TlsFile};
pub use oci::{OciFile, OciSettings};
pub use plugin::{
    PluginFile, PluginSpec, RollbackFile, RolloutFile, RolloutSpec, SanitizeFile, SignatureFile,
};
pub use reload::{ReloadFile, ReloadSettings};
pub use route::{HostMatch, Route, RouteFile, RouteMatchFile};
pub use server::{ServerFile, ServerSettings};
pub use shared_data::{SharedData, SharedDataFile};
pub use upstream::{
    Balancing, HashKey, HealthCheck, HealthCheckFile, HostHeader, Protocol, ProtocolFile, Upstream,
    UpstreamFile, UpstreamTls, UpstreamTlsFile,
};

/// The whole configuration file, as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Process-wide settings (threads, shutdown).
    #[serde(default)]
    pub server: ServerFile,
    /// Where the proxy accepts client traffic.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// The admin listener (`/ready`, `/metrics`, `/config`).
    #[serde(default)]
    pub admin: AdminFile,
    /// Named upstream pools.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// Ordered routes; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Named plugins that routes refer to.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginFile>,
    /// What plugins may not see, beyond the built-in list.
    #[serde(default)]
    pub sanitize: SanitizeFile,
    /// How changes to the config file are noticed.
    #[serde(default)]
    pub reload: ReloadFile,
    /// Where plugins' shared data lives (in this process, or in Redis for every replica).
    #[serde(default)]
    pub shared_data: SharedDataFile,
    /// The wasm engine's instance pool (fixed while the process runs).
    #[serde(default)]
    pub engine: EngineFile,
    /// How `oci:` plugins are pulled (registry credentials).
    #[serde(default)]
    pub oci: OciFile,
}

/// One configuration problem, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {message}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
    /// The YAML does not have the expected shape (unknown field, wrong type, syntax error).
    #[error("{field}: {message}")]
    Parse {
        /// Field path where parsing stopped (`.` for the document itself).
        field: String,
        /// What was wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// Field path, e.g. `routes[2].upstream`.
        field: String,
        /// What was wrong.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated configuration: every reference resolved, every address parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// The file as written (with defaults filled in), for `/config`.
    pub file: ConfigFile,
    /// Process-wide settings.
    pub server: ServerSettings,
    /// Client-facing listeners.
    pub listeners: Vec<Listener>,
    /// The admin listener.
    pub admin: Admin,
    /// Upstream pools, sorted by name.
    pub upstreams: Vec<Upstream>,
    /// Routes in match order; `upstream` is the name of one of `upstreams`.
    pub routes: Vec<Route>,
    /// Plugins, sorted by name.
    pub plugins: Vec<PluginSpec>,
    /// File watching.
    pub reload: ReloadSettings,
    /// Shared-data storage.
    pub shared_data: SharedData,
    /// The wasm engine's settings.
    pub engine: EngineSettings,
    /// Registry credentials for `oci:` plugins.
    pub oci: OciSettings,
}

impl Config {
    /// Every plugin version to load: each plugin, and the candidate of each rollout.
    pub fn all_plugins(&self) -> Vec<&PluginSpec> {
        self.plugins
            .iter()
            .flat_map(|p| std::iter::once(p).chain(p.rollout.as_ref().map(|r| &r.candidate)))
            .collect()
    }

    /// Reads, parses and validates a config file. Relative paths in it (TLS files, plugins) are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_text(path).1
    }

    /// As [`Config::load`], also returning the sha256 of the bytes read (all zero if the file
    /// could not be read), so that a file watcher knows exactly which content was loaded.
    pub fn load_text(path: &Path) -> ([u8; 32], Result<Config, ConfigErrors>) {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                let err = ConfigErrors(vec![ConfigError::Read {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }]);
                return ([0; 32], Err(err));
            }
        };
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        (digest, Config::load_bytes(path, bytes))
    }

    fn load_bytes(path: &Path, bytes: Vec<u8>) -> Result<Config, ConfigErrors> {
        let text = String::from_utf8(bytes).map_err(|e| {
            ConfigErrors(vec![ConfigError::Read {
                path: path.display().to_string(),
                message: format!("not UTF-8 text: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_yaml(&text, base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates YAML text; relative paths resolve against `base_dir`.
    pub fn from_yaml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let file = parse(text).map_err(|e| ConfigErrors(vec![e]))?;
        file.validate(base_dir)
    }
}

/// Parses YAML into the file structs, reporting the field path where it failed.
fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::invalid(".", "the config file is empty"));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_yaml prefixes its message with the path it saw; we print our own.
        if let Some(rest) = message.strip_prefix(&format!("{field}: ")) {
            message = rest.to_string();
        }
        ConfigError::Parse { field, message }
    })
}

impl ConfigFile {
    /// Validates the whole file, collecting every error.
    pub fn validate(self, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();

        let server = self.server.validate(&mut errors);
        let reload = self.reload.validate(&mut errors);
        let shared_data = self.shared_data.validate(base_dir, &mut errors);
        let engine = self.engine.validate(&mut errors);
        let oci = self.oci.validate(base_dir, &mut errors);

        if self.listeners.is_empty() {
            errors.push(ConfigError::invalid(
                "listeners",
                "at least one listener is required",
            ));
        }
        let mut listeners = Vec::new();
        let mut names = HashSet::new();
        let mut addrs: Vec<(SocketAddr, String)> = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let field = format!("listeners[{i}]");
            if let Some(listener) = l.validate(&field, base_dir, &mut errors) {
                if !names.insert(listener.name.clone()) {
                    errors.push(ConfigError::invalid(
                        format!("{field}.name"),
                        format!("duplicate listener name {:?}", listener.name),
                    ));
                }
                if let Some((_, other)) = addrs.iter().find(|(a, _)| *a == listener.address) {
                    errors.push(ConfigError::invalid(
                        format!("{field}.address"),
                        format!("{} is already used by {other}", listener.address),
                    ));
                }
                addrs.push((listener.address, field));
                listeners.push(listener);
            }
        }

        let admin = self.admin.validate(base_dir, &mut errors);
        if let Some(admin) = &admin {
            if let Some((_, other)) = addrs.iter().find(|(a, _)| *a == admin.address) {
                errors.push(ConfigError::invalid(
                    "admin.address",
                    format!(
                        "{} is also used by {other}: the admin API must have its own address",
                        admin.address
                    ),
                ));
            }
        }

        let mut upstreams = Vec::new();
        for (name, u) in &self.upstreams {
            if let Some(up) = u.validate(name, base_dir, &mut errors) {
                upstreams.push(up);
            }
        }
        let upstream_names: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();

        let mut plugins = Vec::new();
        for (i, h) in self.sanitize.extra_headers.iter().enumerate() {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                errors.push(ConfigError::invalid(
                    format!("sanitize.extra_headers[{i}]"),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        for (name, p) in &self.plugins {
            let spec = p.validate(
                name,
                base_dir,
                &self.upstreams,
                &self.sanitize.extra_headers,
                &mut errors,
            );
            let rollout = p.rollout.as_ref().map(|r| {
                r.validate(
                    name,
                    p,
                    base_dir,
                    &self.upstreams,
                    &self.sanitize.extra_headers,
                    &mut errors,
                )
            });
            match (spec, rollout) {
                (Some(mut spec), Some(Some(r))) => {
                    spec.rollout = Some(r);
                    plugins.push(spec);
                }
                (Some(spec), None) => plugins.push(spec),
                _ => {}
            }
        }

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if !route_names.insert(r.name.as_str()) {
                errors.push(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            if let Some(route) = r.validate(&field, &upstream_names, &self.plugins, &mut errors) {
                routes.push(route);
            }
        }

        if errors.is_empty() {
            Ok(Config {
                source: None,
                file: self,
                server,
                listeners,
                admin: admin.expect("admin validated without errors"),
                upstreams,
                routes,
                plugins,
                reload,
                shared_data,
                engine,
                oci,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Parses `host:port` (or `[v6]:port`), resolving names. Errors name what was wrong.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not an address of the form host:port"));
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("{text:?} has an invalid port {port:?}"));
    }
    use std::net::ToSocketAddrs;
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{text:?} resolved to no address")),
        Err(e) => Err(format!("cannot resolve {text:?}: {e}")),
    }
}

#[cfg(test)]
mod tests;
