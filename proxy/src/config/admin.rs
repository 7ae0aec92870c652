//! `admin:` — the admin listener, never the same socket as client traffic.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{parse_socket_addr, ConfigError};

/// `admin:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin API (default `127.0.0.1:9901`).
    #[serde(default = "default_admin_address")]
    pub address: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: default_admin_address(),
        }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".to_string()
}

/// The validated admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where `/ready`, `/metrics` and `/config` are served.
    pub address: SocketAddr,
}

impl AdminFile {
    pub(super) fn validate(&self, errors: &mut Vec<ConfigError>) -> Option<Admin> {
        match parse_socket_addr(&self.address) {
            Ok(address) => {
                if !address.ip().is_loopback() {
                    tracing::warn!(
                        %address,
                        "the admin API listens on a non-loopback address; anyone who can reach it can read the config and metrics"
                    );
                }
                Some(Admin { address })
            }
            Err(e) => {
                errors.push(ConfigError::invalid("admin.address", e));
                None
            }
        }
    }
}
