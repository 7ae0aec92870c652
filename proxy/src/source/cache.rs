//! The local cache of downloaded plugin binaries, OCI manifests and blobs.
//!
//! Entries are content-addressed: `DIR/sha256/<hex>` holds bytes whose sha256 is `<hex>`
//! (a `.wasm` fetched from a URL, an OCI manifest, an OCI layer). An entry is written to a
//! temporary file in the same directory and renamed into place, so a reader never sees half a
//! file, and it is verified again every time it is read: an entry whose digest no longer
//! matches is deleted and treated as missing. `DIR/signatures/<hex>.sig` holds the signature
//! of the `.wasm` whose sha256 is `<hex>` for URL sources (a signature is checked with the
//! configured key every time it is used, so it needs no digest of its own).
//!
//! The directory is `$SLUICE_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/sluice/plugins`, else
//! `$HOME/.cache/sluice/plugins`. Failing to write the cache is logged, never an error: the
//! binary was fetched and checked, it is only not kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::wasm::engine::hex;

/// The environment variable naming the cache directory.
pub const CACHE_ENV: &str = "SLUICE_PLUGIN_CACHE";

/// The cache directory as the environment says (see the module documentation); `None` when
/// neither `$SLUICE_PLUGIN_CACHE`, `$XDG_CACHE_HOME` nor `$HOME` is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_ENV) {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("sluice/plugins"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache/sluice/plugins"))
}

/// Whether `s` is a sha256 in lower-case hex (what cache keys are).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of digest `hex` is (whether or not it exists).
    pub fn path_of(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(hex)
    }

    fn signature_path(&self, wasm_hex: &str) -> PathBuf {
        self.dir.join("signatures").join(format!("{wasm_hex}.sig"))
    }

    /// The bytes whose sha256 is `hex`, if cached and intact. A corrupt entry is removed.
    pub async fn get(&self, hex: &str) -> Option<Vec<u8>> {
        if !is_sha256_hex(hex) {
            return None;
        }
        let path = self.path_of(hex);
        let want = hex.to_string();
        tokio::task::spawn_blocking(move || read_verified(&path, &want))
            .await
            .ok()
            .flatten()
    }

    /// Keeps `bytes` under their digest `hex` (the caller computed it from these bytes).
    pub async fn put(&self, hex: &str, bytes: Vec<u8>) {
        if !is_sha256_hex(hex) {
            return;
        }
        let path = self.path_of(hex);
        if let Err(e) = spawn_write(path.clone(), bytes).await {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the plugin cache");
        }
    }

    /// The cached signature of the `.wasm` whose sha256 is `wasm_hex`, if any.
    pub async fn get_signature(&self, wasm_hex: &str) -> Option<Vec<u8>> {
        if !is_sha256_hex(wasm_hex) {
            return None;
        }
        tokio::fs::read(self.signature_path(wasm_hex)).await.ok()
    }

    /// Keeps the signature of the `.wasm` whose sha256 is `wasm_hex` (after it verified).
    pub async fn put_signature(&self, wasm_hex: &str, signature: Vec<u8>) {
        if !is_sha256_hex(wasm_hex) {
            return;
        }
        let path = self.signature_path(wasm_hex);
        if let Err(e) = spawn_write(path.clone(), signature).await {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the plugin cache");
        }
    }
}

fn read_verified(path: &Path, want: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let have = hex(&Sha256::digest(&bytes));
    if have == want {
        return Some(bytes);
    }
    tracing::warn!(
        path = %path.display(),
        expected = want,
        actual = %have,
        "corrupt plugin cache entry removed"
    );
    let _ = std::fs::remove_file(path);
    None
}

async fn spawn_write(path: PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// Writes `bytes` to a temporary file beside `path`, then renames it to `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_are_verified_when_read() {
        let dir = std::env::temp_dir().join(format!("sluice-cache-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::new(&dir);
        let bytes = b"some module".to_vec();
        let key = hex(&Sha256::digest(&bytes));
        assert_eq!(cache.get(&key).await, None);
        cache.put(&key, bytes.clone()).await;
        assert_eq!(cache.get(&key).await, Some(bytes));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(&key)]);
        // A changed entry is a miss, and is removed.
        std::fs::write(cache.path_of(&key), b"tampered").unwrap();
        assert_eq!(cache.get(&key).await, None);
        assert!(!cache.path_of(&key).exists());
        // Keys that are not digests are never paths.
        assert_eq!(cache.get("../../etc/passwd").await, None);
        cache.put("../x", b"x".to_vec()).await;
        assert!(!dir.join("x").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
