//! `admin:` — the admin listener, never the same socket as client traffic.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{parse_socket_addr, ConfigError};

/// `admin:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin API (default `127.0.0.1:9901`).
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// File holding a bearer token; when set, every endpoint but `/ready` and `/metrics`
    /// requires `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Allow a non-loopback address without a token (default false: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: default_admin_address(),
            token_file: None,
            allow_insecure: None,
        }
    }
}

/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin bearer token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether `presented` (the bytes after `Bearer `) is the token, in time independent of
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want = self.0.as_bytes();
        if presented.len() != want.len() {
            return false;
        }
        presented
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The token itself, to send it (`sluice reload`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Reads a token file: its content with surrounding white space removed.
pub fn read_token_file(path: &Path) -> Result<AdminToken, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{} holds a token of {} characters; at least {MIN_TOKEN_LEN} are required",
            path.display(),
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token must be printable ASCII without spaces",
            path.display()
        ));
    }
    Ok(AdminToken(token.to_string()))
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".to_string()
}

/// The validated admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where the admin API is served.
    pub address: SocketAddr,
    /// The bearer token its protected endpoints require, if any.
    pub token: Option<AdminToken>,
}

impl AdminFile {
    pub(super) fn validate(&self, base: &Path, errors: &mut Vec<ConfigError>) -> Option<Admin> {
        let before = errors.len();
        let token = self.token_file.as_ref().and_then(|f| {
            read_token_file(&base.join(f))
                .map_err(|e| errors.push(ConfigError::invalid("admin.token_file", e)))
                .ok()
        });
        let address = match parse_socket_addr(&self.address) {
            Ok(address) => address,
            Err(e) => {
                errors.push(ConfigError::invalid("admin.address", e));
                return None;
            }
        };
        if !address.ip().is_loopback() && self.token_file.is_none() {
            if self.allow_insecure == Some(true) {
                tracing::warn!(
                    %address,
                    "the admin API listens on a non-loopback address without a token \
                     (admin.allow_insecure): anyone who can reach it can read the config and reload it"
                );
            } else {
                errors.push(ConfigError::invalid(
                    "admin.address",
                    format!(
                        "{address} is not a loopback address: set admin.token_file (a bearer \
                         token the API will require), or admin.allow_insecure: true to serve it \
                         to anyone who can reach it"
                    ),
                ));
            }
        }
        (errors.len() == before).then_some(Admin { address, token })
    }
}
