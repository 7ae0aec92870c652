//! `listeners:` — where clients connect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{parse_socket_addr, ConfigError};

/// One entry of `listeners:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// A name for logs and metrics; unique.
    pub name: String,
    /// `ip:port` to bind.
    pub address: String,
    /// Terminate TLS here (HTTP/1.1 and HTTP/2 through ALPN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// Accept HTTP/2 without TLS (prior knowledge) on a plain listener (default true).
    #[serde(default = "yes")]
    pub h2c: bool,
    /// Largest request header (request line and every header line) accepted; larger ones get
    /// 431 (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_header_bytes: Option<usize>,
    /// Largest request body accepted; larger ones get 413 (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Most connections served at once; more are closed on arrival (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Time a client has to send a whole HTTP/1 request head, from the connection's start (first
    /// request) or the head's first byte (later ones); past it, 408 and the connection closes
    /// (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_timeout_ms: Option<u64>,
    /// An HTTP/2 connection with no request in flight for this long is closed (default 60000;
    /// 0: never). Also ends connections that only send control frames, or stop reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_idle_timeout_ms: Option<u64>,
}

/// Default `h2_idle_timeout_ms`.
pub const DEFAULT_H2_IDLE_TIMEOUT_MS: u64 = 60_000;

/// Default `max_request_header_bytes`.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

fn yes() -> bool {
    true
}

/// `tls:` of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain; relative to the config file.
    pub cert: String,
    /// PEM private key; relative to the config file.
    pub key: String,
    /// Offer HTTP/2 through ALPN (default true).
    #[serde(default = "yes")]
    pub h2: bool,
}

/// A validated listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Bound address.
    pub address: SocketAddr,
    /// TLS settings, when TLS is terminated here.
    pub tls: Option<ListenerTls>,
    /// Plain HTTP/2 allowed.
    pub h2c: bool,
    /// Request header size limit (431 beyond).
    pub max_request_header_bytes: usize,
    /// Request body size limit (413 beyond).
    pub max_request_body_bytes: Option<u64>,
    /// Connection cap.
    pub max_connections: Option<usize>,
    /// Deadline for reading a whole request head.
    pub request_header_timeout: std::time::Duration,
    /// Idle HTTP/2 connections are closed after this (`None`: never).
    pub h2_idle_timeout: Option<std::time::Duration>,
}

/// Validated TLS files of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificate chain path.
    pub cert: PathBuf,
    /// Private key path.
    pub key: PathBuf,
    /// Offer h2 through ALPN.
    pub h2: bool,
}

pub(super) fn check_name(field: &str, name: &str, errors: &mut Vec<ConfigError>) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        errors.push(ConfigError::invalid(
            field,
            format!(
                "{name:?} is not a valid name (1-64 characters: letters, digits, '-', '_', '.')"
            ),
        ));
    }
}

/// Resolves `path` against `base` and checks that it is a readable file.
pub(super) fn existing_file(
    field: &str,
    path: &str,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<PathBuf> {
    let p = base.join(path);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Some(p),
        Ok(_) => {
            errors.push(ConfigError::invalid(
                field,
                format!("{} is not a file", p.display()),
            ));
            None
        }
        Err(e) => {
            errors.push(ConfigError::invalid(
                field,
                format!("cannot read {}: {e}", p.display()),
            ));
            None
        }
    }
}

impl ListenerFile {
    pub(super) fn validate(
        &self,
        field: &str,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Listener> {
        let before = errors.len();
        check_name(&format!("{field}.name"), &self.name, errors);
        let address = match self.address.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                // Listeners bind; allow names like localhost:8080 too.
                match parse_socket_addr(&self.address) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        errors.push(ConfigError::invalid(format!("{field}.address"), e));
                        None
                    }
                }
            }
        };
        if let Some(a) = address {
            if a.port() == 0 {
                errors.push(ConfigError::invalid(
                    format!("{field}.address"),
                    format!("{a} has port 0; give a fixed port"),
                ));
            }
        }
        let tls = self.tls.as_ref().and_then(|t| {
            let cert = existing_file(&format!("{field}.tls.cert"), &t.cert, base, errors);
            let key = existing_file(&format!("{field}.tls.key"), &t.key, base, errors);
            Some(ListenerTls {
                cert: cert?,
                key: key?,
                h2: t.h2,
            })
        });
        let max_header = self
            .max_request_header_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_HEADER_BYTES);
        if !(1024..=1 << 20).contains(&max_header) {
            errors.push(ConfigError::invalid(
                format!("{field}.max_request_header_bytes"),
                format!("{max_header} is outside 1024..=1048576 (pingora reads at most 1 MiB of header)"),
            ));
        }
        if self.max_connections == Some(0) {
            errors.push(ConfigError::invalid(
                format!("{field}.max_connections"),
                "must be at least 1",
            ));
        }
        let header_timeout = self
            .request_header_timeout_ms
            .unwrap_or(crate::request_head::DEFAULT_REQUEST_HEADER_TIMEOUT_MS);
        if !(100..=3_600_000).contains(&header_timeout) {
            errors.push(ConfigError::invalid(
                format!("{field}.request_header_timeout_ms"),
                format!("{header_timeout} is outside 100..=3600000"),
            ));
        }
        if errors.len() > before {
            return None;
        }
        Some(Listener {
            name: self.name.clone(),
            address: address?,
            tls,
            h2c: self.h2c,
            max_request_header_bytes: max_header,
            max_request_body_bytes: self.max_request_body_bytes,
            max_connections: self.max_connections,
            request_header_timeout: std::time::Duration::from_millis(header_timeout),
            h2_idle_timeout: match self
                .h2_idle_timeout_ms
                .unwrap_or(DEFAULT_H2_IDLE_TIMEOUT_MS)
            {
                0 => None,
                ms => Some(std::time::Duration::from_millis(ms)),
            },
        })
    }
}
