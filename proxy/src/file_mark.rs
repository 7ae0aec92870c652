//! What a loaded config was read from, as the file watcher compares it with the disk: the
//! config file's digest and its local plugin files (each with its `.sig`) and secret files.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::source::PluginSource;

/// The local files a config's plugins are read from (each with its `.sig`), and the files
/// their `${file:…}` references read.
pub fn plugin_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for spec in config.all_plugins() {
        files.extend(spec.secrets.files.iter().cloned());
        if let PluginSource::Path(p) = &spec.source {
            let mut sig = p.clone().into_os_string();
            sig.push(".sig");
            files.push(p.clone());
            files.push(sig.into());
        }
    }
    files
}

/// What was loaded, as the watcher compares it with the disk: the sha256 of the config
/// file's bytes as read, and each plugin file's size, change time and inode (or absence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Plugin files of the config last read.
    pub files: Vec<PathBuf>,
    /// The digest.
    pub digest: [u8; 32],
}

impl Mark {
    /// The mark of a config file whose bytes hashed to `config_digest`, with these plugin
    /// files as they are on disk now.
    pub fn new(config_digest: [u8; 32], files: Vec<PathBuf>) -> Mark {
        let mut h = Sha256::new();
        h.update(config_digest);
        for f in &files {
            h.update(f.as_os_str().as_encoded_bytes());
            match std::fs::metadata(f) {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .unwrap_or_default();
                    h.update(m.len().to_le_bytes());
                    h.update(mtime.as_nanos().to_le_bytes());
                    h.update(m.ino().to_le_bytes());
                    h.update(m.ctime_nsec().to_le_bytes());
                }
                Err(_) => h.update(b"missing"),
            }
        }
        Mark {
            files,
            digest: h.finalize().into(),
        }
    }

    /// The mark of what is on disk now, for the same plugin files.
    pub fn on_disk(config: &Path, files: &[PathBuf]) -> [u8; 32] {
        let config_digest = std::fs::read(config).map_or([0; 32], |b| Sha256::digest(&b).into());
        Mark::new(config_digest, files.to_vec()).digest
    }
}
