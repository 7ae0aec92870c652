//! Stream control: `proxy_continue_stream`, `proxy_close_stream`, `proxy_get_status`,
//! `proxy_send_local_response`. Requests take effect when the current callback returns.

use bytes::Bytes;
use sluice_abi::map::{self, Limits};
use sluice_abi::names::ENV;
use sluice_abi::{Status, StreamType};
use wasmtime::Linker;

use super::headers::{valid_name, valid_value};
use super::{check_range, give, put_u32, read, st, HostResult, C};
use crate::wasm::stream::{LocalResponse, MAX_HEADER_MAP_BYTES, MAX_HEADER_MAP_PAIRS};
use crate::wasm::vm::VmState;

/// Longest `details` string kept.
pub const MAX_DETAILS_BYTES: u32 = 1024;

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut c: C<'_>, t: u32| -> HostResult {
            let Some(s) = c.data_mut().stream.as_deref_mut() else {
                return Ok(st(Status::NotFound));
            };
            match StreamType::try_from(t) {
                Ok(StreamType::Request) => s.effects.resume_request = true,
                Ok(StreamType::Response) => s.effects.resume_response = true,
                _ => return Ok(st(Status::BadArgument)),
            }
            Ok(st(Status::Ok))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_close_stream",
        |mut c: C<'_>, t: u32| -> HostResult {
            let Some(s) = c.data_mut().stream.as_deref_mut() else {
                return Ok(st(Status::NotFound));
            };
            match StreamType::try_from(t) {
                Ok(StreamType::Request | StreamType::Response) => s.effects.close = true,
                _ => return Ok(st(Status::BadArgument)),
            }
            Ok(st(Status::Ok))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_get_status",
        |mut c: C<'_>, ret_code: u32, ret_ptr: u32, ret_len: u32| -> HostResult {
            // The status of the gRPC call being closed, with its message.
            if let Some(crate::wasm::grpc::GrpcEvent::Close { status, message }) =
                c.data().grpc_event.clone()
            {
                if let Err(s) = put_u32(&mut c, ret_code, status) {
                    return Ok(st(s));
                }
                return Ok(st(give(&mut c, message.as_bytes(), ret_ptr, ret_len)?
                    .err()
                    .unwrap_or(Status::Ok)));
            }
            // The status of the HTTP call being delivered.
            let code = c.data().callout_response.as_ref().and_then(|r| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == b":status")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok())
            });
            let Some(code) = code else {
                return Ok(st(Status::NotFound));
            };
            if let Err(s) = put_u32(&mut c, ret_code, code) {
                return Ok(st(s));
            }
            Ok(st(give(&mut c, b"", ret_ptr, ret_len)?
                .err()
                .unwrap_or(Status::Ok)))
        },
    )?;
    l.func_wrap(ENV, "proxy_send_local_response", send_local_response)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut c: C<'_>,
    status: u32,
    details_ptr: u32,
    details_len: u32,
    body_ptr: u32,
    body_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    _grpc_status: i32,
) -> HostResult {
    let max_body = u32::try_from(c.data().settings.limits.max_body_bytes).unwrap_or(u32::MAX);
    // The whole range must be guest memory; at most MAX_DETAILS_BYTES of it are kept.
    if let Err(s) = check_range(&c, details_ptr, details_len) {
        return Ok(st(s));
    }
    let details = match read(
        &mut c,
        details_ptr,
        details_len.min(MAX_DETAILS_BYTES),
        MAX_DETAILS_BYTES,
    ) {
        Ok(d) => d,
        Err(s) => return Ok(st(s)),
    };
    let body = match read(&mut c, body_ptr, body_len, max_body) {
        Ok(b) => b,
        Err(s) => return Ok(st(s)),
    };
    let encoded = match read(
        &mut c,
        headers_ptr,
        headers_len,
        MAX_HEADER_MAP_BYTES as u32,
    ) {
        Ok(h) => h,
        Err(s) => return Ok(st(s)),
    };
    if !(200..=599).contains(&status) {
        return Ok(st(Status::BadArgument));
    }
    let limits = Limits {
        max_pairs: MAX_HEADER_MAP_PAIRS as u32,
        max_bytes: MAX_HEADER_MAP_BYTES,
    };
    let Ok(pairs) = map::decode(&encoded, &limits) else {
        return Ok(st(Status::BadArgument));
    };
    let state = c.data_mut();
    let mut headers = Vec::with_capacity(pairs.len());
    for (k, v) in pairs.iter() {
        if !valid_name(k) || k.starts_with(b":") || !valid_value(k, v) {
            return Ok(st(Status::BadArgument));
        }
        if state.settings.sanitizer.hides(k) {
            crate::metrics::metrics()
                .plugin_refused_writes
                .with_label_values(&[&state.settings.name, state.settings.version.as_str()])
                .inc();
            return Ok(st(Status::BadArgument));
        }
        headers.push((k.to_ascii_lowercase(), v.to_vec()));
    }
    let Some(s) = state.stream.as_deref_mut() else {
        return Ok(st(Status::NotFound));
    };
    s.effects.local_response = Some(LocalResponse {
        status: status as u16,
        headers,
        body: Bytes::from(body),
        details: String::from_utf8_lossy(&details).into_owned(),
    });
    Ok(st(Status::Ok))
}
