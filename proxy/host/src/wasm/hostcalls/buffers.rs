//! Buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`.
//!
//! Readable: the request or response body of the current body callback (cumulative while a
//! plugin buffers), the HTTP-call response body during `on_http_call_response`, and the
//! plugin and VM configuration. Writable: the current body, up to the plugin's
//! `max_body_bytes`.

use sluice_abi::names::ENV;
use sluice_abi::{BufferType, Status};
use wasmtime::Linker;

use super::{done, give_status, put_u32, read, st, HostResult, C};
use crate::wasm::stream::BodyKind;
use crate::wasm::vm::VmState;

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(ENV, "proxy_get_buffer_bytes", get_bytes)?;
    l.func_wrap(ENV, "proxy_set_buffer_bytes", set_bytes)?;
    l.func_wrap(ENV, "proxy_get_buffer_status", get_status)?;
    Ok(())
}

fn body_kind(t: BufferType) -> Option<BodyKind> {
    match t {
        BufferType::RequestBody => Some(BodyKind::Request),
        BufferType::ResponseBody => Some(BodyKind::Response),
        _ => None,
    }
}

/// The buffer's bytes and whether it is complete, or why it is not available.
fn buffer(state: &VmState, t: u32) -> Result<(&[u8], bool), Status> {
    let t = BufferType::try_from(t).map_err(|_| Status::BadArgument)?;
    match t {
        BufferType::VmConfiguration => Ok((&state.settings.vm_config, true)),
        BufferType::PluginConfiguration => Ok((&state.settings.config, true)),
        BufferType::GrpcMessage => match &state.grpc_event {
            Some(
                crate::wasm::grpc::GrpcEvent::Message(m)
                | crate::wasm::grpc::GrpcEvent::UnaryReply(m),
            ) => Ok((m.as_slice(), true)),
            _ => Err(Status::NotFound),
        },
        BufferType::HttpCallResponseBody => state
            .callout_response
            .as_ref()
            .map(|r| (r.body.as_slice(), true))
            .ok_or(Status::NotFound),
        BufferType::RequestBody | BufferType::ResponseBody => {
            let s = state.stream.as_deref().ok_or(Status::NotFound)?;
            if s.body_kind == body_kind(t) {
                Ok((&s.body, s.body_end))
            } else {
                Err(Status::NotFound)
            }
        }
        _ => Err(Status::NotFound),
    }
}

/// `[start, start + max)` clamped to `len`, in u64.
fn clamp(len: usize, start: u32, max: u32) -> std::ops::Range<usize> {
    let len = len as u64;
    let s = u64::from(start).min(len);
    let e = (s + u64::from(max)).min(len);
    s as usize..e as usize
}

fn get_bytes(mut c: C<'_>, t: u32, start: u32, max: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    let bytes = match buffer(c.data(), t) {
        Ok((b, _)) => b[clamp(b.len(), start, max)].to_vec(),
        Err(s) => return Ok(st(s)),
    };
    give_status(&mut c, &bytes, ret_ptr, ret_len)
}

fn get_status(mut c: C<'_>, t: u32, ret_len: u32, ret_flags: u32) -> HostResult {
    let (len, end) = match buffer(c.data(), t) {
        Ok((b, end)) => (b.len() as u32, end),
        Err(s) => return Ok(st(s)),
    };
    done(put_u32(&mut c, ret_len, len).and_then(|()| put_u32(&mut c, ret_flags, end as u32)))
}

fn set_bytes(mut c: C<'_>, t: u32, start: u32, size: u32, ptr: u32, len: u32) -> HostResult {
    let max = c.data().settings.limits.max_body_bytes;
    let data = match read(&mut c, ptr, len, u32::try_from(max).unwrap_or(u32::MAX)) {
        Ok(d) => d,
        Err(s) => return Ok(st(s)),
    };
    let Ok(t) = BufferType::try_from(t) else {
        return Ok(st(Status::BadArgument));
    };
    let Some(kind) = body_kind(t) else {
        // Configurations and callout bodies are read-only.
        return Ok(st(Status::BadArgument));
    };
    let Some(s) = c.data_mut().stream.as_deref_mut() else {
        return Ok(st(Status::NotFound));
    };
    if s.body_kind != Some(kind) {
        return Ok(st(Status::NotFound));
    }
    let range = clamp(s.body.len(), start, size);
    let new_len = s.body.len() - range.len() + data.len();
    if new_len > max {
        return Ok(st(Status::BadArgument));
    }
    s.body.splice(range, data);
    s.body_changed = true;
    Ok(st(Status::Ok))
}

#[cfg(test)]
mod tests {
    use super::clamp;

    #[test]
    fn clamping() {
        assert_eq!(clamp(10, 0, u32::MAX), 0..10);
        assert_eq!(clamp(10, 4, 3), 4..7);
        assert_eq!(clamp(10, 12, 3), 10..10);
        assert_eq!(clamp(10, u32::MAX, u32::MAX), 10..10);
        assert_eq!(clamp(0, 0, 0), 0..0);
    }
}
