//! The Sluice SDK for writing Proxy-Wasm (ABI v0.2.1) plugins in Rust.
//!
//! This first version carries the ABI types and logging; the plugin traits and the dispatcher
//! come with the plugin host.
#![no_std]
#![deny(missing_docs)]

pub use sluice_abi as abi;

/// Raw host imports. Private: the safe API below is what plugins use.
#[cfg(target_arch = "wasm32")]
mod hostcalls {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    }
}

/// Writes `message` to the host's log at `level`.
#[cfg(target_arch = "wasm32")]
pub fn log(level: abi::LogLevel, message: &str) -> Result<(), abi::Status> {
    // SAFETY: the pointer and length describe `message`, which stays borrowed for the whole
    // call; the host only reads that range.
    let raw = unsafe { hostcalls::proxy_log(level as u32, message.as_ptr(), message.len()) };
    match abi::Status::try_from(raw) {
        Ok(abi::Status::Ok) => Ok(()),
        Ok(other) => Err(other),
        Err(_) => Err(abi::Status::InternalFailure),
    }
}
