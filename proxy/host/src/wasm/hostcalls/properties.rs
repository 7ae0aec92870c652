//! Properties: `proxy_get_property`, `proxy_set_property`.
//!
//! Well-known paths (read-only), with Envoy's names, types and encodings:
//! - `request.{path,url_path,host,scheme,method,headers,id,protocol,time,query,referer,
//!   useragent,duration,size,total_size}`;
//! - `response.{code,code_details,flags,grpc_status,headers,trailers,size,total_size}`;
//! - `source.{address,port}` (only with the `client_address` grant),
//!   `destination.{address,port}`;
//! - `connection.{id,tls,mtls,requested_server_name,tls_version}`;
//! - `upstream.{address,port,tls_version}`, `route_name` (Sluice-only: off in portable mode);
//! - `plugin_name`, `plugin_root_id`, `plugin_vm_id`, `node` and `node.{id,user_agent_name,
//!   user_agent_version}`, `listener_direction` (also in the root context).
//!
//! Strings are raw bytes, integers 8 bytes little-endian (int64 and uint64 alike), booleans
//! one byte, timestamps and durations int64 nanoseconds, maps in the header-map encoding,
//! `node` a serialized `envoy.config.core.v3.Node`. A fact that does not exist (yet) answers
//! `NOT_FOUND`. Any other path is a custom property of the request, set by a plugin and
//! visible to later plugins of the same request.

use std::net::SocketAddr;
use std::sync::OnceLock;

use sluice_abi::map;
use sluice_abi::names::ENV;
use sluice_abi::path;
use sluice_abi::Status;
use wasmtime::Linker;

use super::{give_status, read, st, HostResult, C};
use crate::wasm::stream::{list_get, HeaderList, Stream};
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
    b"node",
    b"listener_direction",
];

/// `listener_direction`: Envoy's `TrafficDirection` (`UNSPECIFIED` 0, `INBOUND` 1,
/// `OUTBOUND` 2). A reverse proxy in front of services takes inbound traffic.
const INBOUND: u64 = 1;
/// `node.user_agent_name`.
const USER_AGENT_NAME: &str = "sluice";
/// `node.user_agent_version`.
const USER_AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Highest gRPC status Envoy accepts from a `grpc-status` header (`UNAUTHENTICATED`).
const MAX_GRPC_STATUS: u64 = 16;
/// What Envoy reports for a `grpc-status` it cannot read (`InvalidCode`).
const INVALID_GRPC_STATUS: i64 = -1;

fn int(v: u64) -> Option<Vec<u8>> {
    Some(v.to_le_bytes().to_vec())
}

fn int64(v: i64) -> Option<Vec<u8>> {
    Some(v.to_le_bytes().to_vec())
}

/// `node.id`: the host's name (`/proc/sys/kernel/hostname`, else `/etc/hostname`, else
/// `$HOSTNAME`), else `sluice`; read once.
fn node_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .chain(std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .find(|h| !h.is_empty())
            .unwrap_or_else(|| USER_AGENT_NAME.to_string())
    })
}

/// `node`: an `envoy.config.core.v3.Node` in protobuf encoding, with `id` (1),
/// `user_agent_name` (6) and `user_agent_version` (7).
fn node_message() -> Vec<u8> {
    let mut out = Vec::new();
    for (field, value) in [
        (1u8, node_id()),
        (6, USER_AGENT_NAME),
        (7, USER_AGENT_VERSION),
    ] {
        // Wire type 2 (length-delimited); every field number here is below 16: a 1-byte tag.
        out.push(field << 3 | 2);
        let mut len = value.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Bytes of the header names and values a plugin sees in `list` (Envoy's `byteSize`,
/// pseudo-headers included, hidden headers left out as everywhere else).
fn visible_bytes(state: &VmState, list: &HeaderList) -> u64 {
    let s = &state.settings.sanitizer;
    list.iter()
        .filter(|(k, _)| !s.hides(k))
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum()
}

/// Every value of a header the plugin may see, joined by `,` (as Envoy joins repeated ones).
fn visible_header(state: &VmState, list: &HeaderList, name: &[u8]) -> Option<Vec<u8>> {
    if state.settings.sanitizer.hides(name) {
        return None;
    }
    let mut values = list.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut out = values.next()?.1.clone();
    for (_, v) in values {
        out.push(b',');
        out.extend_from_slice(v);
    }
    Some(out)
}

/// Whether the response has started (its header phase ran, or its status is known).
fn responded(s: &Stream) -> bool {
    s.info.response_code.is_some() || !s.response_headers.is_empty()
}

/// `request.size`: the request's `content-length` if it has one, else the body bytes received
/// so far (Envoy's rule); an unreadable `content-length` is no size.
fn request_size(state: &VmState, s: &Stream) -> Option<u64> {
    match visible_header(state, &s.request_headers, b"content-length") {
        None => Some(s.info.request_body_bytes),
        Some(v) => std::str::from_utf8(&v)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok()),
    }
}

/// `response.grpc_status`: the trailers' `grpc-status`, else the headers'. A value that is
/// not a number from 0 to 16 reads as -1, as on Envoy.
fn grpc_status(state: &VmState, s: &Stream) -> Option<i64> {
    let v = [&s.response_trailers, &s.response_headers]
        .into_iter()
        .filter_map(|l| visible_header(state, l, b"grpc-status"))
        .find(|v| !v.is_empty())?;
    Some(
        std::str::from_utf8(&v)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|n| *n <= MAX_GRPC_STATUS)
            .map_or(INVALID_GRPC_STATUS, |n| n as i64),
    )
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
        [b"listener_direction"] => return int(INBOUND),
        [b"node"] => return Some(node_message()),
        [b"node", b"id"] => return Some(node_id().as_bytes().to_vec()),
        [b"node", b"user_agent_name"] => return Some(USER_AGENT_NAME.as_bytes().to_vec()),
        [b"node", b"user_agent_version"] => return Some(USER_AGENT_VERSION.as_bytes().to_vec()),
        [b"node", ..] => return None,
        _ => {}
    }
    let s = state.stream.as_deref()?;
    let info = &s.info;
    let req = &s.request_headers;
    let pseudo = |n: &[u8]| list_get(req, n).map(<[u8]>::to_vec);
    match segs {
        [b"route_name"] | [b"upstream", ..] if !settings.sluice_properties => None,
        [b"route_name"] => Some(info.route_name.as_bytes().to_vec()),
        [b"upstream", b"address"] => info
            .upstream_address
            .as_ref()
            .map(|a| a.as_bytes().to_vec()),
        [b"upstream", b"port"] => {
            let a: SocketAddr = info.upstream_address.as_deref()?.parse().ok()?;
            int(u64::from(a.port()))
        }
        [b"upstream", b"tls_version"] => info.upstream_tls_version.map(|v| v.as_bytes().to_vec()),
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
        [b"request", b"referer"] => visible_header(state, req, b"referer"),
        [b"request", b"useragent"] => visible_header(state, req, b"user-agent"),
        [b"request", b"duration"] => {
            int64(i64::try_from(info.duration?.as_nanos()).unwrap_or(i64::MAX))
        }
        [b"request", b"size"] => int(request_size(state, s)?),
        [b"request", b"total_size"] => int(info
            .request_body_bytes
            .saturating_add(visible_bytes(state, req))),
        [b"response", b"code"] => int(u64::from(info.response_code?)),
        [b"response", b"code_details"] => info
            .response_code_details
            .as_ref()
            .map(|d| d.as_bytes().to_vec()),
        [b"response", b"flags"] => int(info.response_flags),
        [b"response", b"grpc_status"] => int64(grpc_status(state, s)?),
        [b"response", b"headers"] if !s.response_headers.is_empty() => {
            sanitized_map(state, &s.response_headers)
        }
        [b"response", b"trailers"] if responded(s) => sanitized_map(state, &s.response_trailers),
        [b"response", b"size"] if responded(s) => int(info.response_body_bytes),
        [b"response", b"total_size"] if responded(s) => int(info
            .response_body_bytes
            .saturating_add(visible_bytes(state, &s.response_headers))
            .saturating_add(visible_bytes(state, &s.response_trailers))),
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
        [b"connection", b"requested_server_name"] => {
            info.requested_server_name.clone().map(String::into_bytes)
        }
        [b"connection", b"tls_version"] => info.tls_version.map(|v| v.as_bytes().to_vec()),
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
