//! `url:` sources: a `.wasm` downloaded over HTTP(S), checked against its required `sha256`,
//! and kept in the cache under that digest (a cached binary needs no network). Its signature,
//! when one is configured, is `<url>.sig` (the path of the URL with `.sig` appended; the query
//! is kept).

use sha2::{Digest as _, Sha256};

use super::cache::Cache;
use super::http::{DownloadError, Http};
use super::signature::{SignatureCheck, SignatureError};
use crate::wasm::engine::hex;

/// A downloaded (or cached) binary.
#[derive(Debug)]
pub struct Downloaded {
    /// The module.
    pub bytes: Vec<u8>,
    /// Its sha256.
    pub sha256: String,
    /// Whether it came from the cache.
    pub from_cache: bool,
}

/// Why a `url:` source failed.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// The download failed.
    #[error("cannot fetch {url}: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        reason: DownloadError,
    },
    /// The bytes are not the configured ones.
    #[error("sha256 of {url} is {actual}, the config expects {expected}")]
    Digest {
        /// The URL.
        url: String,
        /// Computed.
        actual: String,
        /// Configured.
        expected: String,
    },
}

/// `<url>.sig`: the path gets `.sig`, the query and fragment stay.
pub fn signature_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let path = format!("{}.sig", u.path());
            u.set_path(&path);
            u.to_string()
        }
        Err(_) => format!("{url}.sig"),
    }
}

/// Fetches `url` (or takes it from the cache), checking it against `expected` (lower-case
/// hex). Bytes that do not match are refused and not cached.
pub async fn fetch(
    http: impl FnOnce() -> Result<Http, String>,
    url: &str,
    expected: &str,
    cache: Option<&Cache>,
) -> Result<Downloaded, UrlError> {
    if let Some(c) = cache {
        if let Some(bytes) = c.get(expected).await {
            return Ok(Downloaded {
                bytes,
                sha256: expected.to_string(),
                from_cache: true,
            });
        }
    }
    let download = |reason| UrlError::Download {
        url: url.to_string(),
        reason,
    };
    let http = http().map_err(|m| download(DownloadError::Transport(m)))?;
    let bytes = http
        .get_ok(http.client().get(url))
        .await
        .map_err(download)?
        .body;
    let (bytes, actual) = tokio::task::spawn_blocking(move || {
        let h = hex(&Sha256::digest(&bytes));
        (bytes, h)
    })
    .await
    .map_err(|e| download(DownloadError::Transport(e.to_string())))?;
    if actual != expected {
        return Err(UrlError::Digest {
            url: url.to_string(),
            actual,
            expected: expected.to_string(),
        });
    }
    if let Some(c) = cache {
        c.put(expected, bytes.clone()).await;
    }
    Ok(Downloaded {
        bytes,
        sha256: actual,
        from_cache: false,
    })
}

/// Checks the signature of the module at `url` whose sha256 is `sha256`: a cached one that
/// verifies with `check`, else `<url>.sig` (kept in the cache once it verified).
pub async fn signature(
    http: impl FnOnce() -> Result<Http, String>,
    url: &str,
    module: &[u8],
    sha256: &str,
    check: &SignatureCheck,
    cache: Option<&Cache>,
) -> Result<(), SignatureError> {
    if let Some(c) = cache {
        if let Some(sig) = c.get_signature(sha256).await {
            if check.verify(module, &sig).is_ok() {
                return Ok(());
            }
        }
    }
    let sig_url = signature_url(url);
    let missing = |m: String| SignatureError::Missing(format!("cannot fetch {sig_url}: {m}"));
    let http = http().map_err(missing)?;
    let sig = http
        .get_ok(http.client().get(&sig_url))
        .await
        .map_err(|e| missing(e.to_string()))?
        .body;
    check.verify(module, &sig)?;
    if let Some(c) = cache {
        c.put_signature(sha256, sig).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_urls_append_to_the_path() {
        assert_eq!(
            signature_url("https://example.com/p/auth.wasm"),
            "https://example.com/p/auth.wasm.sig"
        );
        assert_eq!(
            signature_url("https://example.com/auth.wasm?v=2"),
            "https://example.com/auth.wasm.sig?v=2"
        );
        assert_eq!(signature_url("not a url"), "not a url.sig");
    }
}
