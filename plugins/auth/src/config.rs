//! The configuration: its JSON schema (every struct refuses unknown fields) and its
//! validation into [`Settings`]. Every error names the field at fault, and none shows a
//! secret.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::Error;

use crate::apikey::{ApiKey, ApiKeys};
use crate::basic::{User, Users};
use crate::challenge::Challenges;
use crate::encoding::{is_header_value, is_quotable, is_token};
use crate::jwk::{Alg, JwkSet, Key};
use crate::jwt::{Requirements, Validator};
use crate::remote::{self, Remote, Source};
use crate::secret::Digest;

/// The realm when none is configured.
pub const DEFAULT_REALM: &str = "sluice";
/// The API-key header when neither `header` nor `query` is configured.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// The header carrying the id of the API key used.
pub const DEFAULT_KEY_ID_HEADER: &str = "x-auth-key-id";
/// The header carrying the basic-auth user.
pub const DEFAULT_USER_HEADER: &str = "x-auth-user";
/// The default clock-skew allowance on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY: u64 = 60;
/// The largest leeway accepted, in seconds.
pub const MAX_LEEWAY: u64 = 3600;

/// Headers the plugin never writes: hop-by-hop and framing headers, credentials, and those
/// the host hides from plugins.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
    "x-request-id",
];

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The realm of the challenges (default `sluice`).
    #[serde(default)]
    pub realm: Option<String>,
    /// Path prefixes (without query) that skip authentication.
    #[serde(default)]
    pub allow_paths: Vec<String>,
    /// Remove the credentials the plugin reads before the upstream (default `true`).
    #[serde(default = "yes")]
    pub strip_credential: bool,
    /// API keys.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// JWT bearer tokens.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Basic authentication.
    #[serde(default)]
    pub basic: Option<BasicConfig>,
}

fn yes() -> bool {
    true
}

/// `api_keys` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The request header holding a key (default `x-api-key` when `query` is not set).
    #[serde(default)]
    pub header: Option<String>,
    /// The query parameter holding a key.
    #[serde(default)]
    pub query: Option<String>,
    /// The keys.
    pub keys: Vec<ApiKeyConfig>,
    /// The header the id of the key is forwarded in (default `x-auth-key-id`).
    #[serde(default)]
    pub id_header: Option<String>,
}

/// One API key as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Its id, forwarded upstream.
    pub id: String,
    /// SHA-256 of the key, 64 hex digits.
    pub sha256: String,
}

/// `jwt` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// If set, `aud` must name one of these.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 60, at most 3600).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Accepted algorithms (default all: HS256, RS256, ES256).
    #[serde(default)]
    pub algorithms: Option<Vec<Alg>>,
    /// Refuse tokens without `exp` (default `false`).
    #[serde(default)]
    pub require_exp: bool,
    /// The verification keys written here.
    #[serde(default)]
    pub jwks: Option<JwkSet>,
    /// Where to fetch verification keys: a path (with query) or an `https://` URL.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The upstream pool the keys are fetched through.
    #[serde(default)]
    pub jwks_upstream: Option<String>,
    /// Seconds between fetches (default 300).
    #[serde(default)]
    pub jwks_refresh_seconds: Option<u64>,
    /// Deadline of one fetch, in milliseconds (default 5000).
    #[serde(default)]
    pub jwks_fetch_timeout_ms: Option<u64>,
    /// Fewest seconds between two fetches caused by unknown `kid`s (default 30).
    #[serde(default)]
    pub jwks_min_refetch_seconds: Option<u64>,
    /// Scopes and claims a token must carry, else 403.
    #[serde(default)]
    pub require: Option<RequireConfig>,
    /// Claim name → request header it is forwarded in.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY
}

/// `jwt.require` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    /// Scopes that must all be granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claim name → value it must have (or contain, for an array claim).
    #[serde(default)]
    pub claims: BTreeMap<String, Value>,
}

/// `basic` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    /// The users.
    pub users: Vec<BasicUserConfig>,
    /// The header the user name is forwarded in (default `x-auth-user`).
    #[serde(default)]
    pub user_header: Option<String>,
}

/// One basic-auth user as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicUserConfig {
    /// The name.
    pub user: String,
    /// SHA-256 of the password, 64 hex digits.
    pub sha256: String,
}

/// JWT settings, validated.
#[derive(Debug)]
pub struct Jwt {
    /// Checks tokens.
    pub validator: Validator,
    /// What a valid token must also carry.
    pub require: Requirements,
    /// Claim name and the header it is forwarded in.
    pub forward_claims: Vec<(String, String)>,
    /// Keys fetched from `jwks_uri`, if set.
    pub remote: Option<Remote>,
}

/// The configuration, validated.
#[derive(Debug)]
pub struct Settings {
    /// Path prefixes that skip authentication.
    pub allow_paths: Vec<String>,
    /// Remove credentials before the upstream.
    pub strip_credential: bool,
    /// API keys, if on.
    pub api_keys: Option<ApiKeys>,
    /// JWT, if on.
    pub jwt: Option<Jwt>,
    /// Basic authentication, if on.
    pub basic: Option<Users>,
    /// Every header the plugin may set on success: removed from every request first.
    pub identity_headers: Vec<String>,
    /// The 401 and 403 answers.
    pub challenges: Challenges,
}

fn bad(field: impl std::fmt::Display, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("{field}: {message}"))
}

/// A header name the plugin writes: lower-cased, an HTTP token, not reserved.
fn written_header(field: &str, name: &str) -> Result<String, Error> {
    let name = name.to_ascii_lowercase();
    if !is_token(&name) {
        return Err(bad(field, format!("{name:?} is not a valid header name")));
    }
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(bad(field, format!("{name:?} cannot be set by this plugin")));
    }
    Ok(name)
}

/// A query parameter name: letters, digits, `-`, `_`, `.`, `~`.
fn query_name(field: &str, name: &str) -> Result<String, Error> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(bad(
            field,
            format!("{name:?} is not a valid parameter name (letters, digits, -, _, ., ~)"),
        ))
    }
}

fn digest(field: &str, hex: &str) -> Result<Digest, Error> {
    Digest::from_hex(hex).ok_or_else(|| bad(field, "expected 64 hex digits (a SHA-256 digest)"))
}

impl Settings {
    /// Validates `config`.
    pub fn new(config: Config) -> Result<Settings, Error> {
        if config.api_keys.is_none() && config.jwt.is_none() && config.basic.is_none() {
            return Err(Error::Config(
                "enable at least one of api_keys, jwt, basic".into(),
            ));
        }
        let realm = config.realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
        if realm.is_empty() || realm.len() > 128 || !is_quotable(&realm) {
            return Err(bad(
                "realm",
                "1–128 printable ASCII characters, without '\"' or '\\'",
            ));
        }
        let allow_paths = config
            .allow_paths
            .iter()
            .enumerate()
            .map(|(i, p)| allow_path(&format!("allow_paths[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let api_keys = config.api_keys.map(api_keys).transpose()?;
        let jwt = config.jwt.map(jwt).transpose()?;
        let basic = config.basic.map(basic).transpose()?;

        let mut identity_headers: Vec<String> = Vec::new();
        let written = api_keys
            .iter()
            .map(|k| &k.id_header)
            .chain(basic.iter().map(|b| &b.user_header))
            .chain(
                jwt.iter()
                    .flat_map(|j| j.forward_claims.iter().map(|(_, h)| h)),
            );
        for h in written {
            if !identity_headers.contains(h) {
                identity_headers.push(h.clone());
            }
        }
        if let Some(read) = api_keys.as_ref().and_then(|k| k.header.as_ref()) {
            if identity_headers.contains(read) {
                return Err(bad(
                    "api_keys.header",
                    format!("{read:?} is also a header this plugin sets"),
                ));
            }
        }
        let scopes = jwt
            .as_ref()
            .map(|j| j.require.scopes.clone())
            .unwrap_or_default();
        let challenges = Challenges::new(
            &realm,
            jwt.is_some(),
            basic.is_some(),
            api_keys
                .as_ref()
                .map(|k| (k.header.clone(), k.query.clone())),
            &scopes,
        );
        Ok(Settings {
            allow_paths,
            strip_credential: config.strip_credential,
            api_keys,
            jwt,
            basic,
            identity_headers,
            challenges,
        })
    }
}

fn allow_path(field: &str, path: &str) -> Result<String, Error> {
    if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace) {
        return Err(bad(
            field,
            format!("{path:?} must be a path starting with '/', without query"),
        ));
    }
    if path == "/" {
        return Err(bad(field, "\"/\" would skip authentication on every path"));
    }
    Ok(path.to_string())
}

fn api_keys(c: ApiKeysConfig) -> Result<ApiKeys, Error> {
    let header = match (&c.header, &c.query) {
        (None, None) => Some(DEFAULT_API_KEY_HEADER.to_string()),
        (h, _) => h.as_deref().map(|h| h.to_ascii_lowercase()),
    };
    if let Some(h) = &header {
        if !is_token(h) {
            return Err(bad(
                "api_keys.header",
                format!("{h:?} is not a valid header name"),
            ));
        }
        if h == "authorization" || h == "proxy-authorization" {
            return Err(bad(
                "api_keys.header",
                format!("{h:?} is for jwt and basic; choose another header"),
            ));
        }
    }
    let query = c
        .query
        .as_deref()
        .map(|q| query_name("api_keys.query", q))
        .transpose()?;
    if c.keys.is_empty() {
        return Err(bad("api_keys.keys", "at least one key is needed"));
    }
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, k) in c.keys.iter().enumerate() {
        let field = format!("api_keys.keys[{i}]");
        if k.id.is_empty() || k.id.len() > 256 || !is_header_value(&k.id) {
            return Err(bad(
                format!("{field}.id"),
                "1–256 characters, no control characters",
            ));
        }
        if keys.iter().any(|other| other.id == k.id) {
            return Err(bad(
                format!("{field}.id"),
                format!("{:?} is used twice", k.id),
            ));
        }
        let d = digest(&format!("{field}.sha256"), &k.sha256)?;
        if keys.iter().any(|other| other.digest == d) {
            return Err(bad(
                format!("{field}.sha256"),
                "the same key as another entry",
            ));
        }
        keys.push(ApiKey {
            id: k.id.clone(),
            digest: d,
        });
    }
    let id_header = written_header(
        "api_keys.id_header",
        c.id_header.as_deref().unwrap_or(DEFAULT_KEY_ID_HEADER),
    )?;
    Ok(ApiKeys {
        header,
        query,
        keys,
        id_header,
    })
}

fn jwt(c: JwtConfig) -> Result<Jwt, Error> {
    if let Some(iss) = &c.issuer {
        if iss.is_empty() {
            return Err(bad(
                "jwt.issuer",
                "empty; leave it out to accept any issuer",
            ));
        }
    }
    if let Some(auds) = &c.audiences {
        if auds.is_empty() || auds.iter().any(String::is_empty) {
            return Err(bad(
                "jwt.audiences",
                "non-empty strings, at least one; leave it out to accept any audience",
            ));
        }
    }
    if c.leeway_seconds > MAX_LEEWAY {
        return Err(bad("jwt.leeway_seconds", format!("at most {MAX_LEEWAY}")));
    }
    let mut algorithms = Vec::new();
    for a in c.algorithms.as_deref().unwrap_or(&Alg::ALL) {
        let a = *a;
        if !algorithms.contains(&a) {
            algorithms.push(a);
        }
    }
    if algorithms.is_empty() {
        return Err(bad("jwt.algorithms", "at least one algorithm is needed"));
    }
    let source = jwks_source(&c)?;
    if c.jwks.is_none() && source.is_none() {
        return Err(bad(
            "jwt",
            "no keys: set jwks (keys written here), jwks_uri and jwks_upstream (keys fetched \
             from the identity provider), or both",
        ));
    }
    let inline = c.jwks.as_ref().map_or(&[][..], |set| &set.keys[..]);
    if c.jwks.is_some() && inline.is_empty() {
        return Err(bad(
            "jwt.jwks.keys",
            "at least one key is needed (leave jwks out to use only jwks_uri)",
        ));
    }
    let mut keys: Vec<Key> = Vec::new();
    for (i, jwk) in inline.iter().enumerate() {
        let field = match &jwk.kid {
            Some(kid) => format!("jwt.jwks.keys[{i}] (kid {kid:?})"),
            None => format!("jwt.jwks.keys[{i}]"),
        };
        let key = Key::from_jwk(jwk).map_err(|m| bad(&field, m))?;
        if key.kid().is_some() && keys.iter().any(|k| k.kid() == key.kid()) {
            return Err(bad(&field, "the same kid as another key"));
        }
        keys.push(key);
    }
    // Fetched keys may bring the fitting ones.
    if source.is_none()
        && !keys
            .iter()
            .any(|k| algorithms.iter().any(|&a| k.supports(a)))
    {
        return Err(bad(
            "jwt.jwks.keys",
            "no key fits any algorithm of jwt.algorithms",
        ));
    }
    let require = c.require.unwrap_or_default();
    for (i, s) in require.scopes.iter().enumerate() {
        if s.is_empty() || s.contains(' ') || !is_quotable(s) {
            return Err(bad(
                format!("jwt.require.scopes[{i}]"),
                "a scope is printable ASCII without spaces, '\"' or '\\'",
            ));
        }
    }
    let mut claims = Vec::new();
    for (name, value) in require.claims {
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(bad(
                format!("jwt.require.claims.{name}"),
                "the value must be a string, a number or a boolean",
            ));
        }
        claims.push((name, value));
    }
    let mut forward_claims: Vec<(String, String)> = Vec::new();
    for (claim, header) in c.forward_claims {
        let field = format!("jwt.forward_claims.{claim}");
        if claim.is_empty() {
            return Err(bad("jwt.forward_claims", "an empty claim name"));
        }
        let header = written_header(&field, &header)?;
        if forward_claims.iter().any(|(_, h)| *h == header) {
            return Err(bad(&field, format!("{header:?} is used for another claim")));
        }
        forward_claims.push((claim, header));
    }
    Ok(Jwt {
        validator: Validator {
            keys,
            remote: Default::default(),
            algorithms,
            issuer: c.issuer,
            audiences: c.audiences,
            leeway: c.leeway_seconds,
            require_exp: c.require_exp,
            verified: Default::default(),
        },
        require: Requirements {
            scopes: require.scopes,
            claims,
        },
        forward_claims,
        remote: source.map(Remote::new),
    })
}

/// `jwt.jwks_uri`, `jwt.jwks_upstream` and their timings, checked; `None` without `jwks_uri`.
fn jwks_source(c: &JwtConfig) -> Result<Option<Source>, Error> {
    let (uri, upstream) = match (&c.jwks_uri, &c.jwks_upstream) {
        (Some(uri), Some(upstream)) => (uri, upstream),
        (Some(_), None) => {
            return Err(bad(
                "jwt.jwks_upstream",
                "required with jwt.jwks_uri: the upstream the keys are fetched through \
                 (list it in the plugin's allowed_upstreams)",
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                "jwt.jwks_uri",
                "required with jwt.jwks_upstream: the path (or https:// URL) of the key set",
            ))
        }
        (None, None) => {
            let timings = [
                ("jwt.jwks_refresh_seconds", c.jwks_refresh_seconds),
                ("jwt.jwks_fetch_timeout_ms", c.jwks_fetch_timeout_ms),
                ("jwt.jwks_min_refetch_seconds", c.jwks_min_refetch_seconds),
            ];
            if let Some((field, _)) = timings.iter().find(|(_, v)| v.is_some()) {
                return Err(bad(field, "only with jwt.jwks_uri"));
            }
            return Ok(None);
        }
    };
    let (authority, path) = remote::parse_uri(uri).map_err(|m| bad("jwt.jwks_uri", m))?;
    if upstream.is_empty() || upstream.len() > 256 || !is_header_value(upstream) {
        return Err(bad(
            "jwt.jwks_upstream",
            "the name of an upstream: 1–256 characters, no control characters",
        ));
    }
    let within = |field: &str, value: Option<u64>, default: u64, max: u64| match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(bad(field, format!("1–{max}"))),
    };
    let refresh_seconds = within(
        "jwt.jwks_refresh_seconds",
        c.jwks_refresh_seconds,
        remote::DEFAULT_REFRESH_SECONDS,
        remote::MAX_REFRESH_SECONDS,
    )?;
    let timeout_ms = within(
        "jwt.jwks_fetch_timeout_ms",
        c.jwks_fetch_timeout_ms,
        remote::DEFAULT_FETCH_TIMEOUT_MS,
        remote::MAX_FETCH_TIMEOUT_MS,
    )?;
    let min_refetch_seconds = within(
        "jwt.jwks_min_refetch_seconds",
        c.jwks_min_refetch_seconds,
        remote::DEFAULT_MIN_REFETCH_SECONDS,
        remote::MAX_MIN_REFETCH_SECONDS,
    )?;
    Ok(Some(Source {
        upstream: upstream.clone(),
        authority,
        path,
        refresh_seconds,
        // At most MAX_FETCH_TIMEOUT_MS (checked above).
        timeout_ms: u32::try_from(timeout_ms).unwrap_or(u32::MAX),
        min_refetch_seconds,
    }))
}

fn basic(c: BasicConfig) -> Result<Users, Error> {
    if c.users.is_empty() {
        return Err(bad("basic.users", "at least one user is needed"));
    }
    let mut users: Vec<User> = Vec::new();
    for (i, u) in c.users.iter().enumerate() {
        let field = format!("basic.users[{i}]");
        if u.user.is_empty() || u.user.contains(':') || !is_header_value(&u.user) {
            return Err(bad(
                format!("{field}.user"),
                "a non-empty name without ':' or control characters",
            ));
        }
        if users.iter().any(|other| other.name == u.user) {
            return Err(bad(
                format!("{field}.user"),
                format!("{:?} is listed twice", u.user),
            ));
        }
        users.push(User {
            name: u.user.clone(),
            name_digest: Digest::of(u.user.as_bytes()),
            password: digest(&format!("{field}.sha256"), &u.sha256)?,
        });
    }
    let user_header = written_header(
        "basic.user_header",
        c.user_header.as_deref().unwrap_or(DEFAULT_USER_HEADER),
    )?;
    Ok(Users { users, user_header })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEX: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    const K: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn settings(v: Value) -> Result<Settings, String> {
        let c: Config = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Settings::new(c).map_err(|e| e.to_string())
    }

    fn refused(v: Value, words: &str) {
        match settings(v) {
            Ok(_) => panic!("accepted; expected an error with {words:?}"),
            Err(e) => assert!(e.contains(words), "{e:?} lacks {words:?}"),
        }
    }

    fn jwt_with(extra: Value) -> Value {
        let mut j = json!({"jwks": {"keys": [{"kty": "oct", "kid": "h1", "k": K}]}});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        json!({ "jwt": j })
    }

    #[test]
    fn a_full_configuration() {
        let s = settings(json!({
            "realm": "api",
            "allow_paths": ["/health", "/public/"],
            "strip_credential": false,
            "api_keys": {"header": "X-Api-Key", "query": "api_key",
                         "keys": [{"id": "ci", "sha256": HEX}]},
            "jwt": {
                "issuer": "https://issuer.example", "audiences": ["api"],
                "leeway_seconds": 30, "algorithms": ["HS256", "HS256"],
                "jwks": {"keys": [{"kty": "oct", "kid": "h1", "k": K}]},
                "require": {"scopes": ["read"], "claims": {"role": "admin"}},
                "forward_claims": {"sub": "X-Auth-Subject", "email": "x-auth-email"}
            },
            "basic": {"users": [{"user": "alice", "sha256": HEX}]}
        }))
        .unwrap();
        assert!(!s.strip_credential);
        let k = s.api_keys.as_ref().unwrap();
        assert_eq!(k.header.as_deref(), Some("x-api-key"), "lower-cased");
        assert_eq!(k.id_header, "x-auth-key-id");
        let j = s.jwt.as_ref().unwrap();
        assert_eq!(j.validator.algorithms, vec![Alg::HS256], "deduplicated");
        assert_eq!(
            s.identity_headers,
            vec![
                "x-auth-key-id",
                "x-auth-user",
                "x-auth-email",
                "x-auth-subject"
            ]
        );
    }

    #[test]
    fn defaults() {
        let s = settings(json!({"api_keys": {"keys": [{"id": "a", "sha256": HEX}]}})).unwrap();
        assert!(s.strip_credential, "strips by default");
        let k = s.api_keys.unwrap();
        assert_eq!(k.header.as_deref(), Some("x-api-key"));
        assert_eq!(k.query, None);
        let q = settings(json!({"api_keys": {"query": "k", "keys": [{"id": "a", "sha256": HEX}]}}))
            .unwrap();
        assert_eq!(q.api_keys.unwrap().header, None, "query only");
        let j = settings(jwt_with(json!({}))).unwrap().jwt.unwrap();
        assert_eq!(j.validator.leeway, 60);
        assert_eq!(j.validator.algorithms, Alg::ALL.to_vec());
        assert!(!j.validator.require_exp);
    }

    #[test]
    fn refusals_name_the_field() {
        refused(json!({}), "at least one of api_keys, jwt, basic");
        refused(
            json!({"basic": {"users": []}, "extra": 1}),
            "unknown field `extra`",
        );
        refused(json!({"realm": "a\"b", "basic": {"users": []}}), "realm");
        refused(
            json!({"allow_paths": ["health"], "basic": {"users": [{"user": "a", "sha256": HEX}]}}),
            "allow_paths[0]",
        );
        refused(
            json!({"allow_paths": ["/"], "basic": {"users": [{"user": "a", "sha256": HEX}]}}),
            "every path",
        );
        refused(
            json!({"api_keys": {"keys": [{"id": "a", "sha256": "abc"}]}}),
            "api_keys.keys[0].sha256: expected 64 hex digits",
        );
        refused(
            json!({"api_keys": {"keys": [{"id": "a", "sha256": HEX}, {"id": "a", "sha256": HEX}]}}),
            "api_keys.keys[1].id",
        );
        refused(json!({"api_keys": {"keys": []}}), "api_keys.keys");
        refused(
            json!({"api_keys": {"header": "authorization", "keys": [{"id": "a", "sha256": HEX}]}}),
            "api_keys.header",
        );
        refused(
            json!({"api_keys": {"query": "a&b", "keys": [{"id": "a", "sha256": HEX}]}}),
            "api_keys.query",
        );
        refused(
            json!({"api_keys": {"id_header": "cookie", "keys": [{"id": "a", "sha256": HEX}]}}),
            "api_keys.id_header",
        );
        refused(
            json!({"basic": {"users": [{"user": "a:b", "sha256": HEX}]}}),
            "basic.users[0].user",
        );
        refused(
            json!({"basic": {"users": [{"user": "a", "sha256": HEX, "password": "x"}]}}),
            "unknown field `password`",
        );
        refused(
            jwt_with(json!({"algorithms": ["none"]})),
            "\"none\" is never accepted",
        );
        refused(jwt_with(json!({"algorithms": []})), "jwt.algorithms");
        refused(jwt_with(json!({"algorithms": ["RS256"]})), "no key fits");
        refused(
            jwt_with(json!({"leeway_seconds": 7200})),
            "jwt.leeway_seconds",
        );
        refused(jwt_with(json!({"audiences": []})), "jwt.audiences");
        refused(jwt_with(json!({"issuer": ""})), "jwt.issuer");
        refused(
            jwt_with(json!({"jwks": {"keys": [{"kty": "oct", "kid": "h1", "k": "AAEC"}]}})),
            "jwt.jwks.keys[0] (kid \"h1\")",
        );
        refused(
            jwt_with(json!({"jwks": {"keys": [
                {"kty": "oct", "kid": "h1", "k": K}, {"kty": "oct", "kid": "h1", "k": K}
            ]}})),
            "the same kid",
        );
        refused(jwt_with(json!({"jwks": {"keys": []}})), "jwt.jwks.keys");
        refused(
            jwt_with(json!({"require": {"scopes": ["a b"]}})),
            "jwt.require.scopes[0]",
        );
        refused(
            jwt_with(json!({"require": {"claims": {"groups": ["a"]}}})),
            "jwt.require.claims.groups",
        );
        refused(
            jwt_with(json!({"forward_claims": {"sub": "authorization"}})),
            "jwt.forward_claims.sub",
        );
        refused(
            jwt_with(json!({"forward_claims": {"sub": "x-a", "email": "X-A"}})),
            "used for another claim",
        );
        refused(
            json!({"api_keys": {"header": "x-auth-user", "keys": [{"id": "a", "sha256": HEX}]},
                   "basic": {"users": [{"user": "a", "sha256": HEX}]}}),
            "also a header this plugin sets",
        );
    }

    fn remote_jwt(extra: Value) -> Value {
        let mut j = json!({"jwks_uri": "/.well-known/jwks.json", "jwks_upstream": "idp"});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        json!({ "jwt": j })
    }

    #[test]
    fn fetched_keys() {
        let s = settings(remote_jwt(json!({}))).unwrap();
        let j = s.jwt.unwrap();
        assert!(j.validator.keys.is_empty());
        let r = j.remote.unwrap();
        assert_eq!(
            r.source,
            Source {
                upstream: "idp".into(),
                authority: String::new(),
                path: "/.well-known/jwks.json".into(),
                refresh_seconds: 300,
                timeout_ms: 5000,
                min_refetch_seconds: 30,
            },
            "defaults"
        );
        let s = settings(remote_jwt(json!({
            "jwks_uri": "https://idp.example/keys?v=1",
            "jwks_refresh_seconds": 60, "jwks_fetch_timeout_ms": 200, "jwks_min_refetch_seconds": 5,
            "jwks": {"keys": [{"kty": "oct", "kid": "h1", "k": K}]},
            "algorithms": ["RS256"]
        })))
        .unwrap();
        let j = s.jwt.unwrap();
        assert_eq!(j.validator.keys.len(), 1, "inline keys too");
        let src = j.remote.unwrap().source;
        assert_eq!(
            (src.authority.as_str(), src.path.as_str()),
            ("idp.example", "/keys?v=1")
        );
        assert_eq!(
            (src.refresh_seconds, src.timeout_ms, src.min_refetch_seconds),
            (60, 200, 5)
        );
    }

    #[test]
    fn fetched_keys_refusals_name_the_field() {
        refused(json!({"jwt": {}}), "jwt: no keys");
        refused(
            json!({"jwt": {"jwks_uri": "/k"}}),
            "jwt.jwks_upstream: required with jwt.jwks_uri",
        );
        refused(
            json!({"jwt": {"jwks_upstream": "idp"}}),
            "jwt.jwks_uri: required with jwt.jwks_upstream",
        );
        refused(remote_jwt(json!({"jwks_uri": "keys.json"})), "jwt.jwks_uri");
        refused(
            remote_jwt(json!({"jwks_upstream": ""})),
            "jwt.jwks_upstream",
        );
        refused(
            remote_jwt(json!({"jwks_refresh_seconds": 0})),
            "jwt.jwks_refresh_seconds: 1–86400",
        );
        refused(
            remote_jwt(json!({"jwks_fetch_timeout_ms": 60001})),
            "jwt.jwks_fetch_timeout_ms: 1–60000",
        );
        refused(
            remote_jwt(json!({"jwks_min_refetch_seconds": 0})),
            "jwt.jwks_min_refetch_seconds",
        );
        refused(
            jwt_with(json!({"jwks_refresh_seconds": 10})),
            "jwt.jwks_refresh_seconds: only with jwt.jwks_uri",
        );
        refused(remote_jwt(json!({"jwks": {"keys": []}})), "leave jwks out");
        refused(
            remote_jwt(json!({"jwks_url": "/k"})),
            "unknown field `jwks_url`",
        );
    }

    #[test]
    fn errors_never_show_secrets() {
        let e = settings(jwt_with(
            json!({"jwks": {"keys": [{"kty": "oct", "kid": "h1", "k": "c2VjcmV0"}]}}),
        ))
        .unwrap_err();
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }
}
