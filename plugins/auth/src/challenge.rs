//! The answers to refused requests: 401 with a `WWW-Authenticate` challenge for every
//! enabled scheme, or 403 for a valid token that lacks a required scope or claim. Bodies are
//! short and say nothing about why; the reason goes to the host's log only.

use sluice_sdk::Reply;

/// The challenges of the enabled schemes.
#[derive(Debug, Clone)]
pub struct Challenges {
    realm: String,
    bearer: bool,
    basic: bool,
    api_key: Option<(Option<String>, Option<String>)>,
    scope: String,
}

/// Why a 401 is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No usable credential.
    Missing,
    /// A bearer token that is not valid.
    InvalidToken,
    /// An API key or basic credential that is not valid.
    Invalid,
}

impl Challenges {
    /// The challenges for `realm` (already checked to be quotable), given which schemes are
    /// on, the API-key header and query parameter, and the required scopes.
    pub fn new(
        realm: &str,
        bearer: bool,
        basic: bool,
        api_key: Option<(Option<String>, Option<String>)>,
        scopes: &[String],
    ) -> Challenges {
        Challenges {
            realm: realm.to_string(),
            bearer,
            basic,
            api_key,
            scope: scopes.join(" "),
        }
    }

    /// The `WWW-Authenticate` values of a 401, in the order Bearer, Basic, ApiKey.
    pub fn unauthorized_values(&self, why: Unauthorized) -> Vec<String> {
        let realm = &self.realm;
        let mut out = Vec::new();
        if self.bearer {
            out.push(match why {
                Unauthorized::InvalidToken => {
                    format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
                }
                _ => format!("Bearer realm=\"{realm}\""),
            });
        }
        if self.basic {
            out.push(format!("Basic realm=\"{realm}\", charset=\"UTF-8\""));
        }
        if let Some((header, query)) = &self.api_key {
            let mut v = format!("ApiKey realm=\"{realm}\"");
            if let Some(h) = header {
                v.push_str(&format!(", header=\"{h}\""));
            }
            if let Some(q) = query {
                v.push_str(&format!(", query=\"{q}\""));
            }
            out.push(v);
        }
        out
    }

    /// The `WWW-Authenticate` value of a 403 (RFC 6750 §3.1).
    pub fn forbidden_value(&self) -> String {
        let mut v = format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\"",
            self.realm
        );
        if !self.scope.is_empty() {
            v.push_str(&format!(", scope=\"{}\"", self.scope));
        }
        v
    }

    /// A 401; `reason` goes to the host's log only.
    pub fn unauthorized(&self, why: Unauthorized, reason: &str) -> Reply {
        let reply = self
            .unauthorized_values(why)
            .into_iter()
            .fold(Reply::new(401), |r, v| r.header("www-authenticate", v));
        finish(reply, "401 Unauthorized\n", reason)
    }

    /// A 503: a bearer token arrived while no key to check it with was ever fetched;
    /// `reason` goes to the host's log only.
    pub fn unavailable(&self, reason: &str) -> Reply {
        finish(Reply::new(503), "503 Service Unavailable\n", reason)
    }

    /// A 403; `reason` goes to the host's log only.
    pub fn forbidden(&self, reason: &str) -> Reply {
        let reply = Reply::new(403).header("www-authenticate", self.forbidden_value());
        finish(reply, "403 Forbidden\n", reason)
    }
}

fn finish(reply: Reply, body: &str, reason: &str) -> Reply {
    reply
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .body(body)
        .details(format!("auth: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_scheme_is_offered() {
        let c = Challenges::new(
            "api",
            true,
            true,
            Some((Some("x-api-key".into()), Some("api_key".into()))),
            &[],
        );
        assert_eq!(
            c.unauthorized_values(Unauthorized::Missing),
            vec![
                "Bearer realm=\"api\"",
                "Basic realm=\"api\", charset=\"UTF-8\"",
                "ApiKey realm=\"api\", header=\"x-api-key\", query=\"api_key\"",
            ]
        );
        assert_eq!(
            c.unauthorized_values(Unauthorized::InvalidToken)[0],
            "Bearer realm=\"api\", error=\"invalid_token\""
        );
        assert_eq!(
            c.forbidden_value(),
            "Bearer realm=\"api\", error=\"insufficient_scope\""
        );
    }

    #[test]
    fn only_enabled_schemes_and_scopes() {
        let c = Challenges::new("r", true, false, None, &["read".into(), "write".into()]);
        assert_eq!(
            c.unauthorized_values(Unauthorized::Invalid),
            vec!["Bearer realm=\"r\""]
        );
        assert_eq!(
            c.forbidden_value(),
            "Bearer realm=\"r\", error=\"insufficient_scope\", scope=\"read write\""
        );
        let k = Challenges::new("r", false, false, Some((None, Some("k".into()))), &[]);
        assert_eq!(
            k.unauthorized_values(Unauthorized::Missing),
            vec!["ApiKey realm=\"r\", query=\"k\""]
        );
    }

    #[test]
    fn replies_say_little() {
        let c = Challenges::new("api", true, false, None, &[]);
        let r = c.unauthorized(Unauthorized::InvalidToken, "token expired");
        assert_eq!(r.status(), 401);
        assert_eq!(r.body_bytes(), b"401 Unauthorized\n");
        assert!(r
            .headers()
            .iter()
            .any(|(k, v)| k == "cache-control" && v == b"no-store"));
        let f = c.forbidden("missing scope");
        assert_eq!(f.status(), 403);
        assert_eq!(f.body_bytes(), b"403 Forbidden\n");
        let u = c.unavailable("no keys fetched yet");
        assert_eq!(u.status(), 503);
        assert_eq!(u.body_bytes(), b"503 Service Unavailable\n");
        assert!(u.headers().iter().all(|(k, _)| k != "www-authenticate"));
    }
}
