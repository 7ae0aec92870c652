//! `plugins:` — named Proxy-Wasm plugins that routes refer to.
//!
//! The file format is accepted and checked now; running plugins is not part of this build, so a
//! config that defines any plugin is refused with an error that says so.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::listener::{check_name, existing_file};
use super::ConfigError;

/// One entry of `plugins:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    /// The `.wasm` file, relative to the config file.
    pub path: String,
    /// Expected SHA-256 of the file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Root context id passed to the plugin.
    #[serde(default)]
    pub root_id: String,
    /// Plugin configuration: a map is passed as JSON, a string as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_yaml::Value>,
    /// VM configuration, passed to `on_vm_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_yaml::Value>,
    /// Sensitive data this plugin may see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Upstreams this plugin may call out to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_upstreams: Vec<String>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsFile>,
    /// `fail_closed` (default) or `fail_open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
}

/// `limits:` of a plugin.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Fuel per guest call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per guest call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Linear memory cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Body buffering cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

const EXPOSABLE: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "client_address",
];

impl PluginFile {
    pub(super) fn validate(
        &self,
        name: &str,
        base: &Path,
        upstreams: &[&str],
        errors: &mut Vec<ConfigError>,
    ) {
        let field = format!("plugins.{name}");
        check_name(&field, name, errors);
        existing_file(&format!("{field}.path"), &self.path, base, errors);
        if let Some(sha) = &self.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(ConfigError::invalid(
                    format!("{field}.sha256"),
                    "must be 64 hexadecimal digits",
                ));
            }
        }
        for (i, e) in self.expose.iter().enumerate() {
            if !EXPOSABLE.contains(&e.as_str()) {
                errors.push(ConfigError::invalid(
                    format!("{field}.expose[{i}]"),
                    format!("{e:?} is not one of {}", EXPOSABLE.join(", ")),
                ));
            }
        }
        for (i, u) in self.allowed_upstreams.iter().enumerate() {
            if !upstreams.contains(&u.as_str()) {
                errors.push(ConfigError::invalid(
                    format!("{field}.allowed_upstreams[{i}]"),
                    format!("no upstream named {u:?}"),
                ));
            }
        }
        if let Some(policy) = &self.on_error {
            if policy != "fail_closed" && policy != "fail_open" {
                errors.push(ConfigError::invalid(
                    format!("{field}.on_error"),
                    format!("{policy:?} must be fail_closed or fail_open"),
                ));
            }
        }
        errors.push(ConfigError::invalid(
            field,
            "running Wasm plugins is not implemented in this version of sluice yet",
        ));
    }
}
