//! JSON Schemas: the config file's (`sluice schema`, `docs/sluice.schema.json`) and the
//! shipped plugins' (`plugins/NAME/config.schema.json`, embedded in each `.wasm` and checked by
//! the real `sluice` binary before a plugin's `on_configure`).
//!
//! The plugins are built by `make wasm` (profile `$SLUICE_PLUGIN_PROFILE`, else `plugin`).

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

/// The repository's root.
fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_to_json(text: &str) -> Value {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).expect("YAML");
    serde_json::to_value(yaml).expect("YAML that is JSON too")
}

/// Every error of `instance` against `schema`, as `PATH: MESSAGE` (JSON pointer paths).
fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .build(schema)
        .expect("the schema is a JSON Schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn config_schema() -> Value {
    serde_json::from_str(&read("docs/sluice.schema.json")).expect("docs/sluice.schema.json is JSON")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sluice_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_published_schema_is_what_sluice_schema_prints() {
    let (ok, stdout, stderr) = run(&["schema"]);
    assert!(ok, "{stderr}");
    let committed = read("docs/sluice.schema.json");
    assert!(
        stdout == committed,
        "docs/sluice.schema.json differs from `sluice schema`: regenerate it with \
         `cargo run -p sluice-proxy --bin sluice -- schema > docs/sluice.schema.json`"
    );
    let schema: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["$defs"]["PluginFile"]["properties"]["path"]["description"],
        "The `.wasm` file, relative to the config file."
    );
}

#[test]
fn the_repository_configs_satisfy_the_schema() {
    let schema = config_schema();
    let mut configs: Vec<(String, String)> = [
        "deploy/sluice.example.yaml",
        "deploy/k8s/base/sluice.yaml",
        "deploy/k8s/components/redis/sluice.yaml",
        "deploy/k8s/components/oci-plugins/sluice.yaml",
    ]
    .iter()
    .map(|rel| (rel.to_string(), read(rel)))
    .collect();
    // The demo's config, with and without its plugins, as `sluice demo` makes it.
    let demo = |plugins: Option<&Path>| {
        sluice::demo::demo_config(
            "127.0.0.1:8080",
            "127.0.0.1:9901",
            "127.0.0.1:3000",
            plugins,
            Path::new("/tmp/sluice-demo-secrets"),
        )
    };
    configs.push(("proxy/src/demo/demo.yaml".into(), demo(None)));
    configs.push((
        "proxy/src/demo/demo.yaml + plugins.yaml".into(),
        demo(Some(Path::new("/opt/plugins"))),
    ));
    for (name, text) in &configs {
        let instance = yaml_to_json(text);
        assert_eq!(errors(&schema, &instance), Vec::<String>::new(), "{name}");
        // And the config loads: the schema is not looser than what it is checked against.
        assert!(instance["listeners"].is_array(), "{name}");
    }
}

#[test]
fn the_schema_refuses_unknown_fields_and_wrong_types() {
    let schema = config_schema();
    let base = "listeners: [{ name: public, address: '127.0.0.1:8080' }]\n\
                upstreams: { app: { endpoints: ['127.0.0.1:3000'] } }\n\
                routes: [{ name: all, upstream: app }]\n";
    assert!(errors(&schema, &yaml_to_json(base)).is_empty());

    let unknown = format!("{base}upstreams_typo: {{}}\n");
    assert_eq!(
        errors(&schema, &yaml_to_json(&unknown)),
        vec![": Additional properties are not allowed ('upstreams_typo' was unexpected)"]
    );
    let nested = base.replace("endpoints:", "endpoint: ['x:1'], endpoints:");
    assert_eq!(
        errors(&schema, &yaml_to_json(&nested)),
        vec!["/upstreams/app: Additional properties are not allowed ('endpoint' was unexpected)"]
    );
    let name = base.replace("name: public", "name: 5");
    assert_eq!(
        errors(&schema, &yaml_to_json(&name)),
        vec![r#"/listeners/0/name: 5 is not of type "string""#]
    );
    // An optional section (`limits: ~` is allowed) reports at the section.
    let limits = format!(
        "{base}plugins: {{ p: {{ path: p.wasm, limits: {{ fuel: many, memory: 1 }} }} }}\n"
    );
    let found = errors(&schema, &yaml_to_json(&limits));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("/plugins/p/limits: "), "{found:?}");
    let balancing = base.replace("endpoints:", "load_balancing: fastest, endpoints:");
    assert_eq!(errors(&schema, &yaml_to_json(&balancing)).len(), 1);
}

// ---- plugins' schemas ------------------------------------------------------------------------

const SHIPPED: [(&str, &str); 5] = [
    ("auth", "sluice_plugin_auth"),
    ("rate-limit", "sluice_plugin_rate_limit"),
    ("headers", "sluice_plugin_headers"),
    ("mask", "sluice_plugin_mask"),
    ("hello", "sluice_plugin_hello"),
];

fn plugin_schema(dir: &str) -> Value {
    serde_json::from_str(&read(&format!("plugins/{dir}/config.schema.json")))
        .unwrap_or_else(|e| panic!("plugins/{dir}/config.schema.json: {e}"))
}

/// A shipped plugin as `make wasm` built it.
fn shipped_wasm(stem: &str) -> PathBuf {
    let profile = std::env::var("SLUICE_PLUGIN_PROFILE").unwrap_or_else(|_| "plugin".into());
    let path = target_dir().join(format!("wasm32-wasip1/{profile}/{stem}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins with `make wasm` first",
        path.display()
    );
    path
}

#[test]
fn every_shipped_plugin_carries_its_schema() {
    for (dir, stem) in SHIPPED {
        let bytes = std::fs::read(shipped_wasm(stem)).unwrap();
        let section = sluice::plugin_schema::custom_section(&bytes, sluice::plugin_schema::SECTION)
            .unwrap_or_else(|| {
                panic!(
                    "{stem}.wasm has no {} section",
                    sluice::plugin_schema::SECTION
                )
            });
        assert_eq!(
            section,
            read(&format!("plugins/{dir}/config.schema.json")).as_bytes(),
            "{stem}.wasm carries another schema than plugins/{dir}/config.schema.json: rebuild it"
        );
    }
}

/// `text` with the secret references of its plugins' config replaced, as loading does.
fn resolved(text: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let mut errors = Vec::new();
    let mut secrets = sluice::config::secrets::Secrets::default();
    let out = sluice::config::secrets::resolve(&doc, "", Path::new("/"), &mut secrets, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    serde_yaml::to_string(&out).unwrap()
}

/// The `config` of every `plugins:` entry in `text` whose `path` ends with `stem.wasm`.
fn configs_of(text: &str, stem: &str) -> Vec<Value> {
    let doc = yaml_to_json(text);
    let Some(plugins) = doc["plugins"].as_object() else {
        return Vec::new();
    };
    plugins
        .values()
        .filter(|p| {
            p["path"]
                .as_str()
                .is_some_and(|path| path.ends_with(&format!("{stem}.wasm")))
        })
        .filter_map(|p| p.get("config").cloned())
        .collect()
}

#[test]
fn the_plugins_example_configs_satisfy_their_schemas() {
    // The demo's secrets written as `sluice demo` writes them, and its references resolved:
    // the plugin is checked against what it is given.
    let secrets = temp_dir("schema-demo-secrets");
    sluice::demo::write_secrets(&secrets).unwrap();
    let demo = resolved(&sluice::demo::demo_config(
        "127.0.0.1:1",
        "127.0.0.1:2",
        "127.0.0.1:3",
        Some(Path::new("/p")),
        &secrets,
    ));
    let mut checked = 0;
    for (dir, stem) in SHIPPED {
        let schema = plugin_schema(dir);
        let mut sources = vec![("proxy/src/demo/plugins.yaml".to_string(), demo.clone())];
        let example = repo().join(format!("plugins/{dir}/example.yaml"));
        if example.is_file() {
            sources.push((
                format!("plugins/{dir}/example.yaml"),
                std::fs::read_to_string(&example).unwrap(),
            ));
        }
        for (name, text) in sources {
            for config in configs_of(&text, stem) {
                assert_eq!(
                    errors(&schema, &config),
                    Vec::<String>::new(),
                    "{name}: {dir}"
                );
                checked += 1;
            }
        }
    }
    // auth, rate-limit and headers in the demo; auth, rate-limit, headers and mask examples.
    assert!(checked >= 7, "only {checked} example configs found");
}

/// Writes `config` (with `{LISTEN}` and `{ADMIN}` filled in) and the auth plugin to a temp
/// dir; runs `sluice check` on it.
fn check_auth(plugin_config: &str, extra: &[(&str, &str)]) -> (bool, String) {
    let dir = temp_dir("schema-check");
    std::fs::copy(shipped_wasm("sluice_plugin_auth"), dir.join("auth.wasm")).unwrap();
    for (name, content) in extra {
        std::fs::write(dir.join(name), content).unwrap();
    }
    let config = format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams: {{ backend: {{ endpoints: ['127.0.0.1:1'] }} }}\n\
         routes: [{{ name: api, upstream: backend, plugins: [auth] }}]\n\
         plugins:\n\
         \x20 auth: {{ path: auth.wasm, config: {plugin_config} }}\n"
    );
    let (text, _, _) = with_ports(&config);
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, text).unwrap();
    let (ok, stdout, stderr) = run(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    (ok, format!("{stdout}{stderr}"))
}

const KEY: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

#[test]
fn sluice_check_refuses_a_plugin_config_against_its_schema() {
    let (ok, out) = check_auth(
        &format!("{{ api_keys: {{ keys: [{{ id: ci, sha256: {KEY} }}, {{ id: cd, sha256: 12345 }}] }} }}"),
        &[],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "plugins.auth.config.api_keys.keys[1].sha256: value is not of type \"string\""
        ),
        "{out}"
    );
    // Refused by the schema, before the plugin's on_configure (which would have said so in
    // its own words, `api_keys.keys[1].sha256: expected 64 hex digits`).
    assert!(!out.contains("on_configure"), "{out}");
    assert!(!out.contains("64 hex digits"), "{out}");
    // The value is not repeated (a config may hold secrets).
    assert!(!out.contains("12345"), "{out}");

    // Every error, each naming its field.
    let (ok, out) = check_auth(
        "{ realm: 7, api_keys: { keys: [], header: [x] }, jwt_typo: {} }",
        &[],
    );
    assert!(!ok, "{out}");
    for expected in [
        "plugins.auth.config: Additional properties are not allowed ('jwt_typo' was unexpected)",
        "plugins.auth.config.realm: value is not of type \"string\"",
        "plugins.auth.config.api_keys.header: value is not of type \"string\"",
        "plugins.auth.config.api_keys.keys: value has less than 1 item",
    ] {
        assert!(out.contains(expected), "{expected:?} not in {out}");
    }
}

#[test]
fn sluice_check_passes_a_config_that_satisfies_the_schema() {
    let (ok, out) = check_auth(
        &format!("{{ realm: api, api_keys: {{ keys: [{{ id: ci, sha256: {KEY} }}] }} }}"),
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("OK (1 listener, 1 upstream, 1 route, 1 plugin)"),
        "{out}"
    );
}

#[test]
fn a_schema_file_next_to_the_wasm_wins_over_the_embedded_one() {
    // This schema wants `realm`, which the plugin's own does not.
    let schema = r#"{"type": "object", "required": ["realm"]}"#;
    let config = format!("{{ api_keys: {{ keys: [{{ id: ci, sha256: {KEY} }}] }} }}");
    let (ok, out) = check_auth(&config, &[("auth.schema.json", schema)]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("plugins.auth.config: \"realm\" is a required property"),
        "{out}"
    );
    let (ok, out) = check_auth(&config, &[("auth.schema.json", "{ not json")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("plugin \"auth\": its config schema (file ") && out.contains("not JSON"),
        "{out}"
    );
}
