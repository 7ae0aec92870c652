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

/// The demo's API key (its digest is in `plugins.yaml`).
pub const API_KEY: &str = "demo-key";

/// A bearer token the demo's auth plugin accepts: HS256 with the demo secret, `sub`
/// `demo-user`, scope `read`, no expiry.
pub const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8ifQ.eyJzdWIiOiJkZW1vLXVzZXIiLCJzY29wZSI6InJlYWQifQ.6OjLcJHk0jhZfArCdAAhIYpHI0l-wzX6xKk3bT0081U";

/// The demo config with the given addresses; with `plugins`, a directory holding the files
/// of [`PLUGINS`], the demo route runs them.
pub fn demo_config(listen: &str, admin: &str, upstream: &str, plugins: Option<&Path>) -> String {
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
        let quoted = serde_json::to_string(&dir.to_string_lossy()).expect("a string serializes");
        yaml.push_str(&DEMO_PLUGINS.replace("{DIR}", &quoted[1..quoted.len() - 1]));
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
