//! `proxy_http_call`: a request to an upstream the plugin's `allowed_upstreams` lists. The
//! result arrives later through `proxy_on_http_call_response` on the context that made it.

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

/// Longest callout deadline.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

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
    // Trailers are accepted and not sent (HTTP/1.1 callouts).
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
        if !valid_name(k) || !valid_value(k, v) {
            return Ok(st(Status::BadArgument));
        }
        headers.push((k.to_ascii_lowercase(), v.to_vec()));
    }
    for required in [&b":method"[..], b":path", b":authority"] {
        if !headers.iter().any(|(k, _)| k == required) {
            return Ok(st(Status::BadArgument));
        }
    }
    if timeout_ms == 0 {
        return Ok(st(Status::BadArgument));
    }
    let state = c.data_mut();
    let name = String::from_utf8_lossy(&upstream);
    let Some(pool) = state.settings.callout_targets.get(name.as_ref()).cloned() else {
        tracing::debug!(
            target: "sluice::plugin",
            plugin = %state.settings.name,
            upstream = %name,
            "callout refused: the upstream is not in allowed_upstreams"
        );
        return Ok(st(Status::BadArgument));
    };
    let Some(sink) = state.callout_sink.clone() else {
        return Ok(st(Status::BadArgument));
    };
    if let CalloutSink::Request(_) = sink {
        let max = state.settings.limits.max_callouts;
        let Some(s) = state.stream.as_deref_mut() else {
            return Ok(st(Status::BadArgument));
        };
        if s.callouts_made >= max {
            return Ok(st(Status::BadArgument));
        }
        s.callouts_made += 1;
        s.pending_callouts += 1;
    }
    state.next_token = state.next_token.wrapping_add(1).max(1);
    let token = state.next_token;
    let member = state.member;
    let timeout = Duration::from_millis(timeout_ms.into()).min(MAX_TIMEOUT);
    dispatch(
        CalloutRequest {
            pool,
            headers,
            body,
            timeout,
        },
        token,
        member,
        sink,
    );
    done(put_u32(&mut c, ret_token, token))
}
