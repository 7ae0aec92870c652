//! Plugins as OCI images: references, manifests, the two layouts, and pulling.
//!
//! A reference is `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]` (`REGISTRY` is `host[:port]`,
//! always explicit, Docker Hub's names normalized as [`super::reference`] says; `REPOSITORY`
//! may have slashes; no tag and no digest means `:latest`). A digest pins the manifest: its
//! sha256 must be that digest.
//!
//! Two layouts are understood, as Istio does:
//!
//! - the Wasm OCI artifact: a layer of media type [`WASM_LAYER_MEDIA_TYPE`] holding the
//!   `.wasm` itself;
//! - a container image: one `tar+gzip` layer ([`TAR_GZIP_MEDIA_TYPES`]) holding
//!   `plugin.wasm` at its root.
//!
//! A reference may name an image index (OCI) or manifest list (Docker): the plugin is then
//! the entry whose platform is one of [`WASM_PLATFORMS`] (`wasi/wasm`, `wasip1/wasm`); a pinned
//! digest is the index's, and the entry's manifest must have the digest the index gives.
//!
//! A plugin's signature is a layer of media type [`SIGNATURE_MEDIA_TYPE`] in the same
//! manifest.
//! Every blob's sha256 is checked against its descriptor's digest.

use std::io::Read as _;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::cache::{is_sha256_hex, Cache};
use super::http::{status_error, Answer};
use super::registry::{Registry, RegistryError};
use super::signature::SIGNATURE_MEDIA_TYPE;
use crate::wasm::engine::hex;

/// Media type of a layer holding the `.wasm` itself.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Media type of the config blob of a Wasm OCI artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of a Docker image manifest (schema 2).
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of an OCI image config.
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media types of a gzip-compressed tar layer (OCI, Docker).
pub const TAR_GZIP_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// Media type of an OCI image index.
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker manifest list.
pub const DOCKER_MANIFEST_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media types of multi-platform indexes: the plugin is their entry for a Wasm platform.
const INDEX_MEDIA_TYPES: [&str; 2] = [OCI_INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE];
/// The platforms (`os`, `architecture`) of an index entry that is a plugin: `wasi/wasm`
/// (Docker's and containerd's name, `--platform wasi/wasm`) and `wasip1/wasm` (the Wasm OCI
/// artifact convention for core modules). `wasip2` names components, which Proxy-Wasm
/// plugins are not.
pub const WASM_PLATFORMS: [(&str, &str); 2] = [("wasi", "wasm"), ("wasip1", "wasm")];
/// The file a tar layer must hold.
pub const TAR_PLUGIN_FILE: &str = "plugin.wasm";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub use super::reference::OciReference;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// A descriptor of `bytes`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", hex(&Sha256::digest(bytes))),
            size: bytes.len() as u64,
        }
    }

    /// The hex part of a `sha256:` digest, if that is what it is.
    pub fn sha256_hex(&self) -> Option<&str> {
        self.digest
            .strip_prefix("sha256:")
            .filter(|h| is_sha256_hex(h))
    }
}

/// An image manifest (OCI or Docker schema 2), as far as plugins need it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the manifest states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
}

/// An image index (OCI) or manifest list (Docker), as far as choosing an entry goes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the index states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<IndexEntry>,
}

/// One entry of an index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct IndexEntry {
    /// The manifest it points to.
    #[serde(flatten)]
    pub descriptor: Descriptor,
    /// The platform it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Platform {
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
    /// `variant`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What tells an index from an image manifest: its `mediaType`, and whether it has
/// `manifests`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Whether `bytes` (answered with `content_type`) is an index rather than an image manifest:
/// its `mediaType` (or, lacking one, the `Content-Type`) says so, or it has `manifests`.
pub fn is_index(bytes: &[u8], content_type: Option<&str>) -> bool {
    let Ok(probe) = serde_json::from_slice::<Probe>(bytes) else {
        return false;
    };
    let ct = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    let media_type = probe.media_type.as_deref().or(ct);
    probe.manifests.is_some() || media_type.is_some_and(|m| INDEX_MEDIA_TYPES.contains(&m))
}

/// Parses an index and picks the entry of a plugin: the first whose platform is one of
/// [`WASM_PLATFORMS`]. None: an error listing the platforms the index has.
pub fn wasm_entry(bytes: &[u8]) -> Result<IndexEntry, String> {
    let index: Index =
        serde_json::from_slice(bytes).map_err(|e| format!("the image index is not valid: {e}"))?;
    if index.schema_version != 2 {
        return Err(format!(
            "unsupported image index schemaVersion {}",
            index.schema_version
        ));
    }
    let wanted = |p: &Platform| {
        WASM_PLATFORMS
            .iter()
            .any(|(os, arch)| p.os == *os && p.architecture == *arch)
    };
    let Some(entry) = index
        .manifests
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(wanted))
    else {
        let found: Vec<String> = index
            .manifests
            .iter()
            .map(|e| match &e.platform {
                Some(p) => p.to_string(),
                None => "(no platform)".to_string(),
            })
            .collect();
        let wanted: Vec<String> = WASM_PLATFORMS
            .iter()
            .map(|(os, arch)| format!("{os}/{arch}"))
            .collect();
        return Err(format!(
            "the image index has no entry for platform {}; its platforms: {}",
            wanted.join(" or "),
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        ));
    };
    let m = entry.descriptor.media_type.as_str();
    if m != OCI_MANIFEST_MEDIA_TYPE && m != DOCKER_MANIFEST_MEDIA_TYPE {
        return Err(format!(
            "the image index's entry for {} is of media type {m:?}, not an image manifest",
            entry
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default()
        ));
    }
    if entry.descriptor.sha256_hex().is_none() {
        return Err(format!(
            "the image index's entry digest {:?} is not sha256:<64 hex digits>",
            entry.descriptor.digest
        ));
    }
    if entry.descriptor.size > MAX_MANIFEST_BYTES as u64 {
        return Err(format!(
            "the image index's entry says its manifest has {} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
            entry.descriptor.size
        ));
    }
    Ok(entry.clone())
}

/// How a plugin's `.wasm` is stored in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// A layer holding the `.wasm` itself.
    Wasm,
    /// A tar+gzip layer holding `plugin.wasm`.
    Tar,
}

/// The layers of a manifest that matter: where the `.wasm` is, and the signature, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLayers {
    /// The layer holding the module (itself, or in a tar).
    pub content: Descriptor,
    /// How.
    pub layout: Layout,
    /// The signature layer.
    pub signature: Option<Descriptor>,
}

/// Parses a manifest; `content_type` is the answer's `Content-Type`, used when the manifest
/// does not state its media type.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, String> {
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| format!("the manifest is not a JSON object: {e}"))?;
    let ct = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    let media_type = probe.media_type.as_deref().or(ct);
    if probe.manifests.is_some() || media_type.is_some_and(|m| INDEX_MEDIA_TYPES.contains(&m)) {
        return Err(
            "an image index where an image manifest was expected (an index entry must be an image manifest)"
                .into(),
        );
    }
    if let Some(m) = probe.media_type.as_deref() {
        if m != OCI_MANIFEST_MEDIA_TYPE && m != DOCKER_MANIFEST_MEDIA_TYPE {
            return Err(format!("unsupported manifest media type {m:?}"));
        }
    }
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| format!("the manifest is not an image manifest: {e}"))?;
    if manifest.schema_version != 2 {
        return Err(format!(
            "unsupported manifest schemaVersion {}",
            manifest.schema_version
        ));
    }
    for d in manifest.layers.iter().chain([&manifest.config]) {
        if d.sha256_hex().is_none() {
            return Err(format!(
                "descriptor digest {:?} is not sha256:<64 hex digits>",
                d.digest
            ));
        }
    }
    Ok(manifest)
}

/// Finds the module's layer (a Wasm layer, else the one tar+gzip layer) and the signature.
pub fn plugin_layers(manifest: &Manifest) -> Result<PluginLayers, String> {
    let signature = manifest
        .layers
        .iter()
        .find(|l| l.media_type == SIGNATURE_MEDIA_TYPE)
        .cloned();
    let wasm: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE)
        .collect();
    let tars: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| TAR_GZIP_MEDIA_TYPES.contains(&l.media_type.as_str()))
        .collect();
    let (content, layout) = match (wasm.as_slice(), tars.as_slice()) {
        ([w], _) => ((*w).clone(), Layout::Wasm),
        ([], [t]) => ((*t).clone(), Layout::Tar),
        ([_, _, ..], _) => {
            return Err(format!(
                "the manifest has {} layers of media type {WASM_LAYER_MEDIA_TYPE}; a plugin image has one",
                wasm.len()
            ))
        }
        ([], []) => {
            let types: Vec<_> = manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect();
            return Err(format!(
                "no plugin in the image: no layer of media type {WASM_LAYER_MEDIA_TYPE} nor a single tar+gzip layer holding {TAR_PLUGIN_FILE} (layers: {})",
                if types.is_empty() { "none".to_string() } else { types.join(", ") }
            ));
        }
        ([], _) => {
            return Err(format!(
                "the image has {} tar+gzip layers; a plugin image has a single one holding {TAR_PLUGIN_FILE}",
                tars.len()
            ))
        }
    };
    Ok(PluginLayers {
        content,
        layout,
        signature,
    })
}

/// Extracts `plugin.wasm` from a tar+gzip layer, reading at most `max` bytes of it and at most
/// `2 * max` bytes (plus 1 MiB for headers) of decompressed tar.
pub fn extract_plugin_wasm(tar_gz: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let decoder = flate2::read::MultiGzDecoder::new(tar_gz);
    let mut archive =
        tar::Archive::new(decoder.take(max.saturating_mul(2).saturating_add(1 << 20)));
    let entries = archive
        .entries()
        .map_err(|e| format!("the layer is not a tar+gzip archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the layer is not a valid tar+gzip: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a tar entry has a bad path: {e}"))?
            .into_owned();
        let name = path.to_string_lossy();
        let name = name.trim_start_matches("./").trim_start_matches('/');
        if name != TAR_PLUGIN_FILE {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(format!(
                "{TAR_PLUGIN_FILE} in the layer is not a regular file"
            ));
        }
        let size = entry.size();
        if size > max {
            return Err(format!(
                "{TAR_PLUGIN_FILE} in the layer has {size} bytes, more than the limit of {max}"
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot read {TAR_PLUGIN_FILE} from the layer: {e}"))?;
        if out.len() as u64 != size {
            return Err(format!(
                "{TAR_PLUGIN_FILE} in the layer is truncated ({} of {size} bytes)",
                out.len()
            ));
        }
        return Ok(out);
    }
    Err(format!("the tar+gzip layer holds no {TAR_PLUGIN_FILE}"))
}

/// Builds the tar+gzip layer holding `wasm` as `plugin.wasm` (reproducible: fixed mtime,
/// owner and mode); also returns the digest of the uncompressed tar (the image's diff id).
pub fn build_tar_layer(wasm: &[u8]) -> std::io::Result<(Vec<u8>, String)> {
    let mut header = tar::Header::new_ustar();
    header.set_path(TAR_PLUGIN_FILE)?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm)?;
    let tar = builder.into_inner()?;
    let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar)?;
    Ok((gz.finish()?, diff_id))
}

/// Why pulling an image failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A request to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The manifest's digest is not the pinned one.
    #[error("the manifest's sha256 is sha256:{actual}, the reference pins {expected}")]
    ManifestDigest {
        /// Pinned.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The manifest is not a plugin image.
    #[error("{0}")]
    Manifest(String),
    /// A blob does not match its descriptor, or is too large.
    #[error("blob {digest}: {message}")]
    Blob {
        /// The blob's digest.
        digest: String,
        /// What was wrong.
        message: String,
    },
    /// The tar layer could not be read.
    #[error("layer {digest}: {message}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// What was wrong.
        message: String,
    },
}

/// A pulled plugin.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The module.
    pub wasm: Vec<u8>,
    /// The signature layer's content, if asked for and present.
    pub signature: Option<Vec<u8>>,
    /// The digest of what the reference names (the manifest, or the index holding it),
    /// `sha256:<hex>`: what to pin.
    pub manifest_digest: String,
    /// Whether the module's layer came from the cache.
    pub from_cache: bool,
    /// How it was stored.
    pub layout: Layout,
}

/// Pulls a plugin image. A digest-pinned manifest and any blob already in `cache` are not
/// downloaded again; the registry client is only made (by `connect`) if something must be.
/// `max_bytes` caps the module extracted from a tar layer.
pub async fn pull(
    reference: &OciReference,
    cache: Option<&Cache>,
    max_bytes: u64,
    connect: impl Fn() -> Result<Registry, PullError>,
    want_signature: bool,
) -> Result<Pulled, PullError> {
    let mut registry: Option<Registry> = None;
    macro_rules! registry {
        () => {{
            if registry.is_none() {
                registry = Some(connect()?);
            }
            registry.as_ref().expect("set just above")
        }};
    }

    // The manifest, or the index naming it.
    let pinned = reference
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("sha256:"));
    let cached_top = match (pinned, cache) {
        (Some(h), Some(c)) => c.get(h).await,
        _ => None,
    };
    let (top_bytes, top_type) = match cached_top {
        Some(b) => (b, None),
        None => fetch_manifest(registry!(), reference.manifest_ref()).await?,
    };
    let top_hex = hex(&Sha256::digest(&top_bytes));
    if let Some(expected) = &reference.digest {
        if pinned != Some(top_hex.as_str()) {
            return Err(PullError::ManifestDigest {
                expected: expected.clone(),
                actual: top_hex,
            });
        }
    }
    let (manifest_bytes, content_type, manifest_hex) = if is_index(&top_bytes, top_type.as_deref())
    {
        let entry = wasm_entry(&top_bytes).map_err(PullError::Manifest)?;
        let want = entry
            .descriptor
            .sha256_hex()
            .expect("wasm_entry checks the digest")
            .to_string();
        let (bytes, ct) = match cached_blob(cache, &entry.descriptor).await {
            Some(b) => (b, None),
            None => fetch_manifest(registry!(), &entry.descriptor.digest).await?,
        };
        let actual = hex(&Sha256::digest(&bytes));
        if actual != want {
            return Err(PullError::Manifest(format!(
                "the manifest of the index's {} entry has sha256:{actual}, the index says {}",
                entry
                    .platform
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                entry.descriptor.digest
            )));
        }
        if let Some(c) = cache {
            c.put(&top_hex, top_bytes).await;
        }
        (bytes, ct, actual)
    } else {
        (top_bytes, top_type, top_hex.clone())
    };
    let manifest =
        parse_manifest(&manifest_bytes, content_type.as_deref()).map_err(PullError::Manifest)?;
    let layers = plugin_layers(&manifest).map_err(PullError::Manifest)?;
    if let Some(c) = cache {
        c.put(&manifest_hex, manifest_bytes).await;
    }

    // The blobs.
    let (content, from_cache) = match cached_blob(cache, &layers.content).await {
        Some(b) => (b, true),
        None => (
            download_blob(registry!(), cache, &layers.content).await?,
            false,
        ),
    };
    let wasm = match layers.layout {
        Layout::Wasm => content,
        Layout::Tar => {
            tokio::task::spawn_blocking(move || extract_plugin_wasm(&content, max_bytes))
                .await
                .map_err(|e| PullError::Layer {
                    digest: layers.content.digest.clone(),
                    message: e.to_string(),
                })?
                .map_err(|message| PullError::Layer {
                    digest: layers.content.digest.clone(),
                    message,
                })?
        }
    };
    let signature = match (&layers.signature, want_signature) {
        (Some(d), true) => Some(match cached_blob(cache, d).await {
            Some(b) => b,
            None => download_blob(registry!(), cache, d).await?,
        }),
        _ => None,
    };
    Ok(Pulled {
        wasm,
        signature,
        manifest_digest: format!("sha256:{top_hex}"),
        from_cache,
        layout: layers.layout,
    })
}

/// `GET …/manifests/{what}` (a tag or digest), accepting image manifests and indexes; the
/// body and its `Content-Type`.
async fn fetch_manifest(r: &Registry, what: &str) -> Result<(Vec<u8>, Option<String>), PullError> {
    let url = r.url(&format!("manifests/{what}"));
    let accept = format!(
        "{OCI_MANIFEST_MEDIA_TYPE}, {DOCKER_MANIFEST_MEDIA_TYPE}, {}",
        INDEX_MEDIA_TYPES.join(", ")
    );
    let a = get_ok(r, url, &[("accept", &accept)]).await?;
    if a.body.len() > MAX_MANIFEST_BYTES {
        return Err(PullError::Manifest(format!(
            "the manifest has {} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
            a.body.len()
        )));
    }
    let ct = a
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((a.body, ct))
}

/// `GET url`; an answer other than 2xx is an error naming the URL and the status.
async fn get_ok(r: &Registry, url: String, headers: &[(&str, &str)]) -> Result<Answer, PullError> {
    let a = r.request(Method::GET, &url, headers, None).await?;
    if !a.status.is_success() {
        return Err(RegistryError::Request {
            method: "GET".into(),
            url,
            reason: status_error(&a),
        }
        .into());
    }
    Ok(a)
}

async fn cached_blob(cache: Option<&Cache>, d: &Descriptor) -> Option<Vec<u8>> {
    let c = cache?;
    let b = c.get(d.sha256_hex()?).await?;
    (b.len() as u64 == d.size).then_some(b)
}

async fn download_blob(
    r: &Registry,
    cache: Option<&Cache>,
    d: &Descriptor,
) -> Result<Vec<u8>, PullError> {
    let blob_err = |message: String| PullError::Blob {
        digest: d.digest.clone(),
        message,
    };
    let want = d
        .sha256_hex()
        .ok_or_else(|| blob_err("not a sha256 digest".into()))?;
    if d.size > r.max_bytes() {
        return Err(blob_err(format!(
            "its descriptor says {} bytes, more than the limit of {}",
            d.size,
            r.max_bytes()
        )));
    }
    let url = r.url(&format!("blobs/{}", d.digest));
    let body = get_ok(r, url, &[]).await?.body;
    if body.len() as u64 != d.size {
        return Err(blob_err(format!(
            "{} bytes downloaded, its descriptor says {}",
            body.len(),
            d.size
        )));
    }
    let (body, actual) = tokio::task::spawn_blocking(move || {
        let h = hex(&Sha256::digest(&body));
        (body, h)
    })
    .await
    .map_err(|e| blob_err(e.to_string()))?;
    if actual != want {
        return Err(blob_err(format!(
            "the downloaded bytes' sha256 is {actual}"
        )));
    }
    if let Some(c) = cache {
        c.put(want, body.clone()).await;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<OciReference, String> {
        s.parse()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse() {
        let r = parse("127.0.0.1:5000/plugins/hello:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "plugins/hello");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_ref(), "v1");
        assert_eq!(r.to_string(), "127.0.0.1:5000/plugins/hello:v1");

        let r = parse(&format!("oci://ghcr.io/org/team/auth@{D}")).unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/team/auth");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("ghcr.io/org/team/auth@{D}"));

        let r = parse(&format!(
            "localhost/a:1.0-rc_1@{}",
            D.to_uppercase().replace("SHA256", "sha256")
        ))
        .unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.0-rc_1"));
        assert_eq!(r.digest.as_deref(), Some(D), "digest hex is lower-cased");
        assert_eq!(r.manifest_ref(), D, "the digest wins over the tag");

        let r = parse("[::1]:5000/a/b").unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(parse("registry.example.com/my_org/my-app__x/a.b").is_ok());
    }

    #[test]
    fn docker_hub_references_are_normalized() {
        for (s, repository, tag) in [
            ("docker.io/hello", "library/hello", "latest"),
            ("docker.io/hello:1.0", "library/hello", "1.0"),
            ("oci://index.docker.io/hello:v2", "library/hello", "v2"),
            ("Docker.IO/hello", "library/hello", "latest"),
            ("registry-1.docker.io/hello", "library/hello", "latest"),
            ("docker.io/org/plugin:1", "org/plugin", "1"),
            (
                "index.docker.io/org/team/plugin",
                "org/team/plugin",
                "latest",
            ),
            ("docker.io/library/hello", "library/hello", "latest"),
        ] {
            let r = parse(s).unwrap();
            assert_eq!(r.registry, "registry-1.docker.io", "{s}");
            assert_eq!(r.repository, repository, "{s}");
            assert_eq!(r.tag.as_deref(), Some(tag), "{s}");
        }
        let r = parse(&format!("docker.io/hello@{D}")).unwrap();
        assert_eq!(
            r.to_string(),
            format!("registry-1.docker.io/library/hello@{D}")
        );
        // A port makes it another registry; look-alikes are left alone.
        let r = parse("docker.io:5000/hello").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io:5000", "hello")
        );
        let r = parse("mydocker.io/hello").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("mydocker.io", "hello")
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        for (s, why) in [
            ("", "is empty"),
            ("hello", "\"hello\" names no registry"),
            ("hello:v1", "for Docker Hub, docker.io/library/hello)"),
            ("/plugins/hello", "registry \"\""),
            ("reg istry/a", "contains ' '"),
            ("registry:port/a", "invalid port"),
            ("registry:99999/a", "invalid port"),
            ("registry:0/a", "port 0"),
            ("-bad-.io/a", "not a host name"),
            ("[::1/a", "unclosed"),
            ("[nope]:5000/a", "invalid IPv6"),
            ("r.io/", "repository \"\" is empty"),
            ("r.io/Plugins", "invalid component \"Plugins\""),
            ("r.io/a//b", "invalid component \"\""),
            ("r.io/a/../b", "invalid component \"..\""),
            ("r.io/a-/b", "invalid component"),
            ("r.io/a.-b", "invalid component"),
            ("r.io/a:", "tag \"\""),
            ("r.io/a:-x", "tag \"-x\""),
            ("r.io/a:b:c", "tag \"b:c\""),
            ("r.io/a@sha256:abc", "digest"),
            ("r.io/a@md5:0123", "only sha256"),
            (
                "r.io/a@sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "digest",
            ),
        ] {
            match parse(s) {
                Ok(r) => panic!("{s:?} parsed as {r:?}"),
                Err(e) => assert!(e.contains(why), "{s:?}: {e:?} should say {why:?}"),
            }
        }
        let e = parse(&format!("hello@{D}")).unwrap_err();
        assert!(e.contains("docker.io/library/hello)"), "{e}");
        assert!(parse(&format!("r.io/{}", "a".repeat(256))).is_err());
        assert!(parse(&format!("r.io/a:{}", "t".repeat(129))).is_err());
    }

    fn manifest_json(layers: &[(&str, &[u8])]) -> Vec<u8> {
        let m = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
            config: Descriptor::of(WASM_CONFIG_MEDIA_TYPE, b"{}"),
            layers: layers.iter().map(|(t, b)| Descriptor::of(t, b)).collect(),
        };
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn layers_are_found_in_both_layouts() {
        let m = parse_manifest(
            &manifest_json(&[(WASM_LAYER_MEDIA_TYPE, b"w"), (SIGNATURE_MEDIA_TYPE, b"s")]),
            None,
        )
        .unwrap();
        let l = plugin_layers(&m).unwrap();
        assert_eq!(l.layout, Layout::Wasm);
        assert_eq!(l.content, Descriptor::of(WASM_LAYER_MEDIA_TYPE, b"w"));
        assert_eq!(
            l.signature,
            Some(Descriptor::of(SIGNATURE_MEDIA_TYPE, b"s"))
        );
        let m = parse_manifest(&manifest_json(&[(TAR_GZIP_MEDIA_TYPES[1], b"t")]), None).unwrap();
        let l = plugin_layers(&m).unwrap();
        assert_eq!(l.layout, Layout::Tar);
        assert_eq!(l.signature, None);
    }

    #[test]
    fn manifests_that_are_not_plugin_images_are_refused() {
        let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
            (b"not json".to_vec(), None, "not a JSON object"),
            (b"[]".to_vec(), None, "not an image manifest"),
            (b"{\"schemaVersion\":2,\"manifests\":[]}".to_vec(), None, "an image index where"),
            (
                b"{\"schemaVersion\":2}".to_vec(),
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                "an image index where",
            ),
            (b"{\"schemaVersion\":1,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\",\"size\":2},\"layers\":[]}".to_vec(), None, "schemaVersion 1"),
            (b"{\"schemaVersion\":2,\"layers\":[]}".to_vec(), None, "not an image manifest"),
            (b"{\"schemaVersion\":2,\"mediaType\":\"text/plain\"}".to_vec(), None, "unsupported manifest media type"),
            (b"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha512:00\",\"size\":2},\"layers\":[]}".to_vec(), None, "not sha256"),
            (b"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\",\"size\":-1},\"layers\":[]}".to_vec(), None, "not an image manifest"),
        ];
        for (bytes, ct, why) in cases {
            let e = parse_manifest(&bytes, ct).unwrap_err();
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
        for (layers, why) in [
            (
                manifest_json(&[(WASM_LAYER_MEDIA_TYPE, b"a"), (WASM_LAYER_MEDIA_TYPE, b"b")]),
                "2 layers",
            ),
            (
                manifest_json(&[
                    (TAR_GZIP_MEDIA_TYPES[0], b"a"),
                    (TAR_GZIP_MEDIA_TYPES[0], b"b"),
                ]),
                "2 tar+gzip layers",
            ),
            (manifest_json(&[("text/plain", b"a")]), "layers: text/plain"),
            (manifest_json(&[]), "layers: none"),
        ] {
            let m = parse_manifest(&layers, None).unwrap();
            let e = plugin_layers(&m).unwrap_err();
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
    }

    fn index_json(entries: &[(&str, Option<(&str, &str)>)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(tag, platform)| {
                let mut e =
                    serde_json::to_value(Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, tag.as_bytes()))
                        .unwrap();
                if let Some((os, arch)) = platform {
                    e["platform"] = serde_json::json!({ "os": os, "architecture": arch });
                }
                e
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX_MEDIA_TYPE,
            "manifests": manifests,
        }))
        .unwrap()
    }

    #[test]
    fn indexes_resolve_to_their_wasm_entry() {
        let index = index_json(&[
            ("amd64", Some(("linux", "amd64"))),
            ("p1", Some(("wasip1", "wasm"))),
            ("wasi", Some(("wasi", "wasm"))),
        ]);
        assert!(is_index(&index, None));
        let e = wasm_entry(&index).unwrap();
        assert_eq!(e.descriptor, Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, b"p1"));
        assert_eq!(e.platform.unwrap().to_string(), "wasip1/wasm");
        let e = wasm_entry(&index_json(&[("w", Some(("wasi", "wasm")))])).unwrap();
        assert_eq!(e.descriptor, Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, b"w"));
        // A Docker manifest list, told by its Content-Type only.
        assert!(is_index(
            b"{\"schemaVersion\":2}",
            Some("application/vnd.docker.distribution.manifest.list.v2+json")
        ));
        assert!(!is_index(
            &manifest_json(&[]),
            Some(OCI_MANIFEST_MEDIA_TYPE)
        ));
        assert!(!is_index(b"nope", None));
    }

    #[test]
    fn indexes_without_a_wasm_entry_name_their_platforms() {
        let e = wasm_entry(&index_json(&[
            ("a", Some(("linux", "amd64"))),
            ("c", Some(("wasip2", "wasm"))),
            ("b", None),
        ]))
        .unwrap_err();
        assert_eq!(
            e,
            "the image index has no entry for platform wasi/wasm or wasip1/wasm; its platforms: linux/amd64, wasip2/wasm, (no platform)"
        );
        let e = wasm_entry(&index_json(&[])).unwrap_err();
        assert!(e.ends_with("its platforms: none"), "{e}");
        // The entry must be an image manifest with a sha256 digest.
        let mut nested: serde_json::Value =
            serde_json::from_slice(&index_json(&[("n", Some(("wasi", "wasm")))])).unwrap();
        nested["manifests"][0]["mediaType"] = OCI_INDEX_MEDIA_TYPE.into();
        let e = wasm_entry(&serde_json::to_vec(&nested).unwrap()).unwrap_err();
        assert!(e.contains("not an image manifest"), "{e}");
        nested["manifests"][0]["mediaType"] = OCI_MANIFEST_MEDIA_TYPE.into();
        nested["manifests"][0]["digest"] = "sha512:00".into();
        let e = wasm_entry(&serde_json::to_vec(&nested).unwrap()).unwrap_err();
        assert!(e.contains("not sha256"), "{e}");
        assert!(wasm_entry(b"{\"schemaVersion\":2}")
            .unwrap_err()
            .contains("not valid"));
    }

    #[test]
    fn tar_layers_round_trip() {
        let wasm = b"\0asm\x01\0\0\0 and more".to_vec();
        let (layer, diff_id) = build_tar_layer(&wasm).unwrap();
        assert!(diff_id.starts_with("sha256:"));
        assert_eq!(extract_plugin_wasm(&layer, 1 << 20).unwrap(), wasm);
        // Reproducible.
        assert_eq!(build_tar_layer(&wasm).unwrap().0, layer);
        // Over the limit.
        let e = extract_plugin_wasm(&layer, 4).unwrap_err();
        assert!(e.contains("more than the limit"), "{e}");
    }

    fn tar_gz(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_size(data.len() as u64);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn tar_extraction_finds_plugin_wasm_and_refuses_bad_layers() {
        let reg = tar::EntryType::Regular;
        let layer = tar_gz(&[("README", b"x", reg), ("./plugin.wasm", b"module", reg)]);
        assert_eq!(extract_plugin_wasm(&layer, 100).unwrap(), b"module");
        // Not at the root: not found.
        let layer = tar_gz(&[("dir/plugin.wasm", b"module", reg)]);
        let e = extract_plugin_wasm(&layer, 100).unwrap_err();
        assert!(e.contains("holds no plugin.wasm"), "{e}");
        // A directory of that name.
        let layer = tar_gz(&[("plugin.wasm", b"", tar::EntryType::Directory)]);
        let e = extract_plugin_wasm(&layer, 100).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        // Not gzip, truncated gzip, empty.
        assert!(extract_plugin_wasm(b"plain text", 100).is_err());
        let good = tar_gz(&[("plugin.wasm", &[7u8; 5000], reg)]);
        for cut in [10, 30, good.len() / 2] {
            let e = extract_plugin_wasm(&good[..cut], 1 << 20).map(|v| v.len());
            assert!(e.is_err(), "cut at {cut}: {e:?}");
        }
        assert!(extract_plugin_wasm(b"", 100).is_err());
        // A gzip bomb is not decompressed beyond twice the limit (and 1 MiB).
        let big = tar_gz(&[
            ("zeros", &vec![0u8; 4 << 20], reg),
            ("plugin.wasm", b"m", reg),
        ]);
        let e = extract_plugin_wasm(&big, 1000).unwrap_err();
        assert!(
            e.contains("holds no plugin.wasm") || e.contains("valid tar"),
            "{e}"
        );
    }
}
