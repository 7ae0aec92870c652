//! How guest calls fail: the kinds, the error, how a wasmtime error is classified, and the
//! one place that counts a plugin error.

use wasmtime::Trap;

use super::*;

/// How a guest call failed (the `kind` label of `sluice_plugin_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A trap (unreachable, out-of-bounds access, stack overflow, panic, `proc_exit`).
    Trap,
    /// The call ran out of fuel.
    Fuel,
    /// The call passed its wall-clock deadline.
    Timeout,
    /// The guest failed after a memory growth was refused.
    Memory,
    /// The guest broke the ABI (wrong return value, bad allocator, …).
    Abi,
    /// The VM had already failed in another request; nothing new is counted.
    Lost,
    /// Shared data (Redis) could not be reached during the call. The guest returned normally,
    /// so the VM is kept; the request phase fails under the plugin's policy.
    SharedData,
}

impl ErrorKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Fuel => "fuel",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Abi => "abi",
            ErrorKind::Lost => "lost",
            ErrorKind::SharedData => "shared_data",
        }
    }
}

/// A failed guest call.
#[derive(Debug, Clone)]
pub struct GuestError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, for the log.
    pub message: String,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

pub(super) fn lost() -> GuestError {
    GuestError {
        kind: ErrorKind::Lost,
        message: "its VM failed in another request".into(),
    }
}

pub(super) fn classify(state: &VmState, e: &wasmtime::Error) -> GuestError {
    let mut message = format!("{e:#}");
    if message.len() > 2000 {
        let mut cut = 2000;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let kind = if let Some(abi) = &state.abi_error {
        message = abi.clone();
        ErrorKind::Abi
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => ErrorKind::Fuel,
            Some(Trap::Interrupt) => ErrorKind::Timeout,
            _ if state.limiter.denied => ErrorKind::Memory,
            _ => ErrorKind::Trap,
        }
    };
    GuestError { kind, message }
}

pub(super) fn start_error(phase: &'static str, error: GuestError) -> VmError {
    VmError::Start { phase, error }
}

/// Counts a plugin error (`sluice_plugin_errors_total{plugin,version,phase,kind}`): every place that
/// finds a plugin at fault records it here.
pub fn record(plugin: &PluginSettings, phase: &str, kind: ErrorKind) {
    crate::metrics::metrics()
        .plugin_errors
        .with_label_values(&[&plugin.name, plugin.version.as_str(), phase, kind.as_str()])
        .inc();
}
