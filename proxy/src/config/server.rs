//! `server:` — process-wide settings.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `server:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads per listener (default: the number of CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<u64>,
    /// Idle upstream connections kept for reuse, per worker thread (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_keepalive_pool_size: Option<usize>,
}

/// Validated process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads per listener.
    pub threads: usize,
    /// Drain bound after a shutdown signal.
    pub grace_period_seconds: u64,
    /// Idle upstream connections kept per thread.
    pub upstream_keepalive_pool_size: usize,
}

impl ServerFile {
    pub(super) fn validate(&self, errors: &mut Vec<ConfigError>) -> ServerSettings {
        let threads = match self.threads {
            Some(0) => {
                errors.push(ConfigError::invalid("server.threads", "must be at least 1"));
                1
            }
            Some(n) if n > 1024 => {
                errors.push(ConfigError::invalid(
                    "server.threads",
                    format!("{n} is more than the 1024 allowed"),
                ));
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let grace = self.grace_period_seconds.unwrap_or(30);
        if grace > 3600 {
            errors.push(ConfigError::invalid(
                "server.grace_period_seconds",
                format!("{grace} is more than the 3600 allowed"),
            ));
        }
        ServerSettings {
            threads,
            grace_period_seconds: grace,
            upstream_keepalive_pool_size: self.upstream_keepalive_pool_size.unwrap_or(128),
        }
    }
}
