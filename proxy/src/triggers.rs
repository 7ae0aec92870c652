//! What starts a reload besides `POST /reload` (see `admin.rs`): `SIGHUP`, and the config file
//! (or a local plugin file it names) changing on disk.
//!
//! The files are polled (`reload.poll_interval_ms`, default 250 ms) rather than watched with
//! inotify: polling follows a Kubernetes ConfigMap's symlink swap, a file replaced by rename,
//! and network file systems alike. A change must then stay quiet for `reload.debounce_ms`
//! (default 100 ms) before the reload starts, so an editor's write-then-rename or a copy in
//! progress counts once. A change that produced a refused reload is not retried until the
//! files change again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::file_mark::Mark;
use crate::state::{State, Trigger};

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
