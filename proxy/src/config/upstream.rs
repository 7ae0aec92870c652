//! `upstreams:` — named pools of endpoints, with load balancing and health checks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::listener::check_name;
use super::{parse_socket_addr, ConfigError};

/// One entry of `upstreams:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` of each endpoint; names are resolved when the config loads.
    pub endpoints: Vec<String>,
    /// Connect to the endpoints over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsFile>,
    /// `http1` (default), `h2` (HTTP/2: prior knowledge on plain endpoints, ALPN `h2` with
    /// `tls:`), or `auto` (ALPN offers both; needs `tls:`).
    #[serde(default)]
    pub protocol: ProtocolFile,
    /// `round_robin` (default), `random`, or `hash` (with `hash_on`).
    #[serde(default)]
    pub load_balancing: BalancingFile,
    /// For `hash`: `client_address` or `header:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckFile>,
    /// TCP (and TLS) connect timeout (default 5000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for any read from the endpoint, e.g. the response header (default 60000).
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Host header sent upstream: `preserve` (default, as the client sent it), `endpoint`
    /// (the endpoint's `host:port` as written), or any other value, sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_read_timeout_ms() -> u64 {
    60_000
}

/// `load_balancing:` values.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BalancingFile {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// A random endpoint.
    Random,
    /// Consistent hashing on `hash_on`.
    Hash,
}

/// `protocol:` values.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolFile {
    /// HTTP/1.1 only.
    #[default]
    Http1,
    /// HTTP/2 only.
    H2,
    /// HTTP/2 or HTTP/1.1, as the endpoint chooses through ALPN.
    Auto,
}

/// The HTTP version(s) spoken to a pool's endpoints (validated `protocol:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge (h2c) on plain endpoints, through ALPN over TLS.
    H2,
    /// Offered both through ALPN (TLS only); the endpoint picks.
    Auto,
}

impl Protocol {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Auto => "auto",
        }
    }
}

/// `tls:` of an upstream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// Server name to send and verify (default: the endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the endpoint's certificate (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM file of the certificates trusted for this upstream instead of the system's
    /// (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

fn yes() -> bool {
    true
}

/// `health_check:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// Path requested with GET; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between checks of one endpoint (default 5000).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time allowed for one check (default 1000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures before an endpoint is marked down (default 1).
    #[serde(default = "one")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes before it is marked up again (default 1).
    #[serde(default = "one")]
    pub healthy_threshold: u32,
}

fn default_interval_ms() -> u64 {
    5_000
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn one() -> u32 {
    1
}

/// A validated upstream pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Its name.
    pub name: String,
    /// Endpoints: as written (for labels) and resolved.
    pub endpoints: Vec<(String, SocketAddr)>,
    /// TLS to the endpoints.
    pub tls: Option<UpstreamTls>,
    /// HTTP version(s) spoken to the endpoints.
    pub protocol: Protocol,
    /// Endpoint selection.
    pub balancing: Balancing,
    /// Health checking.
    pub health_check: Option<HealthCheck>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
    /// Host header policy.
    pub host_header: HostHeader,
}

/// What Host header goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's, unchanged.
    Preserve,
    /// The endpoint's `host:port` as written in the config.
    Endpoint,
    /// This value.
    Fixed(http::HeaderValue),
}

/// Validated upstream TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI; empty means the endpoint's host as written.
    pub sni: Option<String>,
    /// Verify the certificate.
    pub verify: bool,
    /// Certificates (DER) trusted instead of the system's, from `tls.ca`.
    pub ca: Option<Vec<Vec<u8>>>,
}

/// How an endpoint is picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancing {
    /// In turn.
    RoundRobin,
    /// At random.
    Random,
    /// Consistent hashing on a key.
    Hash(HashKey),
}

/// What `hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientAddress,
    /// A request header (lowercase name); absent header → round robin.
    Header(String),
}

/// Validated health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path to GET.
    pub path: String,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Failures to go down.
    pub unhealthy_threshold: u32,
    /// Successes to go up.
    pub healthy_threshold: u32,
}

fn ms_in_range(
    field: String,
    v: u64,
    min: u64,
    max: u64,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    if v < min || v > max {
        errors.push(ConfigError::invalid(
            field,
            format!("{v} is out of range ({min}..={max} ms)"),
        ));
    }
    Duration::from_millis(v)
}

impl UpstreamFile {
    pub(super) fn validate(
        &self,
        name: &str,
        base_dir: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Upstream> {
        let field = format!("upstreams.{name}");
        let before = errors.len();
        check_name(&field, name, errors);
        if self.endpoints.is_empty() {
            errors.push(ConfigError::invalid(
                format!("{field}.endpoints"),
                "must list at least one endpoint",
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            match parse_socket_addr(e) {
                Ok(a) if a.port() == 0 => errors.push(ConfigError::invalid(
                    format!("{field}.endpoints[{i}]"),
                    format!("{e:?} has port 0"),
                )),
                Ok(a) => {
                    if endpoints.iter().any(|(_, b)| *b == a) {
                        errors.push(ConfigError::invalid(
                            format!("{field}.endpoints[{i}]"),
                            format!("{e:?} is listed twice"),
                        ));
                    }
                    endpoints.push((e.clone(), a))
                }
                Err(msg) => {
                    errors.push(ConfigError::invalid(format!("{field}.endpoints[{i}]"), msg))
                }
            }
        }
        let balancing = match (self.load_balancing, &self.hash_on) {
            (BalancingFile::RoundRobin, None) => Balancing::RoundRobin,
            (BalancingFile::Random, None) => Balancing::Random,
            (BalancingFile::Hash, Some(on)) => {
                if on == "client_address" {
                    Balancing::Hash(HashKey::ClientAddress)
                } else if let Some(h) = on.strip_prefix("header:") {
                    if h.is_empty() || http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                        errors.push(ConfigError::invalid(
                            format!("{field}.hash_on"),
                            format!("{h:?} is not a valid header name"),
                        ));
                    }
                    Balancing::Hash(HashKey::Header(h.to_ascii_lowercase()))
                } else {
                    errors.push(ConfigError::invalid(
                        format!("{field}.hash_on"),
                        format!("{on:?} must be \"client_address\" or \"header:NAME\""),
                    ));
                    Balancing::RoundRobin
                }
            }
            (BalancingFile::Hash, None) => {
                errors.push(ConfigError::invalid(
                    format!("{field}.hash_on"),
                    "load_balancing: hash needs hash_on (\"client_address\" or \"header:NAME\")",
                ));
                Balancing::RoundRobin
            }
            (_, Some(_)) => {
                errors.push(ConfigError::invalid(
                    format!("{field}.hash_on"),
                    "only used with load_balancing: hash",
                ));
                Balancing::RoundRobin
            }
        };
        let health_check = self.health_check.as_ref().map(|h| {
            let hf = format!("{field}.health_check");
            if !h.path.starts_with('/') {
                errors.push(ConfigError::invalid(
                    format!("{hf}.path"),
                    format!("{:?} must start with '/'", h.path),
                ));
            }
            let interval = ms_in_range(
                format!("{hf}.interval_ms"),
                h.interval_ms,
                10,
                3_600_000,
                errors,
            );
            let timeout = ms_in_range(format!("{hf}.timeout_ms"), h.timeout_ms, 1, 60_000, errors);
            if h.timeout_ms > h.interval_ms {
                errors.push(ConfigError::invalid(
                    format!("{hf}.timeout_ms"),
                    format!(
                        "{} is longer than interval_ms ({})",
                        h.timeout_ms, h.interval_ms
                    ),
                ));
            }
            for (k, v) in [
                ("unhealthy_threshold", h.unhealthy_threshold),
                ("healthy_threshold", h.healthy_threshold),
            ] {
                if v == 0 || v > 100 {
                    errors.push(ConfigError::invalid(
                        format!("{hf}.{k}"),
                        format!("{v} is out of range (1..=100)"),
                    ));
                }
            }
            HealthCheck {
                path: h.path.clone(),
                interval,
                timeout,
                unhealthy_threshold: h.unhealthy_threshold,
                healthy_threshold: h.healthy_threshold,
            }
        });
        let connect_timeout = ms_in_range(
            format!("{field}.connect_timeout_ms"),
            self.connect_timeout_ms,
            1,
            600_000,
            errors,
        );
        let read_timeout = ms_in_range(
            format!("{field}.read_timeout_ms"),
            self.read_timeout_ms,
            1,
            3_600_000,
            errors,
        );
        let host_header = match self.host_header.as_deref() {
            None | Some("preserve") => HostHeader::Preserve,
            Some("endpoint") => HostHeader::Endpoint,
            Some(v) => match http::HeaderValue::from_str(v) {
                Ok(v) if !v.is_empty() => HostHeader::Fixed(v),
                _ => {
                    errors.push(ConfigError::invalid(
                        format!("{field}.host_header"),
                        format!("{v:?} is not a valid Host header value"),
                    ));
                    HostHeader::Preserve
                }
            },
        };
        let tls = self.tls.as_ref().map(|t| UpstreamTls {
            sni: t.sni.clone(),
            verify: t.verify,
            ca: t.ca.as_ref().and_then(|ca| {
                load_ca(&base_dir.join(ca))
                    .map_err(|msg| {
                        errors.push(ConfigError::invalid(format!("{field}.tls.ca"), msg))
                    })
                    .ok()
            }),
        });
        let protocol = match self.protocol {
            ProtocolFile::Http1 => Protocol::Http1,
            ProtocolFile::H2 => Protocol::H2,
            ProtocolFile::Auto if tls.is_none() => {
                errors.push(ConfigError::invalid(
                    format!("{field}.protocol"),
                    "auto needs tls: (a plain endpoint cannot negotiate the protocol; \
                     use h2 for HTTP/2 with prior knowledge, or http1)",
                ));
                Protocol::Http1
            }
            ProtocolFile::Auto => Protocol::Auto,
        };
        if errors.len() > before {
            return None;
        }
        Some(Upstream {
            name: name.to_string(),
            endpoints,
            tls,
            protocol,
            balancing,
            health_check,
            connect_timeout,
            read_timeout,
            host_header,
        })
    }
}

/// The certificates of a PEM file, as DER, each checked to parse as an X.509 certificate.
pub fn load_ca(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after
            .find(END)
            .ok_or_else(|| format!("{}: a certificate has no END line", path.display()))?;
        let b64: String = after[..end].split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), out.len() + 1))?;
        check_certificate(&der)
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), out.len() + 1))?;
        out.push(der);
        rest = &after[end + END.len()..];
    }
    if out.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(out)
}

/// Whether `der` is a certificate both rustls and pingora's parser accept (the latter panics
/// on what it cannot parse, so it is asked here, under `catch_unwind`, before it is relied on).
fn check_certificate(der: &[u8]) -> Result<(), String> {
    let mut store = pingora::tls::RootCertStore::empty();
    store
        .add(pingora::tls::CertificateDer::from(der.to_vec()))
        .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    let owned = der.to_vec();
    std::panic::catch_unwind(move || {
        drop(pingora::utils::tls::WrappedX509::new(
            owned,
            pingora::utils::tls::parse_x509,
        ))
    })
    .map_err(|_| "not a parseable X.509 certificate".to_string())
}
