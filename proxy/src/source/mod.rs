//! Where plugin binaries come from, and checking them before anything runs them.
//!
//! A plugin's `.wasm` comes from a local file (`path:`). Every source is fetched off the
//! request path, before a configuration is built: at start-up, by `sluice check`, and by a
//! reload (which keeps serving the old configuration when a fetch or check fails). The bytes
//! are checked against the configured `sha256` when one is given.

use std::collections::HashMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::config::PluginSpec;
use crate::wasm::engine::hex;

/// Where a plugin's binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A local file (resolved against the config file's directory).
    Path(PathBuf),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Path(p) => write!(f, "path:{}", p.display()),
        }
    }
}

/// A plugin binary, fetched and checked.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The module's bytes.
    pub bytes: Vec<u8>,
    /// Their sha256, lower-case hex.
    pub sha256: String,
    /// Where they came from, for logs and `/plugins` (e.g. `path:/etc/sluice/auth.wasm`).
    pub origin: String,
    /// Whether they came from the local cache rather than the network.
    pub from_cache: bool,
}

/// Why a plugin binary could not be fetched or was refused. Each names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("plugin {plugin:?}: cannot read {path}: {message}")]
    Read {
        /// Plugin name.
        plugin: String,
        /// File.
        path: String,
        /// OS error.
        message: String,
    },
    /// The bytes' sha256 differs from the config's.
    #[error("plugin {plugin:?}: sha256 of {origin} is {actual}, the config expects {expected}")]
    Digest {
        /// Plugin name.
        plugin: String,
        /// Where the bytes came from.
        origin: String,
        /// Computed.
        actual: String,
        /// Configured.
        expected: String,
    },
}

/// Fetches and checks one plugin's binary.
pub async fn fetch(spec: &PluginSpec) -> Result<Fetched, SourceError> {
    let (bytes, origin, from_cache) = match &spec.source {
        PluginSource::Path(path) => {
            let bytes = tokio::fs::read(path).await.map_err(|e| SourceError::Read {
                plugin: spec.name.clone(),
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            (bytes, spec.source.to_string(), false)
        }
    };
    let sha256 = hex(&Sha256::digest(&bytes));
    if let Some(expected) = &spec.sha256 {
        if &sha256 != expected {
            return Err(SourceError::Digest {
                plugin: spec.name.clone(),
                origin,
                actual: sha256,
                expected: expected.clone(),
            });
        }
    }
    Ok(Fetched {
        bytes,
        sha256,
        origin,
        from_cache,
    })
}

/// Fetches every plugin of a config (concurrently); the first failure is the error.
pub async fn fetch_all(specs: &[PluginSpec]) -> Result<HashMap<String, Fetched>, SourceError> {
    let results = futures_util::future::join_all(specs.iter().map(fetch)).await;
    let mut out = HashMap::new();
    for (spec, r) in specs.iter().zip(results) {
        out.insert(spec.name.clone(), r?);
    }
    Ok(out)
}

/// [`fetch_all`] from synchronous code outside any async runtime (start-up, `sluice check`).
pub fn fetch_all_blocking(specs: &[PluginSpec]) -> Result<HashMap<String, Fetched>, SourceError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Read {
            plugin: specs.first().map(|s| s.name.clone()).unwrap_or_default(),
            path: String::new(),
            message: format!("cannot start a runtime to fetch plugins: {e}"),
        })?;
    rt.block_on(fetch_all(specs))
}
