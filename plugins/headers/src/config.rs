//! The configuration: rules of header changes, each optionally limited to path prefixes.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::Error;

use crate::template::Template;

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Rules, applied in order.
    pub rules: Vec<RuleFile>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Applies only to requests whose path (without query) starts with one of these.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Changes to the request headers (before the upstream).
    #[serde(default)]
    pub request: ChangesFile,
    /// Changes to the response headers (before the client).
    #[serde(default)]
    pub response: ChangesFile,
}

/// Header changes as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesFile {
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set (replacing every value).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Values to add (besides those there).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// Validated changes: removals, then sets, then additions.
#[derive(Debug, Default)]
pub struct Changes {
    /// Names to remove.
    pub remove: Vec<String>,
    /// Name and value to set.
    pub set: Vec<(String, Template)>,
    /// Name and value to add.
    pub add: Vec<(String, Template)>,
}

impl Changes {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// A validated rule.
#[derive(Debug)]
pub struct Rule {
    /// Path prefixes (empty: every path).
    pub path_prefixes: Vec<String>,
    /// Request changes.
    pub request: Changes,
    /// Response changes.
    pub response: Changes,
}

impl Rule {
    /// Whether the rule applies to `path` (without query).
    pub fn applies(&self, path: &str) -> bool {
        self.path_prefixes.is_empty() || self.path_prefixes.iter().any(|p| path.starts_with(p))
    }
}

fn header_name(field: &str, name: &str) -> Result<String, Error> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(Error::Config(format!(
            "{field}: {name:?} is not a header name"
        )));
    }
    Ok(name.to_ascii_lowercase())
}

fn changes(field: &str, c: ChangesFile) -> Result<Changes, Error> {
    let mut out = Changes::default();
    for (i, n) in c.remove.iter().enumerate() {
        out.remove
            .push(header_name(&format!("{field}.remove[{i}]"), n)?);
    }
    for (what, map, dest) in [("set", c.set, &mut out.set), ("add", c.add, &mut out.add)] {
        for (n, v) in map {
            let f = format!("{field}.{what}.{n}");
            let name = header_name(&f, &n)?;
            let t = Template::parse(&v).map_err(|e| Error::Config(format!("{f}: {e}")))?;
            dest.push((name, t));
        }
    }
    Ok(out)
}

/// Validates the configuration.
pub fn validate(file: ConfigFile) -> Result<Vec<Rule>, Error> {
    if file.rules.is_empty() {
        return Err(Error::Config("rules: at least one rule is needed".into()));
    }
    file.rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            for (j, p) in r.path_prefixes.iter().enumerate() {
                if !p.starts_with('/') {
                    return Err(Error::Config(format!(
                        "rules[{i}].path_prefixes[{j}]: {p:?} must start with '/'"
                    )));
                }
            }
            let rule = Rule {
                path_prefixes: r.path_prefixes,
                request: changes(&format!("rules[{i}].request"), r.request)?,
                response: changes(&format!("rules[{i}].response"), r.response)?,
            };
            if rule.request.is_empty() && rule.response.is_empty() {
                return Err(Error::Config(format!("rules[{i}]: changes nothing")));
            }
            Ok(rule)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Rule>, Error> {
        validate(serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))?)
    }

    #[test]
    fn valid_rules() {
        let rules = parse(
            r#"{"rules":[{"path_prefixes":["/api"],"request":{"set":{"X-A":"{route}"},"remove":["x-b"]},"response":{"add":{"x-c":"1"}}}]}"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].request.set[0].0, "x-a", "names lower-cased");
        assert!(rules[0].applies("/api/v1") && !rules[0].applies("/other"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"{"rules":[{"request":{"set":{"x-a":"{oops}"}}}]}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("rules[0].request.set.x-a: unknown placeholder"),
            "{e}"
        );
        let e = parse(r#"{"rules":[{"request":{"remove":["bad name"]}}]}"#).unwrap_err();
        assert!(e.to_string().contains("rules[0].request.remove[0]"), "{e}");
        let e = parse(r#"{"rules":[{"path_prefixes":["api"],"request":{"remove":["x"]}}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("must start with '/'"), "{e}");
        assert!(parse(r#"{"rules":[{}]}"#)
            .unwrap_err()
            .to_string()
            .contains("changes nothing"));
        assert!(parse(r#"{"rules":[]}"#).is_err());
    }
}
