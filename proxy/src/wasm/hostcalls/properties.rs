//! Properties: `proxy_get_property`, `proxy_set_property`.
//!
//! Well-known paths (read-only): `request.{path,url_path,host,scheme,method,headers,id,
//! protocol,time,query}`, `response.{code,headers}`, `source.{address,port}` (only with the
//! `client_address` grant), `destination.{address,port}`, `connection.{id,mtls}`,
//! `plugin_name`, `plugin_root_id`, `plugin_vm_id`, `route_name`, `upstream.address`.
//! Strings are raw bytes, integers 8 bytes little-endian, booleans one byte, maps in the
//! header-map encoding. Any other path is a custom property of the request, set by a plugin
//! and visible to later plugins of the same request.

use sluice_abi::map;
use sluice_abi::names::ENV;
use sluice_abi::path;
use sluice_abi::Status;
use wasmtime::Linker;

use super::{give_status, read, st, HostResult, C};
use crate::wasm::stream::{list_get, HeaderList};
use crate::wasm::vm::VmState;

/// Longest property path.
pub const MAX_PATH_BYTES: u32 = 1024;
/// Most segments in a path.
pub const MAX_SEGMENTS: usize = 16;
/// Longest custom property value.
pub const MAX_VALUE_BYTES: u32 = 64 * 1024;
/// Most custom properties per request.
pub const MAX_CUSTOM: usize = 64;

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(ENV, "proxy_get_property", get_property)?;
    l.func_wrap(ENV, "proxy_set_property", set_property)?;
    Ok(())
}

const WELL_KNOWN_ROOTS: &[&[u8]] = &[
    b"request",
    b"response",
    b"source",
    b"destination",
    b"connection",
    b"plugin_name",
    b"plugin_root_id",
    b"plugin_vm_id",
    b"route_name",
    b"upstream",
];

fn int(v: u64) -> Option<Vec<u8>> {
    Some(v.to_le_bytes().to_vec())
}

fn sanitized_map(state: &VmState, list: &HeaderList) -> Option<Vec<u8>> {
    let s = &state.settings.sanitizer;
    map::encode(
        list.iter()
            .filter(|(k, _)| !k.starts_with(b":") && !s.hides(k))
            .map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
    .ok()
}

/// The value of a well-known property, or `None` when it is unknown or not available.
fn well_known(state: &VmState, segs: &[&[u8]]) -> Option<Vec<u8>> {
    let settings = &state.settings;
    match segs {
        [b"plugin_name"] => return Some(settings.name.as_bytes().to_vec()),
        [b"plugin_root_id"] => return Some(settings.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => return Some(settings.vm_id.as_bytes().to_vec()),
        _ => {}
    }
    let s = state.stream.as_deref()?;
    let info = &s.info;
    let req = &s.request_headers;
    let pseudo = |n: &[u8]| list_get(req, n).map(<[u8]>::to_vec);
    match segs {
        [b"route_name"] | [b"upstream", b"address"] if !settings.sluice_properties => None,
        [b"route_name"] => Some(info.route_name.as_bytes().to_vec()),
        [b"upstream", b"address"] => info
            .upstream_address
            .as_ref()
            .map(|a| a.as_bytes().to_vec()),
        [b"request", b"path"] => pseudo(b":path"),
        [b"request", b"url_path"] => {
            let p = pseudo(b":path")?;
            let end = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
            Some(p[..end].to_vec())
        }
        [b"request", b"query"] => {
            let p = pseudo(b":path")?;
            Some(
                p.iter()
                    .position(|&b| b == b'?')
                    .map_or(Vec::new(), |i| p[i + 1..].to_vec()),
            )
        }
        [b"request", b"host"] => pseudo(b":authority"),
        [b"request", b"scheme"] => pseudo(b":scheme"),
        [b"request", b"method"] => pseudo(b":method"),
        [b"request", b"id"] => Some(info.id.as_bytes().to_vec()),
        [b"request", b"protocol"] => Some(info.protocol.as_bytes().to_vec()),
        [b"request", b"time"] => int(info.time_ns as u64),
        [b"request", b"headers"] => sanitized_map(state, req),
        [b"response", b"code"] => int(u64::from(info.response_code?)),
        [b"response", b"headers"] if !s.response_headers.is_empty() => {
            sanitized_map(state, &s.response_headers)
        }
        [b"source", rest] if settings.sanitizer.sees_client_address() => {
            let a = info.source?;
            match *rest {
                b"address" => Some(a.to_string().into_bytes()),
                b"port" => int(u64::from(a.port())),
                _ => None,
            }
        }
        [b"destination", b"address"] => info.destination.map(|a| a.to_string().into_bytes()),
        [b"destination", b"port"] => int(u64::from(info.destination?.port())),
        [b"connection", b"id"] => int(info.connection_id),
        [b"connection", b"mtls"] => Some(vec![0]),
        [b"connection", b"tls"] => Some(vec![info.tls as u8]),
        _ => None,
    }
}

fn get_property(mut c: C<'_>, pp: u32, pl: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    let raw = match read(&mut c, pp, pl, MAX_PATH_BYTES) {
        Ok(r) => r,
        Err(s) => return Ok(st(s)),
    };
    let Ok(p) = path::parse(&raw, MAX_SEGMENTS) else {
        return Ok(st(Status::BadArgument));
    };
    let segs: Vec<&[u8]> = p.segments().collect();
    let state = c.data();
    let value = match well_known(state, &segs) {
        Some(v) => Some(v),
        None => state.stream.as_deref().and_then(|s| {
            s.custom_properties
                .iter()
                .find(|(k, _)| k.as_slice() == p.as_bytes())
                .map(|(_, v)| v.clone())
        }),
    };
    match value {
        Some(v) => give_status(&mut c, &v, ret_ptr, ret_len),
        None => Ok(st(Status::NotFound)),
    }
}

fn set_property(mut c: C<'_>, pp: u32, pl: u32, vp: u32, vl: u32) -> HostResult {
    let raw = match read(&mut c, pp, pl, MAX_PATH_BYTES) {
        Ok(r) => r,
        Err(s) => return Ok(st(s)),
    };
    let value = match read(&mut c, vp, vl, MAX_VALUE_BYTES) {
        Ok(v) => v,
        Err(s) => return Ok(st(s)),
    };
    let Ok(p) = path::parse(&raw, MAX_SEGMENTS) else {
        return Ok(st(Status::BadArgument));
    };
    let first = p.segments().next().unwrap_or_default();
    if WELL_KNOWN_ROOTS.contains(&first) {
        // Well-known properties are Sluice's, read-only.
        return Ok(st(Status::BadArgument));
    }
    let key = p.as_bytes().to_vec();
    let Some(s) = c.data_mut().stream.as_deref_mut() else {
        return Ok(st(Status::NotFound));
    };
    let full = s.custom_properties.len() >= MAX_CUSTOM;
    match s.custom_properties.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => *v = value,
        None if full => return Ok(st(Status::BadArgument)),
        None => s.custom_properties.push((key, value)),
    }
    Ok(st(Status::Ok))
}
