//! The smallest useful Sluice plugin: adds `x-hello: <greeting>` to every response, where the
//! greeting is the plugin's configuration (a string), by default `hello from a Sluice plugin`.
//!
//! ```yaml
//! plugins:
//!   hello: { path: sluice_plugin_hello.wasm, config: "hi there" }
//! ```

#[cfg(target_arch = "wasm32")]
use std::sync::Mutex;

#[cfg(target_arch = "wasm32")]
use sluice_sdk::abi::{Action, BufferType, LogLevel, MapType};

/// The greeting when the configuration is empty.
pub const DEFAULT_GREETING: &str = "hello from a Sluice plugin";

/// The greeting of this VM, set by `on_configure`.
#[cfg(target_arch = "wasm32")]
static GREETING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The greeting for a configuration: the configuration itself, or the default when empty.
pub fn greeting(config: &[u8]) -> &[u8] {
    let trimmed = config.trim_ascii();
    if trimmed.is_empty() {
        DEFAULT_GREETING.as_bytes()
    } else {
        trimmed
    }
}

/// Marks the module as speaking Proxy-Wasm ABI v0.2.1.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Reads the greeting from the plugin configuration.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn proxy_on_configure(_root_context_id: u32, _config_size: usize) -> u32 {
    let config = match sluice_sdk::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(c) => c.unwrap_or_default(),
        Err(_) => return 0,
    };
    let g = greeting(&config).to_vec();
    let _ = sluice_sdk::log(
        LogLevel::Info,
        &format!(
            "hello: configured, greeting {:?}",
            String::from_utf8_lossy(&g)
        ),
    );
    match GREETING.lock() {
        Ok(mut slot) => *slot = g,
        Err(_) => return 0,
    }
    1
}

/// Adds the greeting header to the response.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    if let Ok(g) = GREETING.lock() {
        if let Err(status) = sluice_sdk::add_header(MapType::ResponseHeaders, "x-hello", &g) {
            let _ = sluice_sdk::log(
                LogLevel::Warn,
                &format!("hello: cannot add x-hello: {status:?}"),
            );
        }
    }
    Action::Continue as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_from_config() {
        assert_eq!(greeting(b""), DEFAULT_GREETING.as_bytes());
        assert_eq!(greeting(b"  \n"), DEFAULT_GREETING.as_bytes());
        assert_eq!(greeting(b" hi there\n"), b"hi there");
    }
}
