//! Logging to the host's log (`proxy_log`), with the `trace!` … `critical!` macros.

pub use sluice_abi::LogLevel;

use crate::hostcalls;

/// Whether the host logs messages at `level` (asks the host; logs if it cannot say).
pub fn enabled(level: LogLevel) -> bool {
    hostcalls::log_level().map_or(true, |min| level as u32 >= min as u32)
}

/// Writes `message` at `level`. A host that refuses it is ignored: logging never fails a
/// request.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Logs at a level, formatting only if the host logs that level.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::log($level, &::std::format!($($arg)+));
        }
    };
}

/// Logs at level trace: `trace!("x = {}", x)`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::__log_at!($crate::log::LogLevel::Trace, $($arg)+) };
}

/// Logs at level debug.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::__log_at!($crate::log::LogLevel::Debug, $($arg)+) };
}

/// Logs at level info.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::__log_at!($crate::log::LogLevel::Info, $($arg)+) };
}

/// Logs at level warn.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::__log_at!($crate::log::LogLevel::Warn, $($arg)+) };
}

/// Logs at level error.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::__log_at!($crate::log::LogLevel::Error, $($arg)+) };
}

/// Logs at level critical.
#[macro_export]
macro_rules! critical {
    ($($arg:tt)+) => { $crate::__log_at!($crate::log::LogLevel::Critical, $($arg)+) };
}
