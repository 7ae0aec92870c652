//! `shared_data:` — where plugins' shared data (`proxy_get_shared_data`,
//! `proxy_set_shared_data`) lives: in this process (`memory`, the default) or in Redis, shared
//! by every replica. Redis is one server (`url`), a master found through Sentinel
//! (`sentinel`), or a Redis Cluster (`cluster`), over TLS with `rediss://` URLs.

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
    /// One Redis server: `redis://[user[:password]@]host[:port][/db]`, or `rediss://…` for
    /// TLS (backend `redis`; exactly one of `url`, `sentinel`, `cluster`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_url"
    )]
    pub url: Option<String>,
    /// A master found through Redis Sentinel (and found again after a failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelFile>,
    /// A Redis Cluster: keys live on whichever shard their hash slot says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterFile>,
    /// TLS settings for `rediss://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// A file holding the Redis password (e.g. a mounted Secret); relative to the config file.
    /// With `sentinel`, the master's password (the sentinels' own are in their URLs).
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

/// `shared_data.sentinel:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentinelFile {
    /// The master's name in the sentinels' configuration (`sentinel monitor NAME …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// The sentinels: `redis://[user[:password]@]host[:port]` (default port 26379), all
    /// `redis://` or all `rediss://` (the master is then reached over TLS too).
    #[serde(default, serialize_with = "redacted_urls")]
    pub urls: Vec<String>,
    /// The ACL user to authenticate to the master with (its password: `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The master's database number (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<u32>,
}

/// `shared_data.cluster:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Some of the cluster's nodes, `redis://[user[:password]@]host[:port]` (the others are
    /// learnt from them), all `redis://` or all `rediss://`.
    #[serde(default, serialize_with = "redacted_urls")]
    pub urls: Vec<String>,
}

/// `shared_data.tls:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM file of the CA certificate(s) the Redis servers' certificates are checked against,
    /// instead of the system's and the Mozilla roots; relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
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

/// `/config` shows the URLs without their passwords.
fn redacted_urls<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| redact(u)))
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
// Built once per config load: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SharedData {
    /// In this process.
    #[default]
    Memory,
    /// In Redis.
    Redis(RedisSettings),
}

/// One server as a URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `rediss://`: TLS.
    pub tls: bool,
    /// ACL user from the URL, if any.
    pub username: Option<String>,
    /// Password from the URL, if any.
    pub password: Option<String>,
}

/// Which Redis servers hold the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// One server.
    Single(Node),
    /// The master named `master`, as the sentinels say; reached with TLS when they are.
    Sentinel {
        /// The master's name.
        master: String,
        /// The sentinels.
        sentinels: Vec<Node>,
    },
    /// A Redis Cluster, known from these nodes.
    Cluster(Vec<Node>),
}

impl Servers {
    /// Whether the data nodes are reached over TLS.
    pub fn tls(&self) -> bool {
        match self {
            Servers::Single(n) => n.tls,
            Servers::Sentinel { sentinels: n, .. } | Servers::Cluster(n) => n[0].tls,
        }
    }
}

/// Where and how to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The servers.
    pub servers: Servers,
    /// Database number (`SELECT`; 0 in a cluster).
    pub db: u32,
    /// ACL user on the data nodes, if any.
    pub username: Option<String>,
    /// Password on the data nodes, if any (from the URL or `password_file`).
    pub password: Option<String>,
    /// PEM CA certificates for TLS (`tls.ca_file`); `None`: the system's and the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Key prefix.
    pub key_prefix: String,
    /// Per-call wait.
    pub timeout: Duration,
    /// Idle connections kept.
    pub pool_size: usize,
    /// Key expiry after a write.
    pub ttl: Option<Duration>,
    /// The servers without passwords, for logs.
    pub display: String,
}

impl SharedDataFile {
    pub(super) fn validate(&self, base: &Path, errors: &mut Vec<ConfigError>) -> SharedData {
        let backend = self.backend.unwrap_or(Backend::Memory);
        if backend == Backend::Memory {
            for (set, field) in [
                (self.url.is_some(), "url"),
                (self.sentinel.is_some(), "sentinel"),
                (self.cluster.is_some(), "cluster"),
                (self.tls.is_some(), "tls"),
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
        let servers = self.servers(errors);
        let mut password = None;
        let mut username = None;
        let mut db = 0;
        match &servers {
            Some(Servers::Single(n)) => {
                (username, password) = (n.username.clone(), n.password.clone());
                db = self.url.as_deref().map_or(0, url_db);
            }
            Some(Servers::Cluster(nodes)) => {
                // The nodes share their credentials: the first URL that has some.
                if let Some(n) = nodes.iter().find(|n| n.password.is_some()) {
                    (username, password) = (n.username.clone(), n.password.clone());
                }
            }
            Some(Servers::Sentinel { .. }) => {
                let s = self.sentinel.as_ref().expect("sentinel servers");
                username = s.username.clone();
                db = s.db.unwrap_or(0);
            }
            None => {}
        }
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
        let mut ca_pem = None;
        if let Some(tls) = &self.tls {
            if servers.as_ref().is_some_and(|s| !s.tls()) {
                errors.push(ConfigError::invalid(
                    "shared_data.tls",
                    "only applies to rediss:// URLs (TLS)",
                ));
            }
            if let Some(f) = &tls.ca_file {
                let path = base.join(f);
                match super::upstream::load_ca(&path).and_then(|_| {
                    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
                }) {
                    Ok(pem) => ca_pem = Some(pem),
                    Err(m) => errors.push(ConfigError::invalid("shared_data.tls.ca_file", m)),
                }
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
        let Some(servers) = servers else {
            return SharedData::Memory;
        };
        if errors.len() > before {
            return SharedData::Memory;
        }
        SharedData::Redis(RedisSettings {
            display: self.display(),
            servers,
            db,
            username,
            password,
            ca_pem,
            key_prefix,
            timeout: Duration::from_millis(timeout_ms),
            pool_size,
            ttl,
        })
    }

    /// The servers, from exactly one of `url`, `sentinel`, `cluster`.
    fn servers(&self, errors: &mut Vec<ConfigError>) -> Option<Servers> {
        let given = [
            ("url", self.url.is_some()),
            ("sentinel", self.sentinel.is_some()),
            ("cluster", self.cluster.is_some()),
        ];
        let set: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if set.is_empty() {
            errors.push(ConfigError::invalid(
                "shared_data.url",
                "required with `backend: redis` (redis://host:port/db), unless `sentinel` or \
                 `cluster` is given",
            ));
            return None;
        }
        if set.len() > 1 {
            errors.push(ConfigError::invalid(
                format!("shared_data.{}", set[1]),
                format!(
                    "only one of url, sentinel and cluster may be given (here: {})",
                    set.join(", ")
                ),
            ));
            return None;
        }
        if let Some(url) = &self.url {
            return parse_url(url, 6379)
                .map(|(node, _)| Servers::Single(node))
                .map_err(|m| errors.push(ConfigError::invalid("shared_data.url", m)))
                .ok();
        }
        if let Some(s) = &self.sentinel {
            let master = match s.master.as_deref() {
                Some(m) if !m.is_empty() => Some(m.to_string()),
                _ => {
                    errors.push(ConfigError::invalid(
                        "shared_data.sentinel.master",
                        "required: the master's name the sentinels monitor",
                    ));
                    None
                }
            };
            let sentinels = node_list(&s.urls, "shared_data.sentinel.urls", 26379, errors);
            return Some(Servers::Sentinel {
                master: master?,
                sentinels: sentinels?,
            });
        }
        let c = self.cluster.as_ref().expect("one of the three");
        node_list(&c.urls, "shared_data.cluster.urls", 6379, errors).map(Servers::Cluster)
    }

    /// The servers for logs and `/config`, without passwords.
    fn display(&self) -> String {
        let list = |urls: &[String]| urls.iter().map(|u| redact(u)).collect::<Vec<_>>();
        if let Some(s) = &self.sentinel {
            format!(
                "sentinel master {} via {}",
                s.master.as_deref().unwrap_or(""),
                list(&s.urls).join(",")
            )
        } else if let Some(c) = &self.cluster {
            format!("cluster {}", list(&c.urls).join(","))
        } else {
            self.url.as_deref().map(redact).unwrap_or_default()
        }
    }
}

/// The nodes of a list of URLs (`field`), at least one, all with the same scheme, on
/// database 0 (sentinels and clusters have no other).
fn node_list(
    urls: &[String],
    field: &str,
    default_port: u16,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<Node>> {
    if urls.is_empty() {
        errors.push(ConfigError::invalid(
            field,
            "at least one redis:// URL is required",
        ));
        return None;
    }
    let before = errors.len();
    let mut nodes = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        match parse_url(url, default_port) {
            Ok((_, db)) if db != 0 => errors.push(ConfigError::invalid(
                format!("{field}[{i}]"),
                "a database number other than 0 (there is no other here)",
            )),
            Ok((node, _)) => nodes.push(node),
            Err(m) => errors.push(ConfigError::invalid(format!("{field}[{i}]"), m)),
        }
    }
    if let Some(i) = nodes.iter().position(|n| n.tls != nodes[0].tls) {
        errors.push(ConfigError::invalid(
            format!("{field}[{i}]"),
            "mixes redis:// and rediss:// URLs in one list",
        ));
    }
    (errors.len() == before).then_some(nodes)
}

/// The database number of a URL that parsed (0 when it has none).
fn url_db(url: &str) -> u32 {
    parse_url(url, 6379).map_or(0, |(_, db)| db)
}

/// A `redis://` or `rediss://` URL: the node and the database number.
fn parse_url(url: &str, default_port: u16) -> Result<(Node, u32), String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("redis", rest)) => (false, rest),
        Some(("rediss", rest)) => (true, rest),
        _ => {
            return Err(format!(
                "{:?} is not a redis:// or rediss:// URL",
                redact(url)
            ))
        }
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
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("port {p:?} is not a number"))?,
            ),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if port == 0 {
        return Err("port 0".into());
    }
    Ok((
        Node {
            host,
            port,
            tls,
            username,
            password,
        },
        db,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (SharedData, Vec<ConfigError>) {
        validate_in(Path::new("."), yaml)
    }

    fn validate_in(base: &Path, yaml: &str) -> (SharedData, Vec<ConfigError>) {
        let f: SharedDataFile = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let s = f.validate(base, &mut errors);
        (s, errors)
    }

    fn redis(yaml: &str) -> RedisSettings {
        let (s, e) = validate(yaml);
        assert!(e.is_empty(), "{yaml}: {e:?}");
        match s {
            SharedData::Redis(r) => r,
            SharedData::Memory => panic!("not redis: {yaml}"),
        }
    }

    fn node(host: &str, port: u16, tls: bool) -> Node {
        Node {
            host: host.into(),
            port,
            tls,
            username: None,
            password: None,
        }
    }

    #[test]
    fn urls_and_defaults() {
        let r = redis("{ backend: redis, url: 'redis://u:p%w@cache:6380/2' }");
        let Servers::Single(n) = &r.servers else {
            panic!("{:?}", r.servers)
        };
        assert_eq!(
            (n.host.as_str(), n.port, n.tls, r.db),
            ("cache", 6380, false, 2)
        );
        assert_eq!(r.username.as_deref(), Some("u"));
        assert_eq!(r.password.as_deref(), Some("p%w"));
        assert_eq!(r.display, "redis://u:***@cache:6380/2");
        assert_eq!(r.key_prefix, "sluice:");
        assert_eq!(r.timeout, Duration::from_millis(30));
        assert_eq!((r.pool_size, r.ttl, r.ca_pem), (16, None, None));

        let r = redis("{ backend: redis, url: 'redis://[::1]', ttl_ms: 60000 }");
        assert_eq!(r.servers, Servers::Single(node("::1", 6379, false)));
        assert_eq!(r.db, 0);
        assert_eq!(r.ttl, Some(Duration::from_secs(60)));
        assert_eq!(validate("{}").0, SharedData::Memory);

        let r = redis("{ backend: redis, url: 'rediss://cache.internal' }");
        assert_eq!(
            r.servers,
            Servers::Single(node("cache.internal", 6379, true))
        );
    }

    #[test]
    fn sentinel_and_cluster() {
        let r = redis(
            "{ backend: redis, password_file: /dev/null, sentinel: { master: mymaster, \
             username: app, db: 3, urls: ['redis://:sentinelpw@s1', 'redis://s2:5000'] } }",
        );
        let mut s1 = node("s1", 26379, false);
        s1.password = Some("sentinelpw".into());
        assert_eq!(
            r.servers,
            Servers::Sentinel {
                master: "mymaster".into(),
                sentinels: vec![s1, node("s2", 5000, false)],
            }
        );
        assert_eq!(
            (r.username.as_deref(), r.password.as_deref(), r.db),
            (Some("app"), Some(""), 3)
        );
        assert_eq!(
            r.display,
            "sentinel master mymaster via redis://:***@s1,redis://s2:5000"
        );

        let r = redis(
            "{ backend: redis, cluster: { urls: ['rediss://u:pw@n1:7000', 'rediss://n2'] } }",
        );
        let mut n1 = node("n1", 7000, true);
        (n1.username, n1.password) = (Some("u".into()), Some("pw".into()));
        assert_eq!(
            r.servers,
            Servers::Cluster(vec![n1, node("n2", 6379, true)])
        );
        assert_eq!(
            (r.username.as_deref(), r.password.as_deref()),
            (Some("u"), Some("pw"))
        );
        assert_eq!(r.display, "cluster rediss://u:***@n1:7000,rediss://n2");
    }

    #[test]
    fn the_ca_file_is_read_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("sluice-sd-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
        let (s, e) = validate_in(
            &dir,
            "{ backend: redis, url: 'rediss://h', tls: { ca_file: ca.pem } }",
        );
        assert!(e.is_empty(), "{e:?}");
        let SharedData::Redis(r) = s else {
            panic!("not redis")
        };
        assert_eq!(r.ca_pem.as_deref(), Some(ca.cert.pem().as_bytes()));
        let (_, e) = validate_in(
            &dir,
            "{ backend: redis, url: 'rediss://h', tls: { ca_file: junk.pem } }",
        );
        let text = format!("{e:?}");
        assert!(
            text.contains("shared_data.tls.ca_file") && text.contains("no PEM"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
                "{ cluster: { urls: ['redis://x'] } }",
                "shared_data.cluster",
                "backend: redis",
            ),
            (
                "{ backend: redis, url: 'redis://x', password_file: /nonexistent/pw }",
                "shared_data.password_file",
                "cannot read",
            ),
            (
                "{ backend: redis, url: 'redis://x', cluster: { urls: ['redis://y'] } }",
                "shared_data.cluster",
                "only one of url, sentinel and cluster",
            ),
            (
                "{ backend: redis, sentinel: { urls: ['redis://s'] } }",
                "shared_data.sentinel.master",
                "required",
            ),
            (
                "{ backend: redis, sentinel: { master: m } }",
                "shared_data.sentinel.urls",
                "at least one",
            ),
            (
                "{ backend: redis, sentinel: { master: m, urls: ['redis://s', 'tcp://t'] } }",
                "shared_data.sentinel.urls[1]",
                "not a redis://",
            ),
            (
                "{ backend: redis, sentinel: { master: m, urls: ['redis://s', 'rediss://t'] } }",
                "shared_data.sentinel.urls[1]",
                "mixes",
            ),
            (
                "{ backend: redis, cluster: { urls: ['redis://n1', 'redis://n2/1'] } }",
                "shared_data.cluster.urls[1]",
                "database",
            ),
            (
                "{ backend: redis, cluster: { urls: [] } }",
                "shared_data.cluster.urls",
                "at least one",
            ),
            (
                "{ backend: redis, url: 'redis://x', tls: {} }",
                "shared_data.tls",
                "rediss://",
            ),
            (
                "{ backend: redis, url: 'rediss://x', tls: { ca_file: /nonexistent/ca.pem } }",
                "shared_data.tls.ca_file",
                "cannot read",
            ),
        ] {
            let (s, e) = validate(yaml);
            let text = e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            assert!(
                text.contains(field) && text.contains(words),
                "{yaml}: {text}"
            );
            assert_eq!(s, SharedData::Memory, "{yaml}");
        }
        let f: Result<SharedDataFile, _> = serde_yaml::from_str("{ backend: etcd }");
        assert!(f.is_err());
        let f: Result<SharedDataFile, _> =
            serde_yaml::from_str("{ sentinel: { master: m, nodes: [] } }");
        assert!(f.is_err(), "unknown fields are refused");
    }

    #[test]
    fn the_config_shown_hides_the_password() {
        let f: SharedDataFile = serde_yaml::from_str(
            "{ backend: redis, url: 'redis://:secret@h:1', \
             sentinel: { master: m, urls: ['redis://u:secret2@s'] }, \
             cluster: { urls: ['rediss://:secret3@n'] } }",
        )
        .unwrap();
        let shown = serde_json::to_string(&f).unwrap();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redis://:***@h:1"), "{shown}");
        assert!(shown.contains("redis://u:***@s"), "{shown}");
        assert!(shown.contains("rediss://:***@n"), "{shown}");
    }
}
