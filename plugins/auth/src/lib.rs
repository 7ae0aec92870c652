//! Authentication for Sluice routes: API keys, JWT bearer tokens (HS256, RS256, ES256) and
//! basic auth, checked in `on_request_headers` before the upstream.
//!
//! On success the plugin forwards who the client is in request headers (chosen JWT claims,
//! the API key's id, the basic-auth user), after removing any copy of those headers the
//! client sent, and strips the credential if configured. On failure it answers 401 with a
//! `WWW-Authenticate` challenge per enabled scheme, or 403 when a valid token lacks a
//! required scope or claim. Allow-listed paths skip authentication.
//!
//! The host hides `Authorization` from plugins: bearer tokens and basic auth need the grant
//! `expose: [authorization]`. Without it every request looks as if it had no credential.
//!
//! ```yaml
//! plugins:
//!   auth:
//!     path: sluice_plugin_auth.wasm
//!     expose: [authorization]
//!     config: { realm: api, api_keys: { keys: [ { id: ci, sha256: "…" } ] } }
//! ```
//!
//! See the crate's README for every field.

mod apikey;
mod basic;
mod challenge;
mod config;
mod encoding;
mod jwk;
mod jwt;
mod paths;
mod secret;

use std::rc::Rc;

use sluice_sdk::metrics::Counter;
use sluice_sdk::{Action, Error, HttpFilter, Plugin, Request};

pub use config::{Config, Settings};

use crate::challenge::Unauthorized;
use crate::jwt::Missing;

/// The plugin: its validated settings and its counters.
pub struct Auth {
    settings: Settings,
    metrics: Metrics,
}

/// The counters (`auth_allowed`, `auth_denied`, `auth_forbidden`, `auth_skipped`).
struct Metrics {
    /// Requests let through with a valid credential.
    allowed: Counter,
    /// Requests refused (401 and 403).
    denied: Counter,
    /// Of those, the 403s.
    forbidden: Counter,
    /// Requests on allow-listed paths.
    skipped: Counter,
}

impl Metrics {
    fn new() -> Result<Metrics, Error> {
        Ok(Metrics {
            allowed: Counter::new("auth_allowed")?,
            denied: Counter::new("auth_denied")?,
            forbidden: Counter::new("auth_forbidden")?,
            skipped: Counter::new("auth_skipped")?,
        })
    }
}

/// Counting never fails a request.
fn count(counter: &Counter) {
    let _ = counter.inc();
}

impl Plugin for Auth {
    type Config = Config;
    type Filter = AuthFilter;

    fn new(config: Config) -> Result<Self, Error> {
        let settings = Settings::new(config)?;
        let metrics = Metrics::new()?;
        sluice_sdk::info!("auth: configured: {}", summary(&settings));
        Ok(Auth { settings, metrics })
    }

    fn filter(plugin: &Rc<Self>) -> AuthFilter {
        AuthFilter {
            plugin: plugin.clone(),
        }
    }
}

/// What is on, for the log line at configure time (no secrets).
fn summary(s: &Settings) -> String {
    let mut parts = Vec::new();
    if let Some(j) = &s.jwt {
        parts.push(format!("jwt ({} keys)", j.validator.keys.len()));
    }
    if let Some(k) = &s.api_keys {
        parts.push(format!("api keys ({})", k.keys.len()));
    }
    if let Some(b) = &s.basic {
        parts.push(format!("basic ({} users)", b.users.len()));
    }
    format!(
        "{}; {} allow-listed paths",
        parts.join(", "),
        s.allow_paths.len()
    )
}

/// The credential a request presents, in the order they are looked for.
enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic <base64>`.
    Basic(String),
    /// The API-key header, else the API-key query parameter.
    ApiKey(String),
}

/// What to do with a request.
enum Decision {
    /// Let it through with these identity headers.
    Allow(Vec<(String, String)>),
    /// 401.
    Unauthorized(Unauthorized, &'static str),
    /// 403.
    Forbidden(&'static str),
}

/// The filter of one request.
pub struct AuthFilter {
    plugin: Rc<Auth>,
}

impl AuthFilter {
    /// The first credential of `req`: the `Authorization` header (`authorization`, if the
    /// plugin reads it) with a scheme that is on, then the API-key header, then the API-key
    /// query parameter.
    fn credential(
        &self,
        req: &Request,
        authorization: Option<&str>,
    ) -> Result<Option<Credential>, Error> {
        let s = &self.plugin.settings;
        if let Some(value) = authorization {
            let value = value.trim();
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let rest = rest.trim().to_string();
            if s.jwt.is_some() && scheme.eq_ignore_ascii_case("bearer") {
                return Ok(Some(Credential::Bearer(rest)));
            }
            if s.basic.is_some() && scheme.eq_ignore_ascii_case("basic") {
                return Ok(Some(Credential::Basic(rest)));
            }
        }
        if let Some(keys) = &s.api_keys {
            if let Some(h) = &keys.header {
                if let Some(v) = req.header(h)? {
                    return Ok(Some(Credential::ApiKey(v)));
                }
            }
            if let Some(q) = &keys.query {
                if let Some(v) = req.query_param(q)? {
                    return Ok(Some(Credential::ApiKey(v)));
                }
            }
        }
        Ok(None)
    }

    /// Checks `credential`.
    fn decide(&self, credential: Option<Credential>) -> Result<Decision, Error> {
        let s = &self.plugin.settings;
        let decision = match credential {
            None => Decision::Unauthorized(Unauthorized::Missing, "no credential"),
            Some(Credential::Bearer(token)) => match &s.jwt {
                None => Decision::Unauthorized(Unauthorized::Missing, "no credential"),
                Some(jwt) => {
                    let now = sluice_sdk::properties::now_nanos()? / 1_000_000_000;
                    match jwt.validator.validate(&token, now) {
                        Err(invalid) => {
                            Decision::Unauthorized(Unauthorized::InvalidToken, invalid.reason())
                        }
                        Ok(claims) => match jwt.require.check(&claims) {
                            Err(Missing::Scope) => Decision::Forbidden("missing scope"),
                            Err(Missing::Claim) => Decision::Forbidden("missing claim"),
                            Ok(()) => Decision::Allow(
                                jwt.forward_claims
                                    .iter()
                                    .filter_map(|(claim, header)| {
                                        let value = jwt::claim_header_value(claims.get(claim)?)?;
                                        Some((header.clone(), value))
                                    })
                                    .collect(),
                            ),
                        },
                    }
                }
            },
            Some(Credential::Basic(encoded)) => {
                let user = s.basic.as_ref().and_then(|users| {
                    let (name, password) = basic::decode(&encoded)?;
                    let name = users.check(&name, &password)?;
                    Some((users.user_header.clone(), name.to_string()))
                });
                match user {
                    Some(header) => Decision::Allow(vec![header]),
                    None => Decision::Unauthorized(Unauthorized::Invalid, "bad basic credential"),
                }
            }
            Some(Credential::ApiKey(presented)) => {
                let id = s.api_keys.as_ref().and_then(|keys| {
                    let id = keys.find(&presented)?;
                    Some((keys.id_header.clone(), id.to_string()))
                });
                match id {
                    Some(header) => Decision::Allow(vec![header]),
                    None => Decision::Unauthorized(Unauthorized::Invalid, "unknown API key"),
                }
            }
        };
        Ok(decision)
    }

    /// Removes the credentials the plugin reads: `authorization` (if it was there to read),
    /// the API-key header and the API-key query parameter.
    fn strip(&self, req: &mut Request, authorization: bool, path: &str) -> Result<(), Error> {
        if authorization {
            req.remove_header("authorization")?;
        }
        if let Some(keys) = &self.plugin.settings.api_keys {
            if let Some(h) = &keys.header {
                req.remove_header(h)?;
            }
            if let Some(q) = &keys.query {
                let stripped = apikey::remove_query_param(path, q);
                if stripped != path {
                    req.set_path(&stripped)?;
                }
            }
        }
        Ok(())
    }
}

impl HttpFilter for AuthFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        let plugin = self.plugin.clone();
        let s = &plugin.settings;
        // Identity headers come from this plugin only, never from the client.
        for h in &s.identity_headers {
            req.remove_header(h)?;
        }
        let path = req.path()?;
        let path_only = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
        if paths::is_allowed(&s.allow_paths, path_only) {
            count(&plugin.metrics.skipped);
            return Ok(Action::Continue);
        }
        let authorization = if s.jwt.is_some() || s.basic.is_some() {
            req.header("authorization")?
        } else {
            None
        };
        let credential = self.credential(req, authorization.as_deref())?;
        match self.decide(credential)? {
            Decision::Allow(identity) => {
                if s.strip_credential {
                    self.strip(req, authorization.is_some(), &path)?;
                }
                for (header, value) in &identity {
                    req.set_header(header, value)?;
                }
                count(&plugin.metrics.allowed);
                Ok(Action::Continue)
            }
            Decision::Unauthorized(why, reason) => {
                count(&plugin.metrics.denied);
                sluice_sdk::info!("auth: 401 for {path_only}: {reason}");
                Ok(Action::Reply(s.challenges.unauthorized(why, reason)))
            }
            Decision::Forbidden(reason) => {
                count(&plugin.metrics.denied);
                count(&plugin.metrics.forbidden);
                sluice_sdk::info!("auth: 403 for {path_only}: {reason}");
                Ok(Action::Reply(s.challenges.forbidden(reason)))
            }
        }
    }
}

sluice_sdk::plugin!(Auth);
