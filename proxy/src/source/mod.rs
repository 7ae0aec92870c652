//! Where plugin binaries come from, and checking them before anything runs them.
//!
//! A plugin's `.wasm` comes from a local file (`path:`), an HTTP(S) URL (`url:`, with a
//! required `sha256`) or an OCI registry (`oci:`). Every source is fetched off the request
//! path, before a configuration is built: at start-up, by `sluice check`, and by a reload
//! (which keeps serving the old configuration when a fetch or check fails). The bytes are
//! checked against the configured `sha256` when one is given, and against the plugin's
//! ed25519 signature when the config has a `signature:` key.
//!
//! Downloads are bounded ([`CONNECT_TIMEOUT`], [`FETCH_TIMEOUT`], [`MAX_DOWNLOAD_BYTES`]) and
//! kept in a local, content-addressed [`cache`]. The files of this module: [`http`] (the
//! client), [`url`], [`oci`] and [`registry`] (the distribution API), [`cache`],
//! [`signature`], and [`push`] (`sluice plugin push`).

pub mod cache;
pub mod credentials;
pub mod http;
pub mod local;
pub mod oci;
pub mod push;
pub mod reference;
pub mod registry;
pub mod signature;
pub mod url;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::wasm::engine::hex;
pub use oci::OciReference;
pub use signature::{SignatureCheck, SignatureError};

/// Longest wait for a connection to a plugin's server or registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a plugin's whole fetch may take (every request it needs).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest plugin binary (and any download) accepted.
pub const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

/// A plugin binary to fetch, as a `plugins:` entry of the config describes it.
pub trait Wanted: Sync {
    /// The plugin's name (errors and logs name it).
    fn name(&self) -> &str;
    /// Where its binary comes from.
    fn source(&self) -> &PluginSource;
    /// The sha256 the binary must have (required for `url:`), lower-case hex.
    fn sha256(&self) -> Option<&str>;
    /// The signature it must carry.
    fn signature(&self) -> Option<&SignatureCheck>;
}

impl<T: Wanted + ?Sized> Wanted for &T {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn source(&self) -> &PluginSource {
        (**self).source()
    }

    fn sha256(&self) -> Option<&str> {
        (**self).sha256()
    }

    fn signature(&self) -> Option<&SignatureCheck> {
        (**self).signature()
    }
}

/// Where a plugin's binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A local file (resolved against the config file's directory).
    Path(PathBuf),
    /// An `http://` or `https://` URL (the config requires its `sha256`).
    Url(String),
    /// An image in an OCI registry.
    Oci(OciReference),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Path(p) => write!(f, "path:{}", p.display()),
            PluginSource::Url(u) => write!(f, "url:{u}"),
            PluginSource::Oci(r) => write!(f, "oci:{r}"),
        }
    }
}

/// A fetched binary's bytes.
#[derive(Debug, Clone)]
pub enum Binary {
    /// In memory.
    Bytes(Arc<[u8]>),
    /// A local file left unread: it is unchanged since this process hashed it (see [`local`]).
    File(PathBuf),
}

/// A plugin binary, fetched and checked.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The module's bytes, or the unchanged local file that holds them.
    pub binary: Binary,
    /// Their sha256, lower-case hex.
    pub sha256: String,
    /// Where they came from, for logs and `/plugins` (e.g. `path:/etc/sluice/auth.wasm`,
    /// `url:https://…`, `oci:registry/repo:tag@sha256:…` with the manifest's digest).
    pub origin: String,
    /// Whether they came from the local cache rather than the network.
    pub from_cache: bool,
}

impl Fetched {
    /// The module's bytes (an unread local file is read now, and refused if it changed since
    /// it was fetched).
    pub fn bytes(&self) -> Result<Arc<[u8]>, String> {
        match &self.binary {
            Binary::Bytes(b) => Ok(b.clone()),
            Binary::File(path) => local::read_checked(path, &self.sha256),
        }
    }
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
    /// A download failed (connection, status, size cap, timeout).
    #[error("plugin {plugin:?}: {message}")]
    Download {
        /// Plugin name.
        plugin: String,
        /// What failed, with the URL.
        message: String,
    },
    /// Pulling from an OCI registry failed, or the image is not a plugin image.
    #[error("plugin {plugin:?}: oci:{reference}: {message}")]
    Oci {
        /// Plugin name.
        plugin: String,
        /// The reference as configured.
        reference: String,
        /// What was wrong.
        message: String,
    },
    /// The whole fetch took longer than [`FETCH_TIMEOUT`].
    #[error("plugin {plugin:?}: fetching {origin} took longer than {seconds} s")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The source.
        origin: String,
        /// The limit.
        seconds: u64,
    },
    /// A signature is configured and the binary's is missing, malformed or wrong.
    #[error("plugin {plugin:?}: refused: {origin}: {reason}")]
    Signature {
        /// Plugin name.
        plugin: String,
        /// Where the binary came from.
        origin: String,
        /// What was wrong.
        reason: SignatureError,
    },
    /// Something that is not about the plugin (no runtime, no HTTP client).
    #[error("plugin {plugin:?}: {message}")]
    Internal {
        /// Plugin name.
        plugin: String,
        /// What failed.
        message: String,
    },
}

/// How sources are fetched: the cache, the registries' transport and credentials, limits.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The cache directory; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Registry credentials: the environment's, else a Docker `config.json`'s.
    pub credentials: credentials::CredentialStore,
    /// Largest download.
    pub max_bytes: u64,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-fetch timeout (per plugin, and per request).
    pub timeout: Duration,
}

impl Default for FetchOptions {
    /// No cache, no insecure registries, no credentials, the default limits.
    fn default() -> Self {
        FetchOptions {
            cache_dir: None,
            insecure_registries: Vec::new(),
            credentials: credentials::CredentialStore::default(),
            max_bytes: MAX_DOWNLOAD_BYTES,
            connect_timeout: CONNECT_TIMEOUT,
            timeout: FETCH_TIMEOUT,
        }
    }
}

impl FetchOptions {
    /// What the environment says: the cache directory ([`cache::default_dir`]),
    /// `SLUICE_OCI_INSECURE`, `SLUICE_OCI_USERNAME`/`SLUICE_OCI_PASSWORD`/`SLUICE_OCI_TOKEN`,
    /// the default Docker `config.json` ([`credentials::DockerConfig::default_path`]); the
    /// default limits.
    pub fn from_env() -> FetchOptions {
        FetchOptions {
            cache_dir: cache::default_dir(),
            insecure_registries: registry::insecure_from_env(),
            credentials: credentials::CredentialStore::from_env(),
            ..FetchOptions::default()
        }
    }

    /// What the environment says, with the `config.json` a configuration read (its
    /// `oci.credentials_file`, or the default one) instead of the default one.
    pub fn from_env_with_docker(docker: Option<Arc<credentials::DockerConfig>>) -> FetchOptions {
        FetchOptions {
            cache_dir: cache::default_dir(),
            insecure_registries: registry::insecure_from_env(),
            credentials: credentials::CredentialStore {
                env: credentials::Credentials::from_env(),
                docker,
            },
            ..FetchOptions::default()
        }
    }

    /// An HTTP client with these limits.
    pub fn http(&self) -> Result<http::Http, String> {
        http::Http::new(self.connect_timeout, self.timeout, self.max_bytes)
    }
}

/// One local file as read (or found unchanged) once for every plugin of a fetch that names it.
type SharedLocal = Arc<tokio::sync::OnceCell<Result<local::Local, String>>>;

/// What one `fetch_all` shares: the options, (made once, when first needed) the client, and
/// the local files read so far.
struct Fetcher<'a> {
    options: &'a FetchOptions,
    cache: Option<cache::Cache>,
    http: OnceLock<Result<http::Http, String>>,
    local: Mutex<HashMap<PathBuf, SharedLocal>>,
}

impl<'a> Fetcher<'a> {
    fn new(options: &'a FetchOptions) -> Self {
        Fetcher {
            options,
            cache: options.cache_dir.clone().map(cache::Cache::new),
            http: OnceLock::new(),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// `path`'s bytes or known sha256, read at most once per fetch (off the async threads).
    async fn local(&self, path: &Path) -> Result<local::Local, String> {
        let cell = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || local::Digests::global().fetch(&path))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        })
        .await
        .clone()
    }

    fn http(&self) -> Result<http::Http, String> {
        self.http.get_or_init(|| self.options.http()).clone()
    }

    async fn fetch(&self, spec: &impl Wanted) -> Result<Fetched, SourceError> {
        let seconds = self.options.timeout.as_secs();
        crate::progress::begin(spec.name(), crate::progress::Step::Fetch);
        let r = match tokio::time::timeout(self.options.timeout, self.fetch_unbounded(spec)).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::Timeout {
                plugin: spec.name().to_string(),
                origin: spec.source().to_string(),
                seconds,
            }),
        };
        crate::progress::end(spec.name());
        r
    }

    async fn fetch_unbounded(&self, spec: &impl Wanted) -> Result<Fetched, SourceError> {
        let plugin = || spec.name().to_string();
        let started = Instant::now();
        // Time spent on the signature (its download included), reported as verifying.
        let mut verifying = Duration::ZERO;
        let cache = self.cache.as_ref();
        // The bytes, their digest if already known, the origin, whether cached, and the
        // signature check's outcome (when one is configured).
        let (binary, sha256, origin, from_cache, signed) = match spec.source() {
            PluginSource::Path(path) if spec.signature().is_none() => {
                let got = self
                    .local(path)
                    .await
                    .map_err(|message| SourceError::Read {
                        plugin: plugin(),
                        path: path.display().to_string(),
                        message,
                    })?;
                let binary = match got.bytes {
                    Some(b) => Binary::Bytes(b),
                    None => Binary::File(path.clone()),
                };
                (binary, got.sha256, spec.source().to_string(), false, None)
            }
            PluginSource::Path(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| SourceError::Read {
                    plugin: plugin(),
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                let signed = match spec.signature() {
                    None => None,
                    Some(check) => {
                        let sig_path = signature::sig_path(path);
                        Some(match tokio::fs::read(&sig_path).await {
                            Ok(sig) => timed(&mut verifying, || check.verify(&bytes, &sig)),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                Err(SignatureError::Missing(format!(
                                    "{} does not exist",
                                    sig_path.display()
                                )))
                            }
                            Err(e) => Err(SignatureError::Missing(format!(
                                "cannot read {}: {e}",
                                sig_path.display()
                            ))),
                        })
                    }
                };
                let sha256 = sha256_hex(&bytes);
                (
                    Binary::Bytes(bytes.into()),
                    sha256,
                    spec.source().to_string(),
                    false,
                    signed,
                )
            }
            PluginSource::Url(u) => {
                let Some(expected) = spec.sha256() else {
                    return Err(SourceError::Internal {
                        plugin: plugin(),
                        message: format!("url:{u} has no sha256 (the config requires one)"),
                    });
                };
                let got = url::fetch(|| self.http(), u, expected, cache)
                    .await
                    .map_err(|e| match e {
                        url::UrlError::Digest {
                            url,
                            actual,
                            expected,
                        } => SourceError::Digest {
                            plugin: plugin(),
                            origin: format!("url:{url}"),
                            actual,
                            expected,
                        },
                        e => SourceError::Download {
                            plugin: plugin(),
                            message: e.to_string(),
                        },
                    })?;
                let signed = match spec.signature() {
                    None => None,
                    Some(check) => {
                        let at = Instant::now();
                        let r = url::signature(
                            || self.http(),
                            u,
                            &got.bytes,
                            &got.sha256,
                            check,
                            cache,
                        )
                        .await;
                        verifying += at.elapsed();
                        Some(r)
                    }
                };
                (
                    Binary::Bytes(got.bytes.into()),
                    got.sha256,
                    spec.source().to_string(),
                    got.from_cache,
                    signed,
                )
            }
            PluginSource::Oci(reference) => {
                let connect = || {
                    let http = self.http().map_err(|message| {
                        oci::PullError::Manifest(format!("cannot make an HTTP client: {message}"))
                    })?;
                    Ok(registry::Registry::new(
                        http,
                        reference,
                        &self.options.insecure_registries,
                        self.options.credentials.for_registry(&reference.registry),
                        "pull",
                    ))
                };
                let pulled = oci::pull(
                    reference,
                    cache,
                    self.options.max_bytes,
                    connect,
                    spec.signature().is_some(),
                )
                .await
                .map_err(|e| SourceError::Oci {
                    plugin: plugin(),
                    reference: reference.to_string(),
                    message: e.to_string(),
                })?;
                let origin = format!(
                    "oci:{}",
                    OciReference {
                        digest: Some(pulled.manifest_digest.clone()),
                        ..reference.clone()
                    }
                );
                let signed = spec.signature().map(|check| match &pulled.signature {
                    Some(sig) => timed(&mut verifying, || check.verify(&pulled.wasm, sig)),
                    None => Err(SignatureError::Missing(format!(
                        "the image has no layer of media type {}",
                        signature::SIGNATURE_MEDIA_TYPE
                    ))),
                });
                let sha256 = sha256_hex(&pulled.wasm);
                (
                    Binary::Bytes(pulled.wasm.into()),
                    sha256,
                    origin,
                    pulled.from_cache,
                    signed,
                )
            }
        };
        let size = match &binary {
            Binary::Bytes(b) => Some(b.len()),
            Binary::File(_) => None,
        };
        let fetching = started.elapsed().saturating_sub(verifying);
        let checks_at = Instant::now();
        if let Some(expected) = spec.sha256() {
            if sha256 != expected {
                return Err(SourceError::Digest {
                    plugin: plugin(),
                    origin,
                    actual: sha256,
                    expected: expected.to_string(),
                });
            }
        }
        let signature_checked = signed.is_some();
        if let Some(Err(reason)) = signed {
            return Err(SourceError::Signature {
                plugin: plugin(),
                origin,
                reason,
            });
        }
        verifying += checks_at.elapsed();
        let downloaded = !from_cache && !matches!(spec.source(), PluginSource::Path(_));
        tracing::info!(
            plugin = %spec.name(),
            %origin,
            downloaded,
            bytes = size,
            unchanged = size.is_none(),
            from_cache,
            ms = crate::progress::ms(fetching),
            "plugin fetched"
        );
        tracing::info!(
            plugin = %spec.name(),
            %sha256,
            sha256_pinned = spec.sha256().is_some(),
            signature_checked,
            ms = crate::progress::ms(verifying),
            "plugin verified"
        );
        Ok(Fetched {
            binary,
            sha256,
            origin,
            from_cache,
        })
    }
}

/// `f()`, its time added to `total`.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let at = Instant::now();
    let r = f();
    *total += at.elapsed();
    r
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Fetches and checks one plugin's binary, with [`FetchOptions::from_env`].
pub async fn fetch(spec: &impl Wanted) -> Result<Fetched, SourceError> {
    fetch_with(spec, &FetchOptions::from_env()).await
}

/// Fetches and checks one plugin's binary with `options`.
pub async fn fetch_with(
    spec: &impl Wanted,
    options: &FetchOptions,
) -> Result<Fetched, SourceError> {
    Fetcher::new(options).fetch(spec).await
}

/// Fetches every plugin of a config (concurrently), with [`FetchOptions::from_env`]; the
/// first failure is the error.
pub async fn fetch_all(specs: &[impl Wanted]) -> Result<HashMap<String, Fetched>, SourceError> {
    fetch_all_with(specs, &FetchOptions::from_env()).await
}

/// [`fetch_all`] with `options`.
pub async fn fetch_all_with(
    specs: &[impl Wanted],
    options: &FetchOptions,
) -> Result<HashMap<String, Fetched>, SourceError> {
    let fetcher = Fetcher::new(options);
    let results = futures_util::future::join_all(specs.iter().map(|s| fetcher.fetch(s))).await;
    let mut out = HashMap::new();
    for (spec, r) in specs.iter().zip(results) {
        out.insert(spec.name().to_string(), r?);
    }
    // Forget the digests of files this configuration no longer names.
    let paths: Vec<&Path> = specs
        .iter()
        .filter_map(|s| match s.source() {
            PluginSource::Path(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    local::Digests::global().retain(&paths);
    Ok(out)
}

/// [`fetch_all`] from synchronous code outside any async runtime (start-up, `sluice check`).
pub fn fetch_all_blocking(specs: &[impl Wanted]) -> Result<HashMap<String, Fetched>, SourceError> {
    fetch_all_blocking_with(specs, &FetchOptions::from_env())
}

/// [`fetch_all_with`] from synchronous code outside any async runtime.
pub fn fetch_all_blocking_with(
    specs: &[impl Wanted],
    options: &FetchOptions,
) -> Result<HashMap<String, Fetched>, SourceError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Internal {
            plugin: specs
                .first()
                .map(|s| s.name().to_string())
                .unwrap_or_default(),
            message: format!("cannot start a runtime to fetch plugins: {e}"),
        })?;
    rt.block_on(fetch_all_with(specs, options))
}
