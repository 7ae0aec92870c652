//! A client of the OCI distribution API (`/v2/…`): requests to one repository of one
//! registry, with the registry's authentication.
//!
//! Authentication answers a `401` challenge and retries once, with the registry's
//! [`Credentials`] (see [`super::credentials`] for where they come from):
//!
//! - `WWW-Authenticate: Bearer realm=…,service=…,scope=…`: a ready bearer token if there is
//!   one; else a token is asked from the realm: with an identity token (an OAuth2 refresh
//!   token, `POST`ed as `grant_type=refresh_token`), or with the user name and password as
//!   basic credentials, or anonymously.
//! - `WWW-Authenticate: Basic …`: the user name and password.
//!
//! Credentials are never sent before a registry asks for them, and never over plain HTTP to a
//! host that is neither on the loopback interface nor listed in `SLUICE_OCI_INSECURE`.
//!
//! Registries are spoken to over HTTPS, except registries on the loopback interface
//! (`localhost`, `127.0.0.0/8`, `[::1]`) and those listed in `SLUICE_OCI_INSECURE`
//! (comma-separated `host[:port]`), which are spoken to over plain HTTP.

use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, StatusCode};

pub use super::credentials::{Credentials, PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV};
use super::http::{chain, status_error, Answer, DownloadError, Http};
use super::reference::OciReference;

/// Environment variable: registries (`host[:port]`, comma-separated) reached over plain HTTP.
pub const INSECURE_ENV: &str = "SLUICE_OCI_INSECURE";

/// `SLUICE_OCI_INSECURE`, split.
pub fn insecure_from_env() -> Vec<String> {
    std::env::var(INSECURE_ENV)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `host[:port]` (or a URL's host) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of `host[:port]` (`[::1]:5000` → `::1`).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether plain HTTP is allowed to `host[:port]`: on the loopback interface, or listed
/// (as `host` or `host:port`) in `insecure`.
pub fn plain_http_allowed(registry: &str, insecure: &[String]) -> bool {
    let lower = registry.to_ascii_lowercase();
    is_loopback(registry)
        || insecure
            .iter()
            .any(|i| *i == lower || *i == host_of(&lower))
}

/// `http` for a loopback or explicitly insecure registry, else `https`.
pub fn scheme_for(registry: &str, insecure: &[String]) -> &'static str {
    if plain_http_allowed(registry, insecure) {
        "http"
    } else {
        "https"
    }
}

/// One authentication challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Scheme, lower case (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters in order, names lower case.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235: `scheme param=value, param="quoted", …`,
/// possibly several challenges). Malformed parts end the parse; what was parsed is returned.
pub fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        let Some(word) = p.token() else { break };
        p.skip(|c| c == b' ' || c == b'\t');
        if p.peek() == Some(b'=') {
            // A parameter of the current challenge.
            p.i += 1;
            p.skip(|c| c == b' ' || c == b'\t');
            let value = if p.peek() == Some(b'"') {
                match p.quoted() {
                    Some(v) => v,
                    None => break,
                }
            } else {
                // token68 values may end in '='.
                let v = p.token().unwrap_or_default();
                let mut v = v;
                while p.peek() == Some(b'=') {
                    p.i += 1;
                    v.push('=');
                }
                v
            };
            match out.last_mut() {
                Some(c) => c.params.push((word.to_ascii_lowercase(), value)),
                None => break,
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }
    /// An RFC 7230 token (plus `/` for token68 values).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                        | b'/'
                        | b':'
                )
        });
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut v = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&v).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    v.push(self.peek()?);
                    self.i += 1;
                }
                c => {
                    v.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

/// Why a registry request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The request failed or was answered with an error.
    #[error("{method} {url}: {reason}")]
    Request {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// What happened.
        reason: DownloadError,
    },
    /// Authentication failed.
    #[error("{url}: authentication failed: {message}")]
    Auth {
        /// The URL that asked for it.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The registry answered something that does not follow the API.
    #[error("{url}: {message}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// A body for a request that may be sent twice (after an authentication challenge).
#[derive(Debug, Clone)]
pub struct Body {
    /// `Content-Type`.
    pub content_type: String,
    /// The bytes.
    pub bytes: bytes::Bytes,
    /// Told how many bytes of this attempt have been handed to the connection so far.
    pub on_sent: Option<OnSent>,
}

/// A callback for upload progress (bytes of the body sent so far).
#[derive(Clone)]
pub struct OnSent(pub std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for OnSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnSent")
    }
}

/// Chunks a body with progress is streamed in.
const SENT_CHUNK: usize = 64 * 1024;

impl Body {
    /// The body for one attempt: the bytes at once, or streamed in chunks that report
    /// progress (with its `Content-Length`, as registries want one).
    fn to_request(&self, req: RequestBuilder) -> RequestBuilder {
        let req = req.header(reqwest::header::CONTENT_TYPE, &self.content_type);
        let Some(on_sent) = self.on_sent.clone() else {
            return req.body(self.bytes.clone());
        };
        let bytes = self.bytes.clone();
        let total = bytes.len();
        let chunks = (0..total.div_ceil(SENT_CHUNK)).map(move |i| {
            let end = ((i + 1) * SENT_CHUNK).min(total);
            (on_sent.0)(end as u64);
            Ok::<_, std::io::Error>(bytes.slice(i * SENT_CHUNK..end))
        });
        req.header(reqwest::header::CONTENT_LENGTH, total)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
    }
}

/// A client of one repository of one registry.
#[derive(Debug)]
pub struct Registry {
    http: Http,
    /// `http://host:port` or `https://host:port`.
    base: String,
    /// `host[:port]`, for messages.
    registry: String,
    repository: String,
    credentials: Credentials,
    /// Hosts that may be spoken to over plain HTTP besides loopback ones.
    insecure: Vec<String>,
    /// What to send as `Authorization` once a challenge was answered.
    auth: Mutex<Option<HeaderValue>>,
    /// The actions to ask a token for (`pull`, or `pull,push`).
    actions: &'static str,
}

impl Registry {
    /// A client of `reference`'s repository; `actions` is `pull` or `pull,push`.
    pub fn new(
        http: Http,
        reference: &OciReference,
        insecure: &[String],
        credentials: Credentials,
        actions: &'static str,
    ) -> Registry {
        let scheme = scheme_for(&reference.registry, insecure);
        Registry {
            http,
            base: format!("{scheme}://{}", reference.registry),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            credentials,
            insecure: insecure.to_vec(),
            auth: Mutex::new(None),
            actions,
        }
    }

    /// `BASE/v2/REPO/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Resolves a `Location` header (absolute, or relative to the registry).
    pub fn resolve(&self, location: &str) -> Result<reqwest::Url, String> {
        let base = reqwest::Url::parse(&self.base).map_err(|e| e.to_string())?;
        base.join(location)
            .map_err(|e| format!("bad Location {location:?}: {e}"))
    }

    /// The size limit of answers.
    pub fn max_bytes(&self) -> u64 {
        self.http.max_bytes
    }

    /// Sends a request (answering one authentication challenge), reading the whole answer.
    /// Any status is returned; a 401 after authenticating is an error.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Body>,
    ) -> Result<Answer, RegistryError> {
        let url = reqwest::Url::parse(url).map_err(|e| RegistryError::Protocol {
            url: url.to_string(),
            message: format!("bad URL: {e}"),
        })?;
        let build = || {
            let mut req = self.http.client().request(method.clone(), url.clone());
            for (n, v) in headers {
                req = req.header(*n, *v);
            }
            if let Some(b) = body {
                req = b.to_request(req);
            }
            req
        };
        let first = self.send(build(), &method, url.as_str()).await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        self.authenticate(&first, url.as_str()).await?;
        let second = self.send(build(), &method, url.as_str()).await?;
        if second.status == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Auth {
                url: url.to_string(),
                message: if self.credentials.is_empty() {
                    format!(
                        "still unauthorized after authenticating anonymously; no credentials for {}: \
                         set {USERNAME_ENV}/{PASSWORD_ENV} or {TOKEN_ENV}, or give them in a Docker config.json \
                         (oci.credentials_file)",
                        self.registry
                    )
                } else {
                    format!(
                        "still unauthorized after authenticating with {}; check them",
                        self.credentials.origin
                    )
                },
            });
        }
        Ok(second)
    }

    async fn send(
        &self,
        mut req: RequestBuilder,
        method: &Method,
        url: &str,
    ) -> Result<Answer, RegistryError> {
        let auth = self.auth.lock().map(|a| a.clone()).unwrap_or_default();
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        self.http
            .send(req)
            .await
            .map_err(|reason| RegistryError::Request {
                method: method.to_string(),
                url: url.to_string(),
                reason,
            })
    }

    fn set_auth(&self, value: String, url: &str) -> Result<(), RegistryError> {
        let v = HeaderValue::from_str(&value).map_err(|_| RegistryError::Auth {
            url: url.to_string(),
            message: "the credentials are not a valid header value".into(),
        })?;
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(v);
        }
        Ok(())
    }

    /// Refuses to send credentials to `target` over plain HTTP unless the host is local or
    /// listed in `SLUICE_OCI_INSECURE`.
    fn refuse_plain_http(&self, target: &str, url: &str) -> Result<(), RegistryError> {
        if target.starts_with("http:") && !plain_http_allowed(host_of_url(target), &self.insecure) {
            return Err(RegistryError::Auth {
                url: url.to_string(),
                message: format!(
                    "refusing to send credentials over plain HTTP to {}, a host that is neither local nor in {INSECURE_ENV}",
                    host_of_url(target)
                ),
            });
        }
        Ok(())
    }

    /// Answers the challenge of a 401.
    async fn authenticate(&self, answer: &Answer, url: &str) -> Result<(), RegistryError> {
        let fail = |message: String| RegistryError::Auth {
            url: url.to_string(),
            message,
        };
        let challenges: Vec<Challenge> = answer
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_www_authenticate)
            .collect();
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(token) = &self.credentials.token {
                self.refuse_plain_http(url, url)?;
                return self.set_auth(format!("Bearer {token}"), url);
            }
            let token = self.fetch_token(c, url).await?;
            return self.set_auth(format!("Bearer {token}"), url);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some((user, password)) = &self.credentials.basic else {
                return Err(fail(if self.credentials.is_empty() {
                    format!(
                        "the registry asks for a user name and password and there are none for {}; \
                         set {USERNAME_ENV} and {PASSWORD_ENV}, or give them in a Docker config.json (oci.credentials_file)",
                        self.registry
                    )
                } else {
                    format!(
                        "the registry asks for a user name and password; {} has none (an identity token \
                         or bearer token is only used with registries that ask for a bearer token)",
                        self.credentials.origin
                    )
                }));
            };
            self.refuse_plain_http(url, url)?;
            let encoded = STANDARD.encode(format!("{user}:{password}"));
            return self.set_auth(format!("Basic {encoded}"), url);
        }
        Err(fail(format!(
            "401 without a Bearer or Basic challenge (WWW-Authenticate: {:?})",
            answer
                .headers
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        )))
    }

    /// The bearer token flow: GET realm?service=…&scope=…, answer `{"token": …}` or
    /// `{"access_token": …}`.
    async fn fetch_token(&self, c: &Challenge, url: &str) -> Result<String, RegistryError> {
        let fail = |message: String| RegistryError::Auth {
            url: url.to_string(),
            message,
        };
        let realm = c
            .param("realm")
            .ok_or_else(|| fail("a Bearer challenge without a realm".into()))?;
        let mut realm_url = reqwest::Url::parse(realm)
            .map_err(|e| fail(format!("bad token realm {realm:?}: {e}")))?;
        if !matches!(realm_url.scheme(), "http" | "https") {
            return Err(fail(format!("token realm {realm:?} is not HTTP(S)")));
        }
        let default_scope = format!("repository:{}:{}", self.repository, self.actions);
        let scope = c.param("scope").unwrap_or(&default_scope).to_string();
        {
            let mut q = realm_url.query_pairs_mut();
            if let Some(service) = c.param("service") {
                q.append_pair("service", service);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        let host = host_of_url(realm_url.as_str()).to_string();
        let secure = realm_url.scheme() == "https" || plain_http_allowed(&host, &self.insecure);
        if let Some(refresh) = &self.credentials.identity_token {
            if !secure {
                return Err(fail(format!(
                    "refusing to send the identity token of {} to the plain-HTTP token realm {realm}",
                    self.credentials.origin
                )));
            }
            return self.exchange_refresh_token(c, &scope, refresh, realm).await;
        }
        let mut req = self.http.client().get(realm_url.clone());
        if let Some((user, password)) = &self.credentials.basic {
            if secure {
                req = req.basic_auth(user, Some(password));
            } else {
                tracing::warn!(realm, "not sending credentials to a plain-HTTP token realm");
            }
        }
        self.token_answer(req, realm, "").await
    }

    /// Sends a token request to `realm` and reads the token it answers (`with` says what the
    /// request carried, for the error).
    async fn token_answer(
        &self,
        req: RequestBuilder,
        realm: &str,
        with: &str,
    ) -> Result<String, RegistryError> {
        let fail = |message: String| RegistryError::Auth {
            url: realm.to_string(),
            message,
        };
        let answer = self
            .http
            .send(req)
            .await
            .map_err(|e| fail(format!("token request to {realm}: {e}")))?;
        if !answer.status.is_success() {
            return Err(fail(format!(
                "token request to {realm}{with}: {}",
                status_error(&answer)
            )));
        }
        token_of(&answer.body, realm).map_err(fail)
    }

    /// The OAuth2 flow of an identity token: `POST realm` with
    /// `grant_type=refresh_token&refresh_token=…&service=…&scope=…&client_id=sluice`.
    async fn exchange_refresh_token(
        &self,
        c: &Challenge,
        scope: &str,
        refresh: &str,
        realm: &str,
    ) -> Result<String, RegistryError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "sluice"),
        ];
        if let Some(service) = c.param("service") {
            form.push(("service", service));
        }
        form.push(("scope", scope));
        let req = self.http.client().post(realm).form(&form);
        let with = format!(" with the identity token of {}", self.credentials.origin);
        self.token_answer(req, realm, &with).await
    }
}

/// The token of a token answer: `{"token": …}` or `{"access_token": …}`.
fn token_of(body: &[u8], realm: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let t: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("token answer of {realm} is not JSON: {}", chain(&e)))?;
    t.token
        .or(t.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("token answer of {realm} has no token"))
}

fn host_of_url(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:plugins/hello:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("service"), Some("registry.example.com"));
        assert_eq!(c[0].param("scope"), Some("repository:plugins/hello:pull"));
    }

    #[test]
    fn odd_but_valid_challenges_parse() {
        // Spaces, unquoted values, commas and escaped quotes inside quotes, mixed case.
        let c = parse_www_authenticate(
            r#"  BEARER  Realm = "http://127.0.0.1:1/t" , scope="repository:a/b:pull,push", error=insufficient_scope, x="q\"uote""#,
        );
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("http://127.0.0.1:1/t"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
        assert_eq!(c[0].param("x"), Some("q\"uote"));
        // Two challenges in one header.
        let c = parse_www_authenticate(r#"Basic realm="r", Bearer realm="https://t""#);
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["basic", "bearer"]
        );
        assert_eq!(c[1].param("realm"), Some("https://t"));
    }

    #[test]
    fn malformed_challenges_do_not_panic() {
        for v in [
            "",
            ",,,",
            "=",
            "realm=\"x\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"x\\",
            "Bearer ====",
            "Bearer \u{e9}t\u{e9}=1",
        ] {
            let _ = parse_www_authenticate(v);
        }
        assert!(parse_www_authenticate("realm=\"x\"").is_empty());
        assert_eq!(
            parse_www_authenticate("Bearer realm=\"unterminated")[0].params,
            []
        );
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed_registries() {
        assert_eq!(scheme_for("127.0.0.1:5000", &[]), "http");
        assert_eq!(scheme_for("127.1.2.3", &[]), "http");
        assert_eq!(scheme_for("localhost:5000", &[]), "http");
        assert_eq!(scheme_for("LOCALHOST", &[]), "http");
        assert_eq!(scheme_for("[::1]:5000", &[]), "http");
        assert_eq!(scheme_for("registry.example.com", &[]), "https");
        assert_eq!(scheme_for("10.0.0.1:5000", &[]), "https");
        assert_eq!(scheme_for("localhost.example.com", &[]), "https");
        let insecure = ["10.0.0.1:5000".to_string(), "build-box".to_string()];
        assert_eq!(scheme_for("10.0.0.1:5000", &insecure), "http");
        assert_eq!(scheme_for("10.0.0.1:5001", &insecure), "https");
        assert_eq!(scheme_for("build-box:5000", &insecure), "http");
    }
}
