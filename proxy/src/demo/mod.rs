//! `sluice demo`: the demo upstream and the proxy in front of it, on a built-in config.

pub mod upstream;

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// The built-in demo config; `{LISTEN}`, `{ADMIN}` and `{UPSTREAM}` are replaced by addresses,
/// `{PLUGINS}` by the route's plugin list.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// The plugins of the demo route, from a directory (`{DIR}`).
pub const DEMO_PLUGINS: &str = include_str!("plugins.yaml");

/// The plugins the demo route runs, in order, and their files.
pub const PLUGINS: [(&str, &str); 3] = [
    ("auth", "sluice_plugin_auth.wasm"),
    ("rate-limit", "sluice_plugin_rate_limit.wasm"),
    ("headers", "sluice_plugin_headers.wasm"),
];

/// The files of the demo's secret, as `(name, content)`: what `plugins.yaml` reads with
/// `${file:…}` references, like a Kubernetes Secret mounted as a directory.
pub const SECRETS: [(&str, &str); 2] = [
    (
        "api-key-demo.sha256",
        include_str!("secrets/api-key-demo.sha256"),
    ),
    ("jwt-demo.k", include_str!("secrets/jwt-demo.k")),
];

/// Writes [`SECRETS`] into `dir` (created, readable by its owner only), replacing what is
/// there.
pub fn write_secrets(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for (name, content) in SECRETS {
        let path = dir.join(name);
        std::fs::write(&path, content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The demo's API key (its digest is in `secrets/`).
pub const API_KEY: &str = "demo-key";

/// A bearer token the demo's auth plugin accepts: HS256 with the demo secret, `sub`
/// `demo-user`, scope `read`, no expiry.
pub const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8ifQ.eyJzdWIiOiJkZW1vLXVzZXIiLCJzY29wZSI6InJlYWQifQ.6OjLcJHk0jhZfArCdAAhIYpHI0l-wzX6xKk3bT0081U";

/// The demo config with the given addresses; with `plugins`, a directory holding the files
/// of [`PLUGINS`], the demo route runs them, reading their secrets from `secrets` (see
/// [`write_secrets`]).
pub fn demo_config(
    listen: &str,
    admin: &str,
    upstream: &str,
    plugins: Option<&Path>,
    secrets: &Path,
) -> String {
    let names: Vec<&str> = PLUGINS.iter().map(|(n, _)| *n).collect();
    let mut yaml = DEMO_CONFIG
        .replace("{LISTEN}", listen)
        .replace("{ADMIN}", admin)
        .replace("{UPSTREAM}", upstream)
        .replace(
            "{PLUGINS}",
            &if plugins.is_some() {
                names.join(", ")
            } else {
                String::new()
            },
        );
    if let Some(dir) = plugins {
        // JSON string escapes are valid in a YAML double-quoted string.
        let quoted = |p: &Path| {
            let q = serde_json::to_string(&p.to_string_lossy()).expect("a string serializes");
            q[1..q.len() - 1].to_string()
        };
        yaml.push_str(
            &DEMO_PLUGINS
                .replace("{DIR}", &quoted(dir))
                .replace("{SECRETS}", &quoted(secrets)),
        );
    }
    yaml
}

/// The demo upstream as a pingora background service.
pub struct DemoUpstream {
    listener: Mutex<Option<std::net::TcpListener>>,
    name: String,
}

impl DemoUpstream {
    /// Serves the demo upstream on an already bound listener.
    pub fn new(listener: std::net::TcpListener, name: &str) -> Self {
        DemoUpstream {
            listener: Mutex::new(Some(listener)),
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl BackgroundService for DemoUpstream {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(l) = self.listener.lock().expect("not poisoned").take() else {
            return;
        };
        match l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
        {
            Ok(l) => upstream::serve(l, &self.name).await,
            Err(e) => tracing::error!(error = %e, "demo upstream listener unusable"),
        }
    }
}
