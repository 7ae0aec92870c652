//! `routes:` — which requests go where, first match wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::listener::check_name;
use super::{ConfigError, PluginFile};

/// One entry of `routes:` as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// What the request must look like.
    #[serde(rename = "match", default)]
    pub matches: RouteMatchFile,
    /// The upstream pool that serves it.
    pub upstream: String,
    /// Plugins run on this route, in order.
    #[serde(default)]
    pub plugins: Vec<String>,
}

/// `match:` of a route. Every given condition must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchFile {
    /// `example.com` (exact, case-insensitive) or `*.example.com` (any subdomain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path must start with this (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Allowed methods (default: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The whole host, lowercase.
    Exact(String),
    /// `.suffix` (lowercase, with the leading dot): any host ending in it.
    Suffix(String),
}

impl HostMatch {
    /// Whether `host` (without port) matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path prefix.
    pub path_prefix: String,
    /// Allowed methods; empty means any.
    pub methods: Vec<http::Method>,
    /// Name of the upstream pool.
    pub upstream: String,
    /// Plugin names, in order.
    pub plugins: Vec<String>,
}

fn parse_host(field: &str, host: &str, errors: &mut Vec<ConfigError>) -> Option<HostMatch> {
    let (wild, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let valid = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        errors.push(ConfigError::invalid(
            field,
            format!("{host:?} is not a host name or a \"*.suffix\" pattern"),
        ));
        return None;
    }
    let rest = rest.to_ascii_lowercase();
    Some(if wild {
        HostMatch::Suffix(format!(".{rest}"))
    } else {
        HostMatch::Exact(rest)
    })
}

impl RouteFile {
    pub(super) fn validate(
        &self,
        field: &str,
        upstreams: &[&str],
        plugins: &BTreeMap<String, PluginFile>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Route> {
        let before = errors.len();
        check_name(&format!("{field}.name"), &self.name, errors);
        let host = self
            .matches
            .host
            .as_deref()
            .and_then(|h| parse_host(&format!("{field}.match.host"), h, errors));
        let path_prefix = self
            .matches
            .path_prefix
            .clone()
            .unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            errors.push(ConfigError::invalid(
                format!("{field}.match.path_prefix"),
                format!("{path_prefix:?} must start with '/'"),
            ));
        }
        let mut methods = Vec::new();
        for (i, m) in self.matches.methods.iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            match http::Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !m.is_empty() => methods.push(method),
                _ => errors.push(ConfigError::invalid(
                    format!("{field}.match.methods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                )),
            }
        }
        if !upstreams.contains(&self.upstream.as_str()) {
            errors.push(ConfigError::invalid(
                format!("{field}.upstream"),
                format!("no upstream named {:?}", self.upstream),
            ));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            if !plugins.contains_key(p) {
                errors.push(ConfigError::invalid(
                    format!("{field}.plugins[{i}]"),
                    format!("no plugin named {p:?}"),
                ));
            }
        }
        if errors.len() > before {
            return None;
        }
        Some(Route {
            name: self.name.clone(),
            host,
            path_prefix,
            methods,
            upstream: self.upstream.clone(),
            plugins: self.plugins.clone(),
        })
    }
}
