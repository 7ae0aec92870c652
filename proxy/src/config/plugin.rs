//! `plugins:` — named Proxy-Wasm plugins that routes refer to — and `sanitize:`, the
//! operator's additions to the headers hidden from plugins.
//!
//! Validation checks what can be checked without running the plugin or touching the network:
//! exactly one source (`path:` exists, `url:` is HTTP(S) and has its `sha256`, `oci:` is a
//! well-formed reference), digest format, the signature's public key, grants, upstream names
//! (and that a callout upstream is plain HTTP), limits. Fetching the binary (see
//! [`crate::source`]), its sha256 and signature, and its `on_vm_start`/`on_configure` happen
//! when the runtime is built (also by `sluice check`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::listener::{check_name, existing_file};
use super::secrets::{self, Secrets};
use super::upstream::UpstreamFile;
use super::ConfigError;
use crate::rollout::RolloutSettings;
use crate::source::{OciReference, PluginSource, SignatureCheck, Wanted};
use crate::wasm::sanitize::{self, ADDRESS_HEADERS, CLIENT_ADDRESS, CREDENTIAL_HEADERS};
use crate::wasm::settings::{encode_config, FailurePolicy, Limits, LimitsFile, Version};

/// One entry of `plugins:` as written. Exactly one of `path`, `url` and `oci` says where the
/// `.wasm` comes from.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    /// The `.wasm` file, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An `http://` or `https://` URL of the `.wasm` (requires `sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An OCI image: `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<String>,
    /// Expected SHA-256 of the `.wasm` bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The ed25519 public key the plugin's signature must verify with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureFile>,
    /// Root context id passed to the plugin (`plugin_root_id`).
    #[serde(default)]
    pub root_id: String,
    /// VM id (`plugin_vm_id`) and shared-data namespace; default: the plugin's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// Plugin configuration: a map is passed as JSON, a string as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form")]
    pub config: Option<serde_yaml::Value>,
    /// VM configuration, passed to `on_vm_start` (same encoding as `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form")]
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
    /// VMs to run (default: one per worker thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<usize>,
    /// A candidate version rolled out next to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<RolloutFile>>,
}

/// `signature:` of a plugin: exactly one of `public_key` and `public_key_file`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// The ed25519 public key, base64 of its 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// A file holding that base64 text, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
}

/// `rollout:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    /// The candidate version: where its `.wasm` comes from, and what differs from stable.
    pub candidate: Box<PluginFile>,
    /// `canary` (default): the candidate serves `weight_percent` of the requests; `shadow`:
    /// stable serves every request and the candidate runs after it on copies of
    /// `weight_percent` of them, its decisions compared with stable's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Share of requests, 0 to 100 in steps of 0.1 (canary: default 0; shadow: default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_percent: Option<f64>,
    /// Shadow: let the candidate make its HTTP and gRPC callouts (default false: refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_callouts: bool,
    /// Shadow: runs at once at most (default 4); a request ending while all run is not
    /// replayed (counted as skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_concurrency: Option<usize>,
    /// `client_address` (default) or `header:NAME`: the same key always gets the same version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_on: Option<String>,
    /// When the candidate is removed by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackFile>,
}

/// `rollout.rollback:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackFile {
    /// Failures ÷ requests of the candidate above which it is removed (0 to 1).
    pub max_error_rate: f64,
    /// Candidate requests in the window before the rate counts (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// The window, seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// Count the candidate's 5xx local replies as failures (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub count_5xx: bool,
}

/// A validated rollout.
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    /// The candidate, as a plugin of the same name.
    pub candidate: PluginSpec,
    /// Share, stickiness, rollback.
    pub settings: RolloutSettings,
}

/// `sanitize:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SanitizeFile {
    /// More header names to hide from plugins (unless a plugin's `expose` grants them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
}

/// A validated plugin entry.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name.
    pub name: String,
    /// Where the `.wasm` comes from.
    pub source: PluginSource,
    /// Expected sha256 of the `.wasm` (lower-case hex).
    pub sha256: Option<String>,
    /// The signature the binary must carry, if any.
    pub signature: Option<SignatureCheck>,
    /// Root id.
    pub root_id: String,
    /// VM id.
    pub vm_id: String,
    /// Bytes for `on_configure`.
    pub config: Vec<u8>,
    /// Bytes for `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Grants (normalized).
    pub expose: Vec<String>,
    /// Callout targets.
    pub allowed_upstreams: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Failure policy.
    pub on_error: FailurePolicy,
    /// VMs (0 = one per worker thread).
    pub vms: usize,
    /// Stable, or the candidate of a rollout.
    pub version: Version,
    /// What names its binary in fetches and their errors: the plugin's name, and
    /// `NAME (candidate)` for a candidate.
    pub fetch_key: String,
    /// The candidate rolled out next to this version.
    pub rollout: Option<Box<RolloutSpec>>,
    /// The secret references in `config` and `vm_config`, and the files they read.
    pub secrets: Secrets,
}

impl PluginSpec {
    /// The VMs this plugin runs in a process with `threads` worker threads.
    pub fn vm_count(&self, threads: usize) -> usize {
        if self.vms == 0 {
            threads.max(1)
        } else {
            self.vms
        }
    }
}

/// Header names that may appear in `expose` (besides `client_address`).
fn exposable(extra: &[String]) -> Vec<String> {
    CREDENTIAL_HEADERS
        .iter()
        .chain(ADDRESS_HEADERS)
        .map(|s| s.to_string())
        .chain(extra.iter().map(|s| sanitize::normalize(s)))
        .collect()
}

impl PluginFile {
    pub(super) fn validate(
        &self,
        name: &str,
        base: &Path,
        upstreams: &BTreeMap<String, UpstreamFile>,
        extra_hidden: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<PluginSpec> {
        let field = format!("plugins.{name}");
        check_name(&field, name, errors);
        // `rollout:` is validated by the caller (`rollout.rs`), which sets `rollout`.
        self.validate_as(name, &field, base, upstreams, extra_hidden, errors)
    }

    /// Validates the entry of plugin `name` written at `field` (a candidate's is under
    /// `rollout.candidate`).
    pub(super) fn validate_as(
        &self,
        name: &str,
        field: &str,
        base: &Path,
        upstreams: &BTreeMap<String, UpstreamFile>,
        extra_hidden: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<PluginSpec> {
        let before = errors.len();
        let candidate = field.ends_with(".candidate");
        let source = self.source(field, base, errors);
        let signature = self
            .signature
            .as_ref()
            .and_then(|s| s.validate(&format!("{field}.signature"), base, errors));
        if let Some(sha) = &self.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(ConfigError::invalid(
                    format!("{field}.sha256"),
                    "must be 64 hexadecimal digits",
                ));
            }
        }
        let allowed = exposable(extra_hidden);
        let mut expose = Vec::new();
        for (i, e) in self.expose.iter().enumerate() {
            let n = sanitize::normalize(e);
            if n != CLIENT_ADDRESS && !allowed.contains(&n) {
                errors.push(ConfigError::invalid(
                    format!("{field}.expose[{i}]"),
                    format!(
                        "{e:?} is not hidden, so it cannot be exposed; one of {CLIENT_ADDRESS}, {}",
                        allowed.join(", ")
                    ),
                ));
            }
            expose.push(n);
        }
        for (i, u) in self.allowed_upstreams.iter().enumerate() {
            if !upstreams.contains_key(u) {
                errors.push(ConfigError::invalid(
                    format!("{field}.allowed_upstreams[{i}]"),
                    format!("no upstream named {u:?}"),
                ));
            }
        }
        let on_error = match self.on_error.as_deref() {
            None | Some("fail_closed") => FailurePolicy::FailClosed,
            Some("fail_open") => FailurePolicy::FailOpen,
            Some(policy) => {
                errors.push(ConfigError::invalid(
                    format!("{field}.on_error"),
                    format!("{policy:?} must be fail_closed or fail_open"),
                ));
                FailurePolicy::FailClosed
            }
        };
        // References are replaced here, in what the plugin is given; `self` (what `/config`
        // shows) keeps them as written.
        let mut secrets = Secrets::default();
        let mut resolved = |v: &Option<serde_yaml::Value>, key: &str| {
            v.as_ref()
                .map(|v| secrets::resolve(v, &format!("{field}.{key}"), base, &mut secrets, errors))
        };
        let config_value = resolved(&self.config, "config");
        let vm_config_value = resolved(&self.vm_config, "vm_config");
        let config = encode_config(&config_value).unwrap_or_else(|m| {
            errors.push(ConfigError::invalid(format!("{field}.config"), m));
            Vec::new()
        });
        let vm_config = encode_config(&vm_config_value).unwrap_or_else(|m| {
            errors.push(ConfigError::invalid(format!("{field}.vm_config"), m));
            Vec::new()
        });
        let mut limit_errors = Vec::new();
        let limits = self
            .limits
            .clone()
            .unwrap_or_default()
            .validate(field, &mut limit_errors);
        errors.extend(
            limit_errors
                .into_iter()
                .map(|e| ConfigError::invalid(e.field, e.message)),
        );
        if self.vms == Some(0) || self.vms.is_some_and(|n| n > 256) {
            errors.push(ConfigError::invalid(
                format!("{field}.vms"),
                "must be between 1 and 256",
            ));
        }
        if errors.len() > before {
            return None;
        }
        Some(PluginSpec {
            name: name.to_string(),
            source: source?,
            sha256: self.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
            signature,
            root_id: self.root_id.clone(),
            vm_id: self.vm_id.clone().unwrap_or_else(|| name.to_string()),
            config,
            vm_config,
            expose,
            allowed_upstreams: self.allowed_upstreams.clone(),
            limits,
            on_error,
            vms: self.vms.unwrap_or(0),
            version: if candidate {
                Version::Candidate
            } else {
                Version::Stable
            },
            fetch_key: if candidate {
                format!("{name} (candidate)")
            } else {
                name.to_string()
            },
            rollout: None,
            secrets,
        })
    }
}

impl PluginFile {
    /// Where the `.wasm` comes from: exactly one of `path`, `url`, `oci`.
    fn source(
        &self,
        field: &str,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<PluginSource> {
        let given: Vec<&str> = [
            ("path", self.path.is_some()),
            ("url", self.url.is_some()),
            ("oci", self.oci.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
        if given.len() != 1 {
            errors.push(ConfigError::invalid(
                field,
                if given.is_empty() {
                    "one of path, url or oci is required (where the .wasm comes from)".to_string()
                } else {
                    format!(
                        "{} are given; exactly one of path, url or oci is allowed",
                        given.join(" and ")
                    )
                },
            ));
            return None;
        }
        if let Some(path) = &self.path {
            return existing_file(&format!("{field}.path"), path, base, errors)
                .map(PluginSource::Path);
        }
        if let Some(url) = &self.url {
            let f = format!("{field}.url");
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    errors.push(ConfigError::invalid(
                        f,
                        format!(
                            "{url:?} must be an http:// or https:// URL, not {}:",
                            u.scheme()
                        ),
                    ));
                    return None;
                }
                Ok(_) => {
                    errors.push(ConfigError::invalid(f, format!("{url:?} has no host")));
                    return None;
                }
                Err(e) => {
                    errors.push(ConfigError::invalid(
                        f,
                        format!("{url:?} is not a URL: {e}"),
                    ));
                    return None;
                }
            }
            if self.sha256.is_none() {
                errors.push(ConfigError::invalid(
                    format!("{field}.sha256"),
                    "is required with url: (the sha256 of the .wasm the URL serves)",
                ));
                return None;
            }
            return Some(PluginSource::Url(url.clone()));
        }
        let oci = self.oci.as_deref().unwrap_or_default();
        match oci.parse::<OciReference>() {
            Ok(r) => Some(PluginSource::Oci(r)),
            Err(m) => {
                errors.push(ConfigError::invalid(format!("{field}.oci"), m));
                None
            }
        }
    }
}

impl SignatureFile {
    fn validate(
        &self,
        field: &str,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<SignatureCheck> {
        match (&self.public_key, &self.public_key_file) {
            (Some(key), None) => match SignatureCheck::from_base64(key) {
                Ok(c) => Some(c),
                Err(m) => {
                    errors.push(ConfigError::invalid(format!("{field}.public_key"), m));
                    None
                }
            },
            (None, Some(file)) => {
                let f = format!("{field}.public_key_file");
                let path = existing_file(&f, file, base, errors)?;
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(ConfigError::invalid(
                            f,
                            format!("cannot read {}: {e}", path.display()),
                        ));
                        return None;
                    }
                };
                match SignatureCheck::from_base64(&text) {
                    Ok(c) => Some(c),
                    Err(m) => {
                        errors.push(ConfigError::invalid(
                            f,
                            format!("{}: the content {m}", path.display()),
                        ));
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                errors.push(ConfigError::invalid(
                    field,
                    "public_key and public_key_file are both given; exactly one is allowed",
                ));
                None
            }
            (None, None) => {
                errors.push(ConfigError::invalid(
                    field,
                    "public_key (base64 of the ed25519 public key) or public_key_file is required",
                ));
                None
            }
        }
    }
}

impl Wanted for PluginSpec {
    // What fetches and their errors call the binary: a candidate's is not the plugin's name.
    #[allow(clippy::misnamed_getters)]
    fn name(&self) -> &str {
        &self.fetch_key
    }

    fn source(&self) -> &PluginSource {
        &self.source
    }

    fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }

    fn signature(&self) -> Option<&SignatureCheck> {
        self.signature.as_ref()
    }
}
