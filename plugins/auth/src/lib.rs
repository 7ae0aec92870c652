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
//! JWT keys are written in the configuration, fetched from the identity provider
//! (`jwt.jwks_uri`, refreshed from the root context's tick and shared by every VM through
//! shared data), or both; `remote.rs` says how fetches are bounded.
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
mod remote;
mod secret;

use std::rc::Rc;
use std::time::Duration;

use sluice_sdk::metrics::Counter;
use sluice_sdk::{Action, Error, HttpFilter, Plugin, Request};

pub use config::{Config, Settings};

use crate::challenge::Unauthorized;
use crate::config::Jwt;
use crate::jwt::{Invalid, Missing};

/// The plugin, once per VM.
pub struct Auth {
    core: Rc<Core>,
}

/// What the plugin's root context and its requests share: the validated settings (with the
/// keys fetched so far) and the counters.
struct Core {
    settings: Settings,
    metrics: Metrics,
}

/// The counters (`auth_allowed`, `auth_denied`, `auth_forbidden`, `auth_skipped`,
/// `auth_unavailable`, `auth_jwks_fetches`, `auth_jwks_fetch_failures`).
struct Metrics {
    /// Requests let through with a valid credential.
    allowed: Counter,
    /// Requests refused (401 and 403).
    denied: Counter,
    /// Of those, the 403s.
    forbidden: Counter,
    /// Requests on allow-listed paths.
    skipped: Counter,
    /// Bearer tokens answered 503: no key was ever fetched (and none is configured).
    unavailable: Counter,
    /// Key sets fetched from `jwks_uri` and put in use.
    jwks_fetches: Counter,
    /// Fetches from `jwks_uri` that failed.
    jwks_fetch_failures: Counter,
}

impl Metrics {
    fn new() -> Result<Metrics, Error> {
        Ok(Metrics {
            allowed: Counter::new("auth_allowed")?,
            denied: Counter::new("auth_denied")?,
            forbidden: Counter::new("auth_forbidden")?,
            skipped: Counter::new("auth_skipped")?,
            unavailable: Counter::new("auth_unavailable")?,
            jwks_fetches: Counter::new("auth_jwks_fetches")?,
            jwks_fetch_failures: Counter::new("auth_jwks_fetch_failures")?,
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
        // Keys another VM fetched (or this plugin before a reload) are there at once.
        if let Some(jwt) = &settings.jwt {
            if let Some(remote) = &jwt.remote {
                remote.adopt_shared(&jwt.validator);
            }
        }
        sluice_sdk::info!("auth: configured: {}", summary(&settings));
        Ok(Auth {
            core: Rc::new(Core { settings, metrics }),
        })
    }

    fn filter(plugin: &Rc<Self>) -> AuthFilter {
        AuthFilter {
            core: plugin.core.clone(),
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.core.remote().map(|_| remote::TICK)
    }

    fn on_tick(&self) {
        let core = &self.core;
        let (Some(jwt), Some(remote)) = (&core.settings.jwt, core.remote()) else {
            return;
        };
        let Ok(now) = sluice_sdk::properties::now_nanos() else {
            return;
        };
        let fetching = core.clone();
        let sent = remote.tick(&jwt.validator, now, move |answer| {
            let now = sluice_sdk::properties::now_nanos().unwrap_or(0);
            fetching.fetched(answer, now, true);
        });
        if let Err(why) = sent {
            remote.failed(&jwt.validator, &why, now);
            count(&core.metrics.jwks_fetch_failures);
        }
    }
}

/// What is on, for the log line at configure time (no secrets).
fn summary(s: &Settings) -> String {
    let mut parts = Vec::new();
    if let Some(j) = &s.jwt {
        match &j.remote {
            Some(r) => parts.push(format!(
                "jwt ({} keys, and keys fetched from {} every {} s)",
                j.validator.keys.len(),
                r.source.describe(),
                r.source.refresh_seconds
            )),
            None => parts.push(format!("jwt ({} keys)", j.validator.keys.len())),
        }
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
    /// A bearer token that no key has (its `kid`, or its `alg`): 401, unless fetching the
    /// keys again finds it.
    UnknownKey,
    /// A bearer token and no key at all (none configured, none fetched yet): 503, unless a
    /// fetch brings some.
    NoKeys,
}

impl Core {
    fn remote(&self) -> Option<&remote::Remote> {
        self.settings.jwt.as_ref()?.remote.as_ref()
    }

    /// Checks a bearer token.
    fn bearer(&self, jwt: &Jwt, token: &str) -> Result<Decision, Error> {
        if !jwt.validator.has_keys() {
            return Ok(Decision::NoKeys);
        }
        let now = sluice_sdk::properties::now_nanos()? / 1_000_000_000;
        Ok(match jwt.validator.validate(token, now) {
            Err(Invalid::UnknownKey) => Decision::UnknownKey,
            Err(invalid) => Decision::Unauthorized(Unauthorized::InvalidToken, invalid.reason()),
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
        })
    }

    /// Checks `credential`.
    fn decide(&self, credential: Option<Credential>) -> Result<Decision, Error> {
        let s = &self.settings;
        let decision = match credential {
            None => Decision::Unauthorized(Unauthorized::Missing, "no credential"),
            Some(Credential::Bearer(token)) => match &s.jwt {
                None => Decision::Unauthorized(Unauthorized::Missing, "no credential"),
                Some(jwt) => self.bearer(jwt, &token)?,
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

    /// Takes the answer to a key-set fetch and counts it.
    fn fetched(
        &self,
        answer: Result<sluice_sdk::CallResponse, sluice_sdk::CallError>,
        now: u64,
        from_root: bool,
    ) {
        let (Some(jwt), Some(remote)) = (&self.settings.jwt, self.remote()) else {
            return;
        };
        match remote.accept(&jwt.validator, answer, now, from_root) {
            Ok(_) => count(&self.metrics.jwks_fetches),
            Err(_) => count(&self.metrics.jwks_fetch_failures),
        }
    }

    /// Removes the credentials the plugin reads: `authorization` (if it was there to read),
    /// the API-key header and the API-key query parameter.
    fn strip(&self, req: &mut Request, authorization: bool, path: &str) -> Result<(), Error> {
        if authorization {
            req.remove_header("authorization")?;
        }
        if let Some(keys) = &self.settings.api_keys {
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

    /// Carries out `decision` on `req` (whose path, with query, is `path`).
    fn conclude(
        &self,
        req: &mut Request,
        decision: Decision,
        path: &str,
        authorization: bool,
    ) -> Result<Action, Error> {
        let s = &self.settings;
        let path_only = path.split_once('?').map_or(path, |(p, _)| p);
        let refuse = |why: Unauthorized, reason: &str| {
            count(&self.metrics.denied);
            sluice_sdk::info!("auth: 401 for {path_only}: {reason}");
            Ok(Action::Reply(s.challenges.unauthorized(why, reason)))
        };
        match decision {
            Decision::Allow(identity) => {
                if s.strip_credential {
                    self.strip(req, authorization, path)?;
                }
                for (header, value) in &identity {
                    req.set_header(header, value)?;
                }
                count(&self.metrics.allowed);
                Ok(Action::Continue)
            }
            Decision::Unauthorized(why, reason) => refuse(why, reason),
            Decision::UnknownKey => {
                refuse(Unauthorized::InvalidToken, Invalid::UnknownKey.reason())
            }
            Decision::NoKeys => {
                count(&self.metrics.unavailable);
                let reason = "no JWT keys fetched yet";
                sluice_sdk::info!("auth: 503 for {path_only}: {reason}");
                Ok(Action::Reply(s.challenges.unavailable(reason)))
            }
            Decision::Forbidden(reason) => {
                count(&self.metrics.denied);
                count(&self.metrics.forbidden);
                sluice_sdk::info!("auth: 403 for {path_only}: {reason}");
                Ok(Action::Reply(s.challenges.forbidden(reason)))
            }
        }
    }
}

/// The filter of one request.
pub struct AuthFilter {
    core: Rc<Core>,
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
        let s = &self.core.settings;
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

    /// A bearer token no key verifies: takes the keys another VM fetched meanwhile, else
    /// fetches them (if the rate limit allows) and pauses the request until they are there.
    /// Returns the decision to carry out now, or `None` when the request waits for the fetch.
    fn refetch(
        &self,
        req: &mut Request,
        token: String,
        path: &str,
        authorization: bool,
    ) -> Result<Option<Decision>, Error> {
        let core = &self.core;
        let (Some(jwt), Some(remote)) = (&core.settings.jwt, core.remote()) else {
            return Ok(Some(Decision::UnknownKey));
        };
        if remote.adopt_shared(&jwt.validator) {
            let decision = core.bearer(jwt, &token)?;
            if !matches!(decision, Decision::UnknownKey | Decision::NoKeys) {
                return Ok(Some(decision));
            }
        }
        let now = sluice_sdk::properties::now_nanos()?;
        if !remote.claim_refetch(now) {
            return core.bearer(jwt, &token).map(Some);
        }
        let waiting = core.clone();
        let path = path.to_string();
        let presented = token.clone();
        let sent = req.http_call(
            &remote.source.upstream,
            remote.source.call(),
            move |req, answer| {
                let now = sluice_sdk::properties::now_nanos().unwrap_or(now);
                waiting.fetched(answer, now, false);
                let decision = match &waiting.settings.jwt {
                    Some(jwt) => waiting.bearer(jwt, &presented)?,
                    None => Decision::UnknownKey,
                };
                waiting.conclude(req, decision, &path, authorization)
            },
        );
        match sent {
            Ok(()) => Ok(None),
            Err(e) => {
                remote.failed(&jwt.validator, &remote::send_error(&remote.source, &e), now);
                count(&core.metrics.jwks_fetch_failures);
                core.bearer(jwt, &token).map(Some)
            }
        }
    }
}

impl HttpFilter for AuthFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        let core = self.core.clone();
        let s = &core.settings;
        // Identity headers come from this plugin only, never from the client.
        for h in &s.identity_headers {
            req.remove_header(h)?;
        }
        let path = req.path()?;
        let path_only = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
        if paths::is_allowed(&s.allow_paths, path_only) {
            count(&core.metrics.skipped);
            return Ok(Action::Continue);
        }
        let authorization = if s.jwt.is_some() || s.basic.is_some() {
            req.header("authorization")?
        } else {
            None
        };
        let credential = self.credential(req, authorization.as_deref())?;
        let token = match &credential {
            Some(Credential::Bearer(t)) => Some(t.clone()),
            _ => None,
        };
        let mut decision = core.decide(credential)?;
        if let (Decision::UnknownKey | Decision::NoKeys, Some(token)) = (&decision, token) {
            match self.refetch(req, token, &path, authorization.is_some())? {
                Some(d) => decision = d,
                None => return Ok(Action::Pause),
            }
        }
        core.conclude(req, decision, &path, authorization.is_some())
    }
}

sluice_sdk::plugin!(Auth);
// config.schema.json, checked by the host before on_configure.
sluice_sdk::config_schema!();
