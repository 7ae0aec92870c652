//! `shared_data:` — where plugins' shared data (`proxy_get_shared_data`,
//! `proxy_set_shared_data`) lives: in this process (`memory`, the default) or in Redis, shared
//! by every replica.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::ConfigError;

/// `shared_data:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedDataFile {
    /// `memory` (default) or `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// `redis://[user[:password]@]host[:port][/db]` (backend `redis`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_url"
    )]
    pub url: Option<String>,
    /// A file holding the Redis password (e.g. a mounted Secret); relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Prepended to every Redis key, before the plugin's `vm_id` (default `sluice:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Longest wait for Redis in one shared-data call, connecting included, ms (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Idle connections kept open (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// Keys expire this long after their last write, ms (default 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// The storage of shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process.
    Memory,
    /// In Redis.
    Redis,
}

/// `/config` shows the URL without its password.
fn redacted_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&redact(u)),
        None => s.serialize_none(),
    }
}

/// The URL with a password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Validated `shared_data:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SharedData {
    /// In this process.
    #[default]
    Memory,
    /// In Redis.
    Redis(RedisSettings),
}

/// Where and how to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database number (`SELECT`).
    pub db: u32,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password, if any (from the URL or `password_file`).
    pub password: Option<String>,
    /// Key prefix.
    pub key_prefix: String,
    /// Per-call wait.
    pub timeout: Duration,
    /// Idle connections kept.
    pub pool_size: usize,
    /// Key expiry after a write.
    pub ttl: Option<Duration>,
    /// The URL without its password, for logs.
    pub display: String,
}

impl SharedDataFile {
    pub(super) fn validate(&self, base: &Path, errors: &mut Vec<ConfigError>) -> SharedData {
        let backend = self.backend.unwrap_or(Backend::Memory);
        if backend == Backend::Memory {
            for (set, field) in [
                (self.url.is_some(), "url"),
                (self.password_file.is_some(), "password_file"),
                (self.key_prefix.is_some(), "key_prefix"),
                (self.timeout_ms.is_some(), "timeout_ms"),
                (self.pool_size.is_some(), "pool_size"),
                (self.ttl_ms.is_some(), "ttl_ms"),
            ] {
                if set {
                    errors.push(ConfigError::invalid(
                        format!("shared_data.{field}"),
                        "only applies to `backend: redis`",
                    ));
                }
            }
            return SharedData::Memory;
        }
        let before = errors.len();
        let Some(url) = &self.url else {
            errors.push(ConfigError::invalid(
                "shared_data.url",
                "required with `backend: redis` (redis://host:port/db)",
            ));
            return SharedData::Memory;
        };
        let parsed = parse_url(url).map_err(|m| {
            errors.push(ConfigError::invalid("shared_data.url", m));
        });
        let mut password = parsed.as_ref().ok().and_then(|p| p.password.clone());
        if let Some(f) = &self.password_file {
            let path = base.join(f);
            match std::fs::read_to_string(&path) {
                Ok(text) => password = Some(text.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => errors.push(ConfigError::invalid(
                    "shared_data.password_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        let timeout_ms = self.timeout_ms.unwrap_or(30);
        if !(1..=10_000).contains(&timeout_ms) {
            errors.push(ConfigError::invalid(
                "shared_data.timeout_ms",
                format!("{timeout_ms} is outside 1..=10000"),
            ));
        }
        let pool_size = self.pool_size.unwrap_or(16);
        if !(1..=1024).contains(&pool_size) {
            errors.push(ConfigError::invalid(
                "shared_data.pool_size",
                format!("{pool_size} is outside 1..=1024"),
            ));
        }
        let key_prefix = self.key_prefix.clone().unwrap_or_else(|| "sluice:".into());
        if key_prefix.len() > 256 {
            errors.push(ConfigError::invalid(
                "shared_data.key_prefix",
                "longer than 256 bytes",
            ));
        }
        let ttl = match self.ttl_ms.unwrap_or(0) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        if errors.len() > before {
            return SharedData::Memory;
        }
        let Ok(p) = parsed else {
            return SharedData::Memory;
        };
        SharedData::Redis(RedisSettings {
            display: redact(url),
            host: p.host,
            port: p.port,
            db: p.db,
            username: p.username,
            password,
            key_prefix,
            timeout: Duration::from_millis(timeout_ms),
            pool_size,
            ttl,
        })
    }
}

struct ParsedUrl {
    host: String,
    port: u16,
    db: u32,
    username: Option<String>,
    password: Option<String>,
}

fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let rest = match url.split_once("://") {
        Some(("redis", rest)) => rest,
        Some(("rediss", _)) => {
            return Err(
                "TLS to Redis (rediss://) is not supported yet; use redis:// on a \
                        private network"
                    .into(),
            )
        }
        _ => return Err(format!("{:?} is not a redis:// URL", redact(url))),
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
            None => (Some(a.to_string()), None),
        },
    };
    let (hostport, db) = match rest.split_once('/') {
        Some((h, "")) => (h, 0),
        Some((h, d)) => (
            h,
            d.parse::<u32>()
                .map_err(|_| format!("database {d:?} is not a number"))?,
        ),
        None => (rest, 0),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address without its closing ]")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("port {p:?} is not a number"))?,
            None => 6379,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("port {p:?} is not a number"))?,
            ),
            None => (hostport.to_string(), 6379),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(ParsedUrl {
        host,
        port,
        db,
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (SharedData, Vec<ConfigError>) {
        let f: SharedDataFile = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let s = f.validate(Path::new("."), &mut errors);
        (s, errors)
    }

    #[test]
    fn urls_and_defaults() {
        let (s, e) = validate("{ backend: redis, url: 'redis://u:p%w@cache:6380/2' }");
        assert!(e.is_empty(), "{e:?}");
        let SharedData::Redis(r) = s else {
            panic!("not redis")
        };
        assert_eq!((r.host.as_str(), r.port, r.db), ("cache", 6380, 2));
        assert_eq!(r.username.as_deref(), Some("u"));
        assert_eq!(r.password.as_deref(), Some("p%w"));
        assert_eq!(r.display, "redis://u:***@cache:6380/2");
        assert_eq!(r.key_prefix, "sluice:");
        assert_eq!(r.timeout, Duration::from_millis(30));
        assert_eq!((r.pool_size, r.ttl), (16, None));

        let (s, e) = validate("{ backend: redis, url: 'redis://[::1]', ttl_ms: 60000 }");
        assert!(e.is_empty(), "{e:?}");
        let SharedData::Redis(r) = s else {
            panic!("not redis")
        };
        assert_eq!((r.host.as_str(), r.port, r.db), ("::1", 6379, 0));
        assert_eq!(r.ttl, Some(Duration::from_secs(60)));
        assert_eq!(validate("{}").0, SharedData::Memory);
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, field, words) in [
            ("{ backend: redis }", "shared_data.url", "required"),
            (
                "{ backend: redis, url: 'http://x' }",
                "shared_data.url",
                "redis://",
            ),
            (
                "{ backend: redis, url: 'rediss://x' }",
                "shared_data.url",
                "TLS",
            ),
            (
                "{ backend: redis, url: 'redis://x:y' }",
                "shared_data.url",
                "port",
            ),
            (
                "{ backend: redis, url: 'redis://x/db' }",
                "shared_data.url",
                "database",
            ),
            (
                "{ backend: redis, url: 'redis://x', timeout_ms: 0 }",
                "shared_data.timeout_ms",
                "outside",
            ),
            (
                "{ backend: redis, url: 'redis://x', pool_size: 0 }",
                "shared_data.pool_size",
                "outside",
            ),
            ("{ url: 'redis://x' }", "shared_data.url", "backend: redis"),
            (
                "{ backend: redis, url: 'redis://x', password_file: /nonexistent/pw }",
                "shared_data.password_file",
                "cannot read",
            ),
        ] {
            let (_, e) = validate(yaml);
            let text = e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            assert!(
                text.contains(field) && text.contains(words),
                "{yaml}: {text}"
            );
        }
        let f: Result<SharedDataFile, _> = serde_yaml::from_str("{ backend: etcd }");
        assert!(f.is_err());
    }

    #[test]
    fn the_config_shown_hides_the_password() {
        let f: SharedDataFile =
            serde_yaml::from_str("{ backend: redis, url: 'redis://:secret@h:1' }").unwrap();
        let shown = serde_json::to_string(&f).unwrap();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redis://:***@h:1"), "{shown}");
    }
}
