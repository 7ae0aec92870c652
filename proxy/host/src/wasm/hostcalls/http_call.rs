//! `proxy_http_call`: a request to an upstream the plugin's `allowed_upstreams` lists. The
//! result arrives later through `proxy_on_http_call_response` on the context that made it.
//!
//! The arguments are judged as the reference host judges them (Envoy's `Context::httpCall`,
//! reached through proxy-wasm-cpp-host's `http_call` export):
//!
//! - `timeout_ms` is a u32 in the ABI, but proxy-wasm-cpp-host passes it on as a C `int` and
//!   Envoy answers `BAD_ARGUMENT` when that is negative. So 2^31 ms (about 24.8 days) or more is
//!   `BAD_ARGUMENT` here too: refused, never clamped and sent. `0` is accepted and means the
//!   plugin sets no deadline (Envoy then sends without a timeout); 1 ..= 2^31 - 1 ms is the
//!   deadline of the whole exchange, as given. Whatever the timeout, the upstream's
//!   `connect_timeout_ms` bounds the connect and its `read_timeout_ms` each wait for the
//!   response, as for proxied requests, so no callout waits forever.
//! - The headers must include `:method`, `:path` and `:authority`, else `BAD_ARGUMENT` (Envoy
//!   checks that each is present, not that it is non-empty). An empty `:authority` is therefore
//!   accepted; its `Host` is then the chosen endpoint's `host:port` as written in the config
//!   (see [`crate::wasm::callout`]).
//! - An upstream not in `allowed_upstreams` is `BAD_ARGUMENT` (Envoy: an unknown cluster). Not
//!   `NOT_FOUND`: the Rust SDK accepts only `OK`, `BAD_ARGUMENT` and `INTERNAL_FAILURE` from
//!   this call and panics on anything else.
//! - An upstream with TLS is called over TLS with its own settings (see
//!   [`crate::wasm::callout`]).

use std::time::Duration;

use sluice_abi::map::{self, Limits};
use sluice_abi::names::ENV;
use sluice_abi::Status;
use wasmtime::Linker;

use super::headers::{valid_name, valid_value};
use super::{done, put_u32, read, st, HostResult, C};
use crate::wasm::callout::{dispatch, CalloutRequest, CalloutSink};
use crate::wasm::stream::{MAX_HEADER_MAP_BYTES, MAX_HEADER_MAP_PAIRS};
use crate::wasm::vm::VmState;

/// Longest callout deadline a plugin can ask for, in milliseconds: `i32::MAX`, the largest
/// value that is not negative in the reference host's signed view of the argument.
pub const MAX_TIMEOUT_MS: u32 = i32::MAX as u32;

/// The deadline `timeout_ms` asks for: `None` for 0 (no deadline of the plugin's own),
/// `BAD_ARGUMENT` past [`MAX_TIMEOUT_MS`].
pub fn deadline(timeout_ms: u32) -> Result<Option<Duration>, Status> {
    match timeout_ms {
        0 => Ok(None),
        ms if ms <= MAX_TIMEOUT_MS => Ok(Some(Duration::from_millis(ms.into()))),
        _ => Err(Status::BadArgument),
    }
}

/// Why [`claim_call`] refused a call.
pub(super) enum Refused {
    /// No callback is running that may call out (e.g. `on_vm_start`).
    NoSink,
    /// The request made `max_callouts` calls already.
    OverLimit,
}

/// Takes a token for a call (HTTP or gRPC) made in the current callback and where its result
/// goes: a request's call is counted against `max_callouts` and as pending (the request waits
/// for it), and reports to the request's channel; a root-context call to the VM.
pub(super) fn claim_call(state: &mut VmState) -> Result<(CalloutSink, u32), Refused> {
    let sink = state.callout_sink.clone().ok_or(Refused::NoSink)?;
    let sink = match sink {
        CalloutSink::Request(_) | CalloutSink::Stream => {
            let max = state.settings.limits.max_callouts;
            let s = state.stream.as_deref_mut().ok_or(Refused::NoSink)?;
            if s.callouts_made >= max {
                return Err(Refused::OverLimit);
            }
            s.callouts_made += 1;
            s.pending_callouts += 1;
            match sink {
                CalloutSink::Stream => CalloutSink::Request(s.callout_sender()),
                other => other,
            }
        }
        root => root,
    };
    state.next_token = state.next_token.wrapping_add(1).max(1);
    Ok((sink, state.next_token))
}

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(ENV, "proxy_http_call", http_call)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut c: C<'_>,
    up: u32,
    ul: u32,
    hp: u32,
    hl: u32,
    bp: u32,
    bl: u32,
    tp: u32,
    tl: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> HostResult {
    let max_body = u32::try_from(c.data().settings.limits.max_body_bytes).unwrap_or(u32::MAX);
    let upstream = match read(&mut c, up, ul, 256) {
        Ok(u) => u,
        Err(s) => return Ok(st(s)),
    };
    let encoded = match read(&mut c, hp, hl, MAX_HEADER_MAP_BYTES as u32) {
        Ok(h) => h,
        Err(s) => return Ok(st(s)),
    };
    let body = match read(&mut c, bp, bl, max_body) {
        Ok(b) => b,
        Err(s) => return Ok(st(s)),
    };
    // Trailers are accepted and not sent (pingora's client writes no request trailers).
    if let Err(s) = read(&mut c, tp, tl, MAX_HEADER_MAP_BYTES as u32) {
        return Ok(st(s));
    }
    // Check the token slot before starting anything.
    if let Err(s) = put_u32(&mut c, ret_token, 0) {
        return Ok(st(s));
    }
    let limits = Limits {
        max_pairs: MAX_HEADER_MAP_PAIRS as u32,
        max_bytes: MAX_HEADER_MAP_BYTES,
    };
    let Ok(pairs) = map::decode(&encoded, &limits) else {
        return Ok(st(Status::BadArgument));
    };
    let mut headers = Vec::with_capacity(pairs.len());
    for (k, v) in pairs.iter() {
        // Values are checked as for request-header writes, except that a callout may carry an
        // empty `:authority` (the reference host sends it; see above).
        let empty_authority = k == b":authority" && v.is_empty();
        if !valid_name(k) || !(empty_authority || valid_value(k, v)) {
            return Ok(st(Status::BadArgument));
        }
        headers.push((k.to_ascii_lowercase(), v.to_vec()));
    }
    // Present, possibly empty (an empty `:authority` is sent as the endpoint's host:port).
    for required in [&b":method"[..], b":path", b":authority"] {
        if !headers.iter().any(|(k, _)| k == required) {
            return Ok(st(Status::BadArgument));
        }
    }
    let timeout = match deadline(timeout_ms) {
        Ok(t) => t,
        Err(s) => return Ok(st(s)),
    };
    let state = c.data_mut();
    let name = String::from_utf8_lossy(&upstream);
    let Some(target) = state.settings.callout_targets.get(name.as_ref()).cloned() else {
        tracing::debug!(
            target: "sluice::plugin",
            plugin = %state.settings.name,
            upstream = %name,
            "callout refused: the upstream is not in allowed_upstreams"
        );
        return Ok(st(Status::BadArgument));
    };
    let (sink, token) = match claim_call(state) {
        Ok(c) => c,
        Err(_) => return Ok(st(Status::BadArgument)),
    };
    let member = state.member;
    dispatch(
        CalloutRequest {
            target,
            headers,
            body: body.into(),
            timeout,
        },
        token,
        member,
        sink,
    );
    done(put_u32(&mut c, ret_token, token))
}
