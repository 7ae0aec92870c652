//! gRPC calls and streams: `proxy_grpc_call`, `proxy_grpc_stream`, `proxy_grpc_send`,
//! `proxy_grpc_cancel`, `proxy_grpc_close` (ABI v0.2.1). The transport is in
//! [`crate::wasm::grpc`]; the events come back through `proxy_on_grpc_receive_initial_metadata`,
//! `proxy_on_grpc_receive`, `proxy_on_grpc_receive_trailing_metadata` and `proxy_on_grpc_close`,
//! delivered to the root context id like HTTP-call responses (the SDKs find the context that
//! made the call by its token).
//!
//! The `service` argument names the upstream (the reference host also accepts a serialized
//! `GrpcService` proto there; Sluice takes the bytes as an upstream name). One not in the
//! plugin's `allowed_upstreams` is `PARSE_FAILURE`, as an unknown cluster is on Envoy (the
//! SDKs accept only `OK`, `PARSE_FAILURE` and `INTERNAL_FAILURE` from these calls); one that
//! does not speak HTTP/2 (`protocol: h2` or `auto` is needed) is `INTERNAL_FAILURE`. Other bad
//! arguments (names, metadata, memory) are `BAD_ARGUMENT` as for every call.
//! `proxy_grpc_send` on a unary call is `BAD_ARGUMENT` and `proxy_grpc_close` on one cancels
//! it, as on the reference host. `timeout_ms` is judged as for `proxy_http_call`. A request context's calls
//! count against `max_callouts` and are cancelled when the request ends; root-context calls
//! live until they close or the VM goes.

use bytes::Bytes;
use sluice_abi::map::{self, Limits};
use sluice_abi::names::ENV;
use sluice_abi::Status;
use wasmtime::Linker;

use super::headers::{valid_name, valid_value};
use super::http_call::{claim_call, deadline, Refused};
use super::{done, put_u32, read, st, HostResult, C};
use crate::wasm::callout::CalloutSink;
use crate::wasm::grpc::{self, GrpcHandle, GrpcRequest, MAX_MESSAGE};
use crate::wasm::stream::{HeaderList, MAX_HEADER_MAP_BYTES, MAX_HEADER_MAP_PAIRS};
use crate::wasm::target::TargetProtocol;
use crate::wasm::vm::VmState;

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(ENV, "proxy_grpc_call", grpc_call)?;
    l.func_wrap(ENV, "proxy_grpc_stream", grpc_stream)?;
    l.func_wrap(ENV, "proxy_grpc_send", grpc_send)?;
    l.func_wrap(
        ENV,
        "proxy_grpc_cancel",
        |mut c: C<'_>, token: u32| -> HostResult {
            Ok(st(match take_handle(c.data_mut(), token) {
                // Dropping the handle aborts the call: no further callbacks.
                Some(_) => Status::Ok,
                None => Status::NotFound,
            }))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_grpc_close",
        |mut c: C<'_>, token: u32| -> HostResult {
            let state = c.data_mut();
            Ok(st(match handle(state, token) {
                // A unary call has no request half of its own to end: closing it cancels it, as
                // on the reference host.
                Some(h) if h.unary => {
                    take_handle(state, token);
                    Status::Ok
                }
                Some(h) => {
                    // The request half ends; what the server still sends is delivered.
                    h.close();
                    Status::Ok
                }
                None => Status::NotFound,
            }))
        },
    )?;
    Ok(())
}

/// The call `token` of the current context (the request's, else the root context's).
fn handle(state: &mut VmState, token: u32) -> Option<&mut GrpcHandle> {
    if let Some(s) = state.stream.as_deref_mut() {
        if s.grpc_calls.contains_key(&token) {
            return s.grpc_calls.get_mut(&token);
        }
    }
    state.grpc_calls.get_mut(&token)
}

fn take_handle(state: &mut VmState, token: u32) -> Option<GrpcHandle> {
    if let Some(s) = state.stream.as_deref_mut() {
        if let Some(h) = s.grpc_calls.remove(&token) {
            s.pending_callouts = s.pending_callouts.saturating_sub(1);
            return Some(h);
        }
    }
    state.grpc_calls.remove(&token)
}

/// What the three name arguments and the metadata say, checked.
struct Target {
    upstream: String,
    service: String,
    method: String,
    metadata: HeaderList,
}

#[allow(clippy::too_many_arguments)]
fn target(
    c: &mut C<'_>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    hp: u32,
    hl: u32,
) -> Result<Target, Status> {
    let upstream = read(c, up, ul, 256)?;
    let service = read(c, sp, sl, 512)?;
    let method = read(c, mp, ml, 512)?;
    let encoded = read(c, hp, hl, MAX_HEADER_MAP_BYTES as u32)?;
    let text = |b: Vec<u8>| -> Result<String, Status> {
        let s = String::from_utf8(b).map_err(|_| Status::BadArgument)?;
        // Names go into the request path: no separators, spaces or controls.
        if s.is_empty() || s.bytes().any(|b| b == b'/' || b <= b' ' || b == 0x7f) {
            return Err(Status::BadArgument);
        }
        Ok(s)
    };
    let limits = Limits {
        max_pairs: MAX_HEADER_MAP_PAIRS as u32,
        max_bytes: MAX_HEADER_MAP_BYTES,
    };
    let pairs = map::decode(&encoded, &limits).map_err(|_| Status::BadArgument)?;
    let mut metadata = Vec::with_capacity(pairs.len());
    for (k, v) in pairs.iter() {
        if k.first() == Some(&b':') || !valid_name(k) || !valid_value(k, v) {
            return Err(Status::BadArgument);
        }
        metadata.push((k.to_ascii_lowercase(), v.to_vec()));
    }
    Ok(Target {
        upstream: String::from_utf8(upstream).map_err(|_| Status::BadArgument)?,
        service: text(service)?,
        method: text(method)?,
        metadata,
    })
}

/// Starts the call in the current context; its token.
fn open(
    state: &mut VmState,
    t: Target,
    timeout: Option<std::time::Duration>,
    first: Option<Bytes>,
) -> Result<u32, Status> {
    let Some(target) = state.settings.callout_targets.get(&t.upstream).cloned() else {
        tracing::debug!(
            target: "sluice::plugin",
            plugin = %state.settings.name,
            upstream = %t.upstream,
            "gRPC call refused: the upstream is not in allowed_upstreams"
        );
        return Err(Status::ParseFailure);
    };
    if target.protocol() == TargetProtocol::Http1 {
        tracing::debug!(
            target: "sluice::plugin",
            plugin = %state.settings.name,
            upstream = %t.upstream,
            "gRPC call refused: the upstream speaks HTTP/1.1 (protocol: h2 or auto is needed)"
        );
        return Err(Status::InternalFailure);
    }
    let (sink, token) = claim_call(state).map_err(|why| match why {
        Refused::NoSink => Status::BadArgument,
        // The SDKs accept only OK, PARSE_FAILURE and INTERNAL_FAILURE from these calls.
        Refused::OverLimit => Status::InternalFailure,
    })?;
    let request = GrpcRequest {
        target,
        service: t.service,
        method: t.method,
        metadata: t.metadata,
        timeout,
    };
    // A request's call ends with the request (its handle is dropped with it).
    let for_request = matches!(sink, CalloutSink::Request(_));
    let h = grpc::start(request, first, token, state.member, sink);
    match state.stream.as_deref_mut() {
        Some(s) if for_request => s.grpc_calls.insert(token, h),
        _ => state.grpc_calls.insert(token, h),
    };
    Ok(token)
}

#[allow(clippy::too_many_arguments)]
fn grpc_call(
    mut c: C<'_>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    hp: u32,
    hl: u32,
    msgp: u32,
    msgl: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> HostResult {
    let t = match target(&mut c, up, ul, sp, sl, mp, ml, hp, hl) {
        Ok(t) => t,
        Err(s) => return Ok(st(s)),
    };
    let message = match read(&mut c, msgp, msgl, MAX_MESSAGE as u32) {
        Ok(m) => m,
        Err(s) => return Ok(st(s)),
    };
    let timeout = match deadline(timeout_ms) {
        Ok(t) => t,
        Err(s) => return Ok(st(s)),
    };
    start_call(c, t, timeout, Some(Bytes::from(message)), ret_token)
}

/// Checks the token slot, opens the call, writes its token.
fn start_call(
    mut c: C<'_>,
    t: Target,
    timeout: Option<std::time::Duration>,
    first: Option<Bytes>,
    ret_token: u32,
) -> HostResult {
    if let Err(s) = put_u32(&mut c, ret_token, 0) {
        return Ok(st(s));
    }
    match open(c.data_mut(), t, timeout, first) {
        Ok(token) => done(put_u32(&mut c, ret_token, token)),
        Err(s) => Ok(st(s)),
    }
}

#[allow(clippy::too_many_arguments)]
fn grpc_stream(
    mut c: C<'_>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    hp: u32,
    hl: u32,
    ret_token: u32,
) -> HostResult {
    let t = match target(&mut c, up, ul, sp, sl, mp, ml, hp, hl) {
        Ok(t) => t,
        Err(s) => return Ok(st(s)),
    };
    start_call(c, t, None, None, ret_token)
}

fn grpc_send(mut c: C<'_>, token: u32, mp: u32, ml: u32, end: u32) -> HostResult {
    let message = match read(&mut c, mp, ml, MAX_MESSAGE as u32) {
        Ok(m) => m,
        Err(s) => return Ok(st(s)),
    };
    let Some(h) = handle(c.data_mut(), token) else {
        return Ok(st(Status::NotFound));
    };
    if h.unary {
        return Ok(st(Status::BadArgument));
    }
    // Queued (or, past the queue's limit, the call ends with RESOURCE_EXHAUSTED: the SDKs
    // trap on any other answer than OK here). A call whose close was delivered has no handle
    // any more: NOT_FOUND above.
    h.send(Bytes::from(message), end != 0);
    Ok(st(Status::Ok))
}
