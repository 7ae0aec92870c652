//! `reload:` — how the running process notices a changed config. Unlike `server:`, this
//! section may itself change on a reload.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `reload:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    /// Reload when the config file, or a local plugin file it names (or its `.sig`), changes
    /// on disk (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<bool>,
    /// How often those files are checked, ms (default 250).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// How long the files must stay unchanged before the reload starts, ms (default 100): an
    /// editor's write-then-rename, or a copy in progress, is seen as one change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
}

/// Validated `reload:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Watch the files.
    pub watch: bool,
    /// Poll period.
    pub poll_interval: Duration,
    /// Quiet time before reloading.
    pub debounce: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            watch: true,
            poll_interval: Duration::from_millis(250),
            debounce: Duration::from_millis(100),
        }
    }
}

impl ReloadFile {
    pub(super) fn validate(&self, errors: &mut Vec<ConfigError>) -> ReloadSettings {
        let d = ReloadSettings::default();
        let mut ms = |name: &str, v: Option<u64>, default: Duration, min: u64, max: u64| {
            let v = v.unwrap_or(default.as_millis() as u64);
            if v < min || v > max {
                errors.push(ConfigError::invalid(
                    format!("reload.{name}"),
                    format!("{v} is outside {min}..={max}"),
                ));
            }
            Duration::from_millis(v)
        };
        ReloadSettings {
            watch: self.watch.unwrap_or(d.watch),
            poll_interval: ms(
                "poll_interval_ms",
                self.poll_interval_ms,
                d.poll_interval,
                10,
                60_000,
            ),
            debounce: ms("debounce_ms", self.debounce_ms, d.debounce, 0, 60_000),
        }
    }
}
