//! The configuration: what a key is made of, the limits, and the classes with their own.

use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::Error;

use crate::bucket::Rate;

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// What the key is made of: `client_address`, `route`, `method`, `path`, `header:NAME`.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Tokens per period (the limit).
    pub requests: u64,
    /// The period, seconds.
    pub period_seconds: u64,
    /// Most tokens a key may save up (default: `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Classes of requests with their own limits; the first that matches applies.
    #[serde(default)]
    pub classes: Vec<ClassFile>,
    /// Only count: never refuse, add no headers.
    #[serde(default)]
    pub shadow: bool,
    /// Add the `RateLimit-*` headers to responses (default true).
    #[serde(default = "yes")]
    pub headers: bool,
    /// When the shared store fails: `allow` (default) or `deny`.
    #[serde(default)]
    pub on_store_error: Option<String>,
}

fn default_key() -> Vec<String> {
    vec!["client_address".into()]
}

fn yes() -> bool {
    true
}

/// A class as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassFile {
    /// Its name (part of the key, and of the metrics' meaning).
    pub name: String,
    /// Matches requests with this header…
    #[serde(default)]
    pub header: Option<String>,
    /// …having this value (default: any value).
    #[serde(default)]
    pub value: Option<String>,
    /// Matches requests whose path starts with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Tokens per period.
    pub requests: u64,
    /// The period, seconds.
    pub period_seconds: u64,
    /// Bucket size (default: `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
}

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's IP (needs `expose: [client_address]`).
    ClientAddress,
    /// The route's name.
    Route,
    /// The method.
    Method,
    /// The path without query.
    Path,
    /// A request header's value.
    Header(String),
}

/// A class of requests.
#[derive(Debug, Clone)]
pub struct Class {
    /// Name.
    pub name: String,
    /// Header and optional value to match.
    pub header: Option<(String, Option<String>)>,
    /// Path prefix to match.
    pub path_prefix: Option<String>,
    /// Its bucket.
    pub rate: Rate,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Key parts.
    pub key: Vec<KeyPart>,
    /// Classes, in order; the last is the default class (`default`).
    pub classes: Vec<Class>,
    /// Count only.
    pub shadow: bool,
    /// Add the headers.
    pub headers: bool,
    /// Refuse when the store fails.
    pub deny_on_store_error: bool,
}

fn rate(field: &str, requests: u64, period: u64, burst: Option<u64>) -> Result<Rate, Error> {
    if requests == 0 {
        return Err(Error::Config(format!(
            "{field}requests: must be at least 1"
        )));
    }
    if period == 0 || period > 366 * 86_400 {
        return Err(Error::Config(format!(
            "{field}period_seconds: must be between 1 and 31622400"
        )));
    }
    let capacity = burst.unwrap_or(requests);
    if capacity == 0 {
        return Err(Error::Config(format!("{field}burst: must be at least 1")));
    }
    Ok(Rate {
        tokens: requests,
        period_ns: Duration::from_secs(period).as_nanos() as u64,
        capacity,
    })
}

fn header_name(field: &str, n: &str) -> Result<String, Error> {
    if n.is_empty()
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::Config(format!(
            "{field}: {n:?} is not a header name"
        )));
    }
    Ok(n.to_ascii_lowercase())
}

/// Validates the configuration.
pub fn validate(f: ConfigFile) -> Result<Config, Error> {
    if f.key.is_empty() {
        return Err(Error::Config("key: name at least one part".into()));
    }
    let mut key = Vec::new();
    for (i, k) in f.key.iter().enumerate() {
        key.push(match k.as_str() {
            "client_address" => KeyPart::ClientAddress,
            "route" => KeyPart::Route,
            "method" => KeyPart::Method,
            "path" => KeyPart::Path,
            other => match other.strip_prefix("header:") {
                Some(h) => KeyPart::Header(header_name(&format!("key[{i}]"), h)?),
                None => {
                    return Err(Error::Config(format!(
                        "key[{i}]: {other:?} is not one of client_address, route, method, path, header:NAME"
                    )))
                }
            },
        });
    }
    let mut classes = Vec::new();
    for (i, c) in f.classes.into_iter().enumerate() {
        let field = format!("classes[{i}].");
        if c.name.is_empty()
            || c.name == "default"
            || classes.iter().any(|x: &Class| x.name == c.name)
        {
            return Err(Error::Config(format!(
                "{field}name: {:?} must be unique, not empty and not \"default\"",
                c.name
            )));
        }
        if c.header.is_none() && c.path_prefix.is_none() {
            return Err(Error::Config(format!(
                "{field}: give a header or a path_prefix to match"
            )));
        }
        if c.value.is_some() && c.header.is_none() {
            return Err(Error::Config(format!("{field}value: needs a header")));
        }
        let header = match c.header {
            Some(h) => Some((header_name(&format!("{field}header"), &h)?, c.value)),
            None => None,
        };
        classes.push(Class {
            name: c.name,
            header,
            path_prefix: c.path_prefix,
            rate: rate(&field, c.requests, c.period_seconds, c.burst)?,
        });
    }
    classes.push(Class {
        name: "default".into(),
        header: None,
        path_prefix: None,
        rate: rate("", f.requests, f.period_seconds, f.burst)?,
    });
    let deny_on_store_error = match f.on_store_error.as_deref() {
        None | Some("allow") => false,
        Some("deny") => true,
        Some(o) => {
            return Err(Error::Config(format!(
                "on_store_error: {o:?} must be allow or deny"
            )))
        }
    };
    Ok(Config {
        key,
        classes,
        shadow: f.shadow,
        headers: f.headers,
        deny_on_store_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, Error> {
        validate(serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))?)
    }

    #[test]
    fn defaults_and_classes() {
        let c = parse(
            r#"{"requests":10,"period_seconds":60,"classes":[{"name":"gold","header":"X-Tier","value":"gold","requests":100,"period_seconds":60,"burst":20}]}"#,
        )
        .unwrap();
        assert_eq!(c.key, vec![KeyPart::ClientAddress]);
        assert_eq!(c.classes.len(), 2);
        assert_eq!(
            c.classes[0].header,
            Some(("x-tier".into(), Some("gold".into())))
        );
        assert_eq!(c.classes[0].rate.capacity, 20);
        assert_eq!(c.classes[1].name, "default");
        assert_eq!(c.classes[1].rate.capacity, 10, "burst defaults to requests");
        assert!(c.headers && !c.shadow && !c.deny_on_store_error);
    }

    #[test]
    fn errors_name_the_field() {
        for (json, want) in [
            (
                r#"{"requests":0,"period_seconds":60}"#,
                "requests: must be at least 1",
            ),
            (r#"{"requests":1,"period_seconds":0}"#, "period_seconds"),
            (
                r#"{"requests":1,"period_seconds":1,"key":["ip"]}"#,
                "key[0]",
            ),
            (
                r#"{"requests":1,"period_seconds":1,"key":["header:a b"]}"#,
                "key[0]",
            ),
            (
                r#"{"requests":1,"period_seconds":1,"classes":[{"name":"x","requests":1,"period_seconds":1}]}"#,
                "classes[0]",
            ),
            (
                r#"{"requests":1,"period_seconds":1,"on_store_error":"maybe"}"#,
                "on_store_error",
            ),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
