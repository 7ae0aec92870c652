//! `sluice plugin new NAME`: a plugin crate that builds and passes its test as generated.

use std::path::{Path, PathBuf};

/// Where this `sluice` was built from: its SDK, if the checkout is still there.
pub const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk-guest");

/// Why a crate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Not a crate name.
    #[error("{0:?} is not a crate name: use letters, digits, '-' and '_', starting with a letter")]
    Name(String),
    /// The directory exists.
    #[error("{0} already exists")]
    Exists(String),
    /// No SDK to depend on.
    #[error("no Sluice SDK at {0}: pass --sdk with the path of sdk-guest in a Sluice checkout")]
    NoSdk(String),
    /// Writing failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
}

/// Whether `name` can name a crate (and a plugin).
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Writes crate `name` in `parent/name`, depending on the SDK at `sdk`. Returns its directory.
pub fn new_plugin(parent: &Path, name: &str, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| ScaffoldError::NoSdk(sdk.display().to_string()))?;
    let lib = name.replace('-', "_");
    let sdk_path = serde_json::to_string(&sdk.display().to_string()).expect("a string serializes");
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk_path)),
        ("src/lib.rs", LIB_RS.to_string()),
        ("plugin.yaml", PLUGIN_YAML.to_string()),
        ("cases.yaml", CASES_YAML.to_string()),
        ("README.md", readme(name, &lib)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        let write = || -> std::io::Result<()> {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|e| ScaffoldError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(dir)
}

fn cargo_toml(name: &str, sdk_path: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = {{ path = {sdk_path} }}
serde = {{ version = "1", features = ["derive"] }}

# Small plugins: optimise for size, one codegen unit, no unwinding code.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

# A crate of its own, not part of an enclosing workspace.
[workspace]
"#
    )
}

fn readme(name: &str, lib: &str) -> String {
    format!(
        r#"# {name}

A Sluice plugin (Proxy-Wasm ABI v0.2.1), made by `sluice plugin new`. It adds a header to
every request it forwards and to every response, and answers `403` to requests that carry
`x-block`.

```sh
cargo build --release --target wasm32-wasip1
sluice plugin test target/wasm32-wasip1/release/{lib}.wasm --config plugin.yaml --case cases.yaml
```

`plugin.yaml` holds the plugin's options (its `config` is what `Config` in `src/lib.rs`
parses); `cases.yaml` the requests it is tested with and what must happen. To run it in
Sluice, add to the config:

```yaml
plugins:
  {name}:
    path: target/wasm32-wasip1/release/{lib}.wasm
    config: {{ header: x-{name}, value: "on" }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: backend
    plugins: [{name}]
```
"#
    )
}

const LIB_RS: &str = r#"//! A Sluice plugin: tags requests and responses with a header, and blocks requests that ask
//! for it.

use std::rc::Rc;

use serde::Deserialize;
use sluice_sdk::{Action, Error, HttpFilter, Plugin, Reply, Request, Response};

/// The configuration (`config:` in the plugin's entry), as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The header to add.
    header: String,
    /// Its value.
    #[serde(default = "default_value")]
    value: String,
}

fn default_value() -> String {
    "on".into()
}

/// Made once per VM from the configuration.
struct Tagger {
    header: String,
    value: String,
}

impl Plugin for Tagger {
    type Config = Config;
    type Filter = TagFilter;

    fn new(config: Config) -> Result<Self, Error> {
        if config.header.is_empty() {
            return Err(Error::Config("header must not be empty".into()));
        }
        Ok(Tagger {
            header: config.header,
            value: config.value,
        })
    }

    fn filter(plugin: &Rc<Self>) -> TagFilter {
        TagFilter {
            plugin: plugin.clone(),
        }
    }
}

/// One per request.
struct TagFilter {
    plugin: Rc<Tagger>,
}

impl HttpFilter for TagFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        if req.header("x-block")?.is_some() {
            return Ok(Reply::new(403).body("blocked\n").into());
        }
        req.set_header(&self.plugin.header, &self.plugin.value)?;
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        resp.set_header(&self.plugin.header, &self.plugin.value)?;
        Ok(Action::Continue)
    }
}

sluice_sdk::plugin!(Tagger);
"#;

const PLUGIN_YAML: &str = r#"# The plugin's options, as in a `plugins:` entry of the Sluice config (without `path`).
config:
  header: x-tagged
  value: "yes"
"#;

const CASES_YAML: &str = r#"# Requests to run through the plugin, and what must happen.
cases:
  - name: tags the request and the response
    request: { method: GET, path: /hello }
    upstream: { status: 200, body: "hi" }
    expect:
      status: 200
      headers: { x-tagged: "yes" }
      upstream_headers: { x-tagged: "yes" }
      body: "hi"

  - name: blocks a request that asks for it
    request: { method: GET, path: /hello, headers: { x-block: "1" } }
    expect:
      status: 403
      forwarded: false
      body: "blocked\n"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("my-plugin_2"));
        assert!(!valid_name("2plugin"));
        assert!(!valid_name("my plugin"));
        assert!(!valid_name(""));
    }

    #[test]
    fn writes_a_crate_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("sluice-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = new_plugin(&dir, "demo-x", Path::new(BUILT_SDK)).unwrap();
        let cargo = std::fs::read_to_string(out.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"demo-x\"") && cargo.contains("sluice-sdk"));
        assert!(out.join("src/lib.rs").is_file() && out.join("cases.yaml").is_file());
        assert!(std::fs::read_to_string(out.join("README.md"))
            .unwrap()
            .contains("release/demo_x.wasm"));
        assert!(matches!(
            new_plugin(&dir, "demo-x", Path::new(BUILT_SDK)),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            new_plugin(&dir, "other", &dir.join("nope")),
            Err(ScaffoldError::NoSdk(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
