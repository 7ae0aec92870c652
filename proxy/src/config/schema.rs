//! The JSON Schema (draft 2020-12) of the config file, generated from the file structs: what
//! `sluice schema` prints and `docs/sluice.schema.json` holds. The doc comments of the fields
//! become their descriptions; `deny_unknown_fields` becomes `additionalProperties: false`.
//!
//! The schema checks the shape of the file only (fields, types, enumerations); what needs more
//! than the file (addresses, paths, references between sections, ranges) is checked when the
//! config loads.

use schemars::{json_schema, Schema, SchemaGenerator};

use super::ConfigFile;

/// The schema of the whole config file.
pub fn config_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(ConfigFile);
    schema.insert("title".into(), "Sluice configuration file".into());
    schema.to_value()
}

/// The schema as `sluice schema` prints it: pretty JSON, ending with a newline.
pub fn config_schema_text() -> String {
    let mut text =
        serde_json::to_string_pretty(&config_schema()).expect("a schema is serialisable");
    text.push('\n');
    text
}

/// A plugin's `config`/`vm_config`: a string (passed as is) or a map (passed as JSON); the
/// plugin's own schema, if it ships one, says more.
pub(crate) fn free_form(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Free-form: a string is passed to the plugin as is, a map as JSON.",
        "type": ["string", "object", "null"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        let schema = config_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
        for name in ["PluginFile", "LimitsFile", "UpstreamFile", "ListenerFile"] {
            assert_eq!(
                schema["$defs"][name]["additionalProperties"], false,
                "{name}"
            );
        }
    }

    #[test]
    fn plugin_config_is_a_string_or_a_map() {
        let schema = config_schema();
        let config = &schema["$defs"]["PluginFile"]["properties"]["config"];
        assert_eq!(
            config["type"],
            serde_json::json!(["string", "object", "null"])
        );
    }
}
