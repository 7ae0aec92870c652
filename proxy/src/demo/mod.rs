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

/// The example plugin the demo runs, as `cargo build --target wasm32-wasip1 -p
/// sluice-plugin-hello` names it.
pub const HELLO_WASM: &str = "sluice_plugin_hello.wasm";

/// The demo config with the given addresses; with `plugins`, a directory holding
/// [`HELLO_WASM`], the demo route runs that plugin.
pub fn demo_config(listen: &str, admin: &str, upstream: &str, plugins: Option<&Path>) -> String {
    let mut yaml = DEMO_CONFIG
        .replace("{LISTEN}", listen)
        .replace("{ADMIN}", admin)
        .replace("{UPSTREAM}", upstream)
        .replace("{PLUGINS}", if plugins.is_some() { "hello" } else { "" });
    if let Some(dir) = plugins {
        // JSON strings are valid YAML scalars, whatever the path holds.
        let path = serde_json::to_string(&dir.join(HELLO_WASM).to_string_lossy())
            .expect("a string serializes");
        yaml.push_str(&format!(
            "plugins:\n  hello:\n    path: {path}\n    config: {{ greeting: \"hello from the Sluice demo\" }}\n"
        ));
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
