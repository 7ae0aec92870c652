//! `sluice demo`: the demo upstream and the proxy in front of it, on a built-in config.

pub mod upstream;

use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// The built-in demo config; `{LISTEN}`, `{ADMIN}` and `{UPSTREAM}` are replaced by addresses.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// The demo config with the given addresses.
pub fn demo_config(listen: &str, admin: &str, upstream: &str) -> String {
    DEMO_CONFIG
        .replace("{LISTEN}", listen)
        .replace("{ADMIN}", admin)
        .replace("{UPSTREAM}", upstream)
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
