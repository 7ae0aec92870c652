//! The configuration: as written (JSON, unknown fields refused), and validated into
//! [`Settings`]. Every error names the field it is about.

use serde::Deserialize;
use sluice_sdk::Error;

use crate::masker::{Check, Masker, Rule};
use crate::presets::Preset;

/// The default replacement text.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED]";
/// The default cap of a masked body, bytes (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// The default name of the request header carrying the count of masked fields.
pub const DEFAULT_COUNT_HEADER: &str = "x-masked-fields";
/// The default content types masked (prefixes).
pub const DEFAULT_CONTENT_TYPES: [&str; 2] = ["application/json", "text/"];

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Mask response bodies.
    #[serde(default = "yes")]
    pub response: bool,
    /// Mask request bodies.
    #[serde(default)]
    pub request: bool,
    /// Named presets (`email`, `card`, `iban`, `bearer`); default: all four.
    #[serde(default = "default_presets")]
    pub presets: Vec<String>,
    /// Custom patterns.
    #[serde(default)]
    pub patterns: Vec<PatternFile>,
    /// What replaces a masked field (patterns may have their own).
    #[serde(default = "default_replacement")]
    pub replacement: String,
    /// Content-type prefixes of the bodies masked (empty: every type).
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// The largest body masked, bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// What happens to a body that cannot be masked (too large, or compressed).
    #[serde(default)]
    pub oversize: Oversize,
    /// The request header that tells the upstream how many fields were masked (`null`: none).
    #[serde(default = "default_count_header")]
    pub count_header: Option<String>,
}

/// A custom pattern as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternFile {
    /// Its name, for logs.
    pub name: String,
    /// The regular expression (a group named `mask` limits the replacement to that group).
    pub regex: String,
    /// Its replacement text; default: the configuration's `replacement`.
    #[serde(default)]
    pub replacement: Option<String>,
}

/// What happens to a body that cannot be masked: larger than `max_body_bytes`, or with a
/// `content-encoding` the plugin cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    /// Refuse it: 413 for a request (415 if compressed), 502 for a response.
    #[default]
    Block,
    /// Forward it unmasked (logged and counted).
    Pass,
}

fn yes() -> bool {
    true
}

fn default_presets() -> Vec<String> {
    Preset::ALL.iter().map(|p| p.name().to_string()).collect()
}

fn default_replacement() -> String {
    DEFAULT_REPLACEMENT.to_string()
}

fn default_content_types() -> Vec<String> {
    DEFAULT_CONTENT_TYPES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

fn default_count_header() -> Option<String> {
    Some(DEFAULT_COUNT_HEADER.to_string())
}

/// The validated configuration.
#[derive(Debug)]
pub struct Settings {
    /// Mask response bodies.
    pub response: bool,
    /// Mask request bodies.
    pub request: bool,
    /// The rules: presets, then patterns, in the order written.
    pub masker: Masker,
    /// Content-type prefixes, lower case (empty: every type).
    pub content_types: Vec<String>,
    /// The largest body masked, bytes.
    pub max_body_bytes: usize,
    /// What happens to a body that cannot be masked.
    pub oversize: Oversize,
    /// The request header carrying the count, lower case.
    pub count_header: Option<String>,
}

fn config_error(field: impl std::fmt::Display, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("{field}: {message}"))
}

impl Settings {
    /// Validates the configuration as written.
    pub fn from_file(file: ConfigFile) -> Result<Settings, Error> {
        let mut rules = Vec::new();
        let mut seen: Vec<Preset> = Vec::new();
        for (i, name) in file.presets.iter().enumerate() {
            let field = format_args!("presets[{i}]");
            let Some(preset) = Preset::from_name(name) else {
                let known: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                return Err(config_error(
                    field,
                    format!("unknown preset {name:?} (known: {})", known.join(", ")),
                ));
            };
            if seen.contains(&preset) {
                return Err(config_error(
                    field,
                    format!("preset {name:?} is listed twice"),
                ));
            }
            seen.push(preset);
            let rule = preset
                .rule(&file.replacement)
                .map_err(|e| config_error(field, format!("preset {name:?}: {e}")))?;
            rules.push(rule);
        }
        for (i, p) in file.patterns.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(config_error(format_args!("patterns[{i}].name"), "empty"));
            }
            let field = format_args!("patterns[{i}].regex");
            let replacement = p.replacement.as_deref().unwrap_or(&file.replacement);
            let rule = Rule::new(&p.name, &p.regex, replacement, Check::None)
                .map_err(|e| config_error(field, e))?;
            if rule.matches_empty() {
                return Err(config_error(
                    field,
                    format!("{:?} matches the empty text", p.regex),
                ));
            }
            rules.push(rule);
        }
        if rules.is_empty() {
            return Err(config_error(
                "presets",
                "no rules: presets and patterns are both empty",
            ));
        }
        let mut content_types = Vec::with_capacity(file.content_types.len());
        for (i, t) in file.content_types.iter().enumerate() {
            let t = t.trim().to_ascii_lowercase();
            if t.is_empty() {
                return Err(config_error(
                    format_args!("content_types[{i}]"),
                    "empty (an empty list masks every type)",
                ));
            }
            content_types.push(t);
        }
        if file.max_body_bytes == 0 {
            return Err(config_error("max_body_bytes", "must be at least 1"));
        }
        let max_body_bytes = usize::try_from(file.max_body_bytes).unwrap_or(usize::MAX);
        let count_header = match file.count_header {
            None => None,
            Some(h) => {
                let h = h.to_ascii_lowercase();
                if !is_header_name(&h) {
                    return Err(config_error(
                        "count_header",
                        format!("{h:?} is not a header name"),
                    ));
                }
                Some(h)
            }
        };
        Ok(Settings {
            response: file.response,
            request: file.request,
            masker: Masker::new(rules),
            content_types,
            max_body_bytes,
            oversize: file.oversize,
            count_header,
        })
    }

    /// Whether a body of this `content-type` is masked. A body without one is masked (it may
    /// well be text); parameters such as `; charset=utf-8` do not matter.
    pub fn masks_type(&self, content_type: Option<&str>) -> bool {
        let Some(t) = content_type else {
            return true;
        };
        if self.content_types.is_empty() {
            return true;
        }
        let t = t.trim().to_ascii_lowercase();
        self.content_types.iter().any(|p| t.starts_with(p.as_str()))
    }
}

/// Whether `name` is a header name (RFC 9110 token characters, not a pseudo-header).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, Error> {
        let file: ConfigFile =
            serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))?;
        Settings::from_file(file)
    }

    fn message(json: &str) -> String {
        settings(json).expect_err("refused").to_string()
    }

    #[test]
    fn defaults() {
        let s = settings("{}").unwrap();
        assert!(s.response);
        assert!(!s.request);
        let names: Vec<&str> = s.masker.rules().iter().map(|r| r.name()).collect();
        assert_eq!(names, ["email", "card", "iban", "bearer"]);
        assert_eq!(s.content_types, ["application/json", "text/"]);
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.oversize, Oversize::Block);
        assert_eq!(s.count_header.as_deref(), Some("x-masked-fields"));
        let out = s.masker.mask(b"mail a@b.io");
        assert_eq!(out.body.as_deref(), Some(&b"mail [REDACTED]"[..]));
    }

    #[test]
    fn everything_set() {
        let s = settings(
            r#"{"response": false, "request": true, "presets": ["card"],
                "patterns": [{"name": "ssn", "regex": "[0-9]{3}-[0-9]{2}-[0-9]{4}",
                              "replacement": "***-**-****"},
                             {"name": "pin", "regex": "pin=[0-9]+"}],
                "replacement": "<x>", "content_types": [" Application/JSON "],
                "max_body_bytes": 10, "oversize": "pass", "count_header": "X-Masked"}"#,
        )
        .unwrap();
        assert!(!s.response);
        assert!(s.request);
        assert_eq!(s.content_types, ["application/json"]);
        assert_eq!(s.max_body_bytes, 10);
        assert_eq!(s.oversize, Oversize::Pass);
        assert_eq!(s.count_header.as_deref(), Some("x-masked"));
        let out = s.masker.mask(b"4111111111111111 123-45-6789 pin=42");
        assert_eq!(out.body.as_deref(), Some(&b"<x> ***-**-**** <x>"[..]));
        assert_eq!(out.counts, vec![1, 1, 1]);
    }

    #[test]
    fn the_count_header_can_be_turned_off() {
        let s = settings(r#"{"count_header": null}"#).unwrap();
        assert_eq!(s.count_header, None);
    }

    #[test]
    fn errors_name_the_field() {
        let m = message(r#"{"presets": ["email", "phone"]}"#);
        assert!(m.contains("presets[1]: unknown preset \"phone\""), "{m}");
        assert!(m.contains("known: email, card, iban, bearer"), "{m}");
        let m = message(r#"{"presets": ["card", "card"]}"#);
        assert!(
            m.contains("presets[1]: preset \"card\" is listed twice"),
            "{m}"
        );
        let m =
            message(r#"{"patterns": [{"name": "ok", "regex": "a"}, {"name": "x", "regex": "("}]}"#);
        assert!(m.contains("patterns[1].regex: "), "{m}");
        let m = message(r#"{"patterns": [{"name": "x", "regex": "a*"}]}"#);
        assert!(
            m.contains("patterns[0].regex: \"a*\" matches the empty text"),
            "{m}"
        );
        let m = message(r#"{"patterns": [{"name": " ", "regex": "a"}]}"#);
        assert!(m.contains("patterns[0].name: empty"), "{m}");
        let m = message(r#"{"presets": []}"#);
        assert!(m.contains("presets: no rules"), "{m}");
        let m = message(r#"{"content_types": ["text/", ""]}"#);
        assert!(m.contains("content_types[1]: empty"), "{m}");
        let m = message(r#"{"max_body_bytes": 0}"#);
        assert!(m.contains("max_body_bytes: must be at least 1"), "{m}");
        let m = message(r#"{"count_header": "x masked"}"#);
        assert!(
            m.contains("count_header: \"x masked\" is not a header name"),
            "{m}"
        );
        let m = message(r#"{"count_header": ":status"}"#);
        assert!(m.contains("count_header:"), "{m}");
    }

    #[test]
    fn unknown_fields_and_values_are_refused() {
        assert!(message(r#"{"presets": ["email"], "paterns": []}"#).contains("unknown field"));
        assert!(message(r#"{"oversize": "drop"}"#).contains("unknown variant `drop`"));
        assert!(
            message(r#"{"patterns": [{"name": "x", "regex": "a", "flags": "i"}]}"#)
                .contains("unknown field `flags`")
        );
        assert!(message(r#"{"max_body_bytes": -1}"#).contains("invalid value"));
    }

    #[test]
    fn unicode_classes_are_not_available() {
        // `\d` is ASCII; `\p{..}` needs Unicode tables the plugin does not carry.
        assert!(settings(r#"{"patterns": [{"name": "d", "regex": "\\d+"}]}"#).is_ok());
        let m = message(r#"{"patterns": [{"name": "g", "regex": "\\p{Greek}"}]}"#);
        assert!(m.contains("patterns[0].regex: "), "{m}");
    }

    #[test]
    fn content_types_match_by_prefix() {
        let s = settings(r#"{"content_types": ["application/json", "text/"]}"#).unwrap();
        assert!(s.masks_type(Some("application/json")));
        assert!(s.masks_type(Some("Application/JSON; charset=utf-8")));
        assert!(s.masks_type(Some("text/html")));
        assert!(!s.masks_type(Some("image/png")));
        assert!(!s.masks_type(Some("application/octet-stream")));
        assert!(s.masks_type(None), "a body without a type is masked");
        let all = settings(r#"{"content_types": []}"#).unwrap();
        assert!(all.masks_type(Some("image/png")));
    }
}
