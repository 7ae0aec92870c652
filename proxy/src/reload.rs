//! What starts a reload besides `POST /reload` (see `admin.rs`): `SIGHUP`, and the config file
//! (or a local plugin file it names) changing on disk.
//!
//! The files are polled (`reload.poll_interval_ms`, default 250 ms) rather than watched with
//! inotify: polling follows a Kubernetes ConfigMap's symlink swap, a file replaced by rename,
//! and network file systems alike. A change must then stay quiet for `reload.debounce_ms`
//! (default 100 ms) before the reload starts, so an editor's write-then-rename or a copy in
//! progress counts once. A change that produced a refused reload is not retried until the
//! files change again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::runtime::{State, Trigger};
use crate::source::PluginSource;

/// `SIGHUP` and the file watcher, as a pingora background service.
pub struct ReloadTriggers {
    state: Arc<State>,
}

impl ReloadTriggers {
    /// Triggers for `state`'s config file (none for a process without one).
    pub fn new(state: Arc<State>) -> Self {
        ReloadTriggers { state }
    }
}

#[async_trait]
impl BackgroundService for ReloadTriggers {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let state = self.state.clone();
        tokio::spawn(async move { on_sighup(state).await });
        watch(self.state.clone()).await;
    }
}

async fn on_sighup(state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP; reload with POST /reload instead");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let _ = state.reload(Trigger::Signal).await;
    }
}

/// The local files a config's plugins are read from (each with its `.sig`).
pub(crate) fn plugin_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for spec in &config.plugins {
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
pub(crate) struct Mark {
    /// Plugin files of the config last read.
    pub files: Vec<PathBuf>,
    /// The digest.
    pub digest: [u8; 32],
}

impl Mark {
    /// The mark of a config file whose bytes hashed to `config_digest`, with these plugin
    /// files as they are on disk now.
    pub(crate) fn new(config_digest: [u8; 32], files: Vec<PathBuf>) -> Mark {
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
    fn on_disk(config: &Path, files: &[PathBuf]) -> [u8; 32] {
        let config_digest = std::fs::read(config).map_or([0; 32], |b| Sha256::digest(&b).into());
        Mark::new(config_digest, files.to_vec()).digest
    }
}

async fn watch(state: Arc<State>) {
    let Some(path) = state.config_path().map(PathBuf::from) else {
        return;
    };
    let mut seen = [0u8; 32];
    let mut seen_at = Instant::now();
    loop {
        let settings = state.current().config.reload;
        tokio::time::sleep(settings.poll_interval).await;
        if !settings.watch || state.is_draining() {
            continue;
        }
        let Some(loaded) = state.watch_mark() else {
            continue;
        };
        let now = Mark::on_disk(&path, &loaded.files);
        if now != seen {
            seen = now;
            seen_at = Instant::now();
            continue;
        }
        // Unchanged since the last poll, for long enough, and not what was loaded last (by any
        // trigger, successfully or not): reload.
        if now != loaded.digest && seen_at.elapsed() >= settings.debounce {
            tracing::info!(file = %path.display(), "config or plugin file changed on disk: reloading");
            let _ = state.reload(Trigger::Watch).await;
        }
    }
}

/// Asks a running sluice to reload through its admin API (`sluice reload`). Returns the
/// response body, or an error when the request failed or the reload was refused.
pub fn request_reload(
    admin: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let answer = crate::admin_client::call(admin, "POST", "/reload", token, timeout)?;
    if answer.status == 200 {
        Ok(answer.body)
    } else {
        Err(answer.body.trim().to_string())
    }
}
