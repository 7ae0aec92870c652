//! The smallest useful Sluice plugin: adds `x-hello: <greeting>` to every response.
//!
//! ```yaml
//! plugins:
//!   hello: { path: sluice_plugin_hello.wasm, config: { greeting: "hi there" } }
//! ```

use std::rc::Rc;

use serde::Deserialize;
use sluice_sdk::{Action, Error, HttpFilter, Plugin, Response};

/// The greeting when the configuration has none.
pub const DEFAULT_GREETING: &str = "hello from a Sluice plugin";

/// The configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The value of `x-hello`.
    #[serde(default)]
    pub greeting: Option<String>,
}

/// The plugin: its greeting.
pub struct Hello {
    greeting: String,
}

impl Plugin for Hello {
    type Config = Config;
    type Filter = HelloFilter;

    fn new(config: Config) -> Result<Self, Error> {
        let greeting = config
            .greeting
            .filter(|g| !g.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_GREETING.to_string());
        sluice_sdk::info!("hello: configured, greeting {greeting:?}");
        Ok(Hello { greeting })
    }

    fn filter(plugin: &Rc<Self>) -> HelloFilter {
        HelloFilter {
            plugin: plugin.clone(),
        }
    }
}

/// Adds the header to one response.
pub struct HelloFilter {
    plugin: Rc<Hello>,
}

impl HttpFilter for HelloFilter {
    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        resp.add_header("x-hello", &self.plugin.greeting)?;
        Ok(Action::Continue)
    }
}

sluice_sdk::plugin!(Hello);
// config.schema.json, checked by the host before on_configure.
sluice_sdk::config_schema!();
