//! Plugins' config schemas: a plugin may ship a JSON Schema of its `config`, and a config that
//! does not satisfy it is refused before the plugin's `on_configure` runs, each error naming
//! the field (`plugins.auth.config.api_keys.keys[0].sha256: …`).
//!
//! Where the schema comes from, first found wins:
//! 1. for a `path:` plugin, the file `STEM.schema.json` next to `STEM.wasm` (an operator's
//!    schema for a plugin that has none, or in place of the one it carries);
//! 2. the custom section [`SECTION`] of the `.wasm` (the plugin carries its schema, whatever
//!    its source: `path:`, `url:` or `oci:`).
//!
//! A plugin without either is not validated. Only a config that is a map (passed as a JSON
//! object) is validated; a string config only if the schema's `type` is `"string"`. An
//! absent config is not validated. Error messages do not repeat the values of the config
//! (they may be secrets): a wrong value shows as `value`.
//!
//! The validator is the `jsonschema` crate, built without remote references: a schema that
//! refers to another document by URL fails to build instead of reaching the network.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::PluginSpec;
use crate::source::{Fetched, PluginSource};
use crate::wasm::settings::Version;

/// Name of the custom section of a `.wasm` that holds the JSON Schema of its `config`.
pub const SECTION: &str = "sluice.config_schema";

/// Why a plugin's config was refused by its schema, or its schema could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema is not JSON, or not a JSON Schema.
    #[error("plugin {plugin:?}: its config schema ({origin}) is not usable: {message}")]
    Unusable {
        /// Plugin name (`NAME (candidate)` for a rollout's candidate).
        plugin: String,
        /// Where the schema came from.
        origin: String,
        /// What was wrong.
        message: String,
    },
    /// The config does not satisfy the schema: one line per error, each naming the field.
    #[error("{}", .errors.join("\n"))]
    Invalid {
        /// `FIELD: MESSAGE`, e.g. `plugins.auth.config.api_keys.header: value is not of type "string"`.
        errors: Vec<String>,
    },
}

/// A plugin's config schema and where it came from.
#[derive(Debug, Clone)]
pub struct PluginSchema {
    /// `file:PATH` or `section sluice.config_schema of the .wasm`.
    pub origin: String,
    /// The schema.
    pub schema: Value,
}

/// The file a `path:` plugin's schema may be in: `STEM.schema.json` next to `STEM.wasm`.
pub fn schema_file_for(wasm: &Path) -> PathBuf {
    let stem = wasm.file_stem().unwrap_or_default().to_string_lossy();
    wasm.with_file_name(format!("{stem}.schema.json"))
}

/// The content of the custom section `name` of a wasm module (the first one of that name), or
/// `None`. Malformed modules give `None` (the compiler reports them).
pub fn custom_section<'a>(wasm: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return None;
    }
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = leb128_u32(wasm, &mut at)? as usize;
        let end = at.checked_add(size).filter(|e| *e <= wasm.len())?;
        if id == 0 {
            let mut p = at;
            let len = leb128_u32(wasm, &mut p)? as usize;
            let name_end = p.checked_add(len).filter(|e| *e <= end)?;
            if &wasm[p..name_end] == name.as_bytes() {
                return Some(&wasm[name_end..end]);
            }
        }
        at = end;
    }
    None
}

fn leb128_u32(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u32::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Finds the schema of a plugin (see the module's doc for where), or `None`.
pub fn find(spec: &PluginSpec, binary: &Fetched) -> Result<Option<PluginSchema>, SchemaError> {
    let unusable = |origin: &str, message: String| SchemaError::Unusable {
        plugin: spec.fetch_key.clone(),
        origin: origin.to_string(),
        message,
    };
    if let PluginSource::Path(wasm) = &spec.source {
        let file = schema_file_for(wasm);
        match std::fs::read(&file) {
            Ok(bytes) => {
                let origin = format!("file {}", file.display());
                let schema = serde_json::from_slice(&bytes)
                    .map_err(|e| unusable(&origin, format!("not JSON: {e}")))?;
                return Ok(Some(PluginSchema { origin, schema }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unusable(&format!("file {}", file.display()), e.to_string())),
        }
    }
    let origin = format!("custom section {SECTION} of the .wasm");
    let bytes = binary.bytes().map_err(|m| unusable(&origin, m))?;
    let Some(section) = custom_section(&bytes, SECTION) else {
        return Ok(None);
    };
    let schema =
        serde_json::from_slice(section).map_err(|e| unusable(&origin, format!("not JSON: {e}")))?;
    Ok(Some(PluginSchema { origin, schema }))
}

/// The config path of a plugin in the config file: `plugins.NAME.config`, or
/// `plugins.NAME.rollout.candidate.config` for a rollout's candidate.
pub fn config_field(spec: &PluginSpec) -> String {
    match spec.version {
        Version::Stable => format!("plugins.{}.config", spec.name),
        Version::Candidate => format!("plugins.{}.rollout.candidate.config", spec.name),
    }
}

/// What of a config (its bytes as given to `on_configure`) the schema applies to: a JSON
/// object; a string only if the schema's type is `"string"`; nothing else.
fn instance(config: &[u8], schema: &Value) -> Option<Value> {
    if config.is_empty() {
        return None;
    }
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(config) {
        return Some(v);
    }
    if schema.get("type").and_then(Value::as_str) == Some("string") {
        return Some(Value::String(String::from_utf8_lossy(config).into_owned()));
    }
    None
}

/// Validates a config (its bytes, as given to `on_configure`) against a schema; `field` is the
/// config's path in the config file, which every error starts with.
pub fn validate(
    plugin: &str,
    field: &str,
    config: &[u8],
    schema: &PluginSchema,
) -> Result<(), SchemaError> {
    let Some(instance) = instance(config, &schema.schema) else {
        return Ok(());
    };
    let validator =
        jsonschema::options()
            .build(&schema.schema)
            .map_err(|e| SchemaError::Unusable {
                plugin: plugin.to_string(),
                origin: schema.origin.clone(),
                message: e.masked().to_string(),
            })?;
    let mut errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| {
            let path = field_path(field, &instance, e.instance_path());
            format!("{path}: {}", e.masked())
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort();
    errors.dedup();
    Err(SchemaError::Invalid { errors })
}

/// `field` followed by the instance path, as the config file names it: `.key` for an object's
/// member, `[i]` for an array's item.
fn field_path(field: &str, instance: &Value, location: &jsonschema::paths::Location) -> String {
    let mut out = field.to_string();
    let mut at = Some(instance);
    for segment in location.segments() {
        let key = segment.to_string();
        match at {
            Some(Value::Array(items)) => {
                out.push_str(&format!("[{key}]"));
                at = key.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            Some(Value::Object(map)) => {
                out.push('.');
                out.push_str(&key);
                at = map.get(&key);
            }
            _ => {
                out.push('.');
                out.push_str(&key);
                at = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> PluginSchema {
        PluginSchema {
            origin: "test".into(),
            schema: v,
        }
    }

    fn errors(config: &str, s: Value) -> Vec<String> {
        match validate("p", "plugins.p.config", config.as_bytes(), &schema(s)) {
            Ok(()) => Vec::new(),
            Err(SchemaError::Invalid { errors }) => errors,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn errors_name_the_field_and_hide_the_value() {
        let s = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "keys": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"sha256": {"type": "string"}}
                }}
            }
        });
        assert_eq!(
            errors(r#"{"keys":[{"sha256":"ok"},{"sha256":12345}]}"#, s.clone()),
            vec![r#"plugins.p.config.keys[1].sha256: value is not of type "string""#]
        );
        assert_eq!(
            errors(r#"{"keyz":[]}"#, s.clone()),
            vec!["plugins.p.config: Additional properties are not allowed ('keyz' was unexpected)"]
        );
        assert!(errors(r#"{"keys":[]}"#, s).is_empty());
    }

    #[test]
    fn strings_are_validated_only_against_a_string_schema() {
        let object = json!({"type": "object", "required": ["a"]});
        assert!(errors("plain text", object.clone()).is_empty());
        assert!(errors("", object.clone()).is_empty());
        assert_eq!(
            errors("{}", object),
            vec![r#"plugins.p.config: "a" is a required property"#]
        );
        let string = json!({"type": "string", "enum": ["on", "off"]});
        assert!(errors("on", string.clone()).is_empty());
        assert_eq!(errors("maybe", string).len(), 1);
    }

    #[test]
    fn a_schema_that_is_not_one_is_unusable() {
        let err = validate("p", "f", b"{}", &schema(json!({"type": 12}))).unwrap_err();
        assert!(matches!(err, SchemaError::Unusable { .. }), "{err}");
    }

    #[test]
    fn custom_sections_are_found_by_name() {
        // Header, a type section (id 1, empty), then two custom sections.
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend_from_slice(&[1, 1, 0]);
        for (name, data) in [
            ("other", &b"x"[..]),
            (SECTION, &b"{\"type\":\"object\"}"[..]),
        ] {
            let mut content = vec![name.len() as u8];
            content.extend_from_slice(name.as_bytes());
            content.extend_from_slice(data);
            wasm.push(0);
            wasm.push(content.len() as u8);
            wasm.extend_from_slice(&content);
        }
        assert_eq!(
            custom_section(&wasm, SECTION),
            Some(&b"{\"type\":\"object\"}"[..])
        );
        assert_eq!(custom_section(&wasm, "other"), Some(&b"x"[..]));
        assert_eq!(custom_section(&wasm, "missing"), None);
        assert_eq!(custom_section(&wasm[..wasm.len() - 1], SECTION), None);
        assert_eq!(custom_section(b"not wasm", SECTION), None);
    }

    #[test]
    fn schema_files_sit_next_to_the_wasm() {
        assert_eq!(
            schema_file_for(Path::new("/p/sluice_plugin_auth.wasm")),
            Path::new("/p/sluice_plugin_auth.schema.json")
        );
    }
}
