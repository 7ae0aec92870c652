//! The smallest Sluice plugin: declares the ABI version and logs when it is configured.

/// Marks the module as speaking Proxy-Wasm ABI v0.2.1.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Called once the plugin's configuration is available; accepts any configuration.
#[no_mangle]
pub extern "C" fn proxy_on_configure(_root_context_id: u32, _config_size: usize) -> u32 {
    #[cfg(target_arch = "wasm32")]
    let _ = sluice_sdk::log(sluice_sdk::abi::LogLevel::Info, "hello: configured");
    1
}
