//! Logging, time, ticks and context switching: `proxy_log`, `proxy_get_log_level`,
//! `proxy_get_current_time_nanoseconds`, `proxy_set_tick_period_milliseconds`, `proxy_done`,
//! `proxy_set_effective_context`.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_abi::names::ENV;
use sluice_abi::{LogLevel, Status};
use tracing::Level;
use wasmtime::Linker;

use super::{check_range, done, put_u32, put_u64, read, st, HostResult, C};
use crate::wasm::vm::VmState;

/// Longest log line kept; longer ones are cut.
pub const MAX_LOG_BYTES: u32 = 16 * 1024;

/// The target of plugin log lines.
pub const TARGET: &str = "sluice::plugin";

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(ENV, "proxy_log", proxy_log)?;
    l.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut c: C<'_>, ret: u32| -> HostResult {
            done(put_u32(&mut c, ret, current_level() as u32))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: u32| -> HostResult {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            done(put_u64(&mut c, ret, now))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: u32| -> HostResult {
            c.data_mut().tick_period_ms = ms;
            Ok(st(Status::Ok))
        },
    )?;
    // Sluice does not defer `on_done`, so there is nothing to complete.
    l.func_wrap(ENV, "proxy_done", |_: C<'_>| -> HostResult {
        Ok(st(Status::Ok))
    })?;
    l.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: C<'_>, ctx: u32| -> HostResult { Ok(st(set_effective_context(c.data_mut(), ctx))) },
    )?;
    Ok(())
}

/// The most verbose level enabled for plugin logs.
fn current_level() -> LogLevel {
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        LogLevel::Trace
    } else if tracing::enabled!(target: TARGET, Level::DEBUG) {
        LogLevel::Debug
    } else if tracing::enabled!(target: TARGET, Level::INFO) {
        LogLevel::Info
    } else if tracing::enabled!(target: TARGET, Level::WARN) {
        LogLevel::Warn
    } else {
        LogLevel::Error
    }
}

fn proxy_log(mut c: C<'_>, level: u32, ptr: u32, len: u32) -> HostResult {
    let Ok(level) = LogLevel::try_from(level) else {
        return Ok(st(Status::BadArgument));
    };
    // Check the whole range, keep at most MAX_LOG_BYTES of it.
    if let Err(s) = check_range(&c, ptr, len) {
        return Ok(st(s));
    }
    let kept = len.min(MAX_LOG_BYTES);
    let bytes = match read(&mut c, ptr, kept, MAX_LOG_BYTES) {
        Ok(b) => b,
        Err(s) => return Ok(st(s)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let cut = if kept < len { " …(cut)" } else { "" };
    let plugin = c.data().settings.name.as_str();
    match level {
        LogLevel::Trace => tracing::trace!(target: TARGET, plugin, "{text}{cut}"),
        LogLevel::Debug => tracing::debug!(target: TARGET, plugin, "{text}{cut}"),
        LogLevel::Info => tracing::info!(target: TARGET, plugin, "{text}{cut}"),
        LogLevel::Warn => tracing::warn!(target: TARGET, plugin, "{text}{cut}"),
        LogLevel::Error => tracing::error!(target: TARGET, plugin, "{text}{cut}"),
        LogLevel::Critical => {
            tracing::error!(target: TARGET, plugin, critical = true, "{text}{cut}")
        }
    }
    Ok(st(Status::Ok))
}

/// `proxy_set_effective_context`. The SDKs switch to the context a callout belongs to before
/// touching its request, and root callbacks (`on_tick`, …) switch to a request they paused to
/// resume it. Valid: the root context; during a stream callback, the request being served;
/// during a root callback, any request paused by this VM (its state is taken from where the
/// request waits, and given back when the callback returns or switches again).
fn set_effective_context(data: &mut VmState, ctx: u32) -> Status {
    if ctx == data.root_id {
        data.give_back();
        data.context = ctx;
        return Status::Ok;
    }
    if data.stream.is_some() && ctx == data.stream_context {
        data.context = ctx;
        return Status::Ok;
    }
    if data.stream.is_some() && data.borrowed.is_none() {
        // A stream callback of another request: the reference host would switch, but that
        // request's state is not reachable from here.
        return Status::BadArgument;
    }
    let Some(vm) = data.vm.upgrade() else {
        return Status::BadArgument;
    };
    data.give_back();
    match vm.borrow_parked(ctx) {
        Some((parked, stream)) => {
            data.stream = Some(stream);
            data.stream_context = ctx;
            data.borrowed = Some(parked);
            data.context = ctx;
            Status::Ok
        }
        None => Status::BadArgument,
    }
}
