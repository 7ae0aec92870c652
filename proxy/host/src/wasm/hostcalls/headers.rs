//! Header maps: `proxy_get_header_map_pairs`, `proxy_get_header_map_size`,
//! `proxy_get_header_map_value`, `proxy_set_header_map_pairs`, `proxy_add_header_map_value`,
//! `proxy_replace_header_map_value`, `proxy_remove_header_map_value`.
//!
//! Request and response headers and trailers are sanitized: names hidden from the plugin are
//! absent when it reads and refused (`BAD_ARGUMENT`, counted, logged once per VM) when it
//! writes. HTTP-call response maps are the plugin's own and read-only.

use sluice_abi::map::{self, Limits};
use sluice_abi::names::ENV;
use sluice_abi::{MapType, Status};
use wasmtime::Linker;

use super::{done, give_status, put_u32, read, st, HostResult, C};
use crate::wasm::stream::{
    list_bytes, list_get, list_remove, list_replace, Changes, HeaderList, MAX_HEADER_MAP_BYTES,
    MAX_HEADER_MAP_PAIRS,
};
use crate::wasm::vm::VmState;

/// Longest header name accepted from a plugin.
pub const MAX_NAME_BYTES: u32 = 8 * 1024;
/// Longest header value accepted from a plugin.
pub const MAX_VALUE_BYTES: u32 = 64 * 1024;

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(ENV, "proxy_get_header_map_pairs", get_pairs)?;
    l.func_wrap(ENV, "proxy_get_header_map_size", get_size)?;
    l.func_wrap(ENV, "proxy_get_header_map_value", get_value)?;
    l.func_wrap(ENV, "proxy_set_header_map_pairs", set_pairs)?;
    l.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        |c: C<'_>, m: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            write_value(c, m, kp, kl, Some((vp, vl)), true)
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        |c: C<'_>, m: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            write_value(c, m, kp, kl, Some((vp, vl)), false)
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |c: C<'_>, m: u32, kp: u32, kl: u32| write_value(c, m, kp, kl, None, false),
    )?;
    Ok(())
}

/// One map as a host call sees it.
struct View<'a> {
    list: &'a mut HeaderList,
    /// Writes take effect (false: accepted and ignored, as after the headers went out).
    writable: bool,
    /// Read-only for plugins (`BAD_ARGUMENT` on writes).
    read_only: bool,
    /// Hidden names apply.
    sanitized: bool,
    changes: Option<&'a mut Changes>,
}

/// What [`view`] answers for a map that does not exist in the current state (no request in a
/// root callback; no response yet). Each call turns it into the reference host's status: an
/// empty map for `get_header_map_pairs`; `NOT_FOUND` from `get_header_map_value` in `on_log`
/// (a value that does not exist: the client may have left before any response),
/// `BAD_ARGUMENT` anywhere else.
const UNAVAILABLE: Status = Status::Empty;

/// `BAD_ARGUMENT` for a map that is not available (see [`UNAVAILABLE`]).
fn unavailable_is_bad(s: Status) -> Status {
    if s == UNAVAILABLE {
        Status::BadArgument
    } else {
        s
    }
}

fn view(state: &mut VmState, map: u32) -> Result<View<'_>, Status> {
    let map = MapType::try_from(map).map_err(|_| Status::BadArgument)?;
    match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            let r = state.callout_response.as_mut().ok_or(Status::NotFound)?;
            Ok(View {
                list: if map == MapType::HttpCallResponseHeaders {
                    &mut r.headers
                } else {
                    &mut r.trailers
                },
                writable: false,
                read_only: true,
                sanitized: false,
                changes: None,
            })
        }
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => {
            use crate::wasm::grpc::GrpcEvent;
            let list = match (map, state.grpc_event.as_mut()) {
                (MapType::GrpcInitialMetadata, Some(GrpcEvent::InitialMetadata(l)))
                | (MapType::GrpcTrailingMetadata, Some(GrpcEvent::TrailingMetadata(l))) => l,
                // Outside its callback the map does not exist (as on Envoy).
                _ => return Err(UNAVAILABLE),
            };
            Ok(View {
                list,
                writable: false,
                read_only: true,
                sanitized: false,
                changes: None,
            })
        }
        _ => {
            let s = state.stream.as_deref_mut().ok_or(UNAVAILABLE)?;
            Ok(match map {
                MapType::RequestHeaders => View {
                    list: &mut s.request_headers,
                    writable: s.request_headers_writable,
                    read_only: false,
                    sanitized: true,
                    changes: Some(&mut s.request_changed),
                },
                MapType::RequestTrailers => View {
                    list: &mut s.request_trailers,
                    writable: false,
                    read_only: false,
                    sanitized: true,
                    changes: None,
                },
                MapType::ResponseHeaders => {
                    if s.response_headers.is_empty() {
                        return Err(UNAVAILABLE);
                    }
                    View {
                        list: &mut s.response_headers,
                        writable: s.response_headers_writable,
                        read_only: false,
                        sanitized: true,
                        changes: Some(&mut s.response_changed),
                    }
                }
                _ => View {
                    list: &mut s.response_trailers,
                    writable: s.response_trailers_writable,
                    read_only: false,
                    sanitized: true,
                    changes: None,
                },
            })
        }
    }
}

fn encode_visible(state: &mut VmState, map: u32) -> Result<Vec<u8>, Status> {
    let settings = state.settings.clone();
    let v = view(state, map)?;
    let sanitized = v.sanitized;
    let pairs = v
        .list
        .iter()
        .filter(|(k, _)| !sanitized || !settings.sanitizer.hides(k))
        .map(|(k, val)| (k.as_slice(), val.as_slice()));
    map::encode(pairs).map_err(|_| Status::SerializationFailure)
}

fn get_pairs(mut c: C<'_>, map: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    match encode_visible(c.data_mut(), map) {
        Ok(bytes) => give_status(&mut c, &bytes, ret_ptr, ret_len),
        // A map that does not exist (yet) reads as empty.
        Err(UNAVAILABLE) => give_status(&mut c, &[0, 0, 0, 0], ret_ptr, ret_len),
        Err(s) => Ok(st(s)),
    }
}

fn get_size(mut c: C<'_>, map: u32, ret: u32) -> HostResult {
    match encode_visible(c.data_mut(), map) {
        Ok(bytes) => done(put_u32(&mut c, ret, bytes.len() as u32)),
        Err(s) => Ok(st(unavailable_is_bad(s))),
    }
}

fn get_value(mut c: C<'_>, map: u32, kp: u32, kl: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    let key = match read(&mut c, kp, kl, MAX_NAME_BYTES) {
        Ok(k) => k,
        Err(s) => return Ok(st(s)),
    };
    let state = c.data_mut();
    let settings = state.settings.clone();
    let log_phase = state.stream.as_deref().is_some_and(|s| s.log_phase);
    let value = match view(state, map) {
        Ok(v) => {
            if v.sanitized && settings.sanitizer.hides(&key) {
                None
            } else {
                list_get(v.list, &key).map(<[u8]>::to_vec)
            }
        }
        Err(UNAVAILABLE) if log_phase => None,
        Err(s) => return Ok(st(unavailable_is_bad(s))),
    };
    match value {
        Some(v) => give_status(&mut c, &v, ret_ptr, ret_len),
        None => Ok(st(Status::NotFound)),
    }
}

/// Whether `name` may be written as a header name: an HTTP token, or a known pseudo-header.
pub fn valid_name(name: &[u8]) -> bool {
    if let Some(pseudo) = name.strip_prefix(b":") {
        return matches!(
            pseudo,
            b"method" | b"path" | b"authority" | b"scheme" | b"status"
        );
    }
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be sent as a value of `name`.
pub fn valid_value(name: &[u8], value: &[u8]) -> bool {
    if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return false;
    }
    match name {
        b":status" => {
            value.len() == 3
                && value.iter().all(u8::is_ascii_digit)
                && (b'1'..=b'5').contains(&value[0])
        }
        b":path" => value.first().is_some_and(|&b| b == b'/' || b == b'*'),
        b":method" => valid_name(value),
        b":authority" => !value.is_empty() && !value.iter().any(|&b| b == b' ' || b == b'/'),
        _ => true,
    }
}

fn refuse_hidden(c: &mut C<'_>, name: &[u8]) -> HostResult {
    let state = c.data_mut();
    let plugin = state.settings.name.clone();
    crate::metrics::metrics()
        .plugin_refused_writes
        .with_label_values(&[&plugin, state.settings.version.as_str()])
        .inc();
    if !std::mem::replace(&mut state.warned_hidden, true) {
        tracing::warn!(
            target: "sluice::plugin",
            plugin = %plugin,
            header = %String::from_utf8_lossy(name),
            "plugin tried to change a header hidden from it; refused (grant it with `expose`)"
        );
    }
    Ok(st(Status::BadArgument))
}

fn write_value(
    mut c: C<'_>,
    map: u32,
    kp: u32,
    kl: u32,
    value: Option<(u32, u32)>,
    append: bool,
) -> HostResult {
    let key = match read(&mut c, kp, kl, MAX_NAME_BYTES) {
        Ok(k) => k,
        Err(s) => return Ok(st(s)),
    };
    let value = match value {
        Some((vp, vl)) => match read(&mut c, vp, vl, MAX_VALUE_BYTES) {
            Ok(v) => Some(v),
            Err(s) => return Ok(st(s)),
        },
        None => None,
    };
    if !valid_name(&key) || value.as_ref().is_some_and(|v| !valid_value(&key, v)) {
        return Ok(st(Status::BadArgument));
    }
    let state = c.data_mut();
    let settings = state.settings.clone();
    let hidden = {
        let v = match view(state, map) {
            Ok(v) => v,
            Err(s) => return Ok(st(unavailable_is_bad(s))),
        };
        if v.read_only {
            return Ok(st(Status::BadArgument));
        }
        v.sanitized && settings.sanitizer.hides(&key)
    };
    if hidden {
        return refuse_hidden(&mut c, &key);
    }
    let v = match view(c.data_mut(), map) {
        Ok(v) => v,
        Err(s) => return Ok(st(unavailable_is_bad(s))),
    };
    if !v.writable {
        // The headers already went out (or the map is not forwarded): nothing to change.
        return Ok(st(Status::Ok));
    }
    match value {
        None => {
            if key.starts_with(b":") {
                return Ok(st(Status::BadArgument));
            }
            list_remove(v.list, &key);
        }
        Some(val) => {
            let grows = key.len() + val.len();
            if list_bytes(v.list) + grows > MAX_HEADER_MAP_BYTES
                || v.list.len() >= MAX_HEADER_MAP_PAIRS
            {
                return Ok(st(Status::BadArgument));
            }
            if append && !key.starts_with(b":") {
                v.list.push((key.to_ascii_lowercase(), val));
            } else {
                list_replace(v.list, &key, &val);
            }
        }
    }
    if let Some(ch) = v.changes {
        ch.touch(&key);
    }
    Ok(st(Status::Ok))
}

fn set_pairs(mut c: C<'_>, map: u32, ptr: u32, len: u32) -> HostResult {
    let bytes = match read(&mut c, ptr, len, MAX_HEADER_MAP_BYTES as u32 + 64 * 1024) {
        Ok(b) => b,
        Err(s) => return Ok(st(s)),
    };
    let limits = Limits {
        max_pairs: MAX_HEADER_MAP_PAIRS as u32,
        max_bytes: MAX_HEADER_MAP_BYTES + 64 * 1024,
    };
    let Ok(pairs) = map::decode(&bytes, &limits) else {
        return Ok(st(Status::BadArgument));
    };
    let state = c.data_mut();
    let settings = state.settings.clone();
    let mut refused = None;
    let mut new: HeaderList = Vec::with_capacity(pairs.len());
    for (k, v) in pairs.iter() {
        if !valid_name(k) || !valid_value(k, v) {
            return Ok(st(Status::BadArgument));
        }
        if settings.sanitizer.hides(k) {
            refused = Some(k.to_vec());
        }
        new.push((k.to_ascii_lowercase(), v.to_vec()));
    }
    let v = match view(state, map) {
        Ok(v) => v,
        Err(s) => return Ok(st(unavailable_is_bad(s))),
    };
    if v.read_only {
        return Ok(st(Status::BadArgument));
    }
    if let (true, Some(name)) = (v.sanitized, refused) {
        return refuse_hidden(&mut c, &name);
    }
    if !v.writable {
        return Ok(st(Status::Ok));
    }
    // Pseudo-headers and hidden headers the plugin could not see are kept.
    let sanitized = v.sanitized;
    for (k, val) in v.list.iter() {
        let keep_pseudo = k.starts_with(b":") && !new.iter().any(|(n, _)| n == k);
        let keep_hidden = sanitized && settings.sanitizer.hides(k);
        if keep_pseudo || keep_hidden {
            new.push((k.clone(), val.clone()));
        }
    }
    if list_bytes(&new) > MAX_HEADER_MAP_BYTES || new.len() > MAX_HEADER_MAP_PAIRS {
        return Ok(st(Status::BadArgument));
    }
    // Pseudo-headers first, as plugins expect.
    new.sort_by_key(|(k, _)| !k.starts_with(b":"));
    *v.list = new;
    if let Some(ch) = v.changes {
        ch.all = true;
    }
    Ok(st(Status::Ok))
}
