//! `sluice plugin push`: a plugin as an OCI image, pushed with the distribution API.
//!
//! The image has a config blob, the module's layer (the `.wasm` itself with media type
//! [`WASM_LAYER_MEDIA_TYPE`], or a tar+gzip layer holding `plugin.wasm`) and, when signed, a
//! signature layer ([`SIGNATURE_MEDIA_TYPE`], base64 text of the ed25519 signature of the
//! `.wasm` bytes). Blobs are uploaded monolithically (`POST /v2/<repo>/blobs/uploads/`, then
//! `PUT <location>?digest=…`), skipping those the registry already has; the manifest is `PUT`
//! under the tag.
//!
//! Each blob's outcome is written to stderr as it ends (uploaded, with its size and time, or
//! already in the registry); on a terminal, a line also shows the bytes of the blob being
//! uploaded so far.

use std::path::Path;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use ring::signature::Ed25519KeyPair;
use sha2::{Digest as _, Sha256};

use super::credentials::DockerConfig;
use super::http::status_error;
use super::oci::{
    build_tar_layer, Descriptor, Layout, Manifest, OciReference, OCI_CONFIG_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE, TAR_GZIP_MEDIA_TYPES, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
};
use super::registry::{Body, OnSent, Registry, RegistryError};
use super::signature::{load_private_key, sign, signature_text, SIGNATURE_MEDIA_TYPE};
use super::FetchOptions;
use crate::wasm::engine::hex;

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The module or the target is not acceptable.
    #[error("{0}")]
    Input(String),
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The target, with the manifest digest (`REGISTRY/REPO:TAG@sha256:…`).
    pub reference: OciReference,
    /// The manifest's digest, `sha256:<hex>`.
    pub manifest_digest: String,
}

impl std::fmt::Display for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reference.fmt(f)
    }
}

/// Pushes `wasm` to `target` (which has a tag and no digest) in `layout`, signed with
/// `signer` if given.
pub async fn push(
    wasm: &[u8],
    target: &OciReference,
    layout: Layout,
    signer: Option<&Ed25519KeyPair>,
    options: &FetchOptions,
) -> Result<Pushed, PushError> {
    if target.digest.is_some() {
        return Err(PushError::Input(format!(
            "{target}: a push target is REGISTRY/REPOSITORY:TAG, without a digest"
        )));
    }
    let tag = target.tag.clone().unwrap_or_else(|| "latest".into());
    if !wasm.starts_with(b"\0asm") {
        return Err(PushError::Input(
            "the file is not a WebAssembly module (it does not start with \\0asm)".into(),
        ));
    }
    if wasm.len() as u64 > options.max_bytes {
        return Err(PushError::Input(format!(
            "the module has {} bytes; plugins larger than {} bytes are refused when pulled",
            wasm.len(),
            options.max_bytes
        )));
    }
    let http = options.http().map_err(PushError::Input)?;
    let registry = Registry::new(
        http,
        target,
        &options.insecure_registries,
        options.credentials.for_registry(&target.registry),
        "pull,push",
    );

    let (layer_bytes, layer_type, config_bytes, config_type) = match layout {
        Layout::Wasm => (
            wasm.to_vec(),
            WASM_LAYER_MEDIA_TYPE,
            b"{}".to_vec(),
            WASM_CONFIG_MEDIA_TYPE,
        ),
        Layout::Tar => {
            let (layer, diff_id) = build_tar_layer(wasm)
                .map_err(|e| PushError::Input(format!("cannot build the tar layer: {e}")))?;
            let config = serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "rootfs": { "type": "layers", "diff_ids": [diff_id] },
                "config": {},
            });
            (
                layer,
                TAR_GZIP_MEDIA_TYPES[0],
                serde_json::to_vec(&config).unwrap_or_default(),
                OCI_CONFIG_MEDIA_TYPE,
            )
        }
    };
    let config = upload(&registry, "config", config_bytes, config_type).await?;
    let layer = upload(&registry, "layer", layer_bytes, layer_type).await?;
    let mut layers = vec![layer.clone()];
    if let Some(key) = signer {
        let text = signature_text(&sign(key, wasm)).into_bytes();
        layers.push(upload(&registry, "signature", text, SIGNATURE_MEDIA_TYPE).await?);
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
        config,
        layers,
    };
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| PushError::Input(format!("cannot encode the manifest: {e}")))?;
    let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
    let url = registry.url(&format!("manifests/{tag}"));
    let body = Body {
        content_type: OCI_MANIFEST_MEDIA_TYPE.into(),
        bytes: bytes.into(),
        on_sent: None,
    };
    let a = registry
        .request(Method::PUT, &url, &[], Some(&body))
        .await?;
    if a.status != StatusCode::CREATED && !a.status.is_success() {
        return Err(RegistryError::Request {
            method: "PUT".into(),
            url,
            reason: status_error(&a),
        }
        .into());
    }
    if let Some(theirs) = a
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        if theirs != digest {
            return Err(RegistryError::Protocol {
                url,
                message: format!(
                    "the registry says the manifest's digest is {theirs}, it is {digest}"
                ),
            }
            .into());
        }
    }
    tracing::debug!(target = %target, digest = %digest, "plugin pushed");
    Ok(Pushed {
        reference: OciReference {
            registry: target.registry.clone(),
            repository: target.repository.clone(),
            tag: Some(tag),
            digest: Some(digest.clone()),
        },
        manifest_digest: digest,
    })
}

/// `sluice plugin push`: pushes the module in `file` to `target` (`oci://REGISTRY/REPO:TAG`),
/// signed with the private key in `sign` if given, with [`FetchOptions::from_env`] (and the
/// Docker `config.json` at `credentials_file` instead of the default one, if given); from
/// synchronous code outside any async runtime.
pub fn push_file(
    file: &Path,
    target: &str,
    layout: Layout,
    sign: Option<&Path>,
    credentials_file: Option<&Path>,
) -> Result<Pushed, PushError> {
    let rest = target.strip_prefix("oci://").ok_or_else(|| {
        PushError::Input(format!("{target:?}: the target is oci://REGISTRY/REPO:TAG"))
    })?;
    let reference: OciReference = rest
        .parse()
        .map_err(|e| PushError::Input(format!("{target:?}: {e}")))?;
    let options = match credentials_file {
        None => FetchOptions::from_env(),
        Some(path) => {
            let docker = DockerConfig::load(path).map_err(|e| {
                PushError::Input(format!("--credentials-file {}: {e}", path.display()))
            })?;
            FetchOptions::from_env_with_docker(Some(Arc::new(docker)))
        }
    };
    let wasm = std::fs::read(file)
        .map_err(|e| PushError::Input(format!("cannot read {}: {e}", file.display())))?;
    let key = sign
        .map(load_private_key)
        .transpose()
        .map_err(|e| PushError::Input(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PushError::Input(format!("cannot start a runtime: {e}")))?;
    rt.block_on(push(&wasm, &reference, layout, key.as_ref(), &options))
        .map_err(|e| match e {
            PushError::Input(m) => PushError::Input(format!("{}: {m}", file.display())),
            e => e,
        })
}

/// Uploads one blob (`what`: config, layer, signature) unless the registry has it; its
/// descriptor.
async fn upload(
    registry: &Registry,
    what: &str,
    bytes: Vec<u8>,
    media_type: &str,
) -> Result<Descriptor, PushError> {
    let d = Descriptor::of(media_type, &bytes);
    let blob_url = registry.url(&format!("blobs/{}", d.digest));
    let head = registry.request(Method::HEAD, &blob_url, &[], None).await?;
    if head.status.is_success() {
        eprintln!("{what} {}: already in the registry", d.digest);
        return Ok(d);
    }
    let started = std::time::Instant::now();
    let start_url = registry.url("blobs/uploads/");
    let a = registry
        .request(Method::POST, &start_url, &[], None)
        .await?;
    if a.status != StatusCode::ACCEPTED {
        return Err(RegistryError::Request {
            method: "POST".into(),
            url: start_url,
            reason: status_error(&a),
        }
        .into());
    }
    let location = a
        .headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Protocol {
            url: start_url.clone(),
            message: "202 without a Location header".into(),
        })?;
    let mut put_url = registry
        .resolve(location)
        .map_err(|message| RegistryError::Protocol {
            url: start_url.clone(),
            message,
        })?;
    put_url.query_pairs_mut().append_pair("digest", &d.digest);
    let total = bytes.len() as u64;
    let body = Body {
        content_type: "application/octet-stream".into(),
        bytes: bytes.into(),
        on_sent: terminal_progress(what, &d.digest, total),
    };
    let a = registry
        .request(Method::PUT, put_url.as_str(), &[], Some(&body))
        .await;
    if body.on_sent.is_some() {
        eprint!("\r\x1b[2K");
    }
    let a = a?;
    if !a.status.is_success() {
        return Err(RegistryError::Request {
            method: "PUT".into(),
            url: put_url.to_string(),
            reason: status_error(&a),
        }
        .into());
    }
    eprintln!(
        "{what} {}: {total} bytes uploaded in {} ms",
        d.digest,
        started.elapsed().as_millis()
    );
    Ok(d)
}

/// On a terminal, a callback redrawing `uploading WHAT DIGEST: SENT/TOTAL bytes (P %)` on
/// stderr.
fn terminal_progress(what: &str, digest: &str, total: u64) -> Option<OnSent> {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let label = format!("uploading {what} {digest}");
    Some(OnSent(Arc::new(move |sent| {
        let percent = (sent * 100).checked_div(total).unwrap_or(100);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{label}: {sent}/{total} bytes ({percent} %)");
        let _ = err.flush();
    })))
}
