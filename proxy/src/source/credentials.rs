//! Registry credentials: from the environment (`SLUICE_OCI_USERNAME`/`SLUICE_OCI_PASSWORD`,
//! `SLUICE_OCI_TOKEN`), else from a Docker `config.json` (`auths` keyed by registry).
//!
//! The environment's credentials, when set, are used for every registry (as before
//! `config.json` was read). A `config.json` entry is only used for the registry it is keyed by
//! (`host[:port]`; keys written as URLs such as `https://index.docker.io/v1/` name their host;
//! `docker.io`, `index.docker.io` and `registry-1.docker.io` are one registry). Entries give
//! `auth` (base64 of `user:password`), or `username` and `password`, and may give an
//! `identitytoken` (an OAuth2 refresh token, exchanged at the registry's token realm).
//! Credential helpers (`credHelpers`, `credsStore`) are not run: a registry that only has one
//! is spoken to anonymously, with a warning logged once per registry.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;

/// Environment variable: user name for registries that ask for credentials.
pub const USERNAME_ENV: &str = "SLUICE_OCI_USERNAME";
/// Environment variable: password (or access token) going with [`USERNAME_ENV`].
pub const PASSWORD_ENV: &str = "SLUICE_OCI_PASSWORD";
/// Environment variable: a bearer token to present when a registry asks for one.
pub const TOKEN_ENV: &str = "SLUICE_OCI_TOKEN";
/// Environment variable: the directory holding Docker's `config.json`.
pub const DOCKER_CONFIG_ENV: &str = "DOCKER_CONFIG";

/// The name every Docker Hub alias is filed under.
const DOCKER_HUB: &str = "docker.io";
/// Host names of Docker Hub.
const DOCKER_HUB_ALIASES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// The credentials for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name and password, for basic authentication and token requests.
    pub basic: Option<(String, String)>,
    /// A ready bearer token.
    pub token: Option<String>,
    /// An OAuth2 refresh token (`identitytoken` of `config.json`), exchanged at the token
    /// realm for a bearer token.
    pub identity_token: Option<String>,
    /// Where they come from, for error messages (`SLUICE_OCI_USERNAME/SLUICE_OCI_PASSWORD`,
    /// `the "ghcr.io" entry of /root/.docker/config.json`); empty when there are none.
    pub origin: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("basic", &self.basic.as_ref().map(|(u, _)| (u, "***")))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "***"),
            )
            .field("origin", &self.origin)
            .finish()
    }
}

impl Credentials {
    /// From `SLUICE_OCI_USERNAME`, `SLUICE_OCI_PASSWORD` and `SLUICE_OCI_TOKEN`.
    pub fn from_env() -> Credentials {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let mut c = Credentials {
            basic: var(USERNAME_ENV).map(|u| (u, var(PASSWORD_ENV).unwrap_or_default())),
            token: var(TOKEN_ENV),
            ..Credentials::default()
        };
        c.origin = match (&c.basic, &c.token) {
            (Some(_), Some(_)) => format!("{USERNAME_ENV}/{PASSWORD_ENV} and {TOKEN_ENV}"),
            (Some(_), None) => format!("{USERNAME_ENV}/{PASSWORD_ENV}"),
            (None, Some(_)) => TOKEN_ENV.to_string(),
            (None, None) => String::new(),
        };
        c
    }

    /// Whether there is anything to present.
    pub fn is_empty(&self) -> bool {
        self.basic.is_none() && self.token.is_none() && self.identity_token.is_none()
    }
}

/// A Docker `config.json`, as far as registry credentials go.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Credentials by registry ([`registry_key`]).
    auths: BTreeMap<String, Credentials>,
    /// Registries ([`registry_key`]) with a credential helper of their own.
    helpers: BTreeMap<String, String>,
    /// The default credential helper (`credsStore`).
    store: Option<String>,
}

impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("registries", &self.auths.keys().collect::<Vec<_>>())
            .field("helpers", &self.helpers)
            .field("store", &self.store)
            .finish()
    }
}

/// The `config.json` document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The name a registry is filed under: the host (and port) of a `config.json` key or of a
/// reference's registry, lower case, every Docker Hub alias as `docker.io`.
/// `https://index.docker.io/v1/` → `docker.io`; `http://localhost:5000` → `localhost:5000`.
pub fn registry_key(registry: &str) -> String {
    let s = registry.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let host = s
        .split(['/', '?', '#'])
        .next()
        .unwrap_or(s)
        .to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        host
    }
}

impl DockerConfig {
    /// Parses a `config.json` read from `path`. Errors name the entry that is wrong.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<DockerConfig, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not a Docker config.json: {e}"))?;
        if !value.is_object() {
            return Err("not a Docker config.json: not a JSON object".into());
        }
        let doc: ConfigJson =
            serde_json::from_value(value).map_err(|e| format!("not a Docker config.json: {e}"))?;
        let mut auths = BTreeMap::new();
        for (key, entry) in doc.auths {
            let name = registry_key(&key);
            if name.is_empty() {
                return Err(format!("auths: the key {key:?} names no registry"));
            }
            let where_ = format!("the {key:?} entry of {}", path.display());
            let basic = match (&entry.auth, &entry.username, &entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let decoded = STANDARD
                        .decode(a.trim())
                        .map_err(|e| format!("auths.{key:?}.auth is not base64: {e}"))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|_| format!("auths.{key:?}.auth is not UTF-8 once decoded"))?;
                    let (u, p) = text.split_once(':').ok_or_else(|| {
                        format!("auths.{key:?}.auth is not base64 of user:password (no ':')")
                    })?;
                    Some((u.to_string(), p.to_string()))
                }
                (_, Some(u), p) if !u.is_empty() => {
                    Some((u.clone(), p.clone().unwrap_or_default()))
                }
                _ => None,
            };
            let c = Credentials {
                basic,
                token: entry.registrytoken.filter(|t| !t.is_empty()),
                identity_token: entry.identitytoken.filter(|t| !t.is_empty()),
                origin: where_,
            };
            // Entries without credentials (what `docker login` leaves when a helper holds
            // them) are skipped; the helper is reported instead.
            if !c.is_empty() {
                auths.insert(name, c);
            }
        }
        Ok(DockerConfig {
            path: path.to_path_buf(),
            auths,
            helpers: doc
                .cred_helpers
                .into_iter()
                .map(|(k, v)| (registry_key(&k), v))
                .collect(),
            store: doc.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<DockerConfig, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        DockerConfig::parse(path, &bytes)
    }

    /// Where Docker keeps it: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(DOCKER_CONFIG_ENV).filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        Some(PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// The default file, if it exists; one that exists but cannot be used is logged and
    /// ignored (it was not asked for by name).
    pub fn load_default() -> Option<DockerConfig> {
        let path = DockerConfig::default_path()?;
        if !path.exists() {
            return None;
        }
        match DockerConfig::load(&path) {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring the Docker config file");
                None
            }
        }
    }

    /// The credentials for `registry` (`host[:port]`), if the file has some.
    pub fn credentials_for(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&registry_key(registry))
    }

    /// The credential helper that holds `registry`'s credentials, if the file names one
    /// (`credHelpers`, else `credsStore`) and has no `auths` entry for it.
    pub fn helper_for(&self, registry: &str) -> Option<&str> {
        let key = registry_key(registry);
        if self.auths.contains_key(&key) {
            return None;
        }
        self.helpers
            .get(&key)
            .map(String::as_str)
            .or(self.store.as_deref())
    }
}

/// Where registry credentials are looked up: the environment's, else a `config.json`'s.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    /// From the environment; used for every registry when set.
    pub env: Credentials,
    /// The `config.json`, if any.
    pub docker: Option<Arc<DockerConfig>>,
}

impl CredentialStore {
    /// The environment's credentials, and the default `config.json` if it exists.
    pub fn from_env() -> CredentialStore {
        CredentialStore {
            env: Credentials::from_env(),
            docker: DockerConfig::load_default().map(Arc::new),
        }
    }

    /// The credentials to present to `registry` (`host[:port]`): the environment's if set,
    /// else the `config.json` entry of that registry, else none.
    pub fn for_registry(&self, registry: &str) -> Credentials {
        if !self.env.is_empty() {
            return self.env.clone();
        }
        let Some(docker) = &self.docker else {
            return Credentials::default();
        };
        if let Some(c) = docker.credentials_for(registry) {
            return c.clone();
        }
        if let Some(helper) = docker.helper_for(registry) {
            warn_helper_once(registry, helper, &docker.path);
        }
        Credentials::default()
    }
}

/// Logs, once per registry and process, that its credential helper is not run.
fn warn_helper_once(registry: &str, helper: &str, path: &Path) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = WARNED
        .get_or_init(Default::default)
        .lock()
        .map(|mut w| w.insert(registry_key(registry)))
        .unwrap_or(false);
    if first {
        tracing::warn!(
            registry,
            helper = %format!("docker-credential-{helper}"),
            path = %path.display(),
            "credential helpers are not supported: speaking to the registry anonymously; \
             put its credentials in auths (or use SLUICE_OCI_USERNAME/SLUICE_OCI_PASSWORD)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DockerConfig, String> {
        DockerConfig::parse(Path::new("/cfg/config.json"), json.as_bytes())
    }

    #[test]
    fn registry_keys_are_hosts_and_docker_hub_is_one_registry() {
        for (key, want) in [
            ("ghcr.io", "ghcr.io"),
            ("GHCR.io", "ghcr.io"),
            ("https://ghcr.io", "ghcr.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("http://localhost:5000", "localhost:5000"),
            ("127.0.0.1:5000/v2/", "127.0.0.1:5000"),
            ("[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(registry_key(key), want, "{key}");
        }
    }

    #[test]
    fn config_json_entries_parse() {
        let c = parse(&format!(
            r#"{{
                "auths": {{
                    "https://index.docker.io/v1/": {{ "auth": "{}" }},
                    "ghcr.io": {{ "username": "bot", "password": "pat" }},
                    "acr.example.io": {{ "identitytoken": "refresh-me" }},
                    "127.0.0.1:5000": {{ "auth": "{}", "email": "ignored@example.com" }},
                    "helped.example.io": {{}}
                }},
                "credHelpers": {{ "helped.example.io": "ecr-login" }},
                "credsStore": "desktop",
                "HttpHeaders": {{ "X-Meta": "ignored" }}
            }}"#,
            STANDARD.encode("hub-user:hub:pass"),
            STANDARD.encode("pusher:s3cret"),
        ))
        .unwrap();
        let hub = c.credentials_for("registry-1.docker.io").unwrap();
        // The password keeps its colons: only the first one separates.
        assert_eq!(hub.basic, Some(("hub-user".into(), "hub:pass".into())));
        assert_eq!(
            hub.origin,
            "the \"https://index.docker.io/v1/\" entry of /cfg/config.json"
        );
        assert_eq!(c.credentials_for("docker.io"), Some(hub));
        assert_eq!(
            c.credentials_for("GHCR.IO").unwrap().basic,
            Some(("bot".into(), "pat".into()))
        );
        let acr = c.credentials_for("acr.example.io").unwrap();
        assert_eq!(acr.basic, None);
        assert_eq!(acr.identity_token.as_deref(), Some("refresh-me"));
        assert_eq!(
            c.credentials_for("127.0.0.1:5000").unwrap().basic,
            Some(("pusher".into(), "s3cret".into()))
        );
        // Another port of the same host is another registry.
        assert_eq!(c.credentials_for("127.0.0.1:5001"), None);
        assert_eq!(c.credentials_for("127.0.0.1"), None);
        // An empty entry is no credentials; its helper is reported, then the default store.
        assert_eq!(c.credentials_for("helped.example.io"), None);
        assert_eq!(c.helper_for("helped.example.io"), Some("ecr-login"));
        assert_eq!(c.helper_for("other.example.io"), Some("desktop"));
        assert_eq!(c.helper_for("ghcr.io"), None);
        // Secrets stay out of Debug.
        let debug = format!("{c:?} {hub:?}");
        assert!(
            !debug.contains("pass") && !debug.contains("refresh-me"),
            "{debug}"
        );
    }

    #[test]
    fn malformed_config_json_is_refused_naming_the_entry() {
        let no_colon = format!(
            r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
            STANDARD.encode("nocolon")
        );
        for (json, why) in [
            ("not json", "not a Docker config.json"),
            ("[]", "not a Docker config.json"),
            (r#"{"auths": {"r.io": "x"}}"#, "not a Docker config.json"),
            (
                r#"{"auths": {"r.io": {"auth": "%%%"}}}"#,
                "auths.\"r.io\".auth is not base64",
            ),
            (no_colon.as_str(), "no ':'"),
            (r#"{"auths": {"": {"username": "u"}}}"#, "names no registry"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(why), "{json}: {e:?} should say {why:?}");
        }
        assert_eq!(
            parse("{}").unwrap(),
            DockerConfig {
                path: "/cfg/config.json".into(),
                ..DockerConfig::default()
            }
        );
    }

    #[test]
    fn the_environment_wins_and_entries_stay_with_their_registry() {
        let docker = Arc::new(
            parse(&format!(
                r#"{{"auths": {{"a.example.io": {{"auth": "{}"}}}}}}"#,
                STANDARD.encode("a:1")
            ))
            .unwrap(),
        );
        let store = CredentialStore {
            env: Credentials::default(),
            docker: Some(docker.clone()),
        };
        assert_eq!(
            store.for_registry("a.example.io").basic,
            Some(("a".into(), "1".into()))
        );
        assert!(store.for_registry("b.example.io").is_empty());
        let env = Credentials {
            token: Some("t".into()),
            origin: TOKEN_ENV.into(),
            ..Credentials::default()
        };
        let store = CredentialStore {
            env: env.clone(),
            docker: Some(docker),
        };
        assert_eq!(store.for_registry("a.example.io"), env);
    }
}
